/**
 * `roundtrip finetune --config FILE.json [flags]`: joint BLIP + Stable Diffusion finetuning (paper,
 * Section 4). Flags override the file's keys. Config files are JSON or YAML.
 */
import * as fs from 'fs';
import type { CommandModule } from 'yargs';
import { RoundtripError, expectString } from '../../errors';
import { DEFAULT_CONFIG, FinetuneConfig, FinetuneResult, SIGNAL_EXIT, finetune, resolveConfig } from '../../train/finetune';
import { LIMITS } from '../../limits';
import { parse as parseYaml } from 'yaml';
import { parseJsonText } from '../../json';

/** Flag name (camelCase, as yargs gives it) → config key; all config keys are accepted as flags. */
export const FINETUNE_FLAGS = [
  'blip', 'sd', 'bridge', 'annotations', 'images', 'limit', 'valAnnotations', 'valImages', 'valSize', 'validateEvery', 'output', 'device', 'seed',
  'objective', 'schedule', 'temperature', 'softMode', 'recTxtMode', 'labelSmoothing', 'lr', 'beta1', 'beta2', 'eps', 'weightDecay', 'clip',
  'lrSchedule', 'warmupSteps', 'minLr', 'batchSize', 'gradAccum', 'epochs', 'maxSteps', 'sdSize', 'sdRandomCrop', 'sdFlip', 'blipSize',
  'blipMinScale', 'prefetch', 'checkpointEvery', 'keepLast', 'resume', 'progress', 'threads', 'precision', 'frozenDtype', 'gradientCheckpointing', 'trainingConvPacking', 'cacheLatents', 'prompt',
  'overwrite', 'nanPolicy', 'nanRetries', 'nanLrFactor', 'weightBound',
  'softFraming', 'clipPadding', 'recTxtNormalize', 'clipMode', 'blipWeightDecay', 'unetWeightDecay', 'blipClip', 'unetClip',
  'recipe', 'blipFlip', 'blipRandAugment', 'flipSides', 'allReduceBucketMib', 'allReduceOverlap',
] as const;

/** Reads a config file: `.yaml`/`.yml` as YAML, anything else as JSON. */
export function readConfigFile(file: string): Record<string, unknown> {
  expectString('--config', file);
  const isYaml = /\.ya?ml$/i.test(file);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new RoundtripError(`--config ${file}: ${err instanceof Error ? err.message : String(err)}`);
  }
  let parsed: unknown;
  try {
    parsed = isYaml ? parseYaml(text) : parseJsonText(text, `--config ${file}`);
  } catch (err) {
    throw new RoundtripError(`--config ${file}: invalid ${isYaml ? 'YAML' : 'JSON'} (${err instanceof Error ? err.message : String(err)})`);
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new RoundtripError(`--config ${file}: expected a mapping of settings at the top level`);
  return parsed as Record<string, unknown>;
}

export interface FinetuneRequest {
  config?: string;
  trainableBlip?: string;
  trainableUnet?: string;
  /** Per-term weights: λ_cap, λ_rec_img, λ_sd, λ_rec_txt. */
  lambdaCap?: number;
  lambdaRecImg?: number;
  lambdaSd?: number;
  lambdaRecTxt?: number;
  [key: string]: unknown;
}

