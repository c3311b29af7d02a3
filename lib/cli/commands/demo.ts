/**
 * `roundtrip demo [--out DIR] [--quick] [--items N] [--k K] [--finetune-steps N] [--sd-steps N] [--seed S] [--device D]`:
 * the whole method on the built-in synthetic world with the small shipped models, no downloads —
 * reranking in both directions against the random baseline, a short joint finetuning, the same
 * evaluation before and after, and one report folder (Markdown, JSON, HTML, plots).
 */
import type { CommandModule } from 'yargs';
import { RoundtripError } from '../../errors';
import { DEFAULT_DEMO, DemoOptions, DemoResult, QUICK_DEMO, demoSummaryText, runDemo } from '../../demo';

/** Parsed flags (yargs camel-cases the dashed names; unset flags fall back to the mode's defaults). */
export interface DemoArgs {
  out: string;
  cache?: string;
  weights?: string;
  vocab?: string;
  quick?: boolean;
  items?: number;
  k?: number;
  finetuneSteps?: number;
  batchSize?: number;
  lr?: number;
  trainImages?: number;
  sdSteps?: number;
  guidance?: number;
  repeats?: number;
  seed?: number;
  device?: string;
  quiet?: boolean;
}

/** The demo options of parsed flags: `--quick` picks the reduced defaults, explicit flags override either. */
export function demoOptionsFromArgs(a: DemoArgs): DemoOptions {
  const base = a.quick ? QUICK_DEMO : DEFAULT_DEMO;
  const pick = <T>(value: T | undefined, fallback: T): T => (value === undefined ? fallback : value);
  return {
    out: a.out,
    cache: a.cache,
    weights: a.weights,
    vocab: a.vocab,
    items: pick(a.items, base.items),
    k: pick(a.k, base.k),
    finetuneSteps: pick(a.finetuneSteps, base.finetuneSteps),
    batchSize: pick(a.batchSize, base.batchSize),
    lr: pick(a.lr, base.lr),
    trainImages: pick(a.trainImages, base.trainImages),
    sdSteps: pick(a.sdSteps, base.sdSteps),
    guidance: pick(a.guidance, base.guidance),
    repeats: pick(a.repeats, base.repeats),
    seed: pick(a.seed, base.seed),
    device: pick(a.device, base.device),
    quick: Boolean(a.quick),
    quiet: a.quiet,
  };
}

/** Runs the demo for CLI flags and prints the summary on stdout. */
export async function runDemoCommand(a: DemoArgs, command = 'roundtrip demo'): Promise<DemoResult> {
  const result = await runDemo(demoOptionsFromArgs(a), command);
  process.stdout.write(demoSummaryText(result));
  return result;
}

export const command: CommandModule<{}, any> = {
  command: 'demo',
  describe: 'run the whole method on the built-in synthetic world with the small shipped models (no downloads): reranking both ways, a short joint finetuning, one report',
  builder: (y) =>
    y
      .option('out', { type: 'string', default: 'roundtrip-demo', describe: 'report folder (recreated each run, except its cache/)' })
      .option('cache', { type: 'string', describe: 'where the world (and fallback models) are kept between runs (default <out>/cache)' })
      .option('weights', { type: 'string', describe: 'folder with world-blip/, world-sd/, world-clip/ (default: the package weights/)' })
      .option('vocab', { type: 'string', describe: 'BERT/CLIP vocabularies for the fallback pretraining when the world models are missing (default: the shipped vocabularies)' })
      .option('quick', { type: 'boolean', default: false, describe: `reduced run: ${QUICK_DEMO.items} items, K=${QUICK_DEMO.k}, ${QUICK_DEMO.sdSteps} sampling steps, ${QUICK_DEMO.finetuneSteps} finetuning steps` })
      .option('items', { type: 'number', describe: `held-out test images (default ${DEFAULT_DEMO.items})` })
      .option('k', { type: 'number', describe: `candidates per item (default ${DEFAULT_DEMO.k})` })
      .option('finetune-steps', { type: 'number', describe: `joint finetuning steps (default ${DEFAULT_DEMO.finetuneSteps})` })
      .option('batch-size', { type: 'number', describe: `finetuning batch (default ${DEFAULT_DEMO.batchSize})` })
      .option('lr', { type: 'number', describe: `finetuning learning rate (default ${DEFAULT_DEMO.lr})` })
      .option('train-images', { type: 'number', describe: `world training images the finetuning draws from (default ${DEFAULT_DEMO.trainImages})` })
      .option('sd-steps', { type: 'number', describe: `Stable Diffusion DDIM steps (default ${DEFAULT_DEMO.sdSteps})` })
      .option('guidance', { type: 'number', describe: `classifier-free guidance (default ${DEFAULT_DEMO.guidance})` })
      .option('repeats', { type: 'number', describe: `random-baseline picks per item (default ${DEFAULT_DEMO.repeats})` })
      .option('seed', { type: 'number', describe: 'seed of sampling, reranking and finetuning (default 0)' })
      .option('device', { type: 'string', describe: 'cpu, cuda or cuda:N (default cpu)' })
      .option('quiet', { type: 'boolean', default: false, describe: 'no progress bars' }),
  handler: async (argv) => {
    const args: DemoArgs = {
      out: argv.out,
      cache: argv.cache,
      weights: argv.weights,
      vocab: argv.vocab,
      quick: argv.quick,
      items: argv.items,
      k: argv.k,
      finetuneSteps: argv['finetune-steps'],
      batchSize: argv['batch-size'],
      lr: argv.lr,
      trainImages: argv['train-images'],
      sdSteps: argv['sd-steps'],
      guidance: argv.guidance,
      repeats: argv.repeats,
      seed: argv.seed,
      device: argv.device,
      quiet: argv.quiet,
    };
    try {
      await runDemoCommand(args, ['roundtrip', ...process.argv.slice(2)].join(' '));
    } catch (err) {
      if (err instanceof RoundtripError) throw err;
      throw new RoundtripError(`demo: ${err instanceof Error ? err.message : String(err)}`);
    }
  },
};
