/**
 * COCO caption evaluation (`pycocoevalcap.eval.COCOEvalCap.evaluate`): PTB-tokenise the
 * references, then the candidates (two separate tokenizer batches, as cocoeval), then score
 * BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE. Result keys use cocoeval's names.
 *
 * Input rules: one candidate per image; every candidate's image id must have at least one
 * reference (otherwise an error names the id); references of images without a candidate are
 * ignored (cocoeval evaluates the result images only). A raw caption that is empty or only
 * whitespace is an error (it is nearly always a bug upstream); a caption that becomes empty
 * after punctuation removal is scored as cocoeval scores it.
 */
import { RoundtripError, invalid } from '../errors';
import { bleu } from './bleu';
import { ciderD } from './cider';
import { MeteorOptions, SpiceCategoryScores, SpiceOptions, meteorScore, spiceScore } from './java-scorers';
import { ptbTokenize } from './ptb-tokenizer';
import { rougeL } from './rouge';

export const CAPTION_METRICS = ['BLEU', 'METEOR', 'ROUGE_L', 'CIDEr', 'SPICE'] as const;
export type CaptionMetric = (typeof CAPTION_METRICS)[number];
/** The metrics that need no Java. */
export const PURE_CAPTION_METRICS: readonly CaptionMetric[] = ['BLEU', 'ROUGE_L', 'CIDEr'];

export interface CaptionEvalOptions extends MeteorOptions, SpiceOptions {
  /** Which metrics (default BLEU, ROUGE_L, CIDEr — the ones without Java). */
  metrics?: readonly CaptionMetric[];
}

export interface CaptionScores<K> {
  /** Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr, SPICE (those requested). */
  corpus: Record<string, number>;
  perImage: Map<K, Record<string, number>>;
  /** Full SPICE category scores per image, when SPICE was requested. */
  spiceDetails?: Map<K, Record<string, SpiceCategoryScores>>;
  /** The tokenised captions that were scored. */
  tokenized: { candidates: Map<K, string>; references: Map<K, string[]> };
}

function checkMetrics(metrics: readonly CaptionMetric[] | undefined): CaptionMetric[] {
  if (metrics === undefined) return [...PURE_CAPTION_METRICS];
  if (!Array.isArray(metrics) || metrics.length === 0) throw invalid('metrics', `a non-empty array of ${CAPTION_METRICS.join(', ')}`, metrics);
  for (const m of metrics) {
    if (!(CAPTION_METRICS as readonly string[]).includes(m)) throw invalid('metrics', `names among ${CAPTION_METRICS.join(', ')}`, m);
  }
  return [...new Set(metrics)];
}

/** Validates the maps and returns the evaluated ids in candidate order. */
function checkMaps<K>(candidates: ReadonlyMap<K, string>, references: ReadonlyMap<K, readonly string[]>, raw: boolean): K[] {
  if (!(candidates instanceof Map)) throw invalid('candidates', 'a Map of image id → caption', candidates);
  if (!(references instanceof Map)) throw invalid('references', 'a Map of image id → captions', references);
  if (candidates.size === 0) throw invalid('candidates', 'at least one image', candidates);
  const ids: K[] = [];
  for (const [id, caption] of candidates) {
    if (typeof caption !== 'string') throw invalid(`candidates[${String(id)}]`, 'a caption string', caption);
    if (raw && caption.trim() === '') throw invalid(`candidates[${String(id)}]`, 'a non-empty caption', caption);
    const refs = references.get(id);
    if (refs === undefined) throw new RoundtripError(`candidates: image id ${String(id)} is not in the references (annotations)`);
    if (!Array.isArray(refs) || refs.length === 0) throw invalid(`references[${String(id)}]`, 'a non-empty array of captions', refs);
    refs.forEach((r, j) => {
      if (typeof r !== 'string') throw invalid(`references[${String(id)}][${j}]`, 'a caption string', r);
      if (raw && r.trim() === '') throw invalid(`references[${String(id)}][${j}]`, 'a non-empty caption', r);
    });
    ids.push(id);
  }
  return ids;
}

