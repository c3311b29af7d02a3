/**
 * numpy's legacy `np.random.RandomState(seed)` Mersenne Twister, as far as torch-fidelity's
 * Inception Score shuffle needs it: `RandomState(2020).permutation(N)`.
 *
 * - Seeding an int: `mt19937_seed` = Matsumoto–Nishimura `init_genrand` (numpy `_legacy_seeding`).
 * - `permutation(N)` = `shuffle(arange(N))`; the legacy 1-d shuffle is Fisher–Yates from the end:
 *   for i = N−1 … 1, j = random_interval(i), swap x[i], x[j].
 * - `random_interval(max)`: mask = smallest 2^k − 1 ≥ max; draw 32-bit words (64-bit when
 *   max > 2^32 − 1, not needed here) ANDed with the mask until the value is ≤ max.
 */
import { expectInteger } from '../../errors';

const N = 624;
const M = 397;
const MATRIX_A = 0x9908b0df;
const UPPER_MASK = 0x80000000;
const LOWER_MASK = 0x7fffffff;

export class MT19937 {
  private readonly key = new Uint32Array(N);
  private pos = N;

  /** Seeds like numpy's `RandomState(seed)` for an integer seed in [0, 2^32 − 1]. */
  constructor(seed: number) {
    expectInteger('seed', seed, { min: 0, max: 0xffffffff });
    let s = seed >>> 0;
    for (let i = 0; i < N; i++) {
      this.key[i] = s;
      // 1812433253 · (s ^ (s >>> 30)) + i + 1, mod 2^32
      s = (Math.imul(1812433253, (s ^ (s >>> 30)) >>> 0) + i + 1) >>> 0;
    }
    this.pos = N;
  }

  /** Regenerates the 624-word state block (`mt19937_gen`). */
  private generate(): void {
    const key = this.key;
    let i = 0;
    let y: number;
    for (; i < N - M; i++) {
      y = (key[i] & UPPER_MASK) | (key[i + 1] & LOWER_MASK);
      key[i] = key[i + M] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
    }
    for (; i < N - 1; i++) {
      y = (key[i] & UPPER_MASK) | (key[i + 1] & LOWER_MASK);
      key[i] = key[i + (M - N)] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
    }
    y = (key[N - 1] & UPPER_MASK) | (key[0] & LOWER_MASK);
    key[N - 1] = key[M - 1] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
    this.pos = 0;
  }

  /** Next tempered 32-bit output (`mt19937_next32`), as an unsigned number. */
  nextUint32(): number {
    if (this.pos === N) this.generate();
    let y = this.key[this.pos++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** numpy's legacy `random_interval(max)`: uniform integer in [0, max] by masked rejection. */
  randomInterval(max: number): number {
    if (max === 0) return 0;
    // numpy switches to 64-bit draws above 2^32 − 1; index arrays here never get that long
    expectInteger('max', max, { min: 0, max: 0xffffffff });
    let mask = max;
    mask |= mask >>> 1;
    mask |= mask >>> 2;
    mask |= mask >>> 4;
    mask |= mask >>> 8;
    mask |= mask >>> 16;
    mask >>>= 0;
    for (;;) {
      const value = (this.nextUint32() & mask) >>> 0;
      if (value <= max) return value;
    }
  }
}

/**
 * `np.random.RandomState(seed).permutation(n)` (default seed 2020: torch-fidelity's Inception
 * Score shuffle). Returns the permuted indices 0..n−1.
 */
export function numpyPermutation(n: number, seed = 2020): Int32Array {
  expectInteger('n', n, { min: 0, max: 2 ** 31 - 1 });
  const rng = new MT19937(seed);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = i;
  for (let i = n - 1; i >= 1; i--) {
    const j = rng.randomInterval(i);
    const t = out[i];
    out[i] = out[j];
    out[j] = t;
  }
  return out;
}
