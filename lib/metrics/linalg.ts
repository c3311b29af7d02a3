/**
 * Dense symmetric linear algebra in float64 for the FID trace term, on row-major
 * Float64Array n×n matrices: Cholesky, Householder tridiagonalisation (symmetric, lower
 * triangle), implicit-shift QL (JAMA `tql2`) with optional eigenvectors.
 */

/** Lower Cholesky factor of a symmetric matrix, or null if it is not numerically positive definite. */
export function cholesky(a: Float64Array, n: number): Float64Array | null {
  const l = new Float64Array(n * n);
  let maxDiag = 0;
  for (let i = 0; i < n; i++) maxDiag = Math.max(maxDiag, Math.abs(a[i * n + i]));
  // rank-deficient / nearly singular matrices go to the eigen route, which handles them exactly
  const floor = maxDiag * n * 1e-13;
  for (let j = 0; j < n; j++) {
    const rowJ = j * n;
    let s = a[rowJ + j];
    for (let k = 0; k < j; k++) s -= l[rowJ + k] * l[rowJ + k];
    if (!(s > floor)) return null;
    const ljj = Math.sqrt(s);
    l[rowJ + j] = ljj;
    for (let i = j + 1; i < n; i++) {
      const rowI = i * n;
      let t = a[rowI + j];
      for (let k = 0; k < j; k++) t -= l[rowI + k] * l[rowJ + k];
      l[rowI + j] = t / ljj;
    }
  }
  return l;
}

/** Tiles for the blocked dot-product loops: 32 rows × 512 columns of float64 is 128 KiB. */
const ROW_TILE = 32;
const COL_TILE = 512;

/** Σ_{k∈[lo,hi)} x[xo+k]·y[yo+k] with four accumulators. */
function dot(x: Float64Array, xo: number, y: Float64Array, yo: number, lo: number, hi: number): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  let k = lo;
  for (; k + 3 < hi; k += 4) {
    s0 += x[xo + k] * y[yo + k];
    s1 += x[xo + k + 1] * y[yo + k + 1];
    s2 += x[xo + k + 2] * y[yo + k + 2];
    s3 += x[xo + k + 3] * y[yo + k + 3];
  }
  for (; k < hi; k++) s0 += x[xo + k] * y[yo + k];
  return s0 + s1 + (s2 + s3);
}

/** The four dot products of rows x0, x1 with rows y0, y1 over [lo, hi), into out[0..3] (x0y0, x0y1, x1y0, x1y1). */
function dot2x2(x: Float64Array, x0: number, x1: number, y: Float64Array, y0: number, y1: number, lo: number, hi: number, out: Float64Array): void {
  let s00 = 0;
  let s01 = 0;
  let s10 = 0;
  let s11 = 0;
  for (let k = lo; k < hi; k++) {
    const a = x[x0 + k];
    const b = x[x1 + k];
    const c = y[y0 + k];
    const e = y[y1 + k];
    s00 += a * c;
    s01 += a * e;
    s10 += b * c;
    s11 += b * e;
  }
  out[0] = s00;
  out[1] = s01;
  out[2] = s10;
  out[3] = s11;
}

/**
 * Lᵀ·B·L for lower-triangular L and symmetric B (result symmetric, full storage). Written as
 * contiguous dot products over Lᵀ's rows, in cache-sized tiles and 2×2 register blocks:
 * (B·L)ᵀ[j][i] = Σ_{k≥j} B[i][k]·Lᵀ[j][k], then M[i][j] = Σ_{k≥i} Lᵀ[i][k]·(B·L)ᵀ[j][k] for j ≤ i.
 * Lᵀ is upper triangular, so a 2-row block of it can start both rows at the first row's
 * diagonal (the second row is zero there).
 */
