/**
 * Reader for PyTorch `torch.save` files (`.pt`, `.pth`, `.bin`, `.ckpt`) without Python and without executing
 * anything: the zip format of torch >= 1.6 (any top folder, little- or big-endian records) and the legacy
 * pre-1.6 stream format. The pickled object goes through the restricted VM of `pickle.ts`; tensors come back
 * as `TorchTensor` descriptors whose bytes are read lazily, so a multi-gigabyte checkpoint costs only its
 * pickle in memory. Every storage reference and tensor extent is checked when the file is opened, so a file
 * that is refused is refused as a whole, before any tensor is handed out.
 */
import * as fs from 'fs';
import { constants as bufferConstants } from 'buffer';
import { RoundtripError } from '../errors';
import { PyDict, PyGlobal, PyValue, TorchDtype, isTuple, unpickle, PickleTruncatedError } from './pickle';
import { ZipArchive, looksLikeZip, readExactly, readExactlyAsync } from './zip';

/** Bytes per element of every safetensors dtype this reader produces or the writer accepts. */
export const DTYPE_SIZES: Readonly<Record<string, number>> = {
  F64: 8, I64: 8, U64: 8,
  F32: 4, I32: 4, U32: 4,
  F16: 2, BF16: 2, I16: 2, U16: 2,
  I8: 1, U8: 1, BOOL: 1, F8_E4M3: 1, F8_E5M2: 1,
};

const MAX_BUFFER_BYTES = bufferConstants.MAX_LENGTH;

/** One storage record: a run of bytes in the file that tensors view. */
export interface TorchStorage {
  /** The storage key (zip: `data/<key>`; legacy: the pickled key). */
  readonly key: string;
  /** Element dtype of the storage class (U8 for the untyped byte storage of `_rebuild_tensor_v3`). */
  readonly dtype: string;
  /** Number of elements (bytes for the untyped storage). */
  readonly numel: number;
  /** `cpu`, `cuda:0`, …: recorded, ignored. */
  readonly location: string;
  /** Absolute file offset of element 0 and the bytes available from there. */
  readonly fileOffset: number;
  readonly byteLength: number;
}

/** A tensor of a checkpoint: its view parameters (in elements) and a lazy reader of its values. */
export class TorchTensor {
  constructor(
    /** The file it comes from. */
    readonly file: string,
    /** Safetensors dtype name (F32, F16, BF16, F64, I64, …, F8_E4M3, F8_E5M2, U16). */
    readonly dtype: string,
    readonly shape: readonly number[],
    readonly stride: readonly number[],
    /** Offset of element 0 in the storage, in elements of `dtype`. */
    readonly storageOffset: number,
    readonly storage: TorchStorage,
    /** Whether the records are big-endian (read values are byte-swapped to little-endian). */
    readonly bigEndian: boolean,
    readonly requiresGrad: boolean = false,
    /** True for an `nn.Parameter` (`_rebuild_parameter`). */
    readonly isParameter: boolean = false,
  ) {}

  /** Number of elements (product of the shape; 1 for a 0-d tensor). */
  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  /** Bytes of the contiguous little-endian values. */
  get byteLength(): number {
    return this.numel * DTYPE_SIZES[this.dtype];
  }

  /** A copy with other parameter flags (used by `_rebuild_parameter`). */
  withGrad(requiresGrad: boolean, isParameter: boolean): TorchTensor {
    return new TorchTensor(this.file, this.dtype, this.shape, this.stride, this.storageOffset, this.storage, this.bigEndian, requiresGrad, isParameter);
  }

  /**
   * Reads the values as contiguous row-major little-endian bytes: only the span of the storage the view
   * touches is read, then gathered when the strides are not the row-major ones.
   * @param handle an open handle of `file` to read through (saves an open per tensor when reading many).
   */
  async readContiguous(handle?: fs.promises.FileHandle): Promise<Buffer> {
    const { position, spanBytes } = this.span();
    if (spanBytes === 0) return Buffer.alloc(0);
    let span: Buffer;
    if (handle) {
      span = await readExactlyAsync(handle, this.file, position, spanBytes);
    } else {
      const own = await fs.promises.open(this.file, 'r');
      try {
        span = await readExactlyAsync(own, this.file, position, spanBytes);
      } finally {
        await own.close();
      }
    }
    return this.finish(span);
  }

