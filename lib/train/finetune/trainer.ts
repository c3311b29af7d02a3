/**
 * Joint finetuning: the config, trainable sets per model, one AdamW per model, deterministic data/noise, the
 * native joint step as the objective of the one training loop (lib/train/loop.ts: LR schedule, gradient
 * accumulation, the non-finite guard, JSONL log, atomic checkpoints with exact resume), SIGINT handling,
 * periodic validation (CIDEr) with a best checkpoint, exported partial weights and a final report.
 */
import { loadImageCaptions } from '../../metrics/annotations';
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError, expectBoolean, expectInteger, expectNumber, expectOneOf, expectString, invalid } from '../../errors';
import { VocabularyBridge, buildBridge, buildOptBridge, loadBridge, saveBridge } from '../../paper/bridge';
import { Blip } from '../../models/blip';
import { Blip2, Blip2TrainableSet, blip2TrainablePatterns, isBlip2Config } from '../../models/blip2';
import { Captioner, CaptionerFamily, captionerFamily, loadCaptioner } from '../../models/captioner';
import { Blip2CaptionTokenizer, blip2CaptionTokenizer } from '../../paper/joint/blip2';
import { StableDiffusionPipeline } from '../../models/sd/pipeline';
import { FrozenDtype, NativeModel, PRECISIONS, checkFrozenDtype } from '../../runtime/model';
import { native } from '../../runtime/native';
import { Tensor, disposeAll, noGrad } from '../../runtime/tensor';
import { AdamW } from '../optimizer';
import { LR_SCHEDULES, LrScheduleName } from '../schedule';
import { OptimizerStateData } from '../checkpoint';
import { LoopRow, TrainingLoop } from '../loop';
import { DrawnStep, jointStepObjective } from './objective';
import { saveTensors } from '../../weights/save';
import { loadBertTokenizer } from '../../tokenizers/load';
import { BertTokenizer } from '../../tokenizers/bert';
import { blipDecodeCaption, preCaption } from '../../tokenizers/blip';
import { ciderD } from '../../metrics/cider';
import { blipPreprocess } from '../../image/preprocess';
import { prefetchBatches } from '../../image/pool';
import { deriveSeed } from '../../image/random';
import { CLIP_PADDINGS, ClipPadding, LatentCache, SOFT_CAPTION_MODES, RECONSTRUCT_TEXT_MODES, disposeCaptionBatch, CaptionBatch } from '../../paper/joint/losses';
import { GRADIENT_ROUTES, LOSS_TERMS, LossTerm, LossWeights, OBJECTIVE_PRESETS, ObjectiveOptions, ReconstructionRoutes, SCHEDULES, SOFT_FRAMINGS, SoftFraming, activeTerms, presetWeights } from '../../paper/joint/objective';
import type { JointBatch } from '../../paper/joint/objective';
import { CLIP_MODES, ClipMode, JointStep } from '../../paper/joint/joint-step';
import { FLIP_SIDES, FlipSides, TrainItem, encodeViewCaptions, epochBatches, microBatchesPerEpoch, readAnnotations } from './data';
import { AllReduceStats, DataParallel, SilentRunLog } from './distributed';
import { isMainProcess } from '../../runtime/distributed';
import { RECIPES, RecipeName, recipeSettings } from './recipes';
import { DEFAULT_CONFIG } from './defaults';
import { writeReport } from './report';
import { resolveModelPath } from '../../weights/hub/resolve';
import { readJsonFile } from '../../json';
import { checkOutputDir, cleanTempLeftovers, describeWriteError } from '../../fsutil';
import { LIMITS, checkMemory, estimateFinetuneStep, expectBounded } from '../../limits';
import { NAN_POLICIES, NanPolicy } from '../guard';
import { RunLog } from '../runlog';
import { CONFIG_DEFAULTS, configInt } from '../../models/config-defaults';

export const TRAINABLE_SETS = ['xattn-q', 'xattn-kv', 'xattn-qkv', 'text-decoder', 'projection', 'none'] as const;
export type TrainableSet = (typeof TRAINABLE_SETS)[number];

/**
 * Parameter-name patterns of each trainable set (published key names). `text-decoder` (BLIP only): every
 * weight of BLIP's text decoder (embeddings, self- and cross-attention, feed-forward, LM head), the vision
 * encoder frozen — the largest set short of the whole model, measured against `xattn-q` in docs/EXPERIMENTS.md.
 * With a BLIP-2 captioner (`family` 'blip2') the captioner's sets are BLIP-2's (`blip2TrainablePatterns`:
 * Q-Former cross-attention, language projection); 'projection' exists only there.
 */
export function trainablePatterns(model: 'blip' | 'unet', set: TrainableSet, family: CaptionerFamily = 'blip'): string[] {
  expectOneOf(`trainable.${model}`, set, TRAINABLE_SETS);
  if (model === 'blip' && family === 'blip2') return blip2TrainablePatterns(set as Blip2TrainableSet);
  if (set === 'projection') throw new RoundtripError(`trainable.${model} 'projection': only a BLIP-2 captioner has a language projection (${model === 'blip' ? 'BLIP' : 'the UNet'}: xattn-q, xattn-kv, xattn-qkv, none)`);
  if (set === 'none') return [];
  if (set === 'text-decoder') {
    if (model !== 'blip') throw new RoundtripError(`trainable.${model} 'text-decoder': only BLIP has a text decoder (UNet sets: xattn-q, xattn-kv, xattn-qkv, none)`);
    return ['^text_decoder\\.'];
  }
  const parts = set === 'xattn-q' ? ['q'] : set === 'xattn-kv' ? ['k', 'v'] : ['q', 'k', 'v'];
  const blipName: Record<string, string> = { q: 'query', k: 'key', v: 'value' };
  return model === 'blip'
    ? parts.map((p) => `crossattention\\.self\\.${blipName[p]}\\.`)
    : parts.map((p) => `attn2\\.to_${p}\\.`);
}

