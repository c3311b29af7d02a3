/**
 * Landing files atomically: a temporary sibling, fsync, rename over the target, fsync of the folder.
 * Readers never see half a file, and a failed write leaves an existing target untouched.
 */
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError } from './errors';

function tempName(target: string): string {
  return path.join(path.dirname(path.resolve(target)), `.${path.basename(target)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
}

/** Flushes a folder's entries (a rename) to disk; some file systems refuse, which is harmless. */
export function fsyncDirSync(dir: string): void {
  try {
    const fd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    // Directories cannot be opened for fsync everywhere; the rename has still happened.
  }
}

export async function fsyncDir(dir: string): Promise<void> {
  let handle: fs.promises.FileHandle | undefined;
  try {
    handle = await fs.promises.open(dir, 'r');
    await handle.sync();
  } catch {
    // As above.
  } finally {
    await handle?.close().catch(() => undefined);
  }
}

/** Appends one record as a JSON line and fsyncs it before returning (a crash loses at most the line in flight). */
export function appendJsonLine(file: string, record: unknown): void {
  const fd = fs.openSync(file, 'a');
  try {
    fs.writeSync(fd, JSON.stringify(record) + '\n');
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The one way a file lands: `write(temp)` writes a temporary sibling of `target` (an open handle's worth of work,
 * or a converter that writes a path), then the temporary file is fsynced, renamed over `target` and the folder
 * fsynced. On any error the temporary file is removed and an existing `target` is untouched. `what` names the
 * work in the error ("writing safetensors failed"); `mkdir: false` refuses a missing folder instead of creating it.
 */
export async function landFileAtomic<T>(target: string, write: (temp: string) => Promise<T>, opts: { what?: string; mkdir?: boolean } = {}): Promise<T> {
  const what = opts.what ?? 'cannot write file';
  const dir = path.dirname(path.resolve(target));
  const temp = tempName(target);
  let result: T;
  try {
    if (opts.mkdir !== false) await fs.promises.mkdir(dir, { recursive: true });
    result = await write(temp);
    const handle = await fs.promises.open(temp, 'r+');
    await handle.sync().finally(() => handle.close());
    await fs.promises.rename(temp, target);
  } catch (err) {
    await fs.promises.rm(temp, { force: true }).catch(() => undefined);
    if (err instanceof RoundtripError) throw err;
    throw new RoundtripError(`${target}: ${what}: ${(err as Error).message}`);
  }
  await fsyncDir(dir);
  return result;
}

/** Writes `data` to `target` atomically (creating the folder). Errors name the target. */
export async function writeFileAtomic(target: string, data: string | Uint8Array): Promise<void> {
  await landFileAtomic(target, (temp) => fs.promises.writeFile(temp, data, { flag: 'wx' }));
}

/** Synchronous `writeFileAtomic`; `data` may be several chunks written in order. */
export function writeFileAtomicSync(target: string, data: string | Uint8Array | readonly (string | Uint8Array)[]): void {
  const dir = path.dirname(path.resolve(target));
  const temp = tempName(target);
  try {
    fs.mkdirSync(dir, { recursive: true });
    const fd = fs.openSync(temp, 'wx');
    try {
      for (const part of Array.isArray(data) ? data : [data]) fs.writeSync(fd, part as any);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(temp, target);
  } catch (err) {
    fs.rmSync(temp, { force: true });
    throw new RoundtripError(`${target}: cannot write file: ${(err as Error).message}`);
  }
  fsyncDirSync(dir);
}

/**
 * Builds a folder under a temporary name and renames it into place at the end, so `target` is either the
 * old folder or the complete new one (an interrupted build leaves only a `.tmp-*` folder behind).
 */
export async function writeFolderAtomic(target: string, build: (dir: string) => Promise<void>): Promise<void> {
  const parent = path.dirname(path.resolve(target));
  fs.mkdirSync(parent, { recursive: true });
  const tmp = path.join(parent, `.${path.basename(target)}.tmp-${process.pid}`);
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp);
  try {
    await build(tmp);
  } catch (err) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  const old = path.join(parent, `.${path.basename(target)}.old-${process.pid}`);
  if (fs.existsSync(target)) fs.renameSync(target, old);
  fs.renameSync(tmp, target);
  fs.rmSync(old, { recursive: true, force: true });
  fsyncDirSync(parent);
}

/** File systems that are not storage (statfs f_type): writing "results" there hangs or goes nowhere. */
const SPECIAL_FS: Record<number, string> = {
  0x9fa0: 'proc',
  0x62656572: 'sysfs',
  0x1cd1: 'devpts',
  0x27e0eb: 'cgroup',
  0x63677270: 'cgroup2',
  0x64626720: 'debugfs',
  0x74726163: 'tracefs',
  0x73636673: 'securityfs',
  0x6165676c: 'pstore',
  0xcafe4a11: 'bpf',
  0x62656570: 'configfs',
  0x65735543: 'fusectl',
  0x19800202: 'mqueue',
  0xde5e81e4: 'efivarfs',
  0x42494e4d: 'binfmt_misc',
  0xf97cff8c: 'selinuxfs',
};

function nearestExisting(p: string): string {
  let cur = path.resolve(p);
  while (!fs.existsSync(cur)) {
    const up = path.dirname(cur);
    if (up === cur) break;
    cur = up;
  }
  return cur;
}

function formatBytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) (n /= 1000), i++;
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/**
 * Checks an output folder before any work: it is a folder or can be created, lies on a storage file system
 * (not /proc, /sys, ...), can be written (a probe file is created and removed) and has room for `bytes`.
 * Creates the folder. Errors name the flag, the folder and what to do.
 */
export function checkOutputDir(dir: string, opts: { flag?: string; bytes?: number } = {}): string {
  const flag = opts.flag ?? '--out';
  if (typeof dir !== 'string' || dir === '') throw new RoundtripError(`${flag}: expected a folder path, got ${JSON.stringify(dir)}`);
  const abs = path.resolve(dir);
  const existing = nearestExisting(abs);
  let stat: fs.Stats;
  try {
    stat = fs.statSync(existing);
  } catch (err) {
    throw new RoundtripError(`${flag} ${dir}: cannot inspect ${existing}: ${(err as Error).message}`);
  }
  if (!stat.isDirectory()) {
    throw new RoundtripError(existing === abs ? `${flag} ${dir}: exists and is not a folder; give a folder path` : `${flag} ${dir}: ${existing} is a file, so no folder can be created under it; give another path`);
  }
  try {
    const fsType = SPECIAL_FS[Number(fs.statfsSync(existing).type)];
    if (fsType) throw new RoundtripError(`${flag} ${dir}: ${existing} is on the ${fsType} file system, which does not store files; give a folder on a disk`);
  } catch (err) {
    if (err instanceof RoundtripError) throw err;
  }
  try {
    fs.mkdirSync(abs, { recursive: true });
    const probe = path.join(abs, `.roundtrip-probe-${process.pid}.tmp`);
    fs.writeFileSync(probe, 'x');
    fs.rmSync(probe, { force: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'EACCES' || code === 'EPERM' ? 'permission denied' : code === 'EROFS' ? 'read-only file system' : code === 'ENOSPC' ? 'no space left' : (err as Error).message;
    throw new RoundtripError(`${flag} ${dir}: cannot write there (${why}); give a writable folder`);
  }
  if (opts.bytes !== undefined && opts.bytes > 0) {
    try {
      const s = fs.statfsSync(abs);
      const free = Number(s.bavail) * Number(s.bsize);
      if (free < opts.bytes) throw new RoundtripError(`${flag} ${dir}: about ${formatBytes(opts.bytes)} of output expected, ${formatBytes(free)} free there; free some space or choose another folder`);
    } catch (err) {
      if (err instanceof RoundtripError) throw err;
    }
  }
  return abs;
}

/** `.name.PID.HEX.tmp` files (writeFileAtomic), `.name.tmp-PID` / `.name.old-PID` folders (writeFolderAtomic, checkpoints). */
const TEMP_PATTERN = /^\..+?(?:\.(\d+)\.[0-9a-f]+\.tmp|\.tmp-(\d+)|\.old-(\d+)|-probe-(\d+)\.tmp)$/;

function alive(pid: number): boolean {
  if (pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Removes what interrupted atomic writes left behind in `dir` and its sub-folders (to `depth` levels):
 * temporaries of processes that no longer run. Returns the removed paths (callers print a note).
 */
export function cleanTempLeftovers(dir: string, depth = 2): string[] {
  const removed: string[] = [];
  const walk = (d: string, level: number) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const full = path.join(d, e.name);
      const m = TEMP_PATTERN.exec(e.name);
      if (m) {
        const pid = Number(m[1] ?? m[2] ?? m[3] ?? m[4]);
        if (!alive(pid)) {
          fs.rmSync(full, { recursive: true, force: true });
          removed.push(full);
        }
      } else if (e.isDirectory() && level < depth) walk(full, level + 1);
    }
  };
  walk(dir, 0);
  return removed;
}

/** What a failed write means for a user: disk full, file size limit, quota, or the system's words. */
export function describeWriteError(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  if (/ENOSPC|no space left/i.test(message)) return 'the disk is full';
  if (/EFBIG|file too large/i.test(message)) return 'the file size limit was reached (ulimit -f)';
  if (/EDQUOT|quota/i.test(message)) return 'the disk quota is exceeded';
  if (/EROFS|read-only/i.test(message)) return 'the file system is read-only';
  return message;
}
