/**
 * Tensors back to images, PNG encoding, atomic saving and contact sheets.
 *
 * Float → uint8 follows diffusers exactly: for '[-1,1]', `(x / 2 + 0.5).clamp(0, 1)` in float32,
 * then `numpy_to_pil`'s `(images * 255).round().astype("uint8")` (float32 product, NumPy's round
 * half to even). '[0,1]' skips the first affine step. NaN becomes 0.
 */
import sharp from 'sharp';
import { expectInteger, expectOneOf, expectString, invalid } from '../errors';
import { RgbImage, assertRgbImage } from './types';
import { writeFileAtomic } from '../fsutil';

export type PixelRange = '[-1,1]' | '[0,1]' | 'uint8';
export type Layout = 'chw' | 'hwc';

export interface TensorImageOptions {
  /** value range of the input; default '[-1,1]' for floats, 'uint8' for Uint8Array */
  range?: PixelRange;
  /** memory layout; by default inferred from the shape ([3,H,W] → chw, [H,W,3] → hwc) */
  layout?: Layout;
}

const RANGES: readonly PixelRange[] = ['[-1,1]', '[0,1]', 'uint8'];

/** NumPy's round-half-to-even for a non-negative float. */
function roundHalfEvenPositive(x: number): number {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** Maps one value to uint8 with the diffusers arithmetic (float32 throughout). */
function toByte(x: number, range: PixelRange): number {
  const f = Math.fround;
  if (range === 'uint8') {
    if (!(x >= 0)) return 0; // NaN and negatives
    return x >= 255 ? 255 : roundHalfEvenPositive(x);
  }
  let v = range === '[-1,1]' ? f(f(x / 2) + 0.5) : x;
  if (!(v >= 0)) v = 0; // clamp; NaN → 0
  else if (v > 1) v = 1;
  return roundHalfEvenPositive(f(v * 255));
}

function resolveLayout(shape: readonly number[], layout: Layout | undefined): { layout: Layout; height: number; width: number } {
  let dims = shape;
  if (dims.length === 4 && dims[0] === 1) dims = dims.slice(1); // a batch of one
  if (dims.length !== 3) throw invalid('shape', '[3, H, W], [H, W, 3] or [1, 3, H, W]', `[${shape.join(', ')}]`);
  dims.forEach((d, i) => expectInteger(`shape[${i}]`, d, { min: 1 }));
  let chosen = layout;
  if (chosen === undefined) {
    const chw = dims[0] === 3;
    const hwc = dims[2] === 3;
    if (chw && hwc) throw invalid('layout', '"chw" or "hwc" to be given: the shape is ambiguous', `[${shape.join(', ')}]`);
    if (!chw && !hwc) throw invalid('shape', 'three channels: [3, H, W] or [H, W, 3]', `[${shape.join(', ')}]`);
    chosen = chw ? 'chw' : 'hwc';
  } else {
    expectOneOf('layout', chosen, ['chw', 'hwc'] as const);
    if ((chosen === 'chw' ? dims[0] : dims[2]) !== 3) throw invalid('shape', `3 channels in ${chosen} layout`, `[${shape.join(', ')}]`);
  }
  return chosen === 'chw' ? { layout: 'chw', height: dims[1], width: dims[2] } : { layout: 'hwc', height: dims[0], width: dims[1] };
}

/** Converts a 3-channel tensor (float in a given range, or uint8) to an 8-bit RGB image. */
export function tensorToImage(data: Float32Array | Uint8Array, shape: readonly number[], options: TensorImageOptions = {}): RgbImage {
  const isBytes = data instanceof Uint8Array;
  if (!isBytes && !(data instanceof Float32Array)) throw invalid('data', 'a Float32Array or Uint8Array', data);
  if (!Array.isArray(shape)) throw invalid('shape', 'an array of dimensions', shape);
  const range = expectOneOf('range', options.range ?? (isBytes ? 'uint8' : '[-1,1]'), RANGES);
  if (isBytes && range !== 'uint8') throw invalid('range', '"uint8" for Uint8Array data', range);
  const { layout, height, width } = resolveLayout(shape, options.layout);
  const pixels = height * width;
  if (data.length !== pixels * 3) throw invalid('data', `length ${pixels * 3} for shape [${shape.join(', ')}]`, data);
  const out = new Uint8Array(pixels * 3);
  if (isBytes) {
    if (layout === 'hwc') out.set(data);
    else for (let c = 0; c < 3; c++) for (let i = 0; i < pixels; i++) out[i * 3 + c] = data[c * pixels + i];
  } else if (layout === 'hwc') {
    for (let i = 0; i < out.length; i++) out[i] = toByte(data[i], range);
  } else {
    for (let c = 0; c < 3; c++) for (let i = 0; i < pixels; i++) out[i * 3 + c] = toByte(data[c * pixels + i], range);
  }
  return { data: out, width, height };
}

/** Splits an NCHW batch into images (e.g. a VAE decode output in [-1, 1]). */
export function batchToImages(data: Float32Array | Uint8Array, shape: readonly number[], options: { range?: PixelRange } = {}): RgbImage[] {
  if (!Array.isArray(shape) || shape.length !== 4 || shape[1] !== 3) throw invalid('shape', 'an NCHW shape [N, 3, H, W]', Array.isArray(shape) ? `[${shape.join(', ')}]` : shape);
  const [n, , h, w] = shape.map((d, i) => expectInteger(`shape[${i}]`, d, { min: 1 }));
  const per = 3 * h * w;
  if (data.length !== n * per) throw invalid('data', `length ${n * per} for shape [${shape.join(', ')}]`, data);
  const images: RgbImage[] = [];
  for (let i = 0; i < n; i++) images.push(tensorToImage(data.subarray(i * per, (i + 1) * per), [3, h, w], { range: options.range, layout: 'chw' }));
  return images;
}

/** Encodes an RGB image as PNG. */
export async function encodeRgbPng(image: RgbImage): Promise<Buffer> {
  assertRgbImage('image', image);
  const { data, width, height } = image;
  return sharp(Buffer.from(data.buffer, data.byteOffset, data.byteLength), { raw: { width, height, channels: 3 } })
    .png({ compressionLevel: 6 })
    .toBuffer();
}

/** Encodes a 3-channel tensor as PNG (see `tensorToImage` for ranges and layouts). */
export async function encodePng(data: Float32Array | Uint8Array, shape: readonly number[], options: TensorImageOptions = {}): Promise<Buffer> {
  return encodeRgbPng(tensorToImage(data, shape, options));
}

export { writeFileAtomic };

/** Saves an RGB image as PNG, atomically. */
export async function saveRgbPng(path: string, image: RgbImage): Promise<void> {
  await writeFileAtomic(path, await encodeRgbPng(image));
}

/** Saves a 3-channel tensor as PNG, atomically. Float data defaults to range '[-1,1]'. */
export async function savePng(path: string, data: Float32Array | Uint8Array, shape: readonly number[], options: TensorImageOptions = {}): Promise<void> {
  expectString('path', path);
  await writeFileAtomic(path, await encodePng(data, shape, options));
}

export interface GridOptions {
  /** images per row; default ceil(sqrt(n)) */
  columns?: number;
  /** pixels between cells and around the sheet; default 2 */
  padding?: number;
  /** RGB of the background; default white */
  background?: [number, number, number];
}

/**
 * Tiles images into one contact sheet, row by row. Cells are as large as the largest image;
 * smaller images are centred in their cell.
 */
export function makeGrid(images: RgbImage[], options: GridOptions = {}): RgbImage {
  if (!Array.isArray(images) || images.length === 0) throw invalid('images', 'a non-empty array of RgbImage', images);
  images.forEach((img, i) => assertRgbImage(`images[${i}]`, img));
  const n = images.length;
  const columns = expectInteger('columns', options.columns ?? Math.ceil(Math.sqrt(n)), { min: 1 });
  const padding = expectInteger('padding', options.padding ?? 2, { min: 0 });
  const background = options.background ?? [255, 255, 255];
  if (!Array.isArray(background) || background.length !== 3) throw invalid('background', 'an [r, g, b] array', background);
  background.forEach((v, i) => expectInteger(`background[${i}]`, v, { min: 0, max: 255 }));
  const cols = Math.min(columns, n);
  const rows = Math.ceil(n / cols);
  const cellW = Math.max(...images.map((im) => im.width));
  const cellH = Math.max(...images.map((im) => im.height));
  const width = cols * cellW + (cols + 1) * padding;
  const height = rows * cellH + (rows + 1) * padding;
  const data = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    data[i * 3] = background[0];
    data[i * 3 + 1] = background[1];
    data[i * 3 + 2] = background[2];
  }
  images.forEach((img, index) => {
    const cx = padding + (index % cols) * (cellW + padding) + Math.floor((cellW - img.width) / 2);
    const cy = padding + Math.floor(index / cols) * (cellH + padding) + Math.floor((cellH - img.height) / 2);
    for (let y = 0; y < img.height; y++) {
      const src = y * img.width * 3;
      data.set(img.data.subarray(src, src + img.width * 3), ((cy + y) * width + cx) * 3);
    }
  });
  return { data, width, height };
}

/** Builds a contact sheet and saves it as PNG, atomically. */
export async function saveGrid(path: string, images: RgbImage[], options: GridOptions = {}): Promise<void> {
  expectString('path', path);
  await saveRgbPng(path, makeGrid(images, options));
}
