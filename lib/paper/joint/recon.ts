/**
 * The four loss terms on a fixed held-out set, per item, with every random draw fixed: item i's
 * timestep, noise and VAE posterior sample come from `deriveSeed(seed, i)` whatever model is measured,
 * so two checkpoints are compared on identical draws, and one checkpoint gives the same numbers twice.
 * L_sd and L_rec_img share item i's draws (they differ only in the conditioning); L_rec_txt reuses the
 * L_sd denoising pass, as the training objective does.
 *
 * Used by `roundtrip bench recon` (losses against checkpoint step) and `roundtrip experiment`.
 */
import { loadImageCaptions } from '../../metrics/annotations';
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError, expectInteger, invalid } from '../../errors';
import type { VocabularyBridge } from '../bridge';
import { Blip2 } from '../../models/blip2';
import type { Captioner } from '../../models/captioner';
import type { StableDiffusionPipeline } from '../../models/sd/pipeline';
import type { BertTokenizer } from '../../tokenizers/bert';
import type { Blip2CaptionTokenizer } from './blip2';
import { JointStep } from './joint-step';
import type { ObjectiveOptions } from './objective';
import { loadImage } from '../../image/decode';
import { blipPreprocess, preprocessImage, sdVaePreprocess } from '../../image/preprocess';
import { deriveSeed } from '../../image/random';
import { readJsonFile } from '../../json';
import { Tensor, disposeAll, noGrad } from '../../runtime/tensor';
import { CaptionBatch, RECONSTRUCT_TEXT_MODES, ReconstructTextMode, SOFT_CAPTION_MODES, SoftCaptionMode, captionLoss, disposeCaptionBatch, encodeCaptions, encodeLatents, reconstructImageLoss, reconstructTextLoss, sdDenoise, softCaption } from './losses';

/** A held-out image with its reference captions (the first is the one the losses use). */
export interface HeldOutItem {
  image: string;
  captions: string[];
}

export const RECON_TERMS = ['cap', 'sd', 'recImg', 'recTxt'] as const;
export type ReconTerm = (typeof RECON_TERMS)[number];
export const RECON_TERM_LABELS: Record<ReconTerm, string> = { cap: 'L_cap', sd: 'L_sd', recImg: 'L_rec_img', recTxt: 'L_rec_txt' };

/**
 * Reads a held-out list: Karpathy layout `[{image, caption}]` where caption is a string or an array;
 * entries naming the same image are merged (the first caption stays first). Keeps the first `n` images.
 */
export function readHeldOut(file: string, imagesDir: string, n?: number): HeldOutItem[] {
  const byImage = new Map<string, HeldOutItem>();
  for (const { image, captions } of loadImageCaptions(file, imagesDir, '--data')) {
    const item = byImage.get(image);
    if (item) item.captions.push(...captions);
    else byImage.set(image, { image, captions: [...captions] });
  }
  const items = [...byImage.values()];
  if (items.length === 0) throw new RoundtripError(`--data ${file}: no items`);
  if (n !== undefined) expectInteger('--n', n, { min: 1 });
  for (const it of items.slice(0, n)) if (!fs.existsSync(it.image)) throw new RoundtripError(`--data ${file}: image '${it.image}' does not exist (images are resolved against ${imagesDir})`);
  return n === undefined ? items : items.slice(0, n);
}

export interface ReconOptions {
  seed: number;
  blipSize: number;
  sdSize: number;
  /** BLIP prompt before each caption ('' for models trained without one). */
  prompt: string;
  /** Label smoothing of the measured caption losses (default 0: the plain negative log-likelihood). */
  labelSmoothing?: number;
  temperature?: number;
  softMode?: SoftCaptionMode;
  recTxtMode?: ReconstructTextMode;
  /** Called after each item. */
  onItem?: (done: number, total: number) => void;
}

export type ReconLosses = Record<ReconTerm, number[]>;

