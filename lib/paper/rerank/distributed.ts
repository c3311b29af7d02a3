/**
 * Reranking under `roundtrip launch` / torchrun: rank r of W runs shard r/W (items r, r+W, …) into
 * `<out>/ranks/rank-r-of-W/` with the image cache shared at `<out>/cache`; after a barrier rank 0 merges
 * the shards (and any results already in `<out>`) into `<out>/run.json` + `results.jsonl`, which is
 * then the same folder a single process writes (item seeds depend on the dataset index only).
 */
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError } from '../../errors';
import { writeFileAtomicSync } from '../../fsutil';
import { barrier, joinFromEnvironment, rank as distRank, readDistributedEnv, worldSize as distWorld } from '../../runtime/distributed';
import { loadRuns } from '../report/load';
import { MANIFEST_FILE, RESULTS_FILE, RerankOptions, RerankStats } from './run';
import type { RunManifest } from './types';

/** Folder of rank r's shard inside the run folder. */
export function rankFolder(out: string, rank: number, world: number): string {
  return path.join(out, 'ranks', `rank-${rank}-of-${world}`);
}

/** Merges shard folders (and `out` itself when it holds results) into `out`. Returns the item count. */
export function mergeIntoRunFolder(out: string, shardDirs: string[]): number {
  const dirs = fs.existsSync(path.join(out, MANIFEST_FILE)) ? [out, ...shardDirs] : shardDirs;
  const runs = loadRuns(dirs);
  const rel = (file: string) => path.relative(out, file).split(path.sep).join('/');
  const lines = runs.records.map((r) => JSON.stringify({ ...r, candidates: r.candidates.map((c) => ({ ...c, image: rel(c.image) })) }));
  const manifest: RunManifest = { version: 1, settings: runs.settings, shard: { index: 0, count: 1 }, created: new Date().toISOString() };
  writeFileAtomicSync(path.join(out, MANIFEST_FILE), JSON.stringify(manifest, null, 2) + '\n');
  writeFileAtomicSync(path.join(out, RESULTS_FILE), lines.join('\n') + '\n');
  return runs.records.length;
}

export interface DistributedRerankResult {
  stats: RerankStats;
  /** Rank 0 of several: the merged folder is ready for the report. */
  merged: boolean;
  /** This process should write the report (rank 0, or a process running alone). */
  isMain: boolean;
}

/**
 * Runs `run` as this rank's shard when the process is one of several (WORLD_SIZE > 1) and no `--shard`
 * was given; otherwise runs it as is.
 */
export async function rerankByRank(run: (opts: RerankOptions) => Promise<RerankStats>, opts: RerankOptions): Promise<DistributedRerankResult> {
  if (!readDistributedEnv() || opts.shard !== undefined) return { stats: await run(opts), merged: false, isMain: true };
  if (!opts.out) throw new RoundtripError('rerank: --out is required');
  await joinFromEnvironment();
  const rank = distRank();
  const world = distWorld();
  const out = path.resolve(opts.out);
  const stats = await run({
    ...opts,
    out: rankFolder(out, rank, world),
    shard: `${rank}/${world}`,
    cache: opts.cache ?? path.join(out, 'cache'),
    progress: opts.progress !== false && rank === 0,
  });
  // Ranks finish at different times: wait up to a day for the slowest (rendezvous keeps its own timeout).
  await barrier(24 * 3600);
  if (rank !== 0) return { stats, merged: false, isMain: false };
  const dirs = Array.from({ length: world }, (_, r) => rankFolder(out, r, world));
  const items = mergeIntoRunFolder(out, dirs);
  return { stats: { ...stats, out, items }, merged: true, isMain: true };
}
