/**
 * The model-facing pieces of reranking: image embedders (CLIP, DINO) over decoded images, the
 * Stable Diffusion image cache, and a CIDEr-D similarity with fixed document frequencies.
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError } from '../errors';
import { RgbImage, batchToImages, clipPreprocess, dinoPreprocess, loadImage, preprocessBatch, saveRgbPng } from '../image';
import { countNgrams, pySplit } from '../metrics/ngrams';
import { ptbTokenize } from '../metrics/ptb-tokenizer';
import { ClipModel, EmbeddingVariant, cosineDistance, rows } from '../models/clip';
import { StableDiffusionPipeline } from '../models/sd/pipeline';
import { VitModel } from '../models/vit';
import { Tensor, noGrad, scope } from '../tensor';
import { SdSettings } from './types';

/** Maps decoded images to embedding vectors. */
export interface ImageEmbedder {
  name: 'clip' | 'dino';
  embed(images: readonly RgbImage[]): Promise<Float32Array[]>;
}

async function embedWith(images: readonly RgbImage[], recipe: ReturnType<typeof clipPreprocess>, run: (pixels: Tensor) => Promise<Tensor>, batchSize = 16): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  await noGrad(async () => {
    for (let start = 0; start < images.length; start += batchSize) {
      const batch = preprocessBatch(images.slice(start, start + batchSize) as RgbImage[], recipe);
      await scope(async () => {
        const pixels = Tensor.fromTypedArray(batch.data as Float32Array, batch.shape);
        // rows() copies to JS, so the vectors outlive the tensor
        out.push(...rows(await run(pixels)));
      });
    }
  });
  return out;
}

/** CLIP image embeddings at the model's own input size (projected or pooled). */
export function clipImageEmbedder(clip: ClipModel, variant: EmbeddingVariant): ImageEmbedder {
  if (!clip.hasVision) throw new RoundtripError('--clip: image similarity needs a full CLIP model with a vision tower');
  const size = clip.config?.vision_config?.image_size ?? 224;
  const recipe = clipPreprocess(size);
  return { name: 'clip', embed: (images) => embedWith(images, recipe, (p) => clip.encodeImage(p, { variant })) };
}

/** DINO CLS embeddings at `size`² (the paper's authors used 384 with position interpolation). */
export function dinoImageEmbedder(dino: VitModel, size = 384): ImageEmbedder {
  const recipe = dinoPreprocess(size);
  return { name: 'dino', embed: (images) => embedWith(images, recipe, (p) => dino.cls(p, { interpolation: 'dino' })) };
}

/** 1 − cos of each candidate against the query. */
export function distancesTo(query: Float32Array, candidates: readonly Float32Array[]): number[] {
  return candidates.map((c) => cosineDistance(query, c));
}

/** Hash identifying an SD folder: its resolved path and the contents of its configs. */
export function sdModelHash(dir: string): string {
  const h = createHash('sha256').update(path.resolve(dir));
  for (const rel of ['model_index.json', 'unet/config.json', 'vae/config.json', 'text_encoder/config.json', 'scheduler/scheduler_config.json']) {
    const file = path.join(dir, rel);
    if (fs.existsSync(file)) h.update(rel).update(fs.readFileSync(file));
  }
  return h.digest('hex').slice(0, 16);
}

/** Schedulers whose steps draw noise: their batch shares one step-noise stream, so they run one image per call. */
const STOCHASTIC_SCHEDULERS = new Set(['ddpm', 'ddpmscheduler']);

/** Generated images, cached as `<cacheDir>/<hash>.png` by (model, prompt, seed, settings). */
export class SdImageCache {
  /** Images generated (not taken from the cache) and native generate calls made. */
  generated = 0;
  calls = 0;
  hits = 0;

  constructor(
    readonly sd: StableDiffusionPipeline,
    readonly modelHash: string,
    readonly cacheDir: string,
    readonly settings: SdSettings,
    /** Prompts per generate call for deterministic schedulers. */
    readonly batchSize = 4,
  ) {
    fs.mkdirSync(cacheDir, { recursive: true });
  }

  keyOf(prompt: string, seed: number): string {
    return createHash('sha256').update(JSON.stringify({ model: this.modelHash, prompt, seed, ...this.settings })).digest('hex').slice(0, 32);
  }

  fileOf(prompt: string, seed: number): string {
    return path.join(this.cacheDir, `${this.keyOf(prompt, seed)}.png`);
  }

