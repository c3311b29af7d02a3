/**
 * The one training loop. Pretraining the world models (`lib/train/pretrain/train.ts`) and joint finetuning
 * (`lib/train/finetune/trainer.ts`) both run through `TrainingLoop`; each supplies its objective: one optimizer
 * step (its micro-batches, backward, clipping, the AdamW update) behind `TrainingObjective.step`.
 *
 * - Joint finetuning's objective is the native one-call step (`JointStep.run`, one host sync per step).
 * - Pretraining's is `backpropObjective`: a loss function per micro-batch, backward, global-norm clipping and
 *   the AdamW step from TypeScript; it refuses an update whose loss or gradient norm is not finite, as the
 *   native step does.
 *
 * The loop owns the rest, the same for both: the steps, the micro-batch count of a step (gradient
 * accumulation), the learning rate per step (`schedule.ts`, times the guard's `lowerLr` factor), the stop flag
 * (SIGINT), the non-finite guard after every step (`guard.ts`: stop, or roll back to the last verified
 * checkpoint and skip the step's batches / lower the learning rate), progress (rate, ETA), the printed loss
 * lines, the JSONL run log (`runlog.ts`), checkpoints (`checkpoint.ts`: periodic, verified, exact resume).
 */
import { RoundtripError } from '../errors';
import { ProgressStream, createProgress, Progress } from '../progress';
import { Tensor, disposeAll, scope } from '../runtime/tensor';
import type { AdamW } from './optimizer';
import { LrScheduleConfig, learningRate } from './schedule';
import { CheckpointData, OptimizerStateData, disposeCheckpoint, loadCheckpoint, resolveCheckpoint, saveCheckpoint } from './checkpoint';
import { GuardTrip, NanPolicy, checkTensors, guardError, guardStep, lastVerifiedCheckpoint } from './guard';
import { RunLog } from './runlog';

/** What the loop hands the objective for one optimizer step. */
export interface StepContext {
  /** 0-based index of this optimizer step. */
  step: number;
  /** This step's learning rate (schedule × the guard's factor). */
  lr: number;
  /** Micro-batches of this step (gradient accumulation). */
  microBatches: number;
  /** The stop flag (a signal arrived): a data-parallel step votes with it. */
  stop: boolean;
  /** Data positions whose steps the guard left out (`skip-batch`): the objective draws past them. */
  skipped: ReadonlySet<string>;
}

/** What one optimizer step reports. */
export interface StepOutcome {
  /** Mean loss over the step's micro-batches. */
  loss: number;
  /** Loss terms (means over micro-batches), when the objective has several. */
  terms?: Record<string, number | undefined>;
  /** Gradient norms before clipping: `total`, and per model where there are several. */
  gradNorm: Record<string, number>;
  /** Largest |w| of the trained tensors before the update, when the step measured it. */
  paramMaxAbs?: number;
  /** false: the step refused its update (a non-finite loss or gradient). */
  applied: boolean;
  /** Ranks that asked to stop (data-parallel). */
  stopVotes?: number;
  /** Where the step's data began (`skip-batch` leaves it out on replay). */
  dataKey?: string;
  /** Fields of the step's log row before the loss (e.g. epoch) and after the loop's own (e.g. all-reduce times). */
  rowHead?: Record<string, unknown>;
  rowTail?: Record<string, unknown>;
}

/** The plug-in: one whole optimizer step. */
export interface TrainingObjective {
  step(ctx: StepContext): Promise<StepOutcome>;
}

/** One log row (`log.jsonl`), as the loop writes it; objectives add fields through `rowHead`/`rowTail`. */
export interface LoopRow {
  step: number;
  loss: number;
  terms: Record<string, number | undefined>;
  lr: number;
  gradNorm: Record<string, number>;
  samplesPerSecond: number;
  stepsPerSecond: number;
  rssMB: number;
  time: number;
  [key: string]: unknown;
}

/** What the non-finite guard does on a trip (`guard.ts`). */
export interface LoopGuard {
  policy: NanPolicy;
  /** Rollbacks allowed per run before it stops. */
  retries: number;
  /** Learning-rate factor per rollback under `lower-lr`. */
  lrFactor: number;
  weightBound?: number;
  /** The error a stop ends the run with (default: `guardError`, which names the finetune flags). */
  error?: (trip: GuardTrip, rollback: string | undefined, policy: NanPolicy, retries: number) => Error;
}

