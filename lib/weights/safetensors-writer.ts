/**
 * Streaming, atomic safetensors writer.
 *
 * The header needs every tensor's size up front, and those come from dtype × shape, so tensors whose bytes
 * are produced lazily (`read`) are only materialised one at a time while the data section is streamed. Data
 * is laid out with larger element sizes first, then by name (the reference `safetensors` library's order),
 * so every tensor starts at a multiple of its element size. The file is written to a temporary sibling,
 * fsynced, renamed over the target and the directory fsynced: readers see the old file or the complete new
 * one, never a partial one, and a failed write leaves any existing target untouched.
 */
import * as fs from 'fs';
import { RoundtripError, expectString, invalid } from '../errors';
import { landFileAtomic } from '../fsutil';
import { DTYPE_SIZES } from './torchfile';

/** One tensor to write. Give its bytes either directly (`data`) or as a lazy producer (`read`). */
export interface SafetensorsEntry {
  name: string;
  /** Safetensors dtype name: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, U16, U32, U64, F8_E4M3, F8_E5M2. */
  dtype: string;
  shape: readonly number[];
  /** Contiguous row-major little-endian bytes. */
  data?: Buffer | Uint8Array;
  /** Produces the bytes when the writer reaches this tensor (keeps at most one tensor in memory). */
  read?: () => Buffer | Uint8Array | Promise<Buffer | Uint8Array>;
}

export interface SafetensorsWriteResult {
  /** Number of tensors written. */
  tensors: number;
  /** Total file size in bytes. */
  bytes: number;
}

/**
 * Layout order of the reference `safetensors` library (its Dtype enum, written in descending order): it
 * groups by element size, largest first, so every offset is aligned, and it makes our files byte-identical
 * to the ones `safetensors.torch.save_file` writes.
 */
const DTYPE_ORDER: Readonly<Record<string, number>> = Object.fromEntries(
  ['BOOL', 'U8', 'I8', 'F8_E5M2', 'F8_E4M3', 'I16', 'U16', 'F16', 'BF16', 'I32', 'U32', 'F32', 'F64', 'I64', 'U64'].map((d, i) => [d, i]),
);

/** Writes smaller than a quarter of this are gathered into one buffer of this size. */
const COALESCE_BYTES = 4 << 20;

interface Planned {
  entry: SafetensorsEntry;
  elementSize: number;
  byteLength: number;
  begin: number;
  nameBytes: Buffer;
}

/** Validates one entry and computes its byte size from dtype × shape. */
function plan(entry: SafetensorsEntry, file: string, names: Set<string>): Planned {
  const name = expectString(`${file}: tensor name`, entry?.name);
  if (name.length === 0 || name === '__metadata__') throw invalid(`${file}: tensor name`, 'a non-empty name other than "__metadata__"', name);
  if (names.has(name)) throw new RoundtripError(`${file}: tensor name "${name}" appears twice`);
  names.add(name);
  const elementSize = DTYPE_SIZES[entry.dtype];
  if (elementSize === undefined) throw invalid(`${file}: dtype of "${name}"`, `one of ${Object.keys(DTYPE_SIZES).join(', ')}`, entry.dtype);
  if (!Array.isArray(entry.shape)) throw invalid(`${file}: shape of "${name}"`, 'an array of non-negative integers', entry.shape);
  let numel = 1;
  for (const d of entry.shape) {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) throw invalid(`${file}: shape of "${name}"`, 'an array of non-negative integers', d);
    numel *= d;
  }
  const byteLength = numel * elementSize;
  if (!Number.isSafeInteger(byteLength)) throw new RoundtripError(`${file}: tensor "${name}" is too large (${numel} elements)`);
  if (entry.data === undefined && entry.read === undefined) throw new RoundtripError(`${file}: tensor "${name}" has neither data nor read`);
  if (entry.data !== undefined) checkBytes(entry.data, byteLength, name, file);
  return { entry, elementSize, byteLength, begin: 0, nameBytes: Buffer.from(name, 'utf8') };
}

