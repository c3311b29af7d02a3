/**
 * Minimal reader for the uncompressed ("stored") zip archives that `torch.save` writes.
 *
 * Only the central directory is read into memory; entry contents are read on demand with positioned
 * `fs.read` calls, so multi-gigabyte checkpoints never have to fit in memory. ZIP64 records are honoured
 * (real checkpoints exceed 4 GiB). Every offset and size is bounds-checked against the file size, and
 * compressed or encrypted entries are refused: torch never writes them, and inflating is out of scope.
 */
import * as fs from 'fs';
import { RoundtripError } from '../errors';

/** One entry of the archive, as the central directory describes it. */
export interface ZipEntry {
  /** Full name inside the archive, e.g. `archive/data/0`. */
  readonly name: string;
  /** Compression method (0 = stored). Only stored entries can be read. */
  readonly method: number;
  /** Byte size of the stored contents. */
  readonly size: number;
  /** Absolute file offset of the entry's first content byte (after its local header). */
  readonly dataOffset: number;
}

const EOCD_SIGNATURE = 0x06054b50;
const ZIP64_LOCATOR_SIGNATURE = 0x07064b50;
const ZIP64_EOCD_SIGNATURE = 0x06064b50;
const CENTRAL_SIGNATURE = 0x02014b50;
const LOCAL_SIGNATURE = 0x04034b50;
const EOCD_MIN_SIZE = 22;
const MAX_COMMENT = 0xffff;
/** Central directories larger than this are refused rather than read into memory. */
const MAX_CENTRAL_DIRECTORY_BYTES = 256 * 1024 * 1024;

/** Reads exactly `length` bytes at `position` from an open file, or throws naming the file. */
export function readExactly(fd: number, file: string, position: number, length: number): Buffer {
  const buffer = Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const n = fs.readSync(fd, buffer, done, length - done, position + done);
    if (n === 0) throw new RoundtripError(`${file}: unexpected end of file reading ${length} bytes at offset ${position}`);
    done += n;
  }
  return buffer;
}

/** Reads exactly `length` bytes at `position` asynchronously (used for tensor data). */
export async function readExactlyAsync(handle: fs.promises.FileHandle, file: string, position: number, length: number, target?: Buffer): Promise<Buffer> {
  const buffer = target ?? Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(buffer, done, length - done, position + done);
    if (bytesRead === 0) throw new RoundtripError(`${file}: unexpected end of file reading ${length} bytes at offset ${position}`);
    done += bytesRead;
  }
  return buffer;
}

/** Converts a little-endian u64 to a number, refusing values beyond 2^53 (no file is that large). */
function u64(buffer: Buffer, offset: number, file: string, what: string): number {
  const value = buffer.readBigUInt64LE(offset);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new RoundtripError(`${file}: zip ${what} ${value} is out of range`);
  return Number(value);
}

/** The archive's table of contents. Entry contents are read separately, by name. */
export class ZipArchive {
  private constructor(
    /** The archive's path, used in every error message. */
    readonly file: string,
    /** Total file size in bytes. */
    readonly fileSize: number,
    private readonly byName: Map<string, ZipEntry>,
  ) {}

  /** Every entry, in central-directory order. */
  get entries(): ZipEntry[] {
    return [...this.byName.values()];
  }

  /** The entry with exactly this name, or undefined. */
  find(name: string): ZipEntry | undefined {
    return this.byName.get(name);
  }

  /** The entry with exactly this name; throws naming the archive and the entry when absent. */
  entry(name: string): ZipEntry {
    const found = this.byName.get(name);
    if (!found) throw new RoundtripError(`${this.file}: zip archive has no entry "${name}"`);
    return found;
  }

  /** Throws unless the entry can be read as raw bytes (stored, uncompressed). */
  checkReadable(entry: ZipEntry): void {
    if (entry.method !== 0) {
      throw new RoundtripError(
        `${this.file}: zip entry "${entry.name}" is compressed (method ${entry.method}); expected a stored (uncompressed) entry as torch.save writes`,
      );
    }
  }

