/**
 * StableDiffusionPipeline: a diffusers SD v1.x folder (model_index.json, unet/, vae/, text_encoder/,
 * tokenizer/, scheduler/) loaded into the native UNet, VAE and CLIP text encoder, with classifier-free
 * guided text-to-image generation.
 */
import { hfWeightFiles } from '../../weights/files';
import * as fs from 'fs';
import * as path from 'path';
import { OptionNames, RoundtripError, expectInteger, expectBoolean, expectNumber, expectOneOf, expectString, invalid, optionName } from '../../errors';
import { LIMITS, expectBounded } from '../../limits';
import { loadImage } from '../../image/decode';
import { savePng } from '../../image/encode';
import { preprocessImage, sdVaePreprocess } from '../../image/preprocess';
import { Resample } from '../../image/resample';
import type { RgbImage } from '../../image/types';
import { Autocast, FrozenDtype, NativeModel } from '../../runtime/model';
import type { ModelKind } from '../../runtime/native-methods';
import { Tensor, disposeAll, noGrad } from '../../runtime/tensor';
import { ClipTokenizer } from '../../tokenizers/clip';
import { loadClipTokenizer } from '../../tokenizers/load';
import { SCHEDULER_NAMES, Scheduler, SchedulerName, schedulerName } from './schedulers';
import { readJsonFile } from '../../json';

const readJsonObject = (file: string): Record<string, any> => readJsonFile(file, { object: true });
import { SINGLE_FILE_EXTENSIONS, SingleFileConfigOverrides, SingleFileConfigs, asSafetensorsFiles, isSingleFileCheckpoint, openSingleFile } from './single-file';
import { UNet } from './unet';
import { VAE } from './vae';
import { PACKAGE_ROOT } from '../../paths';

/** The CLIP BPE tokenizer single-file checkpoints use unless told otherwise (openai/clip-vit-large-patch14's vocabulary). */
export const DEFAULT_CLIP_TOKENIZER = path.join(PACKAGE_ROOT, 'weights', 'world-sd', 'tokenizer');

export interface PipelineLoadOptions {
  device?: string;
  /** Trained tensors merged over the base weights (.safetensors, or .pth/.ckpt converted on the fly). */
  partial?: { unet?: string[]; vae?: string[]; textEncoder?: string[] };
  /** Single files: config overrides (a folder with unet_config.json etc., or objects). */
  configs?: SingleFileConfigOverrides;
  /** Single files: the CLIP tokenizer folder (default DEFAULT_CLIP_TOKENIZER). */
  tokenizer?: string;
  /**
   * CPU: hold every component's weights in bf16/fp16, up-cast per op — an approximation that halves the weights'
   * memory (see FrozenDtype); default 'fp32'.
   */
  frozenDtype?: FrozenDtype;
}

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
  /** Called after every denoising step (once per step, in order, before generate resolves). */
  onStep?: (done: number, total: number) => void;
  /** Aborts within one denoising step; generate rejects with the signal's reason and frees its tensors. */
  signal?: AbortSignal;
  /** Decode one image at a time (diffusers' enable_vae_slicing): less memory for batches, same pixels. */
  vaeSlicing?: boolean;
  /** Tiled decode above the VAE's sample_size (diffusers' enable_vae_tiling; see DecodeOptions.tiling). */
  vaeTiling?: boolean;
  /**
   * Once the prompts are encoded, hand the text encoder's mapped weight pages back for the rest of the call (its
   * `releaseWeightPages`): less peak memory for a one-shot process (`roundtrip generate` sets it); a later call
   * reads them in again from the page cache. Default false.
   */
  releaseTextEncoder?: boolean;
  /** img2img: the init image (a file or decoded RGB); the run starts part-way, see `strength`. */
  initImage?: string | RgbImage;
  /**
   * img2img: how much of the schedule to run, in [0, 1] (default 0.8): the run starts at step
   * (steps − ⌊steps·strength⌋)·order from the init latents noised to that timestep (diffusers' get_timesteps).
   */
  strength?: number;
}

export type PipelineComponent = 'unet' | 'vae' | 'textEncoder';

/** One component's load: wall ms (construction + weights, in parallel with the others), bytes mapped and copied. */
export interface ComponentLoad {
  ms: number;
  mappedBytes: number;
  copiedBytes: number;
  file: string;
}

