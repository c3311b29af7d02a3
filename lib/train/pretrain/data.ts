/**
 * The world's images and captions as training tensors: every split's pixels are rendered once (the same
 * pixels as the PNGs `writeWorld` writes) and preprocessed the way each model's inference code does
 * (CLIP mean/std for BLIP and CLIP, [-1, 1] for the VAE), so training and inference see identical inputs.
 */
import { blipPreprocess, preprocessBatch, RgbImage, sdVaePreprocess } from '../../image';
import { Tensor } from '../../runtime/tensor';
import { Rng } from '../../image/random';
import { Split, WorldEntry, WorldManifest, renderScene } from '../../world';

/** One split of the world in memory. */
export interface SplitData {
  entries: WorldEntry[];
  images: RgbImage[];
  /** [N, 3, S, S] float32, CLIP mean/std (BLIP's and CLIP's preprocessing at the native size). */
  clipPixels: Float32Array;
  /** [N, 3, S, S] float32 in [-1, 1] (the VAE's input). */
  vaePixels: Float32Array;
}

export interface WorldData {
  size: number;
  splits: Record<Split, SplitData>;
}

function splitData(entries: WorldEntry[], size: number): SplitData {
  const images = entries.map((e) => renderScene(e, size));
  if (images.length === 0) return { entries, images, clipPixels: new Float32Array(0), vaePixels: new Float32Array(0) };
  const clip = preprocessBatch(images, blipPreprocess(size));
  const vae = preprocessBatch(images, sdVaePreprocess({ size }));
  return { entries, images, clipPixels: clip.data as Float32Array, vaePixels: vae.data as Float32Array };
}

/** Renders and preprocesses every split of a world manifest. */
export function loadWorldData(manifest: WorldManifest): WorldData {
  const size = manifest.size;
  return {
    size,
    splits: {
      train: splitData(manifest.entries.train, size),
      val: splitData(manifest.entries.val, size),
      test: splitData(manifest.entries.test, size),
    },
  };
}

/** Rows `indices` of an [N, ...rest] array as a tensor [indices.length, ...rest]. */
export function gatherRows(data: Float32Array, rowShape: number[], indices: readonly number[]): Tensor {
  const row = rowShape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(indices.length * row);
  indices.forEach((index, i) => out.set(data.subarray(index * row, (index + 1) * row), i * row));
  return Tensor.fromTypedArray(out, [indices.length, ...rowShape]);
}

/** An int64 tensor from rows of ids of equal length. */
export function idsTensor(rows: readonly (readonly number[])[]): Tensor {
  const width = rows[0]?.length ?? 0;
  const flat = new BigInt64Array(rows.length * width);
  rows.forEach((r, i) => r.forEach((v, j) => (flat[i * width + j] = BigInt(v))));
  return Tensor.fromTypedArray(flat, [rows.length, width], 'int64');
}

/**
 * Seeded epoch-wise shuffling: yields batches of `batch` indices of [0, n), each index once per epoch.
 * With `fixed`, always the first batch of the first epoch (to check that a loss goes down).
 */
export class BatchSampler {
  private readonly rng: Rng;
  private order: number[] = [];
  private cursor = 0;
  private first: number[] | undefined;

  constructor(
    private readonly n: number,
    private readonly batch: number,
    seed: number,
    private readonly fixed = false,
  ) {
    this.rng = new Rng(seed);
  }

  next(): number[] {
    if (this.fixed && this.first) return this.first;
    const out: number[] = [];
    while (out.length < this.batch) {
      if (this.cursor >= this.order.length) {
        this.order = Array.from({ length: this.n }, (_, i) => i);
        for (let i = this.n - 1; i > 0; i--) {
          const j = this.rng.int(0, i + 1);
          [this.order[i], this.order[j]] = [this.order[j], this.order[i]];
        }
        this.cursor = 0;
      }
      out.push(this.order[this.cursor++]);
    }
    this.first ??= out;
    return out;
  }

  /** The sampler's generator, for per-batch choices (captions, timesteps) in the same seeded stream. */
  get random(): Rng {
    return this.rng;
  }
}
