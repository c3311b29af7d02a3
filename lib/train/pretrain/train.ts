/**
 * The four training objectives of the world models, each a seeded loop over the package's own training
 * code (native AdamW, native losses, warmup + cosine learning rate, global-norm clipping):
 *
 * - CLIP: symmetric InfoNCE on `logits_per_image` (log-softmax over rows and columns, diagonal mask).
 * - BLIP: captioning cross-entropy with teacher forcing; no prompt (the world's captions carry their own
 *   openers such as "a picture of" / "there is", so the model learns to produce whole captions from [DEC]).
 * - VAE: pixel MSE of the reconstruction of a posterior sample + a small KL term towards N(0, 1).
 * - UNet: ε-prediction MSE on scaled VAE latents, conditioned on the CLIP text tower's last_hidden_state,
 *   with 10% of captions replaced by "" so classifier-free guidance has an unconditional embedding.
 */
import { RoundtripError } from '../../errors';
import { NativeModel } from '../../runtime/model';
import { Blip } from '../../models/blip';
import { UNet } from '../../models/sd/unet';
import { VAE } from '../../models/sd/vae';
import { ProgressStream } from '../../progress';
import { Tensor, disposeAll, noGrad, scope } from '../../runtime/tensor';
import { BertTokenizer, ClipTokenizer, blipDecoderInputs, preCaption } from '../../tokenizers';
import { AdamW } from '../optimizer';
import { backpropObjective, runTrainingLoop } from '../loop';
import { deriveSeed } from '../../image/random';
import { BatchSampler, SplitData, gatherRows, idsTensor } from './data';

/** Settings of one training run. */
export interface LoopSettings {
  steps: number;
  batch: number;
  lr: number;
  seed: number;
  /** Every step on the same first batch (and the same noise): for checking that the loss goes down. */
  fixedBatch?: boolean;
  quiet?: boolean;
  stream?: ProgressStream;
}

/** Losses of a run, one per step, and its wall time. */
export interface LoopResult {
  losses: number[];
  seconds: number;
}

const WARMUP_FRACTION = 0.05;
const CLIP_GRAD_NORM = 1;
const WEIGHT_DECAY = 0.01;
/** Fraction of UNet training captions replaced by "" (classifier-free guidance dropout). */
export const CAPTION_DROPOUT = 0.1;
/** KL weight of the VAE objective, relative to the per-pixel MSE (per latent element). */
export const VAE_KL_WEIGHT = 1e-3;

/**
 * One world model's training: its loss function as the objective of the one training loop (lib/train/loop.ts):
 * AdamW over `params`, cosine schedule with a short warmup, global-norm clipping, one `lossFn(step)` per step
 * inside a tensor scope, the non-finite guard (a step whose loss or gradient norm is not finite stops the run),
 * a progress bar and a loss line every ~10% of the run.
 */
export async function trainLoop(label: string, params: Record<string, Tensor>, s: LoopSettings, lossFn: (step: number) => Promise<Tensor>): Promise<LoopResult> {
  if (Object.keys(params).length === 0) throw new RoundtripError(`${label}: nothing to train`);
  const opt = new AdamW(params, { lr: s.lr, weightDecay: WEIGHT_DECAY });
  const stream = s.stream ?? process.stderr;
  const every = Math.max(1, Math.round(s.steps / 10));
  const quiet = s.quiet ?? /^(1|true|yes)$/i.test(process.env.ROUNDTRIP_QUIET ?? '');
  const run = await runTrainingLoop({
    label,
    totalSteps: s.steps,
    schedule: { name: 'cosine', lr: s.lr, warmupSteps: Math.max(1, Math.round(s.steps * WARMUP_FRACTION)), minLr: s.lr * 0.05 },
    samplesPerStep: s.batch,
    objective: backpropObjective(opt, (step) => lossFn(step), { clip: CLIP_GRAD_NORM }),
    tensors: params,
    guard: { error: (trip) => new RoundtripError(`${label}: ${trip.message} (lower the learning rate)`) },
    progress: { label: `pretrain ${label}`, stream, quiet: s.quiet },
    report: quiet ? undefined : { every, line: (row, losses) => `${label}: step ${row.step}/${s.steps} loss ${mean(losses.slice(-every)).toFixed(4)}`, print: (line) => stream.write(line + '\n') },
  });
  disposeAll(Object.values(params));
  return { losses: run.losses, seconds: run.seconds };
}

function mean(xs: readonly number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}

function eye(n: number): Tensor {
  const data = new Float32Array(n * n);
  for (let i = 0; i < n; i++) data[i * n + i] = 1;
  return Tensor.fromTypedArray(data, [n, n]);
}