/** Merges file + flags, validates and runs (the handler's work; callable from tests and scripts). */
export function finetuneConfigFrom(req: FinetuneRequest): FinetuneConfig {
  const file = req.config ? readConfigFile(req.config) : {};
  const merged: Record<string, unknown> = { ...file };
  for (const k of FINETUNE_FLAGS) if (req[k] !== undefined) merged[k] = req[k];
  const trainable = { ...((file.trainable as object) ?? {}) } as Record<string, unknown>;
  if (req.trainableBlip !== undefined) trainable.blip = req.trainableBlip;
  if (req.trainableUnet !== undefined) trainable.unet = req.trainableUnet;
  if (Object.keys(trainable).length) merged.trainable = trainable;
  const weights = { ...((file.weights as object) ?? {}) } as Record<string, unknown>;
  for (const [flag, key] of [['lambdaCap', 'cap'], ['lambdaRecImg', 'recImg'], ['lambdaSd', 'sd'], ['lambdaRecTxt', 'recTxt']] as const) if (req[flag] !== undefined) weights[key] = req[flag];
  if (Object.keys(weights).length) merged.weights = weights;
  const routes = { ...((file.routes as object) ?? {}) } as Record<string, unknown>;
  if (req.recImgRoute !== undefined) routes.recImg = req.recImgRoute;
  if (req.recTxtRoute !== undefined) routes.recTxt = req.recTxtRoute;
  if (Object.keys(routes).length) merged.routes = routes;
  return resolveConfig(merged, req.config ? `--config ${req.config}` : 'finetune flags');
}

export async function runFinetuneCommand(req: FinetuneRequest): Promise<FinetuneResult> {
  return finetune(finetuneConfigFrom(req));
}

