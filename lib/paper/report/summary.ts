/**
 * The paper's analyses computed from saved records:
 * - Table 1 (i2t2i): corpus caption metrics (CIDEr-D, BLEU-3/4, SPICE when available) of the
 *   reranked captions vs a random candidate (the mean over the R seeded picks), with relative gain.
 * - Table 2 (t2i2t): image metrics (CLIP image–text distance, CLIP distance to the real image, FID,
 *   IS) of the reranked images vs a random candidate, likewise.
 * - Figures 3/4: candidates grouped by reconstruction rank 1..K, mean quality per rank per method.
 *
 * Captions are PTB-tokenised as cocoeval does. CIDEr-D's idf depends on the corpus (document
 * frequencies of the references, N = number of images), so per-candidate CIDEr-D is computed in
 * corpora of one caption per item (candidate j of every item, for each j): each candidate gets
 * the score it has in any one-caption-per-item set, and the mean of the rank-1 column is Table 1's
 * reranked CIDEr.
 */
import { bleu } from '../../metrics/bleu';
import { ciderD } from '../../metrics/cider';
import { FidStatistics, fidStatistics, frechetDistance } from '../../metrics/fid';
import { inceptionScore } from '../../metrics/inception-score';
import { spiceScore } from '../../metrics/java-scorers';
import { ptbTokenize } from '../../metrics/ptb-tokenizer';
import { ItemRecord, RunSettings } from '../rerank/types';

/** One metric row: reranked (per similarity method) vs the random baseline. */
export interface MetricRow {
  metric: string;
  /** Lower is better (distances, FID)? */
  lowerIsBetter: boolean;
  /** Mean over the R random picks. */
  baseline: number;
  /** Standard deviation over the picks (ddof 0). */
  baselineStd: number;
  /** method → value of the reranked set. */
  reranked: Record<string, number>;
  /** method → 100 · (reranked − baseline) / |baseline|. */
  gainPercent: Record<string, number>;
  /** Items the metric covers. */
  items: number;
}

export interface SummaryTable {
  title: string;
  rows: MetricRow[];
  notes: string[];
}

export interface RankAnalysis {
  k: number;
  /** metric → method → mean quality of the candidates ranked 1..K (index r − 1). */
  means: Record<string, Record<string, number[]>>;
  /** metric → candidates with that metric per rank (same for every rank). */
  counts: Record<string, number>;
  lowerIsBetter: Record<string, boolean>;
}

/** Image features for FID/IS (pool3 rows and classifier logits rows of the given image files). */
export type ImageFeatureFn = (files: string[]) => Promise<{ pool3: Float32Array[]; logits: Float32Array[] }>;

export interface SummaryOptions {
  /** Compute SPICE (needs Java and the SPICE jar); failures become a note. */
  spice?: boolean;
  spiceJar?: string;
  java?: string;
  /** FID/IS features (e.g. from the Inception network); without it Table 2 has no FID/IS. */
  imageFeatures?: ImageFeatureFn;
}

function mean(values: readonly number[]): number {
  return values.length ? values.reduce((a, b) => a + b, 0) / values.length : NaN;
}

function std(values: readonly number[]): number {
  const m = mean(values);
  return values.length ? Math.sqrt(values.reduce((a, b) => a + (b - m) * (b - m), 0) / values.length) : NaN;
}

function gain(reranked: number, baseline: number): number {
  return baseline === 0 ? NaN : (100 * (reranked - baseline)) / Math.abs(baseline);
}

/** Candidate index chosen by `picker` for each record: the winner of a method, or baseline pick r. */
type Picker = (r: ItemRecord) => number;

function rowOf(metric: string, lowerIsBetter: boolean, items: number, baselineValues: number[], reranked: Record<string, number>): MetricRow {
  const base = mean(baselineValues);
  const gainPercent: Record<string, number> = {};
  for (const [m, v] of Object.entries(reranked)) gainPercent[m] = gain(v, base);
  return { metric, lowerIsBetter, baseline: base, baselineStd: std(baselineValues), reranked, gainPercent, items };
}

