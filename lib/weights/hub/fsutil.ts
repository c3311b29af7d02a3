/** Small file-system helpers for landing files atomically. */
import * as fs from 'fs';

export { fsyncDir, writeFileAtomic } from '../../fsutil';

/** Size of a file, or undefined when it does not exist (or is not a regular file). */
export async function fileSize(file: string): Promise<number | undefined> {
  try {
    const stat = await fs.promises.stat(file);
    return stat.isFile() ? stat.size : undefined;
  } catch {
    return undefined;
  }
}
