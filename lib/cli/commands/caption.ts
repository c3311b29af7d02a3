/**
 * `roundtrip caption IMAGE… --model DIR [--strategy beam|greedy|top-p|top-k|temperature] [--k N]
 *  [--prompt TEXT] [--max-length N] [--min-length N] [--max-new-tokens N] [--seed S] [--device D] [--json]`:
 * captions images with a BLIP folder (config.json + model.safetensors + vocab.txt) or a BLIP-2 OPT folder
 * (config.json + model.safetensors or shards + vocab.json/merges.txt); the family comes from config.json.
 */
import type { CommandModule } from 'yargs';
import { OptionNames, RoundtripError, expectString, invalid } from '../../errors';
import { FROZEN_DTYPES, FrozenDtype, PRECISIONS, checkFrozenDtype } from '../../runtime/model';
import { Blip, BlipCaptionOptions, BlipStrategy, CaptionTokenizer, checkBlipCaptionOptions } from '../../models/blip';
import { Blip2, Blip2CaptionOptions, checkBlip2CaptionOptions, estimateBlip2Generate } from '../../models/blip2';
import { captionerFamily } from '../../models/captioner';
import type { CaptionerFamily } from '../../models/captioner';
import { DECODING_STRATEGIES, DEFAULT_BEAMS, DEFAULT_STRATEGY, beamCount } from '../../models/decoding';
import { createProgress } from '../../progress';
import { LIMITS, checkMemory, estimateBlipGenerate } from '../../limits';
import { readJsonFile } from '../../json';
import * as fs from 'fs';
import * as path from 'path';

export interface CaptionRequest {
  /** CUDA mixed precision: fp32 (default), bf16 or fp16. */
  precision?: 'fp32' | 'bf16' | 'fp16';
  /** BLIP on CPU: weights held in bf16/fp16 and up-cast per op (an approximation; half the weights' memory). */
  frozenDtype?: FrozenDtype;
  /** Trained tensors (finetune exports) merged over the model's weights. */
  weights?: string[];
  images: string[];
  model: string;
  strategy?: string;
  /** Captions per image. */
  k?: number;
  prompt?: string;
  maxLength?: number;
  minLength?: number;
  /** BLIP-2 only: tokens to generate (wins over maxLength). */
  maxNewTokens?: number;
  numBeams?: number;
  topP?: number;
  topK?: number;
  temperature?: number;
  repetitionPenalty?: number;
  seed?: number;
  device?: string;
  batchSize?: number;
  /** Draw a progress bar (on stderr) for more than one batch. */
  progress?: boolean;
  tokenizer?: CaptionTokenizer;
}

export interface CaptionResult {
  image: string;
  captions: string[];
}

/** How the captioners' checks name their options in `roundtrip caption`: by its flags. */
export const CAPTION_FLAGS: OptionNames = {
  strategy: '--strategy',
  numReturnSequences: '--k',
  numBeams: '--num-beams',
  prompt: '--prompt',
  maxLength: '--max-length',
  minLength: '--min-length',
  maxNewTokens: '--max-new-tokens',
  topP: '--top-p',
  topK: '--top-k',
  temperature: '--temperature',
  repetitionPenalty: '--repetition-penalty',
  seed: '--seed',
  batchSize: '--batch-size',
};

/**
 * The caption options of a request, checked by the captioner's own check (models/blip checkBlipCaptionOptions,
 * models/blip2 checkBlip2CaptionOptions) with errors naming the flags; the beams made explicit (the API's
 * default, decoding.beamCount) so the memory check counts the same beams.
 */
export function captionOptions(req: CaptionRequest, family: Extract<CaptionerFamily, keyof typeof DEFAULT_BEAMS> = 'blip'): BlipCaptionOptions & Blip2CaptionOptions {
  const given: BlipCaptionOptions & Blip2CaptionOptions = {
    strategy: req.strategy as BlipStrategy | undefined,
    numReturnSequences: req.k,
    numBeams: req.numBeams,
    prompt: req.prompt,
    maxLength: req.maxLength,
    minLength: req.minLength,
    maxNewTokens: req.maxNewTokens,
    topP: req.topP,
    topK: req.topK,
    temperature: req.temperature,
    repetitionPenalty: req.repetitionPenalty,
    seed: req.seed,
    batchSize: req.batchSize,
    tokenizer: req.tokenizer,
  };
  const opts = Object.fromEntries(Object.entries(given).filter(([, v]) => v !== undefined)) as BlipCaptionOptions & Blip2CaptionOptions;
  if (family === 'blip2') checkBlip2CaptionOptions(opts, CAPTION_FLAGS);
  else checkBlipCaptionOptions(opts, CAPTION_FLAGS);
  // The API's defaults made explicit, so the memory check counts what generation will run.
  opts.strategy ??= DEFAULT_STRATEGY;
  opts.numReturnSequences ??= 1;
  if (opts.strategy === 'beam') opts.numBeams = beamCount(opts.numBeams, opts.numReturnSequences, DEFAULT_BEAMS[family]);
  return opts;
}

