/**
 * FID statistics, Fréchet distance (torch-fidelity 0.4 eigenvalue form, torch-fidelity 0.3 /
 * pytorch-fid sqrtm form) and Inception Score against fid_is_cases.json, with every shape
 * read from the fixture; statistics files; bad input; a larger random check against the
 * closed form for σ2 = c²σ1.
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FidStatistics, fidStatistics, frechetDistance, inceptionScore, loadFidStatistics, saveFidStatistics } from '../lib/metrics';
import { METRICS } from './support/paths';

const fixture = JSON.parse(fs.readFileSync(path.join(METRICS, 'fid_is_cases.json'), 'utf8'));

function readArray(spec: { file: string; shape: number[]; sha256: string; dtype: string }): Float32Array | Float64Array {
  const buf = fs.readFileSync(path.join(METRICS, spec.file));
  expect(createHash('sha256').update(buf).digest('hex')).toBe(spec.sha256);
  const count = spec.shape.reduce((a, b) => a * b, 1);
  const is64 = spec.dtype.startsWith('float64');
  expect(buf.length).toBe(count * (is64 ? 8 : 4));
  const out = is64 ? new Float64Array(count) : new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = is64 ? buf.readDoubleLE(i * 8) : buf.readFloatLE(i * 4);
  return out;
}

function expectRel(actual: number, expected: number, rel: number, what: string): void {
  if (!(Math.abs(actual - expected) <= rel * Math.abs(expected))) throw new Error(`${what}: got ${actual}, expected ${expected} (relative tolerance ${rel})`);
}

function summaries(s: FidStatistics): Record<string, number | number[]> {
  const d = s.dim;
  const mu = Array.from(s.mu32!);
  let trace = 0;
  let sum = 0;
  let fro = 0;
  for (let i = 0; i < d * d; i++) {
    sum += s.sigma[i];
    fro += s.sigma[i] * s.sigma[i];
  }
  for (let i = 0; i < d; i++) trace += s.sigma[i * d + i];
  return {
    mu_first8: mu.slice(0, 8),
    mu_sum: mu.reduce((a, b) => a + b, 0),
    mu_l2: Math.sqrt(mu.reduce((a, b) => a + b * b, 0)),
    sigma_trace: trace,
    sigma_sum: sum,
    sigma_fro: Math.sqrt(fro),
    sigma_00: s.sigma[0],
    sigma_01: s.sigma[1],
    sigma_row0_first8: Array.from(s.sigma.subarray(0, Math.min(8, d))),
  };
}

function checkSummaries(s: FidStatistics, expected: Record<string, unknown>, what: string): void {
  const got = summaries(s);
  for (const [key, value] of Object.entries(expected)) {
    if (key === 'mu_dtype') continue;
    // README: 1e-6 relative on the float32 mu summaries, 1e-9 relative on sigma summaries
    const rel = key.startsWith('mu_') ? 1e-6 : 1e-9;
    const g = got[key];
    if (g === undefined) throw new Error(`${what}: unknown summary ${key}`);
    if (Array.isArray(value)) (value as number[]).forEach((v, i) => expectRel((g as number[])[i], v, rel, `${what}.${key}[${i}]`));
    else expectRel(g as number, value as number, rel, `${what}.${key}`);
  }
}

/**
 * FID within 1e-4 relative. A case whose expected value is round-off noise around 0 (set vs
 * itself: ±1e-14 against traces of ~30) has no meaningful relative error; there both values
 * must be zero to the same round-off scale (1e-12 of the trace sum).
 */
function expectFid(actual: number, expected: number, traceScale: number, what: string): void {
  if (Math.abs(expected) < 1e-12 * traceScale) {
    if (!(Math.abs(actual) < 1e-12 * traceScale)) throw new Error(`${what}: got ${actual}, expected round-off zero (${expected})`);
  } else expectRel(actual, expected, 1e-4, what);
}