/** Symmetric contrastive loss of a [B, B] logit matrix whose diagonal holds the matching pairs. */
export function contrastiveLoss(logitsPerImage: Tensor): Tensor {
  const n = logitsPerImage.shape[0];
  const mask = eye(n);
  const imageToText = Tensor.op('logSoftmax', [logitsPerImage], { dim: 1 }).mul(mask).sum().div(-n);
  const textToImage = Tensor.op('logSoftmax', [logitsPerImage], { dim: 0 }).mul(mask).sum().div(-n);
  return imageToText.add(textToImage).mul(0.5);
}

function pickCaption(sampler: BatchSampler, captions: readonly string[], fixed: boolean): string {
  return fixed ? captions[0] : captions[sampler.random.int(0, captions.length)];
}

/** CLIP ids: SD's 77-id rows (`<|startoftext|> … <|endoftext|>`, padded with the tokenizer's pad id). */
export function clipIds(tokenizer: ClipTokenizer, texts: readonly string[]): Tensor {
  return idsTensor(texts.map((t) => tokenizer.sd77(t).ids));
}

export async function trainClip(clip: NativeModel<'clip'>, tokenizer: ClipTokenizer, train: SplitData, size: number, s: LoopSettings): Promise<LoopResult> {
  const sampler = new BatchSampler(train.entries.length, s.batch, deriveSeed(s.seed, 1), s.fixedBatch);
  const params = clip.tensors(clip.setTrainable(['.*']));
  return trainLoop('clip', params, s, async () => {
    const idx = sampler.next();
    const pixels = gatherRows(train.clipPixels, [3, size, size], idx);
    const ids = clipIds(tokenizer, idx.map((i) => pickCaption(sampler, train.entries[i].captions, !!s.fixedBatch)));
    const out = await clip.call('forward', { input_ids: ids, pixel_values: pixels });
    return contrastiveLoss(out.logits_per_image);
  });
}

/** BLIP training ids: `[DEC] caption [SEP]` (pre_caption cleaned, no prompt) and labels with padding = -100. */
export function blipTrainBatch(tokenizer: BertTokenizer, captions: readonly string[]): { inputIds: Tensor; attentionMask: Tensor; labels: Tensor } {
  const enc = blipDecoderInputs(tokenizer, captions.map((c) => preCaption(c)));
  const labels = enc.inputIds.map((row, i) => row.map((id, j) => (enc.attentionMask[i][j] ? id : -100)));
  return { inputIds: idsTensor(enc.inputIds), attentionMask: idsTensor(enc.attentionMask), labels: idsTensor(labels) };
}

export async function trainBlip(blip: Blip, tokenizer: BertTokenizer, train: SplitData, size: number, s: LoopSettings): Promise<LoopResult> {
  const sampler = new BatchSampler(train.entries.length, s.batch, deriveSeed(s.seed, 2), s.fixedBatch);
  const params = blip.model.tensors(blip.model.setTrainable(['.*']));
  return trainLoop('blip', params, s, async () => {
    const idx = sampler.next();
    const pixelValues = gatherRows(train.clipPixels, [3, size, size], idx);
    const batch = blipTrainBatch(tokenizer, idx.map((i) => pickCaption(sampler, train.entries[i].captions, !!s.fixedBatch)));
    return blip.loss({ pixelValues, ...batch });
  });
}

/** KL(N(mean, exp(logvar)) ‖ N(0, 1)) averaged over latent elements. */
export function gaussianKl(mean: Tensor, logvar: Tensor): Tensor {
  return mean.mul(mean).add(Tensor.op('exp', [logvar])).sub(1).sub(logvar).mean().mul(0.5);
}

export async function trainVae(vae: VAE, train: SplitData, size: number, s: LoopSettings): Promise<LoopResult> {
  const sampler = new BatchSampler(train.entries.length, s.batch, deriveSeed(s.seed, 3), s.fixedBatch);
  const params = vae.model.tensors(vae.model.setTrainable(['.*']));
  return trainLoop('vae', params, s, async (step) => {
    const x = gatherRows(train.vaePixels, [3, size, size], sampler.next());
    const posterior = await vae.encode(x, { seed: deriveSeed(s.seed, 4, s.fixedBatch ? 0 : step) });
    const { image } = await vae.decode(posterior.sample);
    return Tensor.op('mse', [image, x]).add(gaussianKl(posterior.mean, posterior.logvar).mul(VAE_KL_WEIGHT));
  });
}

