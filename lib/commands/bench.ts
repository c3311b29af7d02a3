/**
 * `roundtrip bench finetune --config FILE.json [--steps N] [flags]`: steps/s and peak RSS of the joint
 * step vs an SD-only and a BLIP-only step on the same batch (see lib/finetune/bench.ts).
 */
import type { CommandModule } from 'yargs';
import { expectInteger } from '../errors';
import { BenchResult, benchFinetune } from '../finetune/bench';
import { FinetuneRequest, command as finetuneCommand, finetuneConfigFrom, readConfigFile } from './finetune';
import { benchDistributed } from '../distributed/bench';

export async function runBenchFinetune(req: FinetuneRequest & { steps?: number; warmup?: number }): Promise<BenchResult> {
  const steps = expectInteger('--steps', req.steps ?? 5, { min: 1 });
  const warmup = expectInteger('--warmup', req.warmup ?? 1, { min: 0 });
  const { steps: _s, warmup: _w, ...rest } = req;
  return benchFinetune({ ...finetuneConfigFrom({ progress: false, ...rest }), steps, warmup });
}

export const command: CommandModule<{}, any> = {
  command: 'bench <what>',
  describe: 'Benchmarks: "finetune" compares the joint step with single-model steps',
  builder: (y) => {
    const withFlags = (finetuneCommand.builder as (y: any) => any)(y);
    return withFlags
      .positional('what', { type: 'string', choices: ['finetune', 'distributed'], describe: 'What to benchmark ("distributed": 1 process vs --nproc processes on the same cores)' })
      .option('nproc', { type: 'number', describe: 'distributed: processes of the data-parallel variant (default 2)' })
      .option('master-port', { type: 'number', describe: 'distributed: rendezvous port (default 29500)' })
      .option('steps', { type: 'number', default: 5, describe: 'Timed steps per variant' })
      .option('warmup', { type: 'number', default: 1, describe: 'Untimed steps first' })
      .option('json', { type: 'boolean', default: false, describe: 'Print the table as JSON' });
  },
  handler: async (argv) => {
    if (argv.what === 'distributed') {
      // The finetune flags given (if any) describe the workload; default: the world models (see lib/distributed/bench.ts).
      const config: Record<string, unknown> = argv.config ? readConfigFile(argv.config) : {};
      for (const k of ['blip', 'sd', 'annotations', 'images', 'bridge', 'sdSize', 'blipSize', 'gradAccum', 'schedule', 'prompt', 'device', 'limit']) if (argv[k] !== undefined) config[k] = argv[k];
      const d = await benchDistributed({ config, nproc: argv.nproc, threads: argv.threads, batchSize: argv.batchSize, steps: argv.steps, warmup: argv.warmup, masterPort: argv.masterPort });
      process.stdout.write(argv.json ? JSON.stringify(d, null, 2) + '\n' : d.text);
      return;
    }
    const r = await runBenchFinetune(argv as any);
    process.stdout.write(argv.json ? JSON.stringify(r, null, 2) + '\n' : r.text);
  },
};
