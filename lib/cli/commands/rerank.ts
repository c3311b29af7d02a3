/**
 * `roundtrip rerank i2t2i|t2i2t …`: training-free reconstruction reranking into an output folder
 * (run.json, results.jsonl, cache/), resumable and shardable; the report is written at the end.
 * `roundtrip rerank merge DIR… --out DIR`: merges shard folders into one report (= `roundtrip report`).
 */
import type { Argv, CommandModule } from 'yargs';
import { RoundtripError } from '../../errors';
import { CLIP_VARIANTS, RERANK_DEFAULTS, RerankOptions, rerankI2t2i, rerankT2i2t } from '../../paper/rerank';
import { SCHEDULER_NAMES } from '../../models/sd/schedulers';
import { DistributedRerankResult, rerankByRank } from '../../paper/rerank/distributed';
import { buildReport } from '../../paper/report';
import { reportOptionsFromArgv, reportBuilder, runReportCommand } from './report';

function list(v: unknown): string | undefined {
  if (v === undefined) return undefined;
  return Array.isArray(v) ? v.map(String).join(',') : String(v);
}

/** Maps parsed CLI flags to rerank options (exported for tests and scripts). */
export function rerankOptionsFromArgv(argv: Record<string, any>): RerankOptions {
  return {
    ...reconstructionOptionsFromArgv(argv),
    out: argv.out,
    blip: argv.blip,
    sd: argv.sd,
    annotations: argv.annotations,
    images: argv.images,
    captions: argv.captions,
    prompts: argv.prompts,
    k: argv.k,
    strategy: argv.strategy,
    topP: argv['top-p'],
    topK: argv['top-k'],
    temperature: argv.temperature,
    repetitionPenalty: argv['repetition-penalty'],
    maxLength: argv['max-length'],
    minLength: argv['min-length'],
    numBeams: argv['num-beams'],
    negative: argv.negative,
    repeats: argv.repeats,
    shard: argv.shard,
    limit: argv.limit,
    sdBatch: argv['sd-batch'],
    progress: argv.progress,
  };
}

/** The options `rerank` and `score` share (similarity models, SD sampling, seed, device), from parsed flags. */
export function reconstructionOptionsFromArgv(argv: Record<string, any>) {
  return {
    clip: argv.clip as string | undefined,
    dino: argv.dino as string | undefined,
    sbert: argv.sbert as string | undefined,
    glove: argv.glove as string | undefined,
    similarity: list(argv.similarity),
    clipVariant: argv['clip-variant'] as string | undefined,
    dinoSize: argv['dino-size'] as number | undefined,
    seed: argv.seed as number | undefined,
    scheduler: argv.scheduler as string | undefined,
    steps: argv.steps as number | undefined,
    guidance: argv.guidance as number | undefined,
    size: argv.size as number | undefined,
    cache: argv.cache as string | undefined,
    device: argv.device as string | undefined,
  };
}

/**
 * The flags `rerank` and `score` share, defined once; defaults from the API's RERANK_DEFAULTS, values checked
 * where they are used (lib/paper/rerank/run.ts buildSettings, sdSettings, clipVariantOf; errors name the flag).
 */
export function reconstructionFlags(y: Argv<{}>): Argv<{}> {
  const d = RERANK_DEFAULTS;
  return y
    .option('clip', { type: 'string', describe: 'CLIP folder (similarity clip / clip-text, and Table 2 CLIP distances; default: none)' })
    .option('dino', { type: 'string', describe: 'DINO ViT folder (similarity dino; default: none)' })
    .option('sbert', { type: 'string', describe: 'sentence-transformers folder (similarity sbert; default: none)' })
    .option('glove', { type: 'string', describe: 'GloVe/word2vec text vectors (similarity wmd; default: none)' })
    .option('scheduler', { type: 'string', default: d.scheduler, describe: `SD scheduler: ${SCHEDULER_NAMES.join(', ')}` })
    .option('steps', { type: 'number', default: d.steps, describe: 'SD denoising steps (at most 1000)' })
    .option('guidance', { type: 'number', default: d.guidance, describe: 'Classifier-free guidance scale' })
    .option('size', { type: 'number', default: d.size, describe: 'Generated image side (pixels)' })
    .option('clip-variant', { type: 'string', default: d.clipVariant, describe: `CLIP embedding used for similarities: ${CLIP_VARIANTS.join(' or ')}` })
    .option('dino-size', { type: 'number', default: d.dinoSize, describe: 'DINO input side' })
    .option('seed', { type: 'number', default: d.seed, describe: 'Base seed (per-item and per-drawing seeds derive from it)' })
    .option('device', { type: 'string', default: d.device, describe: 'cpu, cuda or cuda:N' }) as Argv<{}>;
}