describe('FID against torch-fidelity 0.4.0 / 0.3.0 and pytorch-fid 0.3.0', () => {
  const features = new Map<string, { data: Float32Array; n: number; d: number }>();
  for (const [name, spec] of Object.entries<any>(fixture.arrays)) {
    if (name.startsWith('set')) features.set(name, { data: readArray(spec) as Float32Array, n: spec.shape[0], d: spec.shape[1] });
  }
  const statsOf = (c: any, k: 1 | 2): FidStatistics => {
    const inline = c[`inline_features${k}`] as number[][] | undefined;
    if (inline) return fidStatistics(Float32Array.from(inline.flat()), inline.length, inline[0].length);
    const f = features.get(c[`features${k}`])!;
    return fidStatistics(f.data, f.n, f.d);
  };

  for (const c of fixture.fid_cases) {
    test(`${c.name}: statistics, intermediate terms and FID in all three forms`, () => {
      const s1 = statsOf(c, 1);
      const s2 = statsOf(c, 2);
      checkSummaries(s1, c.stats1, 'stats1');
      checkSummaries(s2, c.stats2, 'stats2');
      const traceScale = c.trace_sigma1 + c.trace_sigma2;
      const tf04 = frechetDistance(s1, s2);
      const tf03 = frechetDistance(s1, s2, { form: 'sqrtm', muPrecision: 'float32' });
      const pyfid = frechetDistance(s1, s2, { form: 'sqrtm' });
      expectFid(tf04.fid, c.fid_torch_fidelity_0_4_0, traceScale, 'torch-fidelity 0.4.0');
      expectFid(tf03.fid, c.fid_torch_fidelity_0_3_0, traceScale, 'torch-fidelity 0.3.0');
      expectFid(pyfid.fid, c.fid_pytorch_fid_0_3_0, traceScale, 'pytorch-fid 0.3.0');
      expectRel(tf04.traceSigma1, c.trace_sigma1, 1e-9, 'trace_sigma1');
      expectRel(tf04.traceSigma2, c.trace_sigma2, 1e-9, 'trace_sigma2');
      expectRel(tf04.traceCovmean, c.tr_covmean_eigvals, 1e-6, 'tr_covmean_eigvals');
      expect(Math.abs(tf04.diffDotDiff - c.diff_dot_diff_float32_mu)).toBeLessThanOrEqual(1e-6 * Math.max(c.diff_dot_diff_float32_mu, traceScale * 1e-6));
      expect(Math.abs(pyfid.diffDotDiff - c.diff_dot_diff_float64_mu)).toBeLessThanOrEqual(1e-9 * Math.max(c.diff_dot_diff_float64_mu, traceScale * 1e-9));
      const minEig = c.min_eig_real_sigma1_sigma2;
      if (Math.abs(minEig) < 1e-12 * traceScale) expect(Math.abs(tf04.minEigenvalue)).toBeLessThan(1e-12 * traceScale);
      else expectRel(tf04.minEigenvalue, minEig, 1e-6, 'min eigenvalue');

      if (c.stats_files) {
        // the float64 statistics files: pytorch-fid means and np.cov
        const files = c.stats_files;
        const mu1 = readArray(files.mu1);
        const sigma1 = readArray(files.sigma1);
        const mu2 = readArray(files.mu2);
        const sigma2 = readArray(files.sigma2);
        for (const [got, exp, what] of [
          [s1.mu, mu1, 'mu1'],
          [s1.sigma, sigma1, 'sigma1'],
          [s2.mu, mu2, 'mu2'],
          [s2.sigma, sigma2, 'sigma2'],
        ] as const) {
          expect(got.length).toBe(exp.length);
          for (let i = 0; i < exp.length; i++) expectRel(got[i], exp[i], 1e-9, `${what}[${i}]`);
        }
        const fromFiles = frechetDistance(
          { dim: files.mu1.shape[0], count: 0, mu: mu1 as Float64Array, sigma: sigma1 as Float64Array },
          { dim: files.mu2.shape[0], count: 0, mu: mu2 as Float64Array, sigma: sigma2 as Float64Array },
          { form: 'sqrtm' },
        );
        expectFid(fromFiles.fid, c.fid_pytorch_fid_0_3_0, traceScale, 'pytorch-fid from .f64 files');
      }
      if (c.mu1_float64) {
        expect(Array.from(s1.mu)).toEqual(c.mu1_float64);
        expect(Array.from(s2.mu)).toEqual(c.mu2_float64);
        expect(Array.from(s1.mu32!)).toEqual(c.mu1_float32);
        expect(Array.from(s2.mu32!)).toEqual(c.mu2_float32);
        const d = s1.dim;
        for (let i = 0; i < d; i++) {
          for (let j = 0; j < d; j++) {
            expectRel(s1.sigma[i * d + j], c.sigma1[i][j], 1e-9, `sigma1[${i}][${j}]`);
            expectRel(s2.sigma[i * d + j], c.sigma2[i][j], 1e-9, `sigma2[${i}][${j}]`);
          }
        }
      }
    });
  }

  test('random 128-d data: σ2 = c²σ1 with shifted mean follows the closed form, also rank-deficient (n < d)', () => {
    for (const [n, d] of [
      [400, 128],
      [60, 128],
    ]) {
      let seed = n * 31 + d;
      const rnd = (): number => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648 - 0.5);
      const x = Float32Array.from({ length: n * d }, rnd);
      const s1 = fidStatistics(x, n, d);
      const c = 1.5;
      const shift = Float64Array.from({ length: d }, (_, j) => 0.01 * (j % 5));
      const s2: FidStatistics = { dim: d, count: n, mu: s1.mu.map((m, j) => m + shift[j]), sigma: s1.sigma.map((v) => v * c * c) };
      let trace = 0;
      for (let j = 0; j < d; j++) trace += s1.sigma[j * d + j];
      const expected = shift.reduce((a, v) => a + v * v, 0) + (1 - c) * (1 - c) * trace;
      // with n < d, d − n + 1 eigenvalues of σ1σ2 are round-off noise whose square roots (~1e-8
      // each) enter the trace — in numpy/scipy as here — so the closed form holds to ~1e-7 only
      expectRel(frechetDistance(s1, s2, { form: 'sqrtm' }).fid, expected, n > d ? 1e-9 : 1e-6, `n=${n} d=${d}`);
      expect(Math.abs(frechetDistance(s1, s1, { form: 'sqrtm' }).fid)).toBeLessThan((n > d ? 1e-9 : 1e-6) * trace);
    }
  });

  test('bad input', () => {
    const s = fidStatistics(Float32Array.from([1, 2, 3, 4, 5, 7]), 3, 2);
    expect(() => fidStatistics(new Float32Array(5), 3, 2)).toThrow(/features: expected n × d = 6 values/);
    expect(() => fidStatistics(new Float32Array(2), 1, 2)).toThrow(/n: expected an integer >= 2/);
    expect(() => fidStatistics([1, 2] as unknown as Float32Array, 1, 2)).toThrow(/features: expected a Float32Array/);
    expect(() => fidStatistics(Float32Array.from([1, NaN, 3, 4]), 2, 2)).toThrow(/features\[0\]\[1\]: expected a finite value/);
    const other = fidStatistics(new Float32Array(9).map((_, i) => i * i), 3, 3);
    expect(() => frechetDistance(s, other)).toThrow(/stats2.dim: expected the same dimension as stats1 \(2\)/);
    expect(() => frechetDistance(s, s, { form: 'scipy' as 'sqrtm' })).toThrow(/form: expected one of/);
    const notPsd: FidStatistics = { dim: 2, count: 0, mu: new Float64Array(2), sigma: Float64Array.from([1, 0, 0, -1]) };
    const psd: FidStatistics = { dim: 2, count: 0, mu: new Float64Array(2), sigma: Float64Array.from([1, 0, 0, 1]) };
    expect(() => frechetDistance(notPsd, psd, { form: 'sqrtm' })).toThrow(/Imaginary component/);
  });
});

