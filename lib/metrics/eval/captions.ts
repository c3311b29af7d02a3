/**
 * Caption evaluation as the paper reports it: the COCO caption metrics (BLEU-1..4, METEOR,
 * ROUGE-L, CIDEr-D, SPICE, exactly as pycocoevalcap computes them) plus embedding metrics:
 *
 * - `wmd`: the paper's Word Mover's Distance protocol (`captionWmd`: lower-case, whitespace split,
 *   NLTK's 179 English stop words removed, gensim `wmdistance` with GloVe vectors, mean over the
 *   references). Lower is better. Infinity (no in-vocabulary word on one side) is kept, as numpy
 *   would keep it in the mean; the images concerned are listed in the warnings.
 * - `clip-text`: 1 − cos between the CLIP text embedding of the candidate and of each reference,
 *   averaged over the references. Variant 'pooled' (default: the text tower's pooler_output, what
 *   the authors' released evaluation used with openai/clip-vit-base-patch32) or 'projected'
 *   (normalised text_embeds of the joint space). Lower is better.
 * - `sbert`: cosine similarity of all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2
 *   normalised), averaged over the references. Higher is better.
 *
 * Embedding metrics use the raw captions (not PTB-tokenised). Every distinct text is encoded once,
 * in batches. Results: one caption per image id, every id must be in the annotations, and empty
 * captions are an error (never silently scored).
 *
 * Under `roundtrip launch` / torchrun (`split`), the text embeddings (by whole batches) and WMD (by image)
 * are split among the ranks and gathered (./distributed.ts); rank 0 runs the COCO metrics and writes.
 */
import * as path from 'path';
import { OptionNames, RoundtripError, expectInteger, expectOneOf, invalid, optionName } from '../../errors';
import {
  AnnotationLayout,
  CaptionAnnotations,
  CaptionMetric,
  ImageId,
  WordVectors,
  captionWmd,
  checkResultsAgainstAnnotations,
  loadCaptionAnnotations,
  loadCaptionResults,
  loadNltkStopwords,
  loadWordVectors,
  parseCaptionAnnotations,
  parseCaptionResults,
  scoreCaptions,
} from '..';
import { EmbeddingVariant, cosineDistance } from '../../models/clip';
import { ClipTextEncoder, SbertEncoder, clipTextEmbeddings, loadClipTextEncoder, loadSbertEncoder, sbertEmbeddings } from './text-embeddings';
import { EvalSplit, gatherValues, isMainRank, ownedItems } from './distributed';

export const CAPTION_EVAL_METRICS = ['bleu', 'meteor', 'rouge', 'cider', 'spice', 'wmd', 'clip-text', 'sbert'] as const;
export type CaptionEvalMetric = (typeof CAPTION_EVAL_METRICS)[number];
/** The metrics that need neither Java nor a model: BLEU, ROUGE-L, CIDEr-D. */
export const DEFAULT_CAPTION_EVAL_METRICS: readonly CaptionEvalMetric[] = ['bleu', 'rouge', 'cider'];
/** Defaults of evaluateCaptions, shown by `roundtrip eval captions --help`. */
export const CAPTION_EVAL_DEFAULTS = { batchSize: 64, clipVariant: 'pooled' } as const;
export const EMBEDDING_VARIANTS: readonly EmbeddingVariant[] = ['pooled', 'projected'];

/** Result keys of the embedding metrics (cocoeval keys are Bleu_1..4, METEOR, ROUGE_L, CIDEr, SPICE). */
export const WMD_KEY = 'WMD';
export const CLIP_TEXT_KEY = 'CLIP_text_distance';
export const SBERT_KEY = 'SBERT_similarity';

const COCO_METRIC: Record<string, CaptionMetric> = { bleu: 'BLEU', meteor: 'METEOR', rouge: 'ROUGE_L', cider: 'CIDEr', spice: 'SPICE' };

/** Candidate captions: a results file, its parsed JSON (`[{image_id, caption}]`) or a map. */
export type CaptionResultsInput = string | ReadonlyMap<ImageId, string> | readonly { image_id: ImageId; caption: string }[];
/** References: an annotation file (Karpathy or COCO layout), its parsed JSON, loaded annotations, or a map. */
export type CaptionAnnotationsInput = string | CaptionAnnotations | ReadonlyMap<ImageId, readonly string[]> | object;