export interface FinetuneConfig {
  /** BLIP folder (config.json, model.safetensors, vocab.txt). */
  blip: string;
  /** diffusers SD folder. */
  sd: string;
  /** Bridge file (roundtrip JSON or the authors' array); default: learned from the training captions. */
  bridge?: string;
  /** Karpathy-layout training annotations and the images folder they are relative to. */
  annotations: string;
  images: string;
  limit?: number;
  /** Validation annotations (captions as arrays); default none. */
  valAnnotations?: string;
  valImages?: string;
  valSize: number;
  validateEvery: number;
  /** Run folder: checkpoints/, log.jsonl, export/, report.*. */
  output: string;
  device: string;
  seed: number;
  trainable: { blip: TrainableSet; unet: TrainableSet };
  /** CUDA mixed precision of every model call ('fp32' on CPU). */
  precision: 'fp32' | 'bf16' | 'fp16';
  /** CPU: frozen weights of all four models held in bf16/fp16, up-cast per op (an approximation; see FrozenDtype). */
  frozenDtype: FrozenDtype;
  /** Recompute UNet/BLIP blocks in backward instead of keeping their activations. */
  gradientCheckpointing: boolean;
  /** The UNet's frozen convolutions on packed weights in training too: faster, +2.0 GB for SD v1.4 (false: that memory back). */
  trainingConvPacking: boolean;
  /** Encode each training image with the (frozen) VAE once and reuse its posterior (needs no SD crop/flip). */
  cacheLatents: boolean;
  /** BLIP's caption prefix, ignored by the loss ('a picture of ' as BLIP trains; '' for models trained without). */
  prompt: string;
  objective: (typeof OBJECTIVE_PRESETS)[number];
  /** Per-term weights (override the objective preset). */
  weights?: Partial<LossWeights>;
  schedule: (typeof SCHEDULES)[number];
  /** Soft-caption framing: 'padded' (77 rows like SD's ids) or 'release' (BOS + rows + EOS, no padding). */
  softFraming: SoftFraming;
  /** SD's CLIP ids padded to 77 ('max') or to the batch's longest caption ('longest', the release). */
  clipPadding: ClipPadding;
  /** CLIP mean/std on L_rec_txt's decoded estimate (false: the release's raw [-1, 1] pixels). */
  recTxtNormalize: boolean;
  temperature: number;
  softMode: (typeof SOFT_CAPTION_MODES)[number];
  recTxtMode: (typeof RECONSTRUCT_TEXT_MODES)[number];
  labelSmoothing: number;
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  clip: number;
  /** 'global': one gradient norm over both models clipped to `clip`; 'per-model' (the release): blipClip / unetClip. */
  clipMode: ClipMode;
  /** Per-model AdamW weight decay and clipping (default weightDecay / clip; clip 0 = none). */
  blipWeightDecay?: number;
  unetWeightDecay?: number;
  blipClip?: number;
  unetClip?: number;
  lrSchedule: LrScheduleName;
  warmupSteps: number;
  minLr: number;
  batchSize: number;
  gradAccum: number;
  epochs: number;
  maxSteps?: number;
  /** SD-side image side; 0 (default): the UNet's sample_size × the VAE factor. */
  sdSize: number;
  sdRandomCrop: boolean;
  sdFlip: boolean;
  /** BLIP-side image side; 0 (default): the vision config's image_size. */
  blipSize: number;
  blipMinScale: number;
  /** BLIP view: RandomHorizontalFlip (BLIP's own training and the release). */
  blipFlip: boolean;
  /** BLIP view: RandomAugment(2, 5) (BLIP's own training and the release). */
  blipRandAugment: boolean;
  /** Captions of flipped views: 'swap' left/right, 'skip' flipping side-naming items, 'keep' (corrupts them). */
  flipSides: FlipSides;
  /** Which model each reconstruction term updates (Appendix I ablations); default both. */
  routes: ReconstructionRoutes;
  /** The preset the settings started from (lib/train/finetune/recipes.ts); recorded in every report. */
  recipe: RecipeName;
  prefetch: number;
  checkpointEvery: number;
  keepLast: number;
  resume?: string;
  /** Start a fresh run in a folder that holds a previous run (its files are removed). */
  overwrite: boolean;
  /** What the non-finite guard does on a trip: stop (default), skip-batch or lower-lr. */
  nanPolicy: NanPolicy;
  /** Rollbacks allowed per run under skip-batch / lower-lr before the run stops. */
  nanRetries: number;
  /** Learning-rate factor per rollback under lower-lr. */
  nanLrFactor: number;
  /** Largest RMS a trained tensor may reach (the guard trips above it). */
  weightBound: number;
  progress: boolean;
  /** Intra-op threads for the native core (default: libtorch's). */
  threads?: number;
  /** Data-parallel runs: gradient bucket size in MiB (default 25, as DDP's bucket_cap_mb; the first bucket ≤ 1 MiB). */
  allReduceBucketMib?: number;
  /** Data-parallel runs: all-reduce each bucket during backward as soon as its gradients are ready (default true). */
  allReduceOverlap?: boolean;
}

export { DEFAULT_CONFIG };

