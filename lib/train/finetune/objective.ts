/**
 * Joint finetuning's plug-in for the one training loop (lib/train/loop.ts): each optimizer step is one native
 * call (`JointStep.run`: every micro-batch's forward and backward, clipping, AdamW per model, one host sync).
 */
import type { JointStep } from '../../paper/joint/joint-step';
import type { JointBatch } from '../../paper/joint/objective';
import type { StepContext, TrainingObjective } from '../loop';

/** One step's micro-batches as drawn from the data. */
export interface DrawnStep {
  batches: JointBatch[];
  /** Per micro-batch seed of the step's draws (timesteps, noise). */
  seeds: number[];
  /** Where the step's data began (`skip-batch` leaves it out on replay). */
  dataKey?: string;
  /** Log-row fields of the data (the epoch). */
  rowHead?: Record<string, unknown>;
  /** Frees the batches once the step has run. */
  dispose(): void;
}

/**
 * The joint objective as a loop plug-in: `draw` gives the step's micro-batches (as many as `ctx.microBatches`),
 * the native step runs them at the loop's learning rate. `rowTail` adds fields to the step's log row
 * (data-parallel all-reduce times).
 */
export function jointStepObjective(jointStep: JointStep, draw: (ctx: StepContext) => Promise<DrawnStep>, rowTail?: () => Record<string, unknown>): TrainingObjective {
  return {
    async step(ctx) {
      const drawn = await draw(ctx);
      let stats;
      try {
        stats = await jointStep.run(drawn.batches, { step: ctx.step, lr: ctx.lr, seeds: drawn.seeds, stop: ctx.stop });
      } finally {
        drawn.dispose();
      }
      const { total, blip, unet } = stats.gradNorm;
      return {
        loss: stats.loss,
        terms: stats.terms,
        // The guard names the first non-finite norm in this order.
        gradNorm: { total, blip, unet },
        paramMaxAbs: stats.paramMaxAbs,
        applied: stats.applied,
        stopVotes: stats.stopVotes,
        dataKey: drawn.dataKey,
        rowHead: drawn.rowHead,
        rowTail: rowTail?.() ?? {},
      };
    },
  };
}
