/**
 * `roundtrip bench [--size tiny|world|sd14] [--json] [--threads N] [--reps N] [--rows REGEX]`: the per-component
 * table (lib/bench: ms, minor faults, peak RSS per row, load time and the whole generate process).
 * `roundtrip bench finetune --config FILE.json [--steps N] [flags]`: steps/s and peak RSS of the joint
 * step vs an SD-only and a BLIP-only step on the same batch (see lib/train/finetune/bench.ts).
 */
import type { CommandModule } from 'yargs';
import { BENCH_SIZES, BenchReport, BenchSize, runBench } from '../../bench';
import { BENCH_RECON_DEFAULTS, BenchReconResult, benchRecon } from '../../paper/joint/bench-recon';
import { resolveModelPath } from '../../weights/hub/resolve';
import { BenchResult, benchFinetune } from '../../train/finetune/bench';
import { FinetuneRequest, command as finetuneCommand, finetuneConfigFrom, readConfigFile } from './finetune';
import { benchDistributed } from '../../runtime/distributed/bench';

export async function runBenchFinetune(req: FinetuneRequest & { steps?: number; warmup?: number }): Promise<BenchResult> {
  const { steps, warmup, ...rest } = req;
  return benchFinetune({ ...finetuneConfigFrom({ progress: false, ...rest }), steps, warmup }, { steps: '--steps', warmup: '--warmup' });
}

/** `bench recon`: the loss terms of the base models and each checkpoint on a fixed held-out set. */
export async function runBenchRecon(argv: Record<string, any>): Promise<BenchReconResult> {
  const list = (v: unknown): string[] | undefined => (v === undefined ? undefined : (Array.isArray(v) ? v : [v]).map(String));
  return benchRecon({
    blip: argv.blip === undefined ? argv.blip : resolveModelPath(argv.blip),
    sd: argv.sd === undefined ? argv.sd : resolveModelPath(argv.sd),
    checkpoints: list(argv.checkpoints),
    data: argv.data,
    images: argv.images,
    n: argv.n,
    seed: argv.seed,
    bridge: argv.bridge,
    clip: argv.clipModel,
    prompt: argv.prompt,
    recTxtMode: argv.recTxtMode,
    sdSteps: argv.sdSteps,
    guidance: argv.guidance,
    out: argv.out,
    device: argv.device,
    replicates: argv.replicates,
    quiet: argv.progress === false,
  });
}

/** `roundtrip bench` (components): runs the rows and returns the report (table in `text`). */
export async function runBenchComponents(a: { size?: string; threads?: number; reps?: number; warmup?: number; rows?: string; cache?: string; progress?: boolean }): Promise<BenchReport> {
  return runBench({
    size: a.size as BenchSize | undefined,
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
  describe: 'Benchmarks: the per-component table (default: ms, minor faults, peak RSS per row); "finetune" compares the joint step with single-model steps; "recon" measures the four loss terms of checkpoints on a fixed held-out set',
  builder: (y) => {
    const withFlags = (finetuneCommand.builder as (y: any) => any)(y);
    return withFlags
      .positional('what', { type: 'string', choices: ['components', 'finetune', 'recon', 'distributed'], default: 'components', describe: 'What to benchmark ("distributed": 1 process vs --nproc processes on the same cores)' })
      .option('size', { type: 'string', default: 'tiny', describe: `components: ${BENCH_SIZES.join(', ')} (tiny: small random-weight models; world: the built-in weights; sd14: published configs, random weights)` })
      .option('reps', { type: 'number', default: 5, describe: 'components: timed runs per row (median reported)' })
      .option('rows', { type: 'string', describe: 'components: only rows whose name matches this regular expression (default: every row)' })
      .option('cache', { type: 'string', describe: 'components: folder for the random-weight models (default $TMPDIR/roundtrip-bench)' })
      .option('nproc', { type: 'number', describe: 'distributed: processes of the data-parallel variant (default 2)' })
      .option('master-port', { type: 'number', describe: 'distributed: rendezvous port (default 29500)' })
      .option('checkpoints', { type: 'string', array: true, describe: 'recon: checkpoint, export/ or run folders, measured after the base models (default: none)' })
      .option('data', { type: 'string', describe: 'recon: held-out Karpathy-layout list [{image, caption}], images relative to --images or its folder (required for recon)' })
      .option('n', { type: 'number', describe: `recon: held-out images (default ${BENCH_RECON_DEFAULTS.n})` })
      .option('clip-model', { type: 'string', describe: 'recon: CLIP folder; adds SD images’ CLIP distance to their captions (default: none)' })
      .option('sd-steps', { type: 'number', describe: `recon: DDIM steps of the SD images (default ${BENCH_RECON_DEFAULTS.sdSteps})` })
      .option('guidance', { type: 'number', describe: `recon: guidance of the SD images (default ${BENCH_RECON_DEFAULTS.guidance})` })
      .option('replicates', { type: 'number', describe: `recon: bootstrap replicates (default ${BENCH_RECON_DEFAULTS.replicates})` })
      .option('out', { type: 'string', describe: 'recon: folder for recon.json, recon.md, recon.svg (default: none, table on stdout)' })
      .option('steps', { type: 'number', default: 5, describe: 'finetune: timed steps per variant' })
      .option('warmup', { type: 'number', default: 1, describe: 'Untimed runs first' })
      .option('json', { type: 'boolean', default: false, describe: 'Print the table as JSON' });
  },
  handler: async (argv) => {
    if (argv.what === 'distributed') {
      // The finetune flags given (if any) describe the workload; default: the world models (see lib/runtime/distributed/bench.ts).
      const config: Record<string, unknown> = argv.config ? readConfigFile(argv.config) : {};
      for (const k of ['blip', 'sd', 'annotations', 'images', 'bridge', 'sdSize', 'blipSize', 'gradAccum', 'schedule', 'prompt', 'device', 'limit']) if (argv[k] !== undefined) config[k] = argv[k];
      if (argv.gradientCheckpointing !== undefined) config.gradientCheckpointing = argv.gradientCheckpointing;
      if (argv.trainableBlip !== undefined || argv.trainableUnet !== undefined)
        config.trainable = { ...((config.trainable as object) ?? {}), ...(argv.trainableBlip !== undefined ? { blip: argv.trainableBlip } : {}), ...(argv.trainableUnet !== undefined ? { unet: argv.trainableUnet } : {}) };
      const d = await benchDistributed({ config, nproc: argv.nproc, threads: argv.threads, batchSize: argv.batchSize, steps: argv.steps, warmup: argv.warmup, masterPort: argv.masterPort, bucketMB: argv.allReduceBucketMib });
      process.stdout.write(argv.json ? JSON.stringify(d, null, 2) + '\n' : d.text);
      return;
    }
    if (argv.what === 'recon') {
      const r = await runBenchRecon(argv);
      process.stdout.write(argv.json ? JSON.stringify(r.json, null, 2) + '\n' : r.text);
      return;
    }
    if (argv.what === 'finetune') {
      const r = await runBenchFinetune(argv as any);
      process.stdout.write(argv.json ? JSON.stringify(r, null, 2) + '\n' : r.text);
      return;
    }
    const r = await runBenchComponents({ ...argv, progress: !argv.json } as any);
    process.stdout.write(argv.json ? JSON.stringify({ size: r.size, threads: r.threads, reps: r.reps, warmup: r.warmup, rows: r.rows }, null, 2) + '\n' : r.text);
  },
};
