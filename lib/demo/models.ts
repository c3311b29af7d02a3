/**
 * The demo's models: the small world models shipped in the package's weights/ folder (made by
 * `roundtrip pretrain-world`), or — when a checkout lacks them — a quick pretraining into the cache;
 * and, after finetuning, complete model folders with the finetuned tensors merged in (loaded through
 * the partial-weights path), so reranking and evaluation load them like any other folder.
 */
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError } from '../errors';
import { Blip } from '../models/blip';
import { StableDiffusionPipeline } from '../models/sd/pipeline';
import { ProgressStream } from '../progress';
import { QUICK_PRETRAIN, TRAINING_FILE, WORLD_FOLDERS, findVocabFiles, pretrainWorld } from '../train/pretrain';
import { saveModelWeights } from '../train/pretrain/init';
import { NativeModel } from '../runtime/model';
import { disposeAll } from '../runtime/tensor';
import { loadSafetensors } from '../weights/safetensors';
import { writeFolderAtomic } from '../fsutil';
import { readJsonFile } from '../json';
import { CONFIG_DEFAULTS, configInt } from '../models/config-defaults';
import { PACKAGE_ROOT } from '../paths';
import type { RerankOptions } from '../paper/rerank';

/** Package root (lib/demo → root, also from dist/demo). */
export const DEFAULT_WEIGHTS_DIR = path.join(PACKAGE_ROOT, 'weights');

export interface WorldModels {
  blip: string;
  sd: string;
  clip: string;
  /** Where they came from. */
  source: 'weights' | 'cache' | 'pretrained-now';
  /** The world the models were trained on (seed and image size; the demo's world must match them). */
  world: { seed: number; size: number };
  /** Seconds spent pretraining (0 unless `pretrained-now`). */
  pretrainSeconds: number;
  notes: string[];
}

/** The files whose presence marks a complete folder of each model. */
const REQUIRED: Record<keyof typeof WORLD_FOLDERS, string[]> = {
  clip: ['config.json', 'model.safetensors', 'vocab.json', 'merges.txt'],
  blip: ['config.json', 'model.safetensors', 'vocab.txt'],
  sd: ['model_index.json', 'unet/config.json', 'unet/diffusion_pytorch_model.safetensors', 'vae/diffusion_pytorch_model.safetensors', 'text_encoder/model.safetensors', 'tokenizer/vocab.json', 'scheduler/scheduler_config.json'],
};

function complete(dir: string): boolean {
  return (Object.keys(WORLD_FOLDERS) as (keyof typeof WORLD_FOLDERS)[]).every((m) => REQUIRED[m].every((f) => fs.existsSync(path.join(dir, WORLD_FOLDERS[m], f))));
}

/** World seed and image size recorded by pretrain-world (TRAINING.json), defaulting to seed 0 and the BLIP input size. */
function trainedWorld(dir: string): { seed: number; size: number } {
  const blipConfig = readJsonFile(path.join(dir, WORLD_FOLDERS.blip, 'config.json'), { what: 'BLIP config', object: true });
  const size = configInt(blipConfig, ['vision_config', 'image_size'], CONFIG_DEFAULTS.blip.imageSize, 'BLIP config');
  const training = path.join(dir, WORLD_FOLDERS.blip, TRAINING_FILE);
  let seed = 0;
  if (fs.existsSync(training)) {
    const record = readJsonFile(training, { what: 'training record', object: true });
    if (Number.isInteger(record?.world?.seed)) seed = record.world.seed;
  }
  return { seed, size };
}

function folders(dir: string): { blip: string; sd: string; clip: string } {
  return { blip: path.join(dir, WORLD_FOLDERS.blip), sd: path.join(dir, WORLD_FOLDERS.sd), clip: path.join(dir, WORLD_FOLDERS.clip) };
}

/** BLIP decoding limit: the world's captions run to 16 words, more than the paper's 20-token COCO limit leaves room for. */
export const DEMO_MAX_LENGTH = 24;
export const DEMO_MIN_LENGTH = 5;

/**
 * The reranking options every run on the world shares (the demo's phases, `roundtrip sweep`): its models, DDIM
 * sampling at the world's image side, BLIP's caption lengths for the world's captions; the caller adds the data,
 * the similarity, `out` and its decoding.
 */
export function worldRerankOptions(
  models: WorldModels,
  o: { k: number; sdSteps: number; guidance: number; seed: number; repeats: number; device: string; sdBatch: number; progress: boolean; onWarning?: (message: string) => void },
): Omit<RerankOptions, 'out'> {
  return {
    blip: models.blip,
    sd: models.sd,
    clip: models.clip,
    k: o.k,
    scheduler: 'ddim',
    steps: o.sdSteps,
    guidance: o.guidance,
    size: models.world.size,
    seed: o.seed,
    repeats: o.repeats,
    device: o.device,
    sdBatch: o.sdBatch,
    maxLength: DEMO_MAX_LENGTH,
    minLength: DEMO_MIN_LENGTH,
    progress: o.progress,
    ...(o.onWarning ? { onWarning: o.onWarning } : {}),
  };
}

/**
 * Finds the world models: `weights` (default the package's weights/) when it holds all three folders,
 * else a previous fallback in `<cache>/models`, else runs the quick pretraining there now (seconds; the
 * models barely learn, which the report says).
 */