export interface EvaluateCaptionsOptions {
  /** Metric names (array or comma-separated); default bleu, rouge, cider. */
  metrics?: readonly string[] | string;
  /** wmd: GloVe / word2vec text file, or loaded vectors. */
  glove?: string | WordVectors;
  /** wmd: stop words (default NLTK's 179-word English list). */
  stopwords?: ReadonlySet<string>;
  /** clip-text: Hugging Face CLIP folder, or a loaded encoder (not disposed here). */
  clip?: string | ClipTextEncoder;
  /** clip-text: 'pooled' (default) or 'projected'. */
  clipVariant?: EmbeddingVariant;
  /** sbert: sentence-transformers folder (all-MiniLM-L6-v2), or a loaded encoder (not disposed here). */
  sbert?: string | SbertEncoder;
  meteorJar?: string;
  spiceJar?: string;
  java?: string;
  spiceCacheDir?: string;
  /** Device for the embedding models (default cpu). */
  device?: string;
  /** Texts per model call (default 64). */
  batchSize?: number;
  /**
   * Several processes share the embedding passes and WMD (./distributed.ts); every rank must call with the
   * same arguments. Only rank 0's result is complete.
   */
  split?: EvalSplit;
}

export interface CaptionEvaluation {
  metrics: CaptionEvalMetric[];
  /** Number of evaluated images (= result entries). */
  images: number;
  annotationLayout: AnnotationLayout | 'map';
  /** Corpus scores: cocoeval keys plus WMD, CLIP_text_distance, SBERT_similarity (those requested). */
  corpus: Record<string, number>;
  /** Per image, in results order. */
  perImage: { image_id: ImageId; caption: string; scores: Record<string, number> }[];
  /** How the embedding metrics were computed. */
  settings: {
    clipVariant?: EmbeddingVariant;
    clipModel?: string;
    sbertModel?: string;
    glove?: string;
    stopwords?: number;
  };
  warnings: string[];
}

/** Parses a metric list (array or "a,b,c"), checking names; duplicates are dropped. */
export function parseCaptionMetrics(metrics: readonly string[] | string | undefined, flag = '--metrics'): CaptionEvalMetric[] {
  if (metrics === undefined) return [...DEFAULT_CAPTION_EVAL_METRICS];
  const list = typeof metrics === 'string' ? metrics.split(',').map((m) => m.trim()).filter((m) => m !== '') : metrics;
  if (!Array.isArray(list) || list.length === 0) throw invalid(flag, `a non-empty list of ${CAPTION_EVAL_METRICS.join(', ')}`, metrics);
  const out: CaptionEvalMetric[] = [];
  for (const m of list) {
    const name = expectOneOf(`${flag} entry`, typeof m === 'string' ? m.toLowerCase() : m, CAPTION_EVAL_METRICS);
    if (!out.includes(name)) out.push(name);
  }
  return out;
}

function resolveResults(input: CaptionResultsInput): { map: Map<ImageId, string>; source: string } {
  if (typeof input === 'string') return { map: loadCaptionResults(input), source: input };
  if (input instanceof Map) return { map: new Map(input), source: 'results' };
  if (Array.isArray(input)) return { map: parseCaptionResults(input, 'results'), source: 'results' };
  throw invalid('results', 'a results file path, a list of {image_id, caption} or a Map', input);
}

function resolveAnnotations(input: CaptionAnnotationsInput): { refs: Map<ImageId, string[]>; layout: AnnotationLayout | 'map' } {
  if (typeof input === 'string') {
    const a = loadCaptionAnnotations(input);
    return { refs: a.references, layout: a.layout };
  }
  if (input instanceof Map) return { refs: new Map([...input].map(([k, v]) => [k, [...(v as string[])]])), layout: 'map' };
  const maybe = input as Partial<CaptionAnnotations>;
  if (maybe && maybe.references instanceof Map && typeof maybe.layout === 'string') return { refs: maybe.references, layout: maybe.layout };
  const a = parseCaptionAnnotations(input, 'annotations');
  return { refs: a.references, layout: a.layout };
}

/** Rejects empty or whitespace-only candidate captions, naming every offending image id. */
function checkNonEmpty(results: ReadonlyMap<ImageId, string>, source: string): void {
  const empty = [...results].filter(([, c]) => c.trim() === '').map(([id]) => id);
  if (empty.length > 0) {
    const shown = empty.slice(0, 5).map((id) => JSON.stringify(id)).join(', ');
    throw new RoundtripError(`${source}: ${empty.length} empty caption(s) (image id ${shown}${empty.length > 5 ? ', …' : ''}); every result needs a non-empty caption`);
  }
}

function mean(values: readonly number[]): number {
  let s = 0;
  for (const v of values) s += v;
  return s / values.length;
}

