/**
 * `roundtrip generate "PROMPT"… --model DIR --out DIR`: Stable Diffusion v1.x text-to-image.
 */
import type { CommandModule } from 'yargs';
import { OptionNames, expectString } from '../../errors';
import { GENERATE_DEFAULTS, StableDiffusionPipeline, checkGenerateOptions } from '../../models/sd/pipeline';
import { FROZEN_DTYPES, FrozenDtype, PRECISIONS, checkFrozenDtype } from '../../runtime/model';
import { SCHEDULER_NAMES } from '../../models/sd/schedulers';
import { ProgressStream, createProgress } from '../../progress';
import { checkMemory, estimateSdSample } from '../../limits';
import { checkOutputDir } from '../../fsutil';
import { checkPromptLength } from '../../paper/rerank/i2t2i';
import { readJsonFile } from '../../json';
import * as fs from 'fs';
import * as path from 'path';
import { CONFIG_DEFAULTS, configInt } from '../../models/config-defaults';

export interface GenerateArgs {
  /** NHWC UNet/VAE (faster cuDNN convolutions on CUDA). */
  channelsLast?: boolean;
  /** CUDA mixed precision: fp32 (default), bf16 or fp16. */
  precision?: 'fp32' | 'bf16' | 'fp16';
  /** CPU: weights held in bf16/fp16 and up-cast per op (an approximation; halves the weights' memory). */
  frozenDtype?: FrozenDtype;
  /** Trained UNet tensors (e.g. a finetune export/unet.safetensors) merged over the model. */
  weights?: string[];
  prompts: string[];
  model: string;
  out: string;
  scheduler?: string;
  steps: number;
  guidance: number;
  negative?: string;
  seed: number;
  height?: number;
  width?: number;
  batch: number;
  device: string;
  /** Decode one image at a time (less memory for batches; the same pixels). */
  vaeSlicing?: boolean;
  /** Tiled VAE decode above the VAE's sample size (bounded memory for large images; an approximation there). */
  vaeTiling?: boolean;
  /** Prints how long each component took to load (and how much was mapped) to the progress stream. */
  verbose?: boolean;
  /** img2img: the init image file and how much of the schedule to run (0–1, default 0.8). */
  initImage?: string;
  strength?: number;
  /** Single-file checkpoints: folder with unet_config.json / vae_config.json / text_encoder_config.json overrides. */
  configs?: string;
  /** Single-file checkpoints: CLIP tokenizer folder (default: the package's CLIP vocabulary). */
  tokenizer?: string;
}

/** How the pipeline's checks name the options in `roundtrip generate`: by its flags. */
export const GENERATE_FLAGS: OptionNames = {
  prompts: 'PROMPT',
  batch: '--batch',
  steps: '--steps',
  guidance: '--guidance',
  scheduler: '--scheduler',
  seed: '--seed',
  height: '--height',
  width: '--width',
  strength: '--strength',
  initImage: '--init-image',
};

/**
 * Checks the arguments before any model is loaded: the pipeline's own check (models/sd/pipeline
 * checkGenerateOptions) with errors naming the flags, and the frozen dtype's (runtime/model checkFrozenDtype).
 */
export function checkGenerateArgs(a: GenerateArgs): GenerateArgs {
  expectString('--model', a.model);
  expectString('--out', a.out);
  checkGenerateOptions(a.prompts, a, GENERATE_FLAGS);
  checkFrozenDtype(a.frozenDtype, a, { frozen: '--frozen-dtype', device: '--device', precision: '--precision' });
  return a;
}

/** Runs a generation and writes PNGs; returns their paths. */
export async function runGenerate(a: GenerateArgs, stream: ProgressStream = process.stderr): Promise<string[]> {
  checkGenerateArgs(a);
  // Memory and the output folder are checked before the model is loaded (one sampling loop holds every image).
  const unetFile = path.join(a.model, 'unet', 'config.json');
  const vaeFile = path.join(a.model, 'vae', 'config.json');
  let pixels = 0;
  if (fs.existsSync(unetFile) && fs.existsSync(vaeFile)) {
    const unet = readJsonFile(unetFile, { what: 'UNet config' });
    const vae = readJsonFile(vaeFile, { what: 'VAE config' });
    const side = configInt(unet, ['sample_size'], CONFIG_DEFAULTS.unet.sampleSize, 'UNet config') * 2 ** (((vae.block_out_channels as unknown[]) ?? [0, 0, 0, 0]).length - 1);
    const [height, width] = [a.height ?? side, a.width ?? side];
    const images = a.prompts.length * a.batch;
    pixels = images * height * width;
    checkMemory(`generate: ${a.prompts.length} prompt(s) × --batch ${a.batch} at ${width}×${height}`, estimateSdSample(unet, vae, { batch: images, height, width, guidance: a.guidance > 1 }), 'give fewer prompts per call, or lower --batch, --height or --width');
  }
  checkOutputDir(a.out, { flag: '--out', bytes: pixels * 3 });
  const pipe = await StableDiffusionPipeline.load(a.model, { device: a.device, partial: { unet: a.weights }, configs: a.configs, tokenizer: a.tokenizer, frozenDtype: a.frozenDtype });
  try {
    if (a.verbose) {
      for (const [name, t] of Object.entries(pipe.loadTimes)) {
        if (!t) continue;
        stream.write(`load ${name}: ${t.ms.toFixed(0)} ms (${(t.mappedBytes / 2 ** 20).toFixed(0)} MB mapped, ${(t.copiedBytes / 2 ** 20).toFixed(0)} MB copied) ${t.file}\n`);
      }
      if (pipe.frozenMs) stream.write(`weights held in ${a.frozenDtype}: ${pipe.frozenMs.toFixed(0)} ms\n`);
      stream.write(`ready to sample after ${(process.uptime() * 1000).toFixed(0)} ms (process start)\n`);
    }
    // CLIP reads 77 tokens: a longer prompt is truncated as diffusers does, but never silently.
    a.prompts.forEach((p, i) => checkPromptLength(pipe, p, `PROMPT ${i + 1}`, (m) => stream.write(`roundtrip: warning: ${m}\n`)));
    if (a.negative) checkPromptLength(pipe, a.negative, '--negative', (m) => stream.write(`roundtrip: warning: ${m}\n`));
    if (a.precision && a.precision !== 'fp32') pipe.setAutocast(a.precision);
    if (a.channelsLast) pipe.setChannelsLast(true);
    let progress: ReturnType<typeof createProgress> | undefined;
    const result = await pipe.generate(a.prompts, {
      scheduler: a.scheduler,
      steps: a.steps,
      guidance: a.guidance,
      negative: a.negative,
      seed: a.seed,
      height: a.height,
      width: a.width,
      batch: a.batch,
      vaeSlicing: a.vaeSlicing,
      vaeTiling: a.vaeTiling,
      releaseTextEncoder: true,  // one call, then the process ends: the prompts' encoder is done with
      initImage: a.initImage,
      strength: a.strength,
      onStep: (done, total) => {
        progress ??= createProgress({ label: 'sampling', total, unit: 'step', stream });
        progress.update(done);
      },
    });
    progress?.done();
    try {
      return await StableDiffusionPipeline.savePngs(result, a.out);
    } finally {
      result.images.dispose();
    }
  } finally {
    pipe.dispose();
  }
}

