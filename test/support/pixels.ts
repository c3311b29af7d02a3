import { Tensor } from '../../lib/runtime/tensor';

/** Deterministic pseudo-random pixels in [lo, hi), [B, 3, S, S] (a 32-bit LCG; the same numbers on every platform). */
export function pixels(B: number, S: number, seed: number, lo = -1, hi = 1): Tensor {
  const data = new Float32Array(B * 3 * S * S);
  let s = seed >>> 0;
  for (let i = 0; i < data.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    data[i] = lo + ((s >>> 8) / 16777216) * (hi - lo);
  }
  return Tensor.fromTypedArray(data, [B, 3, S, S]);
}
