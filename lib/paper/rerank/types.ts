/**
 * Records and settings of a reranking run, as written to `run.json` and `results.jsonl`.
 *
 * Distances are "lower is closer" for every method, so the winner is always the argmin:
 * - image methods (i2t2i): `clip`, `dino` = 1 − cos of image embeddings (input vs reconstruction);
 * - text methods (t2i2t): `clip-text`, `sbert` = 1 − cos of text embeddings (input vs caption),
 *   `cider` = −CIDEr-D of the caption against the input text (negated so lower is closer),
 *   `wmd` = Word Mover's Distance (paper protocol).
 */
export type Direction = 'i2t2i' | 't2i2t';
export const IMAGE_SIMILARITIES = ['clip', 'dino'] as const;
export type ImageSimilarity = (typeof IMAGE_SIMILARITIES)[number];
export const TEXT_SIMILARITIES = ['clip-text', 'sbert', 'cider', 'wmd'] as const;
export type TextSimilarity = (typeof TEXT_SIMILARITIES)[number];
export type Similarity = ImageSimilarity | TextSimilarity;

/** Stable Diffusion sampling settings (part of the image cache key). */
export interface SdSettings {
  scheduler: string;
  steps: number;
  guidance: number;
  height: number;
  width: number;
  negative: string;
}

/** BLIP decoding settings. */
export interface BlipSettings {
  strategy: 'top-p' | 'top-k' | 'temperature' | 'beam' | 'greedy';
  topP?: number;
  topK?: number;
  temperature?: number;
  repetitionPenalty: number;
  numBeams?: number;
  maxLength: number;
  minLength: number;
}

/** Everything that determines a run's results; stored in `run.json` and checked on resume/merge. */
export interface RunSettings {
  direction: Direction;
  models: { blip: string; sd: string; clip?: string; dino?: string; sbert?: string; glove?: string };
  similarity: Similarity[];
  clipVariant: 'pooled' | 'projected';
  dinoSize?: number;
  k: number;
  seed: number;
  repeats: number;
  blip: BlipSettings;
  sd: SdSettings;
  dataset: { kind: string; source: string; items: number };
  /** How seeds are derived (documentation for readers of the reports). */
  seeding: string;
}

/** `run.json`: the settings plus the shard this folder holds. */
export interface RunManifest {
  version: 1;
  settings: RunSettings;
  shard: { index: number; count: number };
  created: string;
}

export interface CandidateRecord {
  /** Candidate index j (0-based). */
  index: number;
  /** i2t2i: BLIP's candidate caption; t2i2t: BLIP's caption of the generated image. */
  text: string;
  /** i2t2i: SD's reconstruction of the caption; t2i2t: the generated candidate image. Relative to the run folder. */
  image: string;
  /** SD seed of that image. */
  seed: number;
  /** Per similarity method: distance to the input (lower = closer; see module comment). */
  distance: Record<string, number>;
  /** Per similarity method: rank 1..K by distance (1 = closest; ties keep candidate order). */
  rank: Record<string, number>;
  /** Quality against the references that does not depend on the rest of the corpus (per-caption BLEU, CLIP image–text distance…). */
  scores: Record<string, number>;
}

export interface ItemRecord {
  direction: Direction;
  /** Index in the whole (unsharded) dataset. */
  index: number;
  id: string;
  input: { image?: string; text?: string };
  /** Reference captions (i2t2i: the human captions; t2i2t: the input text, plus its real image's captions when known). */
  references: string[];
  /** Real image paired with a t2i2t prompt (for FID and image distances), when known. */
  realImage?: string;
  candidates: CandidateRecord[];
  /** Per similarity method: index of the winning candidate (argmin distance). */
  winner: Record<string, number>;
  /** R seeded random picks (candidate indices): the baseline. */
  baseline: number[];
  warnings?: string[];
  seconds: number;
}
