/**
 * FID statistics and the Fréchet distance, as torch-fidelity 0.4.0 / 0.3.0 and pytorch-fid
 * 0.3.0 compute them from Inception features (the network runs elsewhere).
 *
 * tr sqrt(σ1σ2) is evaluated through a symmetric matrix with the same eigenvalues as σ1σ2:
 * Lᵀσ2L with σ1 = LLᵀ (Cholesky) when σ1 (or else σ2) is positive definite, otherwise
 * Sσ2S with S = σ1^{1/2} from a symmetric eigen-decomposition. Its eigenvalues are real;
 * Σ sqrt(max(λ, 0)) equals torch-fidelity 0.4's Σ real(sqrt(eigvals(σ1σ2))) (tiny negative
 * round-off eigenvalues contribute 0 there too) and the trace of scipy's sqrtm(σ1σ2).
 */
import * as fs from 'fs';
import { RoundtripError, expectInteger, expectOneOf, invalid } from '../errors';
import { cholesky, congruenceLower, matmul, symmetricEigen, symmetricEigenvalues } from './linalg';
import { writeFileAtomicSync } from '../fsutil';

export interface FidStatistics {
  /** Feature dimension. */
  dim: number;
  /** Number of samples the statistics came from (0 if unknown). */
  count: number;
  /** float64 mean of the float32 features (pytorch-fid). */
  mu: Float64Array;
  /** float32 mean as torch-fidelity's `np.mean` on float32 features (float32 accumulation). */
  mu32?: Float32Array;
  /** np.cov(features, rowvar=False), float64, ddof 1, row-major dim × dim. */
  sigma: Float64Array;
}

/** Mean and covariance of n×d float32 features (row-major). */
export function fidStatistics(features: Float32Array, n: number, d: number): FidStatistics {
  if (!(features instanceof Float32Array)) throw invalid('features', 'a Float32Array', features);
  expectInteger('n', n, { min: 2 });
  expectInteger('d', d, { min: 1 });
  if (features.length !== n * d) throw invalid('features', `n × d = ${n * d} values`, features);
  const mu = new Float64Array(d);
  const mu32 = new Float32Array(d);
  // numpy reduces over axis 0 row by row: float64 for pytorch-fid, float32 for torch-fidelity
  for (let i = 0; i < n; i++) {
    const row = i * d;
    for (let j = 0; j < d; j++) {
      const x = features[row + j];
      if (!Number.isFinite(x)) throw invalid(`features[${i}][${j}]`, 'a finite value', x);
      mu[j] += x;
      mu32[j] = mu32[j] + x; // Float32Array store rounds each partial sum to float32
    }
  }
  for (let j = 0; j < d; j++) {
    mu[j] /= n;
    mu32[j] = mu32[j] / n;
  }
  // Xᵀ·X of the centred features, lower triangle, accumulated over chunks of 512 samples: each
  // chunk is copied centred and transposed (d × 512 float64, contiguous per feature) so every
  // entry is a contiguous dot product, and memory stays O(d² + 512·d) for any n
  const CHUNK = 512;
  const FT = 32; // feature tile: two 32 × 512 float64 tiles fit in L2
  const sigma = new Float64Array(d * d);
  const xt = new Float64Array(d * Math.min(CHUNK, n));
  for (let start = 0; start < n; start += CHUNK) {
    const len = Math.min(CHUNK, n - start);
    for (let i = 0; i < len; i++) {
      const row = (start + i) * d;
      for (let j = 0; j < d; j++) xt[j * len + i] = features[row + j] - mu[j];
    }
    for (let ab = 0; ab < d; ab += FT) {
      const aEnd = Math.min(ab + FT, d);
      for (let bb = 0; bb <= ab; bb += FT) {
        const bEnd = Math.min(bb + FT, d);
        // 2×2 register blocks: four dot products share each pair of loads. Slots above the
        // diagonal may receive partial sums; the final loop rebuilds them from the lower triangle.
        for (let a = ab; a < aEnd; a += 2) {
          const ra = a * len;
          if (a + 1 < aEnd) {
            const ra1 = ra + len;
            const bMax = Math.min(bEnd, a + 2);
            let b = bb;
            for (; b + 1 < bMax; b += 2) {
              const rb = b * len;
              const rb1 = rb + len;
              let s00 = 0;
              let s01 = 0;
              let s10 = 0;
              let s11 = 0;
              for (let i = 0; i < len; i++) {
                const x0 = xt[ra + i];
                const x1 = xt[ra1 + i];
                const y0 = xt[rb + i];
                const y1 = xt[rb1 + i];
                s00 += x0 * y0;
                s01 += x0 * y1;
                s10 += x1 * y0;
                s11 += x1 * y1;
              }
              sigma[a * d + b] += s00;
              sigma[a * d + b + 1] += s01;
              sigma[(a + 1) * d + b] += s10;
              sigma[(a + 1) * d + b + 1] += s11;
            }
            if (b < bMax) {
              const rb = b * len;
              let s0 = 0;
              let s1 = 0;
              for (let i = 0; i < len; i++) {
                s0 += xt[ra + i] * xt[rb + i];
                s1 += xt[ra1 + i] * xt[rb + i];
              }
              sigma[a * d + b] += s0;
              sigma[(a + 1) * d + b] += s1;
            }
          } else {
            const bMax = Math.min(bEnd, a + 1);
            for (let b = bb; b < bMax; b++) {
              const rb = b * len;
              let s0 = 0;
              for (let i = 0; i < len; i++) s0 += xt[ra + i] * xt[rb + i];
              sigma[a * d + b] += s0;
            }
          }
        }
      }
    }
  }
  const scale = 1 / (n - 1); // np.cov multiplies by 1/fact
  for (let a = 0; a < d; a++) {
    for (let b = 0; b <= a; b++) {
      const v = sigma[a * d + b] * scale;
      sigma[a * d + b] = v;
      sigma[b * d + a] = v;
    }
  }
  return { dim: d, count: n, mu, mu32, sigma };
}