export function congruenceLower(l: Float64Array, b: Float64Array, n: number): Float64Array {
  const lt = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) lt[j * n + i] = l[i * n + j];
  const out = new Float64Array(4);
  const ct = new Float64Array(n * n); // (B·L)ᵀ
  for (let jb = 0; jb < n; jb += ROW_TILE) {
    const jEnd = Math.min(jb + ROW_TILE, n);
    for (let ib = 0; ib < n; ib += ROW_TILE) {
      const iEnd = Math.min(ib + ROW_TILE, n);
      for (let kb = jb; kb < n; kb += COL_TILE) {
        const kEnd = Math.min(kb + COL_TILE, n);
        for (let j = jb; j < jEnd; j += 2) {
          const lo = Math.max(j, kb);
          if (lo >= kEnd) continue;
          const rowJ = j * n;
          if (j + 1 < jEnd) {
            const rowJ1 = rowJ + n;
            let i = ib;
            for (; i + 1 < iEnd; i += 2) {
              dot2x2(lt, rowJ, rowJ1, b, i * n, (i + 1) * n, lo, kEnd, out);
              ct[rowJ + i] += out[0];
              ct[rowJ + i + 1] += out[1];
              ct[rowJ1 + i] += out[2];
              ct[rowJ1 + i + 1] += out[3];
            }
            if (i < iEnd) {
              ct[rowJ + i] += dot(b, i * n, lt, rowJ, lo, kEnd);
              ct[rowJ1 + i] += dot(b, i * n, lt, rowJ1, lo, kEnd);
            }
          } else {
            for (let i = ib; i < iEnd; i++) ct[rowJ + i] += dot(b, i * n, lt, rowJ, lo, kEnd);
          }
        }
      }
    }
  }
  const m = new Float64Array(n * n);
  for (let ib = 0; ib < n; ib += ROW_TILE) {
    const iEnd = Math.min(ib + ROW_TILE, n);
    for (let jb = 0; jb <= ib; jb += ROW_TILE) {
      const jEnd = Math.min(jb + ROW_TILE, n);
      for (let kb = ib; kb < n; kb += COL_TILE) {
        const kEnd = Math.min(kb + COL_TILE, n);
        for (let i = ib; i < iEnd; i += 2) {
          const lo = Math.max(i, kb);
          if (lo >= kEnd) continue;
          const rowI = i * n;
          if (i + 1 < iEnd) {
            // rows i and i+1 need columns j ≤ i+1; slot (i, i+1) lies above the diagonal and is
            // rebuilt by the mirror loop below
            const rowI1 = rowI + n;
            const jMax = Math.min(jEnd, i + 2);
            let j = jb;
            for (; j + 1 < jMax; j += 2) {
              dot2x2(lt, rowI, rowI1, ct, j * n, (j + 1) * n, lo, kEnd, out);
              m[rowI + j] += out[0];
              m[rowI + j + 1] += out[1];
              m[rowI1 + j] += out[2];
              m[rowI1 + j + 1] += out[3];
            }
            if (j < jMax) {
              m[rowI + j] += dot(lt, rowI, ct, j * n, lo, kEnd);
              m[rowI1 + j] += dot(lt, rowI1, ct, j * n, lo, kEnd);
            }
          } else {
            const jMax = Math.min(jEnd, i + 1);
            for (let j = jb; j < jMax; j++) m[rowI + j] += dot(lt, rowI, ct, j * n, lo, kEnd);
          }
        }
      }
    }
  }
  for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) m[j * n + i] = m[i * n + j];
  return m;
}

/** Dense product of two n×n row-major matrices. */
export function matmul(a: Float64Array, b: Float64Array, n: number): Float64Array {
  const c = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const rowA = i * n;
    for (let k = 0; k < n; k++) {
      const aik = a[rowA + k];
      if (aik === 0) continue;
      const rowB = k * n;
      for (let j = 0; j < n; j++) c[rowA + j] += aik * b[rowB + j];
    }
  }
  return c;
}

/** A ← A − v·wᵀ − w·vᵀ on the lower triangle of the block [start, n). */
function rank2Update(a: Float64Array, n: number, start: number, v: Float64Array, w: Float64Array): void {
  for (let i = start; i < n; i++) {
    const row = i * n;
    const vi = v[i];
    const wi = w[i];
    for (let j = start; j <= i; j++) a[row + j] -= vi * w[j] + wi * v[j];
  }
}

