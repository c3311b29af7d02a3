/**
 * `roundtrip bench [--size tiny|world|sd14] [--json] [--threads N] [--reps N] [--rows REGEX]`: the per-component
 * table (lib/bench: ms, minor faults, peak RSS per row, load time and the whole generate process).
 * `roundtrip bench finetune --config FILE.json [--steps N] [flags]`: steps/s and peak RSS of the joint
 * step vs an SD-only and a BLIP-only step on the same batch (see lib/finetune/bench.ts).
 */
import type { CommandModule } from 'yargs';
import { expectInteger, expectOneOf } from '../errors';
import { BENCH_SIZES, BenchReport, BenchSize, runBench } from '../bench';
import { BenchResult, benchFinetune } from '../finetune/bench';
import { FinetuneRequest, command as finetuneCommand, finetuneConfigFrom } from './finetune';

export async function runBenchFinetune(req: FinetuneRequest & { steps?: number; warmup?: number }): Promise<BenchResult> {
  const steps = expectInteger('--steps', req.steps ?? 5, { min: 1 });
  const warmup = expectInteger('--warmup', req.warmup ?? 1, { min: 0 });
  const { steps: _s, warmup: _w, ...rest } = req;
  return benchFinetune({ ...finetuneConfigFrom({ progress: false, ...rest }), steps, warmup });
}

/** `roundtrip bench` (components): runs the rows and returns the report (table in `text`). */
export async function runBenchComponents(a: { size?: string; threads?: number; reps?: number; warmup?: number; rows?: string; cache?: string; progress?: boolean }): Promise<BenchReport> {
  const size = expectOneOf('--size', a.size ?? 'tiny', BENCH_SIZES) as BenchSize;
  return runBench({
    size,
    threads: a.threads,
    reps: a.reps,
    warmup: a.warmup,
    rows: a.rows,
    cacheDir: a.cache,
    onRow: a.progress ? (r, i, n) => process.stderr.write(`bench ${i}/${n} ${r.name}${r.error ? ' (error)' : ''}\n`) : undefined,
  });
}

export const command: CommandModule<{}, any> = {
  command: 'bench [what]',
  describe: 'Benchmarks: the per-component table (default), or "finetune" (the joint step vs single-model steps)',
  builder: (y) => {
    const withFlags = (finetuneCommand.builder as (y: any) => any)(y);
    return withFlags
      .positional('what', { type: 'string', choices: ['components', 'finetune'], default: 'components', describe: 'What to benchmark' })
      .option('size', { type: 'string', choices: [...BENCH_SIZES], default: 'tiny', describe: 'components: tiny, world (built-in weights) or sd14 (published configs, random weights)' })
      .option('reps', { type: 'number', default: 5, describe: 'components: timed runs per row (median reported)' })
      .option('rows', { type: 'string', describe: 'components: only rows whose name matches this regular expression' })
      .option('cache', { type: 'string', describe: 'components: folder for the random-weight models (default $TMPDIR/roundtrip-bench)' })
      .option('steps', { type: 'number', default: 5, describe: 'finetune: timed steps per variant' })
      .option('warmup', { type: 'number', default: 1, describe: 'Untimed runs first' })
      .option('json', { type: 'boolean', default: false, describe: 'Print the table as JSON' });
  },
  handler: async (argv) => {
    if (argv.what === 'finetune') {
      const r = await runBenchFinetune(argv as any);
      process.stdout.write(argv.json ? JSON.stringify(r, null, 2) + '\n' : r.text);
      return;
    }
    const r = await runBenchComponents({ ...argv, progress: !argv.json } as any);
    process.stdout.write(argv.json ? JSON.stringify({ size: r.size, threads: r.threads, reps: r.reps, warmup: r.warmup, rows: r.rows }, null, 2) + '\n' : r.text);
  },
};
