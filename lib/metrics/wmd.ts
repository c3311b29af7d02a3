/**
 * Word Mover's Distance with gensim `KeyedVectors.wmdistance` semantics (gensim ≥ 4.3, EMD by
 * POT), plus the paper's caption protocol.
 *
 * wmdistance: drop out-of-vocabulary tokens from both documents; `Infinity` if either is then
 * empty; 0 if both together hold a single distinct word; with `norm` (default) every vector
 * is divided by its L2 norm in float32 (numpy's pairwise float32 sum); cost = Euclidean
 * distance (float64, as scipy's cdist) between the distinct words of document 1 and of
 * document 2; weights = count / document length; result = exact EMD (`Infinity` if all
 * distances are ~0). No lower-casing, punctuation or stop-word handling happens inside.
 */
import * as fs from 'fs';
import * as path from 'path';
import { StringDecoder } from 'string_decoder';
import { RoundtripError, expectBoolean, invalid } from '../errors';
import { earthMoversDistance } from './emd';
import { PACKAGE_ROOT } from '../paths';

/** Word vectors as gensim holds them after `load_word2vec_format(..., no_header=True)`. */
export interface WordVectors {
  /** word → row; the first occurrence of a duplicated word wins (gensim keeps the first). */
  index: Map<string, number>;
  words: string[];
  dim: number;
  /** float32, row-major words.length × dim. */
  vectors: Float32Array;
  /** Lazily filled float32 L2 norms (gensim `fill_norms`). */
  norms?: Float32Array;
}

/**
 * Loads GloVe / word2vec text vectors: one `word v1 … vd` line per word, single spaces, no
 * header unless `hasHeader` (a word2vec `count dim` first line). Values become float32.
 */
export function loadWordVectors(file: string, opts: { hasHeader?: boolean } = {}): WordVectors {
  const hasHeader = opts.hasHeader === undefined ? false : expectBoolean('hasHeader', opts.hasHeader);
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (err) {
    throw new RoundtripError(`word vectors: cannot read ${file}: ${(err as Error).message}`);
  }
  // Streamed in chunks: published GloVe files (about 1 GB) exceed V8's longest string.
  const decoder = new StringDecoder('utf8');
  const chunk = Buffer.alloc(16 << 20);
  let dim = -1;
  const index = new Map<string, number>();
  const words: string[] = [];
  let vectors = new Float32Array(0);
  let ln = 0;
  const addLine = (raw: string): void => {
    ln++;
    if (hasHeader && ln === 1) return;
    const line = raw.replace(/\s+$/, '');
    if (line === '') return;
    const parts = line.split(' ');
    if (dim < 0) {
      dim = parts.length - 1;
      if (dim < 1) throw new RoundtripError(`${file}:${ln}: expected a word followed by its vector values, got ${JSON.stringify(line.slice(0, 60))}`);
      vectors = new Float32Array(dim * 1024);
    }
    if (parts.length !== dim + 1) {
      throw new RoundtripError(`${file}:${ln}: expected ${dim} values after the word (as on the first line), got ${parts.length - 1}`);
    }
    if (index.has(parts[0])) return;
    const row = words.length;
    if ((row + 1) * dim > vectors.length) {
      const grown = new Float32Array(vectors.length * 2);
      grown.set(vectors);
      vectors = grown;
    }
    for (let k = 0; k < dim; k++) {
      const v = Number(parts[k + 1]);
      if (!Number.isFinite(v)) throw new RoundtripError(`${file}:${ln}: value ${k + 1} is not a number: ${JSON.stringify(parts[k + 1])}`);
      vectors[row * dim + k] = v;
    }
    index.set(parts[0], row);
    words.push(parts[0]);
  };
  try {
    let rest = '';
    for (;;) {
      const n = fs.readSync(fd, chunk, 0, chunk.length, null);
      const text = rest + (n > 0 ? decoder.write(chunk.subarray(0, n)) : decoder.end());
      const lines = text.split('\n');
      rest = n > 0 ? lines.pop()! : '';
      for (const line of lines) addLine(line);
      if (n === 0) break;
    }
  } finally {
    fs.closeSync(fd);
  }
  if (words.length === 0) throw new RoundtripError(`${file}: no word vectors found`);
  return { index, words, dim, vectors: vectors.slice(0, words.length * dim) };
}