/**
 * Householder reduction of a symmetric matrix (only its lower triangle is read; `a` is
 * overwritten) to tridiagonal form: diagonal d, off-diagonal e (e[i] couples i and i+1).
 * With `withQt`, also returns Qᵀ (row-major) such that A = Q·T·Qᵀ.
 *
 * Each step's rank-2 update of the trailing block is deferred and fused with the next step's
 * matrix–vector product, so the block is streamed through memory once per step, not twice.
 */
export function tridiagonalize(a: Float64Array, n: number, withQt: boolean): { d: Float64Array; e: Float64Array; qt: Float64Array | null } {
  const d = new Float64Array(n);
  const e = new Float64Array(n);
  const v = new Float64Array(n);
  const p = new Float64Array(n);
  const vPrev = new Float64Array(n);
  const wPrev = new Float64Array(n);
  let pending = false; // an update A −= vPrev·wPrevᵀ + wPrev·vPrevᵀ on the block [k, n) is owed
  let qt: Float64Array | null = null;
  if (withQt) {
    qt = new Float64Array(n * n);
    for (let i = 0; i < n; i++) qt[i * n + i] = 1;
  }
  for (let k = 0; k < n - 2; k++) {
    const start = k + 1;
    if (pending) {
      // bring column k (rows ≥ k) up to date first: it defines this step's reflector
      const vk = vPrev[k];
      const wk = wPrev[k];
      for (let i = k; i < n; i++) a[i * n + k] -= vPrev[i] * wk + wPrev[i] * vk;
    }
    d[k] = a[k * n + k];
    // x = A[k+1.., k] (column k below the diagonal, read from the lower triangle)
    let scale = 0;
    for (let i = start; i < n; i++) scale = Math.max(scale, Math.abs(a[i * n + k]));
    let norm2 = 0;
    if (scale > 0) {
      for (let i = start; i < n; i++) {
        v[i] = a[i * n + k] / scale;
        norm2 += v[i] * v[i];
      }
    }
    const alpha = (v[start] > 0 ? -1 : 1) * Math.sqrt(norm2);
    const vnorm2 = scale > 0 ? norm2 - 2 * alpha * v[start] + alpha * alpha : 0; // ‖x − αe₁‖²
    if (vnorm2 === 0) {
      // column already reduced: no reflector; settle the owed update on the rest of the block
      e[k] = scale > 0 ? a[start * n + k] : 0;
      if (pending) rank2Update(a, n, start, vPrev, wPrev);
      pending = false;
      continue;
    }
    e[k] = alpha * scale;
    v[start] -= alpha;
    const beta = 2 / vnorm2;
    // fused pass: apply the owed update, and p = β·A·v on the block [start, n) (lower triangle)
    for (let i = start; i < n; i++) p[i] = 0;
    for (let i = start; i < n; i++) {
      const row = i * n;
      const vi = v[i];
      let acc = 0;
      if (pending) {
        const pv = vPrev[i];
        const pw = wPrev[i];
        for (let j = start; j < i; j++) {
          const aij = a[row + j] - (pv * wPrev[j] + pw * vPrev[j]);
          a[row + j] = aij;
          acc += aij * v[j];
          p[j] += aij * vi;
        }
        const aii = a[row + i] - (pv * wPrev[i] + pw * vPrev[i]);
        a[row + i] = aii;
        p[i] += acc + aii * vi;
      } else {
        for (let j = start; j < i; j++) {
          const aij = a[row + j];
          acc += aij * v[j];
          p[j] += aij * vi;
        }
        p[i] += acc + a[row + i] * vi;
      }
    }
    let vp = 0;
    for (let i = start; i < n; i++) {
      p[i] *= beta;
      vp += v[i] * p[i];
    }
    const kk = (beta * vp) / 2;
    // w = p − K·v; the update A ← A − v·wᵀ − w·vᵀ is owed to the next step
    for (let i = start; i < n; i++) {
      wPrev[i] = p[i] - kk * v[i];
      vPrev[i] = v[i];
    }
    pending = true;
    if (qt) {
      // Qᵀ ← H_k·Qᵀ (rows start.. of Qᵀ change)
      const tmp = new Float64Array(n);
      for (let i = start; i < n; i++) {
        const vi = v[i];
        if (vi === 0) continue;
        const row = i * n;
        for (let j = 0; j < n; j++) tmp[j] += vi * qt[row + j];
      }
      for (let i = start; i < n; i++) {
        const f = beta * v[i];
        if (f === 0) continue;
        const row = i * n;
        for (let j = 0; j < n; j++) qt[row + j] -= f * tmp[j];
      }
    }
  }
  if (pending) rank2Update(a, n, n - 2, vPrev, wPrev);
  if (n >= 2) {
    d[n - 2] = a[(n - 2) * n + n - 2];
    e[n - 2] = a[(n - 1) * n + n - 2];
  }
  if (n >= 1) d[n - 1] = a[(n - 1) * n + n - 1];
  e[n - 1] = 0;
  return { d, e, qt };
}