  /** `readContiguous` without the event loop, for small tensors read where an API is synchronous (bridge files). */
  readContiguousSync(): Buffer {
    const { position, spanBytes } = this.span();
    if (spanBytes === 0) return Buffer.alloc(0);
    const fd = fs.openSync(this.file, 'r');
    try {
      return this.finish(readExactly(fd, this.file, position, spanBytes));
    } finally {
      fs.closeSync(fd);
    }
  }

  /** File position and byte length of the storage span the view touches (0 bytes for an empty tensor). */
  private span(): { position: number; spanBytes: number } {
    const elementSize = DTYPE_SIZES[this.dtype];
    const count = this.numel;
    if (count === 0) return { position: 0, spanBytes: 0 };
    if (count * elementSize > MAX_BUFFER_BYTES) {
      throw new RoundtripError(`${this.file}: a ${this.dtype} tensor of shape [${this.shape}] is too large to read into one buffer (${count * elementSize} bytes)`);
    }
    let last = 0;
    for (let d = 0; d < this.shape.length; d++) last += (this.shape[d] - 1) * this.stride[d];
    return { position: this.storage.fileOffset + this.storageOffset * elementSize, spanBytes: (last + 1) * elementSize };
  }

  private finish(span: Buffer): Buffer {
    const elementSize = DTYPE_SIZES[this.dtype];
    if (this.bigEndian && elementSize > 1) swapBytes(span, elementSize);
    if (isRowMajor(this.shape, this.stride)) return span;
    return gather(span, this.shape, this.stride, elementSize);
  }
}

/** True when the strides are the C-contiguous ones (dimensions of size 1 may carry any stride). */
function isRowMajor(shape: readonly number[], stride: readonly number[]): boolean {
  let expected = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    if (shape[d] !== 1 && stride[d] !== expected) return false;
    expected *= shape[d];
  }
  return true;
}

/** Copies a strided view out of `span` (its element 0 at byte 0) into a row-major buffer. */
function gather(span: Buffer, shape: readonly number[], stride: readonly number[], elementSize: number): Buffer {
  const rank = shape.length;
  const total = shape.reduce((a, b) => a * b, 1);
  const out = Buffer.allocUnsafe(total * elementSize);
  const innerSize = shape[rank - 1];
  const innerStrideBytes = stride[rank - 1] * elementSize;
  const index = new Array<number>(rank - 1).fill(0);
  let outPos = 0;
  let base = 0; // element offset of the current inner row
  for (let row = 0, rows = total / innerSize; row < rows; row++) {
    let src = base * elementSize;
    if (innerStrideBytes === elementSize) {
      span.copy(out, outPos, src, src + innerSize * elementSize);
      outPos += innerSize * elementSize;
    } else {
      for (let i = 0; i < innerSize; i++, src += innerStrideBytes) {
        for (let b = 0; b < elementSize; b++) out[outPos++] = span[src + b];
      }
    }
    // Advance the outer odometer.
    for (let d = rank - 2; d >= 0; d--) {
      base += stride[d];
      if (++index[d] < shape[d]) break;
      base -= stride[d] * shape[d];
      index[d] = 0;
    }
  }
  return out;
}

/** Reverses the bytes of every element in place (big-endian records → little-endian). */
function swapBytes(buffer: Buffer, elementSize: number): void {
  if (elementSize === 2) buffer.swap16();
  else if (elementSize === 4) buffer.swap32();
  else if (elementSize === 8) buffer.swap64();
}

/** A parsed checkpoint: the unpickled object with tensors in place, and what it was read from. */
export interface TorchFile {
  readonly path: string;
  /** `zip` (torch >= 1.6) or `legacy` (pre-1.6 stream of pickles). */
  readonly format: 'zip' | 'legacy';
  /** The zip top folder (`archive`, `checkpoint_best`, …); empty for legacy files. */
  readonly prefix: string;
  readonly bigEndian: boolean;
  /** The object `torch.load` would return, with `TorchTensor`s for tensors. */
  readonly value: PyValue;
  /** Every storage that some tensor references, by key. */
  readonly storages: ReadonlyMap<string, TorchStorage>;
}

const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;
const LEGACY_PROTOCOL = 1001;
/** data.pkl larger than this is refused: real state-dict pickles are a few megabytes. */
const MAX_PICKLE_BYTES = 1 << 30;

