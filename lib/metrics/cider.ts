/**
 * CIDEr-D as `pycocoevalcap/cider/cider_scorer.py` (cocoeval's `Cider`): n = 1..4, raw term
 * counts weighted by log(N) − log(max(1, df)) where df counts the evaluated images whose
 * references contain the n-gram, clipped similarity, Gaussian length penalty (σ = 6) on the
 * bigram-count difference, mean over n and references, × 10.
 */
import { checkParallel, countNgrams, numpyMean, pySplit } from './ngrams';

const N = 4;
const SIGMA = 6;

interface TfIdfVector {
  vec: Map<string, number>[];
  norm: number[];
  /** Number of bigrams (cocoeval's "length"). */
  length: number;
}

function toVector(counts: Map<string, number>[], df: Map<string, number>, logN: number): TfIdfVector {
  const vec: Map<string, number>[] = [];
  const norm: number[] = [];
  let length = 0;
  for (let k = 0; k < N; k++) {
    const v = new Map<string, number>();
    let sq = 0;
    for (const [g, tf] of counts[k]) {
      const w = tf * (logN - Math.log(Math.max(1, df.get(g) ?? 0)));
      v.set(g, w);
      sq += w * w;
      if (k === 1) length += tf;
    }
    vec.push(v);
    norm.push(Math.sqrt(sq));
  }
  return { vec, norm, length };
}

function similarity(hyp: TfIdfVector, ref: TfIdfVector, out: Float64Array): void {
  const delta = hyp.length - ref.length;
  const penalty = Math.exp(-(delta * delta) / (2 * SIGMA * SIGMA));
  for (let k = 0; k < N; k++) {
    let val = 0;
    const refVec = ref.vec[k];
    for (const [g, w] of hyp.vec[k]) {
      const r = refVec.get(g) ?? 0;
      val += Math.min(w, r) * r;
    }
    if (hyp.norm[k] !== 0 && ref.norm[k] !== 0) val /= hyp.norm[k] * ref.norm[k];
    out[k] += val * penalty;
  }
}

/** Corpus (mean) and per-image CIDEr-D of tokenised candidates. */
export function ciderD(candidates: readonly string[], references: readonly (readonly string[])[]): { corpus: number; perImage: number[] } {
  checkParallel(candidates, references);
  const refCounts = references.map((refs) => refs.map((r) => countNgrams(pySplit(r), N)));
  // document frequency: in how many images' reference sets each n-gram occurs
  const df = new Map<string, number>();
  for (const refs of refCounts) {
    const seen = new Set<string>();
    for (const counts of refs) for (const m of counts) for (const g of m.keys()) seen.add(g);
    for (const g of seen) df.set(g, (df.get(g) ?? 0) + 1);
  }
  const logN = Math.log(candidates.length);
  const perImage: number[] = [];
  const score = new Float64Array(N);
  for (let i = 0; i < candidates.length; i++) {
    const hyp = toVector(countNgrams(pySplit(candidates[i]), N), df, logN);
    score.fill(0);
    for (const counts of refCounts[i]) similarity(hyp, toVector(counts, df, logN), score);
    perImage.push((numpyMean(score) / refCounts[i].length) * 10);
  }
  return { corpus: perImage.length ? numpyMean(perImage) : NaN, perImage };
}

/**
 * CIDEr-D with document frequencies from a fixed corpus of texts (one document each), for scoring a few
 * candidates against one reference: with pycocoevalcap's own df (the evaluated set's references) K
 * candidates sharing one reference would give every idf zero. Same weighting, clipping, length penalty and
 * ×10. Inputs are tokenised strings.
 */
export class FixedCorpusCiderD {
  private readonly df = new Map<string, number>();
  private readonly logN: number;

  constructor(corpusTokenized: readonly string[]) {
    for (const text of corpusTokenized) {
      const seen = new Set<string>();
      for (const m of countNgrams(pySplit(text), N)) for (const g of m.keys()) seen.add(g);
      for (const g of seen) this.df.set(g, (this.df.get(g) ?? 0) + 1);
    }
    this.logN = Math.log(corpusTokenized.length);
  }

  /** CIDEr-D of each tokenised candidate against one tokenised reference. */
  scores(candidatesTokenized: readonly string[], referenceTokenized: string): number[] {
    const ref = toVector(countNgrams(pySplit(referenceTokenized), N), this.df, this.logN);
    const score = new Float64Array(N);
    return candidatesTokenized.map((c) => {
      score.fill(0);
      similarity(toVector(countNgrams(pySplit(c), N), this.df, this.logN), ref, score);
      return numpyMean(score) * 10;
    });
  }
}