/** The run's checkpoints: the loop decides when and writes them; the trainer says what goes in and how it comes back. */
export interface LoopCheckpoints {
  runDir: string;
  /** Every N steps (0: only at the end and on interruption). */
  every: number;
  keepLast: number;
  /** This process writes periodic checkpoints (rank 0 of a data-parallel run). */
  write: boolean;
  /** Steps whose state is saved besides the periodic ones (validation with a best checkpoint). */
  alsoSavesAt?: (step: number) => boolean;
  /** Trained tensors per model under published names, and the optimizers' states. */
  tensors: () => Record<string, Record<string, Tensor>>;
  optimizers: () => Record<string, OptimizerStateData>;
  /** The trainer's part of state.json (data position, seeds, config); the loop adds step, lrScale, skipped, verified. */
  state: () => Record<string, unknown>;
  /** Loads a checkpoint's tensors, optimizer states and data position into the running models. */
  restore: (ck: CheckpointData, dir: string, what: string) => Promise<void>;
}

export interface LoopSpec {
  /** Names the run in messages ('finetune', 'clip'). */
  label: string;
  totalSteps: number;
  schedule: LrScheduleConfig;
  /** Micro-batches per optimizer step (default 1). */
  microBatches?: number;
  /** Samples per optimizer step, for the samples/s column. */
  samplesPerStep: number;
  objective: TrainingObjective;
  /** Trained tensors by name: the guard checks them and names the one that went wrong. */
  tensors: Record<string, Tensor>;
  guard?: Partial<LoopGuard>;
  checkpoints?: LoopCheckpoints;
  log?: RunLog;
  /** A progress bar (rate, ETA); none when absent. */
  progress?: { label: string; stream?: ProgressStream; quiet?: boolean };
  /** A printed line every `every` steps and at the last. */
  report?: { every: number; line: (row: LoopRow, losses: readonly number[]) => string; print: (line: string) => void };
  /** Rollback notes. */
  print?: (line: string) => void;
  /** Set (e.g. by SIGINT) to stop after the current step. */
  stop?: { stop: boolean };
  hooks?: {
    /** May replace a step's loss before the guard sees it (tests inject NaN). */
    afterLoss?: (step: number, loss: number) => number | void;
    /** Right after each update, before the guard (tests corrupt weights here). */
    afterUpdate?: (step: number) => void | Promise<void>;
    /** After each logged step, before a periodic checkpoint (validation). */
    afterStep?: (row: LoopRow) => void | Promise<void>;
  };
}

export interface TrainingLoopResult {
  steps: number;
  /** Loss per optimizer step (rolled-back steps removed). */
  losses: number[];
  rows: LoopRow[];
  rollbacks: { step: number; to: number; reason: string; policy: NanPolicy }[];
  /** Stopped before the last step. */
  interrupted: boolean;
  lastCheckpoint?: string;
  seconds: number;
}

function rssMB(): number {
  return process.memoryUsage().rss / 2 ** 20;
}

/**
 * One run's loop: `start()` (fresh) or `resume(spec)`, then `run()`; `checkpoint()` and `finalCheckpoint()` write
 * verified checkpoints for the trainer (a best checkpoint, the end of a run).
 */
export class TrainingLoop {
  /** Optimizer steps done (the next step's 0-based index). */
  step = 0;
  /** Learning-rate multiplier (the `lower-lr` policy). */
  lrScale = 1;
  /** Data positions of steps the guard left out (`skip-batch`). */
  readonly skipped = new Set<string>();
  private trips = 0;
  private resumed = false;
  /** The last step written to the run's checkpoints, and the last whose tensors the guard checked one by one. */
  private savedStep = -1;
  private verifiedStep = -1;
  private readonly guard: LoopGuard;
  private readonly result: TrainingLoopResult = { steps: 0, losses: [], rows: [], rollbacks: [], interrupted: false, seconds: 0 };

  constructor(readonly spec: LoopSpec) {
    this.guard = { policy: 'stop', retries: 0, lrFactor: 0.5, ...spec.guard };
  }

  private get stopFlag(): { stop: boolean } {
    return this.spec.stop ?? (this.spec.stop = { stop: false });
  }

  /** Starts a fresh run: an empty log with a start marker. */
  start(): void {
    this.spec.log?.start({ event: 'start', step: 0 });
  }

  /** Loads a checkpoint into the running models and the loop (step; resumes: learning-rate factor, skipped data). */
  private async restore(dir: string, what: string): Promise<Record<string, unknown>> {
    const cp = this.requireCheckpoints();
    const ck = await loadCheckpoint(dir);
    try {
      await cp.restore(ck, dir, what);
      this.step = ck.state.step;
      this.savedStep = this.step;
      this.verifiedStep = this.step;
      return ck.state;
    } finally {
      disposeCheckpoint(ck);
    }
  }