/** Mean over each image's references of f(candidate vector, reference vector). */
function perImageMeans(ids: ImageId[], refs: Map<ImageId, string[]>, cand: Float32Array[], refVecs: Float32Array[], f: (a: Float32Array, b: Float32Array) => number): number[] {
  const out: number[] = [];
  let k = 0;
  ids.forEach((id, i) => {
    const n = refs.get(id)!.length;
    let s = 0;
    for (let r = 0; r < n; r++) s += f(cand[i], refVecs[k + r]);
    k += n;
    out.push(s / n);
  });
  return out;
}

/**
 * Evaluates candidate captions against references. Models given as folders are loaded and
 * disposed here; loaded encoders passed in are left to the caller. `names`: how errors name the options (the CLI's flags).
 */
export async function evaluateCaptions(results: CaptionResultsInput, annotations: CaptionAnnotationsInput, opts: EvaluateCaptionsOptions = {}, names?: OptionNames): Promise<CaptionEvaluation> {
  const metrics = parseCaptionMetrics(opts.metrics, optionName(names, 'metrics'));
  const batchSize = expectInteger(optionName(names, 'batchSize'), opts.batchSize ?? CAPTION_EVAL_DEFAULTS.batchSize, { min: 1 });
  const clipVariant = expectOneOf(optionName(names, 'clipVariant'), opts.clipVariant ?? CAPTION_EVAL_DEFAULTS.clipVariant, EMBEDDING_VARIANTS);
  // Check what the requested metrics need before any work.
  if (metrics.includes('wmd') && opts.glove === undefined) throw new RoundtripError('metric wmd needs word vectors: pass --glove FILE (GloVe text format, e.g. glove.6B.300d.txt)');
  if (metrics.includes('clip-text') && opts.clip === undefined) throw new RoundtripError('metric clip-text needs a CLIP model: pass --clip MODEL_DIR (e.g. openai/clip-vit-base-patch32)');
  if (metrics.includes('sbert') && opts.sbert === undefined) throw new RoundtripError('metric sbert needs a sentence-transformers model: pass --sbert MODEL_DIR (all-MiniLM-L6-v2)');

  const { map: candidates, source } = resolveResults(results);
  const { refs, layout } = resolveAnnotations(annotations);
  if (candidates.size === 0) throw new RoundtripError(`${source}: no results to evaluate`);
  checkResultsAgainstAnnotations(candidates, refs, source);
  checkNonEmpty(candidates, source);
  const ids = [...candidates.keys()];
  const warnings: string[] = [];
  const corpus: Record<string, number> = {};
  const perImage = ids.map((id) => ({ image_id: id, caption: candidates.get(id)!, scores: {} as Record<string, number> }));
  const settings: CaptionEvaluation['settings'] = {};

  const split = opts.split;
  const coco = metrics.filter((m) => m in COCO_METRIC).map((m) => COCO_METRIC[m]);
  // Corpus-level statistics (and Java's METEOR/SPICE over the whole set): rank 0 only.
  if (coco.length > 0 && isMainRank(split)) {
    const subsetRefs = new Map(ids.map((id) => [id, refs.get(id)!]));
    const scored = await scoreCaptions(candidates, subsetRefs, {
      metrics: coco,
      meteorJar: opts.meteorJar,
      spiceJar: opts.spiceJar,
      java: opts.java,
      cacheDir: opts.spiceCacheDir,
    });
    Object.assign(corpus, scored.corpus);
    perImage.forEach((p) => Object.assign(p.scores, scored.perImage.get(p.image_id)));
  }

  // Flattened references in image order: one embedding pass covers every reference.
  const flatRefs: string[] = [];
  for (const id of ids) flatRefs.push(...refs.get(id)!);
  const candTexts = ids.map((id) => candidates.get(id)!);

  if (metrics.includes('wmd')) {
    const wv = typeof opts.glove === 'string' ? loadWordVectors(opts.glove) : opts.glove!;
    const stopwords = opts.stopwords ?? loadNltkStopwords();
    settings.glove = typeof opts.glove === 'string' ? path.resolve(opts.glove) : `${wv.words.length} × ${wv.dim} vectors`;
    settings.stopwords = stopwords.size;
    const owned = ownedItems(ids.length, 1, split);
    const local = owned.map((i) => captionWmd(wv, candTexts[i], refs.get(ids[i])!, { stopwords }).mean);
    const values = await gatherValues(ids.length, owned, local, split);
    const infinite = ids.filter((_, i) => !Number.isFinite(values[i]));
    values.forEach((v, i) => (perImage[i].scores[WMD_KEY] = v));
    corpus[WMD_KEY] = mean(values);
    if (infinite.length > 0) {
      warnings.push(
        `WMD is infinite for ${infinite.length} image(s) (no in-vocabulary word left on one side after stop-word removal): ${infinite
          .slice(0, 5)
          .map((id) => JSON.stringify(id))
          .join(', ')}${infinite.length > 5 ? ', …' : ''}; the corpus mean is therefore infinite`,
      );
    }
  }

  const truncWarn = (what: string) => (n: number) => warnings.push(`${what}: ${n} text(s) longer than the model's context were truncated`);
  if (metrics.includes('clip-text')) {
    const owned = typeof opts.clip === 'string';
    const enc = owned ? await loadClipTextEncoder(opts.clip as string, { device: opts.device }) : (opts.clip as ClipTextEncoder);
    try {
      settings.clipVariant = clipVariant;
      settings.clipModel = enc.source;
      const vecs = await clipTextEmbeddings(enc, [...candTexts, ...flatRefs], { variant: clipVariant, batchSize, onTruncated: truncWarn('CLIP text'), split });
      const values = perImageMeans(ids, refs, vecs.slice(0, ids.length), vecs.slice(ids.length), cosineDistance);
      values.forEach((v, i) => (perImage[i].scores[CLIP_TEXT_KEY] = v));
      corpus[CLIP_TEXT_KEY] = mean(values);
    } finally {
      if (owned) enc.model.dispose();
    }
  }

  if (metrics.includes('sbert')) {
    const owned = typeof opts.sbert === 'string';
    const enc = owned ? await loadSbertEncoder(opts.sbert as string, { device: opts.device }) : (opts.sbert as SbertEncoder);
    try {
      settings.sbertModel = enc.source;
      const vecs = await sbertEmbeddings(enc, [...candTexts, ...flatRefs], { batchSize, onTruncated: truncWarn('SBERT'), split });
      const values = perImageMeans(ids, refs, vecs.slice(0, ids.length), vecs.slice(ids.length), (a, b) => 1 - cosineDistance(a, b));
      values.forEach((v, i) => (perImage[i].scores[SBERT_KEY] = v));
      corpus[SBERT_KEY] = mean(values);
    } finally {
      if (owned) enc.model.dispose();
    }
  }

  return { metrics, images: ids.length, annotationLayout: layout, corpus, perImage, settings, warnings };
}