function baselinePickers(repeats: number): Picker[] {
  return Array.from({ length: repeats }, (_, r) => (rec: ItemRecord) => rec.baseline[r]);
}

function row(metric: string, lowerIsBetter: boolean, methods: readonly string[], repeats: number, items: number, compute: (pick: Picker) => number): MetricRow {
  const reranked: Record<string, number> = {};
  for (const m of methods) reranked[m] = compute((rec) => rec.winner[m]);
  return rowOf(metric, lowerIsBetter, items, baselinePickers(repeats).map(compute), reranked);
}

/** PTB-tokenised candidates and references, computed once. */
interface Tokenized {
  records: ItemRecord[];
  candidates: string[][];
  references: string[][];
}

function tokenize(records: ItemRecord[]): Tokenized {
  const withRefs = records.filter((r) => r.references.length > 0);
  const flatRefs = ptbTokenize(withRefs.flatMap((r) => r.references));
  const flatCands = ptbTokenize(withRefs.flatMap((r) => r.candidates.map((c) => c.text)));
  const references: string[][] = [];
  const candidates: string[][] = [];
  let a = 0;
  let b = 0;
  for (const r of withRefs) {
    references.push(flatRefs.slice(a, (a += r.references.length)));
    candidates.push(flatCands.slice(b, (b += r.candidates.length)));
  }
  return { records: withRefs, candidates, references };
}

/** Table 1: caption metrics of reranked vs random captions. */
export async function captionTable(settings: RunSettings, records: ItemRecord[], opts: SummaryOptions = {}): Promise<SummaryTable> {
  const tok = tokenize(records);
  const notes: string[] = [];
  const rows: MetricRow[] = [];
  if (tok.records.length === 0) {
    notes.push('no item has reference captions: caption metrics need an annotation file with captions');
    return { title: 'Table 1: caption quality, random candidate vs reranked by reconstruction', rows, notes };
  }
  if (tok.records.length < records.length) notes.push(`${records.length - tok.records.length} item(s) without reference captions are left out`);
  const select = (pick: Picker) => tok.records.map((r, i) => tok.candidates[i][pick(r)]);
  const n = tok.records.length;
  rows.push(row('CIDEr', false, settings.similarity, settings.repeats, n, (p) => ciderD(select(p), tok.references).corpus));
  if (opts.spice) {
    try {
      // cocoeval hands SPICE the PTB-tokenised captions, like every other scorer
      const refs = new Map(tok.records.map((_, i) => [i, tok.references[i]]));
      const spice = async (pick: Picker) => (await spiceScore(new Map(tok.records.map((r, i) => [i, tok.candidates[i][pick(r)]])), refs, { spiceJar: opts.spiceJar, java: opts.java })).corpus;
      const baseline: number[] = [];
      for (const p of baselinePickers(settings.repeats)) baseline.push(await spice(p));
      const reranked: Record<string, number> = {};
      for (const m of settings.similarity) reranked[m] = await spice((rec) => rec.winner[m]);
      rows.push(rowOf('SPICE', false, n, baseline, reranked));
    } catch (err) {
      notes.push(`SPICE not computed: ${(err as Error).message}`);
    }
  } else notes.push('SPICE not computed (needs Java and the SPICE jar; pass --spice)');
  for (const k of [3, 4]) rows.push(row(`BLEU-${k}`, false, settings.similarity, settings.repeats, n, (p) => bleu(select(p), tok.references, 4).corpus[k - 1]));
  return { title: 'Table 1: caption quality, random candidate vs reranked by reconstruction', rows, notes };
}