export async function resolveWorldModels(opts: { weights?: string; cache: string; vocab?: string; quiet?: boolean; stream?: ProgressStream; warn: (m: string) => void }): Promise<WorldModels> {
  const weights = path.resolve(opts.weights ?? DEFAULT_WEIGHTS_DIR);
  if (complete(weights)) return { ...folders(weights), source: 'weights', world: trainedWorld(weights), pretrainSeconds: 0, notes: [] };
  const fallback = path.join(opts.cache, 'models');
  const note = `the pretrained world models are not in ${weights} (world-blip/, world-sd/, world-clip/ from \`roundtrip pretrain-world --out weights\`); using a quick pretraining (${QUICK_PRETRAIN.steps.blip} steps per model) in ${fallback}: these models have barely learned, so the numbers below say little about the method`;
  if (complete(fallback)) {
    opts.warn(note);
    return { ...folders(fallback), source: 'cache', world: trainedWorld(fallback), pretrainSeconds: 0, notes: [note] };
  }
  opts.warn(note);
  let vocab = opts.vocab;
  if (vocab === undefined) {
    try {
      findVocabFiles(weights);
      vocab = weights;
    } catch (err) {
      throw new RoundtripError(`${(err as Error).message}; the demo needs them to pretrain its fallback models (pass --vocab DIR)`);
    }
  }
  const started = Date.now();
  await pretrainWorld({
    ...QUICK_PRETRAIN,
    out: fallback,
    world: path.join(opts.cache, 'pretrain-world'),
    vocab,
    skipMetrics: true,
    quiet: opts.quiet,
    stream: opts.stream,
    command: 'roundtrip demo (fallback quick pretraining)',
  });
  return { ...folders(fallback), source: 'pretrained-now', world: trainedWorld(fallback), pretrainSeconds: (Date.now() - started) / 1000, notes: [note] };
}

/** Copies a folder tree except the files `skip` names (relative, forward slashes). */
function copyTree(from: string, to: string, skip: Set<string>, rel = ''): void {
  fs.mkdirSync(path.join(to, rel), { recursive: true });
  for (const entry of fs.readdirSync(path.join(from, rel), { withFileTypes: true })) {
    const child = rel ? `${rel}/${entry.name}` : entry.name;
    if (skip.has(child) || entry.name.startsWith('.')) continue;
    if (entry.isDirectory()) copyTree(from, to, skip, child);
    else if (entry.isFile()) fs.copyFileSync(path.join(from, child), path.join(to, child));
  }
}


/** How far the finetuned tensors moved from the base model's. */
export interface TensorChange {
  tensors: number;
  /** Largest |finetuned − base| over every element. */
  maxAbsChange: number;
  /** Root-mean-square change over every element. */
  rmsChange: number;
}

async function changeOf(file: string, model: NativeModel): Promise<TensorChange> {
  const saved = await loadSafetensors(file);
  const current = model.tensors(Object.keys(saved));
  try {
    let max = 0;
    let sum = 0;
    let count = 0;
    for (const [name, t] of Object.entries(saved)) {
      const base = current[name];
      if (!base) throw new RoundtripError(`${file}: tensor '${name}' is not a parameter of the model it was exported from`);
      const a = t.toFloat32Array();
      const b = base.toFloat32Array();
      for (let i = 0; i < a.length; i++) {
        const d = Math.abs(a[i] - b[i]);
        if (d > max) max = d;
        sum += d * d;
      }
      count += a.length;
    }
    return { tensors: Object.keys(saved).length, maxAbsChange: max, rmsChange: count ? Math.sqrt(sum / count) : 0 };
  } finally {
    disposeAll(Object.values(saved));
    disposeAll(Object.values(current));
  }
}

export interface FinetunedFolders {
  blip: string;
  sd: string;
  change: { blip?: TensorChange; unet?: TensorChange };
}

/**
 * Loads the base models with the finetuning's exported partial files merged on top
 * (`Blip.load(dir, {partial})`, `StableDiffusionPipeline.load(dir, {partial: {unet}})`) and writes them
 * as complete folders (float32, so small updates are not rounded away), next to a record of how far
 * the finetuned tensors moved from the base ones.
 */
export async function writeFinetunedFolders(base: { blip: string; sd: string }, exported: { blip?: string; unet?: string }, outDir: string, device: string): Promise<FinetunedFolders> {
  const result: FinetunedFolders = { blip: path.join(outDir, 'world-blip-finetuned'), sd: path.join(outDir, 'world-sd-finetuned'), change: {} };
  fs.mkdirSync(outDir, { recursive: true });
  await writeFolderAtomic(result.blip, async (dir) => {
    const baseBlip = await Blip.load(base.blip, { device });
    try {
      if (exported.blip) result.change.blip = await changeOf(exported.blip, baseBlip.model);
    } finally {
      baseBlip.dispose();
    }
    const blip = await Blip.load(base.blip, { device, partial: exported.blip ? [exported.blip] : [] });
    try {
      copyTree(base.blip, dir, new Set(['model.safetensors', TRAINING_FILE]));
      await saveModelWeights(blip.model, path.join(dir, 'model.safetensors'), { dtype: 'float32' });
    } finally {
      blip.dispose();
    }
  });
  await writeFolderAtomic(result.sd, async (dir) => {
    const baseSd = await StableDiffusionPipeline.load(base.sd, { device });
    try {
      if (exported.unet) result.change.unet = await changeOf(exported.unet, baseSd.unet.model);
    } finally {
      baseSd.dispose();
    }
    const sd = await StableDiffusionPipeline.load(base.sd, { device, partial: exported.unet ? { unet: [exported.unet] } : {} });
    try {
      copyTree(base.sd, dir, new Set(['unet/diffusion_pytorch_model.safetensors', TRAINING_FILE, 'samples.png']));
      await saveModelWeights(sd.unet.model, path.join(dir, 'unet', 'diffusion_pytorch_model.safetensors'), { dtype: 'float32' });
    } finally {
      sd.dispose();
    }
  });
  return result;
}
