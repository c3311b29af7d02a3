/**
 * `roundtrip experiment [--out DIR] [--quick] [--arms a,b,…] [--seeds N] [--steps N] [--recipe default|release] [--blip-settings pretraining|recipe] [--blip-trainable SET]
 * [--set key=value …]`: the finetuning baseline arms on the built-in world with 95 % intervals (see
 * lib/paper/experiment).
 */
import type { CommandModule } from 'yargs';
import { RoundtripError } from '../../errors';
import type { TrainableSet } from '../../train/finetune/trainer';
import { ARM_NAMES, checkArms, BlipSettings, DEFAULT_EXPERIMENT, ExperimentOptions, ExperimentResult, QUICK_EXPERIMENT, formatInterval, runExperiment } from '../../paper/experiment';

export interface ExperimentArgs {
  out: string;
  cache?: string;
  weights?: string;
  vocab?: string;
  quick?: boolean;
  arms?: string | string[];
  seeds?: number;
  steps?: number;
  batchSize?: number;
  lr?: number;
  trainImages?: number;
  items?: number;
  lossItems?: number;
  sdSteps?: number;
  guidance?: number;
  recipe?: string;
  blipSettings?: string;
  blipTrainable?: string;
  unetTrainable?: string;
  set?: string | string[];
  seed?: number;
  replicates?: number;
  device?: string;
  quiet?: boolean;
  json?: boolean;
}

/** `key=value` pairs; values parse as JSON when they can (numbers, booleans, objects), else stay strings. */
export function parseSettings(values: string | string[] | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const item of values === undefined ? [] : Array.isArray(values) ? values : [values]) {
    const eq = String(item).indexOf('=');
    if (eq <= 0) throw new RoundtripError(`--set ${item}: expected key=value (a finetuning config key, e.g. labelSmoothing=0)`);
    const key = String(item).slice(0, eq);
    const raw = String(item).slice(eq + 1);
    try {
      out[key] = JSON.parse(raw);
    } catch {
      out[key] = raw;
    }
  }
  return out;
}

export function experimentOptionsFromArgs(a: ExperimentArgs): ExperimentOptions {
  const base = a.quick ? QUICK_EXPERIMENT : DEFAULT_EXPERIMENT;
  const pick = <T>(value: T | undefined, fallback: T): T => (value === undefined ? fallback : value);
  const arms = a.arms === undefined ? base.arms : (Array.isArray(a.arms) ? a.arms : [a.arms]).flatMap((s) => String(s).split(',')).map((s) => s.trim()).filter(Boolean);
  return {
    out: a.out,
    cache: a.cache,
    weights: a.weights,
    vocab: a.vocab,
    arms: checkArms(arms),
    seeds: pick(a.seeds, base.seeds),
    steps: pick(a.steps, base.steps),
    batchSize: pick(a.batchSize, base.batchSize),
    lr: pick(a.lr, base.lr),
    trainImages: pick(a.trainImages, base.trainImages),
    items: pick(a.items, base.items),
    lossItems: Math.min(pick(a.lossItems, base.lossItems), pick(a.items, base.items)),
    sdSteps: pick(a.sdSteps, base.sdSteps),
    guidance: pick(a.guidance, base.guidance),
    recipe: pick(a.recipe, base.recipe) as ExperimentOptions['recipe'],
    blipSettings: pick(a.blipSettings, base.blipSettings) as BlipSettings,
    trainable: { blip: pick(a.blipTrainable, base.trainable?.blip) as TrainableSet, unet: pick(a.unetTrainable, base.trainable?.unet) as TrainableSet },
    overrides: parseSettings(a.set),
    seed: pick(a.seed, base.seed),
    replicates: pick(a.replicates, base.replicates),
    device: pick(a.device, base.device),
    quick: Boolean(a.quick),
    quiet: a.quiet,
  };
}

