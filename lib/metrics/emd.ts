/**
 * Exact earth mover's distance (the balanced transportation problem) in float64, by
 * successive shortest augmenting paths on the residual network (Bellman–Ford, since residual
 * arcs carry negative costs). Every augmentation saturates a supply, a demand or a reverse
 * arc, and the flow stays cost-optimal for its value, so the final flow is an optimal
 * transport plan — the same optimum an LP/network-simplex solver (POT's `emd2`) finds.
 */
import { invalid } from '../errors';

/** Residuals below this are treated as zero (masses are O(1); float64 round-off is ~1e-16). */
const MASS_EPS = 1e-14;

export interface EmdResult {
  /** Σ flow · cost. */
  cost: number;
  /** Optimal flow, row-major supplies × demands. */
  flow: Float64Array;
}

/**
 * Solves min Σ f_ij c_ij s.t. Σ_j f_ij = a_i, Σ_i f_ij = b_j, f ≥ 0. `a` and `b` must be
 * non-negative with equal sums (up to 1e-9 relative; the smaller total is transported).
 * `cost` is row-major a.length × b.length, finite.
 */
export function earthMoversDistance(a: ArrayLike<number>, b: ArrayLike<number>, cost: ArrayLike<number>): EmdResult {
  const n1 = a.length;
  const n2 = b.length;
  if (cost.length !== n1 * n2) throw invalid('cost', `${n1}×${n2} = ${n1 * n2} entries`, cost);
  let sumA = 0;
  let sumB = 0;
  for (let i = 0; i < n1; i++) {
    if (!(a[i] >= 0) || !Number.isFinite(a[i])) throw invalid(`a[${i}]`, 'a finite mass >= 0', a[i]);
    sumA += a[i];
  }
  for (let j = 0; j < n2; j++) {
    if (!(b[j] >= 0) || !Number.isFinite(b[j])) throw invalid(`b[${j}]`, 'a finite mass >= 0', b[j]);
    sumB += b[j];
  }
  for (let k = 0; k < cost.length; k++) if (!Number.isFinite(cost[k])) throw invalid(`cost[${k}]`, 'a finite number', cost[k]);
  if (Math.abs(sumA - sumB) > 1e-9 * Math.max(sumA, sumB, 1e-300)) throw invalid('b', `masses summing to ${sumA} like a`, sumB);

  const flow = new Float64Array(n1 * n2);
  const supplyLeft = Float64Array.from(a);
  const demandLeft = Float64Array.from(b);
  // nodes: 0..n1-1 supplies, n1..n1+n2-1 demands, S = n1+n2, T = n1+n2+1
  const S = n1 + n2;
  const T = S + 1;
  const V = T + 1;
  const dist = new Float64Array(V);
  const pred = new Int32Array(V);
  let remaining = Math.min(sumA, sumB);
  const maxIterations = 4 * (n1 + 1) * (n2 + 1) + 16;
  for (let iter = 0; remaining > MASS_EPS && iter < maxIterations; iter++) {
    dist.fill(Infinity);
    pred.fill(-1);
    dist[S] = 0;
    // Bellman–Ford with early exit; at most V-1 rounds
    for (let round = 0; round < V - 1; round++) {
      let changed = false;
      // S → supply i (forward residual)
      for (let i = 0; i < n1; i++) {
        if (supplyLeft[i] > MASS_EPS && dist[S] < dist[i]) {
          dist[i] = dist[S];
          pred[i] = S;
          changed = true;
        }
      }
      for (let i = 0; i < n1; i++) {
        const di = dist[i];
        if (di === Infinity) continue;
        const row = i * n2;
        for (let j = 0; j < n2; j++) {
          const nd = di + cost[row + j];
          if (nd < dist[n1 + j] - 1e-15 * Math.abs(nd)) {
            dist[n1 + j] = nd;
            pred[n1 + j] = i;
            changed = true;
          }
        }
      }
      // reverse arcs demand j → supply i where flow > 0
      for (let j = 0; j < n2; j++) {
        const dj = dist[n1 + j];
        if (dj === Infinity) continue;
        for (let i = 0; i < n1; i++) {
          if (flow[i * n2 + j] > MASS_EPS) {
            const nd = dj - cost[i * n2 + j];
            if (nd < dist[i] - 1e-15 * Math.abs(nd)) {
              dist[i] = nd;
              pred[i] = n1 + j;
              changed = true;
            }
          }
        }
      }
      if (!changed) break;
    }
    // best demand with residual capacity to T
    let bestJ = -1;
    for (let j = 0; j < n2; j++) {
      if (demandLeft[j] > MASS_EPS && dist[n1 + j] < Infinity && (bestJ < 0 || dist[n1 + j] < dist[n1 + bestJ])) bestJ = j;
    }
    if (bestJ < 0) break;
    // bottleneck along the path T ← bestJ ← … ← S
    let delta = demandLeft[bestJ];
    let v = n1 + bestJ;
    let guard = 0;
    while (v !== S) {
      const p = pred[v];
      if (p === S) delta = Math.min(delta, supplyLeft[v]);
      else if (v >= n1) {
        // forward arc p(supply) → v(demand): uncapacitated
      } else delta = Math.min(delta, flow[v * n2 + (p - n1)]); // reverse arc p(demand) → v(supply)
      v = p;
      if (++guard > V) throw new Error('EMD: corrupted predecessor chain');
    }
    v = n1 + bestJ;
    demandLeft[bestJ] -= delta;
    while (v !== S) {
      const p = pred[v];
      if (p === S) supplyLeft[v] -= delta;
      else if (v >= n1) flow[p * n2 + (v - n1)] += delta;
      else flow[v * n2 + (p - n1)] -= delta;
      v = p;
    }
    remaining -= delta;
  }
  let total = 0;
  for (let k = 0; k < flow.length; k++) if (flow[k] !== 0) total += flow[k] * cost[k];
  return { cost: total, flow };
}