/** Help of every flag; the default is appended from DEFAULT_CONFIG (one source of truth). */
const HELP: Record<string, [type: 'string' | 'number' | 'boolean', describe: string]> = {
  config: ['string', 'JSON or YAML config (see examples/finetune-coco.json); flags override its keys'],
  recipe: ['string', "Preset of training details: default (this package's) or release (the authors' code; lib/train/finetune/recipes.ts); keys given override it"],
  blip: ['string', 'Captioner folder: BLIP (config.json, model.safetensors, vocab.txt) or BLIP-2 OPT (config.json, safetensors or shards, vocab.json + merges.txt), or a pulled alias (required)'],
  sd: ['string', 'diffusers Stable Diffusion folder or pulled alias (required)'],
  bridge: ['string', 'Vocabulary bridge JSON (default: learned from the training captions)'],
  annotations: ['string', 'Karpathy-layout training list [{image, caption, image_id}] (required)'],
  images: ['string', 'Folder the annotation image paths are relative to (required)'],
  limit: ['number', 'Use only the first N training items (default: all)'],
  valAnnotations: ['string', 'Validation list with caption arrays, scored with CIDEr-D (default: none)'],
  valImages: ['string', 'Validation images folder (default: --images)'],
  valSize: ['number', 'Validation images'],
  validateEvery: ['number', 'Validate every N steps (0: never)'],
  output: ['string', 'Run folder: checkpoints/, log.jsonl, export/, report (required; must be empty unless --resume or --overwrite)'],
  device: ['string', 'cpu, cuda or cuda:N'],
  seed: ['number', 'Seed of the data order, augmentation and noise'],
  trainableBlip: ['string', 'Captioner tensors trained: xattn-q, xattn-kv, xattn-qkv, none; BLIP also text-decoder (every text-decoder weight); BLIP-2 also projection (language_projection), its vision tower and OPT always frozen'],
  trainableUnet: ['string', 'UNet tensors trained: xattn-q, xattn-kv, xattn-qkv, none'],
  objective: ['string', 'Loss preset: joint, reconstruction-only, caption-only'],
  lambdaCap: ['number', 'Weight of L_cap (default: from --objective)'],
  lambdaRecImg: ['number', 'Weight of L_rec_img (default: from --objective)'],
  lambdaSd: ['number', 'Weight of L_sd (default: from --objective)'],
  lambdaRecTxt: ['number', 'Weight of L_rec_txt (default: from --objective)'],
  schedule: ['string', 'summed (Eq. 5) or alternating (the release)'],
  temperature: ['number', 'Soft caption temperature'],
  softMode: ['string', 'Soft caption: probs (the release) or logits'],
  recTxtMode: ['string', 'L_rec_txt estimate: x0 (the paper) or ddpm-step (the release)'],
  labelSmoothing: ['number', 'Label smoothing of L_cap (BLIP-2 captioner: 0 unless given)'],
  softFraming: ['string', "Soft caption framing: padded (77 rows like SD's ids) or release (BOS + rows + EOS)"],
  clipPadding: ['string', "SD's CLIP ids padded to 77 (max) or to the batch's longest caption (longest, the release)"],
  recTxtNormalize: ['boolean', "CLIP mean/std on L_rec_txt's decoded estimate (--no-rec-txt-normalize: the release's raw pixels)"],
  clipMode: ['string', 'Gradient clipping: global (one norm over both models) or per-model (the release: --blip-clip / --unet-clip)'],
  blipWeightDecay: ['number', 'AdamW weight decay of BLIP (default: --weight-decay)'],
  unetWeightDecay: ['number', 'AdamW weight decay of the UNet (default: --weight-decay)'],
  blipClip: ['number', 'Gradient norm clip of BLIP under --clip-mode per-model (default: --clip)'],
  unetClip: ['number', 'Gradient norm clip of the UNet under --clip-mode per-model (default: --clip)'],
  lr: ['number', 'Peak learning rate (AdamW)'],
  beta1: ['number', 'AdamW beta1'],
  beta2: ['number', 'AdamW beta2'],
  eps: ['number', 'AdamW epsilon'],
  weightDecay: ['number', 'AdamW decoupled weight decay'],
  clip: ['number', 'Gradient norm clip (0: off)'],
  lrSchedule: ['string', 'constant, constant_with_warmup, cosine'],
  warmupSteps: ['number', 'Linear warm-up steps'],
  minLr: ['number', 'Floor of the cosine schedule'],
  batchSize: ['number', `Images per micro-batch (at most ${LIMITS.batch}; memory is estimated before the run)`],
  gradAccum: ['number', 'Micro-batches per optimizer step'],
  epochs: ['number', 'Passes over the training items'],
  maxSteps: ['number', 'Stop after N optimizer steps (default: epochs × steps per epoch)'],
  sdSize: ['number', "SD-side image side (0: the UNet's sample_size × the VAE factor)"],
  sdRandomCrop: ['boolean', 'Random square crop for the SD side (else centre)'],
  sdFlip: ['boolean', 'Random horizontal flip for the SD side'],
  blipSize: ['number', "BLIP-side image side (0: the vision config's image_size)"],
  blipMinScale: ['number', 'Smallest random-resized-crop scale for the BLIP side'],
  blipFlip: ['boolean', 'Random horizontal flip for the BLIP side'],
  blipRandAugment: ['boolean', "RandAugment(2, 5) for the BLIP side, as BLIP's own training"],
  flipSides: ['string', 'Captions of flipped images: swap (left/right exchanged), skip (side-naming items never flip), keep (unchanged; corrupts them)'],
  recImgRoute: ['string', 'Which model L_rec_img updates: both, blip, unet (Appendix I; default both)'],
  recTxtRoute: ['string', 'Which model L_rec_txt updates: both, blip, unet (Appendix I; default both)'],
  prefetch: ['number', 'Images decoded ahead'],
  checkpointEvery: ['number', 'Checkpoint every N steps (0: only at the end or on an interrupt)'],
  keepLast: ['number', 'Checkpoints kept'],
  resume: ['string', "Continue from 'latest' or a checkpoint folder (exactly: data position, RNG, optimizer; default: a fresh run)"],
  overwrite: ['boolean', "Start a fresh run in a folder holding a previous one (removes that run's files)"],
  nanPolicy: ['string', 'On a NaN/Inf or out-of-bounds step: stop, skip-batch or lower-lr (each rolls back to the last verified checkpoint)'],
  nanRetries: ['number', 'Rollbacks allowed under skip-batch/lower-lr before stopping'],
  nanLrFactor: ['number', 'Learning-rate factor per rollback under lower-lr'],
  weightBound: ['number', 'Largest RMS a trained tensor may reach before the guard trips'],
  progress: ['boolean', 'Progress bar and step lines on stderr'],
  threads: ['number', "Intra-op CPU threads (default: libtorch's)"],
  allReduceBucketMib: ['number', 'Data-parallel: gradient bucket size in MiB (default 25, as DDP; the first bucket at most 1 MiB)'],
  allReduceOverlap: ['boolean', 'Data-parallel: all-reduce gradient buckets during backward as they become ready (default true; --no-all-reduce-overlap: after backward)'],
  precision: ['string', 'fp32, or CUDA autocast bf16/fp16'],
  frozenDtype: ['string', 'CPU: frozen weights held in bf16/fp16 and up-cast per op (an approximation: rounded weights, half their memory); trained tensors stay fp32'],
  gradientCheckpointing: ['boolean', 'Recompute UNet/BLIP blocks in backward (less memory)'],
  trainingConvPacking: ['boolean', "UNet's frozen convolutions on packed weights in training too (faster; --no-training-conv-packing: 2 GB less for SD v1.4)"],
  prompt: ['string', 'Caption prefix ignored by the loss (BLIP-2 captioner: none unless given)'],
  cacheLatents: ['boolean', 'Encode each training image with the frozen VAE once (needs no SD crop/flip)'],
};

