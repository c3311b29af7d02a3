/**
 * A small seeded pseudo-random generator for data augmentation (random crops, flips).
 *
 * mulberry32: 32-bit state, full 2^32 period, passes gjrand/PractRand at the sizes augmentation
 * needs, and is a few integer ops per draw. Results are identical on every platform because all
 * arithmetic is 32-bit integer (Math.imul, >>>). It does NOT reproduce torch's generator: crops
 * drawn here follow torchvision's distributions, not its exact draws.
 */
import { expectInteger, expectNumber, invalid } from '../errors';

/** Deterministic generator. Same seed → same sequence. */
export class Rng {
  private state: number;

  /** @param seed any integer; only its low 32 bits are used. */
  constructor(seed: number) {
    expectNumber('seed', seed);
    if (!Number.isInteger(seed)) throw invalid('seed', 'an integer', seed);
    this.state = seed >>> 0;
  }

  /** Next raw 32-bit unsigned integer. */
  nextUint32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** Uniform float in [0, 1) with 32 bits of randomness. */
  next(): number {
    return this.nextUint32() / 4294967296;
  }

  /** Uniform float in [low, high), like torch's `uniform_(low, high)`. */
  uniform(low: number, high: number): number {
    return low + (high - low) * this.next();
  }

  /** Uniform integer in [low, high) (high exclusive, like `torch.randint(low, high)`); unbiased. */
  int(low: number, high: number): number {
    expectInteger('low', low);
    expectInteger('high', high, { min: low + 1 });
    const span = high - low;
    if (span > 4294967296) throw invalid('high - low', 'at most 2^32', span);
    // Rejection sampling removes the modulo bias of `uint32 % span`.
    const limit = 4294967296 - (4294967296 % span);
    let x = this.nextUint32();
    while (x >= limit) x = this.nextUint32();
    return low + (x % span);
  }

  /** True with probability p, like torchvision's `torch.rand(1) < p`. */
  bernoulli(p: number): boolean {
    return this.next() < p;
  }
}

/**
 * Mixes a base seed with an index (splitmix32-style finaliser) so that item i of a dataset gets
 * the same random stream whatever order, batch size or concurrency it is processed with.
 */
export function deriveSeed(seed: number, ...indices: number[]): number {
  let h = seed >>> 0;
  for (const index of indices) {
    h = (h ^ Math.imul((index >>> 0) + 0x9e3779b9, 0x85ebca6b)) >>> 0;
    h = Math.imul(h ^ (h >>> 16), 0x7feb352d);
    h = Math.imul(h ^ (h >>> 15), 0x846ca68b);
    h = (h ^ (h >>> 16)) >>> 0;
  }
  return h;
}
