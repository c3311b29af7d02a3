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

/** Writes `data` to `target` atomically (creating the folder). Errors name the target. */
export async function writeFileAtomic(target: string, data: string | Uint8Array): Promise<void> {
  const dir = path.dirname(path.resolve(target));
  const temp = tempName(target);
  let handle: fs.promises.FileHandle | undefined;
  try {
    await fs.promises.mkdir(dir, { recursive: true });
    handle = await fs.promises.open(temp, 'wx');
    await handle.writeFile(data);
    await handle.sync();
    await handle.close();
    handle = undefined;
    await fs.promises.rename(temp, target);
  } catch (err) {
    if (handle) await handle.close().catch(() => undefined);
    await fs.promises.rm(temp, { force: true }).catch(() => undefined);
    throw new RoundtripError(`${target}: cannot write file: ${(err as Error).message}`);
  }
  await fsyncDir(dir);
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