/**
 * Eigenvalues (in d, unsorted) of the symmetric tridiagonal (d, e) by implicit-shift QL
 * (JAMA `tql2`). With `zt` (rows = basis vectors), the rotations are applied to its rows,
 * so on return row i of zt is the eigenvector of d[i].
 */
export function tridiagonalQL(d: Float64Array, e: Float64Array, n: number, zt: Float64Array | null): void {
  const eps = Math.pow(2, -52);
  let f = 0;
  let tst1 = 0;
  for (let l = 0; l < n; l++) {
    tst1 = Math.max(tst1, Math.abs(d[l]) + Math.abs(e[l]));
    let m = l;
    while (m < n) {
      if (Math.abs(e[m]) <= eps * tst1) break;
      m++;
    }
    if (m > l) {
      let iter = 0;
      do {
        if (++iter > 60) throw new Error('tridiagonal QL did not converge');
        let g = d[l];
        let p = (d[l + 1] - g) / (2 * e[l]);
        let r = Math.hypot(p, 1);
        if (p < 0) r = -r;
        d[l] = e[l] / (p + r);
        d[l + 1] = e[l] * (p + r);
        const dl1 = d[l + 1];
        let h = g - d[l];
        for (let i = l + 2; i < n; i++) d[i] -= h;
        f += h;
        p = d[m];
        let c = 1;
        let c2 = c;
        let c3 = c;
        const el1 = e[l + 1];
        let s = 0;
        let s2 = 0;
        for (let i = m - 1; i >= l; i--) {
          c3 = c2;
          c2 = c;
          s2 = s;
          g = c * e[i];
          h = c * p;
          r = Math.hypot(p, e[i]);
          e[i + 1] = s * r;
          s = e[i] / r;
          c = p / r;
          p = c * d[i] - s * g;
          d[i + 1] = h + s * (c * g + s * d[i]);
          if (zt) {
            const r0 = i * n;
            const r1 = (i + 1) * n;
            for (let k = 0; k < n; k++) {
              const hk = zt[r1 + k];
              zt[r1 + k] = s * zt[r0 + k] + c * hk;
              zt[r0 + k] = c * zt[r0 + k] - s * hk;
            }
          }
        }
        p = (-s * s2 * c3 * el1 * e[l]) / dl1;
        e[l] = s * p;
        d[l] = c * p;
      } while (Math.abs(e[l]) > eps * tst1);
    }
    d[l] += f;
    e[l] = 0;
  }
}

/** Eigenvalues of a symmetric matrix (lower triangle read; the input is not modified). */
export function symmetricEigenvalues(a: Float64Array, n: number): Float64Array {
  const { d, e } = tridiagonalize(Float64Array.from(a), n, false);
  tridiagonalQL(d, e, n, null);
  return d;
}

/** Eigen-decomposition of a symmetric matrix: values and vectors (row i of `vectorsT` ↔ values[i]). */
export function symmetricEigen(a: Float64Array, n: number): { values: Float64Array; vectorsT: Float64Array } {
  const { d, e, qt } = tridiagonalize(Float64Array.from(a), n, true);
  tridiagonalQL(d, e, n, qt);
  return { values: d, vectorsT: qt! };
}
