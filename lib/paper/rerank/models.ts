/**
 * The model-facing pieces of reranking: image embedders (CLIP, DINO) over decoded images, the
 * Stable Diffusion image cache, and a CIDEr-D similarity with fixed document frequencies.
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError } from '../../errors';
import { RgbImage, batchToImages, clipPreprocess, dinoPreprocess, loadImage, preprocessBatch, saveRgbPng } from '../../image';
import { FixedCorpusCiderD } from '../../metrics/cider';
import { ptbTokenize } from '../../metrics/ptb-tokenizer';
import { ClipModel, EmbeddingVariant, cosineDistance, rows } from '../../models/clip';
import { StableDiffusionPipeline } from '../../models/sd/pipeline';
import { VitModel } from '../../models/vit';
import { Tensor, noGrad, scope } from '../../runtime/tensor';
import { SdSettings } from './types';
import { CONFIG_DEFAULTS, configInt } from '../../models/config-defaults';

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
  const size = configInt(clip.config, ['vision_config', 'image_size'], CONFIG_DEFAULTS.clip.imageSize, 'CLIP config');
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

/**
 * CIDEr-D of a caption against a single reference text, with document frequencies taken from a
 * fixed corpus (all input texts of the dataset), so the score is meaningful for K candidates of one
 * reference and independent of sharding. Texts are PTB-tokenised first.
 */
export class CiderSimilarity {
  private readonly scorer: FixedCorpusCiderD;

  constructor(corpus: readonly string[]) {
    if (corpus.length === 0) throw new RoundtripError('CIDEr similarity: the corpus of input texts is empty');
    this.scorer = new FixedCorpusCiderD(ptbTokenize([...corpus]));
  }

  /** CIDEr-D of each candidate against `reference` (higher = closer). */
  scores(candidates: readonly string[], reference: string): number[] {
    const tokenized = ptbTokenize([reference, ...candidates]);
    return this.scorer.scores(tokenized.slice(1), tokenized[0]);
  }
}
