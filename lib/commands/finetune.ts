/**
 * `roundtrip finetune --config FILE.json [flags]`: joint BLIP + Stable Diffusion finetuning (paper,
 * Section 4). Flags override the file's keys. Config files are JSON or YAML.
 */
import * as fs from 'fs';
import type { CommandModule } from 'yargs';
import { RoundtripError, expectString } from '../errors';
import { FinetuneConfig, FinetuneResult, finetune, resolveConfig } from '../finetune';
import { parse as parseYaml } from 'yaml';

/** Flag name (camelCase, as yargs gives it) → config key; all config keys are accepted as flags. */
export const FINETUNE_FLAGS = [
  'blip', 'sd', 'bridge', 'annotations', 'images', 'limit', 'valAnnotations', 'valImages', 'valSize', 'validateEvery', 'output', 'device', 'seed',
  'objective', 'schedule', 'temperature', 'softMode', 'recTxtMode', 'labelSmoothing', 'lr', 'beta1', 'beta2', 'eps', 'weightDecay', 'clip',
  'lrSchedule', 'warmupSteps', 'minLr', 'batchSize', 'gradAccum', 'epochs', 'maxSteps', 'sdSize', 'sdRandomCrop', 'sdFlip', 'blipSize',
  'blipMinScale', 'prefetch', 'checkpointEvery', 'keepLast', 'resume', 'progress', 'threads', 'precision', 'gradientCheckpointing', 'cacheLatents', 'prompt',
  'recipe', 'blipFlip', 'blipRandAugment', 'flipSides',
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
    parsed = isYaml ? parseYaml(text) : JSON.parse(text);
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

export const command: CommandModule<{}, any> = {
  command: 'finetune',
  describe: 'Jointly finetune BLIP and Stable Diffusion with reconstruction losses (paper, Section 4)',
  builder: (y) =>
    y
      .option('config', { type: 'string', describe: 'JSON config (see examples/finetune-coco.json); flags override its keys' })
      .option('recipe', { type: 'string', describe: "Preset of training details: 'default' (this package's) or 'release' (the authors' code); keys given override it" })
      .option('blip', { type: 'string', describe: 'BLIP folder (config.json, model.safetensors, vocab.txt)' })
      .option('sd', { type: 'string', describe: 'diffusers Stable Diffusion folder' })
      .option('bridge', { type: 'string', describe: 'Vocabulary bridge JSON (default: learned from the training captions)' })
      .option('annotations', { type: 'string', describe: 'Karpathy-layout training list [{image, caption, image_id}]' })
      .option('images', { type: 'string', describe: 'Folder the annotation image paths are relative to' })
      .option('limit', { type: 'number', describe: 'Use only the first N training items' })
      .option('val-annotations', { type: 'string', describe: 'Validation list with caption arrays (CIDEr-D)' })
      .option('val-images', { type: 'string', describe: 'Validation images folder (default --images)' })
      .option('val-size', { type: 'number', describe: 'Validation images (default 100)' })
      .option('validate-every', { type: 'number', describe: 'Validate every N steps (0: never)' })
      .option('output', { type: 'string', describe: 'Run folder (checkpoints, log.jsonl, export/, report)' })
      .option('device', { type: 'string', describe: 'cpu, cuda or cuda:N' })
      .option('seed', { type: 'number' })
      .option('trainable-blip', { type: 'string', describe: 'xattn-q (default), xattn-kv, xattn-qkv, none' })
      .option('trainable-unet', { type: 'string', describe: 'xattn-q (default), xattn-kv, xattn-qkv, none' })
      .option('objective', { type: 'string', describe: 'joint, reconstruction-only, caption-only' })
      .option('lambda-cap', { type: 'number' })
      .option('lambda-rec-img', { type: 'number' })
      .option('lambda-sd', { type: 'number' })
      .option('lambda-rec-txt', { type: 'number' })
      .option('schedule', { type: 'string', describe: 'summed (Eq. 5) or alternating (the release)' })
      .option('temperature', { type: 'number', describe: 'Soft caption temperature' })
      .option('soft-mode', { type: 'string', describe: 'probs (the release) or logits' })
      .option('rec-txt-mode', { type: 'string', describe: 'x0 (the paper) or ddpm-step (the release)' })
      .option('label-smoothing', { type: 'number' })
      .option('lr', { type: 'number' })
      .option('beta1', { type: 'number' })
      .option('beta2', { type: 'number' })
      .option('eps', { type: 'number' })
      .option('weight-decay', { type: 'number' })
      .option('clip', { type: 'number', describe: 'Gradient norm clip (0: off)' })
      .option('lr-schedule', { type: 'string', describe: 'constant, constant_with_warmup, cosine' })
      .option('warmup-steps', { type: 'number' })
      .option('min-lr', { type: 'number' })
      .option('batch-size', { type: 'number' })
      .option('grad-accum', { type: 'number' })
      .option('epochs', { type: 'number' })
      .option('max-steps', { type: 'number' })
      .option('sd-size', { type: 'number' })
      .option('sd-random-crop', { type: 'boolean' })
      .option('sd-flip', { type: 'boolean' })
      .option('blip-size', { type: 'number' })
      .option('blip-min-scale', { type: 'number' })
      .option('blip-flip', { type: 'boolean', describe: 'BLIP view: random horizontal flip (default on)' })
      .option('blip-rand-augment', { type: 'boolean', describe: "BLIP view: RandAugment(2, 5) as BLIP's own training" })
      .option('flip-sides', { type: 'string', describe: "Captions of flipped images: swap (left/right exchanged; default), skip (side-naming items never flip), keep (unchanged; corrupts them)" })
      .option('rec-img-route', { type: 'string', describe: 'Which model L_rec_img updates: both (default), blip, unet' })
      .option('rec-txt-route', { type: 'string', describe: 'Which model L_rec_txt updates: both (default), blip, unet' })
      .option('prefetch', { type: 'number', describe: 'Images decoded ahead' })
      .option('checkpoint-every', { type: 'number' })
      .option('keep-last', { type: 'number' })
      .option('resume', { type: 'string', describe: 'latest or a checkpoint folder' })
      .option('progress', { type: 'boolean' })
      .option('threads', { type: 'number' })
      .option('precision', { type: 'string', describe: 'fp32, or CUDA autocast bf16/fp16' })
      .option('gradient-checkpointing', { type: 'boolean', describe: 'Recompute UNet/BLIP blocks in backward (less memory)' })
      .option('prompt', { type: 'string', describe: "BLIP caption prefix ignored by the loss (default 'a picture of ')" })
      .option('cache-latents', { type: 'boolean', describe: 'Encode each training image with the frozen VAE once (needs no SD crop/flip)' }),
  handler: async (argv) => {
    const r = await runFinetuneCommand(argv as FinetuneRequest);
    process.stdout.write(JSON.stringify({ steps: r.steps, interrupted: r.interrupted, lastCheckpoint: r.lastCheckpoint, bestCheckpoint: r.bestCheckpoint, exported: r.exported }, null, 2) + '\n');
  },
};