function checkStats(name: string, s: FidStatistics): void {
  if (!s || typeof s !== 'object') throw invalid(name, 'FID statistics {dim, mu, sigma}', s);
  expectInteger(`${name}.dim`, s.dim, { min: 1 });
  if (!(s.mu instanceof Float64Array) || s.mu.length !== s.dim) throw invalid(`${name}.mu`, `a Float64Array of length ${s.dim}`, s.mu);
  if (!(s.sigma instanceof Float64Array) || s.sigma.length !== s.dim * s.dim) throw invalid(`${name}.sigma`, `a Float64Array of ${s.dim}×${s.dim}`, s.sigma);
  if (s.mu32 !== undefined && (!(s.mu32 instanceof Float32Array) || s.mu32.length !== s.dim)) throw invalid(`${name}.mu32`, `a Float32Array of length ${s.dim}`, s.mu32);
}

/** Eigenvalues of a symmetric matrix with the spectrum of σ1·σ2 (both symmetric PSD). */
export function productSpectrum(sigma1: Float64Array, sigma2: Float64Array, d: number): Float64Array {
  for (const [a, b] of [
    [sigma1, sigma2],
    [sigma2, sigma1],
  ]) {
    const l = cholesky(a, d);
    if (l) return symmetricEigenvalues(congruenceLower(l, b, d), d);
  }
  // both singular: S = σ1^{1/2} via eigen-decomposition, spectrum of S·σ2·S
  const { values, vectorsT } = symmetricEigen(sigma1, d);
  const s = new Float64Array(d * d);
  for (let k = 0; k < d; k++) {
    const root = Math.sqrt(Math.max(values[k], 0));
    if (root === 0) continue;
    const zk = k * d;
    for (let i = 0; i < d; i++) {
      const f = root * vectorsT[zk + i];
      if (f === 0) continue;
      const row = i * d;
      for (let j = 0; j < d; j++) s[row + j] += f * vectorsT[zk + j];
    }
  }
  return symmetricEigenvalues(matmul(matmul(s, sigma2, d), s, d), d);
}