describe('FID statistics files', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-fid-'));
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
  test('round trip is bit-exact and the write leaves no temporary file', () => {
    const spec = fixture.arrays[fixture.fid_cases[0].features1];
    const s = fidStatistics(readArray(spec) as Float32Array, spec.shape[0], spec.shape[1]);
    const file = path.join(tmp, 'sub', 'ref.stats');
    saveFidStatistics(file, s, { dataset: 'test' });
    expect(fs.readdirSync(path.dirname(file))).toEqual(['ref.stats']);
    const back = loadFidStatistics(file);
    expect(back.dim).toBe(s.dim);
    expect(back.count).toBe(s.count);
    expect(back.mu).toEqual(s.mu);
    expect(back.mu32).toEqual(s.mu32);
    expect(back.sigma).toEqual(s.sigma);
    expect(back.meta).toEqual({ dataset: 'test' });
    expect(frechetDistance(back, s).fid).toBe(frechetDistance(s, s).fid);
  });
  test('corrupt files give clear errors', () => {
    const file = path.join(tmp, 'bad.stats');
    fs.writeFileSync(file, 'hello\n');
    expect(() => loadFidStatistics(file)).toThrow(/bad\.stats: expected a FID statistics file/);
    fs.writeFileSync(file, JSON.stringify({ magic: 'roundtrip-fid-stats', version: 1, dim: 2, count: 3, has_mu32: false }) + '\n' + 'x'.repeat(8));
    expect(() => loadFidStatistics(file)).toThrow(/data: expected 48 bytes for dim 2/);
    expect(() => loadFidStatistics(path.join(tmp, 'none.stats'))).toThrow(/cannot read/);
  });
});

