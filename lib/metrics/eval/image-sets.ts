/**
 * Image folders as evaluation sets: listing (torch-fidelity's default: png/jpg/jpeg, not
 * recursive, sorted by path in code-point order), pairing two folders by file name, and the
 * identity of a set used as a feature-cache key.
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError } from '../../errors';

/** File extensions taken as images (case-insensitive). torch-fidelity's default is png, jpg, jpeg. */
export const IMAGE_EXTENSIONS: readonly string[] = ['png', 'jpg', 'jpeg'];

export interface ImageFile {
  /** Absolute path. */
  path: string;
  /** File name inside the folder. */
  name: string;
  size: number;
  mtimeMs: number;
}

/** Code-point order (Python's `sorted` on str): compare UTF-8 bytes. */
function byCodePoint(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/** The images of a folder (not recursive), sorted by name. Errors name the flag and folder. */
export function listImages(dir: string, flag: string, extensions: readonly string[] = IMAGE_EXTENSIONS): ImageFile[] {
  let entries: fs.Dirent[];
  try {
    if (!fs.statSync(dir).isDirectory()) throw new RoundtripError(`${flag}: ${dir} is not a folder`);
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    if (err instanceof RoundtripError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new RoundtripError(`${flag}: cannot read folder ${dir}: ${code === 'ENOENT' ? 'it does not exist' : (err as Error).message}`);
  }
  const exts = new Set(extensions.map((e) => e.toLowerCase()));
  const files: ImageFile[] = [];
  for (const e of entries) {
    if (!e.isFile() && !e.isSymbolicLink()) continue;
    const ext = path.extname(e.name).slice(1).toLowerCase();
    if (!exts.has(ext)) continue;
    const full = path.resolve(dir, e.name);
    const st = fs.statSync(full);
    if (!st.isFile()) continue;
    files.push({ path: full, name: e.name, size: st.size, mtimeMs: st.mtimeMs });
  }
  if (files.length === 0) throw new RoundtripError(`${flag}: no images (${extensions.join(', ')}) in ${dir}`);
  return files.sort((a, b) => byCodePoint(a.name, b.name));
}

/**
 * Pairs every generated image with the reference image of the same file name. Generated images
 * without a partner are an error naming them; unpaired reference images are ignored.
 */
export function pairByName(generated: readonly ImageFile[], reference: readonly ImageFile[]): { generated: ImageFile; reference: ImageFile }[] {
  const refs = new Map(reference.map((f) => [f.name, f]));
  const missing = generated.filter((f) => !refs.has(f.name)).map((f) => f.name);
  if (missing.length > 0) {
    throw new RoundtripError(
      `paired metrics (clip, dino) need a reference image with the same file name as each generated image; ${missing.length} have none: ${missing
        .slice(0, 5)
        .join(', ')}${missing.length > 5 ? ', …' : ''}`,
    );
  }
  return generated.map((g) => ({ generated: g, reference: refs.get(g.name)! }));
}

/**
 * Cache key of the features of an image set under a model: sha256 over the sorted file names,
 * sizes and modification times, the model id and the feature name. Any added, removed, renamed,
 * resized or rewritten file changes it.
 */
export function imageSetKey(files: readonly ImageFile[], modelId: string, feature: string): string {
  const h = createHash('sha256');
  h.update(JSON.stringify({ modelId, feature, version: 1 }));
  for (const f of [...files].sort((a, b) => byCodePoint(a.name, b.name))) h.update(`\n${f.name}\t${f.size}\t${Math.round(f.mtimeMs)}`);
  return h.digest('hex');
}