/** The terminal summary: the statements and (e)/(d)/(a) on the headline measures. */
export function experimentSummaryText(r: ExperimentResult): string {
  const arms = r.report.arms.map((a) => a.name);
  const lines = [`report: ${r.files.markdown}`, ''];
  for (const m of r.report.metrics) lines.push(`${m.label}: ${arms.map((a) => `${a} ${formatInterval(m.arms[a])}`).join('  ')}`);
  lines.push('', ...r.report.statements.map((s) => `- ${s}`), '', `wall time ${r.report.seconds.toFixed(0)} s`, '');
  return lines.join('\n');
}

export const command: CommandModule<{}, any> = {
  command: 'experiment',
  describe: 'Finetuning baseline arms (no finetune, L_cap, L_sd, both, Eq. 5, Appendix I) on the built-in world, with 95 % intervals',
  builder: (y) =>
    y
      .option('out', { type: 'string', default: 'roundtrip-experiment', describe: 'Report folder (runs/ inside are reused on a rerun with the same settings)' })
      .option('cache', { type: 'string', describe: 'World cache (default <out>/cache)' })
      .option('weights', { type: 'string', describe: 'Folder with world-blip/, world-sd/, world-clip/ (default the package weights/)' })
      .option('vocab', { type: 'string', describe: 'BERT/CLIP vocabularies for a fallback pretraining (default: looked up in --weights)' })
      .option('quick', { type: 'boolean', default: false, describe: 'Tiny run (4 arms, 2 seeds, 4 items, 2 steps) for tests' })
      .option('arms', { type: 'string', describe: `Comma-separated arms: ${ARM_NAMES.join(', ')} (default all)` })
      .option('seeds', { type: 'number', describe: 'Training seeds per arm (default 3)' })
      .option('steps', { type: 'number', describe: 'Finetuning steps per run (default 40)' })
      .option('batch-size', { type: 'number', describe: "Finetuning batch size (default: the recipe's, 8 for default)" })
      .option('lr', { type: 'number', describe: 'Learning rate (default 1e-4)' })
      .option('train-images', { type: 'number', describe: 'World training images, 5 captions each (default 200; --quick 4)' })
      .option('items', { type: 'number', describe: 'Held-out test images (default 64)' })
      .option('loss-items', { type: 'number', describe: 'Test images the loss terms are measured on (default 32)' })
      .option('sd-steps', { type: 'number', describe: 'DDIM steps of the evaluation images (default 10)' })
      .option('guidance', { type: 'number', describe: 'Guidance of the evaluation images (default 4)' })
      .option('recipe', { type: 'string', describe: "'default' or 'release' (the authors' training details) (default 'default')" })
      .option('blip-settings', { type: 'string', describe: "BLIP's side: 'pretraining' (the world BLIP's own recipe: label smoothing 0, no crop, no flip) or 'recipe' (the recipe's: label smoothing 0.1, crop, flip) (default 'pretraining')" })
      .option('blip-trainable', { type: 'string', describe: 'BLIP trainable set where BLIP trains: xattn-q, xattn-kv, xattn-qkv, text-decoder (default xattn-q)' })
      .option('unet-trainable', { type: 'string', describe: 'UNet trainable set where the UNet trains: xattn-q, xattn-kv, xattn-qkv (default xattn-q)' })
      .option('set', { type: 'string', array: true, describe: 'Finetuning config key=value for every arm, e.g. labelSmoothing=0 blipFlip=false (default: none)' })
      .option('seed', { type: 'number', describe: 'Evaluation seed and first training seed (default 0)' })
      .option('replicates', { type: 'number', describe: 'Bootstrap replicates (default 2000)' })
      .option('device', { type: 'string', describe: 'cpu, cuda or cuda:N (default cpu)' })
      .option('quiet', { type: 'boolean', default: false, describe: 'No progress output' })
      .option('json', { type: 'boolean', default: false, describe: 'Print summary.json instead of the text summary' }),
  handler: async (argv) => {
    const r = await runExperiment(experimentOptionsFromArgs(argv as unknown as ExperimentArgs), `roundtrip ${process.argv.slice(2).join(' ')}`);
    process.stdout.write(argv.json ? JSON.stringify(r.report, null, 2) + '\n' : experimentSummaryText(r));
  },
};