/** Merges a partial config over the defaults and checks every key (errors name the key). */
export function resolveConfig(partial: Record<string, unknown>, source = 'config'): FinetuneConfig {
  if (!partial || typeof partial !== 'object' || Array.isArray(partial)) throw invalid(source, 'an object', partial);
  const known = new Set([...Object.keys(DEFAULT_CONFIG), 'blip', 'sd', 'bridge', 'annotations', 'images', 'limit', 'valAnnotations', 'valImages', 'output', 'weights', 'maxSteps', 'resume', 'threads', 'blipWeightDecay', 'unetWeightDecay', 'blipClip', 'unetClip', 'allReduceBucketMib', 'allReduceOverlap', '$comment', 'comment']);
  for (const k of Object.keys(partial)) if (!known.has(k)) throw new RoundtripError(`${source}: unknown key '${k}' (known: ${[...known].filter((x) => !x.includes('omment')).sort().join(', ')})`);
  // defaults < the recipe's settings < the caller's keys
  const recipe = expectOneOf(`${source} 'recipe'`, partial.recipe ?? DEFAULT_CONFIG.recipe, RECIPES);
  const preset = recipeSettings(recipe) as Record<string, unknown>;
  for (const key of Object.keys(preset)) {
    if (!known.has(key)) throw new RoundtripError(`${source}: recipe '${recipe}' sets '${key}', which this build's finetuning does not have yet`);
  }
  const c = {
    ...DEFAULT_CONFIG,
    ...preset,
    ...partial,
    recipe,
    trainable: { ...DEFAULT_CONFIG.trainable, ...((preset.trainable as object) ?? {}), ...((partial.trainable as object) ?? {}) },
    routes: { ...DEFAULT_CONFIG.routes, ...((partial.routes as object) ?? {}) },
  } as FinetuneConfig;
  const k = (name: string) => `${source} '${name}'`;
  for (const name of ['blip', 'sd', 'annotations', 'images', 'output'] as const) expectString(k(name), c[name]);
  // BLIP-2's own training (LAVIS, transformers 4.37.2): no caption prompt and no label smoothing unless the caller
  // sets them (a recipe's label smoothing is BLIP's training detail).
  if (finetuneCaptionerFamily(c.blip) === 'blip2') {
    if (partial.prompt === undefined) c.prompt = '';
    if (partial.labelSmoothing === undefined) c.labelSmoothing = 0;
  }
  if (c.bridge !== undefined) expectString(k('bridge'), c.bridge);
  expectString(k('device'), c.device);
  expectInteger(k('seed'), c.seed, { min: 0, max: 2 ** 32 - 1 });
  expectOneOf(k('trainable.blip'), c.trainable.blip, TRAINABLE_SETS);
  expectOneOf(k('trainable.unet'), c.trainable.unet, TRAINABLE_SETS);
  trainablePatterns('unet', c.trainable.unet); // refuses BLIP-only sets by name
  if (c.trainable.blip === 'none' && c.trainable.unet === 'none') throw new RoundtripError(`${source}: both models are frozen (trainable 'none'); nothing to train`);
  expectOneOf(k('objective'), c.objective, OBJECTIVE_PRESETS);
  expectOneOf(k('schedule'), c.schedule, SCHEDULES);
  expectOneOf(k('softMode'), c.softMode, SOFT_CAPTION_MODES);
  expectOneOf(k('softFraming'), c.softFraming, SOFT_FRAMINGS);
  expectOneOf(k('clipPadding'), c.clipPadding, CLIP_PADDINGS);
  expectBoolean(k('recTxtNormalize'), c.recTxtNormalize);
  expectOneOf(k('clipMode'), c.clipMode, CLIP_MODES);
  for (const name of ['blipWeightDecay', 'unetWeightDecay', 'blipClip', 'unetClip'] as const) if (c[name] !== undefined) expectNumber(k(name), c[name], { min: 0 });
  expectOneOf(k('recTxtMode'), c.recTxtMode, RECONSTRUCT_TEXT_MODES);
  expectOneOf(k('lrSchedule'), c.lrSchedule, LR_SCHEDULES);
  expectNumber(k('temperature'), c.temperature, { min: 0, exclusiveMin: true });
  expectNumber(k('labelSmoothing'), c.labelSmoothing, { min: 0, max: 1 });
  expectNumber(k('lr'), c.lr, { min: 0 });
  expectNumber(k('beta1'), c.beta1, { min: 0, max: 1 });
  expectNumber(k('beta2'), c.beta2, { min: 0, max: 1 });
  expectNumber(k('eps'), c.eps, { min: 0 });
  expectNumber(k('weightDecay'), c.weightDecay, { min: 0 });
  expectNumber(k('clip'), c.clip, { min: 0 });
  expectNumber(k('minLr'), c.minLr, { min: 0 });
  expectInteger(k('warmupSteps'), c.warmupSteps, { min: 0 });
  expectInteger(k('batchSize'), c.batchSize, { min: 1 });
  expectInteger(k('gradAccum'), c.gradAccum, { min: 1 });
  expectInteger(k('epochs'), c.epochs, { min: 1 });
  if (c.maxSteps !== undefined) expectInteger(k('maxSteps'), c.maxSteps, { min: 1 });
  if (c.limit !== undefined) expectInteger(k('limit'), c.limit, { min: 1 });
  if (c.threads !== undefined) expectInteger(k('threads'), c.threads, { min: 1 });
  // 0: from the model configs (filled in when the run starts).
  if (c.sdSize !== 0) expectBounded(k('sdSize'), c.sdSize, LIMITS.side, 8);
  if (c.blipSize !== 0) expectBounded(k('blipSize'), c.blipSize, LIMITS.side, 1);
  expectBounded(k('batchSize'), c.batchSize, LIMITS.batch);
  if (c.maxSteps !== undefined) expectBounded(k('maxSteps'), c.maxSteps, LIMITS.trainSteps);
  expectBoolean(k('overwrite'), c.overwrite);
  expectOneOf(k('nanPolicy'), c.nanPolicy, NAN_POLICIES);
  expectInteger(k('nanRetries'), c.nanRetries, { min: 0 });
  expectNumber(k('nanLrFactor'), c.nanLrFactor, { min: 0, max: 1, exclusiveMin: true });
  expectNumber(k('weightBound'), c.weightBound, { min: 0, exclusiveMin: true });
  expectNumber(k('blipMinScale'), c.blipMinScale, { min: 0, max: 1, exclusiveMin: true });
  expectBoolean(k('sdRandomCrop'), c.sdRandomCrop);
  expectBoolean(k('sdFlip'), c.sdFlip);
  expectBoolean(k('blipFlip'), c.blipFlip);
  expectBoolean(k('blipRandAugment'), c.blipRandAugment);
  expectOneOf(k('flipSides'), c.flipSides, FLIP_SIDES);
  if (typeof c.routes !== 'object' || c.routes === null) throw invalid(k('routes'), 'an object {recImg, recTxt}', c.routes);
  for (const key of Object.keys(c.routes)) expectOneOf(`${source} 'routes' key`, key, ['recImg', 'recTxt'] as const);
  expectOneOf(k('routes.recImg'), c.routes.recImg, GRADIENT_ROUTES);
  expectOneOf(k('routes.recTxt'), c.routes.recTxt, GRADIENT_ROUTES);
  expectBoolean(k('progress'), c.progress);
  expectOneOf(k('precision'), c.precision, PRECISIONS);
  if (checkFrozenDtype(c.frozenDtype, c, { frozen: `${source}: frozenDtype`, device: 'device', precision: 'precision' }) !== 'fp32' && finetuneCaptionerFamily(c.blip) === 'blip2') {
    throw new RoundtripError(`${source}: frozenDtype ${c.frozenDtype}: BLIP captioners only (${c.blip} is BLIP-2)`);
  }
  expectBoolean(k('gradientCheckpointing'), c.gradientCheckpointing);
  expectBoolean(k('trainingConvPacking'), c.trainingConvPacking);
  expectBoolean(k('cacheLatents'), c.cacheLatents);
  expectString(k('prompt'), c.prompt);
  if (c.cacheLatents && (c.sdRandomCrop || c.sdFlip)) {
    throw new RoundtripError(`${source}: cacheLatents needs the same SD images every epoch; turn off sdRandomCrop and sdFlip`);
  }
  expectInteger(k('prefetch'), c.prefetch, { min: 1 });
  if (c.allReduceBucketMib !== undefined) expectNumber(k('allReduceBucketMib'), c.allReduceBucketMib, { min: 1e-6 });
  if (c.allReduceOverlap !== undefined) expectBoolean(k('allReduceOverlap'), c.allReduceOverlap);
  expectInteger(k('checkpointEvery'), c.checkpointEvery, { min: 0 });
  expectInteger(k('keepLast'), c.keepLast, { min: 1 });
  expectInteger(k('valSize'), c.valSize, { min: 1 });
  expectInteger(k('validateEvery'), c.validateEvery, { min: 0 });
  if (c.weights !== undefined) {
    if (typeof c.weights !== 'object' || c.weights === null) throw invalid(k('weights'), 'an object {cap, recImg, sd, recTxt}', c.weights);
    for (const [t, w] of Object.entries(c.weights)) {
      expectOneOf(`${source} 'weights' key`, t, LOSS_TERMS);
      expectNumber(k(`weights.${t}`), w, { min: 0 });
    }
  }
  const weights = { ...presetWeights(c.objective), ...(c.weights ?? {}) };
  const opts = objectiveOptions(c, weights);
  if ([0, 1].every((parity) => activeTerms(opts, parity, parity).length === 0)) throw new RoundtripError(`${source}: every loss weight is zero`);
  return c;
}

