/**
 * ROUGE-L as `pycocoevalcap/rouge/rouge.py`: LCS over space-separated tokens, the maximum
 * precision and the maximum recall over references taken independently, F-measure with β = 1.2.
 */
import { checkParallel, numpyMean } from './ngrams';

const BETA = 1.2;

/** Length of the longest common subsequence of two token arrays (two-row DP). */
export function lcsLength(a: readonly string[], b: readonly string[]): number {
  const [long, short] = a.length >= b.length ? [a, b] : [b, a];
  let prev = new Int32Array(short.length + 1);
  let cur = new Int32Array(short.length + 1);
  for (let i = 1; i <= long.length; i++) {
    const ai = long[i - 1];
    for (let j = 1; j <= short.length; j++) {
      cur[j] = ai === short[j - 1] ? prev[j - 1] + 1 : Math.max(prev[j], cur[j - 1]);
    }
    [prev, cur] = [cur, prev];
  }
  return prev[short.length];
}

/** ROUGE-L of one tokenised candidate against its tokenised references. */
export function rougeLScore(candidate: string, references: readonly string[]): number {
  // cocoeval splits on single spaces, so an empty candidate is one empty token
  const tokC = candidate.split(' ');
  let precMax = -Infinity;
  let recMax = -Infinity;
  for (const ref of references) {
    const tokR = ref.split(' ');
    const lcs = lcsLength(tokR, tokC);
    precMax = Math.max(precMax, lcs / tokC.length);
    recMax = Math.max(recMax, lcs / tokR.length);
  }
  if (precMax === 0 || recMax === 0) return 0;
  const b2 = BETA * BETA;
  return ((1 + b2) * precMax * recMax) / (recMax + b2 * precMax);
}

/** Corpus (mean) and per-image ROUGE-L. */
export function rougeL(candidates: readonly string[], references: readonly (readonly string[])[]): { corpus: number; perImage: number[] } {
  checkParallel(candidates, references);
  const perImage = candidates.map((c, i) => rougeLScore(c, references[i]));
  return { corpus: perImage.length ? numpyMean(perImage) : NaN, perImage };
}