export const command: CommandModule<{}, any> = {
  command: 'generate <prompts..>',
  describe: 'Generate images (text-to-image, or img2img with --init-image) with a Stable Diffusion v1.x folder or single file',
  builder: (y) =>
    y
      .positional('prompts', { type: 'string', array: true, describe: 'Text prompt(s)' })
      .option('model', { type: 'string', demandOption: true, describe: 'diffusers SD folder (model_index.json, unet/, vae/, ...) or a CompVis single file (sd-v1-4.ckpt, a single-file .safetensors)' })
      .option('weights', { type: 'string', array: true, describe: 'Trained UNet tensors (.safetensors, or .pth/.ckpt such as the paper release\'s unet.pth) merged over the model (default: none)' })
      .option('init-image', { type: 'string', describe: 'img2img: start from this image (PNG/JPEG) (default: none, text-to-image from noise)' })
      .option('strength', { type: 'number', describe: 'img2img: share of the schedule to run, 0–1 (default 0.8)' })
      .option('configs', { type: 'string', describe: 'Single-file --model: folder with unet_config.json / vae_config.json / text_encoder_config.json overriding the inferred configs (default: configs inferred from the file)' })
      .option('tokenizer', { type: 'string', describe: 'Single-file --model: CLIP tokenizer folder (default: the package\'s CLIP vocabulary)' })
      .option('out', { type: 'string', demandOption: true, describe: 'Output folder for the PNGs' })
      .option('scheduler', { type: 'string', describe: `One of ${SCHEDULER_NAMES.join(', ')} (default: the folder's)` })
      .option('steps', { type: 'number', default: GENERATE_DEFAULTS.steps, describe: 'Denoising steps (at most 1000)' })
      .option('guidance', { type: 'number', default: GENERATE_DEFAULTS.guidance, describe: 'Classifier-free guidance scale' })
      .option('negative', { type: 'string', describe: 'Negative prompt (default: none, the empty prompt)' })
      .option('seed', { type: 'number', default: GENERATE_DEFAULTS.seed, describe: 'Seed of the first image (image k uses seed + k)' })
      .option('height', { type: 'number', describe: 'Multiple of 8 (default: sample_size·8)' })
      .option('width', { type: 'number', describe: 'Multiple of 8 (default: sample_size·8)' })
      .option('batch', { type: 'number', default: GENERATE_DEFAULTS.batch, describe: 'Images per prompt' })
      .option('device', { type: 'string', default: 'cpu', describe: 'cpu, cuda or cuda:N' })
      .option('precision', { type: 'string', default: 'fp32', describe: `CUDA mixed precision (autocast): ${PRECISIONS.join(', ')}; CPU runs in fp32` })
      .option('frozen-dtype', { type: 'string', default: 'fp32', describe: `${FROZEN_DTYPES.join(', ')}; CPU: hold the weights in bf16/fp16, computing in fp32 (an approximation: the weights are rounded; half the memory)` })
      .option('channels-last', { type: 'boolean', default: false, describe: 'NHWC UNet/VAE (faster cuDNN convolutions on CUDA)' })
      .option('vae-slicing', { type: 'boolean', default: false, describe: 'Decode one image at a time: less memory for batches, the same pixels' })
      .option('vae-tiling', { type: 'boolean', default: false, describe: "Tiled decode above the VAE's sample size (as diffusers' enable_vae_tiling)" })
      .option('verbose', { type: 'boolean', default: false, describe: 'Print per-component load times' }),
  handler: async (argv) => {
    const paths = await runGenerate({ ...argv, prompts: (argv.prompts as unknown[]).map(String) } as unknown as GenerateArgs);
    for (const p of paths) process.stdout.write(p + '\n');
  },
};
