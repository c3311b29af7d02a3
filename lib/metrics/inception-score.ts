/**
 * Inception Score exactly as torch-fidelity (`isc_features_to_metric`, unchanged 0.3 → 0.4):
 * logits in float64; optional row shuffle by a given permutation (torch-fidelity uses
 * `np.random.RandomState(2020).permutation(N)`, pass it in); split i covers rows
 * [i·N/splits, (i+1)·N/splits) (integer division); per split p = softmax, q = mean p,
 * score = exp(mean_rows Σ_c p·(log_softmax − log q)); result = mean and population std.
 */
import { expectInteger, invalid } from '../errors';

export interface InceptionScoreOptions {
  /** Number of splits (default 10). */
  splits?: number;
  /** Row order to use (a permutation of 0..N-1); omit for no shuffling. */
  permutation?: ArrayLike<number>;
}

export interface InceptionScoreResult {
  mean: number;
  /** Population standard deviation (ddof 0) of the split scores. */
  std: number;
  perSplit: number[];
}

/** Inception Score from N×C logits (row-major; float32 or float64). */
export function inceptionScore(logits: Float32Array | Float64Array, n: number, c: number, opts: InceptionScoreOptions = {}): InceptionScoreResult {
  if (!(logits instanceof Float32Array || logits instanceof Float64Array)) throw invalid('logits', 'a Float32Array or Float64Array', logits);
  expectInteger('n', n, { min: 1 });
  expectInteger('c', c, { min: 2 });
  if (logits.length !== n * c) throw invalid('logits', `n × c = ${n * c} values`, logits);
  const splits = expectInteger('splits', opts.splits ?? 10, { min: 1, max: n });
  let order: Int32Array;
  if (opts.permutation !== undefined) {
    const perm = opts.permutation;
    if (perm.length !== n) throw invalid('permutation', `a permutation of 0..${n - 1} (length ${n})`, perm);
    const seen = new Uint8Array(n);
    order = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const v = perm[i];
      if (!Number.isInteger(v) || v < 0 || v >= n || seen[v]) throw invalid(`permutation[${i}]`, `a distinct integer in [0, ${n - 1}]`, v);
      seen[v] = 1;
      order[i] = v;
    }
  } else {
    order = Int32Array.from({ length: n }, (_, i) => i);
  }
  // per-row softmax and log-softmax in float64 (torch.softmax / log_softmax on float64)
  const p = new Float64Array(n * c);
  const logP = new Float64Array(n * c);
  for (let r = 0; r < n; r++) {
    const src = order[r] * c;
    const dst = r * c;
    let max = -Infinity;
    for (let k = 0; k < c; k++) {
      const x = logits[src + k];
      if (!Number.isFinite(x)) throw invalid(`logits[${order[r]}][${k}]`, 'a finite value', x);
      if (x > max) max = x;
    }
    let sum = 0;
    for (let k = 0; k < c; k++) sum += Math.exp(logits[src + k] - max);
    const logSum = Math.log(sum);
    for (let k = 0; k < c; k++) {
      const lp = logits[src + k] - max - logSum;
      logP[dst + k] = lp;
      p[dst + k] = Math.exp(lp);
    }
  }
  const perSplit: number[] = [];
  const q = new Float64Array(c);
  for (let s = 0; s < splits; s++) {
    const lo = Math.floor((s * n) / splits);
    const hi = Math.floor(((s + 1) * n) / splits);
    q.fill(0);
    for (let r = lo; r < hi; r++) for (let k = 0; k < c; k++) q[k] += p[r * c + k];
    for (let k = 0; k < c; k++) q[k] = Math.log(q[k] / (hi - lo));
    let klSum = 0;
    for (let r = lo; r < hi; r++) {
      let kl = 0;
      for (let k = 0; k < c; k++) kl += p[r * c + k] * (logP[r * c + k] - q[k]);
      klSum += kl;
    }
    perSplit.push(Math.exp(klSum / (hi - lo)));
  }
  const mean = perSplit.reduce((a, b) => a + b, 0) / splits;
  const variance = perSplit.reduce((a, b) => a + (b - mean) * (b - mean), 0) / splits;
  return { mean, std: Math.sqrt(variance), perSplit };
}