/** numpy float32 pairwise sum (same blocking as numpy's `pairwise_sum`), every step rounded to float32. */
function pairwiseSumF32(a: Float32Array, start: number, n: number): number {
  const f = Math.fround;
  if (n < 8) {
    let res = 0;
    for (let i = 0; i < n; i++) res = f(res + a[start + i]);
    return res;
  }
  if (n <= 128) {
    const r = new Float64Array(8);
    for (let j = 0; j < 8; j++) r[j] = a[start + j];
    let i = 8;
    for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) r[j] = f(r[j] + a[start + i + j]);
    let res = f(f(f(r[0] + r[1]) + f(r[2] + r[3])) + f(f(r[4] + r[5]) + f(r[6] + r[7])));
    for (; i < n; i++) res = f(res + a[start + i]);
    return res;
  }
  let n2 = Math.floor(n / 2);
  n2 -= n2 % 8;
  return f(pairwiseSumF32(a, start, n2) + pairwiseSumF32(a, start + n2, n - n2));
}

/** float32 L2 norms as `np.linalg.norm(vectors, axis=1)` on a float32 matrix. */
function fillNorms(wv: WordVectors): Float32Array {
  if (wv.norms) return wv.norms;
  const n = wv.words.length;
  const norms = new Float32Array(n);
  const sq = new Float32Array(wv.dim);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < wv.dim; k++) {
      const v = wv.vectors[i * wv.dim + k];
      sq[k] = v * v; // float32 product rounds on store
    }
    norms[i] = Math.sqrt(pairwiseSumF32(sq, 0, wv.dim));
  }
  wv.norms = norms;
  return norms;
}

/** A word's vector as gensim `get_vector(word, norm)` returns it (float32). */
export function wordVector(wv: WordVectors, word: string, norm = true): Float32Array {
  const i = wv.index.get(word);
  if (i === undefined) throw new RoundtripError(`word vectors: ${JSON.stringify(word)} is not in the vocabulary`);
  const row = wv.vectors.subarray(i * wv.dim, (i + 1) * wv.dim);
  if (!norm) return row;
  const n = fillNorms(wv)[i];
  const out = new Float32Array(wv.dim);
  for (let k = 0; k < wv.dim; k++) out[k] = row[k] / n;
  return out;
}

function checkTokens(name: string, tokens: readonly string[]): void {
  if (!Array.isArray(tokens)) throw invalid(name, 'an array of token strings', tokens);
  tokens.forEach((t, i) => {
    if (typeof t !== 'string') throw invalid(`${name}[${i}]`, 'a string', t);
  });
}

/** gensim `wmdistance(document1, document2, norm)`. */
export function wmDistance(wv: WordVectors, document1: readonly string[], document2: readonly string[], opts: { norm?: boolean } = {}): number {
  checkTokens('document1', document1);
  checkTokens('document2', document2);
  const norm = opts.norm === undefined ? true : expectBoolean('norm', opts.norm);
  const doc1 = document1.filter((t) => wv.index.has(t));
  const doc2 = document2.filter((t) => wv.index.has(t));
  if (doc1.length === 0 || doc2.length === 0) return Infinity;
  const distinct1 = [...new Set(doc1)];
  const distinct2 = [...new Set(doc2)];
  if (new Set([...distinct1, ...distinct2]).size === 1) return 0;
  const v1 = distinct1.map((w) => wordVector(wv, w, norm));
  const v2 = distinct2.map((w) => wordVector(wv, w, norm));
  const n1 = distinct1.length;
  const n2 = distinct2.length;
  const cost = new Float64Array(n1 * n2);
  let total = 0;
  for (let i = 0; i < n1; i++) {
    for (let j = 0; j < n2; j++) {
      let s = 0;
      for (let k = 0; k < wv.dim; k++) {
        const d = v1[i][k] - v2[j][k];
        s += d * d;
      }
      cost[i * n2 + j] = Math.sqrt(s);
      total += cost[i * n2 + j];
    }
  }
  // gensim: "emd gets stuck if the distance matrix contains only zeros" → inf
  if (Math.abs(total) < 1e-8) return Infinity;
  const weights = (doc: string[], distinct: string[]): Float64Array => {
    const counts = new Map<string, number>();
    for (const t of doc) counts.set(t, (counts.get(t) ?? 0) + 1);
    return Float64Array.from(distinct, (w) => counts.get(w)! / doc.length);
  };
  return earthMoversDistance(weights(doc1, distinct1), weights(doc2, distinct2), cost).cost;
}

