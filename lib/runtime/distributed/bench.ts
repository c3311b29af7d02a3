/**
 * `roundtrip bench distributed`: the same finetuning on the same cores split two ways, one process with
 * T threads (batch b·W) against W processes with T/W threads each (batch b, gradients all-reduced over
 * Gloo), the latter once with the all-reduce after backward and once overlapped with it: step time,
 * samples/s, the all-reduce's time in flight per step, how much of it stayed exposed after backward (and
 * so how much backward hid), bytes per step, and the scaling efficiency (samples/s of the W processes ÷
 * samples/s of the one). Default workload: the shipped world models on
 * a small generated world (as `roundtrip demo`), or any finetune config (`--config`, flags).
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { RoundtripError, expectInteger } from '../../errors';
import { readJsonFile, readJsonLines } from '../../json';
import { WORLD_FILES, writeWorld } from '../../world';
import { DEFAULT_WEIGHTS_DIR } from '../../demo/models';
import { checkPortFree } from './launch';
import type { AllReduceStats } from '../../train/finetune/distributed';
import { CONFIG_DEFAULTS, configInt } from '../../models/config-defaults';
import { PACKAGE_ROOT } from '../../paths';

export interface DistributedBenchOptions {
  /** Finetune config keys (blip, sd, annotations, images, …); default: world models on a generated world. */
  config?: Record<string, unknown>;
  /** Processes of the distributed variant (default 2). */
  nproc?: number;
  /** Threads in total, shared by either variant (default: cores). */
  threads?: number;
  /** Per-rank batch b (the single process uses b·nproc; default 2). */
  batchSize?: number;
  steps?: number;
  warmup?: number;
  masterPort?: number;
  /** Scratch folder (default: a temporary one, removed at the end). */
  workDir?: string;
  /** Gradient bucket size in MiB (default: the config's allReduceBucketMib, else 25 as DDP). */
  bucketMB?: number;
}

export interface DistributedBenchRow {
  name: string;
  processes: number;
  threadsPerProcess: number;
  globalBatch: number;
  secondsPerStep: number;
  samplesPerSecond: number;
  /** All-reduce overlapped with backward (null: one process, nothing to reduce). */
  overlap: boolean | null;
  /** Seconds per step with a bucket all-reduce in flight. */
  allReduceSecondsPerStep: number;
  /** Seconds per step after backward until the gradients were averaged (not hidden). */
  exposedSecondsPerStep: number;
  /** Fraction of the in-flight time that fell during backward. */
  hiddenFraction: number;
  allReduceBytesPerStep: number;
  buckets: number;
  bucketsLaunchedInBackward: number;
}

export interface DistributedBenchResult {
  rows: DistributedBenchRow[];
  /** samples/s with nproc processes (all-reduce overlapped) ÷ samples/s with one (same cores). */
  scalingEfficiency: number;
  /** The same with the all-reduce after backward. */
  scalingEfficiencyNoOverlap: number;
  text: string;
}

const CLI = path.join(PACKAGE_ROOT, 'bin', 'roundtrip.js');

function runCli(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d) => (err = (err + d).slice(-4000)));
    child.on('close', (code) => resolve({ code, err }));
  });
}

type Timings = { seconds: number; arSeconds: number; exposed: number; hidden: number; arBytes: number; buckets: number; inBackward: number };

/** Mean step time after the warm-up steps, and mean all-reduce numbers, from a run's log.jsonl. */
function readTimings(logFile: string, warmup: number): Timings {
  const rows = readJsonLines<{ loss?: number; time?: number; allReduce?: AllReduceStats }>(logFile).filter((r) => typeof r.loss === 'number' && typeof r.time === 'number');
  const timed = rows.slice(warmup);
  if (timed.length < 2) throw new RoundtripError(`bench distributed: ${logFile} has ${rows.length} steps, too few to time`);
  const seconds = (timed[timed.length - 1].time! - timed[0].time!) / (timed.length - 1);
  const ar = timed.slice(1);
  const avg = (f: (s: AllReduceStats) => number) => ar.reduce((a, r) => a + (r.allReduce ? f(r.allReduce) : 0), 0) / ar.length;
  return {
    seconds,
    arSeconds: avg((s) => s.commSeconds),
    exposed: avg((s) => s.seconds),
    hidden: avg((s) => s.hiddenSeconds),
    arBytes: avg((s) => s.bytes),
    buckets: avg((s) => s.buckets),
    inBackward: avg((s) => s.launchedInBackward),
  };
}

