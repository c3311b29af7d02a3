/**
 * Evaluation under `roundtrip launch` / torchrun: the per-item work (Inception features, CLIP/DINO image
 * embeddings, CLIP-text/SBERT text embeddings, WMD) is split by rank and gathered back, then rank 0 computes
 * the corpus numbers and writes the output — the same output as one process.
 *
 * The split is by whole batches: batch k of the single-process batching (items k·B … k·B + B − 1) goes to rank
 * k mod W, so every batch a model sees is the batch one process would give it (same padding, same kernels:
 * identical numbers, given the same threads per process). Rows are gathered with one sum all-reduce per table
 * (each rank fills its own rows, zeros elsewhere: x + 0 is exact).
 */
import { allReduce, joinFromEnvironment, rank as distRank, readDistributedEnv, worldSize as distWorld } from '../../runtime/distributed';
import { Tensor } from '../../runtime/tensor';

/** How an evaluation shares its per-item work among the ranks of a process group. */
export interface EvalSplit {
  rank: number;
  worldSize: number;
  /** Sums `data` over the ranks, in place. */
  sum(data: Float32Array | Float64Array): Promise<void>;
}

/** The group's split when this process is one of several (joins from the environment); otherwise undefined. */
export async function evalSplitFromEnvironment(): Promise<EvalSplit | undefined> {
  const env = readDistributedEnv();
  if (!env || env.worldSize < 2) return undefined;
  await joinFromEnvironment();
  return {
    rank: distRank(),
    worldSize: distWorld(),
    sum: async (data) => {
      const t = Tensor.fromTypedArray(data, [data.length], data instanceof Float64Array ? 'float64' : 'float32');
      try {
        await allReduce(t, 'sum');
        data.set(t.toTypedArray() as Float32Array | Float64Array);
      } finally {
        t.dispose();
      }
    },
  };
}

/** Whether this process writes the output (rank 0, or no split). */
export function isMainRank(split: EvalSplit | undefined): boolean {
  return !split || split.rank === 0;
}

/** Indices of the `n` items this rank handles: whole batches of `batchSize`, batch k on rank k mod W. */
export function ownedItems(n: number, batchSize: number, split: EvalSplit | undefined): number[] {
  const out: number[] = [];
  for (let start = 0, k = 0; start < n; start += batchSize, k++) {
    if (split && k % split.worldSize !== split.rank) continue;
    for (let i = start; i < Math.min(n, start + batchSize); i++) out.push(i);
  }
  return out;
}

/**
 * Gathers the rows of an [n, D] table: `local[j]` is row `owned[j]` (D may be unknown where a rank owns no
 * row: the ranks agree on it first). Returns all n rows on every rank.
 */
export async function gatherRows(n: number, owned: readonly number[], local: readonly Float32Array[], split: EvalSplit | undefined): Promise<Float32Array[]> {
  if (!split) return [...local];
  const dims = new Float64Array(split.worldSize);
  dims[split.rank] = local.length ? local[0].length : 0;
  await split.sum(dims);
  const dim = Math.max(...dims);
  const table = new Float32Array(n * dim);
  owned.forEach((i, j) => table.set(local[j], i * dim));
  await split.sum(table);
  return Array.from({ length: n }, (_, i) => table.subarray(i * dim, (i + 1) * dim));
}

/** Gathers per-item numbers: `local[j]` is item `owned[j]`'s value. */
export async function gatherValues(n: number, owned: readonly number[], local: readonly number[], split: EvalSplit | undefined): Promise<number[]> {
  if (!split) return [...local];
  const table = new Float64Array(n);
  owned.forEach((i, j) => (table[i] = local[j]));
  await split.sum(table);
  return Array.from(table);
}
