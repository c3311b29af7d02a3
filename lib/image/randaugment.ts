/**
 * RandAugment as BLIP's own training applies it (salesforce/BLIP `transform/randaugment.py`,
 * `RandomAugment(2, 5, isPIL=True, augs=[...])`), on uint8 RGB images:
 *
 * - N operations are drawn uniformly with replacement from the list; each is applied with
 *   probability 0.5 at magnitude M of MAX_LEVEL 10;
 * - enhance ops (Brightness, Sharpness) use factor `M/10 · 1.8 + 0.1` (M = 5 gives 1.0: identity);
 * - ShearX/ShearY `M/10 · 0.3`, TranslateX/Y `M/10 · 10` pixels, Rotate `M/10 · 30` degrees, each with
 *   a random sign; geometric ops fill with grey (128, 128, 128) and interpolate bilinearly (cv2.warpAffine);
 * - AutoContrast and Equalize per channel, with the reference's integer arithmetic.
 *
 * The draws come from the project's seeded Rng (not numpy's), so the distribution is BLIP's and the
 * exact draws are not. cv2 quantises sample positions to 1/32 pixel; this file samples at full precision.
 */
import { expectInteger, expectOneOf, invalid } from '../errors';
import { Rng } from './random';
import { RgbImage, assertRgbImage } from './types';

export const RANDAUGMENT_OPS = ['Identity', 'AutoContrast', 'Equalize', 'Rotate', 'Solarize', 'Color', 'Posterize', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'TranslateX', 'TranslateY', 'ShearY'] as const;
export type RandAugmentOp = (typeof RANDAUGMENT_OPS)[number];

