/**
 * Shared helpers for the cocoeval scorers: Python `str.split()` semantics and n-gram counting.
 */
import { invalid } from '../errors';

/** Characters Python's `str.split()` (no argument) splits on; JS `\s` differs slightly. */
const PY_WHITESPACE = /[\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/;

/** `s.split()` in Python: split on runs of whitespace, no empty strings at the ends. */
export function pySplit(s: string): string[] {
  const parts = s.split(PY_WHITESPACE);
  let start = 0;
  let end = parts.length;
  if (end > 0 && parts[0] === '') start = 1;
  if (end > start && parts[end - 1] === '') end--;
  return start === 0 && end === parts.length ? parts : parts.slice(start, end);
}

/**
 * N-gram counts of orders 1..n, one Map per order (index k-1), keyed by the space-joined
 * tokens (tokens never contain whitespace, so the key is unambiguous). Insertion order equals
 * the order in which Python's `precook` first sees each n-gram.
 */
export function countNgrams(words: readonly string[], n: number): Map<string, number>[] {
  const out: Map<string, number>[] = [];
  for (let k = 1; k <= n; k++) {
    const counts = new Map<string, number>();
    for (let i = 0; i + k <= words.length; i++) {
      const key = k === 1 ? words[i] : words.slice(i, i + k).join(' ');
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    out.push(counts);
  }
  return out;
}

/** Checks the parallel candidate/reference arrays every scorer takes. */
export function checkParallel(candidates: readonly string[], references: readonly (readonly string[])[]): void {
  if (!Array.isArray(candidates)) throw invalid('candidates', 'an array of tokenised caption strings', candidates);
  if (!Array.isArray(references)) throw invalid('references', 'an array of arrays of tokenised caption strings', references);
  if (candidates.length !== references.length) {
    throw invalid('references', `one reference list per candidate (${candidates.length})`, references);
  }
  for (let i = 0; i < candidates.length; i++) {
    if (typeof candidates[i] !== 'string') throw invalid(`candidates[${i}]`, 'a string', candidates[i]);
    const refs = references[i];
    if (!Array.isArray(refs) || refs.length === 0) throw invalid(`references[${i}]`, 'a non-empty array of strings', refs);
    for (let j = 0; j < refs.length; j++) {
      if (typeof refs[j] !== 'string') throw invalid(`references[${i}][${j}]`, 'a string', refs[j]);
    }
  }
}

/** `np.mean` of a float64 list: numpy's pairwise summation (8-way unrolled blocks of ≤128). */
export function numpyMean(values: ArrayLike<number>): number {
  return numpyPairwiseSum(values, 0, values.length) / values.length;
}

/** numpy's `pairwise_sum` for float64, so means agree with numpy to the last bit where possible. */
export function numpyPairwiseSum(a: ArrayLike<number>, start: number, n: number): number {
  if (n < 8) {
    let res = 0;
    for (let i = 0; i < n; i++) res += a[start + i];
    return res;
  }
  if (n <= 128) {
    const r = [a[start], a[start + 1], a[start + 2], a[start + 3], a[start + 4], a[start + 5], a[start + 6], a[start + 7]];
    let i = 8;
    for (; i < n - (n % 8); i += 8) {
      for (let j = 0; j < 8; j++) r[j] += a[start + i + j];
    }
    let res = r[0] + r[1] + (r[2] + r[3]) + (r[4] + r[5] + (r[6] + r[7]));
    for (; i < n; i++) res += a[start + i];
    return res;
  }
  let n2 = Math.floor(n / 2);
  n2 -= n2 % 8;
  return numpyPairwiseSum(a, start, n2) + numpyPairwiseSum(a, start + n2, n - n2);
}