export interface GenerateResult {
  /** Decoded images [N, 3, H, W], unclamped, roughly in [-1, 1] (diffusers shows (x/2+0.5).clamp(0,1)). */
  images: Tensor;
  prompts: string[];
  seeds: number[];
}

/** Defaults of generate() (diffusers' pipeline call), shown by `roundtrip generate --help`. */
export const GENERATE_DEFAULTS = { steps: 50, guidance: 7.5, seed: 0, batch: 1 } as const;

/**
 * The generate() options a caller can get wrong, checked before any model work: prompts, batch, steps, guidance,
 * scheduler, base seed, sizes (a multiple of the VAE factor, within LIMITS.side), img2img strength. generate() runs
 * it first; `roundtrip generate` runs it before loading, with `names` mapping each option to its flag. `factor`:
 * the VAE's downsampling (8 for every SD v1.x; the pipeline passes its own).
 */
export function checkGenerateOptions(prompts: readonly string[], opts: GenerateOptions, names?: OptionNames, factor = 8): { batch: number; steps: number; guidance: number } {
  const n = (key: keyof GenerateOptions | 'prompts') => optionName(names, key);
  if (!Array.isArray(prompts) || prompts.length === 0) throw invalid(n('prompts'), 'at least one prompt', prompts);
  prompts.forEach((p, i) => expectString(`${n('prompts')}[${i}]`, p));
  if (prompts.length > LIMITS.prompts) throw new RoundtripError(`${n('prompts')}: ${prompts.length} prompts is over the limit of ${LIMITS.prompts} per call; split the list`);
  const batch = expectBounded(n('batch'), opts.batch ?? GENERATE_DEFAULTS.batch, LIMITS.batch);
  const steps = expectInteger(n('steps'), opts.steps ?? GENERATE_DEFAULTS.steps, { min: 1, max: LIMITS.steps });
  const guidance = expectNumber(n('guidance'), opts.guidance ?? GENERATE_DEFAULTS.guidance);
  if (opts.scheduler !== undefined) expectOneOf(n('scheduler'), schedulerName(String(opts.scheduler)), SCHEDULER_NAMES);
  if (typeof opts.seed === 'number') expectInteger(n('seed'), opts.seed, { min: 0 });
  for (const key of ['height', 'width'] as const) {
    const v = opts[key];
    if (v === undefined) continue;
    expectBounded(n(key), v, LIMITS.side, factor);
    if (v % factor !== 0) throw invalid(n(key), `a multiple of ${factor}`, v);
  }
  if (opts.strength !== undefined) {
    expectNumber(n('strength'), opts.strength, { min: 0, max: 1 });
    if (opts.initImage === undefined) throw new RoundtripError(`${n('strength')}: only with ${n('initImage')} (img2img)`);
  }
  if (opts.initImage !== undefined && typeof opts.initImage !== 'object') expectString(n('initImage'), opts.initImage);
  for (const key of ['vaeSlicing', 'vaeTiling', 'releaseTextEncoder'] as const) if (opts[key] !== undefined) expectBoolean(n(key), opts[key]);
  return { batch, steps, guidance };
}

export class StableDiffusionPipeline {
  private constructor(
    readonly dir: string,
    readonly unet: UNet,
    readonly vae: VAE,
    readonly textEncoder: NativeModel<'clip'>,
    readonly tokenizer: ClipTokenizer,
    readonly schedulerConfig: Record<string, unknown>,
    /** How each component loaded (wall time including construction; bytes mapped vs copied); folders only. */
    readonly loadTimes: Partial<Record<PipelineComponent, ComponentLoad>> = {},
  ) {}

  /**
   * Loads a diffusers folder onto `device` ("cpu", "cuda", "cuda:N"). `partial` lists safetensors files
   * of trained tensors (e.g. a finetune export of the UNet's `attn2.to_q` weights) merged over the base.
   */
  static async load(dir: string, opts: PipelineLoadOptions = {}): Promise<StableDiffusionPipeline> {
    expectString('model folder', dir);
    // Trained-tensor files may be .pth/.ckpt (the paper release's unet.pth): converted without executing pickles.
    const partialFiles = await asSafetensorsFiles([...(opts.partial?.unet ?? []), ...(opts.partial?.vae ?? []), ...(opts.partial?.textEncoder ?? [])]);
    try {
      const n = [opts.partial?.unet?.length ?? 0, opts.partial?.vae?.length ?? 0];
      const partial = {
        unet: partialFiles.files.slice(0, n[0]),
        vae: partialFiles.files.slice(n[0], n[0] + n[1]),
        textEncoder: partialFiles.files.slice(n[0] + n[1]),
      };
      const pipe = isSingleFileCheckpoint(dir)
        ? await StableDiffusionPipeline.loadSingleFile(dir, { ...opts, partial })
        : await StableDiffusionPipeline.loadFolder(dir, { ...opts, partial });
      if (opts.frozenDtype !== undefined && opts.frozenDtype !== 'fp32') {
        try {
          await pipe.setFrozenDtype(opts.frozenDtype);
        } catch (err) {
          pipe.dispose();
          throw err;
        }
      }
      return pipe;
    } finally {
      partialFiles.cleanup();
    }
  }