/** BLIP-2 caption options of a request: the same flags, BLIP-2's own defaults (beam 5, 30 new tokens). */
export function blip2CaptionOptions(req: CaptionRequest): Blip2CaptionOptions {
  return captionOptions(req, 'blip2');
}

async function captionWithBlip2(req: CaptionRequest): Promise<CaptionResult[]> {
  const opts = blip2CaptionOptions(req);
  const batch = Math.min(req.images.length, opts.batchSize ?? 4);
  const rows = opts.strategy === 'beam' ? (opts.numBeams ?? DEFAULT_BEAMS.blip2) : (opts.numReturnSequences ?? 1);
  const tokens = opts.maxNewTokens ?? opts.maxLength ?? 30;
  const config = readJsonFile(path.join(req.model, 'config.json'), { what: 'BLIP-2 config' });
  checkMemory(`caption: BLIP-2 weights + --batch-size ${batch} × ${opts.strategy === 'beam' ? `--num-beams ${rows}` : `--k ${rows}`} × ${tokens} tokens`, estimateBlip2Generate(config, { batch, rows, tokens }), 'use a machine with more memory (blip2-opt-2.7b needs about 15 GB in fp32) or lower --k/--num-beams or --batch-size');
  const model = await Blip2.load(req.model, { device: req.device ?? 'cpu', partial: req.weights });
  try {
    if (req.precision && req.precision !== 'fp32') model.model.setAutocast(req.precision);
    const progress = req.progress && req.images.length > batch ? createProgress({ label: 'caption', total: req.images.length, unit: 'image' }) : undefined;
    try {
      const captions = await model.caption(req.images, { ...opts, onProgress: (done) => progress?.update(done) });
      return req.images.map((image, i) => ({ image, captions: captions[i] }));
    } finally {
      progress?.done();
    }
  } finally {
    model.dispose();
  }
}

/** Estimates one caption batch (images × beams or samples) from the model's config, before loading it. */
export function checkCaptionMemory(model: string, images: number, opts: BlipCaptionOptions): void {
  const file = path.join(model, 'config.json');
  if (!fs.existsSync(file)) return; // Blip.load names the missing file.
  const batch = Math.min(images, opts.batchSize ?? 8);
  const rows = opts.strategy === 'beam' ? (opts.numBeams ?? DEFAULT_BEAMS.blip) : (opts.numReturnSequences ?? 1);
  const bytes = estimateBlipGenerate(readJsonFile(file, { what: 'BLIP config' }), { batch, rows, maxLength: opts.maxLength ?? 20 });
  checkMemory(`caption: --batch-size ${batch} × ${opts.strategy === 'beam' ? `--num-beams ${rows}` : `--k ${rows}`} × --max-length ${opts.maxLength ?? 20}`, bytes, 'lower --k/--num-beams or --batch-size');
}

/** Captions the images of a request (the handler's work, callable from tests and scripts). */
export async function captionImages(req: CaptionRequest): Promise<CaptionResult[]> {
  if (!Array.isArray(req.images) || req.images.length === 0) throw invalid('IMAGE', 'at least one image path', req.images);
  req.images.forEach((p, i) => expectString(`IMAGE ${i + 1}`, p));
  if (req.images.length > LIMITS.prompts) throw new RoundtripError(`IMAGE: ${req.images.length} images is over the limit of ${LIMITS.prompts} per call; split the list`);
  const frozen = checkFrozenDtype(req.frozenDtype, req, { frozen: '--frozen-dtype', device: '--device', precision: '--precision' });
  if (captionerFamily(expectString('--model', req.model)) === 'blip2') {
    if (frozen !== 'fp32') throw new RoundtripError(`--frozen-dtype ${frozen}: BLIP models only (${req.model} is BLIP-2)`);
    return captionWithBlip2(req);
  }
  if (req.maxNewTokens !== undefined) throw invalid('--max-new-tokens', 'a BLIP-2 model (BLIP counts --max-length)', req.maxNewTokens);
  const opts = captionOptions(req);
  checkCaptionMemory(expectString('--model', req.model), req.images.length, opts);
  const blip = await Blip.load(expectString('--model', req.model), { device: req.device ?? 'cpu', partial: req.weights });
  if ((req.precision && req.precision !== 'fp32') || frozen !== 'fp32') {
    try {
      if (req.precision && req.precision !== 'fp32') blip.model.setAutocast(req.precision);
      await blip.model.setFrozenDtype(frozen);
    } catch (err) {
      blip.dispose();
      throw err;
    }
  }
  const batch = opts.batchSize ?? 8;
  const progress = req.progress && req.images.length > batch ? createProgress({ label: 'caption', total: req.images.length, unit: 'image' }) : undefined;
  try {
    const captions = await blip.caption(req.images, { ...opts, onProgress: (done) => progress?.update(done) });
    return req.images.map((image, i) => ({ image, captions: captions[i] }));
  } finally {
    progress?.done();
    blip.dispose();
  }
}

