/**
 * Per-item measures of one model pair on the world's held-out test images, so that arms can be compared
 * item by item (paired intervals):
 *
 * - BLIP (beam 3) captions: CIDEr-D against the five references, and colour / shape / full-consistency
 *   accuracy of the parsed caption against the scene;
 * - Stable Diffusion (one image per test caption, seeded by the item, DDIM): CLIP distance between the
 *   image and its prompt (projected embeddings), and the detector's colour / shape / consistency;
 * - the four loss terms with fixed draws (lib/paper/joint/recon.ts).
 *
 * Each measure is a numerator/denominator pair per item (lib/paper/experiment/stats.ts).
 */
import * as path from 'path';
import { VocabularyBridge } from '../bridge';
import { ClipTextEncoder, clipTextEmbeddings } from '../../metrics/eval/text-embeddings';
import { batchToImages } from '../../image/encode';
import type { RgbImage } from '../../image/types';
import { deriveSeed } from '../../image/random';
import { ciderD } from '../../metrics/cider';
import { Blip } from '../../models/blip';
import { ClipModel, cosineDistance } from '../../models/clip';
import { StableDiffusionPipeline } from '../../models/sd/pipeline';
import { clipImageEmbedder } from '../rerank/models';
import { preCaption } from '../../tokenizers/blip';
import { BertTokenizer } from '../../tokenizers/bert';
import { WorldEntry, parseCaption, sceneFromImage, scoreDescription, DescriptionScore } from '../../world';
import { HeldOutItem, RECON_TERMS, ReconOptions, heldOutLosses } from '../joint/recon';

/** One item's value of a measure: Σ numerator / Σ denominator over items gives the measure. */
export type Sample = [number, number];

export interface MetricDef {
  key: string;
  label: string;
  higherIsBetter: boolean;
  /** Which model it measures (an arm that leaves this model untouched reuses the base model's numbers). */
  model: 'blip' | 'sd' | 'both';
}

export const METRICS: readonly MetricDef[] = [
  { key: 'cider', label: 'BLIP captions: CIDEr-D', higherIsBetter: true, model: 'blip' },
  { key: 'capColor', label: 'BLIP captions: colour accuracy', higherIsBetter: true, model: 'blip' },
  { key: 'capShape', label: 'BLIP captions: shape accuracy', higherIsBetter: true, model: 'blip' },
  { key: 'capConsistent', label: 'BLIP captions: fully consistent', higherIsBetter: true, model: 'blip' },
  { key: 'clipDistance', label: 'SD images: CLIP distance to the prompt', higherIsBetter: false, model: 'sd' },
  { key: 'imgColor', label: 'SD images: colour accuracy', higherIsBetter: true, model: 'sd' },
  { key: 'imgShape', label: 'SD images: shape accuracy', higherIsBetter: true, model: 'sd' },
  { key: 'imgConsistent', label: 'SD images: fully consistent', higherIsBetter: true, model: 'sd' },
  { key: 'cap', label: 'held-out L_cap', higherIsBetter: false, model: 'blip' },
  { key: 'sd', label: 'held-out L_sd', higherIsBetter: false, model: 'sd' },
  { key: 'recImg', label: 'held-out L_rec_img', higherIsBetter: false, model: 'both' },
  { key: 'recTxt', label: 'held-out L_rec_txt', higherIsBetter: false, model: 'both' },
];

export interface EvalSettings {
  test: readonly WorldEntry[];
  worldDir: string;
  size: number;
  sdSteps: number;
  guidance: number;
  /** Seed of SD's sampling noise and of the loss draws (the same for every arm). */
  seed: number;
  maxLength: number;
  minLength: number;
  /** Test items the loss terms are measured on (the first ones). */
  lossItems: number;
  prompt: string;
}

function descriptionSamples(scores: DescriptionScore[], prefix: 'cap' | 'img'): Record<string, Sample[]> {
  return {
    [`${prefix}Color`]: scores.map((s) => [s.color.correct, s.color.total]),
    [`${prefix}Shape`]: scores.map((s) => [s.shape.correct, s.shape.total]),
    [`${prefix}Consistent`]: scores.map((s) => [s.consistent ? 1 : 0, 1]),
  };
}

/** BLIP on its own: beam captions, CIDEr-D per item, caption attributes. */
export async function evaluateBlip(blip: Blip, s: EvalSettings): Promise<{ captions: string[]; samples: Record<string, Sample[]> }> {
  const captions = (
    await blip.caption(
      s.test.map((e) => path.resolve(s.worldDir, e.image)),
      { strategy: 'beam', numBeams: 3, maxLength: s.maxLength, minLength: s.minLength, batchSize: 16 },
    )
  ).map((c) => c[0]);
  const scored = captions.map((c) => (c.trim() === '' ? '(empty)' : c));
  const cider = ciderD(scored.map((c) => preCaption(c)), s.test.map((e) => e.captions.map((r) => preCaption(r)))).perImage;
  const scores = s.test.map((e, i) => scoreDescription(e, parseCaption(captions[i])));
  return { captions, samples: { cider: cider.map((v) => [v, 1]), ...descriptionSamples(scores, 'cap') } };
}

/** SD on its own: one image per test prompt (caption 0), seeded per item. */
export async function evaluateSd(sd: StableDiffusionPipeline, clip: ClipTextEncoder, s: EvalSettings): Promise<Record<string, Sample[]>> {
  const prompts = s.test.map((e) => e.captions[0]);
  const seeds = s.test.map((_, i) => deriveSeed(s.seed, 0x5d, i) & 0x7fffffff);
  const images: RgbImage[] = [];
  for (let start = 0; start < prompts.length; start += 8) {
    const r = await sd.generate(prompts.slice(start, start + 8), { scheduler: 'ddim', steps: s.sdSteps, guidance: s.guidance, seed: seeds.slice(start, start + 8), height: s.size, width: s.size });
    const data = r.images.toFloat32Array();
    const shape = r.images.shape;
    r.images.dispose();
    images.push(...batchToImages(data, shape, { range: '[-1,1]' }));
  }
  const textVectors = await clipTextEmbeddings(clip, prompts, { variant: 'projected', batchSize: 16 });
  const imageVectors = await clipImageEmbedder(clip.model as ClipModel, 'projected').embed(images);
  const scores = s.test.map((e, i) => scoreDescription(e, sceneFromImage(images[i])));
  return {
    clipDistance: textVectors.map((t, i) => [cosineDistance(t, imageVectors[i]), 1]),
    ...descriptionSamples(scores, 'img'),
  };
}

/** The four loss terms on the first `lossItems` test items (fixed draws). */
export async function evaluateLosses(models: { blip: Blip; sd: StableDiffusionPipeline; bridge: VocabularyBridge; bert: BertTokenizer }, s: EvalSettings, extra: Partial<ReconOptions> = {}): Promise<Record<string, Sample[]>> {
  const items: HeldOutItem[] = s.test.slice(0, s.lossItems).map((e) => ({ image: path.resolve(s.worldDir, e.image), captions: e.captions }));
  const losses = await heldOutLosses(models, items, { seed: deriveSeed(s.seed, 0x1055), blipSize: s.size, sdSize: s.size, prompt: s.prompt, ...extra });
  return Object.fromEntries(RECON_TERMS.map((t) => [t, losses[t].map((v): Sample => [v, 1])]));
}
