/**
 * Pretraining the small world models from scratch on the synthetic captioned world (lib/world), on CPU,
 * with the package's own training code, so the whole method runs with no downloads:
 *
 *   out/world-clip/   CLIPModel folder (config.json, model.safetensors, vocab.json, merges.txt, …)
 *   out/world-blip/   BlipForConditionalGeneration folder (config.json, model.safetensors, vocab.txt, …)
 *   out/world-sd/     diffusers StableDiffusionPipeline folder (model_index.json, unet/, vae/,
 *                     text_encoder/ = world-clip's text tower, tokenizer/, scheduler/)
 *
 * Each folder gets a TRAINING.json: the command, seed, world, sizes, steps, losses and held-out metrics.
 * Order: CLIP (its text tower conditions the UNet) → BLIP → VAE → latent scaling factor → UNet.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { OptionNames, RoundtripError, expectInteger, expectString, invalid, optionName } from '../../errors';
import { saveRgbPng } from '../../image/encode';
import { makeGrid, RgbImage } from '../../image';
import { NativeModel } from '../../runtime/model';
import { Blip } from '../../models/blip';
import { StableDiffusionPipeline } from '../../models/sd/pipeline';
import { UNet } from '../../models/sd/unet';
import { VAE } from '../../models/sd/vae';
import { native } from '../../runtime/native';
import { ProgressStream } from '../../progress';
import { disposeAll } from '../../runtime/tensor';
import { BertTokenizer, ClipTokenizer, loadBertTokenizer, loadClipTokenizer } from '../../tokenizers';
import { WorldCounts, writeWorld } from '../../world';
import * as configs from './configs';
import { WorldData, loadWorldData } from './data';
import { evaluateBlip, evaluateClip, evaluateSd } from './evaluate';
import { initTransformer, saveModelWeights } from './init';
import { LoopResult, VAE_KL_WEIGHT, encodeLatents, latentScalingFactor, trainBlip, trainClip, trainUnet, trainVae } from './train';
import { writeFolderAtomic } from '../../fsutil';
import { PACKAGE_ROOT } from '../../paths';

export * from './configs';
export { BatchSampler, loadWorldData } from './data';
export type { SplitData, WorldData } from './data';
export { contrastiveLoss, gaussianKl, blipTrainBatch, CAPTION_DROPOUT, VAE_KL_WEIGHT } from './train';
export type { LoopResult } from './train';
export type { BlipMetrics, ClipMetrics, SdMetrics } from './evaluate';

export const WORLD_MODELS = ['clip', 'blip', 'vae', 'unet'] as const;
export type WorldModelPart = (typeof WORLD_MODELS)[number];
export type PerModel<T> = Record<WorldModelPart, T>;

/** Folder names under the output folder. */
export const WORLD_FOLDERS = { clip: 'world-clip', blip: 'world-blip', sd: 'world-sd' } as const;
export const TRAINING_FILE = 'TRAINING.json';

export interface PretrainOptions {
  /** Where the model folders go. */
  out: string;
  /** Where the world is written (reused when it matches). */
  world: string;
  seed: number;
  counts: WorldCounts;
  steps: PerModel<number>;
  batch: PerModel<number>;
  lr: PerModel<number>;
  sizes: configs.WorldModelSizes;
  /** Where the tokenizer files come from (see `findVocabFiles`); default: the package's weights/ folder. */
  vocab?: string;
  /** Test images used for each metric (default: the whole test split). */
  evalLimit?: number;
  /** SD sampling steps / guidance for the metric. */
  sdSteps: number;
  sdGuidance: number;
  /** Train every step on one fixed batch (checks that each loss goes down). */
  fixedBatch?: boolean;
  /** Skip the held-out metrics. */
  skipMetrics?: boolean;
  /** Storage of floating tensors in the written folders. */
  dtype: 'float16' | 'float32';
  /** Recorded in TRAINING.json. */
  command?: string;
  quiet?: boolean;
  stream?: ProgressStream;
}