/** Plain output: `image<TAB>caption`, one line per caption. */
export function formatCaptions(results: CaptionResult[]): string {
  return results.map((r) => r.captions.map((c) => `${r.image}\t${c}`).join('\n')).join('\n') + '\n';
}

export const command: CommandModule<{}, any> = {
  command: 'caption <images..>',
  describe: 'Caption images with a BLIP or BLIP-2 (OPT) model folder',
  builder: (y) =>
    y
      .positional('images', { type: 'string', array: true, describe: 'Image files' })
      .option('model', { type: 'string', demandOption: true, describe: 'BLIP folder (config.json, model.safetensors, vocab.txt) or BLIP-2 OPT folder (config.json, safetensors or shards, vocab.json, merges.txt)' })
      .option('weights', { type: 'string', array: true, describe: 'Trained tensors (e.g. a finetune export/blip.safetensors) merged over the model (default: none)' })
      .option('strategy', { type: 'string', default: DEFAULT_STRATEGY, describe: `Decoding: ${DECODING_STRATEGIES.join(', ')}` })
      .option('k', { type: 'number', default: 1, alias: 'num-candidates', describe: `Captions per image (beams returned, or independent samples; at most ${LIMITS.k})` })
      .option('num-beams', { type: 'number', describe: 'Beams for --strategy beam (default max(3, k); BLIP-2 max(5, k))' })
      .option('prompt', { type: 'string', describe: "Text the captions continue (e.g. 'a picture of '); not printed (default: none)" })
      .option('max-length', { type: 'number', describe: 'Maximum length, start token included (BLIP: default 20, prompt included; BLIP-2: prompt not included)' })
      .option('min-length', { type: 'number', describe: 'Minimum length before EOS may appear, start token included (BLIP default 5, BLIP-2 0)' })
      .option('max-new-tokens', { type: 'number', describe: 'BLIP-2: tokens to generate (default 30; wins over --max-length)' })
      .option('top-p', { type: 'number', describe: 'Nucleus mass for --strategy top-p (default 0.9)' })
      .option('top-k', { type: 'number', describe: 'k for --strategy top-k (default 50; top-p also applies it)' })
      .option('temperature', { type: 'number', describe: 'Sampling temperature (default 1)' })
      .option('repetition-penalty', { type: 'number', describe: 'transformers repetition penalty (default 1)' })
      .option('seed', { type: 'number', describe: 'Seed for sampling strategies (same seed, same captions; default: none, a fresh draw)' })
      .option('batch-size', { type: 'number', describe: 'Images per native call (default 8; BLIP-2 4)' })
      .option('device', { type: 'string', default: 'cpu', describe: 'cpu, cuda or cuda:N' })
      .option('precision', { type: 'string', default: 'fp32', describe: `CUDA mixed precision (autocast): ${PRECISIONS.join(', ')}; CPU runs in fp32` })
      .option('frozen-dtype', { type: 'string', default: 'fp32', describe: `${FROZEN_DTYPES.join(', ')}; BLIP on CPU: hold the weights in bf16/fp16, computing in fp32 (an approximation: rounded weights, half the memory)` })
      .option('json', { type: 'boolean', default: false, describe: 'Print JSON [{image, captions}]' }),
  handler: async (argv) => {
    const images = ((argv.images as unknown[]) ?? []).map((p) => String(p));
    if (images.length === 0) throw new RoundtripError('caption: give at least one image file');
    const results = await captionImages({
      images,
      model: argv.model,
      weights: argv.weights,
      precision: argv.precision,
      frozenDtype: argv['frozen-dtype'],
      strategy: argv.strategy,
      k: argv.k,
      numBeams: argv['num-beams'],
      prompt: argv.prompt,
      maxLength: argv['max-length'],
      minLength: argv['min-length'],
      maxNewTokens: argv['max-new-tokens'],
      topP: argv['top-p'],
      topK: argv['top-k'],
      temperature: argv.temperature,
      repetitionPenalty: argv['repetition-penalty'],
      seed: argv.seed,
      batchSize: argv['batch-size'],
      device: argv.device,
      progress: true,
    });
    process.stdout.write(argv.json ? JSON.stringify(results, null, 2) + '\n' : formatCaptions(results));
  },
};
