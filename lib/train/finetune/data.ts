/**
 * Finetuning data: COCO Karpathy annotation lists (`[{image, caption, image_id}]`, the layout BLIP's
 * loaders read), a deterministic per-epoch order, and prefetched micro-batches holding both models'
 * inputs. Every random choice of item i in epoch e comes from deriveSeed(seed, e, i), so a resumed run
 * sees exactly the batches an uninterrupted one would.
 */
import { loadImageCaptions } from '../../metrics/annotations';
import { RoundtripError } from '../../errors';
import { loadImage } from '../../image/decode';
import { PreprocessConfig, blipTrainPreprocess, preprocessImage, sdVaePreprocess, validatePreprocessConfig } from '../../image/preprocess';
import { prefetchMap } from '../../image/pool';
import { Rng, deriveSeed } from '../../image/random';
import { Tensor, disposeAll } from '../../runtime/tensor';
import { CaptionBatch, CaptionTokenizers, ClipPadding, encodeCaptions } from '../../paper/joint/losses';
import { shardLength, shardOrder } from '../../runtime/distributed/sampler';

export interface TrainItem {
  /** Absolute image path. */
  image: string;
  caption: string;
  imageId: string;
}

/** Reads a Karpathy-layout annotation file; entries with several captions give one item per caption. */
export function readAnnotations(file: string, imagesDir: string, limit?: number): TrainItem[] {
  const items = loadImageCaptions(file, imagesDir).flatMap((e) => e.captions.map((caption) => ({ image: e.image, caption, imageId: String(e.id) })));
  return limit !== undefined ? items.slice(0, limit) : items;
}

/** The item order of an epoch: a Fisher–Yates shuffle seeded by (seed, epoch). */
export function epochOrder(n: number, seed: number, epoch: number): Uint32Array {
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  const rng = new Rng(deriveSeed(seed, 0x5eed, epoch));
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(0, i + 1);
    const t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  return order;
}

/**
 * What a horizontal flip does to a caption that names sides ("a red circle left of a blue square"):
 * - 'swap': the flip is drawn once per item and shared by both models' views (each view flips when its
 *   model's flip is on), and a flipped view's caption has "left" and "right" exchanged;
 * - 'skip': items whose caption names a side are never flipped (others as 'swap');
 * - 'keep': each view flips independently and captions stay as written (the behaviour before these
 *   options; it corrupts side-naming captions; kept to reproduce old runs).
 */
export const FLIP_SIDES = ['swap', 'skip', 'keep'] as const;
export type FlipSides = (typeof FLIP_SIDES)[number];

const SIDE_WORD = /\b(left|right)\b/gi;

/** Whether a caption names a side ("left"/"right" as words). */
export function namesSide(caption: string): boolean {
  SIDE_WORD.lastIndex = 0;
  return SIDE_WORD.test(caption);
}

/** The caption of the mirrored image: "left" ↔ "right" as whole words, case kept ("Left" → "Right"). */
export function swapSides(caption: string): string {
  return caption.replace(SIDE_WORD, (w) => {
    const to = w.toLowerCase() === 'left' ? 'right' : 'left';
    if (w === w.toUpperCase()) return to.toUpperCase();
    if (w[0] === w[0].toUpperCase()) return to[0].toUpperCase() + to.slice(1);
    return to;
  });
}

export interface AugmentOptions {
  sdSize: number;
  sdRandomCrop: boolean;
  sdFlip: boolean;
  blipSize: number;
  blipMinScale: number;
  /** BLIP view: RandomHorizontalFlip (default on, as BLIP trains). */
  blipFlip?: boolean;
  /** BLIP view: RandomAugment(2, 5) after the flip (BLIP's own training and the authors' release). */
  blipRandAugment?: boolean;
  /** Captions of flipped views (default 'swap'). */
  flipSides?: FlipSides;
}

export interface MicroBatch {
  epoch: number;
  /** Index of this micro-batch within its epoch. */
  position: number;
  items: TrainItem[];
  /** Data-parallel runs: the whole global micro-batch (every rank's items, in global order). */
  globalItems?: TrainItem[];
  /** Each item's caption as its BLIP view shows it (sides swapped when that view is mirrored). */
  blipCaptions: string[];
  /** Each item's caption as its SD view shows it. */
  sdCaptions: string[];
  blipImages: Tensor;
  sdImages: Tensor;
}

interface Prepared {
  blip: Float32Array;
  sd: Float32Array;
  blipCaption: string;
  sdCaption: string;
}

/** The flips of item `index` in `epoch` and the caption each view gets (see FLIP_SIDES). */
export function itemFlips(
  caption: string,
  opts: { seed: number; epoch: number; index: number; sdFlip: boolean; blipFlip: boolean; flipSides: FlipSides },
): { shared: boolean; sd: boolean; blip: boolean; sdCaption: string; blipCaption: string } {
  if (opts.flipSides === 'keep') return { shared: false, sd: false, blip: false, sdCaption: caption, blipCaption: caption };
  let flip = new Rng(deriveSeed(opts.seed, 4, opts.epoch, opts.index)).bernoulli(0.5);
  if (opts.flipSides === 'skip' && namesSide(caption)) flip = false;
  const sd = flip && opts.sdFlip;
  const blip = flip && opts.blipFlip;
  return { shared: true, sd, blip, sdCaption: sd ? swapSides(caption) : caption, blipCaption: blip ? swapSides(caption) : caption };
}

