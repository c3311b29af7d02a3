/**
 * The non-finite guard of a training loop: after each optimizer step it checks the step's numbers (loss,
 * loss terms, gradient norms) and the updated trainable tensors, so a run whose weights blow up while its
 * loss still looks fine (or whose gradient norm collapses to 0) is caught at the step it happens, not
 * checkpointed as "good".
 *
 * Every step checks its numbers and the step's largest |w| (measured inside the native step, no extra host
 * read); before a checkpoint or export every trained tensor is checked by itself: finite, max |w| ≤
 * `weightBound` (published weights stay well under 100; 1e4 is far outside anything trained).
 * Checkpoints written after a passing check carry `verified: true` in state.json; rollbacks only go to those.
 *
 * Policies (`nanPolicy`): `stop` (default) ends the run with the report; `skip-batch` rolls back and
 * replays, leaving out the step's batches; `lower-lr` rolls back and replays with the learning rate times
 * `nanLrFactor`. Both retry at most `nanRetries` times per run, then stop.
 */
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError } from '../errors';
import { checkpointsDir, listCheckpoints } from './checkpoint';
import { native } from '../runtime/native';
import { Tensor } from '../runtime/tensor';

export const NAN_POLICIES = ['stop', 'skip-batch', 'lower-lr'] as const;
export type NanPolicy = (typeof NAN_POLICIES)[number];

/** Default RMS bound of a trained tensor. */
export const DEFAULT_WEIGHT_BOUND = 1e4;

/** What a step reports (the trainer's numbers, or the native joint step's). */
export interface StepNumbers {
  step: number;
  loss: number;
  terms: Record<string, number | undefined>;
  gradNorm: Record<string, number>;
}

/** Why the guard tripped: names the step, and the term, gradient or tensor. */
export interface GuardTrip {
  step: number;
  kind: 'loss' | 'term' | 'grad' | 'tensor';
  /** Term name, gradient-norm group ('blip', 'unet', 'total') or tensor name. */
  name: string;
  value: number;
  /** One line for the report. */
  message: string;
}

function fmt(v: number): string {
  return Number.isFinite(v) ? v.toExponential(3) : String(v);
}

/** Checks a step's scalar numbers; the first bad one (terms before the total, which they explain). */
export function checkStepNumbers(n: StepNumbers): GuardTrip | undefined {
  for (const [term, v] of Object.entries(n.terms)) {
    if (v !== undefined && !Number.isFinite(v)) return { step: n.step, kind: 'term', name: term, value: v, message: `step ${n.step}: loss term '${term}' is ${v} (total loss ${n.loss})` };
  }
  if (!Number.isFinite(n.loss)) return { step: n.step, kind: 'loss', name: 'total', value: n.loss, message: `step ${n.step}: the loss is ${n.loss}` };
  for (const [group, v] of Object.entries(n.gradNorm)) {
    if (!Number.isFinite(v)) return { step: n.step, kind: 'grad', name: group, value: v, message: `step ${n.step}: the ${group} gradient norm is ${v} (loss ${fmt(n.loss)})` };
  }
  return undefined;
}

/**
 * Checks trained tensors one by one: each finite with max |w| ≤ bound (one host read per tensor, so this runs
 * when tensors are about to be saved or a trip needs a name, not every step).
 */
export function checkTensors(step: number, tensors: Record<string, Tensor>, bound = DEFAULT_WEIGHT_BOUND): GuardTrip | undefined {
  for (const [name, t] of Object.entries(tensors)) {
    const zeros = Tensor.zeros(t.shape, { dtype: t.dtype, device: t.device });
    let stats: { maxAbs: number; bad: number };
    try {
      // |w − 0| ≤ bound elementwise; NaN counts as bad (compare flags NaN against a non-NaN reference).
      stats = t.detach().compare(zeros, bound, 0);
    } finally {
      zeros.dispose();
    }
    if (stats.bad > 0) {
      const finite = Number.isFinite(stats.maxAbs) && stats.maxAbs > bound;
      return {
        step,
        kind: 'tensor',
        name,
        value: stats.maxAbs,
        message: `step ${step}: trained tensor '${name}' ${finite ? `reached max |w| ${fmt(stats.maxAbs)} (bound ${fmt(bound)}, --weight-bound)` : 'is not finite (NaN or Inf)'}`,
      };
    }
  }
  return undefined;
}