/** The operation list BLIP's `transform_train` passes (captioning and retrieval). */
export const BLIP_RANDAUGMENT_OPS: readonly RandAugmentOp[] = ['Identity', 'AutoContrast', 'Brightness', 'Sharpness', 'Equalize', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate'];

export interface RandAugmentConfig {
  /** Operations per image. */
  n: number;
  /** Magnitude 0..10. */
  m: number;
  ops: RandAugmentOp[];
}

const MAX_LEVEL = 10;
const FILL = 128;
/** TranslateX/Y at full magnitude, in pixels (the reference's translate_const). */
const TRANSLATE_CONST = 10;

export function validateRandAugment(name: string, value: unknown): RandAugmentConfig {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw invalid(name, 'an object {n, m, ops}', value);
  const v = value as Record<string, unknown>;
  const known = new Set(['n', 'm', 'ops']);
  for (const k of Object.keys(v)) if (!known.has(k)) throw invalid(`${name} key "${k}"`, 'one of n, m, ops', k);
  const n = expectInteger(`${name}.n`, v.n, { min: 0, max: 16 });
  const m = expectInteger(`${name}.m`, v.m, { min: 0, max: MAX_LEVEL });
  const rawOps = v.ops === undefined ? BLIP_RANDAUGMENT_OPS : v.ops;
  if (!Array.isArray(rawOps) || rawOps.length === 0) throw invalid(`${name}.ops`, `a non-empty array of ${RANDAUGMENT_OPS.join(', ')}`, rawOps);
  const ops = rawOps.map((o, i) => expectOneOf(`${name}.ops[${i}]`, o, RANDAUGMENT_OPS));
  return { n, m, ops };
}

/** BLIP's setting: RandomAugment(2, 5) over its ten operations. */
export function blipRandAugment(): RandAugmentConfig {
  return { n: 2, m: 5, ops: [...BLIP_RANDAUGMENT_OPS] };
}

function lut(image: RgbImage, tables: Uint8Array[]): RgbImage {
  const out = new Uint8Array(image.data.length);
  const src = image.data;
  for (let i = 0; i < src.length; i += 3) {
    out[i] = tables[0][src[i]];
    out[i + 1] = tables[1][src[i + 1]];
    out[i + 2] = tables[2][src[i + 2]];
  }
  return { data: out, width: image.width, height: image.height };
}

function histogram(image: RgbImage, ch: number): Float64Array {
  const h = new Float64Array(256);
  for (let i = ch; i < image.data.length; i += 3) h[image.data[i]]++;
  return h;
}

/** autocontrast_func (cutoff 0): each channel stretched linearly from [min, max] to [0, 255]. */
export function autoContrast(image: RgbImage): RgbImage {
  const tables = [0, 1, 2].map((ch) => {
    const h = histogram(image, ch);
    let low = 0;
    while (low < 255 && h[low] === 0) low++;
    let high = 255;
    while (high > 0 && h[high] === 0) high--;
    const table = new Uint8Array(256);
    if (high <= low) {
      for (let v = 0; v < 256; v++) table[v] = v;
      return table;
    }
    const scale = 255 / (high - low);
    const offset = -low * scale;
    for (let v = 0; v < 256; v++) table[v] = Math.min(255, Math.max(0, Math.trunc(v * scale + offset)));
    return table;
  });
  return lut(image, tables);
}

/** equalize_func: per channel, cumulative histogram in steps of (sum of all but the last non-zero bin) // 255. */
export function equalize(image: RgbImage): RgbImage {
  const tables = [0, 1, 2].map((ch) => {
    const h = histogram(image, ch);
    const nonZero: number[] = [];
    for (let v = 0; v < 256; v++) if (h[v] !== 0) nonZero.push(h[v]);
    let sum = 0;
    for (let i = 0; i < nonZero.length - 1; i++) sum += nonZero[i];
    const step = Math.floor(sum / 255);
    const table = new Uint8Array(256);
    if (step === 0) {
      for (let v = 0; v < 256; v++) table[v] = v;
      return table;
    }
    let cum = Math.floor(step / 2);
    for (let v = 0; v < 256; v++) {
      table[v] = Math.min(255, Math.floor(cum / step));
      cum += h[v];
    }
    return table;
  });
  return lut(image, tables);
}

/** brightness_func: every level × factor, clipped, truncated. */
export function brightness(image: RgbImage, factor: number): RgbImage {
  const table = new Uint8Array(256);
  for (let v = 0; v < 256; v++) table[v] = Math.min(255, Math.max(0, Math.trunc(Math.fround(v * factor))));
  return lut(image, [table, table, table]);
}

/** sharpness_func: blend with the 3×3 smoothing [[1,1,1],[1,5,1],[1,1,1]]/13 inside a one-pixel border. */
export function sharpness(image: RgbImage, factor: number): RgbImage {
  if (factor === 1) return { data: image.data.slice(), width: image.width, height: image.height };
  const { width: W, height: H, data } = image;
  const out = data.slice();
  for (let y = 1; y < H - 1; y++) {
    for (let x = 1; x < W - 1; x++) {
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let dy = -1; dy <= 1; dy++) for (let dx = -1; dx <= 1; dx++) s += data[((y + dy) * W + x + dx) * 3 + c] * (dx === 0 && dy === 0 ? 5 : 1);
        // cv2.filter2D to uint8 rounds and saturates
        const degenerate = Math.min(255, Math.max(0, Math.round(s / 13)));
        const i = (y * W + x) * 3 + c;
        const v = degenerate + factor * (data[i] - degenerate);
        out[i] = Math.min(255, Math.max(0, Math.trunc(v)));
      }
    }
  }
  return { data: out, width: W, height: H };
}

/**
 * cv2.warpAffine(img, M, (W, H), borderValue=fill): dst(x, y) = src(M⁻¹ · (x, y)), bilinear, pixels
 * sampled outside the image read as `fill`.
 */
export function warpAffine(image: RgbImage, M: [number, number, number, number, number, number], fill = FILL): RgbImage {
  const { width: W, height: H, data } = image;
  const [a, b, c, d, e, f] = M;
  const det = a * e - b * d;
  if (det === 0) throw invalid('affine matrix', 'an invertible 2×3 matrix', M);
  // inverse of [[a b c] [d e f] [0 0 1]]
  const ia = e / det;
  const ib = -b / det;
  const id = -d / det;
  const ie = a / det;
  const ic = -(ia * c + ib * f);
  const iff = -(id * c + ie * f);
  const out = new Uint8Array(data.length);
  const at = (x: number, y: number, ch: number) => (x < 0 || y < 0 || x >= W || y >= H ? fill : data[(y * W + x) * 3 + ch]);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const sx = ia * x + ib * y + ic;
      const sy = id * x + ie * y + iff;
      const x0 = Math.floor(sx);
      const y0 = Math.floor(sy);
      const fx = sx - x0;
      const fy = sy - y0;
      for (let ch = 0; ch < 3; ch++) {
        const v = (1 - fy) * ((1 - fx) * at(x0, y0, ch) + fx * at(x0 + 1, y0, ch)) + fy * ((1 - fx) * at(x0, y0 + 1, ch) + fx * at(x0 + 1, y0 + 1, ch));
        out[(y * W + x) * 3 + ch] = Math.min(255, Math.max(0, Math.round(v)));
      }
    }
  }
  return { data: out, width: W, height: H };
}