interface PendingStorage {
  key: string;
  dtype: string;
  numel: number;
  location: string;
}

/** What a persistent id unpickles to: a storage, or (legacy format) a view into one at an element offset. */
class StorageRef {
  constructor(readonly storage: PendingStorage, readonly viewOffset: number) {}
}

/** Checks that a pickled value is a non-negative integer; names the file and what was being read. */
function nonNegativeInt(file: string, what: string, value: PyValue): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
    throw new RoundtripError(`${file}: ${what}: expected a non-negative integer, got ${describeValue(value)}`);
  }
  return value;
}

function intList(file: string, what: string, value: PyValue): number[] {
  if (!Array.isArray(value)) throw new RoundtripError(`${file}: ${what}: expected a tuple of integers, got ${describeValue(value)}`);
  return (value as PyValue[]).map((v, i) => nonNegativeInt(file, `${what}[${i}]`, v));
}

function describeValue(value: PyValue): string {
  if (value === null) return 'None';
  if (Array.isArray(value)) return `${isTuple(value) ? 'tuple' : 'list'} of length ${value.length}`;
  if (typeof value === 'object') return (value as object).constructor?.name ?? 'object';
  return `${typeof value} ${String(value)}`;
}

/**
 * Builds the pickle callbacks shared by both formats: persistent ids become pending storages, the rebuild
 * functions become `TorchTensor`s. Extents are validated after the pickle ran, when record sizes are known.
 */