/** Per-tensor gradient norms, to name the tensor behind a bad gradient norm (only on a trip: one read per tensor). */
export function worstGradient(tensors: Record<string, Tensor>): { name: string; norm: number } | undefined {
  for (const [name, t] of Object.entries(tensors)) {
    const norm = native().op('gradNorm', [t.handle], '{}');
    if (!Number.isFinite(norm)) return { name, norm };
  }
  return undefined;
}

export interface GuardOptions {
  weightBound?: number;
  /** The step's largest |w| before its update, when the (native) step measured it. */
  paramMaxAbs?: number;
  /** false when the step itself refused the update (the native step does on non-finite values). */
  applied?: boolean;
  /** Check every tensor (before a checkpoint or an export). */
  verifyTensors?: boolean;
}

/**
 * The whole after-step check: the numbers (loss, terms, gradient norms), the step's largest |w|, then — when
 * the state is about to be saved — every tensor. A trip names the step and the term, gradient or tensor.
 */
export function guardStep(n: StepNumbers, tensors: Record<string, Tensor>, opts: GuardOptions = {}): GuardTrip | undefined {
  const bound = opts.weightBound ?? DEFAULT_WEIGHT_BOUND;
  const trip = checkStepNumbers(n);
  if (trip) {
    if (trip.kind === 'grad') {
      const worst = worstGradient(tensors);
      if (worst) trip.message += `; first non-finite gradient: '${worst.name}'`;
    }
    return trip;
  }
  const max = opts.paramMaxAbs;
  if (max !== undefined && !(max <= bound)) {
    const named = checkTensors(n.step, tensors, bound);
    const msg = `step ${n.step}: the trained weights reached max |w| ${fmt(max)} before this step's update (bound ${fmt(bound)}, --weight-bound)`;
    return named ? { ...named, message: `${msg}; ${named.message.replace(/^step \d+: /, 'now ')}` } : { step: n.step, kind: 'tensor', name: 'weights', value: max, message: msg };
  }
  if (opts.applied === false) {
    return checkTensors(n.step, tensors, bound) ?? { step: n.step, kind: 'grad', name: 'update', value: NaN, message: `step ${n.step}: the step refused its update (non-finite values inside it)` };
  }
  return opts.verifyTensors ? checkTensors(n.step, tensors, bound) : undefined;
}

/** The error a `stop` (or an exhausted retry budget) ends the run with; `label` names the run ('finetune'). */
export function guardError(trip: GuardTrip, rollback: string | undefined, policy: NanPolicy, retries: number, label = 'finetune'): RoundtripError {
  const where = rollback
    ? `the state was not saved; the last verified checkpoint is ${rollback} (resume with --resume ${rollback} and a lower --lr, or --nan-policy skip-batch / lower-lr)`
    : 'the state was not saved and no verified checkpoint exists yet (rerun with a lower --lr, or --nan-policy skip-batch / lower-lr)';
  const why = policy === 'stop' ? '--nan-policy stop' : `--nan-policy ${policy} gave up after ${retries} rollback(s) (--nan-retries)`;
  return new RoundtripError(`${label}: non-finite or out-of-bounds training state: ${trip.message}; ${why}; ${where}`);
}

/** The newest checkpoint of a run whose state.json says the guard verified its tensors. */
export function lastVerifiedCheckpoint(runDir: string): string | undefined {
  for (const name of listCheckpoints(runDir).reverse()) {
    const dir = path.join(checkpointsDir(runDir), name);
    try {
      if (JSON.parse(fs.readFileSync(path.join(dir, 'state.json'), 'utf8')).verified === true) return dir;
    } catch {
      // Unreadable state: not a rollback target.
    }
  }
  return undefined;
}