/** Posterior means and standard deviations of every training image, [N, C, h, w] each (no gradients). */
export interface LatentSet {
  mean: Float32Array;
  std: Float32Array;
  shape: number[];
}

export async function encodeLatents(vae: VAE, split: SplitData, size: number, batch = 64): Promise<LatentSet> {
  const n = split.entries.length;
  const means: Float32Array[] = [];
  const stds: Float32Array[] = [];
  let shape: number[] = [];
  await noGrad(async () => {
    for (let start = 0; start < n; start += batch) {
      const idx = Array.from({ length: Math.min(batch, n - start) }, (_, i) => start + i);
      await scope(async () => {
        const posterior = await vae.encode(gatherRows(split.vaePixels, [3, size, size], idx), { seed: 0 });
        shape = posterior.mean.shape.slice(1);
        means.push(posterior.mean.toFloat32Array());
        stds.push(posterior.std.toFloat32Array());
      });
    }
  });
  const concat = (parts: Float32Array[]) => {
    const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
    let o = 0;
    for (const p of parts) (out.set(p, o), (o += p.length));
    return out;
  };
  return { mean: concat(means), std: concat(stds), shape };
}

/**
 * The latent scaling factor: 1 / std of posterior samples (SD's 0.18215 was found the same way), so the
 * UNet sees unit-variance latents.
 */
export function latentScalingFactor(latents: LatentSet, seed: number): number {
  const { mean, std } = latents;
  const noise = Tensor.randn([mean.length], seed);
  const eps = noise.toFloat32Array();
  noise.dispose();
  let sum = 0;
  let sumSq = 0;
  for (let i = 0; i < mean.length; i++) {
    const z = mean[i] + std[i] * eps[i];
    sum += z;
    sumSq += z * z;
  }
  const m = sum / mean.length;
  const variance = sumSq / mean.length - m * m;
  if (!(variance > 0)) throw new RoundtripError('VAE latents have zero variance; the VAE did not train');
  return 1 / Math.sqrt(variance);
}

/** CLIP last_hidden_state [B, 77, D] of texts, without gradients (the text tower is frozen for the UNet). */
export async function encodeTexts(clip: NativeModel<'clip'>, tokenizer: ClipTokenizer, texts: readonly string[]): Promise<Tensor> {
  return noGrad(async () => {
    const ids = clipIds(tokenizer, texts);
    const out = await clip.call('text', { input_ids: ids });
    ids.dispose();
    for (const [k, v] of Object.entries(out)) if (k !== 'last_hidden_state') v.dispose();
    return out.last_hidden_state;
  });
}

export interface UnetTrainInputs {
  unet: UNet;
  clip: NativeModel<'clip'>;
  tokenizer: ClipTokenizer;
  train: SplitData;
  latents: LatentSet;
  scalingFactor: number;
  schedulerConfig: Record<string, unknown>;
}

export async function trainUnet(inputs: UnetTrainInputs, s: LoopSettings): Promise<LoopResult> {
  const { unet, clip, tokenizer, train, latents, scalingFactor, schedulerConfig } = inputs;
  const sampler = new BatchSampler(train.entries.length, s.batch, deriveSeed(s.seed, 5), s.fixedBatch);
  const trainSteps = Number(schedulerConfig.num_train_timesteps ?? 1000);
  const params = unet.model.tensors(unet.model.setTrainable(['.*']));
  const fixed = !!s.fixedBatch;
  return trainLoop('unet', params, s, async (step) => {
    const idx = sampler.next();
    const mean = gatherRows(latents.mean, latents.shape, idx);
    const std = gatherRows(latents.std, latents.shape, idx);
    const shape = mean.shape;
    const stepSeed = deriveSeed(s.seed, 6, fixed ? 0 : step);
    const z = mean.add(std.mul(Tensor.randn(shape, stepSeed))).mul(scalingFactor);
    const texts = idx.map((i) => (!fixed && sampler.random.bernoulli(CAPTION_DROPOUT) ? '' : pickCaption(sampler, train.entries[i].captions, fixed)));
    const hidden = await encodeTexts(clip, tokenizer, texts);
    const t = fixed ? idx.map((_, k) => Math.floor(((k + 0.5) * trainSteps) / idx.length)) : idx.map(() => sampler.random.int(0, trainSteps));
    const timesteps = Tensor.fromTypedArray(BigInt64Array.from(t.map(BigInt)), [idx.length], 'int64');
    const noise = Tensor.randn(shape, deriveSeed(stepSeed, 1));
    return (await unet.denoisingLoss(z, noise, timesteps, hidden, schedulerConfig)).loss;
  });
}