function tensorBuilder(file: string, bigEndian: () => boolean) {
  const storages = new Map<string, PendingStorage>();
  const tensors = new Set<TorchTensor>();
  const placeholders = new Map<PendingStorage, TorchStorage>();

  const persistentLoad = (pid: PyValue): PyValue => {
    if (!isTuple(pid) || pid.length < 5 || pid[0] !== 'storage') {
      throw new RoundtripError(`${file}: persistent id: expected ('storage', class, key, location, numel), got ${describeValue(pid)}`);
    }
    const [, storageClass, key, location, numelValue] = pid;
    if (!(storageClass instanceof PyGlobal) || storageClass.kind !== 'storage') {
      throw new RoundtripError(`${file}: persistent id: expected a torch storage class, got ${describeValue(storageClass)}`);
    }
    if (typeof key !== 'string' || typeof location !== 'string') {
      throw new RoundtripError(`${file}: persistent id: storage key and location must be strings`);
    }
    const numel = nonNegativeInt(file, `storage ${key} numel`, numelValue);
    let viewOffset = 0;
    const viewMetadata = pid.length > 5 ? pid[5] : null;
    if (viewMetadata !== null) {
      // Legacy storage views: (view_key, offset, view_size) into the root storage `key`.
      if (!isTuple(viewMetadata) || viewMetadata.length !== 3) throw new RoundtripError(`${file}: storage ${key}: malformed view metadata`);
      viewOffset = nonNegativeInt(file, `storage ${key} view offset`, viewMetadata[1]);
      const viewSize = nonNegativeInt(file, `storage ${key} view size`, viewMetadata[2]);
      if (viewOffset + viewSize > numel) throw new RoundtripError(`${file}: storage ${key}: view [${viewOffset}, +${viewSize}) exceeds its ${numel} elements`);
    }
    const existing = storages.get(key);
    if (existing && (existing.dtype !== storageClass.storageDtype || existing.numel !== numel)) {
      throw new RoundtripError(`${file}: storage ${key} is referenced with two different types or sizes`);
    }
    const storage = existing ?? { key, dtype: storageClass.storageDtype as string, numel, location };
    storages.set(key, storage);
    return new StorageRef(storage, viewOffset);
  };

  const tensorHook = (callable: PyGlobal, args: readonly PyValue[]): PyValue => {
    const name = `${callable.module}.${callable.name}`;
    if (callable.kind === 'rebuild_parameter' || callable.kind === 'rebuild_parameter_with_state') {
      const [data, requiresGrad] = args;
      if (!(data instanceof TorchTensor) || typeof requiresGrad !== 'boolean' || args.length < 3) {
        throw new RoundtripError(`${file}: ${name}: expected (tensor, requires_grad, hooks${callable.kind === 'rebuild_parameter_with_state' ? ', state' : ''})`);
      }
      const parameter = data.withGrad(requiresGrad, true);
      tensors.delete(data);
      tensors.add(parameter);
      return parameter;
    }
    const v3 = callable.kind === 'rebuild_tensor_v3';
    if (args.length < (v3 ? 7 : 6)) throw new RoundtripError(`${file}: ${name}: expected at least ${v3 ? 7 : 6} arguments, got ${args.length}`);
    const [ref, offsetValue, sizeValue, strideValue, requiresGrad] = args;
    if (!(ref instanceof StorageRef)) throw new RoundtripError(`${file}: ${name}: first argument is not a storage from a persistent id`);
    const pending = ref.storage;
    let dtype = pending.dtype;
    if (v3) {
      const dtypeValue = args[6];
      if (!(dtypeValue instanceof TorchDtype) || dtypeValue.safetensors === null || !(dtypeValue.safetensors in DTYPE_SIZES)) {
        throw new RoundtripError(`${file}: ${name}: unsupported tensor dtype ${dtypeValue instanceof TorchDtype ? 'torch.' + dtypeValue.name : describeValue(dtypeValue)}`);
      }
      if (pending.dtype !== 'U8') throw new RoundtripError(`${file}: ${name}: expected an UntypedStorage, got a ${pending.dtype} storage`);
      dtype = dtypeValue.safetensors;
    }
    const shape = intList(file, `${name} size`, sizeValue);
    const stride = intList(file, `${name} stride`, strideValue);
    if (shape.length !== stride.length) throw new RoundtripError(`${file}: ${name}: size has ${shape.length} dimensions but stride has ${stride.length}`);
    const offset = nonNegativeInt(file, `${name} storage_offset`, offsetValue) + ref.viewOffset;
    // The TorchStorage is filled in once record sizes are known; the tensor holds the final object.
    let final = placeholders.get(pending);
    if (!final) {
      final = { key: pending.key, dtype: pending.dtype, numel: pending.numel, location: pending.location, fileOffset: -1, byteLength: -1 };
      placeholders.set(pending, final);
    }
    const tensor = new TorchTensor(file, dtype, shape, stride, offset, final, bigEndian(), requiresGrad === true);
    tensors.add(tensor);
    return tensor;
  };

  /** Fills in storage locations and checks every tensor's extent against its storage and record. */
  const finish = (locate: (storage: PendingStorage) => { fileOffset: number; byteLength: number }): Map<string, TorchStorage> => {
    const result = new Map<string, TorchStorage>();
    // Every persistent id must have its record, even one that no tensor views (torch.load fails on those too).
    for (const pending of storages.values()) {
      if (!placeholders.has(pending)) {
        placeholders.set(pending, { key: pending.key, dtype: pending.dtype, numel: pending.numel, location: pending.location, fileOffset: -1, byteLength: -1 });
      }
    }
    for (const [pending, final] of placeholders) {
      const { fileOffset, byteLength } = locate(pending);
      const needed = pending.numel * DTYPE_SIZES[pending.dtype];
      if (byteLength < needed) {
        throw new RoundtripError(
          `${file}: storage ${pending.key} record holds ${byteLength} bytes; expected ${needed} (${pending.numel} ${pending.dtype} elements)`,
        );
      }
      Object.assign(final as { fileOffset: number; byteLength: number }, { fileOffset, byteLength: needed });
      result.set(pending.key, final);
    }
    for (const tensor of tensors) {
      const elementSize = DTYPE_SIZES[tensor.dtype];
      if (!Number.isSafeInteger(tensor.numel * elementSize)) {
        throw new RoundtripError(`${file}: a ${tensor.dtype} tensor has an impossible shape [${tensor.shape}]`);
      }
      if (tensor.numel === 0) continue;
      let last = tensor.storageOffset;
      for (let d = 0; d < tensor.shape.length; d++) last += (tensor.shape[d] - 1) * tensor.stride[d];
      if ((last + 1) * elementSize > tensor.storage.byteLength) {
        throw new RoundtripError(
          `${file}: a ${tensor.dtype} tensor of shape [${tensor.shape}] (offset ${tensor.storageOffset}, stride [${tensor.stride}]) reaches element ${last} but storage ${tensor.storage.key} holds ${tensor.storage.byteLength / elementSize}`,
        );
      }
    }
    return result;
  };

  return { persistentLoad, tensorHook, finish, storages };
}

