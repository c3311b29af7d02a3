/**
 * PyTorch checkpoint (`.pth`, `.bin`, `.ckpt`, `.pt`) → safetensors conversion through the restricted reader,
 * with optional float casts (F32 / F16 / BF16, round to nearest even) and renames.
 *
 * Tensors are streamed: each one is read, cast and written before the next is read. Tied tensors (several
 * names on one storage) are written once per name, since safetensors has no aliasing.
 */
import * as fs from 'fs';
import * as os from 'os';
import { RoundtripError, expectOneOf, expectString } from '../errors';
import { readTorchFile, stateDictOf, TorchTensor, DTYPE_SIZES } from './torchfile';
import { writeSafetensors, SafetensorsEntry } from './safetensors-writer';

/** Float dtypes a conversion can cast to. */
export const CAST_DTYPES = ['F32', 'F16', 'BF16'] as const;
export type CastDtype = (typeof CAST_DTYPES)[number];

const FLOAT_DTYPES = new Set(['F64', 'F32', 'F16', 'BF16']);

export interface ConvertOptions {
  /** Cast every floating-point tensor (F64/F32/F16/BF16) to this dtype; integer and bool tensors are kept. */
  dtype?: CastDtype;
  /**
   * Renames: a map from old to new name, or a function returning the new name (null / undefined drops the
   * tensor, which is then reported under `dropped`).
   */
  renames?: Record<string, string> | ((name: string) => string | null | undefined);
  /** Extra `__metadata__` entries; `format: pt` is always written, as `safetensors.torch` does. */
  metadata?: Record<string, string>;
}

export interface ConversionReport {
  input: string;
  output: string;
  /** Number of tensors written. */
  tensors: number;
  /** Bytes of tensor data written (excluding the header). */
  bytes: number;
  /** Total output file size. */
  fileBytes: number;
  /** Dotted names of state-dict entries that are not tensors. */
  skipped: string[];
  /** Tensor names a rename function dropped. */
  dropped: string[];
  /** Where the state dict was found (`model`, `state_dict`, …) or null for a plain dict. */
  wrapper: string | null;
  /** Number of tensors whose dtype was cast. */
  cast: number;
}

// Scratch views for the bit-level casts; one shared set, no per-element allocation.
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** Rounds a non-negative double to the nearest integer, ties to even. */
function roundHalfEven(q: number): number {
  const f = Math.floor(q);
  const d = q - f;
  return d > 0.5 || (d === 0.5 && f % 2 === 1) ? f + 1 : f;
}

const f64 = new Float64Array(1);
const f64Words = new Uint32Array(f64.buffer);
const HIGH_WORD = os.endianness() === 'LE' ? 1 : 0;

/** Binary exponent of a finite positive double (floor(log2(x))), exact, also for subnormals. */
function exponentOf(x: number): number {
  f64[0] = x;
  const biased = (f64Words[HIGH_WORD] >>> 20) & 0x7ff;
  if (biased !== 0) return biased - 1023;
  // Subnormal double: scale into the normal range first (exact, a power of two).
  f64[0] = x * 2 ** 64;
  return ((f64Words[HIGH_WORD] >>> 20) & 0x7ff) - 1023 - 64;
}

/**
 * Encodes a double as IEEE half (F16) bits with one rounding step (round to nearest, ties to even) — going
 * through float32 first would round twice.
 */
export function doubleToHalfBits(value: number): number {
  if (Number.isNaN(value)) return 0x7e00;
  const sign = value < 0 || Object.is(value, -0) ? 0x8000 : 0;
  const a = Math.abs(value);
  if (a === Infinity) return sign | 0x7c00;
  if (a === 0) return sign;
  const e = exponentOf(a);
  if (e < -14) return sign | roundHalfEven(a * 2 ** 24); // subnormal; 1024 rounds up into the smallest normal
  if (e > 15) return sign | 0x7c00;
  const mantissa = roundHalfEven(a * 2 ** (10 - e)); // in [1024, 2048]
  return sign | Math.min(((e + 15) << 10) + (mantissa - 1024), 0x7c00);
}

/** Encodes a double as bfloat16 bits with one rounding step (round to nearest, ties to even). */
export function doubleToBFloat16Bits(value: number): number {
  if (Number.isNaN(value)) return 0x7fc0;
  const sign = value < 0 || Object.is(value, -0) ? 0x8000 : 0;
  const a = Math.abs(value);
  if (a === Infinity) return sign | 0x7f80;
  if (a === 0) return sign;
  const e = exponentOf(a);
  if (e < -126) return sign | roundHalfEven(a * 2 ** 133); // subnormal
  if (e > 127) return sign | 0x7f80;
  const mantissa = roundHalfEven(a * 2 ** (7 - e)); // in [128, 256]
  return sign | Math.min(((e + 127) << 7) + (mantissa - 128), 0x7f80);
}