  /**
   * A CompVis/LDM single file (`sd-v1-4.ckpt`, a single-file `.safetensors`): configs inferred from its shapes and
   * v1-inference.yaml values, overridden by `opts.configs`; the CLIP tokenizer from `opts.tokenizer` (default: the
   * package's CLIP BPE vocabulary).
   */
  private static async loadSingleFile(file: string, opts: PipelineLoadOptions & { partial: Required<NonNullable<PipelineLoadOptions['partial']>> }): Promise<StableDiffusionPipeline> {
    const opened = await openSingleFile(file, opts.configs);
    const owned: { dispose(): void }[] = [];
    try {
      const tokenizer = loadClipTokenizer(opts.tokenizer ?? DEFAULT_CLIP_TOKENIZER);
      const device = { device: opts.device };
      const { configs, renames } = opened;
      const unet = await UNet.create(configs.unet, device);
      owned.push(unet);
      await unet.model.loadWeights([opened.file], { prefix: renames.unet.prefix, renames: renames.unet.renames });
      if (opts.partial.unet.length) await unet.model.loadWeights(opts.partial.unet, { partial: true });
      const vae = await VAE.create(configs.vae, device);
      owned.push(vae);
      // LDM stores the VAE attention projections as 1×1 convs.
      await vae.model.loadWeights([opened.file], { prefix: renames.vae.prefix, renames: renames.vae.renames, reshapeSingletons: true });
      if (opts.partial.vae.length) await vae.model.loadWeights(opts.partial.vae, { partial: true });
      const text = await NativeModel.create('clip', configs.textEncoder, device);
      owned.push(text);
      await text.loadWeights([opened.file], { prefix: renames.textEncoder.prefix, renames: renames.textEncoder.renames });
      if (opts.partial.textEncoder.length) await text.loadWeights(opts.partial.textEncoder, { partial: true });
      for (const m of [unet.model, vae.model, text]) m.setTrainable([]);
      const pipe = new StableDiffusionPipeline(file, unet, vae, text, tokenizer, configs.scheduler);
      pipe.singleFileConfigs = configs;
      return pipe;
    } catch (err) {
      owned.forEach((m) => m.dispose());
      throw err;
    } finally {
      opened.cleanup();
    }
  }

  /** The configs a single-file pipeline was built with (undefined for folders). */
  singleFileConfigs?: SingleFileConfigs;