  /** Reads a whole (small) entry into memory, refusing entries larger than `maxBytes`. */
  readEntry(name: string, maxBytes = 1 << 30): Buffer {
    const entry = this.entry(name);
    this.checkReadable(entry);
    if (entry.size > maxBytes) {
      throw new RoundtripError(`${this.file}: zip entry "${name}" is ${entry.size} bytes; expected at most ${maxBytes}`);
    }
    const fd = fs.openSync(this.file, 'r');
    try {
      return readExactly(fd, this.file, entry.dataOffset, entry.size);
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Opens and indexes an archive: reads the end records and the central directory, checks every entry. */
  static open(file: string): ZipArchive {
    const fd = fs.openSync(file, 'r');
    try {
      return ZipArchive.index(fd, file);
    } finally {
      fs.closeSync(fd);
    }
  }

  private static index(fd: number, file: string): ZipArchive {
    const fileSize = fs.fstatSync(fd).size;
    if (fileSize < EOCD_MIN_SIZE) throw new RoundtripError(`${file}: not a zip archive (${fileSize} bytes, too short for an end-of-central-directory record)`);

    // The end record sits in the last 22 + up to 65535 comment bytes; search backwards for its signature.
    const tailLength = Math.min(fileSize, EOCD_MIN_SIZE + MAX_COMMENT);
    const tailStart = fileSize - tailLength;
    const tail = readExactly(fd, file, tailStart, tailLength);
    let eocd = -1;
    for (let i = tailLength - EOCD_MIN_SIZE; i >= 0; i--) {
      if (tail.readUInt32LE(i) === EOCD_SIGNATURE && i + EOCD_MIN_SIZE + tail.readUInt16LE(i + 20) <= tailLength) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) {
      throw new RoundtripError(`${file}: zip end-of-central-directory record not found (the file is truncated or not a zip archive)`);
    }
    const eocdOffset = tailStart + eocd;
    let entryCount = tail.readUInt16LE(eocd + 10);
    let cdSize = tail.readUInt32LE(eocd + 12);
    let cdOffset = tail.readUInt32LE(eocd + 16);
    let cdLimit = eocdOffset;

    if (eocdOffset >= 20) {
      const locator = readExactly(fd, file, eocdOffset - 20, 20);
      if (locator.readUInt32LE(0) === ZIP64_LOCATOR_SIGNATURE) {
        const zip64Offset = u64(locator, 8, file, 'ZIP64 end record offset');
        if (zip64Offset + 56 > eocdOffset - 20) throw new RoundtripError(`${file}: ZIP64 end record offset ${zip64Offset} is out of bounds`);
        const record = readExactly(fd, file, zip64Offset, 56);
        if (record.readUInt32LE(0) !== ZIP64_EOCD_SIGNATURE) throw new RoundtripError(`${file}: ZIP64 end record signature missing at offset ${zip64Offset}`);
        entryCount = u64(record, 32, file, 'entry count');
        cdSize = u64(record, 40, file, 'central directory size');
        cdOffset = u64(record, 48, file, 'central directory offset');
        cdLimit = zip64Offset;
      }
    }
    if (cdOffset + cdSize > cdLimit) {
      throw new RoundtripError(`${file}: zip central directory (offset ${cdOffset}, ${cdSize} bytes) runs past its end record at ${cdLimit}`);
    }
    if (cdSize > MAX_CENTRAL_DIRECTORY_BYTES) throw new RoundtripError(`${file}: zip central directory is ${cdSize} bytes; expected at most ${MAX_CENTRAL_DIRECTORY_BYTES}`);

    const cd = readExactly(fd, file, cdOffset, cdSize);
    const byName = new Map<string, ZipEntry>();
    let pos = 0;
    for (let index = 0; index < entryCount; index++) {
      if (pos + 46 > cdSize || cd.readUInt32LE(pos) !== CENTRAL_SIGNATURE) {
        throw new RoundtripError(`${file}: zip central directory entry ${index} is malformed (at directory byte ${pos})`);
      }
      const flags = cd.readUInt16LE(pos + 8);
      const method = cd.readUInt16LE(pos + 10);
      let compressedSize = cd.readUInt32LE(pos + 20);
      let size = cd.readUInt32LE(pos + 24);
      const nameLength = cd.readUInt16LE(pos + 28);
      const extraLength = cd.readUInt16LE(pos + 30);
      const commentLength = cd.readUInt16LE(pos + 32);
      let localOffset = cd.readUInt32LE(pos + 42);
      const end = pos + 46 + nameLength + extraLength + commentLength;
      if (end > cdSize) throw new RoundtripError(`${file}: zip central directory entry ${index} runs past the directory`);
      const name = cd.toString('utf8', pos + 46, pos + 46 + nameLength);

      // ZIP64 extended information: only the fields whose 32-bit value is saturated are present, in this order.
      let extra = pos + 46 + nameLength;
      const extraEnd = extra + extraLength;
      while (extra + 4 <= extraEnd) {
        const id = cd.readUInt16LE(extra);
        const length = cd.readUInt16LE(extra + 2);
        if (extra + 4 + length > extraEnd) throw new RoundtripError(`${file}: zip entry "${name}" has a malformed extra field`);
        if (id === 0x0001) {
          let field = extra + 4;
          const take = (what: string): number => {
            if (field + 8 > extra + 4 + length) throw new RoundtripError(`${file}: zip entry "${name}" ZIP64 field lacks its ${what}`);
            const value = u64(cd, field, file, what);
            field += 8;
            return value;
          };
          if (size === 0xffffffff) size = take('size');
          if (compressedSize === 0xffffffff) compressedSize = take('compressed size');
          if (localOffset === 0xffffffff) localOffset = take('local header offset');
        }
        extra += 4 + length;
      }
      pos = end;

      if (flags & 0x1) throw new RoundtripError(`${file}: zip entry "${name}" is encrypted; expected a plain torch.save archive`);
      if (method === 0 && compressedSize !== size) {
        throw new RoundtripError(`${file}: zip entry "${name}" is stored but its sizes differ (${compressedSize} vs ${size} bytes)`);
      }
      if (localOffset + 30 > cdOffset) throw new RoundtripError(`${file}: zip entry "${name}" local header offset ${localOffset} is out of bounds`);
      const local = readExactly(fd, file, localOffset, 30);
      if (local.readUInt32LE(0) !== LOCAL_SIGNATURE) throw new RoundtripError(`${file}: zip entry "${name}" has no local header at offset ${localOffset}`);
      const dataOffset = localOffset + 30 + local.readUInt16LE(26) + local.readUInt16LE(28);
      if (dataOffset + compressedSize > cdOffset) {
        throw new RoundtripError(`${file}: zip entry "${name}" (${compressedSize} bytes at offset ${dataOffset}) runs past the archive data`);
      }
      if (byName.has(name)) throw new RoundtripError(`${file}: zip archive has two entries named "${name}"`);
      byName.set(name, { name, method, size: method === 0 ? size : compressedSize, dataOffset });
    }
    return new ZipArchive(file, fileSize, byName);
  }
}

/** True when the buffer starts like a zip archive (a local file header). */
export function looksLikeZip(head: Buffer): boolean {
  return head.length >= 4 && head.readUInt32LE(0) === LOCAL_SIGNATURE;
}
