/**
 * `roundtrip bench` (components): every registered row at one size, median of `reps` after `warmup`.
 * Rows live in lib/bench/rows.ts; `registerBenchRow` adds more (see lib/bench/registry.ts).
 */
import { RoundtripError, expectInteger, expectOneOf } from '../errors';
import { native } from '../runtime/native';
import { BENCH_SIZES, BenchSize, benchModels } from './models';
import { BenchRowResult, benchRows, formatBenchTable, runBenchRow } from './registry';
import './training-rows';
import './rows';

export { registerBenchRow, benchRows, formatBenchTable } from './registry';
export type { BenchRowSpec, BenchRowResult, BenchInstance, RunExtras } from './registry';
export { BENCH_SIZES, benchModels, randomModelFolders } from './models';
export type { BenchSize, BenchModels } from './models';

export interface BenchOptions {
  size?: BenchSize;
  /** Intra-op threads (default: what the process uses now). */
  threads?: number;
  /** Timed runs per row (default 5) and untimed runs first (default 1). */
  reps?: number;
  warmup?: number;
  /** Only rows whose name matches this regular expression. */
  rows?: string;
  /** Where random-weight folders are cached (default: $TMPDIR/roundtrip-bench). */
  cacheDir?: string;
  /** Called after each row (progress). */
  onRow?: (result: BenchRowResult, index: number, total: number) => void;
}

export interface BenchReport {
  size: BenchSize;
  threads: number;
  reps: number;
  warmup: number;
  rows: BenchRowResult[];
  text: string;
}

export async function runBench(opts: BenchOptions = {}): Promise<BenchReport> {
  const size = expectOneOf('--size', opts.size ?? 'tiny', BENCH_SIZES);
  const reps = expectInteger('--reps', opts.reps ?? 5, { min: 1 });
  const warmup = expectInteger('--warmup', opts.warmup ?? 1, { min: 0 });
  if (opts.threads !== undefined) native().setNumThreads(expectInteger('--threads', opts.threads, { min: 1 }));
  let filter: RegExp | undefined;
  if (opts.rows !== undefined) {
    try {
      filter = new RegExp(opts.rows);
    } catch (err) {
      throw new RoundtripError(`--rows: not a regular expression: ${opts.rows}`);
    }
  }
  const specs = benchRows().filter((r) => !filter || filter.test(r.name));
  if (!specs.length) throw new RoundtripError(`--rows ${opts.rows}: matches none of ${benchRows().map((r) => r.name).join(', ')}`);
  const models = await benchModels(size, { cacheDir: opts.cacheDir });
  const rows: BenchRowResult[] = [];
  try {
    for (const spec of specs) {
      const r = await runBenchRow(spec, models, reps, warmup);
      rows.push(r);
      opts.onRow?.(r, rows.length, specs.length);
    }
  } finally {
    models.dispose();
  }
  const threads = native().getNumThreads();
  const head = `roundtrip bench --size ${size}: ${threads} thread(s), median of ${reps} after ${warmup} warm-up\n`;
  return { size, threads, reps, warmup, rows, text: head + formatBenchTable(rows) };
}