/** Decodes IEEE half bits to a number (exact). */
export function halfBitsToNumber(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * (1024 + fraction) * 2 ** (exponent - 25);
}

/** Decodes bfloat16 bits to a number (exact: they are the top half of a float32). */
export function bfloat16BitsToNumber(bits: number): number {
  u32[0] = bits << 16;
  return f32[0];
}

/** Fast F32 → BF16 on raw bits (round to nearest even; NaN stays a quiet NaN). */
function float32BitsToBFloat16(bits: number): number {
  if ((bits & 0x7f800000) === 0x7f800000 && bits & 0x7fffff) return ((bits >>> 16) & 0x8000) | 0x7fc0;
  return (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
}

/**
 * Casts contiguous little-endian float bytes between F64, F32, F16 and BF16 with a single round-to-nearest-
 * even step. Returns the input unchanged when the dtypes are equal.
 */
export function castFloatBytes(data: Uint8Array, from: string, to: string): Buffer {
  let input = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (from === to) return input;
  if (!FLOAT_DTYPES.has(from) || !FLOAT_DTYPES.has(to)) throw new RoundtripError(`cast: expected float dtypes, got ${from} → ${to}`);
  const n = input.byteLength / DTYPE_SIZES[from];
  if (!Number.isInteger(n)) throw new RoundtripError(`cast: ${input.byteLength} bytes is not a whole number of ${from} elements`);
  // Unpooled, so typed-array views on it are aligned.
  const out = Buffer.allocUnsafeSlow(n * DTYPE_SIZES[to]);
  if (LITTLE_ENDIAN_HOST && (from === 'F32' || from === 'F16' || from === 'BF16') && (to === 'F32' || to === 'F16' || to === 'BF16')) {
    if (input.byteOffset % 4 !== 0) input = Buffer.from(input); // typed-array views need alignment
    castFloat32Family(input, from, out, to, n);
    return out;
  }
  const read: (i: number) => number =
    from === 'F64' ? (i) => input.readDoubleLE(8 * i)
    : from === 'F32' ? (i) => input.readFloatLE(4 * i)
    : from === 'F16' ? (i) => halfBitsToNumber(input.readUInt16LE(2 * i))
    : (i) => bfloat16BitsToNumber(input.readUInt16LE(2 * i));
  if (to === 'F64') for (let i = 0; i < n; i++) out.writeDoubleLE(read(i), 8 * i);
  else if (to === 'F32') for (let i = 0; i < n; i++) out.writeFloatLE(read(i), 4 * i); // V8 rounds to nearest even
  else if (to === 'F16') for (let i = 0; i < n; i++) out.writeUInt16LE(doubleToHalfBits(read(i)), 2 * i);
  else for (let i = 0; i < n; i++) out.writeUInt16LE(doubleToBFloat16Bits(read(i)), 2 * i);
  return out;
}

const LITTLE_ENDIAN_HOST = os.endianness() === 'LE';
/** F16 bits → float32, all 65536 of them, built on first use. */
let halfTable: Float32Array | undefined;

/** F32 bits → F16 bits, round to nearest even (NaN stays NaN, overflow becomes infinity). */
function float32BitsToHalf(x: number): number {
  const abs = x & 0x7fffffff;
  // Common case, a normal half result in [2^-14, 65520): rebias, add the round-to-even bias, shift; a
  // mantissa carry rolls into the exponent.
  if (abs >= 0x38800000 && abs < 0x477ff000) return ((x >>> 16) & 0x8000) | ((abs - 0x38000000 + 0xfff + ((abs >>> 13) & 1)) >>> 13);
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  const mantissa = x & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  const e = exponent - 112; // rebias 127 → 15
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal
    const m = mantissa | 0x800000;
    const shift = 14 - e;
    let half = m >>> shift;
    const rest = m & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rest > halfway || (rest === halfway && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mantissa >>> 13);
  const rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && half & 1)) half++; // a carry rolls into the exponent, up to infinity
  return sign | half;
}

