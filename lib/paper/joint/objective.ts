/**
 * The joint objective (Eq. 5) over one micro-batch, native end to end (native/train/joint.cc): BLIP's vision
 * tower runs once (without a graph when it is frozen), one decoder forward gives both L_cap and the soft
 * caption, the VAE encode and the caption ids' CLIP embeddings run without a graph, and L_sd and L_rec_txt
 * share one UNet forward. Schedules: 'summed' (every term), 'alternating' ({L_sd, L_rec_txt} on even optimizer
 * steps, {L_cap, L_rec_img} on odd ones) and 'alternating-micro' (the authors' release: the same split by
 * micro-batch index). The same native code runs inside the one-call training step (joint-step.ts).
 */
import { expectNumber, expectOneOf } from '../../errors';
import type { VocabularyBridge } from '../bridge';
import type { Blip } from '../../models/blip';
import type { Blip2 } from '../../models/blip2';
import type { StableDiffusionPipeline } from '../../models/sd/pipeline';
import type { Tensor } from '../../runtime/tensor';
import type { CaptionBatch, ItemSlots, ReconstructTextMode, SoftCaptionMode } from './losses';
import { JointStep } from './joint-step';

export const LOSS_TERMS = ['cap', 'recImg', 'sd', 'recTxt'] as const;
export type LossTerm = (typeof LOSS_TERMS)[number];
export type LossWeights = Record<LossTerm, number>;

export const SCHEDULES = ['summed', 'alternating', 'alternating-micro'] as const;
export type ObjectiveSchedule = (typeof SCHEDULES)[number];

/** Ablation presets: the full objective, reconstruction terms only, or the ordinary caption losses only. */
export const OBJECTIVE_PRESETS = ['joint', 'reconstruction-only', 'caption-only'] as const;
export type ObjectivePreset = (typeof OBJECTIVE_PRESETS)[number];

export function presetWeights(preset: ObjectivePreset): LossWeights {
  expectOneOf('objective preset', preset, OBJECTIVE_PRESETS);
  if (preset === 'reconstruction-only') return { cap: 0, recImg: 1, sd: 0, recTxt: 1 };
  if (preset === 'caption-only') return { cap: 1, recImg: 0, sd: 1, recTxt: 0 };
  return { cap: 1, recImg: 1, sd: 1, recTxt: 1 };
}

/**
 * Which trainable model a reconstruction term updates (the paper's Appendix I ablation): 'both' (Eq. 5),
 * or only 'blip' / only 'unet'. L_rec_img judges BLIP's caption through SD (its own model: BLIP);
 * L_rec_txt judges SD's image through BLIP (its own model: the UNet). Native: the term's input from the
 * held-out model is detached, or the held-out model's weights leave the graph while the term runs.
 */
export const GRADIENT_ROUTES = ['both', 'blip', 'unet'] as const;
export type GradientRoute = (typeof GRADIENT_ROUTES)[number];
export interface ReconstructionRoutes {
  recImg: GradientRoute;
  recTxt: GradientRoute;
}

export const SOFT_FRAMINGS = ['padded', 'release'] as const;
export type SoftFraming = (typeof SOFT_FRAMINGS)[number];

export interface ObjectiveOptions {
  weights: LossWeights;
  /** Which model each reconstruction term updates; default both for both terms. */
  routes?: ReconstructionRoutes;
  schedule: ObjectiveSchedule;
  temperature: number;
  softMode: SoftCaptionMode;
  recTxtMode: ReconstructTextMode;
  labelSmoothing: number;
  /** 'padded' (default): the caption rows framed to 77 like SD's ids; 'release': BOS, every row from the first caption prediction on, EOS. */
  softFraming?: SoftFraming;
  /** CLIP mean/std on L_rec_txt's decoded estimate (default true; the release feeds the [-1, 1] pixels). */
  recTxtNormalize?: boolean;
  /** SD's CLIP special ids for the soft caption framing. */
  clipStartId: number;
  clipEndId: number;
  clipPadId: number;
}

export interface JointBatch {
  /** BLIP side pixels [B, 3, 384, 384] (CLIP mean/std). */
  blipImages: Tensor;
  /** SD side images [B, 3, 512, 512] in [-1, 1]. */
  sdImages: Tensor;
  captions: CaptionBatch;
  /** Scaled VAE latents of `sdImages` when already known (LatentCache); encoded here otherwise. */
  latents?: Tensor;
  /** Data-parallel runs: the items' places in the global batch (random draws follow the global item). */
  slots?: ItemSlots;
  /** Data-parallel runs: weight of this rank's token-mean terms (cap, recTxt), W·n_r/N (lib/train/finetune/distributed.ts). */
  tokenScale?: number;
}

/** Which terms a micro-batch evaluates (weights zero or the alternating parity switch the others off). */
export function activeTerms(opts: ObjectiveOptions, step: number, micro = 0): LossTerm[] {
  LOSS_TERMS.forEach((t) => expectNumber(`weight ${t}`, opts.weights[t], { min: 0 }));
  expectOneOf('schedule', opts.schedule, SCHEDULES);
  let terms = LOSS_TERMS.filter((t) => opts.weights[t] > 0);
  if (opts.schedule !== 'summed') {
    const parity = (opts.schedule === 'alternating' ? step : micro) % 2;
    terms = terms.filter((t) => (parity === 0 ? t === 'sd' || t === 'recTxt' : t === 'cap' || t === 'recImg'));
  }
  return terms;
}

/**
 * Evaluates the weighted objective on a micro-batch: the total (with graph) and each term's tensor. `seed`
 * drives every random draw (timesteps, noise, VAE posterior samples); `micro` is the micro-batch's index in its
 * optimizer step (the 'alternating-micro' schedule).
 */
export async function jointObjective(
  models: { blip: Blip | Blip2; sd: StableDiffusionPipeline; bridge: VocabularyBridge; visionTrainable: boolean },
  batch: JointBatch,
  opts: ObjectiveOptions,
  step: number,
  seed: number,
  micro = 0,
): Promise<{ total: Tensor; terms: Partial<Record<LossTerm, Tensor>> }> {
  return JointStep.cached(models, opts).objective(batch, { step, seed, micro });
}