function objectiveOptions(c: FinetuneConfig, weights: LossWeights, clip = { start: 49406, end: 49407, pad: 49407 }): ObjectiveOptions {
  return {
    weights,
    routes: c.routes,
    schedule: c.schedule,
    temperature: c.temperature,
    softMode: c.softMode,
    softFraming: c.softFraming,
    recTxtNormalize: c.recTxtNormalize,
    recTxtMode: c.recTxtMode,
    labelSmoothing: c.labelSmoothing,
    clipStartId: clip.start,
    clipEndId: clip.end,
    clipPadId: clip.pad,
  };
}

/** The captioner family of a config's `blip` folder (or pulled alias); BLIP when it cannot be read yet. */
export function finetuneCaptionerFamily(blip: string): CaptionerFamily {
  try {
    return captionerFamily(resolveModelPath(blip));
  } catch {
    return 'blip';
  }
}

/** One JSONL log row (the training loop's row with the epoch and, data-parallel, the all-reduce times). */
export interface StepLog extends LoopRow {
  step: number;
  epoch: number;
  loss: number;
  terms: Partial<Record<LossTerm, number>>;
  lr: number;
  gradNorm: { total: number; blip: number; unet: number };
  samplesPerSecond: number;
  stepsPerSecond: number;
  rssMB: number;
  time: number;
  /** Data-parallel runs: this step's gradient all-reduce (exposed seconds after backward, seconds in flight, of those hidden behind backward, bytes per rank). */
  allReduce?: AllReduceStats;
}

export interface FinetuneResult {
  steps: number;
  /** Loss per optimizer step (mean over micro-batches). */
  losses: number[];
  logs: StepLog[];
  lastCheckpoint?: string;
  bestCheckpoint?: string;
  exported: { blip?: string; unet?: string };
  /** Stopped before the last step (a signal or `stopSignal`): a checkpoint was written, nothing exported. */
  interrupted: boolean;
  /** The signal that stopped the run, if one did. */
  signal?: NodeJS.Signals;
  validation: { step: number; cider: number }[];
  /** Guard trips that were rolled back (skip-batch / lower-lr). */
  rollbacks: { step: number; to: number; reason: string; policy: NanPolicy }[];
}

/** Test and embedding hooks. */
export interface FinetuneHooks {
  /** Called with each step's losses before backward; may return a replacement total (tests inject NaN). */
  afterLoss?: (step: number, total: number) => number | void;
  /** Called after each optimizer step with the log row (after the guard passed it). */
  afterStep?: (log: StepLog) => void | Promise<void>;
  /** Called right after each optimizer update, before the guard (tests corrupt weights here). */
  afterUpdate?: (step: number, models: { blip: Captioner; sd: StableDiffusionPipeline }) => void | Promise<void>;
  /** Set to stop after the current step as SIGINT does. */
  stopSignal?: { stop: boolean };
  /** Log line sink (default stderr when progress is on). */
  print?: (line: string) => void;
}

interface Models {
  /** BLIP or BLIP-2 (OPT), from the folder's config.json. */
  blip: Captioner;
  sd: StableDiffusionPipeline;
  bridge: VocabularyBridge;
  /** The captioner's caption tokenizer: BLIP's WordPiece or BLIP-2's OPT BPE with the model's EOS. */
  bert: BertTokenizer | Blip2CaptionTokenizer;
  blipTrainable: string[];
  unetTrainable: string[];
}