/** Adds the pure-TS metric among BLEU / ROUGE_L / CIDEr to `corpus` and `perImage`. */
function addPureMetric<K>(
  metric: 'BLEU' | 'ROUGE_L' | 'CIDEr',
  ids: K[],
  cands: string[],
  refs: string[][],
  corpus: Record<string, number>,
  perImage: Map<K, Record<string, number>>,
): void {
  if (metric === 'BLEU') {
    const b = bleu(cands, refs, 4);
    b.corpus.forEach((v, k) => (corpus[`Bleu_${k + 1}`] = v));
    ids.forEach((id, i) => b.perImage[i].forEach((v, k) => (perImage.get(id)![`Bleu_${k + 1}`] = v)));
  } else {
    const r = metric === 'ROUGE_L' ? rougeL(cands, refs) : ciderD(cands, refs);
    corpus[metric] = r.corpus;
    ids.forEach((id, i) => (perImage.get(id)![metric] = r.perImage[i]));
  }
}

async function scoreTokenizedInternal<K>(
  ids: K[],
  candidates: Map<K, string>,
  references: Map<K, string[]>,
  metrics: CaptionMetric[],
  opts: CaptionEvalOptions,
): Promise<CaptionScores<K>> {
  const cands = ids.map((id) => candidates.get(id)!);
  const refs = ids.map((id) => references.get(id)!);
  const corpus: Record<string, number> = {};
  const perImage = new Map<K, Record<string, number>>(ids.map((id) => [id, {}]));
  let spiceDetails: Map<K, Record<string, SpiceCategoryScores>> | undefined;
  for (const metric of metrics) {
    if (metric === 'BLEU' || metric === 'ROUGE_L' || metric === 'CIDEr') {
      addPureMetric(metric, ids, cands, refs, corpus, perImage);
    } else if (metric === 'METEOR') {
      const m = await meteorScore(candidates, references, opts);
      corpus.METEOR = m.corpus;
      for (const id of ids) perImage.get(id)!.METEOR = m.perImage.get(id)!;
    } else {
      const s = await spiceScore(candidates, references, opts);
      corpus.SPICE = s.corpus;
      spiceDetails = s.perImage;
      for (const id of ids) perImage.get(id)!.SPICE = s.perImage.get(id)!.All.f;
    }
  }
  return { corpus, perImage, spiceDetails, tokenized: { candidates, references } };
}

/**
 * Scores raw captions as cocoeval does: PTB tokenisation of all references (one batch, in the
 * candidates' image order), then of all candidates (second batch), then the metrics.
 */
export async function scoreCaptions<K>(
  candidates: ReadonlyMap<K, string>,
  references: ReadonlyMap<K, readonly string[]>,
  opts: CaptionEvalOptions = {},
): Promise<CaptionScores<K>> {
  const metrics = checkMetrics(opts.metrics);
  const ids = checkMaps(candidates, references, true);
  const flatRefs: string[] = [];
  for (const id of ids) flatRefs.push(...references.get(id)!);
  const tokRefs = ptbTokenize(flatRefs);
  const tokCands = ptbTokenize(ids.map((id) => candidates.get(id)!));
  const refMap = new Map<K, string[]>();
  const candMap = new Map<K, string>();
  let k = 0;
  ids.forEach((id, i) => {
    const n = references.get(id)!.length;
    refMap.set(id, tokRefs.slice(k, k + n));
    k += n;
    candMap.set(id, tokCands[i]);
  });
  return scoreTokenizedInternal(ids, candMap, refMap, metrics, opts);
}

/** Scores already tokenised captions (whitespace-separated tokens) with the pure-TS metrics. */
export function scoreTokenizedCaptions<K>(
  candidates: ReadonlyMap<K, string>,
  references: ReadonlyMap<K, readonly string[]>,
  opts: { metrics?: readonly ('BLEU' | 'ROUGE_L' | 'CIDEr')[] } = {},
): Omit<CaptionScores<K>, 'spiceDetails'> {
  const metrics = checkMetrics(opts.metrics);
  if (metrics.some((m) => !PURE_CAPTION_METRICS.includes(m))) {
    throw invalid('metrics', 'only BLEU, ROUGE_L, CIDEr (use scoreCaptions for METEOR/SPICE)', metrics.join(','));
  }
  const ids = checkMaps(candidates, references, false);
  const candMap = new Map<K, string>(ids.map((id) => [id, candidates.get(id)!]));
  const refMap = new Map<K, string[]>(ids.map((id) => [id, [...references.get(id)!]]));
  const cands = ids.map((id) => candMap.get(id)!);
  const refs = ids.map((id) => refMap.get(id)!);
  const corpus: Record<string, number> = {};
  const perImage = new Map<K, Record<string, number>>(ids.map((id) => [id, {}]));
  for (const metric of metrics) addPureMetric(metric as 'BLEU' | 'ROUGE_L' | 'CIDEr', ids, cands, refs, corpus, perImage);
  return { corpus, perImage, tokenized: { candidates: candMap, references: refMap } };
}
