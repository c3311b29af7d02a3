/**
 * `roundtrip eval captions --results R.json --annotations A.json [--metrics …] [--json] [--out FILE] …`
 * `roundtrip eval images --generated DIR [--reference DIR|STATS] [--metrics fid,is,clip,dino] …`
 *
 * Thin layer over lib/metrics/eval: argument checks, the table / JSON output and the atomic --out file.
 */
import type { Argv, CommandModule } from 'yargs';
import { writeFileAtomic } from '../../image';
import {
  CAPTION_EVAL_DEFAULTS,
  CAPTION_EVAL_METRICS,
  DEFAULT_CAPTION_EVAL_METRICS,
  DEFAULT_IMAGE_EVAL_METRICS,
  IMAGE_EVAL_DEFAULTS,
  CaptionEvaluation,
  FID_FEATURE_LAYERS,
  IMAGE_EVAL_METRICS,
  ImageEvaluation,
  evaluateCaptions,
  evaluateImages,
  formatCaptionTable,
  formatImageEvaluation,
  parseImageMetrics,
} from '../../metrics/eval';
import { expectString } from '../../errors';
import { EvalSplit, evalSplitFromEnvironment, isMainRank } from '../../metrics/eval/distributed';
import { EmbeddingVariant } from '../../models/clip';
import { FrechetForm } from '../../metrics';


/** JSON text where non-finite numbers (an infinite WMD) stay visible as "Infinity" / "NaN" strings. */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v), 2) + '\n';
}

export interface EvalCaptionsArgs {
  results: string;
  annotations: string;
  metrics?: string;
  json?: boolean;
  out?: string;
  glove?: string;
  clip?: string;
  clipVariant?: string;
  sbert?: string;
  meteorJar?: string;
  spiceJar?: string;
  java?: string;
  batch?: number;
  device?: string;
  /** Under `roundtrip launch` / torchrun: this rank's share (lib/metrics/eval/distributed.ts); only rank 0 writes. */
  split?: EvalSplit;
}

/** Runs `eval captions`: returns the evaluation and the text to print; writes --out atomically. */
export async function runEvalCaptions(args: EvalCaptionsArgs): Promise<{ evaluation: CaptionEvaluation; output: string }> {
  const evaluation = await evaluateCaptions(expectString('--results', args.results), expectString('--annotations', args.annotations), {
    metrics: args.metrics,
    glove: args.glove,
    clip: args.clip,
    clipVariant: args.clipVariant as EmbeddingVariant | undefined,
    sbert: args.sbert,
    meteorJar: args.meteorJar,
    spiceJar: args.spiceJar,
    java: args.java,
    batchSize: args.batch,
    device: args.device,
    split: args.split,
  }, { metrics: '--metrics', batchSize: '--batch', clipVariant: '--clip-variant' });
  if (!isMainRank(args.split)) return { evaluation, output: '' };
  const perImage = evaluation.perImage.map((p) => ({ image_id: p.image_id, caption: p.caption, ...p.scores }));
  const json = toJson({ ...evaluation, perImage });
  if (args.out !== undefined) await writeFileAtomic(expectString('--out', args.out), Buffer.from(json, 'utf8'));
  const warnings = evaluation.warnings.map((w) => `warning: ${w}\n`).join('');
  return { evaluation, output: args.json ? json : formatCaptionTable(evaluation) + warnings };
}

export interface EvalImagesArgs {
  generated: string;
  reference?: string;
  metrics?: string;
  json?: boolean;
  out?: string;
  inception?: string;
  clip?: string;
  clipVariant?: string;
  dino?: string;
  dinoSize?: number;
  batch?: number;
  fidForm?: string;
  fidFeature?: string;
  isSplits?: number;
  cache?: boolean;
  cacheDir?: string;
  device?: string;
  progress?: boolean;
  /** Under `roundtrip launch` / torchrun: this rank's share (lib/metrics/eval/distributed.ts); only rank 0 writes. */
  split?: EvalSplit;
}

