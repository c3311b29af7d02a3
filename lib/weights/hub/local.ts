/** What is present in the local models folder (`roundtrip weights list`). */
import * as fs from 'fs';
import * as path from 'path';
import { formatAmount } from '../../progress';
import { aliasForRepo, MODEL_ALIASES, type ModelAlias } from './aliases';
import { modelsHome } from './config';
import { INCOMPLETE_SUFFIX } from './download';
import { manifestFilesPresent, readManifest } from './manifest';

export interface LocalModel {
  /** Alias or repo id (the folder name when the folder was not made by a pull). */
  name: string;
  dir: string;
  alias?: ModelAlias;
  repo?: string;
  url?: string;
  revision?: string;
  commit?: string;
  /** `complete`: a finished pull with every file present; `partial`: a pull that has not finished; `unknown`: a folder without manifest. */
  status: 'complete' | 'partial' | 'unknown';
  /** Number of regular files (manifest excluded). */
  files: number;
  /** Bytes on disk, partial downloads included. */
  bytes: number;
  /** Number of `.incomplete` partial downloads. */
  incomplete: number;
  /** Commands that can load this model. */
  usedBy: readonly string[];
}

function walk(dir: string, visit: (file: string, size: number) => void): void {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) walk(full, visit);
    else if (entry.isFile()) visit(full, fs.statSync(full).size);
  }
}

/** Scans the models folder (see `modelsHome`). Folders are listed by name; nothing is downloaded or changed. */
export function listLocalModels(options: { env?: NodeJS.ProcessEnv; aliases?: Readonly<Record<string, ModelAlias>> } = {}): LocalModel[] {
  const home = modelsHome(options.env ?? process.env);
  const aliases = options.aliases ?? MODEL_ALIASES;
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(home, { withFileTypes: true });
  } catch {
    return [];
  }
  const models: LocalModel[] = [];
  for (const entry of entries) {
    if (!entry.isDirectory() || entry.name.startsWith('.')) continue;
    const dir = path.join(home, entry.name);
    const manifest = readManifest(dir);
    const name = manifest?.name ?? entry.name;
    const repo = manifest?.repo ?? (entry.name.includes('--') ? entry.name.replace('--', '/') : undefined);
    const alias = aliases[name] ?? (repo ? aliasForRepo(repo, aliases) : undefined);
    let files = 0;
    let bytes = 0;
    let incomplete = 0;
    walk(dir, (file, size) => {
      bytes += size;
      if (file.endsWith(INCOMPLETE_SUFFIX)) incomplete++;
      else if (path.basename(file) !== '.roundtrip-pull.json') files++;
    });
    const status = !manifest ? 'unknown' : manifest.complete && manifestFilesPresent(dir, manifest) ? 'complete' : 'partial';
    models.push({
      name, dir, alias, repo: alias?.kind === 'hub' ? alias.repo : repo, url: manifest?.url, revision: manifest?.revision,
      commit: manifest?.commit, status, files, bytes, incomplete, usedBy: alias?.usedBy ?? [],
    });
  }
  return models.sort((a, b) => a.name.localeCompare(b.name));
}

/** A plain-text table of `listLocalModels()` plus the aliases not pulled yet. */
export function formatModelList(models: readonly LocalModel[], options: { env?: NodeJS.ProcessEnv; aliases?: Readonly<Record<string, ModelAlias>> } = {}): string {
  const aliases = options.aliases ?? MODEL_ALIASES;
  const lines: string[] = [];
  lines.push(`models folder: ${modelsHome(options.env ?? process.env)}`);
  if (models.length === 0) {
    lines.push('nothing pulled yet');
  } else {
    const rows = models.map((m) => [
      m.name,
      formatAmount(m.bytes, 'B'),
      m.status + (m.incomplete ? ` (${m.incomplete} partial file${m.incomplete > 1 ? 's' : ''})` : ''),
      m.commit ? `${m.revision ?? ''}@${m.commit.slice(0, 10)}` : m.revision ?? (m.url ? 'url' : '-'),
      m.usedBy.length ? m.usedBy.join(', ') : '-',
    ]);
    const header = ['NAME', 'SIZE', 'STATUS', 'REVISION', 'USED BY'];
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
    for (const row of [header, ...rows]) lines.push(row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]))).join('  '));
  }
  const present = new Set(models.filter((m) => m.status === 'complete').map((m) => m.alias?.name));
  const missing = Object.keys(aliases).filter((name) => !present.has(name));
  if (missing.length) lines.push(`not pulled: ${missing.join(', ')} (roundtrip weights pull NAME)`);
  return lines.join('\n');
}
