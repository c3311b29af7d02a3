/**
 * Reads saved reranking runs (one folder per run or shard: run.json + results.jsonl) and merges
 * them: every folder must hold the same settings (shards of one run), and an item present in two
 * folders must be the same item. Image paths become absolute so reports can live anywhere.
 */
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError } from '../errors';
import { readJsonLines } from '../rerank/jsonl';
import { MANIFEST_FILE, RESULTS_FILE } from '../rerank/run';
import { ItemRecord, RunManifest, RunSettings } from '../rerank/types';

export interface LoadedRuns {
  settings: RunSettings;
  /** The folders read, with the shard each holds. */
  sources: { dir: string; shard: { index: number; count: number }; items: number }[];
  /** Records of every folder, by dataset index; candidate image paths are absolute. */
  records: ItemRecord[];
}

function settingsKey(s: RunSettings): string {
  return JSON.stringify(s);
}

/** Loads and merges run folders. */
export function loadRuns(dirs: readonly string[]): LoadedRuns {
  if (!Array.isArray(dirs) || dirs.length === 0) throw new RoundtripError('report: give at least one run folder');
  let settings: RunSettings | undefined;
  const sources: LoadedRuns['sources'] = [];
  const byIndex = new Map<number, ItemRecord>();
  for (const d of dirs) {
    const dir = path.resolve(d);
    const manifestFile = path.join(dir, MANIFEST_FILE);
    if (!fs.existsSync(manifestFile)) throw new RoundtripError(`${dir}: not a rerank output folder (no ${MANIFEST_FILE})`);
    let manifest: RunManifest;
    try {
      manifest = JSON.parse(fs.readFileSync(manifestFile, 'utf8')) as RunManifest;
    } catch (err) {
      throw new RoundtripError(`${manifestFile}: not valid JSON (${(err as Error).message})`);
    }
    if (!settings) settings = manifest.settings;
    else if (settingsKey(settings) !== settingsKey(manifest.settings)) {
      throw new RoundtripError(`${dir}: its settings (${MANIFEST_FILE}) differ from ${sources[0].dir}'s; only shards of one run can be merged`);
    }
    const records = readJsonLines<ItemRecord>(path.join(dir, RESULTS_FILE));
    for (const r of records) {
      const rec: ItemRecord = { ...r, candidates: r.candidates.map((c) => ({ ...c, image: path.resolve(dir, c.image) })) };
      const prev = byIndex.get(r.index);
      if (prev && prev.id !== r.id) throw new RoundtripError(`${dir}: item ${r.index} is ${r.id}, but another folder holds ${prev.id} at that index`);
      byIndex.set(r.index, rec);
    }
    sources.push({ dir, shard: manifest.shard, items: records.length });
  }
  const records = [...byIndex.values()].sort((a, b) => a.index - b.index);
  if (records.length === 0) throw new RoundtripError(`report: no finished item in ${dirs.join(', ')}`);
  return { settings: settings!, sources, records };
}