/** cv2.getRotationMatrix2D((W/2, H/2), degrees, 1): counter-clockwise for positive angles. */
export function rotate(image: RgbImage, degrees: number, fill = FILL): RgbImage {
  const cx = image.width / 2;
  const cy = image.height / 2;
  const r = (degrees * Math.PI) / 180;
  const alpha = Math.cos(r);
  const beta = Math.sin(r);
  return warpAffine(image, [alpha, beta, (1 - alpha) * cx - beta * cy, -beta, alpha, beta * cx + (1 - alpha) * cy], fill);
}

function signed(rng: Rng, level: number): number {
  // the reference: `if np.random.random() > 0.5: level = -level`
  return rng.next() > 0.5 ? -level : level;
}

/** Applies one named operation at magnitude `m`, drawing its sign from `rng` where it has one. */
export function applyRandAugmentOp(image: RgbImage, op: RandAugmentOp, m: number, rng: Rng): RgbImage {
  const enhance = (m / MAX_LEVEL) * 1.8 + 0.1;
  switch (op) {
    case 'Identity':
      return image;
    case 'AutoContrast':
      return autoContrast(image);
    case 'Equalize':
      return equalize(image);
    case 'Brightness':
      return brightness(image, enhance);
    case 'Sharpness':
      return sharpness(image, enhance);
    case 'Rotate':
      return rotate(image, signed(rng, (m / MAX_LEVEL) * 30));
    case 'ShearX':
      return warpAffine(image, [1, signed(rng, (m / MAX_LEVEL) * 0.3), 0, 0, 1, 0]);
    case 'ShearY':
      return warpAffine(image, [1, 0, 0, signed(rng, (m / MAX_LEVEL) * 0.3), 1, 0]);
    case 'TranslateX':
      // translate_x_func negates the offset before building M
      return warpAffine(image, [1, 0, signed(rng, (m / MAX_LEVEL) * TRANSLATE_CONST), 0, 1, 0]);
    case 'TranslateY':
      return warpAffine(image, [1, 0, 0, 0, 1, signed(rng, (m / MAX_LEVEL) * TRANSLATE_CONST)]);
    case 'Solarize': {
      const thresh = Math.trunc((m / MAX_LEVEL) * 256);
      const t = new Uint8Array(256);
      for (let v = 0; v < 256; v++) t[v] = v < thresh ? v : 255 - v;
      return lut(image, [t, t, t]);
    }
    case 'Posterize': {
      const bits = 4 - Math.trunc((m / MAX_LEVEL) * 4);
      const mask = (0xff << (8 - bits)) & 0xff;
      const t = new Uint8Array(256);
      for (let v = 0; v < 256; v++) t[v] = v & mask;
      return lut(image, [t, t, t]);
    }
    case 'Color': {
      // color_func: blend with the greyscale image (ITU-R 601 weights)
      const out = new Uint8Array(image.data.length);
      for (let i = 0; i < image.data.length; i += 3) {
        const g = 0.299 * image.data[i] + 0.587 * image.data[i + 1] + 0.114 * image.data[i + 2];
        for (let c = 0; c < 3; c++) out[i + c] = Math.min(255, Math.max(0, Math.trunc(g + enhance * (image.data[i + c] - g))));
      }
      return { data: out, width: image.width, height: image.height };
    }
    case 'Contrast': {
      let mean = 0;
      for (let i = 0; i < image.data.length; i += 3) mean += 0.299 * image.data[i] + 0.587 * image.data[i + 1] + 0.114 * image.data[i + 2];
      mean /= image.width * image.height;
      const t = new Uint8Array(256);
      for (let v = 0; v < 256; v++) t[v] = Math.min(255, Math.max(0, Math.trunc((v - mean) * enhance + mean)));
      return lut(image, [t, t, t]);
    }
  }
}

/** RandomAugment.__call__: N ops drawn with replacement, each kept with probability 0.5. */
export function randAugment(image: RgbImage, config: RandAugmentConfig, rng: Rng): RgbImage {
  assertRgbImage('image', image);
  const ops = Array.from({ length: config.n }, () => config.ops[rng.int(0, config.ops.length)]);
  let img = image;
  for (const op of ops) {
    if (rng.next() > 0.5) continue;
    img = applyRandAugmentOp(img, op, config.m, rng);
  }
  return img;
}
