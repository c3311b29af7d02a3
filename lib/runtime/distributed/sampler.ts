/**
 * torch.utils.data.DistributedSampler's split of an epoch order: the order is padded by repeating its
 * head until its length divides by the world size, then rank r takes positions r, r + W, r + 2W, …
 * Every rank gets the same number of items, and for a batch of b per rank, global micro-batch k
 * (positions k·b·W … (k+1)·b·W − 1 of the padded order) is the one a single process with batch b·W
 * sees: rank r's item j of that micro-batch sits at offset j·W + r in it.
 */
import { expectInteger } from '../../errors';

/** Items per rank: ⌈n / W⌉. */
export function shardLength(n: number, worldSize: number): number {
  return Math.ceil(n / worldSize);
}

/** Rank `rank`'s share of `order` (padded by repetition, strided). */
export function shardOrder(order: ArrayLike<number>, rank: number, worldSize: number): Uint32Array {
  expectInteger('worldSize', worldSize, { min: 1 });
  expectInteger('rank', rank, { min: 0, max: worldSize - 1 });
  const n = order.length;
  const per = shardLength(n, worldSize);
  const out = new Uint32Array(per);
  for (let j = 0; j < per; j++) out[j] = order[(j * worldSize + rank) % n];
  return out;
}