  private static async loadFolder(dir: string, opts: PipelineLoadOptions): Promise<StableDiffusionPipeline> {
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory())
      throw new RoundtripError(`${dir}: not a model folder (a diffusers folder, or a single-file ${SINGLE_FILE_EXTENSIONS.join('/')} checkpoint)`);
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
    const unetDir = component('unet');
    const vaeDir = component('vae');
    const textDir = component('text_encoder');
    const unetConfig = readJsonObject(path.join(unetDir, 'config.json'));
    const vaeConfig = readJsonObject(path.join(vaeDir, 'config.json'));
    const textConfig = readJsonObject(path.join(textDir, 'config.json'));
    const files = { unet: findWeightFiles(unetDir), vae: findWeightFiles(vaeDir), textEncoder: findWeightFiles(textDir) };
    const loadTimes: Partial<Record<PipelineComponent, ComponentLoad>> = {};
    // The three components load in parallel, each in one native call (parameters mapped, never initialised).
    const timed = async <K extends ModelKind>(name: PipelineComponent, kind: K, config: object): Promise<NativeModel<K>> => {
      const start = performance.now();
      const m = await NativeModel.fromFiles(kind, config, files[name], { device: opts.device });
      const r = m.loadReport!;
      loadTimes[name] = { ms: performance.now() - start, mappedBytes: r.mappedBytes, copiedBytes: r.copiedBytes, file: files[name].join(', ') };
      return m;
    };
    const settled = await Promise.allSettled([timed('unet', 'unet', unetConfig), timed('vae', 'vae', vaeConfig), timed('textEncoder', 'clip', textConfig)] as const);
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      for (const r of settled) if (r.status === 'fulfilled') r.value.dispose();
      throw failed.reason;
    }
    const [unetModel, vaeModel, text] = settled.map((r) => (r as PromiseFulfilledResult<unknown>).value) as [NativeModel<'unet'>, NativeModel<'vae'>, NativeModel<'clip'>];
    const unet = new UNet(unetModel, unetConfig);
    const vae = new VAE(vaeModel, vaeConfig);
    try {
      if (opts.partial?.unet?.length) await unet.model.loadWeights(opts.partial.unet, { partial: true });
      if (opts.partial?.vae?.length) await vae.model.loadWeights(opts.partial.vae, { partial: true });
      if (opts.partial?.textEncoder?.length) await text.loadWeights(opts.partial.textEncoder, { partial: true });
      for (const m of [unet.model, vae.model, text]) m.setTrainable([]);
      return new StableDiffusionPipeline(dir, unet, vae, text, tokenizer, schedulerConfig, loadTimes);
    } catch (err) {
      [unet, vae, text].forEach((m) => m.dispose());
      throw err;
    }
  }

  /**
   * Holds the weights of every component (all frozen: setTrainable first to train some) in bf16/fp16 on CPU, in
   * parallel; see NativeModel.setFrozenDtype. The conversion time is added to `loadTimes` as `frozenMs`.
   */
  async setFrozenDtype(dtype: FrozenDtype): Promise<void> {
    const start = performance.now();
    await Promise.all([this.unet.model, this.vae.model, this.textEncoder].map((m) => m.setFrozenDtype(dtype)));
    this.frozenMs = performance.now() - start;
  }

  /** Time `setFrozenDtype` took (0 when weights are fp32). */
  frozenMs = 0;

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
    const factor = this.vaeFactor;
    const { batch, steps, guidance } = checkGenerateOptions(prompts, opts, undefined, factor);
    const sampleSize = this.unet.sampleSize;
    let height = opts.height ?? sampleSize * factor;
    let width = opts.width ?? sampleSize * factor;
    const schedName = schedulerName(opts.scheduler ?? String(this.schedulerConfig._class_name ?? 'pndm'));
    const all = prompts.flatMap((p) => Array<string>(batch).fill(p));
    const negatives = typeof opts.negative === 'string' || opts.negative === undefined ? all.map(() => (opts.negative as string | undefined) ?? '') : opts.negative;
    if (!Array.isArray(negatives)) throw invalid('negative', 'a string or one string per prompt', opts.negative);
    const negAll = negatives.length === all.length ? negatives : negatives.length === prompts.length ? prompts.flatMap((_, i) => Array<string>(batch).fill(negatives[i])) : null;
    if (!negAll) throw invalid('negative', `1 or ${prompts.length} negative prompts`, `${negatives.length}`);
    const seeds = Array.isArray(opts.seed) ? opts.seed : all.map((_, k) => ((opts.seed as number | undefined) ?? GENERATE_DEFAULTS.seed) + k);
    if (seeds.length !== all.length) throw invalid('seed', `${all.length} seeds (one per image)`, `${seeds.length}`);
    seeds.forEach((s, i) => expectInteger(`seed[${i}]`, s, { min: 0 }));

    const latentChannels = this.unet.inChannels;
    // img2img (StableDiffusionImg2ImgPipeline): the init image sets the size unless height/width are given.
    const img2img = opts.initImage === undefined ? undefined : await this.img2imgInput(opts.initImage, opts.strength ?? 0.8, opts.height, opts.width);
    if (img2img) [height, width] = [img2img.pixels.shape[2], img2img.pixels.shape[3]];
    const [h, w] = [height / factor, width / factor];
    const decode = this.vae.decodeOptions({ slicing: opts.vaeSlicing ?? false, tiling: opts.vaeTiling ?? false });
    try {
      if (opts.signal?.aborted) throw opts.signal.reason;
      if (img2img) {
        // The run must keep at least one step of the schedule (the scheduler's own start index for `strength`).
        const sched = await Scheduler.create(schedName, this.schedulerConfig);
        try {
          const schedule = await sched.setTimesteps(steps, { strength: img2img.strength });
          const n = schedule.timesteps.shape[0];
          disposeAll([schedule.timesteps, schedule.sigmas, schedule.alphasCumprod, schedule.betas]);
          if (schedule.beginIndex >= n) throw invalid('strength', `a value giving at least one of the ${steps} steps (>= ${1 / steps})`, img2img.strength);
        } finally {
          sched.dispose();
        }
      }
      return await noGrad(async () => {
        const owned: (Tensor | undefined)[] = [];
        try {
          const cond = await this.encodePrompts(all);
          owned.push(cond);
          const uncond = guidance > 1 ? await this.encodePrompts(negAll) : undefined;
          owned.push(uncond);
          if (opts.releaseTextEncoder) await this.textEncoder.releaseWeightPages();
          let initial: Tensor;
          let initLatents: Tensor | undefined;
          if (img2img) {
            ({ noise: initial, init: initLatents } = await this.img2imgLatents(img2img.pixels, seeds));
          } else {
            // One seeded N(0,1) draw per image, so an image does not depend on its batch neighbours.
            const noises = seeds.map((s) => Tensor.randn([1, latentChannels, h, w], s, { device: this.unet.model.device }));
            initial = Tensor.cat(noises, 0);
            disposeAll(noises);
          }
          owned.push(initial, initLatents);
          // The whole loop (CFG, scheduler steps; noise the scheduler draws seeded by the first seed; img2img's
          // start) and the VAE decode: one native call.
          const r = await this.unet.sample(
            { latents: initial, condEmbeds: cond, uncondEmbeds: uncond, initLatents },
            { scheduler: schedName, schedulerConfig: this.schedulerConfig, steps, guidance, seed: seeds[0], strength: img2img?.strength },
            { vae: this.vae, decode, onStep: opts.onStep, signal: opts.signal },
          );
          disposeAll([r.latents, r.timesteps]);
          return { images: r.image!, prompts: all, seeds };
        } finally {
          disposeAll(owned);
        }
      });
    } finally {
      img2img?.pixels.dispose();
    }
  }

  /**
   * The init image as VaeImageProcessor.preprocess gives it: resized (Lanczos) to height×width, default its own
   * size rounded down to a multiple of the VAE factor, in [-1, 1], [1, 3, H, W].
   */
  private async img2imgInput(initImage: string | RgbImage, strength: number, height?: number, width?: number): Promise<{ pixels: Tensor; strength: number }> {
    expectNumber('strength', strength, { min: 0, max: 1 });
    const image = typeof initImage === 'string' ? await loadImage(expectString('initImage', initImage)) : initImage;
    const f = this.vaeFactor;
    const H = height ?? image.height - (image.height % f);
    const W = width ?? image.width - (image.width % f);
    if (H < f || W < f) throw invalid('initImage', `an image of at least ${f}×${f} pixels`, `${image.width}×${image.height}`);
    const t = preprocessImage(image, { ...sdVaePreprocess(), name: 'sd-img2img', resize: { height: H, width: W }, resample: Resample.LANCZOS, centerCrop: null });
    return { pixels: Tensor.fromTypedArray(t.data, [1, ...t.shape.slice(-3)]).to(this.vae.model.device), strength };
  }

  /**
   * img2img's inputs of the native loop: per image, one seeded draw of [2, C, h, w] gives the posterior sample's
   * noise then the diffusion noise (the order diffusers draws them from one generator). The loop noises the init
   * latents (sample·scale) to its first timestep: add_noise(init, noise, t_begin).
   */
  private async img2imgLatents(pixels: Tensor, seeds: number[]): Promise<{ init: Tensor; noise: Tensor }> {
    const C = this.vae.latentChannels;
    const [h, w] = [pixels.shape[2] / this.vaeFactor, pixels.shape[3] / this.vaeFactor];
    const inits: Tensor[] = [];
    const noises: Tensor[] = [];
    try {
      for (const s of seeds) {
        const both = Tensor.randn([2, C, h, w], s, { device: this.unet.model.device });
        const postNoise = both.narrow(0, 0, 1);
        noises.push(both.narrow(0, 1, 1));
        const post = await this.vae.encode(pixels, { noise: postNoise });
        inits.push(post.sampleScaled);
        disposeAll([both, postNoise, post.mean, post.logvar, post.std, post.sample, post.intermediates]);
      }
      return { init: Tensor.cat(inits, 0), noise: Tensor.cat(noises, 0) };
    } finally {
      disposeAll([inits, noises]);
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
