/**
 * BLEU-1..4 exactly as `pycocoevalcap/bleu/bleu_scorer.py` computes it with option `closest`
 * (cocoeval's setting): clipped n-gram counts against the per-n-gram maximum over references,
 * the reference length closest to the candidate length (ties → the shorter), and the
 * smoothing constants tiny = 1e-15 / small = 1e-9.
 */
import { checkParallel, countNgrams, pySplit } from './ngrams';

const TINY = 1e-15;
const SMALL = 1e-9;

/** Per-image BLEU counts (what `cook_test` produces). */
export interface BleuStats {
  testlen: number;
  /** The chosen (closest) reference length. */
  reflen: number;
  /** All reference lengths, in reference order. */
  refLengths: number[];
  guess: number[];
  correct: number[];
}

export interface BleuResult {
  /** Corpus BLEU-1..n. */
  corpus: number[];
  /** perImage[i][k] = BLEU-(k+1) of image i. */
  perImage: number[][];
  perImageStats: BleuStats[];
  corpusStats: { testlen: number; reflen: number; guess: number[]; correct: number[] };
}

function closestRefLength(refLengths: readonly number[], testlen: number): number {
  let best = refLengths[0];
  for (const l of refLengths) {
    const d = Math.abs(l - testlen);
    const bd = Math.abs(best - testlen);
    if (d < bd || (d === bd && l < best)) best = l;
  }
  return best;
}

/** BLEU counts of one candidate against its references (tokenised strings). */
export function bleuStats(candidate: string, references: readonly string[], n = 4): BleuStats {
  const refLengths: number[] = [];
  const maxCounts: Map<string, number>[] = [];
  for (let k = 0; k < n; k++) maxCounts.push(new Map());
  for (const ref of references) {
    const words = pySplit(ref);
    refLengths.push(words.length);
    const counts = countNgrams(words, n);
    for (let k = 0; k < n; k++) {
      const mk = maxCounts[k];
      for (const [g, c] of counts[k]) if (c > (mk.get(g) ?? 0)) mk.set(g, c);
    }
  }
  const words = pySplit(candidate);
  const testlen = words.length;
  const counts = countNgrams(words, n);
  const guess: number[] = [];
  const correct: number[] = [];
  for (let k = 0; k < n; k++) {
    guess.push(Math.max(0, testlen - k));
    let c = 0;
    for (const [g, count] of counts[k]) c += Math.min(maxCounts[k].get(g) ?? 0, count);
    correct.push(c);
  }
  return { testlen, reflen: closestRefLength(refLengths, testlen), refLengths, guess, correct };
}

/** BLEU-1..n from (summed) counts, with cocoeval's smoothing and brevity penalty. */
export function bleuFromCounts(correct: readonly number[], guess: readonly number[], testlen: number, reflen: number): number[] {
  const out: number[] = [];
  let product = 1;
  for (let k = 0; k < correct.length; k++) {
    product *= (correct[k] + TINY) / (guess[k] + SMALL);
    out.push(Math.pow(product, 1 / (k + 1)));
  }
  const ratio = (testlen + TINY) / (reflen + SMALL);
  if (ratio < 1) {
    const penalty = Math.exp(1 - 1 / ratio);
    for (let k = 0; k < out.length; k++) out[k] *= penalty;
  }
  return out;
}

/**
 * Corpus and per-image BLEU-1..n of tokenised candidates (one per image) against tokenised
 * references (at least one per image).
 */
export function bleu(candidates: readonly string[], references: readonly (readonly string[])[], n = 4): BleuResult {
  checkParallel(candidates, references);
  const perImageStats: BleuStats[] = [];
  const perImage: number[][] = [];
  const total = { testlen: 0, reflen: 0, guess: new Array<number>(n).fill(0), correct: new Array<number>(n).fill(0) };
  for (let i = 0; i < candidates.length; i++) {
    const s = bleuStats(candidates[i], references[i], n);
    perImageStats.push(s);
    total.testlen += s.testlen;
    total.reflen += s.reflen;
    for (let k = 0; k < n; k++) {
      total.guess[k] += s.guess[k];
      total.correct[k] += s.correct[k];
    }
    perImage.push(bleuFromCounts(s.correct, s.guess, s.testlen, s.reflen));
  }
  const corpus = bleuFromCounts(total.correct, total.guess, total.testlen, total.reflen);
  return { corpus, perImage, perImageStats, corpusStats: total };
}
