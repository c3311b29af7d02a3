/**
 * StableDiffusionPipeline: a diffusers SD v1.x folder (model_index.json, unet/, vae/, text_encoder/,
 * tokenizer/, scheduler/) loaded into the native UNet, VAE and CLIP text encoder, with classifier-free
 * guided text-to-image generation.
 */
import { hfWeightFiles } from '../../weights/files';
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError, expectInteger, expectNumber, expectString, invalid } from '../../errors';
import { savePng } from '../../image/encode';
import { Autocast, NativeModel } from '../../model';
import { Tensor, disposeAll, noGrad } from '../../tensor';
import { ClipTokenizer } from '../../tokenizers/clip';
import { loadClipTokenizer } from '../../tokenizers/load';
import { Scheduler, SchedulerName, schedulerName } from './schedulers';
import { readJsonFile } from '../../json';

const readJsonObject = (file: string): Record<string, any> => readJsonFile(file, { object: true });
import { UNet } from './unet';
import { VAE } from './vae';

/** Weight file names of a diffusers component folder, in order of preference. */
export const WEIGHT_FILE_NAMES = [
  'diffusion_pytorch_model.safetensors',
  'model.safetensors',
  'diffusion_pytorch_model.fp16.safetensors',
  'model.fp16.safetensors',
] as const;


/**
 * The safetensors weight files of a component folder: one of WEIGHT_FILE_NAMES, or the shards of a
 * `diffusion_pytorch_model` / `model` safetensors index (named in the error when absent).
 */
export function findWeightFiles(dir: string): string[] {
  for (const name of WEIGHT_FILE_NAMES) if (fs.existsSync(path.join(dir, name))) return [path.join(dir, name)];
  return hfWeightFiles(dir, ['diffusion_pytorch_model', 'model']);
}

/** The safetensors weight file of a component folder (named in the error when absent). */
export function findWeightFile(dir: string): string {
  for (const name of WEIGHT_FILE_NAMES) {
    const file = path.join(dir, name);
    if (fs.existsSync(file)) return file;
  }
  const bin = ['diffusion_pytorch_model.bin', 'pytorch_model.bin'].find((n) => fs.existsSync(path.join(dir, n)));
  if (bin) throw new RoundtripError(`${dir}: only ${bin} is present; convert it to safetensors first (roundtrip weights convert IN OUT)`);
  throw new RoundtripError(`${dir}: no weight file (expected one of ${WEIGHT_FILE_NAMES.join(', ')})`);
}

export interface GenerateOptions {
  /** Negative prompt(s): one for all, or one per prompt. Default "" (the unconditional embedding). */
  negative?: string | string[];
  /** Default: the folder's scheduler class, else pndm. */
  scheduler?: SchedulerName | string;
  steps?: number;
  guidance?: number;
  /** One seed per image, or a base seed (image k gets seed + k). Default 0. */
  seed?: number | number[];
  height?: number;
  width?: number;
  /** Images per prompt. Default 1. */
  batch?: number;
  /** Called after every denoising step. */
  onStep?: (done: number, total: number) => void;
}

export interface GenerateResult {
  /** Decoded images [N, 3, H, W], unclamped, roughly in [-1, 1] (diffusers shows (x/2+0.5).clamp(0,1)). */
  images: Tensor;
  prompts: string[];
  seeds: number[];
}

export class StableDiffusionPipeline {
  private constructor(
    readonly dir: string,
    readonly unet: UNet,
    readonly vae: VAE,
    readonly textEncoder: NativeModel,
    readonly tokenizer: ClipTokenizer,
    readonly schedulerConfig: Record<string, unknown>,
  ) {}

