/**
 * Reconstruction scores of single pairs (`roundtrip score`):
 * - caption → image: SD draws the caption N times (seeds `deriveSeed(seed, n)`, n < N) and each
 *   drawing is compared with the image (1 − cos, CLIP and/or DINO); the score is the mean.
 * - text ↔ image mirror: BLIP captions the image (beam search, 3 beams) and the caption is compared
 *   with the text (CLIP-text / SBERT 1 − cos, −CIDEr-D against the text, WMD).
 */
import * as path from 'path';
import { RoundtripError, expectInteger, expectString, invalid } from '../../errors';
import { ClipTextEncoder, SbertEncoder, clipTextEmbeddings, loadClipTextEncoder, loadSbertEncoder, sbertEmbeddings } from '../../metrics/eval/text-embeddings';
import { deriveSeed, loadImage } from '../../image';
import { WordVectors, captionWmd, loadNltkStopwords, loadWordVectors } from '../../metrics/wmd';
import { Captioner, loadCaptioner } from '../../models/captioner';
import { ClipModel } from '../../models/clip';
import { StableDiffusionPipeline } from '../../models/sd/pipeline';
import { VitModel } from '../../models/vit';
import { checkPromptLength } from './i2t2i';
import { CiderSimilarity, ImageEmbedder, SdImageCache, clipImageEmbedder, dinoImageEmbedder, distancesTo, sdModelHash } from './models';
import { RERANK_DEFAULTS, clipVariantOf, parseSimilarities, sdSettings } from './run';

/** Drawings per caption by default (the score is their mean). */
export const SCORE_DRAWINGS = 3;

export interface ScoreOptions {
  blip?: string;
  sd?: string;
  clip?: string;
  dino?: string;
  sbert?: string;
  glove?: string;
  /** Methods: clip,dino for caption → image; clip-text,sbert,cider,wmd for the mirror. */
  similarity?: string | string[];
  clipVariant?: string;
  dinoSize?: number;
  /** Drawings per caption (default 3). */
  seeds?: number;
  seed?: number;
  scheduler?: string;
  steps?: number;
  guidance?: number;
  size?: number;
  /** Image cache (default: a `roundtrip-score-cache` folder in the working directory). */
  cache?: string;
  device?: string;
  onWarning?: (m: string) => void;
}

export interface CaptionScore {
  image: string;
  caption: string;
  /** method → mean distance over the drawings. */
  distance: Record<string, number>;
  /** method → distance of each drawing. */
  perSeed: Record<string, number[]>;
  seeds: number[];
  /** The drawings (cache files). */
  drawings: string[];
}

export interface TextScore {
  text: string;
  image: string;
  /** BLIP's caption of the image. */
  caption: string;
  distance: Record<string, number>;
}

/** Loads the models a batch of score requests needs, once. */
export class ReconstructionScorer {
  private owned: { dispose(): void }[] = [];
  private blip?: Captioner;
  private sd?: StableDiffusionPipeline;
  private cache?: SdImageCache;
  private embedders: ImageEmbedder[] = [];
  private clipText?: ClipTextEncoder;
  private sbert?: SbertEncoder;
  private wmd?: { vectors: WordVectors; stopwords: Set<string> };
  private readonly n: number;
  private readonly seed: number;

  private constructor(private readonly opts: ScoreOptions) {
    this.n = expectInteger('--seeds', opts.seeds ?? SCORE_DRAWINGS, { min: 1 });
    this.seed = expectInteger('--seed', opts.seed ?? RERANK_DEFAULTS.seed, { min: 0, max: 0xffffffff });
  }

  /** Models for `mode`: 'caption' (caption → image) or 'text' (image → caption vs text). */
  static async load(mode: 'caption' | 'text', opts: ScoreOptions): Promise<ReconstructionScorer> {
    const s = new ReconstructionScorer(opts);
    try {
      await s.init(mode);
    } catch (err) {
      s.dispose();
      throw err;
    }
    return s;
  }