/** Defaults of a full run: about 10–15 minutes on two CPU cores. */
export const DEFAULT_PRETRAIN: Omit<PretrainOptions, 'out' | 'world'> = {
  seed: 0,
  counts: { train: 2000, val: 200, test: 200 },
  steps: { clip: 400, blip: 500, vae: 300, unet: 500 },
  batch: { clip: 64, blip: 32, vae: 16, unet: 32 },
  lr: { clip: 1e-3, blip: 1e-3, vae: 1e-3, unet: 1e-3 },
  sizes: { ...configs.DEFAULT_SIZES },
  sdSteps: 25,
  sdGuidance: 4,
  dtype: 'float16',
};

/** `--quick`: a few steps each on a tiny world (tests, smoke runs). */
export const QUICK_PRETRAIN: Omit<PretrainOptions, 'out' | 'world'> = {
  ...DEFAULT_PRETRAIN,
  counts: { train: 16, val: 4, test: 8 },
  steps: { clip: 6, blip: 6, vae: 6, unet: 6 },
  batch: { clip: 8, blip: 8, vae: 4, unet: 8 },
  lr: { clip: 2e-3, blip: 2e-3, vae: 2e-3, unet: 2e-3 },
  sdSteps: 4,
};

export interface PretrainResult {
  folders: { clip: string; blip: string; sd: string };
  losses: PerModel<number[]>;
  seconds: PerModel<number>;
  scalingFactor: number;
  metrics: { clip?: object; blip?: object; sd?: object };
}


/** The tokenizer files the folders carry, read into memory (the source may be the output folder itself). */
interface VocabFiles {
  bertVocab: Buffer;
  clipVocab: Buffer;
  clipMerges: Buffer;
}

/**
 * Finds the real published vocabularies: `vocab.txt` (BERT uncased) and `vocab.json` + `merges.txt`
 * (CLIP BPE), in `dir`, or in its world-blip / world-clip / world-sd/tokenizer (a weights folder made by
 * this command, as the package ships) or bert-base-uncased / clip subfolders.
 */
export function findVocabFiles(dir = path.join(PACKAGE_ROOT, 'weights')): VocabFiles {
  const first = (names: string[], what: string): string => {
    for (const n of names) if (fs.existsSync(path.join(dir, n))) return path.join(dir, n);
    throw new RoundtripError(`${dir}: no ${what} found (looked for ${names.join(', ')}); pass --vocab with a folder holding the BERT and CLIP vocabularies`);
  };
  const bert = first(['vocab.txt', 'world-blip/vocab.txt', 'bert-base-uncased/vocab.txt'], 'BERT vocab.txt');
  const clipDir = path.dirname(first(['vocab.json', 'world-clip/vocab.json', 'world-sd/tokenizer/vocab.json', 'clip/vocab.json'], 'CLIP vocab.json'));
  const merges = path.join(clipDir, 'merges.txt');
  if (!fs.existsSync(merges)) throw new RoundtripError(`${clipDir}: vocab.json without merges.txt`);
  return { bertVocab: fs.readFileSync(bert), clipVocab: fs.readFileSync(path.join(clipDir, 'vocab.json')), clipMerges: fs.readFileSync(merges) };
}

function writeJson(file: string, value: unknown): void {
  fs.writeFileSync(file, JSON.stringify(value, null, 2) + '\n');
}


/** Loss curve summary for TRAINING.json: the first and last values and means over ~20 windows. */
function lossSummary(r: LoopResult): object {
  const l = r.losses;
  const windows = Math.min(20, l.length);
  const size = Math.max(1, Math.floor(l.length / Math.max(1, windows)));
  const curve: number[] = [];
  for (let s = 0; s + size <= l.length; s += size) curve.push(Number((l.slice(s, s + size).reduce((a, b) => a + b, 0) / size).toPrecision(5)));
  return { steps: l.length, first: l[0], last: l[l.length - 1], windowMeans: curve, windowSize: size, seconds: Number(r.seconds.toFixed(1)) };
}