/** tr sqrt(σ1σ2) = Σ sqrt(max(λ, 0)) over the spectrum of σ1σ2. */
export function traceSqrtProduct(sigma1: Float64Array, sigma2: Float64Array, d: number): { trace: number; minEigenvalue: number } {
  const lambda = productSpectrum(sigma1, sigma2, d);
  let trace = 0;
  let minEigenvalue = Infinity;
  for (const l of lambda) {
    minEigenvalue = Math.min(minEigenvalue, l);
    if (l > 0) trace += Math.sqrt(l);
  }
  return { trace, minEigenvalue };
}

export type FrechetForm = 'torch-fidelity-0.4' | 'sqrtm';
export interface FrechetOptions {
  /**
   * 'torch-fidelity-0.4' (default): eigenvalue form, float32 means when both statistics carry
   * them. 'sqrtm': torch-fidelity 0.3 / pytorch-fid (scipy sqrtm, eps retry, imaginary check).
   */
  form?: FrechetForm;
  /** Which means to use: default float32 for torch-fidelity-0.4, float64 for sqrtm (pytorch-fid). */
  muPrecision?: 'float32' | 'float64';
  /** sqrtm form: offset added to both diagonals when the first attempt is not finite (1e-6). */
  eps?: number;
}

export interface FrechetResult {
  fid: number;
  diffDotDiff: number;
  traceSigma1: number;
  traceSigma2: number;
  traceCovmean: number;
  /** Smallest eigenvalue of σ1σ2 (tiny negative values are round-off). */
  minEigenvalue: number;
}

/** Fréchet distance between two Gaussians given by FID statistics. */
export function frechetDistance(stats1: FidStatistics, stats2: FidStatistics, opts: FrechetOptions = {}): FrechetResult {
  checkStats('stats1', stats1);
  checkStats('stats2', stats2);
  if (stats1.dim !== stats2.dim) throw invalid('stats2.dim', `the same dimension as stats1 (${stats1.dim})`, stats2.dim);
  const form = opts.form === undefined ? 'torch-fidelity-0.4' : expectOneOf('form', opts.form, ['torch-fidelity-0.4', 'sqrtm'] as const);
  const d = stats1.dim;
  const wantF32 = opts.muPrecision !== undefined ? expectOneOf('muPrecision', opts.muPrecision, ['float32', 'float64'] as const) === 'float32' : form === 'torch-fidelity-0.4';
  let diffDotDiff = 0;
  if (wantF32) {
    const m1 = stats1.mu32 ?? Float32Array.from(stats1.mu);
    const m2 = stats2.mu32 ?? Float32Array.from(stats2.mu);
    for (let j = 0; j < d; j++) {
      const diff = Math.fround(m1[j] - m2[j]);
      diffDotDiff += diff * diff;
    }
    diffDotDiff = Math.fround(diffDotDiff); // numpy float32 dot returns float32
  } else {
    for (let j = 0; j < d; j++) {
      const diff = stats1.mu[j] - stats2.mu[j];
      diffDotDiff += diff * diff;
    }
  }
  let traceSigma1 = 0;
  let traceSigma2 = 0;
  for (let j = 0; j < d; j++) {
    traceSigma1 += stats1.sigma[j * d + j];
    traceSigma2 += stats2.sigma[j * d + j];
  }
  let { trace, minEigenvalue } = traceSqrtProduct(stats1.sigma, stats2.sigma, d);
  if (form === 'sqrtm') {
    if (!Number.isFinite(trace)) {
      // pytorch-fid: "fid calculation produces singular product; adding eps to diagonal of cov estimates"
      const eps = opts.eps ?? 1e-6;
      const s1 = Float64Array.from(stats1.sigma);
      const s2 = Float64Array.from(stats2.sigma);
      for (let j = 0; j < d; j++) {
        s1[j * d + j] += eps;
        s2[j * d + j] += eps;
      }
      ({ trace, minEigenvalue } = traceSqrtProduct(s1, s2, d));
    }
    // scipy's sqrtm has an imaginary diagonal ≈ sqrt(−λ) for negative eigenvalues; pytorch-fid rejects > 1e-3
    if (minEigenvalue < 0 && Math.sqrt(-minEigenvalue) > 1e-3) {
      throw new RoundtripError(`FID: Imaginary component ${Math.sqrt(-minEigenvalue)} in sqrtm(sigma1·sigma2); the covariances are not positive semi-definite`);
    }
  }
  if (!Number.isFinite(trace)) throw new RoundtripError('FID: non-finite tr sqrt(sigma1·sigma2); check the statistics for NaN/Inf');
  return { fid: diffDotDiff + traceSigma1 + traceSigma2 - 2 * trace, diffDotDiff, traceSigma1, traceSigma2, traceCovmean: trace, minEigenvalue };
}