  /**
   * Resumes from `spec` ('latest' or a checkpoint folder): the state, then `check` (the trainer refuses a
   * checkpoint its data order would not continue), then the log is cut back to the checkpoint with a marker.
   */
  async resume(spec: string, check?: (state: Record<string, unknown>, dir: string) => void): Promise<{ dir: string; state: Record<string, unknown> }> {
    const dir = resolveCheckpoint(spec, this.requireCheckpoints().runDir);
    const state = await this.restore(dir, '--resume');
    this.lrScale = Number(state.lrScale ?? 1);
    for (const k of (state.skipped as string[] | undefined) ?? []) this.skipped.add(k);
    check?.(state, dir);
    this.resumed = true;
    this.spec.log?.rewindTo(this.step, { event: 'resume', step: this.step, from: dir });
    return { dir, state };
  }

  /**
   * Writes a checkpoint of the current step (into the run, or `dir` such as `best/`), after the guard has
   * checked every trained tensor: only verified states are saved.
   */
  async checkpoint(dir?: string, keepLast?: number, extra: Record<string, unknown> = {}): Promise<string> {
    const cp = this.requireCheckpoints();
    if (this.verifiedStep !== this.step) {
      const trip = checkTensors(this.step, this.spec.tensors, this.guard.weightBound);
      if (trip) throw this.stopError(trip, lastVerifiedCheckpoint(cp.runDir), 'stop', 0);
      this.verifiedStep = this.step;
    }
    const data: CheckpointData = {
      tensors: cp.tensors(),
      optimizers: cp.optimizers(),
      // verified: the guard checked these tensors (rollbacks only go to verified checkpoints).
      state: { step: this.step, ...cp.state(), lrScale: this.lrScale, skipped: [...this.skipped], verified: true, ...extra },
    };
    try {
      const target = dir ?? cp.runDir;
      const written = await saveCheckpoint(target, data, { keepLast: keepLast ?? cp.keepLast });
      if (target === cp.runDir) this.savedStep = this.step;
      return written;
    } finally {
      for (const o of Object.values(data.optimizers)) disposeAll([...o.expAvg, ...o.expAvgSq].filter(Boolean) as Tensor[]);
    }
  }

  /** The run's final checkpoint: the one of this step if written already, else a new one. */
  async finalCheckpoint(): Promise<string> {
    const cp = this.requireCheckpoints();
    return this.savedStep === this.step ? resolveCheckpoint('latest', cp.runDir) : this.checkpoint();
  }

  private requireCheckpoints(): LoopCheckpoints {
    if (!this.spec.checkpoints) throw new RoundtripError(`${this.spec.label}: this run keeps no checkpoints`);
    return this.spec.checkpoints;
  }

  private stopError(trip: GuardTrip, rollback: string | undefined, policy: NanPolicy, retries: number): Error {
    return (this.guard.error ?? ((t, r, p, n) => guardError(t, r, p, n, this.spec.label)))(trip, rollback, policy, retries);
  }

  private saves(step: number): boolean {
    const cp = this.spec.checkpoints;
    if (!cp) return false;
    return (cp.every > 0 && step % cp.every === 0) || step >= this.spec.totalSteps || this.stopFlag.stop || !!cp.alsoSavesAt?.(step);
  }

