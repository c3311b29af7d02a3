/**
 * `roundtrip bench`: a registry of benchmark rows and the runner that times them. A row names one unit of work
 * (a UNet forward, a sampling step, a whole `generate` process); it is set up once, run `warmup` times untimed,
 * then `reps` times, and reports the median milliseconds, the median minor page faults per run and the peak RSS
 * over its timed runs. Rows register themselves (lib/bench/rows.ts); more can be added from anywhere with
 * `registerBenchRow` — e.g. training-step rows that also report host synchronisations per step.
 */
import { RoundtripError } from '../errors';
import { memorySnapshot, resetPeakRss } from '../runtime/memory';
import type { BenchModels } from './models';

/** What one timed run may add to its row (averaged over runs). */
export interface RunExtras {
  /** Host synchronisations (device → host reads) in this run. */
  hostSyncs?: number;
  /** Units of work in this run (e.g. sampling steps), for per-unit timings. */
  units?: number;
  /** Any other per-run numbers (averaged), e.g. `readyMs` of a whole-process row. */
  [key: string]: number | undefined;
}

/** A prepared row: `run` is timed; `dispose` frees what setup made. */
export interface BenchInstance {
  run(): Promise<RunExtras | void>;
  dispose?(): void | Promise<void>;
}

export interface BenchRowSpec {
  /** Unique, dotted: `component.work` ("unet.forward", "load.sd"). */
  name: string;
  /** One line: what is measured, with the shapes. */
  describe: string;
  /** `ms` per run, or per unit of work when runs report `units` (e.g. "ms/step"). */
  unit?: string;
  /** At most this many timed runs and warm-ups (whole-process rows are expensive). */
  maxReps?: number;
  maxWarmup?: number;
  setup(models: BenchModels): Promise<BenchInstance>;
}

export interface BenchRowResult {
  name: string;
  describe: string;
  unit: string;
  /** Median over the timed runs, per run (or per unit of work). */
  ms: number;
  /** Per-run spread: min and max, same unit. */
  minMs: number;
  maxMs: number;
  /** Median minor page faults per run. */
  minorFaults: number;
  /** Peak RSS during the timed runs (process-wide, models included), MB. */
  peakRssMB: number;
  reps: number;
  /** Averages of what runs reported (hostSyncs, readyMs, ...). */
  extras: Record<string, number>;
  /** Set when the row could not run; its numbers are then NaN. */
  error?: string;
}

const rows: BenchRowSpec[] = [];

export function registerBenchRow(spec: BenchRowSpec): void {
  if (rows.some((r) => r.name === spec.name)) throw new RoundtripError(`bench row '${spec.name}' is registered twice`);
  rows.push(spec);
}

/** Registered rows, in registration order. */
export function benchRows(): readonly BenchRowSpec[] {
  return rows;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Times one row: setup, warm-up, `reps` timed runs. A failing row reports its error instead of numbers. */
export async function runBenchRow(spec: BenchRowSpec, models: BenchModels, reps: number, warmup: number): Promise<BenchRowResult> {
  const n = Math.max(1, Math.min(reps, spec.maxReps ?? reps));
  const w = Math.min(warmup, spec.maxWarmup ?? warmup);
  const base = { name: spec.name, describe: spec.describe, unit: spec.unit ?? 'ms' };
  let instance: BenchInstance | undefined;
  try {
    instance = await spec.setup(models);
    for (let i = 0; i < w; i++) await instance.run();
    resetPeakRss();
    const times: number[] = [];
    const faults: number[] = [];
    const sums: Record<string, number> = {};
    for (let i = 0; i < n; i++) {
      const before = process.resourceUsage().minorPageFault;
      const start = performance.now();
      const extras = (await instance.run()) ?? {};
      const ms = performance.now() - start;
      faults.push(process.resourceUsage().minorPageFault - before);
      times.push(extras.units ? ms / extras.units : ms);
      for (const [k, v] of Object.entries(extras)) if (typeof v === 'number' && k !== 'units') sums[k] = (sums[k] ?? 0) + v;
    }
    const peak = memorySnapshot().peakRss;
    const extras: Record<string, number> = {};
    for (const [k, v] of Object.entries(sums)) extras[k] = v / n;
    if (typeof extras.peakRssMB === 'number') delete extras.peakRssMB;
    return {
      ...base,
      ms: median(times),
      minMs: Math.min(...times),
      maxMs: Math.max(...times),
      minorFaults: median(faults),
      // A whole-process row reports its child's peak; others the peak of this process over the runs.
      peakRssMB: typeof sums.peakRssMB === 'number' ? sums.peakRssMB / n : peak / 2 ** 20,
      reps: n,
      extras,
    };
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    return { ...base, ms: NaN, minMs: NaN, maxMs: NaN, minorFaults: NaN, peakRssMB: NaN, reps: 0, extras: {}, error: message };
  } finally {
    await instance?.dispose?.();
  }
}

/** A plain-text table of results (one row per line, aligned). */
export function formatBenchTable(results: readonly BenchRowResult[]): string {
  const fmt = (x: number, digits = 1) => (Number.isFinite(x) ? x.toFixed(digits) : '-');
  const header = ['row', 'median', 'unit', 'min..max', 'minor faults', 'peak RSS MB', 'extras'];
  const lines = results.map((r) => [
    r.name,
    fmt(r.ms),
    r.unit,
    `${fmt(r.minMs)}..${fmt(r.maxMs)}`,
    Number.isFinite(r.minorFaults) ? String(Math.round(r.minorFaults)) : '-',
    fmt(r.peakRssMB, 0),
    r.error ? `error: ${r.error}` : Object.entries(r.extras).map(([k, v]) => `${k}=${fmt(v, Math.abs(v) >= 100 ? 0 : 2)}`).join(' '),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const row = (cells: string[]) => cells.map((c, i) => (i === 0 || i === 2 || i === 6 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd();
  const table = [row(header), row(widths.map((w) => '-'.repeat(w))), ...lines.map(row)].join('\n') + '\n';
  // The joint step's cost relative to an SD-only step (the paper: ≈ 1.4× on GPUs at batch 8).
  const joint = results.find((r) => r.name === 'train.joint_step');
  const sdOnly = results.find((r) => r.name === 'train.sd_only_step');
  return joint && sdOnly && Number.isFinite(joint.ms / sdOnly.ms) ? `${table}joint / SD-only step: ${(joint.ms / sdOnly.ms).toFixed(2)}× (paper ≈ 1.4× on GPUs at batch 8)\n` : table;
}
