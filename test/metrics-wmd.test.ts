/**
 * Word Mover's Distance against gensim `wmdistance` (wmd_cases.json, both norm settings,
 * raw and stop-word-filtered tokens), the exact EMD solver against the 1-D closed form, the
 * fixture's preprocessing, and the paper's caption protocol (NLTK stop words).
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { NLTK_STOPWORDS_FILE, captionWmd, earthMoversDistance, loadNltkStopwords, loadWordVectors, wmDistance, wmdTokens } from '../lib/metrics';
import { DATA, METRICS } from './support/paths';

const fixture = JSON.parse(fs.readFileSync(path.join(METRICS, 'wmd_cases.json'), 'utf8'));
const embeddingsFile = path.join(METRICS, fixture.embeddings.file);
const TOL = 1e-6;
const value = (v: number | string): number => (v === 'inf' ? Infinity : (v as number));

describe('gensim wmdistance semantics', () => {
  const wv = loadWordVectors(embeddingsFile);

  test('embeddings load as the fixture describes them', () => {
    expect(createHash('sha256').update(fs.readFileSync(embeddingsFile)).digest('hex')).toBe(fixture.embeddings.sha256);
    expect(wv.words.length).toBe(fixture.embeddings.n_words);
    expect(wv.dim).toBe(fixture.embeddings.dim);
  });

  for (const variant of ['raw', 'nostop'] as const) {
    for (const [suffix, norm] of [
      ['norm', true],
      ['nonorm', false],
    ] as const) {
      test(`every case, ${variant} tokens, norm=${norm}`, () => {
        expect(fixture.cases.length).toBeGreaterThan(0);
        for (const c of fixture.cases) {
          const got = wmDistance(wv, c[`tokens1_${variant}`], c[`tokens2_${variant}`], { norm });
          const expected = value(c[`wmd_${variant}_${suffix}`]);
          if (expected === Infinity) expect(got).toBe(Infinity);
          else if (!(Math.abs(got - expected) <= TOL)) throw new Error(`${c.sentence1} | ${c.sentence2}: got ${got}, expected ${expected}`);
        }
      });
    }
  }

  test("the fixture's preprocessing (lower-case, split, strip ASCII punctuation, gensim stop words) is reproducible", () => {
    const gensimStop = new Set<string>(fixture.gensim_stopwords);
    for (const c of fixture.cases) {
      for (const k of ['1', '2']) {
        const sentence = c[`sentence${k}`];
        expect(wmdTokens(sentence, { stripPunctuation: true })).toEqual(c[`tokens${k}_raw`]);
        expect(wmdTokens(sentence, { stripPunctuation: true, stopwords: gensimStop })).toEqual(c[`tokens${k}_nostop`]);
        expect(c[`tokens${k}_raw`].filter((t: string) => !wv.index.has(t))).toEqual(c[`oov${k}_raw`]);
      }
    }
  });

  test('OOV words are dropped, an empty side gives Infinity, a single shared word gives 0', () => {
    expect(wmDistance(wv, ['dog', 'zzzunknown'], ['dog'])).toBe(0);
    expect(wmDistance(wv, ['zzzunknown'], ['dog'])).toBe(Infinity);
    expect(wmDistance(wv, [], ['dog'])).toBe(Infinity);
    expect(wmDistance(wv, ['dog', 'cat'], ['cat', 'dog'])).toBe(0);
    expect(wmDistance(wv, ['dog'], ['cat'])).toBeGreaterThan(0);
    expect(() => wmDistance(wv, 'dog' as unknown as string[], ['cat'])).toThrow(/document1: expected an array/);
  });
});

describe('exact EMD solver', () => {
  /** 1-D transport with cost |x − y| has the closed form ∫ |F_a − F_b|. */
  function oneDimensional(seed: number, n1: number, n2: number): { a: Float64Array; b: Float64Array; x: number[]; y: number[] } {
    let s = seed;
    const rnd = (): number => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
    const x = Array.from({ length: n1 }, rnd);
    const y = Array.from({ length: n2 }, rnd);
    const a = Float64Array.from(x, () => rnd() + 0.05);
    const b = Float64Array.from(y, () => rnd() + 0.05);
    const sa = a.reduce((p, q) => p + q, 0);
    const sb = b.reduce((p, q) => p + q, 0);
    a.forEach((v, i) => (a[i] = v / sa));
    b.forEach((v, i) => (b[i] = v / sb));
    return { a, b, x, y };
  }

  test('matches the 1-D closed form on random problems, and its flow has the right marginals', () => {
    for (let seed = 1; seed <= 25; seed++) {
      const n1 = 1 + (seed % 9);
      const n2 = 1 + ((seed * 7) % 11);
      const { a, b, x, y } = oneDimensional(seed, n1, n2);
      const cost = new Float64Array(n1 * n2);
      for (let i = 0; i < n1; i++) for (let j = 0; j < n2; j++) cost[i * n2 + j] = Math.abs(x[i] - y[j]);
      const { cost: emd, flow } = earthMoversDistance(a, b, cost);
      const points = [...x.map((p, i) => [p, a[i]]), ...y.map((p, j) => [p, -b[j]])].sort((p, q) => p[0] - q[0]);
      let cdf = 0;
      let closed = 0;
      for (let k = 0; k + 1 < points.length; k++) {
        cdf += points[k][1];
        closed += Math.abs(cdf) * (points[k + 1][0] - points[k][0]);
      }
      expect(Math.abs(emd - closed)).toBeLessThan(1e-12);
      for (let i = 0; i < n1; i++) expect(Math.abs(flow.subarray(i * n2, (i + 1) * n2).reduce((p, q) => p + q, 0) - a[i])).toBeLessThan(1e-12);
      for (let j = 0; j < n2; j++) {
        let col = 0;
        for (let i = 0; i < n1; i++) col += flow[i * n2 + j];
        expect(Math.abs(col - b[j])).toBeLessThan(1e-12);
      }
    }
  });

  test('rejects unbalanced masses, negative masses and wrong cost sizes', () => {
    expect(() => earthMoversDistance([0.5, 0.5], [0.9], [1, 1])).toThrow(/b: expected masses summing to 1/);
    expect(() => earthMoversDistance([-0.5, 1.5], [1], [1, 1])).toThrow(/a\[0\]/);
    expect(() => earthMoversDistance([1], [1], [1, 2])).toThrow(/cost: expected 1×1/);
  });
});

