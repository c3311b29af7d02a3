/**
 * Held-out quality of the world models, measured on the test split (never trained on):
 *
 * - CLIP: retrieval top-1 among the test images and their first captions (image→text and text→image).
 * - BLIP: greedy captions scored against the five references with BLEU / ROUGE-L / CIDEr-D (PTB
 *   tokenisation, as cocoeval), and the attribute accuracy of the captions (parsed) against the scenes.
 * - SD: images generated from the test images' first captions, read back by the world's attribute
 *   detector and scored against the scenes the captions describe; the detector on the real test images
 *   is reported alongside as the ceiling.
 */
import { batchToImages, RgbImage } from '../../image';
import { NativeModel } from '../../runtime/model';
import { Blip } from '../../models/blip';
import { StableDiffusionPipeline } from '../../models/sd/pipeline';
import { scoreCaptions } from '../../metrics';
import { Tensor, disposeAll, noGrad, scope } from '../../runtime/tensor';
import { BertTokenizer, ClipTokenizer } from '../../tokenizers';
import { AttributeAccuracy, attributeAccuracy, parseCaption, sceneFromImage, scoreDescription } from '../../world';
import { SplitData, gatherRows } from './data';
import { clipIds } from './train';

export interface ClipMetrics {
  n: number;
  imageToTextTop1: number;
  textToImageTop1: number;
  /** 1 / n: the accuracy of guessing. */
  chance: number;
}

function rowsOf(t: Tensor): Float32Array[] {
  const [n, d] = t.shape;
  const data = t.toFloat32Array();
  return Array.from({ length: n }, (_, i) => data.subarray(i * d, (i + 1) * d));
}

function dot(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

function indices(n: number, limit?: number): number[] {
  return Array.from({ length: Math.min(n, limit ?? n) }, (_, i) => i);
}

export async function evaluateClip(clip: NativeModel<'clip'>, tokenizer: ClipTokenizer, test: SplitData, size: number, opts: { limit?: number; batch?: number } = {}): Promise<ClipMetrics> {
  const idx = indices(test.entries.length, opts.limit);
  const batch = opts.batch ?? 64;
  const images: Float32Array[] = [];
  const texts: Float32Array[] = [];
  await noGrad(async () => {
    for (let start = 0; start < idx.length; start += batch) {
      const part = idx.slice(start, start + batch);
      await scope(async () => {
        const out = await clip.call('forward', { input_ids: clipIds(tokenizer, part.map((i) => test.entries[i].captions[0])), pixel_values: gatherRows(test.clipPixels, [3, size, size], part) });
        images.push(...rowsOf(out.image_embeds).map((r) => Float32Array.from(r)));
        texts.push(...rowsOf(out.text_embeds).map((r) => Float32Array.from(r)));
      });
    }
  });
  const n = idx.length;
  let i2t = 0;
  let t2i = 0;
  for (let i = 0; i < n; i++) {
    let bestText = 0;
    let bestImage = 0;
    for (let j = 1; j < n; j++) {
      if (dot(images[i], texts[j]) > dot(images[i], texts[bestText])) bestText = j;
      if (dot(texts[i], images[j]) > dot(texts[i], images[bestImage])) bestImage = j;
    }
    if (bestText === i) i2t++;
    if (bestImage === i) t2i++;
  }
  return { n, imageToTextTop1: i2t / n, textToImageTop1: t2i / n, chance: 1 / n };
}

export interface BlipMetrics {
  n: number;
  decoding: string;
  /** Bleu_1..4, ROUGE_L, CIDEr (CIDEr-D, as cocoeval names it). */
  scores: Record<string, number>;
  /** Attributes the captions state, against the scenes. */
  attributes: AttributeAccuracy;
  /** A few captions next to a reference, for a look. */
  examples: { image: string; caption: string; reference: string }[];
}

export async function evaluateBlip(blip: Blip, tokenizer: BertTokenizer, test: SplitData, size: number, opts: { limit?: number; batch?: number; maxLength?: number } = {}): Promise<BlipMetrics> {
  const idx = indices(test.entries.length, opts.limit);
  const batch = opts.batch ?? 50;
  const captions: string[] = [];
  await noGrad(async () => {
    for (let start = 0; start < idx.length; start += batch) {
      const part = idx.slice(start, start + batch);
      await scope(async () => {
        const gen = await blip.generate(gatherRows(test.clipPixels, [3, size, size], part), { strategy: 'greedy', maxLength: opts.maxLength ?? 30, minLength: 3 });
        captions.push(...gen.tokens.map((ids) => tokenizer.decode(ids, { skipSpecial: true }).trim()));
      });
    }
  });
  const candidates = new Map<number, string>();
  const references = new Map<number, string[]>();
  idx.forEach((i, k) => {
    // cocoeval refuses empty candidates; an empty caption scores zero either way.
    candidates.set(i, captions[k] === '' ? '.' : captions[k]);
    references.set(i, test.entries[i].captions);
  });
  const scored = await scoreCaptions(candidates, references, { metrics: ['BLEU', 'ROUGE_L', 'CIDEr'] });
  const attributes = attributeAccuracy(idx.map((i, k) => scoreDescription(test.entries[i], parseCaption(captions[k]))));
  const examples = idx.slice(0, 5).map((i, k) => ({ image: test.entries[i].image, caption: captions[k], reference: test.entries[i].captions[0] }));
  return { n: idx.length, decoding: `greedy, maxLength ${opts.maxLength ?? 30}, no prompt`, scores: scored.corpus, attributes, examples };
}

export interface SdMetrics {
  n: number;
  sampler: string;
  /** The detector's reading of the generated images, against the scenes their captions describe. */
  generated: AttributeAccuracy;
  /** The same detector on the real test images (its ceiling). */
  real: AttributeAccuracy;
}

export interface SdEvalOptions {
  limit?: number;
  batch?: number;
  steps?: number;
  guidance?: number;
  seed?: number;
  /** Receives the generated images (e.g. to save a grid). */
  onImages?: (images: RgbImage[]) => void;
}

export async function evaluateSd(pipe: StableDiffusionPipeline, test: SplitData, opts: SdEvalOptions = {}): Promise<SdMetrics> {
  const idx = indices(test.entries.length, opts.limit);
  const batch = opts.batch ?? 50;
  const steps = opts.steps ?? 25;
  const guidance = opts.guidance ?? 4;
  const generated: RgbImage[] = [];
  for (let start = 0; start < idx.length; start += batch) {
    const part = idx.slice(start, start + batch);
    const result = await pipe.generate(part.map((i) => test.entries[i].captions[0]), { scheduler: 'ddim', steps, guidance, seed: (opts.seed ?? 0) + start });
    generated.push(...batchToImages(result.images.toFloat32Array(), result.images.shape, { range: '[-1,1]' }));
    disposeAll(result.images);
  }
  opts.onImages?.(generated);
  const score = (images: RgbImage[]) => attributeAccuracy(idx.map((i, k) => scoreDescription(test.entries[i], sceneFromImage(images[k]))));
  return {
    n: idx.length,
    sampler: `ddim ${steps} steps, guidance ${guidance}`,
    generated: score(generated),
    real: score(idx.map((i) => test.images[i])),
  };
}
