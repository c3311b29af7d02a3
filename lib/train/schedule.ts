/** Learning-rate schedules, as functions of the optimizer step (0-based) over `totalSteps`. */
import { expectInteger, expectNumber, expectOneOf } from '../errors';

export const LR_SCHEDULES = ['constant', 'constant_with_warmup', 'cosine'] as const;
export type LrScheduleName = (typeof LR_SCHEDULES)[number];

export interface LrScheduleConfig {
  name: LrScheduleName;
  lr: number;
  warmupSteps?: number;
  /** Floor of the cosine schedule (BLIP's `min_lr`, default 0). */
  minLr?: number;
}

/**
 * - constant: lr.
 * - constant_with_warmup: lr·min(1, (step+1)/warmup) (transformers' schedule).
 * - cosine: linear warmup, then minLr + (lr − minLr)·½(1 + cos(π·progress)), progress over the remaining
 *   steps — BLIP's `cosine_lr_schedule` per step instead of per epoch.
 */
export function learningRate(cfg: LrScheduleConfig, step: number, totalSteps: number): number {
  expectOneOf('lr schedule', cfg.name, LR_SCHEDULES);
  expectNumber('lr', cfg.lr, { min: 0 });
  expectInteger('step', step, { min: 0 });
  const warmup = expectInteger('warmup steps', cfg.warmupSteps ?? 0, { min: 0 });
  const minLr = cfg.minLr ?? 0;
  if (cfg.name === 'constant') return cfg.lr;
  if (warmup > 0 && step < warmup) return (cfg.lr * (step + 1)) / warmup;
  if (cfg.name === 'constant_with_warmup') return cfg.lr;
  const span = Math.max(1, totalSteps - warmup);
  const progress = Math.min(1, (step - warmup) / span);
  return minLr + (cfg.lr - minLr) * 0.5 * (1 + Math.cos(Math.PI * progress));
}