/** Loads both models, sets the trainable sets and the bridge. */
export async function loadModels(c: FinetuneConfig, items?: TrainItem[]): Promise<Models> {
  // Config files may name pulled aliases as well as folders.
  c = { ...c, blip: resolveModelPath(c.blip), sd: resolveModelPath(c.sd) };
  const family = captionerFamily(c.blip);
  const blip = await loadCaptioner(c.blip, { device: c.device });
  let sd: StableDiffusionPipeline;
  try {
    sd = await StableDiffusionPipeline.load(c.sd, { device: c.device });
  } catch (err) {
    blip.dispose();
    throw err;
  }
  let bert: BertTokenizer | Blip2CaptionTokenizer;
  try {
    bert = blip instanceof Blip2 ? blip2CaptionTokenizer(blip) : loadBertTokenizer(c.blip);
  } catch (err) {
    blip.dispose();
    sd.dispose();
    throw err;
  }
  let bridge: VocabularyBridge;
  if (c.bridge) bridge = loadBridge(c.bridge);
  else {
    if (!items) throw new RoundtripError('no bridge file and no captions to learn one from');
    const captions = items.map((i) => i.caption);
    bridge = bert.kind === 'blip2' ? buildOptBridge(captions, bert.opt, sd.tokenizer, { eosId: bert.eosId, vocabSize: bert.vocabSize }) : buildBridge(captions, bert, sd.tokenizer);
    if (isMainProcess()) saveBridge(path.join(c.output, 'bridge.json'), bridge);
  }
  if (bridge.clipToBlip.length !== sd.tokenizer.vocabSize) throw new RoundtripError(`bridge: ${bridge.clipToBlip.length} CLIP ids, the SD tokenizer has ${sd.tokenizer.vocabSize}`);
  for (const m of [blip.model, sd.unet.model]) m.setGradientCheckpointing(c.gradientCheckpointing);
  sd.unet.model.setTrainingConvPacking(c.trainingConvPacking);
  if (c.precision !== 'fp32') {
    try {
      blip.model.setAutocast(c.precision);
      sd.setAutocast(c.precision);
    } catch (err) {
      blip.dispose();
      sd.dispose();
      throw err;
    }
  }
  let blipPatterns: string[];
  try {
    blipPatterns = trainablePatterns('blip', c.trainable.blip, family);
  } catch (err) {
    blip.dispose();
    sd.dispose();
    throw err;
  }
  const blipTrainable = blip.model.setTrainable(blipPatterns);
  const unetTrainable = sd.unet.model.setTrainable(trainablePatterns('unet', c.trainable.unet));
  if (c.trainable.blip !== 'none' && blipTrainable.length === 0) throw new RoundtripError(`trainable.blip '${c.trainable.blip}': no ${family === 'blip2' ? 'BLIP-2' : 'BLIP'} parameter matches ${blipPatterns.join(', ')}`);
  if (c.trainable.unet !== 'none' && unetTrainable.length === 0) throw new RoundtripError(`trainable.unet '${c.trainable.unet}': no UNet parameter matches ${trainablePatterns('unet', c.trainable.unet).join(', ')}`);
  if (c.frozenDtype !== 'fp32') {
    // After the trainable sets are chosen: those stay fp32, everything else is held reduced.
    try {
      await Promise.all([blip.model, sd.unet.model, sd.vae.model, sd.textEncoder].map((m) => m.setFrozenDtype(c.frozenDtype)));
    } catch (err) {
      blip.dispose();
      sd.dispose();
      throw err;
    }
  }
  return { blip, sd, bridge, bert, blipTrainable, unetTrainable };
}

function countParams(model: NativeModel, names: string[]): number {
  const set = new Set(names);
  return model.parameters().filter((p) => set.has(p.name)).reduce((n, p) => n + p.numel, 0);
}

function prefixed(model: 'blip' | 'unet', params: Record<string, Tensor>): Record<string, Tensor> {
  return Object.fromEntries(Object.entries(params).map(([n, t]) => [`${model}:${n}`, t]));
}

/** Restores each model's AdamW state (checkpoints before per-model optimizers hold one 'joint' state: split it). */
function importOptimizers(optimizers: { blip?: AdamW; unet?: AdamW }, saved: Record<string, OptimizerStateData>): void {
  for (const [model, o] of Object.entries(optimizers) as ['blip' | 'unet', AdamW][]) {
    let state = saved[model];
    const joint = saved.joint;
    if (!state && joint) {
      const keep = joint.names.map((n, i) => [n, i] as const).filter(([n]) => n.startsWith(`${model}:`));
      state = { step: joint.step, names: keep.map(([n]) => n), expAvg: keep.map(([, i]) => joint.expAvg[i]), expAvgSq: keep.map(([, i]) => joint.expAvgSq[i]) };
    }
    if (state) o.importState(state);
  }
}

/** Image sides from the models' configs: SD `sample_size` × the VAE factor, BLIP's vision `image_size`. */
export function modelImageSizes(blipDir: string, sdDir: string): { sdSize: number; blipSize: number } {
  const blipCfg = readJsonFile(path.join(resolveModelPath(blipDir), 'config.json'), { what: 'BLIP config', object: true });
  const sd = resolveModelPath(sdDir);
  const unetCfg = readJsonFile(path.join(sd, 'unet', 'config.json'), { what: 'UNet config', object: true });
  const vaeCfg = readJsonFile(path.join(sd, 'vae', 'config.json'), { what: 'VAE config', object: true });
  const factor = 2 ** (((vaeCfg.block_out_channels as unknown[]) ?? [0, 0, 0, 0]).length - 1);
  const sample = configInt(unetCfg, ['sample_size'], CONFIG_DEFAULTS.unet.sampleSize, 'UNet config');
  const blipSize = configInt(blipCfg, ['vision_config', 'image_size'], isBlip2Config(blipCfg) ? CONFIG_DEFAULTS.blip2.imageSize : CONFIG_DEFAULTS.blip.imageSize, 'BLIP config');
  return { sdSize: sample * factor, blipSize };
}

/** Fills `sdSize`/`blipSize` left at 0 (the defaults) from the models' configs. */
export function withModelImageSizes<T extends Pick<FinetuneConfig, 'blip' | 'sd' | 'sdSize' | 'blipSize'>>(c: T): T {
  if (c.sdSize > 0 && c.blipSize > 0) return c;
  const sizes = modelImageSizes(c.blip, c.sd);
  return { ...c, sdSize: c.sdSize || sizes.sdSize, blipSize: c.blipSize || sizes.blipSize };
}