/**
 * Checks pretraining options before any work (`names`: how errors name each option; `roundtrip pretrain-world`
 * passes its flags).
 */
export function checkPretrainOptions(o: PretrainOptions, names?: OptionNames): PretrainOptions {
  const n = (key: keyof PretrainOptions) => optionName(names, key);
  expectString(n('out'), o.out);
  expectString(n('world'), o.world);
  if (o.vocab !== undefined) expectString(n('vocab'), o.vocab);
  if (o.evalLimit !== undefined) expectInteger(n('evalLimit'), o.evalLimit, { min: 1 });
  expectInteger(n('seed'), o.seed, { min: 0, max: 0xffffffff });
  for (const part of WORLD_MODELS) {
    expectInteger(`${n('steps')}.${part}`, o.steps[part], { min: 1 });
    expectInteger(`batch.${part}`, o.batch[part], { min: part === 'clip' ? 2 : 1 });
    if (!(o.lr[part] > 0)) throw invalid(`lr.${part}`, 'a positive number', o.lr[part]);
  }
  if (o.counts.train < 2) throw invalid('counts.train', 'at least 2 training images', o.counts.train);
  if (o.counts.test < 1 && !o.skipMetrics) throw invalid('counts.test', 'at least 1 test image (or skip the metrics)', o.counts.test);
  return o;
}