  /** Images for (prompt, seed) pairs: read from the cache or generated (in batches), written atomically. */
  async images(prompts: readonly string[], seeds: readonly number[]): Promise<{ files: string[]; images: RgbImage[] }> {
    const files = prompts.map((p, i) => this.fileOf(p, seeds[i]));
    const images: RgbImage[] = new Array(prompts.length);
    const todo: number[] = [];
    for (let i = 0; i < prompts.length; i++) {
      if (fs.existsSync(files[i])) {
        images[i] = await loadImage(files[i]);
        this.hits++;
      } else todo.push(i);
    }
    const stochastic = STOCHASTIC_SCHEDULERS.has(this.settings.scheduler.toLowerCase());
    const step = stochastic ? 1 : this.batchSize;
    for (let s = 0; s < todo.length; s += step) {
      const chunk = todo.slice(s, s + step);
      const result = await this.sd.generate(
        chunk.map((i) => prompts[i]),
        {
          scheduler: this.settings.scheduler,
          steps: this.settings.steps,
          guidance: this.settings.guidance,
          height: this.settings.height,
          width: this.settings.width,
          negative: this.settings.negative,
          seed: chunk.map((i) => seeds[i]),
        },
      );
      this.calls++;
      let decoded: RgbImage[];
      try {
        decoded = batchToImages(result.images.toFloat32Array(), result.images.shape, { range: '[-1,1]' });
      } finally {
        result.images.dispose();
      }
      for (let c = 0; c < chunk.length; c++) {
        images[chunk[c]] = decoded[c];
        await saveRgbPng(files[chunk[c]], decoded[c]);
        this.generated++;
      }
    }
    return { files, images };
  }
}

const CIDER_N = 4;
const CIDER_SIGMA = 6;

/**
 * CIDEr-D of a caption against a single reference text, with document frequencies taken from a
 * fixed corpus (all input texts of the dataset). pycocoevalcap derives them from the evaluated
 * set itself, which for K candidates sharing one reference makes every idf zero; a fixed corpus
 * keeps the score meaningful and independent of sharding. Same weighting, clipping, length
 * penalty (σ = 6) and ×10 as CIDEr-D. Texts are PTB-tokenised first.
 */
export class CiderSimilarity {
  private readonly df = new Map<string, number>();
  private readonly logN: number;

  constructor(corpus: readonly string[]) {
    if (corpus.length === 0) throw new RoundtripError('CIDEr similarity: the corpus of input texts is empty');
    for (const text of ptbTokenize([...corpus])) {
      const seen = new Set<string>();
      for (const m of countNgrams(pySplit(text), CIDER_N)) for (const g of m.keys()) seen.add(g);
      for (const g of seen) this.df.set(g, (this.df.get(g) ?? 0) + 1);
    }
    this.logN = Math.log(corpus.length);
  }

  private vector(text: string): { vec: Map<string, number>[]; norm: number[]; length: number } {
    const counts = countNgrams(pySplit(text), CIDER_N);
    const vec: Map<string, number>[] = [];
    const norm: number[] = [];
    let length = 0;
    for (let k = 0; k < CIDER_N; k++) {
      const v = new Map<string, number>();
      let sq = 0;
      for (const [g, tf] of counts[k]) {
        const w = tf * (this.logN - Math.log(Math.max(1, this.df.get(g) ?? 0)));
        v.set(g, w);
        sq += w * w;
        if (k === 1) length += tf;
      }
      vec.push(v);
      norm.push(Math.sqrt(sq));
    }
    return { vec, norm, length };
  }

  /** CIDEr-D of each candidate against `reference` (higher = closer). */
  scores(candidates: readonly string[], reference: string): number[] {
    const tokenized = ptbTokenize([reference, ...candidates]);
    const ref = this.vector(tokenized[0]);
    return tokenized.slice(1).map((c) => {
      const hyp = this.vector(c);
      const delta = hyp.length - ref.length;
      const penalty = Math.exp(-(delta * delta) / (2 * CIDER_SIGMA * CIDER_SIGMA));
      let sum = 0;
      for (let k = 0; k < CIDER_N; k++) {
        let val = 0;
        for (const [g, w] of hyp.vec[k]) {
          const r = ref.vec[k].get(g) ?? 0;
          val += Math.min(w, r) * r;
        }
        if (hyp.norm[k] !== 0 && ref.norm[k] !== 0) val /= hyp.norm[k] * ref.norm[k];
        sum += val * penalty;
      }
      return (sum / CIDER_N) * 10;
    });
  }
}
