/** Shared image and tensor types for the image module. */
import { expectInteger, invalid } from '../errors';

/** An 8-bit RGB image, rows top to bottom, pixels interleaved (HWC): `data[(y*width + x)*3 + c]`. */
export interface RgbImage {
  data: Uint8Array;
  width: number;
  height: number;
}

/** A float32 tensor with its shape, row-major (C-contiguous). Image batches are NCHW. */
export interface Float32Tensor {
  data: Float32Array;
  shape: number[];
}

/** A uint8 tensor with its shape, row-major. FID Inception batches are NCHW uint8. */
export interface Uint8Tensor {
  data: Uint8Array;
  shape: number[];
}

export type ImageTensor = Float32Tensor | Uint8Tensor;

/** Checks the invariants of an RgbImage; `name` labels the argument in errors. */
export function assertRgbImage(name: string, image: RgbImage): void {
  if (image === null || typeof image !== 'object') throw invalid(name, 'an RgbImage {data, width, height}', image);
  expectInteger(`${name}.width`, image.width, { min: 1 });
  expectInteger(`${name}.height`, image.height, { min: 1 });
  if (!(image.data instanceof Uint8Array)) throw invalid(`${name}.data`, 'a Uint8Array', image.data);
  const expected = image.width * image.height * 3;
  if (image.data.length !== expected) {
    throw invalid(`${name}.data`, `length ${expected} (${image.width}×${image.height}×3)`, image.data);
  }
}