/** Checks the step's estimated memory (batch size × image sides) against the ceiling, before any allocation. */
export function checkFinetuneMemory(c: FinetuneConfig): void {
  expectBounded(`${'batchSize'} (--batch-size)`, c.batchSize, LIMITS.batch);
  expectBounded('sdSize (--sd-size)', c.sdSize, LIMITS.side, 8);
  expectBounded('blipSize (--blip-size)', c.blipSize, LIMITS.side);
  const blipCfg = readJsonFile(path.join(resolveModelPath(c.blip), 'config.json'), { what: 'BLIP config', object: true });
  const sd = resolveModelPath(c.sd);
  const unetCfg = readJsonFile(path.join(sd, 'unet', 'config.json'), { what: 'UNet config', object: true });
  const vaeCfg = readJsonFile(path.join(sd, 'vae', 'config.json'), { what: 'VAE config', object: true });
  const bytes = estimateFinetuneStep(blipCfg, unetCfg, vaeCfg, { batch: c.batchSize, sdSize: c.sdSize, blipSize: c.blipSize, checkpointing: c.gradientCheckpointing });
  checkMemory(
    `finetune: one step of --batch-size ${c.batchSize} at --sd-size ${c.sdSize} / --blip-size ${c.blipSize}`,
    bytes,
    'lower --batch-size (with --grad-accum to keep the effective batch), lower --sd-size/--blip-size, or add --gradient-checkpointing',
  );
}

/** Files and folders a run writes into its output folder (what --overwrite removes). */
export const RUN_FILES = ['log.jsonl', 'checkpoints', 'best', 'export', 'bridge.json', 'report.md', 'report.json', 'loss-curves.svg'];

/**
 * Readies the run folder before any model is loaded: checks it (writable, a storage file system), removes
 * leftovers of interrupted atomic writes (with a note), and refuses a fresh run into a folder that holds
 * anything unless `overwrite` (which removes the previous run's files).
 */
export function prepareRunFolder(c: FinetuneConfig, print: (line: string) => void): void {
  checkOutputDir(c.output, { flag: 'output (--output)' });
  const removed = cleanTempLeftovers(c.output, 3);
  if (removed.length) print(`finetune: removed ${removed.length} temporary file(s) left by an interrupted write: ${removed.map((p) => path.relative(c.output, p)).join(', ')}`);
  if (c.resume) return;
  const present = fs.readdirSync(c.output).sort();
  if (present.length === 0) return;
  if (!c.overwrite) {
    throw new RoundtripError(
      `finetune: the output folder ${c.output} is not empty (${present.slice(0, 5).join(', ')}${present.length > 5 ? ', …' : ''}); ` +
        'continue that run with --resume latest, choose another --output, or pass --overwrite to start over (removes its checkpoints, log, export and report)',
    );
  }
  for (const name of RUN_FILES) fs.rmSync(path.join(c.output, name), { recursive: true, force: true });
  print(`finetune: --overwrite: removed the previous run's files in ${c.output}`);
}

/** How a signal ends the process: 128 + its number. */
export const SIGNAL_EXIT: Record<string, number> = { SIGINT: 130, SIGTERM: 143 };