/** Columns of the paper's Table 1, then the embedding metrics. */
const TABLE_COLUMNS: { key: string; title: string; metric: CaptionEvalMetric; percent: boolean }[] = [
  { key: 'Bleu_1', title: 'BLEU-1', metric: 'bleu', percent: true },
  { key: 'Bleu_2', title: 'BLEU-2', metric: 'bleu', percent: true },
  { key: 'Bleu_3', title: 'BLEU-3', metric: 'bleu', percent: true },
  { key: 'Bleu_4', title: 'BLEU-4', metric: 'bleu', percent: true },
  { key: 'METEOR', title: 'METEOR', metric: 'meteor', percent: true },
  { key: 'ROUGE_L', title: 'ROUGE-L', metric: 'rouge', percent: true },
  { key: 'CIDEr', title: 'CIDEr', metric: 'cider', percent: true },
  { key: 'SPICE', title: 'SPICE', metric: 'spice', percent: true },
  { key: WMD_KEY, title: 'WMD↓', metric: 'wmd', percent: false },
  { key: CLIP_TEXT_KEY, title: 'CLIP-T dist↓', metric: 'clip-text', percent: false },
  { key: SBERT_KEY, title: 'SBERT sim', metric: 'sbert', percent: false },
];

/**
 * The paper's table layout: the eight COCO columns always (× 100, '–' where not computed), then
 * the embedding metrics that were computed (raw values).
 */
export function formatCaptionTable(ev: CaptionEvaluation): string {
  const cols = TABLE_COLUMNS.filter((c) => c.percent || ev.metrics.includes(c.metric));
  const cells = cols.map((c) => {
    const v = ev.corpus[c.key];
    if (v === undefined) return '–';
    return c.percent ? (v * 100).toFixed(1) : Number.isFinite(v) ? v.toFixed(4) : String(v);
  });
  const widths = cols.map((c, i) => Math.max(c.title.length, cells[i].length));
  const line = (xs: string[]) => xs.map((x, i) => x.padStart(widths[i])).join('  ');
  const lines = [line(cols.map((c) => c.title)), line(cells)];
  const notes = [`${ev.images} images; COCO metrics × 100`];
  if (ev.settings.clipVariant) notes.push(`CLIP text embeddings: ${ev.settings.clipVariant}`);
  return lines.join('\n') + '\n' + notes.join('; ') + '\n';
}