describe('Inception Score against torch-fidelity', () => {
  const REL = 1e-9;
  for (const c of fixture.is_cases) {
    test(`${c.name}: every splits/shuffle setting and the per-split scores`, () => {
      const logits = c.inline_logits ? Float64Array.from((c.inline_logits as number[][]).flat()) : readArray(fixture.arrays[c.logits]);
      const keys = Object.keys(c).filter((k) => /^splits\d+_shuffle(True|False)$/.test(k));
      expect(keys.length).toBeGreaterThan(0);
      for (const key of keys) {
        const [, splits, shuffle] = /^splits(\d+)_shuffle(True|False)$/.exec(key)!;
        const r = inceptionScore(logits, c.N, c.C, { splits: Number(splits), permutation: shuffle === 'True' ? c.permutation_rng_seed_2020 : undefined });
        expectRel(r.mean, c[key].mean, REL, `${key}.mean`);
        if (c[key].std === 0) expect(r.std).toBeLessThan(1e-12 * r.mean);
        else expectRel(r.std, c[key].std, REL, `${key}.std`);
      }
      const def = c.per_split_scores_default;
      const r = inceptionScore(logits, c.N, c.C, { splits: def.splits, permutation: def.shuffle ? c.permutation_rng_seed_2020 : undefined });
      expect(r.perSplit.length).toBe(def.scores.length);
      def.scores.forEach((v: number, i: number) => expectRel(r.perSplit[i], v, REL, `split ${i}`));
    });
  }
  test('bad input', () => {
    const logits = new Float32Array(12);
    expect(() => inceptionScore(logits, 4, 4)).toThrow(/logits: expected n × c = 16 values/);
    expect(() => inceptionScore(logits, 4, 3, { splits: 5 })).toThrow(/splits: expected an integer in \[1, 4\]/);
    expect(() => inceptionScore(logits, 4, 3, { splits: 2, permutation: [0, 1, 2] })).toThrow(/permutation: expected a permutation of 0..3/);
    expect(() => inceptionScore(logits, 4, 3, { splits: 2, permutation: [0, 1, 1, 3] })).toThrow(/permutation\[2\]: expected a distinct integer/);
    expect(inceptionScore(logits, 4, 3, { splits: 2 }).mean).toBeCloseTo(1, 12);
  });
});
