/**
 * `roundtrip pretrain-world [--out DIR] [--world DIR] [--seed S] [--steps N|clip=N,blip=N,vae=N,unet=N] [--quick]`:
 * writes the synthetic world and trains the small CLIP, BLIP and Stable Diffusion on it from scratch (CPU),
 * writing world-clip/, world-blip/ and world-sd/ folders with their TRAINING.json.
 */
import type { CommandModule } from 'yargs';
import { OptionNames, RoundtripError, expectBoolean, expectInteger, invalid } from '../../errors';
import { DEFAULT_PRETRAIN, PerModel, PretrainOptions, PretrainResult, QUICK_PRETRAIN, WORLD_MODELS, WorldModelPart, checkPretrainOptions, pretrainWorld } from '../../train/pretrain';
import { ProgressStream } from '../../progress';

export interface PretrainWorldArgs {
  out: string;
  world: string;
  seed: number;
  steps?: string | number;
  quick: boolean;
  vocab?: string;
  evalLimit?: number;
  f32: boolean;
}

/**
 * Per-model step counts from `--steps`: one number for all models, or `clip=N,blip=N,vae=N,unet=N`
 * (models not named keep `base`).
 */
export function parseSteps(spec: string | number | undefined, base: PerModel<number>): PerModel<number> {
  const out = { ...base };
  if (spec === undefined) return out;
  if (typeof spec === 'number' || /^\d+$/.test(String(spec).trim())) {
    const n = expectInteger('--steps', Number(spec), { min: 1 });
    for (const part of WORLD_MODELS) out[part] = n;
    return out;
  }
  for (const item of String(spec).split(',')) {
    const m = /^\s*([a-z]+)\s*=\s*(\d+)\s*$/.exec(item);
    if (!m) throw invalid('--steps', 'a number or model=N pairs such as "clip=400,unet=600"', spec);
    if (!(WORLD_MODELS as readonly string[]).includes(m[1])) throw invalid('--steps', `model names among ${WORLD_MODELS.join(', ')}`, m[1]);
    out[m[1] as WorldModelPart] = expectInteger(`--steps ${m[1]}`, Number(m[2]), { min: 1 });
  }
  return out;
}

/** The pretraining options of parsed CLI arguments (validated, flag names in the messages). */
export function pretrainOptionsFromArgs(a: PretrainWorldArgs, command?: string): PretrainOptions {
  const base = expectBoolean('--quick', a.quick) ? QUICK_PRETRAIN : DEFAULT_PRETRAIN;
  return checkPretrainOptions(
    {
      ...base,
      out: a.out,
      world: a.world,
      seed: a.seed,
      steps: parseSteps(a.steps, base.steps),
      vocab: a.vocab,
      evalLimit: a.evalLimit,
      dtype: a.f32 ? 'float32' : 'float16',
      command,
    },
    PRETRAIN_FLAGS,
  );
}

/** How the pretraining check names the options in `roundtrip pretrain-world`: by its flags. */
export const PRETRAIN_FLAGS: OptionNames = { out: '--out', world: '--world', vocab: '--vocab', evalLimit: '--eval-limit', seed: '--seed', steps: '--steps' };

/** Runs the pretraining for CLI arguments and prints where the folders are and what they measured. */
export async function runPretrainWorld(a: PretrainWorldArgs, stream: ProgressStream = process.stderr, command?: string): Promise<PretrainResult> {
  const result = await pretrainWorld({ ...pretrainOptionsFromArgs(a, command), stream });
  const summary = {
    folders: result.folders,
    seconds: result.seconds,
    finalLoss: Object.fromEntries(WORLD_MODELS.map((p) => [p, result.losses[p][result.losses[p].length - 1]])),
    scalingFactor: result.scalingFactor,
    metrics: result.metrics,
  };
  process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
  return result;
}

export const command: CommandModule<{}, any> = {
  command: 'pretrain-world',
  describe: 'write the synthetic world and train small CLIP, BLIP and Stable Diffusion models on it (CPU, no downloads)',
  builder: (y) =>
    y
      .option('out', { type: 'string', default: 'world-weights', describe: 'folder for world-clip/, world-blip/, world-sd/' })
      .option('world', { type: 'string', default: 'world', describe: 'folder the world is written to (reused when it matches)' })
      .option('seed', { type: 'number', default: 0, describe: 'seed of the world, the initialisation and the batches' })
      .option('steps', { type: 'string', describe: 'training steps: N for every model, or clip=N,blip=N,vae=N,unet=N (default: the recipe\'s)' })
      .option('quick', { type: 'boolean', default: false, describe: 'a tiny world and a few steps per model (smoke test)' })
      .option('vocab', { type: 'string', describe: 'folder with the BERT vocab.txt and CLIP vocab.json + merges.txt (default: the package weights/)' })
      .option('eval-limit', { type: 'number', describe: 'test images used for the metrics (default: all)' })
      .option('f32', { type: 'boolean', default: false, describe: 'store weights as float32 (default float16)' }),
  handler: async (argv) => {
    const args: PretrainWorldArgs = { out: argv.out, world: argv.world, seed: argv.seed, steps: argv.steps, quick: argv.quick, vocab: argv.vocab, evalLimit: argv.evalLimit ?? argv['eval-limit'], f32: argv.f32 };
    const line = ['roundtrip', ...process.argv.slice(2)].join(' ');
    try {
      await runPretrainWorld(args, process.stderr, line);
    } catch (err) {
      if (err instanceof RoundtripError) throw err;
      throw new RoundtripError(`pretrain-world: ${err instanceof Error ? err.message : String(err)}`);
    }
  },
};
