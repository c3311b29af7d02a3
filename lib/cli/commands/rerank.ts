/**
 * `roundtrip rerank i2t2i|t2i2t …`: training-free reconstruction reranking into an output folder
 * (run.json, results.jsonl, cache/), resumable and shardable; the report is written at the end.
 * `roundtrip rerank merge DIR… --out DIR`: merges shard folders into one report (= `roundtrip report`).
 */
import type { Argv, CommandModule } from 'yargs';
import { RoundtripError } from '../../errors';
import { RerankOptions, rerankI2t2i, rerankT2i2t } from '../../paper/rerank';
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
    out: argv.out,
    blip: argv.blip,
    sd: argv.sd,
    clip: argv.clip,
    dino: argv.dino,
    sbert: argv.sbert,
    glove: argv.glove,
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
    scheduler: argv.scheduler,
    steps: argv.steps,
    guidance: argv.guidance,
    size: argv.size,
    negative: argv.negative,
    similarity: list(argv.similarity),
    clipVariant: argv['clip-variant'],
    dinoSize: argv['dino-size'],
    seed: argv.seed,
    repeats: argv.repeats,
    shard: argv.shard,
    limit: argv.limit,
    device: argv.device,
    cache: argv.cache,
    sdBatch: argv['sd-batch'],
    progress: argv.progress,
  };
}

function sharedOptions(y: Argv<{}>): Argv<{}> {
  return y
    .option('out', { type: 'string', demandOption: true, describe: 'Output folder (run.json, results.jsonl, cache/, report/); rerunning resumes' })
    .option('blip', { type: 'string', demandOption: true, describe: 'Captioner folder: BLIP, or BLIP-2 OPT (picked from config.json)' })
    .option('sd', { type: 'string', demandOption: true, describe: 'Stable Diffusion diffusers folder' })
    .option('clip', { type: 'string', describe: 'CLIP folder (similarity clip / clip-text, and Table 2 CLIP distances; default: none)' })
    .option('dino', { type: 'string', describe: 'DINO ViT folder (similarity dino; default: none)' })
    .option('sbert', { type: 'string', describe: 'sentence-transformers folder (similarity sbert; default: none)' })
    .option('glove', { type: 'string', describe: 'GloVe/word2vec text vectors (similarity wmd; default: none)' })
    .option('k', { type: 'number', default: 10, alias: 'num-candidates', describe: 'Candidates per item (at most 1000)' })
    .option('scheduler', { type: 'string', default: 'ddpm', describe: 'SD scheduler: ddpm, ddim, pndm, euler, lms, dpm++' })
    .option('steps', { type: 'number', default: 50, describe: 'SD denoising steps' })
    .option('guidance', { type: 'number', default: 7.5, describe: 'Classifier-free guidance scale' })
    .option('size', { type: 'number', default: 512, describe: 'Generated image side (pixels)' })
    .option('negative', { type: 'string', describe: 'Negative prompt (default none)' })
    .option('sd-batch', { type: 'number', default: 4, describe: 'Prompts per SD call (ddpm runs one at a time: its step noise is per call)' })
    .option('clip-variant', { type: 'string', default: 'projected', choices: ['projected', 'pooled'], describe: 'CLIP embedding used for similarities' })
    .option('dino-size', { type: 'number', default: 384, describe: 'DINO input side' })
    .option('max-length', { type: 'number', default: 20, describe: 'BLIP maximum length (tokens)' })
    .option('min-length', { type: 'number', default: 5, describe: 'BLIP minimum length (tokens)' })
    .option('seed', { type: 'number', default: 0, describe: 'Base seed (per-item seeds derive from it)' })
    .option('repeats', { type: 'number', default: 5, describe: 'Random baseline picks per item (the baseline is their mean)' })
    .option('shard', { type: 'string', describe: 'i/n: this run does items i, i+n, … (merge with `roundtrip report`; default: all items)' })
    .option('limit', { type: 'number', describe: 'Only the first N items of the dataset (default: all)' })
    .option('cache', { type: 'string', describe: 'Image cache folder (default <out>/cache); can be shared between runs' })
    .option('device', { type: 'string', default: 'cpu', describe: 'cpu, cuda or cuda:N' })
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
      .option('strategy', { type: 'string', default: 'top-p', describe: 'BLIP sampling: top-p (0.9, repetition penalty 1.1), top-k (10), temperature (0.7), beam' })
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