/** Runs a finetuning from a resolved config. */
export async function finetune(c: FinetuneConfig, hooks: FinetuneHooks = {}): Promise<FinetuneResult> {
  // Data-parallel (roundtrip launch / torchrun): rank 0 prepares the run folder, prints and writes; see ./distributed.ts.
  const dp = await DataParallel.fromEnvironment();
  const print = hooks.print ?? ((line: string) => c.progress && dp.isMain && process.stderr.write(line + '\n'));
  // Everything that can be checked is checked before a model is loaded or an image decoded.
  if (dp.isMain) prepareRunFolder(c, print);
  c = withModelImageSizes(c);
  checkFinetuneMemory(c);
  if (c.threads) native().setNumThreads(c.threads);
  const items = readAnnotations(c.annotations, c.images, c.limit);
  const microPerEpoch = microBatchesPerEpoch(items.length, c.batchSize, dp.worldSize);
  const stepsPerEpoch = Math.floor(microPerEpoch / c.gradAccum);
  if (stepsPerEpoch === 0) throw new RoundtripError(`${items.length} training items do not fill one step of batchSize ${c.batchSize} × gradAccum ${c.gradAccum}`);
  const totalSteps = Math.min(c.maxSteps ?? Infinity, stepsPerEpoch * c.epochs);
  const m = await loadModels(c, items);
  const { blip, sd } = m;
  const blipParams = blip.model.tensors(m.blipTrainable);
  const unetParams = sd.unet.model.tensors(m.unetTrainable);
  // One AdamW per model, so each can have the release's own weight decay; with equal settings this is the same
  // update as one AdamW over both.
  const optimizers: { blip?: AdamW; unet?: AdamW } = {};
  const adam = (weightDecay: number) => ({ lr: c.lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weightDecay });
  if (Object.keys(blipParams).length) optimizers.blip = new AdamW(prefixed('blip', blipParams), adam(c.blipWeightDecay ?? c.weightDecay));
  if (Object.keys(unetParams).length) optimizers.unet = new AdamW(prefixed('unet', unetParams), adam(c.unetWeightDecay ?? c.weightDecay));
  const weights = { ...presetWeights(c.objective), ...(c.weights ?? {}) };
  const objective = objectiveOptions(c, weights, { start: sd.tokenizer.sotId, end: sd.tokenizer.eotId, pad: sd.tokenizer.padId });
  const visionTrainable = m.blipTrainable.some((n) => n.startsWith('vision_model.'));
  if (dp.active) print(`finetune: ${dp.worldSize} processes; global batch ${c.batchSize} per rank × ${dp.worldSize} ranks × ${c.gradAccum} accumulation = ${c.batchSize * dp.worldSize * c.gradAccum} samples per step`);
  const all = { ...prefixed('blip', blipParams), ...prefixed('unet', unetParams) };
  const jointStep = JointStep.create({ blip, sd, bridge: m.bridge, visionTrainable }, objective, {
    optimizers,
    clipMode: c.clipMode,
    clip: c.clip,
    blipClip: c.blipClip,
    unetClip: c.unetClip,
  });
  print(`finetune: ${items.length} items, ${stepsPerEpoch} steps/epoch, ${totalSteps} steps; images SD ${c.sdSize}² BLIP ${c.blipSize}²; trainable BLIP ${countParams(blip.model, m.blipTrainable).toLocaleString('en-US')} params (${m.blipTrainable.length} tensors), UNet ${countParams(sd.unet.model, m.unetTrainable).toLocaleString('en-US')} params (${m.unetTrainable.length} tensors)`);

  // The data and the step: the objective the one training loop (lib/train/loop.ts) runs. Each step draws its
  // micro-batches (past the positions the guard left out), then runs the whole optimizer step as one native call.
  let epoch = 0;
  let position = 0;
  let best = -Infinity;
  const latentCache = c.cacheLatents ? new LatentCache() : undefined;
  let batches: AsyncGenerator<Awaited<ReturnType<typeof epochBatches> extends AsyncGenerator<infer B> ? B : never>> | undefined;
  const openEpoch = () =>
    epochBatches(items, { rank: dp.rank, worldSize: dp.worldSize, seed: c.seed, epoch, batchSize: c.batchSize, fromPosition: position, concurrency: c.prefetch, sdSize: c.sdSize, sdRandomCrop: c.sdRandomCrop, sdFlip: c.sdFlip, blipSize: c.blipSize, blipMinScale: c.blipMinScale, blipFlip: c.blipFlip, blipRandAugment: c.blipRandAugment, flipSides: c.flipSides });
  const data = jointStepObjective(
    jointStep,
    async ({ step, microBatches, skipped }): Promise<DrawnStep> => {
      for (;;) {
        if (position + microBatches > microPerEpoch) {
          epoch++;
          position = 0;
          await batches?.return(undefined);
          batches = undefined;
        }
        batches ??= openEpoch();
        if (!skipped.has(`${epoch}:${position}`)) break;
        // A step the guard rolled back from (skip-batch): its batches are drawn and left out.
        for (let micro = 0; micro < microBatches; micro++) {
          const next = await batches.next();
          if (!next.done) disposeAll([next.value.blipImages, next.value.sdImages]);
          position++;
        }
      }
      const dataKey = `${epoch}:${position}`;
      const micro: { batch: JointBatch; captions: CaptionBatch }[] = [];
      const dispose = () => {
        for (const x of micro) {
          disposeCaptionBatch(x.captions);
          disposeAll([x.batch.blipImages, x.batch.sdImages, x.batch.latents]);
        }
      };
      try {
        for (let k = 0; k < microBatches; k++) {
          const next = await batches.next();
          if (next.done) throw new RoundtripError('internal: the epoch ran out of batches');
          const mb = next.value;
          const captions = encodeViewCaptions({ blip: m.bert, clip: sd.tokenizer }, mb, { prompt: c.prompt, clipPadding: c.clipPadding });
          const seed = deriveSeed(c.seed, 3, step, k);
          const latents = latentCache ? await latentCache.latents(sd, mb.sdImages, mb.items.map((i) => i.image), seed, dp.slots) : undefined;
          // Data-parallel: draws follow the global item, token-mean terms weighted by this rank's token share.
          const dpBatch = dp.active ? { slots: dp.slots, tokenScale: dp.tokenScale({ blip: m.bert, clip: sd.tokenizer }, { prompt: c.prompt, clipPadding: c.clipPadding }, mb.items, mb.globalItems) } : {};
          micro.push({ batch: { blipImages: mb.blipImages, sdImages: mb.sdImages, captions, latents, ...dpBatch }, captions });
        }
      } catch (err) {
        dispose();
        throw err;
      }
      position += microBatches;
      return { batches: micro.map((x) => x.batch), seeds: micro.map((_, k) => deriveSeed(c.seed, 3, step, k)), dataKey, rowHead: { epoch }, dispose };
    },
    () => (dp.active ? { allReduce: dp.lastStats() } : {}),
  );

  const stop = hooks.stopSignal ?? { stop: false };
  const validating = (step: number) => c.validateEvery > 0 && !!c.valAnnotations && step % c.validateEvery === 0;
  const loop = new TrainingLoop({
    label: 'finetune',
    totalSteps,
    schedule: { name: c.lrSchedule, lr: c.lr, warmupSteps: c.warmupSteps, minLr: c.minLr },
    microBatches: c.gradAccum,
    samplesPerStep: c.batchSize * c.gradAccum * dp.worldSize,
    objective: data,
    tensors: all,
    guard: { policy: c.nanPolicy, retries: c.nanRetries, lrFactor: c.nanLrFactor, weightBound: c.weightBound },
    checkpoints: {
      runDir: c.output,
      every: c.checkpointEvery,
      keepLast: c.keepLast,
      write: dp.isMain,
      alsoSavesAt: validating,
      tensors: () => ({ blip: blipParams, unet: unetParams }),
      optimizers: () => Object.fromEntries(Object.entries(optimizers).map(([k, o]) => [k, o!.exportState()])),
      state: () => ({ epoch, position, samplesSeen: position * c.batchSize * dp.worldSize, worldSize: dp.worldSize, seed: c.seed, batchSize: c.batchSize, gradAccum: c.gradAccum, bestCider: best, config: c }),
      restore: async (ck, dir, what) => {
        for (const [model, target] of [['blip', blip.model], ['unet', sd.unet.model]] as const) {
          const saved = ck.tensors[model] ?? {};
          const params = model === 'blip' ? blipParams : unetParams;
          for (const n of Object.keys(params)) if (!saved[n]) throw new RoundtripError(`${what} ${dir}: ${model} tensor '${n}' is not in the checkpoint (trainable sets differ?)`);
          if (Object.keys(saved).length) await target.loadWeights([path.join(dir, `${model}.safetensors`)], { partial: true });
        }
        importOptimizers(optimizers, ck.optimizers);
        epoch = Number(ck.state.epoch);
        // The data position is stored as samples seen this epoch, so a run may resume with another number of
        // processes as long as the global micro-batch (batchSize × processes) is the same (checked at resume).
        position = ck.state.samplesSeen !== undefined ? Number(ck.state.samplesSeen) / (c.batchSize * dp.worldSize) : Number(ck.state.position);
        // The data restarts from the restored position.
        await batches?.return(undefined);
        batches = undefined;
      },
    },
    log: dp.isMain ? new RunLog(path.join(c.output, 'log.jsonl')) : new SilentRunLog(path.join(c.output, 'log.jsonl')),
    progress: c.progress && dp.isMain ? { label: 'finetune' } : undefined,
    report: c.progress
      ? { every: 10, print, line: (row) => `step ${row.step}/${totalSteps} loss ${row.loss.toFixed(4)} ${Object.entries(row.terms).map(([k, v]) => `${k} ${v!.toFixed(4)}`).join(' ')} lr ${row.lr.toExponential(2)} ${row.samplesPerSecond.toFixed(2)} samples/s` }
      : undefined,
    print,
    stop,
    hooks: {
      afterLoss: hooks.afterLoss,
      afterUpdate: hooks.afterUpdate && ((step) => hooks.afterUpdate!(step, { blip, sd })),
      afterStep: async (row) => {
        await hooks.afterStep?.(row as StepLog);
        if (dp.isMain && validating(row.step)) {
          const cider = await validate(c, m);
          result.validation.push({ step: row.step, cider });
          loop.spec.log?.append({ step: row.step, validation: { cider } });
          if (cider > best) {
            best = cider;
            result.bestCheckpoint = await loop.checkpoint(path.join(c.output, 'best'), 1, { cider });
          }
        }
      },
    },
  });
  const result: FinetuneResult = { steps: 0, losses: [], logs: [], exported: {}, interrupted: false, validation: [], rollbacks: [] };
  if (c.resume) {
    const { dir } = await loop.resume(c.resume, (state, dir) => {
      best = Number(state.bestCider ?? -Infinity);
      const savedWorld = Number(state.worldSize ?? 1);
      if (Number(state.seed) !== c.seed || Number(state.batchSize) * savedWorld !== c.batchSize * dp.worldSize || Number(state.gradAccum) !== c.gradAccum) {
        throw new RoundtripError(
          `--resume ${dir}: seed/global micro-batch (batchSize × processes)/gradAccum differ from the checkpoint's (${state.seed}/${state.batchSize} × ${savedWorld}/${state.gradAccum}; ` +
            `this run: ${c.seed}/${c.batchSize} × ${dp.worldSize}/${c.gradAccum}); the data order would not continue`,
        );
      }
    });
    print(`finetune: resumed from ${dir} at step ${loop.step}`);
  } else {
    loop.start();
  }
  await dp.start(c, [blip.model, sd.unet.model, sd.vae.model, sd.textEncoder], [...Object.values(blipParams), ...Object.values(unetParams)], jointStep);

  let signal: NodeJS.Signals | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    if (signal) {
      // Second signal: every file is written atomically, so quitting mid-write leaves only a temporary
      // that the next start removes; `latest` still names a complete checkpoint.
      process.stderr.write(`finetune: second ${sig}; quitting now (the last complete checkpoint is intact; resume with --resume latest)\n`);
      process.exit(SIGNAL_EXIT[sig] ?? 130);
    }
    signal = sig;
    stop.stop = true;
    process.stderr.write(`finetune: ${sig}: finishing step ${loop.step + 1}, then writing a checkpoint (no export); press Ctrl-C again to quit at once\n`);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    const run = await loop.run();
    result.logs = run.rows as StepLog[];
    result.losses = run.losses;
    result.rollbacks = run.rollbacks;
    if (run.lastCheckpoint) result.lastCheckpoint = run.lastCheckpoint;
    result.steps = run.steps;
    result.interrupted = run.interrupted;
    if (!dp.isMain) return result; // rank 0 writes the checkpoint, exports and report
    result.lastCheckpoint = await loop.finalCheckpoint();
    const fullLog = loop.spec.log!.stepRows<StepLog>();
    if (result.interrupted) {
      // An interrupted run is not a finished one: a resumable checkpoint, no export.
      result.signal = signal;
      loop.spec.log!.append({ event: 'interrupt', step: run.steps, signal: signal ?? 'stop' });
      writeReport(c.output, { config: c, logs: fullLog, validation: result.validation, exported: result.exported, interrupted: true });
      print(`finetune: interrupted at step ${run.steps}; resume with --resume latest (output ${c.output})`);
      return result;
    }
    // Exported partial state dicts under published names (load with Blip.load({partial}) / unet loadWeights partial).
    const exportDir = path.join(c.output, 'export');
    try {
      fs.mkdirSync(exportDir, { recursive: true });
      if (Object.keys(blipParams).length) await saveTensors((result.exported.blip = path.join(exportDir, 'blip.safetensors')), blipParams, { format: 'pt', model: 'blip' });
      if (Object.keys(unetParams).length) await saveTensors((result.exported.unet = path.join(exportDir, 'unet.safetensors')), unetParams, { format: 'pt', model: 'unet' });
    } catch (err) {
      throw new RoundtripError(`finetune: export to ${exportDir} failed: ${describeWriteError(err)}; the trained state is in ${result.lastCheckpoint} (rerun with --resume latest to export once there is room)`);
    }
    writeReport(c.output, { config: c, logs: fullLog, validation: result.validation, exported: result.exported, interrupted: false });
    return result;
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    jointStep.dispose();
    await batches?.return(undefined);
    latentCache?.dispose();
    blip.dispose();
    sd.dispose();
  }
}