/** Table 2: image metrics of reranked vs random images. */
export async function imageTable(settings: RunSettings, records: ItemRecord[], opts: SummaryOptions = {}): Promise<SummaryTable> {
  const rows: MetricRow[] = [];
  const notes: string[] = [];
  const { similarity: methods, repeats } = settings;
  for (const [key, label] of [
    ['clip_text_image', 'CLIP distance (image vs input text)'],
    ['clip_real', 'CLIP distance (image vs real image)'],
  ] as const) {
    const covered = records.filter((r) => r.candidates.every((c) => typeof c.scores[key] === 'number'));
    if (covered.length === 0) {
      notes.push(`${label}: not available (${key === 'clip_text_image' ? 'needs a full CLIP model (--clip)' : 'needs the real images (--images with a prompt file naming them)'})`);
      continue;
    }
    rows.push(row(label, true, methods, repeats, covered.length, (p) => mean(covered.map((r) => r.candidates[p(r)].scores[key]))));
  }
  if (!opts.imageFeatures) {
    notes.push('FID and IS not computed (need the Inception weights: --inception FILE)');
    return { title: 'Table 2: image quality, random candidate vs reranked by reconstruction', rows, notes };
  }
  // features of every candidate image once; sets are then row selections
  const files = records.flatMap((r) => r.candidates.map((c) => c.image));
  const feats = await opts.imageFeatures(files);
  const offsets: number[] = [];
  let o = 0;
  for (const r of records) {
    offsets.push(o);
    o += r.candidates.length;
  }
  const pick = (p: Picker, which: 'pool3' | 'logits') => records.map((r, i) => feats[which][offsets[i] + p(r)]);
  const stack = (rowsIn: Float32Array[]) => {
    const d = rowsIn[0].length;
    const out = new Float32Array(rowsIn.length * d);
    rowsIn.forEach((x, i) => out.set(x, i * d));
    return { data: out, n: rowsIn.length, d };
  };
  const withReal = records.filter((r) => r.realImage);
  if (withReal.length >= 2 && withReal.length === records.length) {
    const real = await opts.imageFeatures(records.map((r) => r.realImage!));
    const rs = stack(real.pool3);
    const realStats: FidStatistics = fidStatistics(rs.data, rs.n, rs.d);
    rows.push(
      row('FID', true, methods, repeats, records.length, (p) => {
        const g = stack(pick(p, 'pool3'));
        return frechetDistance(fidStatistics(g.data, g.n, g.d), realStats).fid;
      }),
    );
  } else notes.push(`FID not computed: it needs the real image of every item and at least 2 items (have ${withReal.length} of ${records.length})`);
  const splits = Math.min(10, records.length);
  rows.push(
    row('IS', false, methods, repeats, records.length, (p) => {
      const l = stack(pick(p, 'logits'));
      return inceptionScore(l.data, l.n, l.d, { splits }).mean;
    }),
  );
  if (splits < 10) notes.push(`IS over ${splits} split(s) (fewer than 10 items)`);
  return { title: 'Table 2: image quality, random candidate vs reranked by reconstruction', rows, notes };
}