function checkBytes(data: unknown, byteLength: number, name: string, file: string): asserts data is Uint8Array {
  if (!(data instanceof Uint8Array)) throw invalid(`${file}: data of "${name}"`, 'a Buffer or Uint8Array', data);
  if (data.byteLength !== byteLength) {
    throw new RoundtripError(`${file}: tensor "${name}": expected ${byteLength} bytes from its dtype and shape, got ${data.byteLength}`);
  }
}

/** Builds the header bytes (JSON padded with spaces so that 8 + length is a multiple of 8). */
export function safetensorsHeader(planned: readonly Planned[], metadata?: Record<string, string>): Buffer {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  for (const p of planned) {
    header[p.entry.name] = { dtype: p.entry.dtype, shape: [...p.entry.shape], data_offsets: [p.begin, p.begin + p.byteLength] };
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  const out = Buffer.alloc(8 + padded, 0x20);
  out.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(out, 8);
  return out;
}

/** Writes all of `buffer` at the handle's current end. */
async function writeAll(handle: fs.promises.FileHandle, buffer: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < buffer.byteLength) {
    const { bytesWritten } = await handle.write(buffer, done, buffer.byteLength - done, position + done);
    done += bytesWritten;
  }
}

/**
 * Writes a safetensors file atomically.
 * @param file target path; its directory must exist.
 * @param entries tensors, as an array, an iterable or an async iterable; only their descriptors are kept
 *   while planning, the bytes of `read` entries are produced one at a time while writing.
 * @param metadata optional string → string `__metadata__`.
 * @throws RoundtripError naming the file and the tensor for a bad name, dtype, shape or byte count; on any
 *   error the temporary file is removed and an existing `file` is left as it was.
 */
export async function writeSafetensors(
  file: string,
  entries: Iterable<SafetensorsEntry> | AsyncIterable<SafetensorsEntry>,
  metadata?: Record<string, string>,
): Promise<SafetensorsWriteResult> {
  expectString('safetensors output path', file);
  if (metadata !== undefined) {
    if (typeof metadata !== 'object' || metadata === null) throw invalid(`${file}: metadata`, 'an object of strings', metadata);
    for (const [key, value] of Object.entries(metadata)) expectString(`${file}: metadata "${key}"`, value);
  }
  const names = new Set<string>();
  const planned: Planned[] = [];
  for await (const entry of entries as AsyncIterable<SafetensorsEntry>) planned.push(plan(entry, file, names));
  // Names compare as UTF-8 bytes, as the reference library (Rust strings) does.
  planned.sort((a, b) => DTYPE_ORDER[b.entry.dtype] - DTYPE_ORDER[a.entry.dtype] || Buffer.compare(a.nameBytes, b.nameBytes));
  let offset = 0;
  for (const p of planned) {
    p.begin = offset;
    offset += p.byteLength;
  }
  const header = safetensorsHeader(planned, metadata);

  return landFileAtomic(file, async (temp) => {
    const out = await fs.promises.open(temp, 'wx');
    try {
      // Small tensors (biases, norms) are coalesced into one buffer so each does not cost a write call.
      const chunk = Buffer.allocUnsafeSlow(COALESCE_BYTES);
      let chunkLength = 0;
      let position = 0;
      const flush = async (): Promise<void> => {
        await writeAll(out, chunk.subarray(0, chunkLength), position);
        position += chunkLength;
        chunkLength = 0;
      };
      const append = async (data: Uint8Array): Promise<void> => {
        if (data.byteLength > COALESCE_BYTES / 4) {
          await flush();
          await writeAll(out, data, position);
          position += data.byteLength;
          return;
        }
        if (chunkLength + data.byteLength > COALESCE_BYTES) await flush();
        chunk.set(data, chunkLength);
        chunkLength += data.byteLength;
      };
      await append(header);
      for (const p of planned) {
        const data = p.entry.data ?? (await p.entry.read!());
        checkBytes(data, p.byteLength, p.entry.name, file);
        await append(data);
      }
      await flush();
      return { tensors: planned.length, bytes: position };
    } finally {
      await out.close();
    }
  }, { what: 'writing safetensors failed', mkdir: false });
}