  private async init(mode: 'caption' | 'text'): Promise<void> {
    const o = this.opts;
    const device = o.device ?? RERANK_DEFAULTS.device;
    const variant = clipVariantOf(o.clipVariant);
    const methods = parseSimilarities(o.similarity, mode === 'caption' ? 'i2t2i' : 't2i2t');
    const need = (flag: keyof ScoreOptions, method: string) => {
      if (!o[flag]) throw new RoundtripError(`--similarity ${method} needs --${flag}`);
      return o[flag] as string;
    };
    if (mode === 'caption') {
      this.sd = await StableDiffusionPipeline.load(expectString('--sd', o.sd), { device });
      this.owned.push(this.sd);
      const settings = sdSettings(o);
      this.cache = new SdImageCache(this.sd, sdModelHash(o.sd!), path.resolve(o.cache ?? 'roundtrip-score-cache'), settings, this.n);
      for (const m of methods) {
        if (m === 'clip') {
          const clip = await ClipModel.load(need('clip', m), { device });
          this.owned.push(clip);
          this.embedders.push(clipImageEmbedder(clip, variant));
        } else if (m === 'dino') {
          const dino = await VitModel.load(need('dino', m), { device });
          this.owned.push(dino);
          this.embedders.push(dinoImageEmbedder(dino, expectInteger('--dino-size', o.dinoSize ?? RERANK_DEFAULTS.dinoSize, { min: 8 })));
        }
      }
    } else {
      this.blip = await loadCaptioner(expectString('--blip', o.blip), { device });
      this.owned.push(this.blip);
      for (const m of methods) {
        if (m === 'clip-text') {
          this.clipText = await loadClipTextEncoder(need('clip', m), { device });
          this.owned.push(this.clipText.model);
        } else if (m === 'sbert') {
          this.sbert = await loadSbertEncoder(need('sbert', m), { device });
          this.owned.push(this.sbert.model);
        } else if (m === 'wmd') this.wmd = { vectors: loadWordVectors(need('glove', m)), stopwords: loadNltkStopwords() };
      }
    }
    this.methods = methods;
    this.variant = variant;
  }

  private methods: string[] = [];
  private variant: 'projected' | 'pooled' = 'projected';

  /** Mean reconstruction distance of `caption` for `image` over the N seeds. */
  async captionDistance(image: string, caption: string): Promise<CaptionScore> {
    if (!this.sd || !this.cache) throw new RoundtripError('ReconstructionScorer: loaded for text scores, not caption scores');
    expectString('--caption', caption);
    const input = await loadImage(expectString('--image', image));
    checkPromptLength(this.sd, caption, `caption for ${image}`, this.opts.onWarning ?? ((m) => console.warn(`warning: ${m}`)));
    const seeds = Array.from({ length: this.n }, (_, n) => deriveSeed(this.seed, n));
    const { files, images } = await this.cache.images(seeds.map(() => caption), seeds);
    const perSeed: Record<string, number[]> = {};
    const distance: Record<string, number> = {};
    for (const e of this.embedders) {
      const v = await e.embed([input, ...images]);
      perSeed[e.name] = distancesTo(v[0], v.slice(1));
      distance[e.name] = perSeed[e.name].reduce((a, b) => a + b, 0) / perSeed[e.name].length;
    }
    return { image, caption, distance, perSeed, seeds, drawings: files };
  }

  /** BLIP captions `image`; distance of that caption to `text`. */
  async textDistance(text: string, image: string): Promise<TextScore> {
    if (!this.blip) throw new RoundtripError('ReconstructionScorer: loaded for caption scores, not text scores');
    expectString('--text', text);
    const [[caption]] = await this.blip.caption([expectString('--image', image)], { strategy: 'beam', numBeams: 3, numReturnSequences: 1, minLength: 5, maxLength: 20 });
    const distance: Record<string, number> = {};
    for (const m of this.methods) {
      if (m === 'clip-text') {
        const v = await clipTextEmbeddings(this.clipText!, [text, caption], { variant: this.variant, batchSize: 2 });
        distance[m] = distancesTo(v[0], [v[1]])[0];
      } else if (m === 'sbert') {
        const v = await sbertEmbeddings(this.sbert!, [text, caption], { batchSize: 2 });
        distance[m] = distancesTo(v[0], [v[1]])[0];
      } else if (m === 'cider') {
        // a single pair has no corpus: idf from the text and the caption themselves
        distance[m] = -new CiderSimilarity([text, caption]).scores([caption], text)[0];
      } else if (m === 'wmd') distance[m] = captionWmd(this.wmd!.vectors, caption, [text], { stopwords: this.wmd!.stopwords }).mean;
    }
    return { text, image, caption, distance };
  }

  dispose(): void {
    this.owned.reverse().forEach((m) => m.dispose());
    this.owned = [];
  }
}

/** One score request of the batch form: `{image, caption}` or `{text, image}`. */
export type ScoreRequest = { image: string; caption: string } | { text: string; image: string };

/** Parses a batch file's JSON: a list of `{image, caption}` (caption scores) or `{text, image}` (mirror). */
export function parseScoreRequests(json: unknown, source: string): { mode: 'caption' | 'text'; requests: ScoreRequest[] } {
  if (!Array.isArray(json) || json.length === 0) throw invalid(source, 'a non-empty list of {image, caption} or {text, image}', json);
  const mode = typeof (json[0] as { caption?: unknown }).caption === 'string' ? 'caption' : 'text';
  json.forEach((e, i) => {
    const r = e as Record<string, unknown>;
    if (!r || typeof r !== 'object' || typeof r.image !== 'string' || typeof r[mode] !== 'string') {
      throw invalid(`${source} entry ${i}`, mode === 'caption' ? '{image, caption} strings (like entry 0)' : '{text, image} strings (like entry 0)', e);
    }
  });
  return { mode, requests: json as ScoreRequest[] };
}