/**
 * Reads a `torch.save` file. Tensors in the result are lazy (`readContiguous()` reads their bytes).
 * @throws RoundtripError naming the file and the fault: malicious or unsupported pickle content, missing or
 *   short storage records, tensors beyond their storage, truncated or compressed archives, unknown formats.
 */
export async function readTorchFile(path: string): Promise<TorchFile> {
  return readTorchFileSync(path);
}

/** `readTorchFile` for synchronous callers (the whole open is synchronous; only tensor reads may be async). */
export function readTorchFileSync(path: string): TorchFile {
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (err) {
    throw new RoundtripError(`${path}: cannot open checkpoint: ${(err as Error).message}`);
  }
  let head: Buffer;
  let fileSize: number;
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) throw new RoundtripError(`${path}: expected a checkpoint file, got a directory or special file`);
    fileSize = stat.size;
    head = readExactly(fd, path, 0, Math.min(fileSize, 512));
  } finally {
    fs.closeSync(fd);
  }
  if (looksLikeZip(head)) return readZipCheckpoint(path);
  if (head.length >= 3 && head[0] === 0x80 && head[2] === 0x8a) return readLegacyCheckpoint(path, fileSize);
  if (head.length >= 262 && head.toString('latin1', 257, 262) === 'ustar') {
    throw new RoundtripError(`${path}: tar-based checkpoint (torch < 0.4) is not supported; re-save it with a recent torch`);
  }
  // A safetensors file (by name, or by its u64 length + '{' start) with a broken header is reported as that.
  if (/\.safetensors$/i.test(path) || (head.length >= 9 && head[8] === 0x7b)) {
    throw new RoundtripError(`${path}: corrupt safetensors file: ${safetensorsProblem(head, fileSize)}`);
  }
  throw new RoundtripError(`${path}: not a PyTorch checkpoint: expected a zip archive (torch >= 1.6) or the legacy pickle format`);
}

/** Why a would-be safetensors file is unreadable, from its first bytes (the format: u64 LE length, JSON header, data). */
function safetensorsProblem(head: Buffer, fileSize: number): string {
  if (fileSize < 8) return `${fileSize} bytes, shorter than the 8-byte header length`;
  const length = head.readBigUInt64LE(0);
  if (length > BigInt(fileSize - 8)) return `the header length ${length} runs past the end of the file (${fileSize} bytes; truncated?)`;
  if (head.length < 9 || head[8] !== 0x7b) return `the header does not start with '{' (not a safetensors file?)`;
  return 'the JSON header is malformed';
}

function readZipCheckpoint(path: string): TorchFile {
  const archive = ZipArchive.open(path);
  const pickles = archive.entries.filter((e) => e.name === 'data.pkl' || e.name.endsWith('/data.pkl'));
  const pickleEntry = pickles.find((e) => e.name.split('/').length === 2) ?? (pickles.length === 1 ? pickles[0] : undefined);
  if (!pickleEntry || pickles.filter((e) => e.name.split('/').length === 2).length > 1) {
    throw new RoundtripError(`${path}: expected exactly one <top>/data.pkl entry in the archive, found ${pickles.length}`);
  }
  const prefix = pickleEntry.name.slice(0, -'data.pkl'.length);
  const byteorderEntry = archive.find(`${prefix}byteorder`);
  let bigEndian = false;
  if (byteorderEntry) {
    const order = archive.readEntry(byteorderEntry.name, 16).toString('latin1').trim();
    if (order !== 'little' && order !== 'big') throw new RoundtripError(`${path}: byteorder record: expected "little" or "big", got ${JSON.stringify(order)}`);
    bigEndian = order === 'big';
  }
  const data = archive.readEntry(pickleEntry.name, MAX_PICKLE_BYTES);
  const builder = tensorBuilder(path, () => bigEndian);
  const source = `${path} (${pickleEntry.name})`;
  const { value, end } = unpickle(data, { source, persistentLoad: builder.persistentLoad, tensorHook: builder.tensorHook });
  if (end !== data.length) throw new RoundtripError(`${source}: ${data.length - end} unexpected bytes after the pickle's STOP`);
  const storages = builder.finish((storage) => {
    const name = `${prefix}data/${storage.key}`;
    const entry = archive.find(name);
    if (!entry) throw new RoundtripError(`${path}: storage ${storage.key} has no record "${name}" in the archive`);
    archive.checkReadable(entry);
    return { fileOffset: entry.dataOffset, byteLength: entry.size };
  });
  return { path, format: 'zip', prefix: prefix.replace(/\/$/, ''), bigEndian, value, storages };
}