/**
 * Per item (batch 1, so each value is that item's loss) the four terms, without graphs. A BLIP-2 captioner (with
 * its `Blip2CaptionTokenizer`) is measured through the native joint objective (`nativeItemLosses`) on the same draws.
 */
export async function heldOutLosses(
  models: { blip: Captioner; sd: StableDiffusionPipeline; bridge: VocabularyBridge; bert: BertTokenizer | Blip2CaptionTokenizer },
  items: readonly HeldOutItem[],
  opts: ReconOptions,
): Promise<ReconLosses> {
  const { blip, sd, bridge, bert } = models;
  const softMode = opts.softMode ?? 'probs';
  const recTxtMode = opts.recTxtMode ?? 'x0';
  if (!SOFT_CAPTION_MODES.includes(softMode)) throw invalid('softMode', SOFT_CAPTION_MODES.join(' or '), softMode);
  if (!RECONSTRUCT_TEXT_MODES.includes(recTxtMode)) throw invalid('recTxtMode', RECONSTRUCT_TEXT_MODES.join(' or '), recTxtMode);
  const labelSmoothing = opts.labelSmoothing ?? 0;
  const blipRecipe = blipPreprocess(opts.blipSize);
  const sdRecipe = sdVaePreprocess({ size: opts.sdSize });
  const out: ReconLosses = { cap: [], sd: [], recImg: [], recTxt: [] };
  await noGrad(async () => {
    for (let i = 0; i < items.length; i++) {
      const item = items[i];
      let image;
      try {
        image = await loadImage(item.image);
      } catch (err) {
        throw new RoundtripError(`image '${item.image}': ${err instanceof Error ? err.message : String(err)}`);
      }
      const b = preprocessImage(image, blipRecipe);
      const s = preprocessImage(image, sdRecipe);
      const blipPixels = Tensor.fromTypedArray(b.data as Float32Array, [1, ...b.shape]);
      const sdPixels = Tensor.fromTypedArray(s.data as Float32Array, [1, ...s.shape]);
      const captions = encodeCaptions({ blip: bert, clip: sd.tokenizer }, [item.captions[0]], { prompt: opts.prompt });
      const seed = deriveSeed(opts.seed, i);
      const owned: Tensor[] = [blipPixels, sdPixels];
      try {
        if (blip instanceof Blip2) {
          const v = await nativeItemLosses({ blip, sd, bridge }, blipPixels, sdPixels, captions, seed, { labelSmoothing, softMode, recTxtMode, temperature: opts.temperature ?? 1 });
          for (const t of RECON_TERMS) out[t].push(v[t]);
        } else {
          const cap = await captionLoss(blip, blipPixels, captions, { labelSmoothing });
          owned.push(cap);
          const P = await softCaption(blip, blipPixels, captions, bridge, { temperature: opts.temperature ?? 1, mode: softMode, startId: sd.tokenizer.sotId, endId: sd.tokenizer.eotId, padId: sd.tokenizer.padId });
          owned.push(P);
          const recImg = await reconstructImageLoss(sd, sdPixels, P, { seed });
          owned.push(recImg);
          const d = await sdDenoise(sd, sdPixels, captions, { seed });
          owned.push(d.loss, d.prediction, d.noisy, d.timesteps, d.latents);
          const recTxt = await reconstructTextLoss(sd, blip, sdPixels, captions, { mode: recTxtMode, denoised: d, labelSmoothing, seed, blipImageSize: opts.blipSize });
          owned.push(recTxt);
          out.cap.push(cap.item());
          out.sd.push(d.loss.item());
          out.recImg.push(recImg.item());
          out.recTxt.push(recTxt.item());
        }
      } finally {
        disposeAll(owned);
        disposeCaptionBatch(captions);
      }
      opts.onItem?.(i + 1, items.length);
    }
  });
  return out;
}