export async function benchDistributed(opts: DistributedBenchOptions = {}): Promise<DistributedBenchResult> {
  const nproc = expectInteger('--nproc', opts.nproc ?? 2, { min: 2 });
  const threads = expectInteger('--threads', opts.threads ?? os.cpus().length, { min: nproc });
  if (threads % nproc !== 0) throw new RoundtripError(`--threads ${threads} does not split evenly over --nproc ${nproc}`);
  const b = expectInteger('--batch-size', opts.batchSize ?? 2, { min: 1 });
  const steps = expectInteger('--steps', opts.steps ?? 5, { min: 2 });
  const warmup = expectInteger('--warmup', opts.warmup ?? 1, { min: 0 });
  const port = expectInteger('--master-port', opts.masterPort ?? 29500, { min: 1, max: 65535 });
  await checkPortFree('127.0.0.1', port);
  const work = opts.workDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'rt-bench-dist-'));
  const cleanup = opts.workDir === undefined;
  try {
    let base: Record<string, unknown>;
    if (opts.config && Object.keys(opts.config).length) base = { ...opts.config };
    else {
      // The demo's workload: world models, their world, joint objective, cross-attention queries.
      const training = readJsonFile(path.join(DEFAULT_WEIGHTS_DIR, 'world-blip', 'TRAINING.json'), { object: true });
      const size = configInt(readJsonFile(path.join(DEFAULT_WEIGHTS_DIR, 'world-blip', 'config.json'), { object: true }), ['vision_config', 'image_size'], CONFIG_DEFAULTS.blip.imageSize, 'BLIP config');
      const worldDir = path.join(work, 'world');
      await writeWorld(worldDir, { seed: Number(training.world?.seed ?? training.seed ?? 0), counts: { train: 16, val: 0, test: 0 }, size, quiet: true });
      base = {
        blip: path.join(DEFAULT_WEIGHTS_DIR, 'world-blip'),
        sd: path.join(DEFAULT_WEIGHTS_DIR, 'world-sd'),
        annotations: path.join(worldDir, WORLD_FILES.train),
        images: worldDir,
        sdSize: size,
        blipSize: size,
        prompt: '',
      };
    }
    if (opts.bucketMB !== undefined && !(opts.bucketMB > 0)) throw new RoundtripError(`--all-reduce-bucket-mib: expected a number > 0, got ${opts.bucketMB}`);
    const common = { ...base, maxSteps: warmup + steps, epochs: 1000, checkpointEvery: 0, validateEvery: 0, progress: false, threads: undefined, ...(opts.bucketMB !== undefined ? { allReduceBucketMib: opts.bucketMB } : {}) };
    const variants = [
      { name: `1 process × ${threads} threads`, processes: 1, tpp: threads, batch: b * nproc, overlap: null },
      { name: `${nproc} processes × ${threads / nproc} thread(s), all-reduce after backward`, processes: nproc, tpp: threads / nproc, batch: b, overlap: false },
      { name: `${nproc} processes × ${threads / nproc} thread(s), overlapped`, processes: nproc, tpp: threads / nproc, batch: b, overlap: true },
    ];
    const rows: DistributedBenchRow[] = [];
    for (const v of variants) {
      const tag = `${v.processes}-${v.overlap === null ? 'single' : v.overlap ? 'overlap' : 'after'}`;
      const out = path.join(work, `run-${tag}`);
      fs.rmSync(out, { recursive: true, force: true });
      const cfgFile = path.join(work, `config-${tag}.json`);
      fs.writeFileSync(cfgFile, JSON.stringify({ ...common, output: out, batchSize: v.batch, ...(v.overlap === null ? {} : { allReduceOverlap: v.overlap }) }));
      const env = { ROUNDTRIP_THREADS: String(v.tpp), OMP_NUM_THREADS: String(v.tpp), OPENBLAS_NUM_THREADS: String(v.tpp) };
      const args = v.processes === 1 ? ['finetune', '--config', cfgFile] : ['launch', '--nproc', String(v.processes), '--threads', String(v.tpp), '--master-port', String(port), '--', 'finetune', '--config', cfgFile];
      const r = await runCli(args, env);
      if (r.code !== 0) throw new RoundtripError(`bench distributed: ${v.name} failed (exit ${r.code}):\n${r.err}`);
      const t = readTimings(path.join(out, 'log.jsonl'), warmup);
      const globalBatch = v.batch * v.processes * Number(base.gradAccum ?? 1);
      rows.push({
        name: v.name,
        processes: v.processes,
        threadsPerProcess: v.tpp,
        globalBatch,
        secondsPerStep: t.seconds,
        samplesPerSecond: globalBatch / t.seconds,
        overlap: v.overlap,
        allReduceSecondsPerStep: t.arSeconds,
        exposedSecondsPerStep: t.exposed,
        hiddenFraction: t.arSeconds > 0 ? t.hidden / t.arSeconds : 0,
        allReduceBytesPerStep: t.arBytes,
        buckets: t.buckets,
        bucketsLaunchedInBackward: t.inBackward,
      });
    }
    const scalingEfficiency = rows[2].samplesPerSecond / rows[0].samplesPerSecond;
    const scalingEfficiencyNoOverlap = rows[1].samplesPerSecond / rows[0].samplesPerSecond;
    const ms = (x: number) => (1000 * x).toFixed(1);
    const cap = Number(opts.bucketMB ?? base.allReduceBucketMib ?? 25);
    const lines = [
      `bench distributed: ${threads} threads in total, global batch ${rows[0].globalBatch}, ${steps} timed steps after ${warmup} warm-up, Gloo over 127.0.0.1, buckets ≤ ${cap} MiB (first ≤ ${Math.min(1, cap)} MiB)`,
      '| variant | s/step | samples/s | all-reduce in flight ms/step | exposed ms/step | hidden by backward | KiB/step | buckets (launched in backward) |',
      '| --- | --- | --- | --- | --- | --- | --- | --- |',
      ...rows.map((r) =>
        r.processes > 1
          ? `| ${r.name} | ${r.secondsPerStep.toFixed(3)} | ${r.samplesPerSecond.toFixed(2)} | ${ms(r.allReduceSecondsPerStep)} | ${ms(r.exposedSecondsPerStep)} | ${(100 * r.hiddenFraction).toFixed(0)}% | ${(r.allReduceBytesPerStep / 1024).toFixed(1)} | ${r.buckets.toFixed(0)} (${r.bucketsLaunchedInBackward.toFixed(1)}) |`
          : `| ${r.name} | ${r.secondsPerStep.toFixed(3)} | ${r.samplesPerSecond.toFixed(2)} | – | – | – | – | – |`,
      ),
      `scaling efficiency (samples/s of ${nproc} processes ÷ 1 process, same cores): ${(100 * scalingEfficiency).toFixed(1)}% overlapped, ${(100 * scalingEfficiencyNoOverlap).toFixed(1)}% with the all-reduce after backward`,
    ];
    return { rows, scalingEfficiency, scalingEfficiencyNoOverlap, text: lines.join('\n') + '\n' };
  } finally {
    if (cleanup) fs.rmSync(work, { recursive: true, force: true });
  }
}