  /**
   * Loads a diffusers folder onto `device` ("cpu", "cuda", "cuda:N"). `partial` lists safetensors files
   * of trained tensors (e.g. a finetune export of the UNet's `attn2.to_q` weights) merged over the base.
   */
  static async load(
    dir: string,
    opts: { device?: string; partial?: { unet?: string[]; vae?: string[]; textEncoder?: string[] } } = {},
  ): Promise<StableDiffusionPipeline> {
    expectString('model folder', dir);
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new RoundtripError(`${dir}: not a model folder`);
    const index = path.join(dir, 'model_index.json');
    if (fs.existsSync(index)) {
      const cls = readJsonObject(index)._class_name;
      if (cls !== undefined && cls !== 'StableDiffusionPipeline') throw invalid(`${index} _class_name`, '"StableDiffusionPipeline"', cls);
    }
    const component = (name: string) => {
      const d = path.join(dir, name);
      if (!fs.existsSync(d)) throw new RoundtripError(`${dir}: missing the ${name}/ folder`);
      return d;
    };
    const schedulerConfig = readJsonObject(path.join(component('scheduler'), 'scheduler_config.json'));
    const tokenizer = loadClipTokenizer(component('tokenizer'));
    const owned: { dispose(): void }[] = [];
    try {
      const unetDir = component('unet');
      const device = { device: opts.device };
      const unet = await UNet.create(readJsonObject(path.join(unetDir, 'config.json')), device);
      owned.push(unet);
      await unet.model.loadWeights(findWeightFiles(unetDir));
      if (opts.partial?.unet?.length) await unet.model.loadWeights(opts.partial.unet, { partial: true });
      const vaeDir = component('vae');
      const vae = await VAE.create(readJsonObject(path.join(vaeDir, 'config.json')), device);
      owned.push(vae);
      await vae.model.loadWeights(findWeightFiles(vaeDir));
      if (opts.partial?.vae?.length) await vae.model.loadWeights(opts.partial.vae, { partial: true });
      const textDir = component('text_encoder');
      const text = await NativeModel.create('clip', readJsonObject(path.join(textDir, 'config.json')), device);
      owned.push(text);
      await text.loadWeights(findWeightFiles(textDir));
      if (opts.partial?.textEncoder?.length) await text.loadWeights(opts.partial.textEncoder, { partial: true });
      for (const m of [unet.model, vae.model, text]) m.setTrainable([]);
      return new StableDiffusionPipeline(dir, unet, vae, text, tokenizer, schedulerConfig);
    } catch (err) {
      owned.forEach((m) => m.dispose());
      throw err;
    }
  }

  /** CUDA autocast for every component's calls ('off' = fp32); see NativeModel.setAutocast. */
  setAutocast(mode: Autocast): void {
    for (const m of [this.unet.model, this.vae.model, this.textEncoder]) m.setAutocast(mode);
  }

  /** Channels-last (NHWC) UNet and VAE: faster cuDNN convolutions; see NativeModel.setChannelsLast. */
  setChannelsLast(on: boolean): void {
    for (const m of [this.unet.model, this.vae.model]) m.setChannelsLast(on);
  }

  /** The VAE's spatial factor (2^(levels-1), 8 for SD). */
  get vaeFactor(): number {
    const levels = ((this.vae.config.block_out_channels as number[] | undefined) ?? [64]).length;
    return 2 ** (levels - 1);
  }

  /** CLIP last_hidden_state of 77-token rows, [B, 77, D]. */
  async encodePrompts(texts: string[]): Promise<Tensor> {
    const ids: number[] = [];
    for (const t of texts) ids.push(...this.tokenizer.sd77(t).ids);
    const input = Tensor.fromTypedArray(BigInt64Array.from(ids.map(BigInt)), [texts.length, this.tokenizer.modelMaxLength], 'int64');
    try {
      const out = await this.textEncoder.call('text', { input_ids: input });
      for (const [k, v] of Object.entries(out)) if (k !== 'last_hidden_state') v.dispose();
      return out.last_hidden_state;
    } finally {
      input.dispose();
    }
  }

