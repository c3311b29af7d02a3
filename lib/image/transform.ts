/**
 * Geometric helpers with the exact integer arithmetic of the reference libraries:
 * transformers' `get_resize_output_image_size` / `center_crop`, and torchvision's `Resize(int)`,
 * `CenterCrop`, `RandomCrop`, `RandomResizedCrop` and `RandomHorizontalFlip`.
 */
import { expectInteger, expectNumber, invalid } from '../errors';
import { Rng } from './random';
import { RgbImage, assertRgbImage } from './types';

/** Integer rectangle in pixels. `top`/`left` may be negative (zero padding). */
export interface CropRect {
  top: number;
  left: number;
  height: number;
  width: number;
}

/**
 * Output size when the shortest side is resized to `shortest` (transformers
 * `get_resize_output_image_size(default_to_square=False)` and torchvision `Resize(int)` agree):
 * the long side is `int(shortest * long / short)`, truncated.
 */
export function shortestEdgeSize(width: number, height: number, shortest: number): { width: number; height: number } {
  expectInteger('shortest edge', shortest, { min: 1 });
  const short = Math.min(width, height);
  const long = Math.max(width, height);
  // Python: int(requested * long / short): the product is exact, one true division, truncation.
  const newLong = Math.trunc((shortest * long) / short);
  return width <= height ? { width: shortest, height: newLong } : { width: newLong, height: shortest };
}

/** Python's `round()` on a float: halves go to the even neighbour. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * Centre-crop window.
 * - 'floor' (transformers `center_crop`): `top = (H - h) // 2` (Python floor division);
 * - 'round-half-even' (torchvision `CenterCrop`): `top = int(round((H - h) / 2))`.
 * When the image is smaller than the crop both libraries zero-pad; the returned window then has a
 * negative offset and `crop()` fills the outside with zeros, matching both libraries' padding
 * placement (transformers pads `ceil(d/2)` before; torchvision pads `d // 2` before).
 */
export function centerCropRect(width: number, height: number, cropWidth: number, cropHeight: number, rounding: 'floor' | 'round-half-even'): CropRect {
  expectInteger('crop width', cropWidth, { min: 1 });
  expectInteger('crop height', cropHeight, { min: 1 });
  const offset = (size: number, crop: number): number => {
    if (rounding === 'floor') {
      if (crop <= size) return Math.floor((size - crop) / 2);
      // transformers pads ceil(d/2) before (d = crop - size) and then slices from
      // floor(-d/2) + ceil(d/2) = 0 in padded coordinates: the source sits at +ceil(d/2).
      return -Math.ceil((crop - size) / 2);
    }
    if (crop <= size) return roundHalfEven((size - crop) / 2);
    // torchvision pads (crop - size) // 2 on the leading side, then the crop is the whole padded image.
    return -Math.floor((crop - size) / 2);
  };
  return { top: offset(height, cropHeight), left: offset(width, cropWidth), height: cropHeight, width: cropWidth };
}

/** Copies a window out of an image; pixels outside the source are zero (black). */
export function crop(image: RgbImage, rect: CropRect): RgbImage {
  assertRgbImage('image', image);
  expectInteger('crop top', rect.top);
  expectInteger('crop left', rect.left);
  expectInteger('crop height', rect.height, { min: 1 });
  expectInteger('crop width', rect.width, { min: 1 });
  const { top, left, width, height } = rect;
  const out = new Uint8Array(width * height * 3);
  const x0 = Math.max(0, left);
  const x1 = Math.min(image.width, left + width);
  if (x1 <= x0) return { data: out, width, height };
  for (let y = 0; y < height; y++) {
    const sy = top + y;
    if (sy < 0 || sy >= image.height) continue;
    const srcStart = (sy * image.width + x0) * 3;
    out.set(image.data.subarray(srcStart, srcStart + (x1 - x0) * 3), (y * width + (x0 - left)) * 3);
  }
  return { data: out, width, height };
}

/** Mirror left ↔ right. */
export function flipHorizontal(image: RgbImage): RgbImage {
  assertRgbImage('image', image);
  const { width, height, data } = image;
  const out = new Uint8Array(data.length);
  for (let y = 0; y < height; y++) {
    const row = y * width * 3;
    for (let x = 0; x < width; x++) {
      const s = row + x * 3;
      const d = row + (width - 1 - x) * 3;
      out[d] = data[s];
      out[d + 1] = data[s + 1];
      out[d + 2] = data[s + 2];
    }
  }
  return { data: out, width, height };
}

/**
 * torchvision `RandomCrop(size)` window (no padding option): top ~ U{0..H-h}, left ~ U{0..W-w}.
 * An image smaller than the crop is an error, as in torchvision without `pad_if_needed`.
 */
export function randomCropRect(width: number, height: number, cropWidth: number, cropHeight: number, rng: Rng): CropRect {
  if (cropWidth > width || cropHeight > height) {
    throw invalid('random crop size', `at most the image size ${width}×${height}`, `${cropWidth}×${cropHeight}`);
  }
  const top = rng.int(0, height - cropHeight + 1);
  const left = rng.int(0, width - cropWidth + 1);
  return { top, left, height: cropHeight, width: cropWidth };
}

/**
 * torchvision `RandomResizedCrop.get_params`: up to 10 tries of area fraction ~ U(scale) and
 * log-aspect ~ U(log ratio); w = round(sqrt(area·ratio)), h = round(sqrt(area/ratio)); then the
 * central fallback. Python's `round` (half to even) is used like torchvision.
 */
export function randomResizedCropRect(width: number, height: number, scale: readonly [number, number], ratio: readonly [number, number], rng: Rng): CropRect {
  expectNumber('scale[0]', scale[0], { min: 0, exclusiveMin: true });
  expectNumber('scale[1]', scale[1], { min: scale[0] });
  expectNumber('ratio[0]', ratio[0], { min: 0, exclusiveMin: true });
  expectNumber('ratio[1]', ratio[1], { min: ratio[0] });
  const area = height * width;
  const logLo = Math.log(ratio[0]);
  const logHi = Math.log(ratio[1]);
  for (let attempt = 0; attempt < 10; attempt++) {
    const targetArea = area * rng.uniform(scale[0], scale[1]);
    const aspect = Math.exp(rng.uniform(logLo, logHi));
    const w = roundHalfEven(Math.sqrt(targetArea * aspect));
    const h = roundHalfEven(Math.sqrt(targetArea / aspect));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const top = rng.int(0, height - h + 1);
      const left = rng.int(0, width - w + 1);
      return { top, left, height: h, width: w };
    }
  }
  const inRatio = width / height;
  let w: number;
  let h: number;
  if (inRatio < Math.min(ratio[0], ratio[1])) {
    w = width;
    h = roundHalfEven(w / Math.min(ratio[0], ratio[1]));
  } else if (inRatio > Math.max(ratio[0], ratio[1])) {
    h = height;
    w = roundHalfEven(h * Math.max(ratio[0], ratio[1]));
  } else {
    w = width;
    h = height;
  }
  return { top: Math.floor((height - h) / 2), left: Math.floor((width - w) / 2), height: h, width: w };
}
