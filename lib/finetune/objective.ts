/**
 * The joint objective (Eq. 5) over one batch, sharing work between terms: BLIP's vision tower runs once
 * (without a graph when it is frozen), the VAE encode and the caption ids' CLIP embeddings run without a
 * graph, and L_sd and L_rec_txt share one UNet forward. The release's alternating schedule evaluates
 * {L_sd, L_rec_txt} on even steps and {L_cap, L_rec_img} on odd steps.
 */
import { RoundtripError, expectNumber, expectOneOf } from '../errors';
import type { VocabularyBridge } from '../bridge';
import type { Blip } from '../models/blip';
import type { StableDiffusionPipeline } from '../models/sd/pipeline';
import { Tensor, noGrad } from '../tensor';
import {
  CaptionBatch,
  ReconstructTextMode,
  SoftCaptionMode,
  captionLoss,
  encodeLatents,
  reconstructImageLoss,
  reconstructTextLoss,
  sdDenoise,
  softCaption,
} from './losses';

export const LOSS_TERMS = ['cap', 'recImg', 'sd', 'recTxt'] as const;
export type LossTerm = (typeof LOSS_TERMS)[number];
export type LossWeights = Record<LossTerm, number>;

export const SCHEDULES = ['summed', 'alternating'] as const;
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
 * L_rec_txt judges SD's image through BLIP (its own model: the UNet).
 */
export const GRADIENT_ROUTES = ['both', 'blip', 'unet'] as const;
export type GradientRoute = (typeof GRADIENT_ROUTES)[number];
export interface ReconstructionRoutes {
  recImg: GradientRoute;
  recTxt: GradientRoute;
}

export interface ObjectiveOptions {
  weights: LossWeights;
  /** Default both terms 'both'. */
  routes?: ReconstructionRoutes;
  schedule: ObjectiveSchedule;
  temperature: number;
  softMode: SoftCaptionMode;
  recTxtMode: ReconstructTextMode;
  labelSmoothing: number;
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
}

/** Which terms a step evaluates (weights zero or the alternating parity switch the others off). */
export function activeTerms(opts: ObjectiveOptions, step: number): LossTerm[] {
  LOSS_TERMS.forEach((t) => expectNumber(`weight ${t}`, opts.weights[t], { min: 0 }));
  let terms = LOSS_TERMS.filter((t) => opts.weights[t] > 0);
  if (opts.schedule === 'alternating') terms = terms.filter((t) => (step % 2 === 0 ? t === 'sd' || t === 'recTxt' : t === 'cap' || t === 'recImg'));
  return terms;
}

/** Runs `fn` with `params` frozen (no graph edges into them), restoring their flags after. */
async function withFrozen<T>(params: readonly Tensor[] | undefined, fn: () => Promise<T>): Promise<T> {
  const live = (params ?? []).filter((p) => p.requiresGrad);
  live.forEach((p) => (p.requiresGrad = false));
  try {
    return await fn();
  } finally {
    live.forEach((p) => (p.requiresGrad = true));
  }
}

/**
 * Evaluates the weighted objective on a batch: the total (with graph) and each term's tensor. `seed`
 * drives every random draw of the step (timesteps, noise, VAE posterior samples). Routing a
 * reconstruction term to one model (`opts.routes`) needs that model's trainable tensors in `models.params`.
 */
export async function jointObjective(
  models: { blip: Blip; sd: StableDiffusionPipeline; bridge: VocabularyBridge; visionTrainable: boolean; params?: { blip: Tensor[]; unet: Tensor[] } },
  batch: JointBatch,
  opts: ObjectiveOptions,
  step: number,
  seed: number,
): Promise<{ total: Tensor; terms: Partial<Record<LossTerm, Tensor>> }> {
  const { blip, sd, bridge } = models;
  const terms = activeTerms(opts, step);
  const routes: ReconstructionRoutes = opts.routes ?? { recImg: 'both', recTxt: 'both' };
  expectOneOf('routes.recImg', routes.recImg, GRADIENT_ROUTES);
  expectOneOf('routes.recTxt', routes.recTxt, GRADIENT_ROUTES);
  if ((routes.recImg === 'blip' || routes.recTxt === 'unet') && !models.params) {
    throw new RoundtripError(`jointObjective: routes ${JSON.stringify(routes)} need the trainable tensors (models.params) to hold one model out of a term`);
  }
  const out: Partial<Record<LossTerm, Tensor>> = {};
  const needBlipImage = terms.includes('cap') || terms.includes('recImg');
  // A frozen vision tower needs no graph: its embeddings are computed once and shared.
  let imageEmbeds: Tensor | undefined;
  if (needBlipImage) {
    const vision = () => blip.vision(batch.blipImages);
    const v = models.visionTrainable ? await vision() : await noGrad(vision);
    v.poolerOutput.dispose();
    imageEmbeds = v.lastHiddenState;
  }
  const needLatents = terms.includes('recImg') || terms.includes('sd') || terms.includes('recTxt');
  const latents = needLatents ? (batch.latents ?? (await encodeLatents(sd, batch.sdImages, seed))) : undefined;
  try {
    if (terms.includes('cap')) out.cap = await captionLoss(blip, { imageEmbeds }, batch.captions, { labelSmoothing: opts.labelSmoothing });
    if (terms.includes('recImg')) {
      const P = await softCaption(blip, { imageEmbeds }, batch.captions, bridge, {
        temperature: opts.temperature,
        mode: opts.softMode,
        startId: opts.clipStartId,
        endId: opts.clipEndId,
        padId: opts.clipPadId,
      });
      // only the UNet: the soft caption enters as a constant; only BLIP: the UNet's weights take no gradient
      const input = routes.recImg === 'unet' ? P.detach() : P;
      out.recImg = await withFrozen(routes.recImg === 'blip' ? models.params?.unet : undefined, () => reconstructImageLoss(sd, batch.sdImages, input, { seed: seed + 1, latents }));
      if (input !== P) input.dispose();
      P.dispose();
    }
    if (terms.includes('sd') || terms.includes('recTxt')) {
      const d = await sdDenoise(sd, batch.sdImages, batch.captions, { seed: seed + 2, latents });
      if (terms.includes('sd')) out.sd = d.loss;
      else d.loss.dispose();
      if (terms.includes('recTxt')) {
        // only BLIP: SD's estimate enters as a constant; only the UNet: BLIP's weights take no gradient
        const prediction = routes.recTxt === 'blip' ? d.prediction.detach() : d.prediction;
        out.recTxt = await withFrozen(routes.recTxt === 'unet' ? models.params?.blip : undefined, () =>
          reconstructTextLoss(sd, blip, batch.sdImages, batch.captions, { mode: opts.recTxtMode, denoised: { ...d, prediction }, labelSmoothing: opts.labelSmoothing, seed: seed + 3 }),
        );
        if (prediction !== d.prediction) prediction.dispose();
      }
      d.prediction.dispose();
      d.noisy.dispose();
      d.timesteps.dispose();
    }
  } finally {
    imageEmbeds?.dispose();
    latents?.dispose();
  }
  let total: Tensor | undefined;
  for (const t of terms) {
    const weighted = out[t]!.mul(opts.weights[t]);
    if (total) {
      const next = total.add(weighted);
      total.dispose();
      weighted.dispose();
      total = next;
    } else total = weighted;
  }
  if (!total) throw new Error('jointObjective: no active loss term (all weights are zero)');
  return { total, terms: out };
}