/** Runs `eval images`: returns the evaluation and the text to print; writes --out atomically. */
export async function runEvalImages(args: EvalImagesArgs): Promise<{ evaluation: ImageEvaluation; output: string }> {
  const evaluation = await evaluateImages({
    generated: expectString('--generated', args.generated),
    reference: args.reference,
    metrics: parseImageMetrics(args.metrics, '--metrics'),
    inception: args.inception,
    clip: args.clip,
    clipVariant: args.clipVariant as EmbeddingVariant | undefined,
    dino: args.dino,
    dinoSize: args.dinoSize,
    batchSize: args.batch,
    fidForm: args.fidForm as FrechetForm | undefined,
    fidFeature: args.fidFeature as (typeof FID_FEATURE_LAYERS)[number] | undefined,
    isSplits: args.isSplits,
    cache: args.cache,
    cacheDir: args.cacheDir,
    device: args.device,
    progress: args.progress,
    split: args.split,
  });
  if (!isMainRank(args.split)) return { evaluation, output: '' };
  const json = toJson(evaluation);
  if (args.out !== undefined) await writeFileAtomic(expectString('--out', args.out), Buffer.from(json, 'utf8'));
  return { evaluation, output: args.json ? json : formatImageEvaluation(evaluation) };
}

const captionsCommand: CommandModule<{}, any> = {
  command: 'captions',
  describe: 'Score captions (COCO results layout) against COCO or Karpathy annotations: BLEU, METEOR, ROUGE-L, CIDEr, SPICE, WMD, CLIP-text, SBERT',
  builder: (y: Argv<{}>) =>
    y
      .option('results', { type: 'string', demandOption: true, describe: 'Results file [{image_id, caption}]' })
      .option('annotations', { type: 'string', demandOption: true, describe: 'References: COCO ground truth {annotations: […]} or Karpathy [{image, caption: […]}]' })
      .option('metrics', { type: 'string', default: DEFAULT_CAPTION_EVAL_METRICS.join(','), describe: `Comma-separated: ${CAPTION_EVAL_METRICS.join(', ')}` })
      .option('json', { type: 'boolean', default: false, describe: 'Print JSON (corpus and per-image scores) instead of the table' })
      .option('out', { type: 'string', describe: 'Also write the JSON to this file (atomically; default: stdout only)' })
      .option('glove', { type: 'string', describe: 'wmd: GloVe vectors (text format; default: none)' })
      .option('clip', { type: 'string', describe: 'clip-text: Hugging Face CLIP folder (openai/clip-vit-base-patch32; default: none)' })
      .option('clip-variant', { type: 'string', default: CAPTION_EVAL_DEFAULTS.clipVariant, describe: "clip-text: 'pooled' (text pooler_output, the authors' evaluation) or 'projected' (text_embeds)" })
      .option('sbert', { type: 'string', describe: 'sbert: sentence-transformers folder (all-MiniLM-L6-v2; default: none)' })
      .option('meteor-jar', { type: 'string', describe: 'meteor: meteor-1.5.jar (default $ROUNDTRIP_METEOR_JAR or ~/.cache/roundtrip/jars)' })
      .option('spice-jar', { type: 'string', describe: 'spice: spice-1.0.jar (default $ROUNDTRIP_SPICE_JAR or ~/.cache/roundtrip/jars)' })
      .option('java', { type: 'string', describe: 'Java executable for METEOR/SPICE (default $ROUNDTRIP_JAVA or java)' })
      .option('batch', { type: 'number', default: CAPTION_EVAL_DEFAULTS.batchSize, describe: 'Texts per model call (clip-text, sbert)' })
      .option('device', { type: 'string', default: 'cpu', describe: 'cpu, cuda or cuda:N' }),
  handler: async (argv) => {
    // Under roundtrip launch / torchrun the ranks share the work; rank 0 prints and writes --out.
    const split = await evalSplitFromEnvironment();
    const { output } = await runEvalCaptions({
      split,
      results: argv.results,
      annotations: argv.annotations,
      metrics: argv.metrics,
      json: argv.json,
      out: argv.out,
      glove: argv.glove,
      clip: argv.clip,
      clipVariant: argv['clip-variant'],
      sbert: argv.sbert,
      meteorJar: argv['meteor-jar'],
      spiceJar: argv['spice-jar'],
      java: argv.java,
      batch: argv.batch,
      device: argv.device,
    });
    process.stdout.write(output);
  },
};

