/**
 * `.roundtrip-pull.json`: what a pull put in a model folder. It is rewritten (atomically) after
 * every file lands, with `complete: false` until the last one, so an interrupted multi-file pull
 * resumes without re-downloading what already landed, and a finished pull of the same revision
 * can be recognised without fetching any file again.
 */
import * as fs from 'fs';
import * as path from 'path';
import { writeFileAtomic } from './fsutil';

export const MANIFEST_NAME = '.roundtrip-pull.json';

export interface ManifestFile {
  /** Path relative to the model folder (forward slashes). */
  path: string;
  size: number;
  sha256: string;
  /** Git blob sha1 from the tree listing, for non-LFS hub files. */
  gitOid?: string;
}

export interface PullManifest {
  format: 1;
  /** Alias or repo id the folder was pulled as. */
  name: string;
  source: 'hub' | 'url';
  repo?: string;
  url?: string;
  /** Revision asked for (branch, tag or commit). */
  revision?: string;
  /** Commit the revision resolved to (`X-Repo-Commit`). */
  commit?: string;
  variant?: string;
  endpoint?: string;
  complete: boolean;
  files: ManifestFile[];
  /** Safetensors file converted from a downloaded pickle, if any. */
  converted?: ManifestFile;
  updatedAt: string;
}

/** Reads a folder's manifest; undefined when absent or unreadable (a fresh pull rewrites it). */
export function readManifest(dir: string): PullManifest | undefined {
  let text: string;
  try {
    text = fs.readFileSync(path.join(dir, MANIFEST_NAME), 'utf8');
  } catch {
    return undefined;
  }
  try {
    const parsed = JSON.parse(text) as PullManifest;
    if (parsed && parsed.format === 1 && Array.isArray(parsed.files) && typeof parsed.name === 'string') return parsed;
  } catch {
    // Fall through: treat a damaged manifest as missing.
  }
  return undefined;
}

export async function writeManifest(dir: string, manifest: PullManifest): Promise<void> {
  await writeFileAtomic(path.join(dir, MANIFEST_NAME), JSON.stringify({ ...manifest, updatedAt: new Date().toISOString() }, null, 2) + '\n');
}

/** True when every file the manifest lists exists in `dir` with the recorded size. */
export function manifestFilesPresent(dir: string, manifest: PullManifest): boolean {
  const files = manifest.converted ? [...manifest.files, manifest.converted] : manifest.files;
  return files.every((f) => {
    try {
      const stat = fs.statSync(path.join(dir, f.path));
      return stat.isFile() && stat.size === f.size;
    } catch {
      return false;
    }
  });
}
