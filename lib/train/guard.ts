/**
 * The non-finite guard of a training loop: after each optimizer step it checks the step's numbers (loss,
 * loss terms, gradient norms) and the updated trainable tensors, so a run whose weights blow up while its
 * loss still looks fine (or whose gradient norm collapses to 0) is caught at the step it happens, not
 * checkpointed as "good".
 *
 * The tensor check is one pass: each tensor's sum of squares on the device (in float64, so a finite 1e20
 * weight is reported as 1e20, not as an overflow), stacked, one host read. A tensor trips when that is not
 * finite or its RMS exceeds `weightBound` (published weights have RMS well under 1; 1e4 is far outside
 * anything trained).
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
import { native } from '../native';
import { Tensor, disposeAll } from '../tensor';

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
 * Sums of squares of tensors in one host read (`precomputed` values, e.g. norms² the native step already
 * returned, are used as they are).
 */
export function sumsOfSquares(tensors: Record<string, Tensor>): Record<string, number> {
  const names = Object.keys(tensors);
  if (names.length === 0) return {};
  const temps: Tensor[] = [];
  try {
    const sums = names.map((n) => {
      // In float64: a float32 weight of 1e20 is finite, its square is not.
      const d = tensors[n].detach();
      const f = d.dtype === 'float64' ? d : d.to(undefined, 'float64');
      const sq = Tensor.op('pow', [f], { exponent: 2 });
      const s = sq.sum();
      temps.push(d, sq, s);
      if (f !== d) temps.push(f);
      return s;
    });
    const stacked = Tensor.stack(sums);
    temps.push(stacked);
    const host = stacked.to('cpu');
    temps.push(host);
    const values = host.toTypedArray() as Float64Array;
    return Object.fromEntries(names.map((n, i) => [n, values[i]]));
  } finally {
    disposeAll(temps);
  }
}

/** Checks updated tensors: each finite with RMS ≤ bound. */
export function checkTensors(step: number, tensors: Record<string, Tensor>, bound = DEFAULT_WEIGHT_BOUND, sums = sumsOfSquares(tensors)): GuardTrip | undefined {
  for (const [name, ss] of Object.entries(sums)) {
    const numel = tensors[name]?.numel ?? 1;
    const rms = Math.sqrt(ss / Math.max(1, numel));
    if (!Number.isFinite(rms) || rms > bound) {
      return {
        step,
        kind: 'tensor',
        name,
        value: rms,
        message: `step ${step}: trained tensor '${name}' ${Number.isFinite(rms) ? `has RMS ${fmt(rms)} (bound ${fmt(bound)}, --weight-bound)` : 'is not finite (NaN or Inf after the update)'}`,
      };
    }
  }
  return undefined;
}

/** Per-tensor gradient norms, to name the tensor behind a bad gradient norm (only on a trip: one read per tensor). */
export function worstGradient(tensors: Record<string, Tensor>): { name: string; norm: number } | undefined {
  let worst: { name: string; norm: number } | undefined;
  for (const [name, t] of Object.entries(tensors)) {
    const norm = (native() as any).op('gradNorm', [t.handle], '{}') as number;
    if (!Number.isFinite(norm)) return { name, norm };
    if (!worst || norm > worst.norm) worst = { name, norm };
  }
  return worst;
}

/**
 * The whole after-step check: numbers first (cheap), then the tensors. A gradient trip names the tensor
 * whose gradient is bad when `tensors` still hold their gradients.
 */
export function guardStep(n: StepNumbers, tensors: Record<string, Tensor>, opts: { weightBound?: number; sums?: Record<string, number> } = {}): GuardTrip | undefined {
  const trip = checkStepNumbers(n);
  if (trip) {
    if (trip.kind === 'grad') {
      const worst = worstGradient(tensors);
      if (worst && !Number.isFinite(worst.norm)) trip.message += `; first non-finite gradient: '${worst.name}'`;
    }
    return trip;
  }
  return checkTensors(n.step, tensors, opts.weightBound ?? DEFAULT_WEIGHT_BOUND, opts.sums ?? sumsOfSquares(tensors));
}

/** The error a `stop` (or an exhausted retry budget) ends the run with. */
export function guardError(trip: GuardTrip, rollback: string | undefined, policy: NanPolicy, retries: number): RoundtripError {
  const where = rollback
    ? `the state was not saved; the last verified checkpoint is ${rollback} (resume with --resume ${rollback} and a lower --lr, or --nan-policy skip-batch / lower-lr)`
    : 'the state was not saved and no verified checkpoint exists yet (rerun with a lower --lr, or --nan-policy skip-batch / lower-lr)';
  const why = policy === 'stop' ? '--nan-policy stop' : `--nan-policy ${policy} gave up after ${retries} rollback(s) (--nan-retries)`;
  return new RoundtripError(`finetune: non-finite or out-of-bounds training state: ${trip.message}; ${why}; ${where}`);
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