// ---- statistics files -----------------------------------------------------------------------------

const STATS_MAGIC = 'roundtrip-fid-stats';
const STATS_VERSION = 1;

/**
 * Writes statistics atomically: one JSON header line (magic, version, dim, count, has_mu32,
 * meta), then raw little-endian float64 mu (dim), sigma (dim²) and, if present, the float32
 * means as float64 (dim).
 */
export function saveFidStatistics(file: string, stats: FidStatistics, meta: Record<string, unknown> = {}): void {
  checkStats('stats', stats);
  const header = JSON.stringify({ magic: STATS_MAGIC, version: STATS_VERSION, dim: stats.dim, count: stats.count, has_mu32: stats.mu32 !== undefined, meta }) + '\n';
  const headerBytes = Buffer.from(header, 'utf8');
  const nFloats = stats.dim + stats.dim * stats.dim + (stats.mu32 ? stats.dim : 0);
  const body = Buffer.alloc(nFloats * 8);
  let off = 0;
  const put = (arr: ArrayLike<number>): void => {
    for (let i = 0; i < arr.length; i++, off += 8) body.writeDoubleLE(arr[i], off);
  };
  put(stats.mu);
  put(stats.sigma);
  if (stats.mu32) put(stats.mu32);
  writeFileAtomicSync(file, [headerBytes, body]);
}

/** Reads statistics written by {@link saveFidStatistics}. */
export function loadFidStatistics(file: string): FidStatistics & { meta: Record<string, unknown> } {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (err) {
    throw new RoundtripError(`FID statistics: cannot read ${file}: ${(err as Error).message}`);
  }
  const nl = buf.indexOf(0x0a);
  let header: { magic?: unknown; version?: unknown; dim?: unknown; count?: unknown; has_mu32?: unknown; meta?: unknown };
  try {
    if (nl < 0) throw new Error('no header line');
    header = JSON.parse(buf.subarray(0, nl).toString('utf8'));
  } catch (err) {
    throw new RoundtripError(`${file}: expected a FID statistics file (JSON header line), could not parse it (${(err as Error).message})`);
  }
  if (header.magic !== STATS_MAGIC) throw invalid(`${file}: header.magic`, JSON.stringify(STATS_MAGIC), header.magic);
  if (header.version !== STATS_VERSION) throw invalid(`${file}: header.version`, String(STATS_VERSION), header.version);
  const dim = expectInteger(`${file}: header.dim`, header.dim, { min: 1 });
  const count = expectInteger(`${file}: header.count`, header.count, { min: 0 });
  const hasMu32 = header.has_mu32 === true;
  const nFloats = dim + dim * dim + (hasMu32 ? dim : 0);
  const body = buf.subarray(nl + 1);
  if (body.length !== nFloats * 8) throw invalid(`${file}: data`, `${nFloats * 8} bytes for dim ${dim}`, `${body.length} bytes`);
  const all = new Float64Array(nFloats);
  for (let i = 0; i < nFloats; i++) all[i] = body.readDoubleLE(i * 8);
  const mu = all.slice(0, dim);
  const sigma = all.slice(dim, dim + dim * dim);
  const mu32 = hasMu32 ? Float32Array.from(all.subarray(dim + dim * dim)) : undefined;
  const meta = header.meta && typeof header.meta === 'object' ? (header.meta as Record<string, unknown>) : {};
  return { dim, count, mu, mu32, sigma, meta };
}