function readLegacyCheckpoint(path: string, fileSize: number): TorchFile {
  const fd = fs.openSync(path, 'r');
  try {
    // The pickles come first; read a growing prefix of the file until they all parse.
    let length = Math.min(fileSize, 1 << 20);
    for (;;) {
      const data = readExactly(fd, path, 0, length);
      try {
        return parseLegacy(path, fd, fileSize, data);
      } catch (err) {
        if (!(err instanceof PickleTruncatedError) || length === fileSize) {
          if (err instanceof PickleTruncatedError) throw new RoundtripError(`${path}: legacy checkpoint is truncated: ${err.message}`);
          throw err;
        }
        if (length >= MAX_PICKLE_BYTES) throw new RoundtripError(`${path}: legacy checkpoint pickles exceed ${MAX_PICKLE_BYTES} bytes`);
        length = Math.min(fileSize, length * 4);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}

function parseLegacy(path: string, fd: number, fileSize: number, data: Buffer): TorchFile {
  const source = `${path} (legacy format)`;
  const magic = unpickle(data, { source: `${source} magic number` });
  if (magic.value !== LEGACY_MAGIC) throw new RoundtripError(`${path}: not a PyTorch checkpoint: the first pickle is not the legacy magic number`);
  const protocol = unpickle(data, { source: `${source} protocol version` }, magic.end);
  if (protocol.value !== LEGACY_PROTOCOL) {
    throw new RoundtripError(`${path}: legacy format protocol version: expected ${LEGACY_PROTOCOL}, got ${String(protocol.value)}`);
  }
  const sysInfo = unpickle(data, { source: `${source} sys_info` }, protocol.end);
  let bigEndian = false;
  if (sysInfo.value instanceof PyDict && sysInfo.value.get('little_endian') === false) bigEndian = true;
  const builder = tensorBuilder(path, () => bigEndian);
  const object = unpickle(data, { source, persistentLoad: builder.persistentLoad, tensorHook: builder.tensorHook }, sysInfo.end);
  const keys = unpickle(data, { source: `${source} storage key list` }, object.end);
  if (!Array.isArray(keys.value) || !(keys.value as PyValue[]).every((k) => typeof k === 'string')) {
    throw new RoundtripError(`${path}: legacy storage key list: expected a list of strings`);
  }
  // Each storage: 8-byte little-endian element count, then the raw bytes, in key-list order.
  const located = new Map<string, { fileOffset: number; byteLength: number }>();
  let offset = keys.end;
  for (const key of keys.value as string[]) {
    const pending = builder.storages.get(key);
    if (!pending) throw new RoundtripError(`${path}: legacy storage key ${key} is not referenced by the pickle`);
    if (offset + 8 > fileSize) throw new RoundtripError(`${path}: legacy storage ${key} header runs past the end of the file`);
    const countBuffer = readExactly(fd, path, offset, 8);
    const count = countBuffer.readBigUInt64LE(0);
    const byteLength = count * BigInt(DTYPE_SIZES[pending.dtype]);
    if (byteLength > BigInt(fileSize - offset - 8)) {
      throw new RoundtripError(`${path}: legacy storage ${key} declares ${count} elements, more than the file holds`);
    }
    located.set(key, { fileOffset: offset + 8, byteLength: Number(byteLength) });
    offset += 8 + Number(byteLength);
  }
  const storages = builder.finish((storage) => {
    const found = located.get(storage.key);
    if (!found) throw new RoundtripError(`${path}: storage ${storage.key} has no record in the legacy file`);
    return found;
  });
  return { path, format: 'legacy', prefix: '', bigEndian, value: object.value, storages };
}

/** The tensors of a state dict, flattened to dotted names, and the non-tensor entries left out. */
export interface StateDict {
  readonly tensors: Map<string, TorchTensor>;
  /** Dotted names of entries that are not tensors (ints, strings, …). */
  readonly skipped: string[];
  /** The wrapper key the state dict was found under (`model`, `state_dict`, …), or null for a plain dict. */
  readonly wrapper: string | null;
  /**
   * What the file holds at the top: a dict (a state dict), a bare tensor (named `BARE_TENSOR_NAME`, e.g. the
   * paper release's `reindex.pth`), or a list/tuple of tensors or dicts (entries named by index: `0`, `1.w`, …).
   */
  readonly top: 'dict' | 'tensor' | 'sequence';
}

/** The name a checkpoint that is one bare tensor gets in its StateDict. */
export const BARE_TENSOR_NAME = 'tensor';

const WRAPPER_KEYS = ['state_dict', 'model', 'module', 'model_state_dict', 'net'];
const MAX_NESTING = 64;

/** Entries a flattening may visit: shared sub-dicts could otherwise make it exponential. */
const MAX_FLATTENED_ENTRIES = 1_000_000;

/** Whether a dict holds a tensor at any depth; memoised per dict, so shared and cyclic dicts cost once. */
function containsTensor(value: PyValue, memo: Map<PyDict, boolean>): boolean {
  if (value instanceof TorchTensor) return true;
  if (!(value instanceof PyDict)) return false;
  const known = memo.get(value);
  if (known !== undefined) return known;
  memo.set(value, false); // a cycle back to this dict adds no tensor
  for (const v of value.values()) {
    if (containsTensor(v, memo)) {
      memo.set(value, true);
      return true;
    }
  }
  return false;
}

/**
 * Finds the tensor dict inside common checkpoint wrappers — `{'model': sd}` (BLIP), `{'state_dict': sd}`
 * (Lightning), a plain dict — and flattens nested dicts to dotted names.
 */
export function stateDictOf(value: PyValue, file = 'checkpoint'): StateDict {
  if (value instanceof TorchTensor) return { tensors: new Map([[BARE_TENSOR_NAME, value]]), skipped: [], wrapper: null, top: 'tensor' };
  if (Array.isArray(value)) {
    // A list/tuple of tensors (or of state dicts): its entries become a dict named by index, as ModuleList keys.
    const asDict = new PyDict('dict');
    value.forEach((v, i) => asDict.set(String(i), v));
    const sd = stateDictOf(asDict, file);
    if (sd.wrapper !== null || !sd.tensors.size) {
      throw new RoundtripError(`${file}: a list/tuple at the top level must hold tensors or dicts of tensors, got ${describeValue(value)}`);
    }
    return { ...sd, top: 'sequence' };
  }
  if (!(value instanceof PyDict)) throw new RoundtripError(`${file}: expected a tensor, a dict of tensors or a list of tensors at the top level, got ${describeValue(value)}`);
  let root: PyDict = value;
  let wrapper: string | null = null;
  // A dict with tensors of its own is the state dict itself (its "model.*" sub-dicts are modules, not wrappers).
  const hasOwnTensors = [...value.values()].some((v) => v instanceof TorchTensor);
  const memo = new Map<PyDict, boolean>();
  for (const key of hasOwnTensors ? [] : WRAPPER_KEYS) {
    const inner = value.get(key);
    if (inner instanceof PyDict && containsTensor(inner, memo)) {
      root = inner;
      wrapper = key;
      break;
    }
  }
  const tensors = new Map<string, TorchTensor>();
  const skipped: string[] = [];
  const onPath = new Set<PyDict>();
  let visited = 0;
  const visit = (dict: PyDict, prefix: string, depth: number): void => {
    if (depth > MAX_NESTING) throw new RoundtripError(`${file}: state dict nests deeper than ${MAX_NESTING} levels`);
    if (onPath.has(dict)) throw new RoundtripError(`${file}: state dict entry "${prefix.slice(0, -1)}" contains itself`);
    onPath.add(dict);
    for (const [key, item] of dict) {
      if (++visited > MAX_FLATTENED_ENTRIES) throw new RoundtripError(`${file}: state dict has more than ${MAX_FLATTENED_ENTRIES} entries`);
      const name = prefix + String(key);
      if (item instanceof TorchTensor) {
        if (tensors.has(name)) throw new RoundtripError(`${file}: state dict has two entries named "${name}"`);
        tensors.set(name, item);
      } else if (item instanceof PyDict && containsTensor(item, memo)) {
        visit(item, name + '.', depth + 1);
      } else {
        skipped.push(name);
      }
    }
    onPath.delete(dict);
  };
  visit(root, '', 0);
  return { tensors, skipped, wrapper, top: 'dict' };
}