/** Micro-batches of `batchSize` per epoch for one rank of `worldSize` (DistributedSampler split). */
export function microBatchesPerEpoch(items: number, batchSize: number, worldSize = 1): number {
  return Math.floor(shardLength(items, worldSize) / batchSize);
}

/**
 * Micro-batches of one epoch starting at `fromPosition`, decoded `concurrency` images ahead (sharp
 * decodes on libuv threads while the step runs). Incomplete trailing batches are dropped. With
 * `worldSize` > 1 this rank reads its DistributedSampler share of the epoch order (lib/runtime/distributed/sampler).
 */
export async function* epochBatches(
  items: TrainItem[],
  opts: AugmentOptions & { seed: number; epoch: number; batchSize: number; fromPosition: number; concurrency: number; rank?: number; worldSize?: number },
): AsyncGenerator<MicroBatch, void, undefined> {
  const flipSides = opts.flipSides ?? 'swap';
  const blipFlip = opts.blipFlip ?? true;
  // 'keep' draws each view's flip inside its recipe (p = 0.5); otherwise the item's shared draw sets p to 0 or 1.
  const sdRecipe: PreprocessConfig = validatePreprocessConfig(sdVaePreprocess({ size: opts.sdSize, randomCrop: opts.sdRandomCrop, randomFlip: opts.sdFlip }));
  const blipRecipe: PreprocessConfig = validatePreprocessConfig(blipTrainPreprocess(opts.blipSize, opts.blipMinScale, { flip: blipFlip, randAugment: opts.blipRandAugment ?? false }));
  const world = opts.worldSize ?? 1;
  const order = epochOrder(items.length, opts.seed, opts.epoch);
  const mine = world > 1 ? shardOrder(order, opts.rank ?? 0, world) : order;
  const perEpoch = Math.floor(mine.length / opts.batchSize);
  const start = opts.fromPosition * opts.batchSize;
  const indices = Array.from(mine.subarray(start, perEpoch * opts.batchSize));
  // Global micro-batch p covers positions p·b·W … (p+1)·b·W − 1 of the order padded by repetition.
  const globalItems = (p: number) => (world > 1 ? Array.from({ length: opts.batchSize * world }, (_, k) => items[order[(p * opts.batchSize * world + k) % order.length]]) : undefined);
  const prepare = async (index: number): Promise<Prepared> => {
    const item = items[index];
    let image;
    try {
      image = await loadImage(item.image);
    } catch (err) {
      throw new RoundtripError(`image '${item.image}': ${err instanceof Error ? err.message : String(err)}`);
    }
    const f = itemFlips(item.caption, { seed: opts.seed, epoch: opts.epoch, index, sdFlip: opts.sdFlip, blipFlip, flipSides });
    const sdView = f.shared ? { ...sdRecipe, flipProbability: f.sd ? 1 : 0 } : sdRecipe;
    const blipView = f.shared ? { ...blipRecipe, flipProbability: f.blip ? 1 : 0 } : blipRecipe;
    const sd = preprocessImage(image, sdView, new Rng(deriveSeed(opts.seed, 1, opts.epoch, index)));
    const blip = preprocessImage(image, blipView, new Rng(deriveSeed(opts.seed, 2, opts.epoch, index)));
    return { sd: sd.data as Float32Array, blip: blip.data as Float32Array, sdCaption: f.sdCaption, blipCaption: f.blipCaption };
  };
  let pending: Prepared[] = [];
  let position = opts.fromPosition;
  let k = 0;
  for await (const p of prefetchMap(indices, prepare, opts.concurrency)) {
    pending.push(p);
    k++;
    if (pending.length === opts.batchSize) {
      const B = opts.batchSize;
      const batchItems = indices.slice(k - B, k).map((i) => items[i]);
      const stack = (key: 'sd' | 'blip', size: number) => {
        const plane = 3 * size * size;
        const data = new Float32Array(B * plane);
        pending.forEach((q, i) => data.set(q[key], i * plane));
        return Tensor.fromTypedArray(data, [B, 3, size, size]);
      };
      yield {
        epoch: opts.epoch,
        position,
        items: batchItems,
        globalItems: globalItems(position),
        blipCaptions: pending.map((q) => q.blipCaption),
        sdCaptions: pending.map((q) => q.sdCaption),
        blipImages: stack('blip', opts.blipSize),
        sdImages: stack('sd', opts.sdSize),
      };
      position++;
      pending = [];
    }
  }
}

/**
 * The micro-batch's captions for both models: BLIP's ids from the BLIP views' captions, SD's CLIP ids
 * from the SD views' (they differ only where one view is mirrored and the caption names a side).
 */
export function encodeViewCaptions(tokenizers: CaptionTokenizers, mb: Pick<MicroBatch, 'blipCaptions' | 'sdCaptions'>, opts: { prompt?: string; clipPadding?: ClipPadding } = {}): CaptionBatch {
  const batch = encodeCaptions(tokenizers, mb.blipCaptions, opts);
  if (mb.sdCaptions.every((c, i) => c === mb.blipCaptions[i])) return batch;
  const sdBatch = encodeCaptions(tokenizers, mb.sdCaptions, opts);
  disposeAll([batch.clipIds, sdBatch.blipIds, sdBatch.blipMask, sdBatch.blipLabels]);
  return { ...batch, clipIds: sdBatch.clipIds };
}
