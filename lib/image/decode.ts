/**
 * Decoding JPEG/PNG/WebP (anything libvips reads) into 8-bit RGB, matching what the reference
 * pipelines get from `PIL.Image.open(p).convert('RGB')`:
 * - alpha is DROPPED, not composited (PIL's RGBA→RGB and LA→RGB copy the colour bands);
 * - grey becomes three equal channels; palette images are expanded;
 * - embedded ICC profiles are ignored (PIL does not colour-manage on open/convert);
 * - decoding warnings (e.g. extraneous bytes in a JPEG) are tolerated, truncated or broken data is
 *   an error, like PIL with LOAD_TRUNCATED_IMAGES = False;
 * - multi-frame files (GIF, animated WebP) give the first frame.
 * Verified bit-exact against Pillow 12.3 `open().convert('RGB')` on 4:2:0 and 4:4:4 JPEGs, a
 * greyscale JPEG and a lossy WebP (sharp 0.35 / libvips 8.18), and 16-bit RGB PNGs keep the high
 * byte as Pillow does.
 * EXIF orientation is applied by default (`autoOrient: true`). Note that PIL's `open().convert()`
 * does NOT apply it (that takes `ImageOps.exif_transpose`); pass `autoOrient: false` to reproduce
 * BLIP/CLIP/diffusers reference numbers on images that carry an Orientation tag.
 * Known differences from PIL: 16-bit greyscale PNGs are scaled to 8 bits (PIL's I→RGB clips
 * instead), and CMYK JPEGs go through libvips' CMYK→sRGB conversion.
 */
import { promises as fs } from 'fs';
import sharp, { OutputInfo } from 'sharp';
import { RoundtripError, expectBoolean, expectString, invalid } from '../errors';
import { RgbImage, assertRgbImage } from './types';

export interface DecodeOptions {
  /** Apply the EXIF Orientation tag (rotate/mirror). Default true. */
  autoOrient?: boolean;
}

function readOptions(options: DecodeOptions | undefined): Required<DecodeOptions> {
  if (options === undefined) return { autoOrient: true };
  if (options === null || typeof options !== 'object') throw invalid('decode options', 'an object', options);
  const autoOrient = options.autoOrient === undefined ? true : expectBoolean('autoOrient', options.autoOrient);
  return { autoOrient };
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** The format a file's first bytes announce. */
function sniffFormat(head: Uint8Array): string | undefined {
  const starts = (...b: number[]) => b.every((v, i) => head[i] === v);
  if (starts(0x89, 0x50, 0x4e, 0x47)) return 'PNG';
  if (starts(0xff, 0xd8, 0xff)) return 'JPEG';
  if (starts(0x47, 0x49, 0x46, 0x38)) return 'GIF';
  if (starts(0x52, 0x49, 0x46, 0x46) && head[8] === 0x57 && head[9] === 0x45) return 'WebP';
  if (starts(0x49, 0x49, 0x2a, 0) || starts(0x4d, 0x4d, 0, 0x2a)) return 'TIFF';
  if (starts(0x42, 0x4d)) return 'BMP';
  return undefined;
}

/**
 * A decoder message users can act on: libvips sometimes gives none ("Unknown error", or a sentence that
 * stops at a colon), so the file's format (from its magic bytes) and its size say what is wrong.
 */
function decodeProblem(input: string | Buffer, message: string): string {
  const bytes = typeof input === 'string' ? undefined : input;
  const trimmed = message.trim().replace(/:$/, '').replace(/^unknown error$/i, '').trim();
  // Size refusals (decompression bombs) already say what is wrong.
  if (!bytes || /pixel limit|too large|dimension/i.test(trimmed)) return trimmed || 'the decoder gave no reason';
  const format = sniffFormat(bytes);
  if (!format) {
    const hex = Array.from(bytes.subarray(0, 8), (b) => b.toString(16).padStart(2, '0')).join(' ');
    return `not a supported image format (the file starts with ${hex}; expected JPEG, PNG, WebP, GIF, TIFF or BMP)`;
  }
  return `truncated or corrupt ${format} data (${bytes.length} bytes; decoder: ${trimmed || 'no reason given'})`;
}

async function decode(input: string | Buffer, label: string, options: Required<DecodeOptions>): Promise<RgbImage> {
  let raw: { data: Buffer; info: OutputInfo };
  try {
    // failOn 'error' rejects truncated/corrupt data but, like PIL, accepts files that only warn.
    let pipeline = sharp(input, { failOn: 'error', ignoreIcc: true, pages: 1 });
    if (options.autoOrient) pipeline = pipeline.autoOrient();
    raw = await pipeline.raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
  } catch (error) {
    throw new RoundtripError(`${label}: cannot decode image: ${decodeProblem(input, errorMessage(error))}`);
  }
  const { width, height, channels } = raw.info;
  const src = raw.data;
  const pixels = width * height;
  if (src.length !== pixels * channels) {
    throw new RoundtripError(`${label}: decoder returned ${src.length} bytes for a ${width}×${height}×${channels} image`);
  }
  const out = new Uint8Array(pixels * 3);
  if (channels === 3) {
    out.set(src);
  } else if (channels === 1 || channels === 2) {
    // Grey (+ alpha): replicate the grey band, drop alpha.
    for (let i = 0, s = 0, o = 0; i < pixels; i++, s += channels, o += 3) {
      const v = src[s];
      out[o] = v;
      out[o + 1] = v;
      out[o + 2] = v;
    }
  } else if (channels === 4) {
    // RGBA: drop alpha without compositing, like PIL's convert('RGB').
    for (let i = 0, s = 0, o = 0; i < pixels; i++, s += 4, o += 3) {
      out[o] = src[s];
      out[o + 1] = src[s + 1];
      out[o + 2] = src[s + 2];
    }
  } else {
    throw new RoundtripError(`${label}: unsupported image with ${channels} channels (expected grey, grey+alpha, RGB or RGBA)`);
  }
  return { data: out, width, height };
}

/** Decodes an image file to 8-bit RGB. Missing/unreadable/corrupt files throw RoundtripError naming the file. */
export async function loadImage(path: string, options?: DecodeOptions): Promise<RgbImage> {
  expectString('image path', path);
  const opts = readOptions(options);
  let bytes: Buffer;
  try {
    bytes = await fs.readFile(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'file not found' : code === 'EISDIR' ? 'is a directory, not an image file' : errorMessage(error);
    throw new RoundtripError(`${path}: cannot read image: ${why}`);
  }
  if (bytes.length === 0) throw new RoundtripError(`${path}: cannot decode image: the file is empty`);
  return decode(bytes, path, opts);
}

/** Decodes image bytes to 8-bit RGB. `label` names the source in error messages. */
export async function decodeImage(bytes: Buffer | Uint8Array, options?: DecodeOptions, label = 'image buffer'): Promise<RgbImage> {
  if (!(bytes instanceof Uint8Array)) throw invalid(label, 'a Buffer or Uint8Array of encoded image bytes', bytes);
  if (bytes.length === 0) throw new RoundtripError(`${label}: cannot decode image: the buffer is empty`);
  const buffer = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return decode(buffer, label, readOptions(options));
}

/** Wraps raw RGB bytes (HWC) as an RgbImage after checking the length. */
export function rgbImage(data: Uint8Array, width: number, height: number): RgbImage {
  const image = { data, width, height };
  assertRgbImage('image', image);
  return image;
}