  /** Text-to-image with classifier-free guidance (unconditional first, as diffusers). */
  async generate(prompts: string[], opts: GenerateOptions = {}): Promise<GenerateResult> {
    if (!Array.isArray(prompts) || prompts.length === 0) throw invalid('prompts', 'at least one prompt', prompts);
    prompts.forEach((p, i) => expectString(`prompts[${i}]`, p));
    const batch = expectInteger('batch', opts.batch ?? 1, { min: 1 });
    const steps = expectInteger('steps', opts.steps ?? 50, { min: 1, max: 1000 });
    const guidance = expectNumber('guidance', opts.guidance ?? 7.5);
    const factor = this.vaeFactor;
    const sampleSize = Number(this.unet.config.sample_size ?? 64);
    const height = expectInteger('height', opts.height ?? sampleSize * factor, { min: factor });
    const width = expectInteger('width', opts.width ?? sampleSize * factor, { min: factor });
    if (height % factor !== 0) throw invalid('height', `a multiple of ${factor}`, height);
    if (width % factor !== 0) throw invalid('width', `a multiple of ${factor}`, width);
    const schedName = schedulerName(opts.scheduler ?? String(this.schedulerConfig._class_name ?? 'pndm'));
    const all = prompts.flatMap((p) => Array<string>(batch).fill(p));
    const negatives = typeof opts.negative === 'string' || opts.negative === undefined ? all.map(() => (opts.negative as string | undefined) ?? '') : opts.negative;
    if (!Array.isArray(negatives)) throw invalid('negative', 'a string or one string per prompt', opts.negative);
    const negAll = negatives.length === all.length ? negatives : negatives.length === prompts.length ? prompts.flatMap((_, i) => Array<string>(batch).fill(negatives[i])) : null;
    if (!negAll) throw invalid('negative', `1 or ${prompts.length} negative prompts`, `${negatives.length}`);
    const seeds = Array.isArray(opts.seed) ? opts.seed : all.map((_, k) => ((opts.seed as number | undefined) ?? 0) + k);
    if (seeds.length !== all.length) throw invalid('seed', `${all.length} seeds (one per image)`, `${seeds.length}`);
    seeds.forEach((s, i) => expectInteger(`seed[${i}]`, s, { min: 0 }));

    const latentChannels = Number(this.unet.config.in_channels ?? 4);
    const [h, w] = [height / factor, width / factor];
    const sched = await Scheduler.create(schedName, this.schedulerConfig);
    try {
      return await noGrad(async () => {
        const cond = await this.encodePrompts(all);
        const uncond = guidance > 1 ? await this.encodePrompts(negAll) : undefined;
        // One seeded N(0,1) draw per image, so an image does not depend on its batch neighbours.
        const noises = seeds.map((s) => Tensor.randn([1, latentChannels, h, w], s, { device: this.unet.model.device }));
        const initial = Tensor.cat(noises, 0);
        disposeAll(noises);
        const schedule = await sched.setTimesteps(steps, { seed: seeds[0] });
        let latents = initial.mul(schedule.initNoiseSigma);
        initial.dispose();
        const n = schedule.timesteps.shape[0];
        try {
          for (let i = 0; i < n; i++) {
            const t = schedule.timesteps.select(0, i);
            const x = await sched.scaleModelInput(latents, i);
            const eps = await this.unet.guidedEps(x, t, cond, uncond, guidance);
            const r = await sched.step(eps, i, latents);
            disposeAll([t, x, eps, r.predOriginalSample, r.noise]);
            latents.dispose();
            latents = r.prevSample;
            opts.onStep?.(i + 1, n);
          }
          const images = (await this.vae.decode(latents, { scaled: true })).image;
          return { images, prompts: all, seeds };
        } finally {
          disposeAll([latents, cond, uncond, schedule.timesteps, schedule.sigmas, schedule.alphasCumprod, schedule.betas]);
        }
      });
    } finally {
      sched.dispose();
    }
  }

  /** Writes one PNG per image (atomically) as `<prefix>-<index>-<seed>.png`; returns the paths. */
  static async savePngs(result: GenerateResult, outDir: string, prefix = 'image'): Promise<string[]> {
    fs.mkdirSync(outDir, { recursive: true });
    const [n, c, h, w] = result.images.shape;
    const data = result.images.toFloat32Array();
    const size = c * h * w;
    const paths: string[] = [];
    for (let i = 0; i < n; i++) {
      const file = path.join(outDir, `${prefix}-${String(i).padStart(3, '0')}-${result.seeds[i]}.png`);
      await savePng(file, data.subarray(i * size, (i + 1) * size), [c, h, w], { range: '[-1,1]' });
      paths.push(file);
    }
    return paths;
  }

  dispose(): void {
    this.unet.dispose();
    this.vae.dispose();
    this.textEncoder.dispose();
  }
}
