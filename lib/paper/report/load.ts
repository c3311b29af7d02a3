/**
 * Reads saved reranking runs (one folder per run or shard: run.json + results.jsonl) and merges
 * them: every folder must hold the same settings (shards of one run), and an item present in two
 * folders must be the same item. Image paths become absolute so reports can live anywhere.
 */
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError, invalid } from '../../errors';
import { readJsonFile, readJsonLines } from '../../json';
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
    const manifest = readJsonFile(manifestFile, { what: 'rerank manifest', object: true }) as RunManifest;
    if (!settings) settings = manifest.settings;
    else if (settingsKey(settings) !== settingsKey(manifest.settings)) {
      throw new RoundtripError(`${dir}: its settings (${MANIFEST_FILE}) differ from ${sources[0].dir}'s; only shards of one run can be merged`);
    }
    const records = readJsonLines<ItemRecord>(path.join(dir, RESULTS_FILE));
    records.forEach((r, k) => checkRecord(r, `${path.join(dir, RESULTS_FILE)} record ${k + 1}`));
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

/** Checks the shape of one results.jsonl record, so a damaged file is named instead of failing deep in the report. */
export function checkRecord(r: unknown, where: string): asserts r is ItemRecord {
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  const bad = (what: string, v: unknown) => invalid(`${where}: ${what}`, what === 'record' ? 'an object' : expected[what] ?? 'a valid value', v);
  const expected: Record<string, string> = {
    index: 'an integer >= 0',
    id: 'a string',
    references: 'an array of strings',
    candidates: 'an array of candidate objects',
    winner: 'an object of candidate indices',
    baseline: 'an array of candidate indices',
  };
  if (!isObj(r)) throw bad('record', r);
  if (!Number.isInteger(r.index) || (r.index as number) < 0) throw bad('index', r.index);
  if (typeof r.id !== 'string') throw bad('id', r.id);
  if (!Array.isArray(r.references) || !r.references.every((x) => typeof x === 'string')) throw bad('references', r.references);
  if (!Array.isArray(r.candidates) || r.candidates.length === 0) throw bad('candidates', r.candidates);
  r.candidates.forEach((c: unknown, j: number) => {
    if (!isObj(c)) throw invalid(`${where}: candidates[${j}]`, 'an object', c);
    if (typeof c.image !== 'string') throw invalid(`${where}: candidates[${j}].image`, 'a path', c.image);
    if (typeof c.text !== 'string') throw invalid(`${where}: candidates[${j}].text`, 'a string', c.text);
    for (const key of ['distance', 'rank', 'scores']) {
      const m = c[key];
      if (!isObj(m) || !Object.values(m).every((v) => typeof v === 'number' || v === null)) throw invalid(`${where}: candidates[${j}].${key}`, 'an object of numbers', m);
    }
  });
  const n = r.candidates.length;
  const inRange = (v: unknown) => Number.isInteger(v) && (v as number) >= 0 && (v as number) < n;
  if (!isObj(r.winner) || !Object.values(r.winner).every(inRange)) throw bad('winner', r.winner);
  if (!Array.isArray(r.baseline) || !r.baseline.every(inRange)) throw bad('baseline', r.baseline);
}