/** Figures 3/4: mean per-candidate quality by reconstruction rank, per similarity method. */
export function rankAnalysis(settings: RunSettings, records: ItemRecord[]): RankAnalysis {
  const k = settings.k;
  const quality: Record<string, { lower: boolean; values: Map<ItemRecord, number[]> }> = {};
  if (settings.direction === 'i2t2i') {
    const tok = tokenize(records);
    if (tok.records.length) {
      // CIDEr-D of candidate j of every item, one corpus per j: document frequencies come from the
      // references and N is the number of items, exactly as in a corpus of one caption per item
      const ciderMap = new Map<ItemRecord, number[]>(tok.records.map((r) => [r, new Array<number>(r.candidates.length)]));
      const bleuMap = new Map<ItemRecord, number[]>();
      for (let j = 0; j < k; j++) {
        const column = ciderD(tok.candidates.map((c) => c[j]), tok.references).perImage;
        tok.records.forEach((r, i) => (ciderMap.get(r)![j] = column[i]));
      }
      tok.records.forEach((r, i) => bleuMap.set(r, bleu(tok.candidates[i], tok.candidates[i].map(() => tok.references[i]), 4).perImage.map((v) => v[3])));
      quality.CIDEr = { lower: false, values: ciderMap };
      quality['BLEU-4'] = { lower: false, values: bleuMap };
    }
  } else {
    for (const key of ['clip_text_image', 'clip_real']) {
      const values = new Map<ItemRecord, number[]>();
      for (const r of records) if (r.candidates.every((c) => typeof c.scores[key] === 'number')) values.set(r, r.candidates.map((c) => c.scores[key]));
      if (values.size) quality[key] = { lower: true, values };
    }
  }
  const means: RankAnalysis['means'] = {};
  const counts: RankAnalysis['counts'] = {};
  const lowerIsBetter: RankAnalysis['lowerIsBetter'] = {};
  for (const [metric, q] of Object.entries(quality)) {
    means[metric] = {};
    lowerIsBetter[metric] = q.lower;
    counts[metric] = q.values.size;
    for (const m of settings.similarity) {
      const sums = new Float64Array(k);
      const ns = new Float64Array(k);
      for (const [r, vals] of q.values) {
        r.candidates.forEach((c, j) => {
          const rank = c.rank[m];
          sums[rank - 1] += vals[j];
          ns[rank - 1]++;
        });
      }
      means[metric][m] = Array.from(sums, (s, i) => (ns[i] ? s / ns[i] : NaN));
    }
  }
  return { k, means, counts, lowerIsBetter };
}

/**
 * FID and IS of the candidates at each reconstruction rank (Figure 4's image panels): for rank r and a
 * method, the set of every item's rank-r candidate; FID against the items' real images (when every item
 * has one), IS over that set. Merged into the rank analysis (means['FID'], means['IS']).
 */
export async function fidIsByRank(settings: RunSettings, records: ItemRecord[], imageFeatures: ImageFeatureFn): Promise<Pick<RankAnalysis, 'means' | 'counts' | 'lowerIsBetter'>> {
  const k = settings.k;
  const feats = await imageFeatures(records.flatMap((r) => r.candidates.map((c) => c.image)));
  const offsets: number[] = [];
  let o = 0;
  for (const r of records) {
    offsets.push(o);
    o += r.candidates.length;
  }
  const stack = (rowsIn: Float32Array[]) => {
    const d = rowsIn[0].length;
    const out = new Float32Array(rowsIn.length * d);
    rowsIn.forEach((x, i) => out.set(x, i * d));
    return { data: out, n: rowsIn.length, d };
  };
  const atRank = (method: string, rank: number, which: 'pool3' | 'logits') =>
    records.map((r, i) => feats[which][offsets[i] + r.candidates.findIndex((c) => c.rank[method] === rank)]);
  const means: RankAnalysis['means'] = { IS: {} };
  const counts: RankAnalysis['counts'] = { IS: records.length };
  const lowerIsBetter: RankAnalysis['lowerIsBetter'] = { IS: false };
  const splits = Math.min(10, records.length);
  let realStats: FidStatistics | undefined;
  if (records.length >= 2 && records.every((r) => r.realImage)) {
    const real = stack((await imageFeatures(records.map((r) => r.realImage!))).pool3);
    realStats = fidStatistics(real.data, real.n, real.d);
    means.FID = {};
    counts.FID = records.length;
    lowerIsBetter.FID = true;
  }
  for (const m of settings.similarity) {
    means.IS[m] = [];
    if (realStats) means.FID[m] = [];
    for (let rank = 1; rank <= k; rank++) {
      const l = stack(atRank(m, rank, 'logits'));
      means.IS[m].push(inceptionScore(l.data, l.n, l.d, { splits }).mean);
      if (realStats) {
        const g = stack(atRank(m, rank, 'pool3'));
        means.FID[m].push(frechetDistance(fidStatistics(g.data, g.n, g.d), realStats).fid);
      }
    }
  }
  return { means, counts, lowerIsBetter };
}