/** Casts between F32, F16 and BF16 on typed-array views (little-endian host), one rounding step. */
function castFloat32Family(input: Buffer, from: string, out: Buffer, to: string, n: number): void {
  const dst16 = to !== 'F32' ? new Uint16Array(out.buffer, out.byteOffset, n) : undefined;
  const dst32 = to === 'F32' ? new Uint32Array(out.buffer, out.byteOffset, n) : undefined;
  if (from === 'F32') {
    const src = new Uint32Array(input.buffer, input.byteOffset, n);
    if (to === 'F16') for (let i = 0; i < n; i++) dst16![i] = float32BitsToHalf(src[i]);
    else for (let i = 0; i < n; i++) dst16![i] = float32BitsToBFloat16(src[i]);
    return;
  }
  const src = new Uint16Array(input.buffer, input.byteOffset, n);
  if (from === 'BF16') {
    // BF16 → F32 is exact (the top half of a float32); BF16 → F16 rounds once from that exact value.
    if (to === 'F32') for (let i = 0; i < n; i++) dst32![i] = src[i] << 16;
    else for (let i = 0; i < n; i++) dst16![i] = float32BitsToHalf(src[i] << 16);
    return;
  }
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) halfTable[h] = halfBitsToNumber(h);
  }
  const bits = new Uint32Array(halfTable.buffer);
  if (to === 'F32') for (let i = 0; i < n; i++) dst32![i] = bits[src[i]];
  else for (let i = 0; i < n; i++) dst16![i] = float32BitsToBFloat16(bits[src[i]]);
}

function renameOf(renames: ConvertOptions['renames'], name: string): string | null {
  if (renames === undefined) return name;
  if (typeof renames === 'function') return renames(name) ?? null;
  return Object.prototype.hasOwnProperty.call(renames, name) ? expectString(`rename of "${name}"`, renames[name]) : name;
}

/**
 * Converts a PyTorch checkpoint to a safetensors file (written atomically).
 * @throws RoundtripError naming the file and the fault for refused or malformed checkpoints, duplicate
 *   names after renaming, or a failed write (the previous output, if any, is left untouched).
 */
export async function convertToSafetensors(inputPath: string, outputPath: string, options: ConvertOptions = {}): Promise<ConversionReport> {
  expectString('input path', inputPath);
  expectString('output path', outputPath);
  const target = options.dtype === undefined ? undefined : expectOneOf('--dtype', options.dtype, CAST_DTYPES);
  if (fs.existsSync(outputPath) && fs.statSync(outputPath).isDirectory()) throw new RoundtripError(`${outputPath}: output is a directory; expected a file path`);

  const checkpoint = await readTorchFile(inputPath);
  const { tensors, skipped, wrapper } = stateDictOf(checkpoint.value, inputPath);
  const entries: SafetensorsEntry[] = [];
  const dropped: string[] = [];
  const seen = new Map<string, string>();
  let cast = 0;
  for (const [name, tensor] of tensors) {
    const outName = renameOf(options.renames, name);
    if (outName === null) {
      dropped.push(name);
      continue;
    }
    if (seen.has(outName)) throw new RoundtripError(`${inputPath}: "${name}" and "${seen.get(outName)}" both map to "${outName}"`);
    seen.set(outName, name);
    const dtype = target !== undefined && FLOAT_DTYPES.has(tensor.dtype) ? target : tensor.dtype;
    if (dtype !== tensor.dtype) cast++;
    entries.push({ name: outName, dtype, shape: tensor.shape });
  }
  if (entries.length === 0) {
    const why = tensors.size === 0 ? `holds no tensors${skipped.length ? ` (only ${skipped.length} other entr${skipped.length === 1 ? 'y' : 'ies'}: ${skipped.slice(0, 5).join(', ')})` : ''}` : `every tensor (${tensors.size}) was dropped by the renames`;
    throw new RoundtripError(`${inputPath}: ${why}; nothing to convert, ${outputPath} not written`);
  }
  const metadata = { format: 'pt', ...(options.metadata ?? {}) };
  // One handle for all reads: tensors are read one at a time while the writer streams them.
  const input = await fs.promises.open(inputPath, 'r');
  let written;
  try {
    for (const entry of entries) {
      const tensor = tensors.get(seen.get(entry.name)!)!;
      entry.read = () => readConverted(tensor, entry.dtype, input);
    }
    written = await writeSafetensors(outputPath, entries, metadata);
  } finally {
    await input.close();
  }
  const bytes = entries.reduce((sum, e) => sum + e.shape.reduce((a, b) => a * b, 1) * DTYPE_SIZES[e.dtype], 0);
  return { input: inputPath, output: outputPath, tensors: written.tensors, bytes, fileBytes: written.bytes, skipped, dropped, wrapper, cast };
}

async function readConverted(tensor: TorchTensor, dtype: string, handle: fs.promises.FileHandle): Promise<Buffer> {
  const data = await tensor.readContiguous(handle);
  return dtype === tensor.dtype ? data : castFloatBytes(data, tensor.dtype, dtype);
}