/** Runs the whole pretraining; see the module comment. */
export async function pretrainWorld(options: PretrainOptions): Promise<PretrainResult> {
  const o = { ...options, batch: { ...options.batch } };
  checkPretrainOptions(o);
  // A batch larger than the training set would repeat images (and break the contrastive diagonal).
  for (const part of WORLD_MODELS) o.batch[part] = Math.min(o.batch[part], o.counts.train);
  const stream = o.stream ?? process.stderr;
  const vocab = findVocabFiles(o.vocab);
  const size = o.sizes.imageSize;
  const { manifest } = await writeWorld(o.world, { seed: o.seed, counts: o.counts, size, quiet: o.quiet, progressStream: stream });
  const data: WorldData = loadWorldData(manifest);
  const { train, test } = data.splits;
  const folders = { clip: path.join(o.out, WORLD_FOLDERS.clip), blip: path.join(o.out, WORLD_FOLDERS.blip), sd: path.join(o.out, WORLD_FOLDERS.sd) };
  const loop = (part: WorldModelPart) => ({ steps: o.steps[part], batch: o.batch[part], lr: o.lr[part], seed: o.seed, fixedBatch: o.fixedBatch, quiet: o.quiet, stream });
  const record = (model: string, extra: object) => ({
    model,
    command: o.command ?? 'pretrainWorld()',
    seed: o.seed,
    world: { seed: o.seed, counts: o.counts, size, generatorVersion: manifest.version },
    device: 'cpu',
    threads: native().getNumThreads(),
    created: new Date().toISOString(),
    ...extra,
  });

  // Scratch folder holding the tokenizers, so training tokenizes exactly as the written folders will.
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-pretrain-vocab-'));
  const owned: { dispose(): void }[] = [];
  try {
    fs.writeFileSync(path.join(scratch, 'vocab.txt'), vocab.bertVocab);
    const bertDir = path.join(scratch, 'bert');
    const clipDir = path.join(scratch, 'clip');
    fs.mkdirSync(bertDir);
    fs.mkdirSync(clipDir);
    fs.renameSync(path.join(scratch, 'vocab.txt'), path.join(bertDir, 'vocab.txt'));
    fs.writeFileSync(path.join(clipDir, 'vocab.json'), vocab.clipVocab);
    fs.writeFileSync(path.join(clipDir, 'merges.txt'), vocab.clipMerges);
    writeJson(path.join(clipDir, 'tokenizer_config.json'), configs.clipTokenizerConfig());
    const bertTok: BertTokenizer = loadBertTokenizer(bertDir);
    const clipTok: ClipTokenizer = loadClipTokenizer(clipDir);

    const losses = {} as PerModel<number[]>;
    const seconds = {} as PerModel<number>;
    const metrics: PretrainResult['metrics'] = {};
    const seedModel = (k: number) => native().manualSeed(o.seed * 16 + k);

    // --- CLIP --------------------------------------------------------------------------------------
    seedModel(1);
    const clipConfig = configs.worldClipConfig(o.sizes);
    const clip = await NativeModel.create('clip', clipConfig);
    owned.push(clip);
    // Token rows the world's captions use (+ start/end of text); the others start at zero and, never
    // receiving a gradient, stay there: out-of-world words map to the null embedding (and compress well).
    const used = new Set<number>([clipTok.sotId, clipTok.eotId]);
    for (const split of [train, data.splits.val]) for (const e of split.entries) for (const c of e.captions) for (const id of clipTok.encode(c)) used.add(id);
    await initTransformer(clip, { seed: o.seed * 16 + 2, keep: /^logit_scale$/, usedRows: { 'text_model.embeddings.token_embedding.weight': used } });
    const clipRun = await trainClip(clip, clipTok, train, size, loop('clip'));
    losses.clip = clipRun.losses;
    seconds.clip = clipRun.seconds;
    clip.setTrainable([]);
    if (!o.skipMetrics) metrics.clip = await evaluateClip(clip, clipTok, test, size, { limit: o.evalLimit });
    await writeFolderAtomic(folders.clip, async (dir) => {
      writeJson(path.join(dir, 'config.json'), clipConfig);
      await saveModelWeights(clip, path.join(dir, 'model.safetensors'), { dtype: o.dtype });
      fs.writeFileSync(path.join(dir, 'vocab.json'), vocab.clipVocab);
      fs.writeFileSync(path.join(dir, 'merges.txt'), vocab.clipMerges);
      writeJson(path.join(dir, 'tokenizer_config.json'), configs.clipTokenizerConfig());
      writeJson(path.join(dir, 'preprocessor_config.json'), clipPreprocessorConfig(size));
      writeJson(path.join(dir, TRAINING_FILE), record('world-clip', {
        objective: 'symmetric contrastive cross-entropy on logits_per_image (CLIP), captions drawn from the 5 per image',
        steps: o.steps.clip, batch: o.batch.clip, lr: o.lr.clip, schedule: 'AdamW, 5% warmup, cosine to 5%, grad-norm clip 1, weight decay 0.01',
        parameters: clip.parameterCount(), loss: lossSummary(clipRun), metrics: metrics.clip ?? null,
      }));
    });

    // --- BLIP --------------------------------------------------------------------------------------
    seedModel(3);
    const blipConfig = configs.worldBlipConfig(o.sizes);
    const blip = await Blip.fromConfig(blipConfig);
    owned.push(blip);
    await initTransformer(blip.model, { seed: o.seed * 16 + 4 });
    const blipRun = await trainBlip(blip, bertTok, train, size, loop('blip'));
    losses.blip = blipRun.losses;
    seconds.blip = blipRun.seconds;
    blip.model.setTrainable([]);
    if (!o.skipMetrics) metrics.blip = await evaluateBlip(blip, bertTok, test, size, { limit: o.evalLimit });
    await writeFolderAtomic(folders.blip, async (dir) => {
      writeJson(path.join(dir, 'config.json'), blipConfig);
      await saveModelWeights(blip.model, path.join(dir, 'model.safetensors'), { dtype: o.dtype });
      fs.writeFileSync(path.join(dir, 'vocab.txt'), vocab.bertVocab);
      writeJson(path.join(dir, 'tokenizer_config.json'), configs.blipTokenizerConfig());
      writeJson(path.join(dir, 'special_tokens_map.json'), { cls_token: '[CLS]', mask_token: '[MASK]', pad_token: '[PAD]', sep_token: '[SEP]', unk_token: '[UNK]' });
      writeJson(path.join(dir, 'preprocessor_config.json'), blipPreprocessorConfig(size));
      writeJson(path.join(dir, TRAINING_FILE), record('world-blip', {
        objective: 'captioning cross-entropy with teacher forcing, [DEC] + pre_caption(caption) + [SEP], no prompt',
        steps: o.steps.blip, batch: o.batch.blip, lr: o.lr.blip, schedule: 'AdamW, 5% warmup, cosine to 5%, grad-norm clip 1, weight decay 0.01',
        parameters: blip.parameterCount(), loss: lossSummary(blipRun), metrics: metrics.blip ?? null,
      }));
    });
    blip.dispose();
    owned.splice(owned.indexOf(blip), 1);

    // --- VAE ---------------------------------------------------------------------------------------
    seedModel(5);
    const vaeConfig = configs.worldVaeConfig(o.sizes);
    const vae = await VAE.create(vaeConfig);
    owned.push(vae);
    const vaeRun = await trainVae(vae, train, size, loop('vae'));
    losses.vae = vaeRun.losses;
    seconds.vae = vaeRun.seconds;
    vae.model.setTrainable([]);
    const latents = await encodeLatents(vae, train, size);
    const scalingFactor = Number(latentScalingFactor(latents, o.seed * 16 + 6).toPrecision(6));
    vaeConfig.scaling_factor = scalingFactor;

    // --- UNet --------------------------------------------------------------------------------------
    seedModel(7);
    const unetConfig = configs.worldUnetConfig(o.sizes);
    const unet = await UNet.create(unetConfig);
    owned.push(unet);
    const schedulerConfig = configs.worldSchedulerConfig();
    const unetRun = await trainUnet({ unet, clip, tokenizer: clipTok, train, latents, scalingFactor, schedulerConfig }, loop('unet'));
    losses.unet = unetRun.losses;
    seconds.unet = unetRun.seconds;
    unet.model.setTrainable([]);

    const textConfig = configs.worldClipTextConfig(o.sizes);
    const sdRecord = (m: object | null) =>
      record('world-sd', {
        text_encoder: 'the text tower of world-clip (CLIPTextModel), frozen while the UNet trained',
        vae: { objective: `pixel MSE of the posterior-sample reconstruction + ${VAE_KL_WEIGHT} × KL(q ‖ N(0,1)) per latent element`, steps: o.steps.vae, batch: o.batch.vae, lr: o.lr.vae, parameters: vae.model.parameterCount(), loss: lossSummary(vaeRun), scaling_factor: scalingFactor, scaling_factor_rule: '1 / std of posterior samples of the training images' },
        unet: { objective: 'ε-prediction MSE (denoising_loss) on scaled latents, DDPM scaled_linear 0.00085–0.012 over 1000 steps, 10% caption dropout', steps: o.steps.unet, batch: o.batch.unet, lr: o.lr.unet, parameters: unet.model.parameterCount(), loss: lossSummary(unetRun) },
        schedule: 'AdamW, 5% warmup, cosine to 5%, grad-norm clip 1, weight decay 0.01',
        metrics: m,
      });
    await writeFolderAtomic(folders.sd, async (dir) => {
      writeJson(path.join(dir, 'model_index.json'), configs.worldModelIndex());
      for (const sub of ['unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler']) fs.mkdirSync(path.join(dir, sub));
      writeJson(path.join(dir, 'unet', 'config.json'), unetConfig);
      await saveModelWeights(unet.model, path.join(dir, 'unet', 'diffusion_pytorch_model.safetensors'), { dtype: o.dtype });
      writeJson(path.join(dir, 'vae', 'config.json'), vaeConfig);
      await saveModelWeights(vae.model, path.join(dir, 'vae', 'diffusion_pytorch_model.safetensors'), { dtype: o.dtype });
      writeJson(path.join(dir, 'text_encoder', 'config.json'), textConfig);
      await saveTextTower(clip, path.join(dir, 'text_encoder', 'model.safetensors'), o.dtype);
      fs.writeFileSync(path.join(dir, 'tokenizer', 'vocab.json'), vocab.clipVocab);
      fs.writeFileSync(path.join(dir, 'tokenizer', 'merges.txt'), vocab.clipMerges);
      writeJson(path.join(dir, 'tokenizer', 'tokenizer_config.json'), configs.clipTokenizerConfig());
      writeJson(path.join(dir, 'scheduler', 'scheduler_config.json'), schedulerConfig);
      writeJson(path.join(dir, TRAINING_FILE), sdRecord(null));
    });
    if (!o.skipMetrics) {
      // Measured through the written folder, as users will load it.
      const pipe = await StableDiffusionPipeline.load(folders.sd);
      try {
        let grid: RgbImage[] = [];
        metrics.sd = await evaluateSd(pipe, test, { limit: o.evalLimit, steps: o.sdSteps, guidance: o.sdGuidance, seed: o.seed, onImages: (imgs) => (grid = imgs.slice(0, 16)) });
        writeJson(path.join(folders.sd, TRAINING_FILE), sdRecord(metrics.sd));
        // A look at the samples, kept next to the world (not in the shipped folder, to keep it small).
        if (grid.length > 0) await saveRgbPng(path.join(o.world, 'world-sd-samples.png'), makeGrid(grid, { columns: Math.min(8, grid.length) }));
      } finally {
        pipe.unet.dispose();
        pipe.vae.dispose();
        pipe.textEncoder.dispose();
      }
    }
    return { folders, losses, seconds, scalingFactor, metrics };
  } finally {
    owned.forEach((m) => m.dispose());
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

/** SD's text_encoder file: the CLIP text tower's tensors under CLIPTextModel names (`text_model.*`). */
async function saveTextTower(clip: NativeModel<'clip'>, file: string, dtype: 'float16' | 'float32'): Promise<void> {
  const names = clip.parameters().map((p) => p.name).filter((n) => n.startsWith('text_model.'));
  const { saveTensors } = await import('../../weights/save');
  const tensors = clip.tensors(names);
  const cast = Object.fromEntries(Object.entries(tensors).sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, t]) => [k, dtype === 'float16' ? t.to(undefined, 'float16') : t]));
  try {
    await saveTensors(file, cast, { format: 'pt' });
  } finally {
    disposeAll(Object.values(cast));
    disposeAll(Object.values(tensors));
  }
}

/** transformers CLIPImageProcessor config at the world's size. */
function clipPreprocessorConfig(size: number): object {
  return {
    crop_size: { height: size, width: size },
    do_center_crop: true,
    do_convert_rgb: true,
    do_normalize: true,
    do_rescale: true,
    do_resize: true,
    image_mean: [0.48145466, 0.4578275, 0.40821073],
    image_processor_type: 'CLIPImageProcessor',
    image_std: [0.26862954, 0.26130258, 0.27577711],
    resample: 3,
    rescale_factor: 0.00392156862745098,
    size: { shortest_edge: size },
  };
}

/** transformers BlipImageProcessor config at the world's size. */
function blipPreprocessorConfig(size: number): object {
  return {
    do_convert_rgb: true,
    do_normalize: true,
    do_rescale: true,
    do_resize: true,
    image_mean: [0.48145466, 0.4578275, 0.40821073],
    image_processor_type: 'BlipImageProcessor',
    image_std: [0.26862954, 0.26130258, 0.27577711],
    processor_class: 'BlipProcessor',
    resample: 3,
    rescale_factor: 0.00392156862745098,
    size: { height: size, width: size },
  };
}