/**
 * One item's four terms through the native joint objective (lib/paper/joint/joint-step.ts), on the draws the loss-term
 * calls above use for `seed`: the VAE posterior noise of `seed`, and L_rec_img and L_sd each denoised with the
 * timestep and noise of `seed` (the native step draws term k's pass from its seed + k, so each call is offset to
 * land on `seed`); L_rec_txt reuses the L_sd pass as the objective does. Any captioner the step takes; BLIP-2 uses it.
 */
async function nativeItemLosses(
  models: { blip: Captioner; sd: StableDiffusionPipeline; bridge: VocabularyBridge },
  blipPixels: Tensor,
  sdPixels: Tensor,
  captions: CaptionBatch,
  seed: number,
  o: { labelSmoothing: number; softMode: SoftCaptionMode; recTxtMode: ReconstructTextMode; temperature: number },
): Promise<Record<ReconTerm, number>> {
  const { sd } = models;
  const base = { schedule: 'summed', temperature: o.temperature, softMode: o.softMode, recTxtMode: o.recTxtMode, labelSmoothing: o.labelSmoothing, clipStartId: sd.tokenizer.sotId, clipEndId: sd.tokenizer.eotId, clipPadId: sd.tokenizer.padId } as const;
  const captionSide: ObjectiveOptions = { ...base, weights: { cap: 1, recImg: 1, sd: 0, recTxt: 0 } };
  const sdSide: ObjectiveOptions = { ...base, weights: { cap: 0, recImg: 0, sd: 1, recTxt: 1 } };
  const latents = await encodeLatents(sd, sdPixels, seed);
  const out: Partial<Record<ReconTerm, number>> = {};
  try {
    for (const [opts, offset] of [[captionSide, 1], [sdSide, 2]] as const) {
      const r = await JointStep.cached({ ...models, visionTrainable: false }, opts).objective({ blipImages: blipPixels, sdImages: sdPixels, captions, latents }, { step: 0, seed: (seed - offset) >>> 0 });
      try {
        for (const [t, v] of Object.entries(r.terms)) out[t as ReconTerm] = v!.item();
      } finally {
        disposeAll([r.total, ...Object.values(r.terms)]);
      }
    }
  } finally {
    latents.dispose();
  }
  return out as Record<ReconTerm, number>;
}

/** One measured model pair: the base models, or the base models with a checkpoint's trained tensors. */
export interface ReconCheckpoint {
  /** 'base' or the checkpoint folder. */
  name: string;
  step: number;
  files: { blip?: string; unet?: string };
}

/**
 * Resolves `--checkpoints` entries: a checkpoint folder (blip.safetensors / unet.safetensors, step from
 * state.json or a `step-N` name), a run's export/ folder, or a run folder (its latest checkpoint).
 */
export function resolveReconCheckpoint(spec: string, index: number): ReconCheckpoint {
  let dir = path.resolve(spec);
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new RoundtripError(`--checkpoints ${spec}: not a folder`);
  const latest = path.join(dir, 'checkpoints', 'latest');
  if (fs.existsSync(latest)) dir = path.join(dir, 'checkpoints', fs.readFileSync(latest, 'utf8').trim());
  const files: ReconCheckpoint['files'] = {};
  for (const model of ['blip', 'unet'] as const) if (fs.existsSync(path.join(dir, `${model}.safetensors`))) files[model] = path.join(dir, `${model}.safetensors`);
  if (!files.blip && !files.unet) throw new RoundtripError(`--checkpoints ${spec}: no blip.safetensors or unet.safetensors in ${dir} (give a checkpoint, export/ or run folder)`);
  let step = index;
  const stateFile = path.join(dir, 'state.json');
  if (fs.existsSync(stateFile)) {
    const state = readJsonFile(stateFile);
    if (Number.isInteger(state?.step)) step = state.step;
  } else {
    const m = /step-0*(\d+)$/.exec(path.basename(dir));
    if (m) step = Number(m[1]);
  }
  return { name: dir, step, files };
}