function sharedOptions(y: Argv<{}>): Argv<{}> {
  const d = RERANK_DEFAULTS;
  return reconstructionFlags(y)
    .option('out', { type: 'string', demandOption: true, describe: 'Output folder (run.json, results.jsonl, cache/, report/); rerunning resumes' })
    .option('blip', { type: 'string', demandOption: true, describe: 'Captioner folder: BLIP, or BLIP-2 OPT (picked from config.json)' })
    .option('sd', { type: 'string', demandOption: true, describe: 'Stable Diffusion diffusers folder' })
    .option('k', { type: 'number', default: d.k, alias: 'num-candidates', describe: 'Candidates per item (at most 1000)' })
    .option('negative', { type: 'string', describe: 'Negative prompt (default none)' })
    .option('sd-batch', { type: 'number', default: d.sdBatch, describe: 'Prompts per SD call (ddpm runs one at a time: its step noise is per call)' })
    .option('max-length', { type: 'number', default: d.maxLength, describe: 'BLIP maximum length (tokens)' })
    .option('min-length', { type: 'number', default: d.minLength, describe: 'BLIP minimum length (tokens)' })
    .option('repeats', { type: 'number', default: d.repeats, describe: 'Random baseline picks per item (the baseline is their mean)' })
    .option('shard', { type: 'string', describe: 'i/n: this run does items i, i+n, … (merge with `roundtrip report`; default: all items)' })
    .option('limit', { type: 'number', describe: 'Only the first N items of the dataset (default: all)' })
    .option('cache', { type: 'string', describe: 'Image cache folder (default <out>/cache); can be shared between runs' })
    .option('progress', { type: 'boolean', default: true, describe: 'Progress bar on stderr' })
    .option('report', { type: 'boolean', default: true, describe: 'Write the report at the end (--no-report to skip)' }) as Argv<{}>;
}

async function finish(r: DistributedRerankResult, argv: Record<string, any>): Promise<void> {
  const stats = r.stats;
  process.stderr.write(`${stats.done} item(s) done, ${stats.skipped} already finished; ${stats.sdImages} image(s) generated, ${stats.cacheHits} from the cache\n`);
  // Under roundtrip launch / torchrun every rank did its shard; rank 0 merged them into --out.
  if (r.merged) process.stderr.write(`merged the ranks' shards into ${stats.out} (${stats.items} items)\n`);
  if (argv.report === false || !r.isMain) return;
  const report = await buildReport([stats.out]);
  process.stdout.write(`report: ${report.files.markdown}\n`);
}

const i2t2i: CommandModule<{}, any> = {
  command: 'i2t2i',
  describe: 'Rerank BLIP captions of images by how well SD reconstructs the image from them',
  builder: (y) =>
    sharedOptions(y)
      .option('annotations', { type: 'string', describe: 'Karpathy/COCO annotation file or NoCaps image list (with --images; default: none)' })
      .option('images', { type: 'string', describe: 'Image folder (annotation root, or a plain folder of images; default: none)' })
      .option('captions', { type: 'string', describe: 'Reference captions for a NoCaps image list (default: none)' })
      .option('strategy', { type: 'string', default: RERANK_DEFAULTS.strategy, describe: 'BLIP sampling: top-p (0.9, repetition penalty 1.1), top-k (10), temperature (0.7), beam' })
      .option('top-p', { type: 'number', describe: 'Nucleus mass (default 0.9)' })
      .option('top-k', { type: 'number', describe: 'k for top-k (default 10)' })
      .option('temperature', { type: 'number', describe: 'Temperature (default 0.7 for --strategy temperature)' })
      .option('repetition-penalty', { type: 'number', describe: 'Repetition penalty (default 1.1 when sampling)' })
      .option('num-beams', { type: 'number', describe: 'Beams for --strategy beam (default max(3, k))' })
      .option('similarity', { type: 'string', default: 'clip', describe: 'clip, dino or clip,dino' }),
  handler: async (argv) => finish(await rerankByRank(rerankI2t2i, rerankOptionsFromArgv(argv)), argv),
};

const t2i2t: CommandModule<{}, any> = {
  command: 't2i2t',
  describe: 'Rerank SD images of texts by how close BLIP’s caption of each is to the text',
  builder: (y) =>
    sharedOptions(y)
      .option('prompts', { type: 'string', demandOption: true, describe: 'Prompt file: [{image, caption}] JSON or one prompt per line' })
      .option('images', { type: 'string', describe: 'Folder of the real images named in the prompt file (FID, CLIP distance to the real image; default: none)' })
      .option('num-beams', { type: 'number', default: 3, describe: 'BLIP beams' })
      .option('similarity', { type: 'string', default: 'clip-text', describe: 'clip-text, sbert, cider, wmd (comma-separated)' }),
  handler: async (argv) => finish(await rerankByRank(rerankT2i2t, rerankOptionsFromArgv(argv)), argv),
};

const merge: CommandModule<{}, any> = {
  command: 'merge <dirs..>',
  describe: 'Merge shard folders into one report (same as `roundtrip report DIR…`)',
  builder: (y) => reportBuilder(y),
  handler: async (argv) => {
    const dirs = ((argv.dirs as unknown[]) ?? []).map(String);
    if (dirs.length === 0) throw new RoundtripError('rerank merge: give the shard folders');
    await runReportCommand(dirs, reportOptionsFromArgv(argv));
  },
};

export const command: CommandModule<{}, any> = {
  command: 'rerank <command>',
  describe: 'Training-free reconstruction reranking (image→text→image, text→image→text)',
  builder: (y: Argv<{}>) => y.command(i2t2i).command(t2i2t).command(merge).demandCommand(1),
  handler: () => undefined,
};