describe("the paper's WMD protocol", () => {
  test('the shipped NLTK stop-word list is the 179-word list from shared/data', () => {
    expect(fs.readFileSync(NLTK_STOPWORDS_FILE, 'utf8')).toBe(fs.readFileSync(path.join(DATA, 'nltk-stopwords-english.txt'), 'utf8'));
    const stop = loadNltkStopwords();
    expect(stop.size).toBe(fs.readFileSync(NLTK_STOPWORDS_FILE, 'utf8').trim().split('\n').length);
    expect(stop.has('the')).toBe(true);
    expect(stop.has("i'm")).toBe(false); // added to nltk_data in 2025; not in this list
  });

  test('lower-case, whitespace split, NLTK stop words removed, mean over references', () => {
    const wv = loadWordVectors(embeddingsFile);
    const stop = loadNltkStopwords();
    const c = fixture.cases[0];
    const refs = fixture.cases.slice(0, 4).map((k: any) => k.sentence2);
    const r = captionWmd(wv, c.sentence1, refs);
    const tokens = (s: string): string[] => s.toLowerCase().split(/\s+/).filter((t) => t && !stop.has(t));
    const expected = refs.map((ref: string) => wmDistance(wv, tokens(c.sentence1), tokens(ref)));
    expect(r.perReference).toEqual(expected);
    expect(r.mean).toBeCloseTo(expected.reduce((p: number, q: number) => p + q, 0) / expected.length, 14);
    expect(captionWmd(wv, 'The dog', ['a DOG']).mean).toBe(0);
    expect(captionWmd(wv, 'the of and', ['dog']).mean).toBe(Infinity);
    expect(() => captionWmd(wv, 'dog', [])).toThrow(/references: expected a non-empty array/);
  });
});

describe('word vector files', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-wv-'));
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
  test('first duplicate wins, header option, clear errors', () => {
    const f = path.join(tmp, 'v.txt');
    fs.writeFileSync(f, 'dog 1 0\ncat 0 1\ndog 5 5\n');
    const wv = loadWordVectors(f);
    expect(wv.words).toEqual(['dog', 'cat']);
    expect(Array.from(wv.vectors.subarray(0, 2))).toEqual([1, 0]);
    expect(wmDistance(wv, ['dog'], ['cat'], { norm: false })).toBeCloseTo(Math.SQRT2, 12);
    const h = path.join(tmp, 'h.txt');
    fs.writeFileSync(h, '2 2\ndog 1 0\ncat 0 1\n');
    expect(loadWordVectors(h, { hasHeader: true }).words).toEqual(['dog', 'cat']);
    const bad = path.join(tmp, 'bad.txt');
    fs.writeFileSync(bad, 'dog 1 0\ncat 0\n');
    expect(() => loadWordVectors(bad)).toThrow(/bad\.txt:2: expected 2 values/);
    fs.writeFileSync(bad, 'dog 1 x\n');
    expect(() => loadWordVectors(bad)).toThrow(/bad\.txt:1: value 2 is not a number/);
    expect(() => loadWordVectors(path.join(tmp, 'none.txt'))).toThrow(/cannot read/);
  });
});