/** Greedy captions of the validation subset and their CIDEr-D against the references. */
async function validate(c: FinetuneConfig, m: Models): Promise<number> {
  const subset = loadImageCaptions(c.valAnnotations!, c.valImages ?? c.images, '--val-annotations').slice(0, c.valSize);
  const recipe = blipPreprocess(c.blipSize);
  const tok = m.bert;
  const prompt = !c.prompt ? undefined : tok.kind === 'blip2' ? tok.opt.encode(c.prompt.trimEnd()) : tok.encode(c.prompt);
  const candidates: string[] = [];
  for await (const { tensor: batch } of prefetchBatches(subset.map((e) => e.image), recipe, { batchSize: c.batchSize })) {
    const pixels = Tensor.fromTypedArray(batch.data as Float32Array, batch.shape);
    try {
      if (m.blip instanceof Blip2 && tok.kind === 'blip2') {
        // BLIP-2 (4.37.2 counting): up to 20 new tokens, at least 5; the OPT text decoded without specials.
        const gen = await m.blip.generate(pixels, { strategy: 'greedy', maxNewTokens: 20, minNewTokens: 5, prompt });
        for (const ids of gen.tokens) candidates.push(tok.opt.decode(ids, { skipSpecial: true }).trim());
      } else if (m.blip instanceof Blip && tok.kind !== 'blip2') {
        const gen = await noGrad(() => (m.blip as Blip).generate(pixels, { strategy: 'greedy', maxLength: 20, minLength: 5, prompt }));
        for (const row of gen.sequences) candidates.push(blipDecodeCaption(tok, row));
      }
    } finally {
      pixels.dispose();
    }
  }
  const refs = subset.map((e) => e.captions.map((s) => preCaption(s)));
  return ciderD(candidates, refs).corpus;
}