/** Package root (holds `data/`), from lib/metrics or dist/metrics alike. */
/** NLTK's English stop-word list (179 words, nltk_data 2017–2025) shipped in `data/`. */
export const NLTK_STOPWORDS_FILE = path.join(PACKAGE_ROOT, 'data', 'nltk-stopwords-english.txt');

let nltkStopwords: Set<string> | undefined;
/**
 * NLTK's English stop words as the paper's WMD protocol used them (179 words). Note: an
 * `nltk.download('stopwords')` made after 2025-02-20 returns 198 words (19 pronoun
 * contractions such as "i'm", "they've" were added); this package keeps the 179-word list.
 */
export function loadNltkStopwords(file: string = NLTK_STOPWORDS_FILE): Set<string> {
  if (file === NLTK_STOPWORDS_FILE && nltkStopwords) return nltkStopwords;
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new RoundtripError(`stop words: cannot read ${file}: ${(err as Error).message}`);
  }
  const set = new Set(text.split('\n').map((w) => w.trim()).filter((w) => w !== ''));
  if (file === NLTK_STOPWORDS_FILE) nltkStopwords = set;
  return set;
}

/** Python `string.punctuation`. */
const ASCII_PUNCTUATION = '!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~';

/**
 * Caption → WMD tokens: lower-case, split on whitespace, optionally strip leading/trailing
 * ASCII punctuation from each token (dropping tokens that become empty), then drop stop words.
 */
export function wmdTokens(text: string, opts: { stopwords?: ReadonlySet<string>; stripPunctuation?: boolean } = {}): string[] {
  if (typeof text !== 'string') throw invalid('text', 'a string', text);
  let tokens = text.toLowerCase().split(/\s+/).filter((t) => t !== '');
  if (opts.stripPunctuation) {
    tokens = tokens
      .map((t) => {
        let s = 0;
        let e = t.length;
        while (s < e && ASCII_PUNCTUATION.includes(t[s])) s++;
        while (e > s && ASCII_PUNCTUATION.includes(t[e - 1])) e--;
        return t.slice(s, e);
      })
      .filter((t) => t !== '');
  }
  const stop = opts.stopwords;
  return stop ? tokens.filter((t) => !stop.has(t)) : tokens;
}

export interface CaptionWmdResult {
  /** Mean WMD over the references (Infinity if any reference distance is infinite). */
  mean: number;
  perReference: number[];
}

/**
 * The paper's protocol for one caption: lower-case, split on whitespace, remove NLTK English
 * stop words (both sides), gensim WMD to every reference, averaged over the references.
 */
export function captionWmd(
  wv: WordVectors,
  candidate: string,
  references: readonly string[],
  opts: { norm?: boolean; stopwords?: ReadonlySet<string> } = {},
): CaptionWmdResult {
  if (!Array.isArray(references) || references.length === 0) throw invalid('references', 'a non-empty array of captions', references);
  const stopwords = opts.stopwords ?? loadNltkStopwords();
  const cand = wmdTokens(candidate, { stopwords });
  const perReference = references.map((r, i) => {
    if (typeof r !== 'string') throw invalid(`references[${i}]`, 'a string', r);
    return wmDistance(wv, cand, wmdTokens(r, { stopwords }), { norm: opts.norm });
  });
  return { mean: perReference.reduce((a, b) => a + b, 0) / perReference.length, perReference };
}