const imagesCommand: CommandModule<{}, any> = {
  command: 'images',
  describe: 'FID and Inception Score of generated images, CLIP / DINO distances to paired reference images',
  builder: (y: Argv<{}>) =>
    y
      .option('generated', { type: 'string', demandOption: true, describe: 'Folder of generated images (png/jpg/jpeg)' })
      .option('reference', { type: 'string', describe: 'Folder of reference images, or a FID statistics file (default: none)' })
      .option('metrics', { type: 'string', default: DEFAULT_IMAGE_EVAL_METRICS.join(','), describe: `Comma-separated: ${IMAGE_EVAL_METRICS.join(', ')}` })
      .option('json', { type: 'boolean', default: false, describe: 'Print JSON instead of the summary' })
      .option('out', { type: 'string', describe: 'Also write the JSON to this file (atomically; default: stdout only)' })
      .option('inception', { type: 'string', describe: 'FID Inception weights (.safetensors of pt_inception-2015-12-05) or a folder holding them (default: none)' })
      .option('clip', { type: 'string', describe: 'clip: Hugging Face CLIP folder (default: none)' })
      .option('clip-variant', { type: 'string', default: IMAGE_EVAL_DEFAULTS.clipVariant, describe: "clip: 'pooled' (vision pooler_output) or 'projected' (image_embeds)" })
      .option('dino', { type: 'string', describe: 'dino: ViT/DINO folder (facebook/dino-vitb8) or an original DINO .safetensors file (default: none)' })
      .option('dino-size', { type: 'number', default: IMAGE_EVAL_DEFAULTS.dinoSize, describe: 'dino: input size' })
      .option('batch', { type: 'number', default: IMAGE_EVAL_DEFAULTS.batchSize, describe: 'Images per model call' })
      .option('fid-form', { type: 'string', default: IMAGE_EVAL_DEFAULTS.fidForm, describe: "FID: 'torch-fidelity-0.4' (eigenvalues) or 'sqrtm' (torch-fidelity 0.3 / pytorch-fid)" })
      .option('fid-feature', { type: 'string', default: IMAGE_EVAL_DEFAULTS.fidFeature, describe: `FID feature layer: ${FID_FEATURE_LAYERS.join(', ')}` })
      .option('is-splits', { type: 'number', default: IMAGE_EVAL_DEFAULTS.isSplits, describe: 'IS: number of splits' })
      .option('cache', { type: 'boolean', default: true, describe: 'Cache FID statistics per image set (--no-cache to disable)' })
      .option('cache-dir', { type: 'string', describe: 'FID statistics cache (default $ROUNDTRIP_HOME/fid or ~/.cache/roundtrip/fid)' })
      .option('device', { type: 'string', default: 'cpu', describe: 'cpu, cuda or cuda:N' }),
  handler: async (argv) => {
    const split = await evalSplitFromEnvironment();
    const { output } = await runEvalImages({
      split,
      generated: argv.generated,
      reference: argv.reference,
      metrics: argv.metrics,
      json: argv.json,
      out: argv.out,
      inception: argv.inception,
      clip: argv.clip,
      clipVariant: argv['clip-variant'],
      dino: argv.dino,
      dinoSize: argv['dino-size'],
      batch: argv.batch,
      fidForm: argv['fid-form'],
      fidFeature: argv['fid-feature'],
      isSplits: argv['is-splits'],
      cache: argv.cache,
      cacheDir: argv['cache-dir'],
      device: argv.device,
      progress: true,
    });
    process.stdout.write(output);
  },
};

/** `roundtrip eval <captions|images>`. */
export const command: CommandModule<{}, any> = {
  command: 'eval <command>',
  describe: 'Evaluate captions (COCO metrics, WMD, CLIP-text, SBERT) or generated images (FID, IS, CLIP, DINO)',
  builder: (yargs: Argv<{}>) => yargs.command(captionsCommand).command(imagesCommand).demandCommand(1),
  handler: () => undefined,
};