  /** Runs the steps from the current one to `totalSteps` (or a stop). */
  async run(): Promise<TrainingLoopResult> {
    const { spec, guard, result } = this;
    const total = spec.totalSteps;
    const stop = this.stopFlag;
    const cp = spec.checkpoints;
    // Rolling back needs a verified state to go to: a fresh run under skip-batch/lower-lr keeps its start.
    if (cp && !this.resumed && guard.policy !== 'stop') {
      const trip = checkTensors(0, spec.tensors, guard.weightBound);
      if (trip) throw new RoundtripError(`${spec.label}: the base weights already fail the guard: ${trip.message}`);
      this.verifiedStep = 0;
      await this.checkpoint();
    }
    const progress: Progress | undefined = spec.progress && createProgress({ ...spec.progress, total, unit: 'step', start: this.step });
    const started = Date.now();
    try {
      while (this.step < total && !stop.stop) {
        const t0 = Date.now();
        const lr = this.lrScale * learningRate(spec.schedule, this.step, total);
        const out = await spec.objective.step({ step: this.step, lr, microBatches: spec.microBatches ?? 1, stop: stop.stop, skipped: this.skipped });
        let loss = out.loss;
        const replaced = spec.hooks?.afterLoss?.(this.step, loss);
        if (typeof replaced === 'number') loss = replaced;
        const terms = out.terms ?? {};
        // Data-parallel: a stop (SIGINT) on any rank stops every rank after this same step.
        if ((out.stopVotes ?? 0) > 0) stop.stop = true;
        const step = ++this.step;
        await spec.hooks?.afterUpdate?.(step);
        // The weights are checked one by one only when they are about to be saved (and named on a trip); every
        // step checks the numbers and the step's largest |w|.
        const saving = this.saves(step);
        const trip = guardStep({ step, loss, terms, gradNorm: out.gradNorm }, spec.tensors, {
          weightBound: guard.weightBound,
          paramMaxAbs: out.paramMaxAbs,
          applied: out.applied,
          verifyTensors: saving,
        });
        if (!trip && saving) this.verifiedStep = step;
        if (trip) {
          this.trips++;
          const back = cp ? lastVerifiedCheckpoint(cp.runDir) : undefined;
          if (guard.policy === 'stop' || !back || this.trips > guard.retries) {
            spec.log?.append({ event: 'guard', step, kind: trip.kind, name: trip.name, value: String(trip.value), policy: guard.policy });
            throw this.stopError(trip, back, guard.policy, this.trips - 1);
          }
          // Roll back: the in-memory state is wrecked; the verified checkpoint is not.
          await this.restore(back, 'rollback to');
          if (guard.policy === 'skip-batch') {
            if (out.dataKey === undefined) throw new RoundtripError(`${spec.label}: --nan-policy skip-batch: this objective does not name its batches`);
            this.skipped.add(out.dataKey);
          } else this.lrScale *= guard.lrFactor;
          const to = this.step;
          spec.log?.rewindTo(to, { event: 'rollback', step: to, trip: trip.message, policy: guard.policy, lrScale: this.lrScale, skipped: [...this.skipped] });
          result.rows = result.rows.filter((r) => r.step <= to);
          result.losses = result.rows.map((r) => r.loss);
          result.rollbacks.push({ step: trip.step, to, reason: trip.message, policy: guard.policy });
          const left = guard.retries - this.trips;
          spec.print?.(`${spec.label}: ${trip.message}; rolled back to ${back} (--nan-policy ${guard.policy}${guard.policy === 'lower-lr' ? `, learning rate × ${this.lrScale}` : ', its batches left out'}; ${left} retr${left === 1 ? 'y' : 'ies'} left)`);
          progress?.update(to);
          continue;
        }
        const seconds = Math.max(1e-9, (Date.now() - t0) / 1000);
        const row: LoopRow = {
          step,
          ...out.rowHead,
          loss,
          terms,
          lr,
          gradNorm: out.gradNorm,
          samplesPerSecond: spec.samplesPerStep / seconds,
          stepsPerSecond: 1 / seconds,
          rssMB: rssMB(),
          time: (Date.now() - started) / 1000,
          ...out.rowTail,
        };
        spec.log?.append(row);
        result.rows.push(row);
        result.losses.push(loss);
        progress?.tick();
        const report = spec.report;
        if (report && (step % report.every === 0 || step === total)) report.print(report.line(row, result.losses));
        await spec.hooks?.afterStep?.(row);
        if (cp?.write && cp.every > 0 && step % cp.every === 0 && step < total) result.lastCheckpoint = await this.checkpoint();
      }
    } finally {
      progress?.done();
    }
    result.steps = this.step;
    result.interrupted = stop.stop && this.step < total;
    result.seconds = (Date.now() - started) / 1000;
    return result;
  }
}

/** Runs a loop from step 0 with no checkpoints (pretraining): `new TrainingLoop(spec).run()`. */
export function runTrainingLoop(spec: LoopSpec): Promise<TrainingLoopResult> {
  const loop = new TrainingLoop(spec);
  loop.start();
  return loop.run();
}

/**
 * A TypeScript objective (pretraining's): per micro-batch `lossFn(step, micro)` in a tensor scope, backward
 * (scaled by 1/micro-batches when accumulating), global-norm clipping to `clip`, the AdamW step at the loop's
 * learning rate. A non-finite loss stops before backward and a non-finite gradient norm before the update:
 * the step is refused (`applied: false`) and the guard trips, as for the native joint step.
 */
export function backpropObjective(optimizer: AdamW, lossFn: (step: number, micro: number) => Promise<Tensor>, opts: { clip: number }): TrainingObjective {
  return {
    async step({ step, lr, microBatches }): Promise<StepOutcome> {
      optimizer.setLr(lr);
      optimizer.zeroGrad();
      let loss = 0;
      for (let k = 0; k < microBatches; k++) {
        const value = await scope(() => lossFn(step, k));
        try {
          const v = value.item();
          loss += microBatches > 1 ? v / microBatches : v;
          if (!Number.isFinite(v)) return { loss: v, gradNorm: {} as Record<string, number>, applied: false };
          const scaled = microBatches > 1 ? value.div(microBatches) : value;
          try {
            await scaled.backward();
          } finally {
            if (scaled !== value) scaled.dispose();
          }
        } finally {
          value.dispose();
        }
      }
      const norm = optimizer.clipGradNorm(opts.clip);
      if (!Number.isFinite(norm)) return { loss, gradNorm: { total: norm }, applied: false };
      await optimizer.step();
      return { loss, gradNorm: { total: norm }, applied: true };
    },
  };
}
