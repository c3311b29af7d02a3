/**
 * The joint objective (Eq. 5) over one batch, sharing work between terms: BLIP's vision tower runs once
 * (without a graph when it is frozen), the VAE encode and the caption ids' CLIP embeddings run without a
 * graph, and L_sd and L_rec_txt share one UNet forward. The release's alternating schedule evaluates
 * {L_sd, L_rec_txt} on even steps and {L_cap, L_rec_img} on odd steps.
 */
import { expectNumber, expectOneOf } from '../errors';
import type { VocabularyBridge } from '../bridge';
import type { Blip } from '../models/blip';
import type { StableDiffusionPipeline } from '../models/sd/pipeline';
import { Tensor, noGrad } from '../tensor';
import {
  CaptionBatch,
  ItemSlots,
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

export interface ObjectiveOptions {
  weights: LossWeights;
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
  /** The items' places in a data-parallel global batch (random draws follow the global item). */
  slots?: ItemSlots;
}

/** Which terms a step evaluates (weights zero or the alternating parity switch the others off). */
export function activeTerms(opts: ObjectiveOptions, step: number): LossTerm[] {
  LOSS_TERMS.forEach((t) => expectNumber(`weight ${t}`, opts.weights[t], { min: 0 }));
  let terms = LOSS_TERMS.filter((t) => opts.weights[t] > 0);
  if (opts.schedule === 'alternating') terms = terms.filter((t) => (step % 2 === 0 ? t === 'sd' || t === 'recTxt' : t === 'cap' || t === 'recImg'));
  return terms;
}

/**
 * Evaluates the weighted objective on a batch: the total (with graph) and each term's tensor. `seed`
 * drives every random draw of the step (timesteps, noise, VAE posterior samples).
 */
export async function jointObjective(
  models: { blip: Blip; sd: StableDiffusionPipeline; bridge: VocabularyBridge; visionTrainable: boolean },
  batch: JointBatch,
  opts: ObjectiveOptions,
  step: number,
  seed: number,
): Promise<{ total: Tensor; terms: Partial<Record<LossTerm, Tensor>> }> {
  const { blip, sd, bridge } = models;
  const terms = activeTerms(opts, step);
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
  const latents = needLatents ? (batch.latents ?? (await encodeLatents(sd, batch.sdImages, seed, batch.slots))) : undefined;
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
      out.recImg = await reconstructImageLoss(sd, batch.sdImages, P, { seed: seed + 1, latents, slots: batch.slots });
      P.dispose();
    }
    if (terms.includes('sd') || terms.includes('recTxt')) {
      const d = await sdDenoise(sd, batch.sdImages, batch.captions, { seed: seed + 2, latents, slots: batch.slots });
      if (terms.includes('sd')) out.sd = d.loss;
      else d.loss.dispose();
      if (terms.includes('recTxt')) {
        out.recTxt = await reconstructTextLoss(sd, blip, batch.sdImages, batch.captions, { mode: opts.recTxtMode, denoised: d, labelSmoothing: opts.labelSmoothing, seed: seed + 3, slots: batch.slots });
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