function kebab(name: string): string {
  return name.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
}

/** The help line of a flag: its text and the default the run will use. */
export function finetuneFlagHelp(name: string): string {
  const [, text] = HELP[name];
  if (/\(default/.test(text) || /\(required/.test(text)) return text;
  const d = name === 'trainableBlip' ? DEFAULT_CONFIG.trainable.blip : name === 'trainableUnet' ? DEFAULT_CONFIG.trainable.unet : (DEFAULT_CONFIG as Record<string, unknown>)[name];
  return d === undefined ? `${text} (default: none)` : `${text} (default ${JSON.stringify(d)})`;
}

/** The command line that resumes an interrupted run: the same arguments with `--resume latest`. */
export function resumeCommand(args: string[]): string {
  const kept: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--resume' || args[i] === '--overwrite') {
      if (args[i] === '--resume' && i + 1 < args.length) i++;
      continue;
    }
    if (args[i].startsWith('--resume=') || args[i].startsWith('--overwrite=')) continue;
    kept.push(/^[\w./:@%+=,-]+$/.test(args[i]) ? args[i] : `'${args[i].replace(/'/g, `'\\''`)}'`);
  }
  return `roundtrip ${[...kept, '--resume', 'latest'].join(' ')}`;
}

export const command: CommandModule<{}, any> = {
  command: 'finetune',
  describe: 'Jointly finetune BLIP and Stable Diffusion with reconstruction losses (paper, Section 4)',
  builder: (y) => {
    // --out as in generate/rerank; --output stays the documented name.
    const aliases: Record<string, string> = { output: 'out' };
    for (const [name, [type]] of Object.entries(HELP)) y = y.option(kebab(name), { type, describe: finetuneFlagHelp(name), ...(aliases[name] ? { alias: aliases[name] } : {}) });
    return y;
  },
  handler: async (argv) => {
    const r = await runFinetuneCommand(argv as FinetuneRequest);
    process.stdout.write(JSON.stringify({ steps: r.steps, interrupted: r.interrupted, lastCheckpoint: r.lastCheckpoint, bestCheckpoint: r.bestCheckpoint, exported: r.exported, rollbacks: r.rollbacks.length }, null, 2) + '\n');
    if (r.interrupted) {
      process.stderr.write(`roundtrip: finetune interrupted at step ${r.steps}; resume with: ${resumeCommand(process.argv.slice(2))}\n`);
      process.exitCode = SIGNAL_EXIT[r.signal ?? 'SIGINT'];
    }
  },
};
