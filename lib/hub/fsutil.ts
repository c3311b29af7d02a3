/** Small file-system helpers for landing files atomically. */
import * as fs from 'fs';
import * as path from 'path';

/** Flushes a directory entry (a rename) to disk; some file systems refuse, which is harmless. */
export async function fsyncDir(dir: string): Promise<void> {
  let handle: fs.promises.FileHandle | undefined;
  try {
    handle = await fs.promises.open(dir, 'r');
    await handle.sync();
  } catch {
    // Directories cannot be opened for fsync on every platform (e.g. Windows); the rename still happened.
  } finally {
    await handle?.close().catch(() => undefined);
  }
}

/** Writes `data` to `target` through a temporary sibling + fsync + rename, so readers never see half a file. */
export async function writeFileAtomic(target: string, data: string | Uint8Array): Promise<void> {
  const dir = path.dirname(target);
  await fs.promises.mkdir(dir, { recursive: true });
  const temp = path.join(dir, `.${path.basename(target)}.${process.pid}.${Date.now()}.tmp`);
  const handle = await fs.promises.open(temp, 'w');
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await fs.promises.rename(temp, target);
  } catch (err) {
    await fs.promises.rm(temp, { force: true });
    throw err;
  }
  await fsyncDir(dir);
}

/** Size of a file, or undefined when it does not exist (or is not a regular file). */
export async function fileSize(file: string): Promise<number | undefined> {
  try {
    const stat = await fs.promises.stat(file);
    return stat.isFile() ? stat.size : undefined;
  } catch {
    return undefined;
  }
}
