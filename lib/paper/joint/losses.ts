/**
 * The loss terms of the joint BLIP ⇄ Stable Diffusion finetuning (paper, Section 4, Eq. 5), each a call
 * returning a scalar Tensor with its autograd graph so objectives compose freely:
 *
 *   L = λ_cap·L_cap + λ_rec_img·L_rec_img + λ_sd·L_sd + λ_rec_txt·L_rec_txt
 *
 * - L_cap      BLIP's captioning loss (prompt positions ignored, label smoothing 0.1 as the original BLIP).
 * - L_rec_img  SD's denoising loss on the input image's latents, conditioned on BLIP's soft caption P
 *              (per-step token distributions re-indexed into CLIP's vocabulary through the bridge); the
 *              gradient reaches BLIP through P.
 * - L_sd       SD's ordinary denoising loss with the caption's ids.
 * - L_rec_txt  BLIP's captioning loss on SD's one-step clean estimate (x̂0 decoded by the VAE); the
 *              gradient reaches the UNet through x̂0.
 *
 * Frozen parts (VAE, CLIP text encoder, BLIP's vision tower unless trainable) still pass gradients to
 * their inputs; computations that need no gradient at all run under `noGrad` to save memory.
 */
import { RoundtripError, expectInteger, expectNumber, expectOneOf, invalid } from '../../errors';
import type { Blip, BlipImageInput } from '../../models/blip';
import { Blip2 } from '../../models/blip2';
import type { StableDiffusionPipeline } from '../../models/sd/pipeline';
import { Scheduler } from '../../models/sd/schedulers';
import { CLIP_MEAN, CLIP_STD } from '../../image/preprocess';
import { Rng, deriveSeed } from '../../image/random';
import { Tensor, disposeAll, keep, noGrad, scope } from '../../runtime/tensor';
import type { VocabularyBridge } from '../bridge';
import type { BertTokenizer } from '../../tokenizers/bert';
import type { ClipTokenizer } from '../../tokenizers/clip';
import { BLIP_MAX_WORDS, BLIP_PROMPT, blipDecoderInputs, preCaption } from '../../tokenizers/blip';
import { loadBertTokenizer } from '../../tokenizers/load';
import { Blip2CaptionTokenizer, blip2CaptionTokenizer, encodeBlip2Captions } from './blip2';
import { captionBatch, clipIdRows } from './caption-batch';

/** Default CLIP special ids (SD v1.x tokenizer): start, end; SD pads with the end id. */
export const CLIP_START_ID = 49406;
export const CLIP_END_ID = 49407;

/** A batch of captions tokenised for both models. */
export interface CaptionBatch {
  size: number;
  /** The cleaned captions (pre_caption), without the prompt. */
  texts: string[];
  /** [B, T] int64: `[DEC] prompt caption [SEP] [PAD]…`. */
  blipIds: Tensor;
  /** [B, T] int64, 1 = token. */
  blipMask: Tensor;
  /** [B, T] int64: blipIds with the prompt positions and padding set to -100 (BLIP's decoder_targets). */
  blipLabels: Tensor;
  /** Tokens of `[DEC] prompt` (BLIP's `prompt_length`). */
  promptLength: number;
  /** Caption tokens per row (after the prompt, before [SEP]). */
  captionLengths: number[];
  /** [B, L] int64: SD's id path (`<|startoftext|> … <|endoftext|>`, padded to 77 or to the batch's longest). */
  clipIds: Tensor;
}

/** SD's CLIP ids: padded to the context length ('max', 77 as the pipeline) or to the batch's longest ('longest', the release). */
export const CLIP_PADDINGS = ['max', 'longest'] as const;
export type ClipPadding = (typeof CLIP_PADDINGS)[number];

export interface CaptionTokenizers {
  /** The captioner's side: BLIP's WordPiece, or BLIP-2's OPT tokenizer with its model's EOS (lib/paper/joint/blip2.ts). */
  blip: BertTokenizer | Blip2CaptionTokenizer;
  clip: ClipTokenizer;
}

/**
 * Tokenises captions for both sides: BLIP gets `prompt + pre_caption(caption, maxWords)` (max 40 tokens),
 * SD's CLIP tokenizer the cleaned caption without the prompt.
 */
export function encodeCaptions(
  tokenizers: CaptionTokenizers,
  captions: readonly string[],
  opts: { prompt?: string; maxWords?: number; clipPadding?: ClipPadding } = {},
): CaptionBatch {
  if (!Array.isArray(captions) || captions.length === 0) throw invalid('captions', 'a non-empty array of strings', captions);
  if (tokenizers.blip.kind === 'blip2') {
    return encodeBlip2Captions(tokenizers.blip, clipIdRows(tokenizers.clip, expectOneOf('clipPadding', opts.clipPadding ?? 'max', CLIP_PADDINGS)), captions, opts);
  }
  const blip = tokenizers.blip;
  const prompt = opts.prompt ?? BLIP_PROMPT;
  const maxWords = opts.maxWords ?? BLIP_MAX_WORDS;
  const texts = captions.map((c) => preCaption(c, maxWords));
  const promptLength = blipDecoderInputs(blip, [prompt]).inputIds[0].length - 1;
  const enc = blipDecoderInputs(blip, texts.map((t) => prompt + t));
  const B = texts.length;
  const T = enc.inputIds[0].length;
  const ids = new BigInt64Array(B * T);
  const mask = new BigInt64Array(B * T);
  const labels = new BigInt64Array(B * T);
  const captionLengths: number[] = [];
  for (let b = 0; b < B; b++) {
    let used = 0;
    for (let t = 0; t < T; t++) {
      const id = enc.inputIds[b][t];
      const m = enc.attentionMask[b][t];
      ids[b * T + t] = BigInt(id);
      mask[b * T + t] = BigInt(m);
      labels[b * T + t] = m && t >= promptLength ? BigInt(id) : -100n;
      used += m;
    }
    captionLengths.push(Math.max(0, used - promptLength - 1));
  }
  const clipPadding = expectOneOf('clipPadding', opts.clipPadding ?? 'max', CLIP_PADDINGS);
  return captionBatch(texts, { ids, mask, labels, length: T }, promptLength, captionLengths, clipIdRows(tokenizers.clip, clipPadding)(texts));
}

export function disposeCaptionBatch(batch: CaptionBatch): void {
  disposeAll([batch.blipIds, batch.blipMask, batch.blipLabels, batch.clipIds]);
}

const blipTokenizers = new WeakMap<Blip, BertTokenizer>();

/** Captions as a batch: strings are tokenised with the BLIP folder's vocab and SD's CLIP tokenizer. */
function asBatch(captions: CaptionBatch | readonly string[], blip: Blip | Blip2 | undefined, sd: StableDiffusionPipeline | undefined): { batch: CaptionBatch; owned: boolean } {
  if (!Array.isArray(captions)) return { batch: captions as CaptionBatch, owned: false };
  if (blip instanceof Blip2) {
    if (!sd) throw new RoundtripError('captions given as strings need the SD pipeline (for its CLIP tokenizer); pass a CaptionBatch (encodeCaptions) instead');
    return { batch: encodeCaptions({ blip: blip2CaptionTokenizer(blip), clip: sd.tokenizer }, captions as string[], { prompt: '' }), owned: true };
  }
  let bert: BertTokenizer | undefined = blip ? blipTokenizers.get(blip) : undefined;
  if (!bert) {
    if (!blip?.dir) throw new RoundtripError('captions given as strings need a BLIP model loaded from a folder with vocab.txt; pass a CaptionBatch (encodeCaptions) instead');
    bert = loadBertTokenizer(blip.dir);
    blipTokenizers.set(blip, bert);
  }
  if (!sd) throw new RoundtripError('captions given as strings need the SD pipeline (for its CLIP tokenizer); pass a CaptionBatch (encodeCaptions) instead');
  return { batch: encodeCaptions({ blip: bert, clip: sd.tokenizer }, captions as string[]), owned: true };
}

/** BLIP image input: pixels [B, 3, S, S] (CLIP mean/std) or precomputed image embeddings. */
export type BlipImages = Tensor | BlipImageInput;

function blipInput(images: BlipImages): BlipImageInput {
  return images instanceof Tensor ? { pixelValues: images } : images;
}

export interface CaptionLossOptions {
  /** Label smoothing of the cross-entropy; default 0.1 (the original BLIP's). */
  labelSmoothing?: number;
  /** Needed only when `captions` are strings and the BLIP model has no folder tokenizer context. */
  sd?: StableDiffusionPipeline;
}

/**
 * L_cap: BLIP's captioning loss, prompt positions and padding ignored (-100). BLIP-2: 4.37.2's loss on the text
 * positions (default label smoothing 0 there).
 */
export async function captionLoss(blip: Blip | Blip2, images384: BlipImages, captions: CaptionBatch | readonly string[], opts: CaptionLossOptions = {}): Promise<Tensor> {
  const labelSmoothing = expectNumber('labelSmoothing', opts.labelSmoothing ?? (blip instanceof Blip2 ? 0 : 0.1), { min: 0, max: 1 });
  const { batch, owned } = asBatch(captions, blip, opts.sd);
  try {
    if (blip instanceof Blip2) return await blip.loss({ ...blipInput(images384), inputIds: batch.blipIds, attentionMask: batch.blipMask, labels: batch.blipLabels }, { labelSmoothing });
    return await blip.loss({ ...blipInput(images384), inputIds: batch.blipIds, attentionMask: batch.blipMask, labels: batch.blipLabels }, { labelSmoothing });
  } finally {
    if (owned) disposeCaptionBatch(batch);
  }
}

export const SOFT_CAPTION_MODES = ['probs', 'logits'] as const;
export type SoftCaptionMode = (typeof SOFT_CAPTION_MODES)[number];

export interface SoftCaptionOptions {
  /** softmax(logits / temperature); default 1. */
  temperature?: number;
  /** 'probs' (the release): softmax over BLIP's vocabulary, then re-index; 'logits': re-index, then softmax. */
  mode?: SoftCaptionMode;
  /** Sequence length of P; default 77 (SD's CLIP context). */
  length?: number;
  startId?: number;
  endId?: number;
  /** SD v1.x pads with the end id. */
  padId?: number;
  sd?: StableDiffusionPipeline;
}

/** Per-device caches of the bridge index and one-hot rows (built once, reused every step). */
const bridgeIndexCache = new WeakMap<VocabularyBridge, Map<string, Tensor>>();
const oneHotCache = new Map<string, Tensor>();

/** The bridge as an int64 [clipVocab] index of BLIP ids on `device` (checked, built once per device). */
export function bridgeIndex(bridge: VocabularyBridge, device: string, blipVocab: number): Tensor {
  let perDevice = bridgeIndexCache.get(bridge);
  if (!perDevice) bridgeIndexCache.set(bridge, (perDevice = new Map()));
  let t = perDevice.get(device);
  if (!t) {
    const map = bridge.clipToBlip;
    const data = new BigInt64Array(map.length);
    for (let c = 0; c < map.length; c++) {
      const b = map[c];
      if (!Number.isInteger(b) || b < 0 || b >= blipVocab) throw invalid(`bridge.clipToBlip[${c}]`, `a BLIP id in [0, ${blipVocab})`, b);
      data[c] = BigInt(b);
    }
    const cpu = Tensor.fromTypedArray(data, [map.length]);
    t = device === 'cpu' ? cpu : cpu.to(device);
    if (t !== cpu) cpu.dispose();
    keepForever(t);
    perDevice.set(device, t);
  }
  return t;
}

/** Cached tensors outlive any scope they were first built in. */
function keepForever(t: Tensor): void {
  keep(t);
}

function oneHotRow(id: number, vocab: number, device: string): Tensor {
  const key = `${device}:${vocab}:${id}`;
  let t = oneHotCache.get(key);
  if (!t) {
    const data = new Float32Array(vocab);
    data[id] = 1;
    const cpu = Tensor.fromTypedArray(data, [1, 1, vocab]);
    t = device === 'cpu' ? cpu : cpu.to(device);
    if (t !== cpu) cpu.dispose();
    keepForever(t);
    oneHotCache.set(key, t);
  }
  return t;
}

/**
 * BLIP's teacher-forced per-step distributions as soft CLIP tokens P [B, length, clipVocab]: the rows
 * predicting the caption tokens (prompt positions and the [SEP] prediction dropped), re-indexed through
 * the bridge (`P[:, :, c] = P_blip[:, :, clipToBlip[c]]`), framed like SD's id path: a one-hot start row,
 * the caption rows, a one-hot end row, one-hot pad rows up to `length`. Differentiable in BLIP's weights.
 */
export async function softCaption(blip: Blip | Blip2, images: BlipImages, captions: CaptionBatch | readonly string[], bridge: VocabularyBridge, opts: SoftCaptionOptions = {}): Promise<Tensor> {
  const temperature = expectNumber('temperature', opts.temperature ?? 1, { min: 0, exclusiveMin: true });
  const mode = expectOneOf('mode', opts.mode ?? 'probs', SOFT_CAPTION_MODES);
  const length = expectInteger('length', opts.length ?? 77, { min: 3 });
  const vocab = bridge.clipToBlip.length;
  const startId = expectInteger('startId', opts.startId ?? CLIP_START_ID, { min: 0, max: vocab - 1 });
  const endId = expectInteger('endId', opts.endId ?? CLIP_END_ID, { min: 0, max: vocab - 1 });
  const padId = expectInteger('padId', opts.padId ?? endId, { min: 0, max: vocab - 1 });
  const { batch, owned } = asBatch(captions, blip, opts.sd);
  try {
    return await scope(async () => {
      const input = { ...blipInput(images), inputIds: batch.blipIds, attentionMask: batch.blipMask };
      const device = blip.device;
      const B = batch.size;
      const T = batch.blipIds.shape[1];
      const rows = Math.min(length - 2, Math.max(1, ...batch.captionLengths));
      // Row t predicts token t+1: caption token j (0-based) sits at promptLength + j.
      const first = batch.promptLength - 1;
      const take = Math.min(rows, T - first);
      const blipVocab = blip.vocabSize;
      const index = bridgeIndex(bridge, device, blipVocab);
      let body: Tensor;
      if (mode === 'probs') {
        const probs = await blip.tokenProbs(input, { temperature });
        body = Tensor.op('indexSelect', [probs.narrow(1, first, take), index], { dim: 2 });
      } else {
        const logits = blip instanceof Blip2 ? await blip.logits(input, { textOnly: true }) : await blip.logits(input);
        body = Tensor.op('indexSelect', [logits.narrow(1, first, take), index], { dim: 2 }).div(temperature).softmax(-1);
      }
      // Rows past a caption's end become end (then pad) rows, as SD's id path has them.
      const maskData = new Float32Array(B * take);
      const padMask = new Float32Array(B * take);
      for (let b = 0; b < B; b++) {
        const n = Math.min(batch.captionLengths[b], take);
        for (let j = 0; j < take; j++) {
          maskData[b * take + j] = j < n ? 1 : 0;
          padMask[b * take + j] = j > n ? 1 : 0;
        }
      }
      const keepRows = Tensor.fromTypedArray(maskData, [B, take, 1]).to(device);
      const padRows = Tensor.fromTypedArray(padMask, [B, take, 1]).to(device);
      const endRows = Tensor.fromTypedArray(maskData.map((m, i) => (m === 0 && padMask[i] === 0 ? 1 : 0)), [B, take, 1]).to(device);
      const endRow = oneHotRow(endId, vocab, device);
      const padRow = oneHotRow(padId, vocab, device);
      const startRow = oneHotRow(startId, vocab, device);
      const framed = body.mul(keepRows).add(endRow.mul(endRows)).add(padRow.mul(padRows));
      const parts = [Tensor.zeros([B, 1, vocab], { device }).add(startRow), framed];
      // A caption filling every row still needs its end row.
      const allFull = batch.captionLengths.some((n) => n >= take);
      const rest = length - 1 - take; // ≥ 1 since take ≤ length − 2
      if (rest > 0) {
        const tail = Tensor.zeros([B, rest, vocab], { device }).add(padRow);
        if (allFull && padId !== endId) {
          // First tail row is the end row for rows whose caption filled the body.
          const fullMask = new Float32Array(B * rest);
          batch.captionLengths.forEach((n, b) => (fullMask[b * rest] = n >= take ? 1 : 0));
          const fm = Tensor.fromTypedArray(fullMask, [B, rest, 1]).to(device);
          parts.push(tail.add(endRow.sub(padRow).mul(fm)));
        } else {
          parts.push(tail);
        }
      }
      return Tensor.cat(parts, 1);
    });
  } finally {
    if (owned) disposeCaptionBatch(batch);
  }
}

/**
 * Where a batch's items sit in the global batch of a data-parallel step: item i is global item
 * offset + i·stride (rank r of W with the strided DistributedSampler split: offset r, stride W), so each
 * item draws the same noise as in one process with the whole batch. Default: offset 0, stride 1.
 */
export interface ItemSlots {
  offset: number;
  stride: number;
}

/** The index item i of a batch draws its random numbers under. */
function slot(slots: ItemSlots | undefined, i: number): number {
  return slots ? slots.offset + i * slots.stride : i;
}

/** Per-step random draws of the SD terms, derived from one seed so runs are reproducible. */
export interface DiffusionDraws {
  /** Base seed; item i of the batch draws from deriveSeed(seed, slot(i), …). */
  seed: number;
  /** The items' places in a data-parallel global batch (see ItemSlots). */
  slots?: ItemSlots;
  /** Explicit timesteps [B] (int64); otherwise uniform in [0, num_train_timesteps). */
  timesteps?: Tensor;
  /** Explicit ε [B, C, h, w]; otherwise N(0, 1). */
  noise?: Tensor;
  /** Scaled latents of the images (skips the VAE encode when given). */
  latents?: Tensor;
}

function trainTimesteps(sd: StableDiffusionPipeline): number {
  return Number(sd.schedulerConfig.num_train_timesteps ?? 1000);
}

/** Per-item noise of the VAE posterior sample: item i of a batch draws from deriveSeed(seed, slot(i), 1). */
function posteriorNoise(sd: StableDiffusionPipeline, B: number, shape: [number, number, number], seed: number, slots?: ItemSlots): Tensor {
  const [channels, h, w] = shape;
  return Tensor.cat(Array.from({ length: B }, (_, i) => Tensor.randn([1, channels, h, w], deriveSeed(seed, slot(slots, i), 1), { device: sd.unet.model.device })), 0);
}

/** The VAE posterior sample × scaling factor, with per-item seeded noise (no graph: the VAE is frozen). */
export async function encodeLatents(sd: StableDiffusionPipeline, images512: Tensor, seed: number, slots?: ItemSlots): Promise<Tensor> {
  const [B, , H, W] = images512.shape;
  const f = sd.vaeFactor;
  if (H % f !== 0 || W % f !== 0) throw invalid('images512', `a height and width divisible by ${f}`, `${H}×${W}`);
  const channels = sd.vae.latentChannels;
  return noGrad(() =>
    scope(async () => {
      const noise = posteriorNoise(sd, B, [channels, H / f, W / f], seed, slots);
      return (await sd.vae.encode(images512, { noise })).sampleScaled;
    }),
  );
}

/**
 * Caches the VAE posterior (mean, std) of training images, which no trainable weight affects, so each
 * image is encoded once; samples still draw fresh noise per step. Valid only when the SD-side images are
 * the same every epoch (no random crop or flip): the trainer checks that.
 */
export class LatentCache {
  private readonly posteriors = new Map<string, { mean: Tensor; std: Tensor }>();
  /** Images encoded so far (cache misses). */
  encoded = 0;

  get size(): number {
    return this.posteriors.size;
  }

  /** Same distribution and noise as encodeLatents(sd, images, seed); `keys` name the batch's images. */
  async latents(sd: StableDiffusionPipeline, images512: Tensor, keys: readonly string[], seed: number, slots?: ItemSlots): Promise<Tensor> {
    if (keys.length !== images512.shape[0]) throw invalid('keys', `${images512.shape[0]} image keys`, keys);
    return noGrad(async () => {
      const missing = keys.map((k, i) => [k, i] as const).filter(([k]) => !this.posteriors.has(k));
      if (missing.length) {
        const rows = missing.map(([, i]) => images512.narrow(0, i, 1));
        const batch = Tensor.cat(rows, 0);
        const post = await sd.vae.encode(batch);
        missing.forEach(([k], j) => this.posteriors.set(k, { mean: post.mean.narrow(0, j, 1).clone(), std: post.std.narrow(0, j, 1).clone() }));
        this.encoded += missing.length;
        disposeAll([rows, batch, post.mean, post.logvar, post.std, post.sample, post.sampleScaled]);
      }
      return scope(async () => {
        const mean = Tensor.cat(keys.map((k) => this.posteriors.get(k)!.mean), 0);
        const std = Tensor.cat(keys.map((k) => this.posteriors.get(k)!.std), 0);
        const [, c, h, w] = mean.shape;
        const noise = posteriorNoise(sd, keys.length, [c, h, w], seed, slots);
        return mean.add(std.mul(noise)).mul(sd.vae.scalingFactor);
      });
    });
  }

  dispose(): void {
    for (const p of this.posteriors.values()) disposeAll([p.mean, p.std]);
    this.posteriors.clear();
  }
}

/** Timesteps and noise for a batch of latents (per item, from the seed). */
async function draws(sd: StableDiffusionPipeline, latents: Tensor, d: DiffusionDraws): Promise<{ timesteps: Tensor; noise: Tensor }> {
  const [B, C, h, w] = latents.shape;
  const device = sd.unet.model.device;
  let timesteps = d.timesteps;
  if (!timesteps) {
    const n = trainTimesteps(sd);
    timesteps = Tensor.fromTypedArray(BigInt64Array.from({ length: B }, (_, i) => BigInt(new Rng(deriveSeed(d.seed, slot(d.slots, i), 2)).int(0, n))), [B]);
  }
  const noise = d.noise ?? Tensor.cat(Array.from({ length: B }, (_, i) => Tensor.randn([1, C, h, w], deriveSeed(d.seed, slot(d.slots, i), 3), { device })), 0);
  return { timesteps, noise };
}

/** What one denoising pass computed, for reuse (L_sd and L_rec_txt share the UNet forward). */
export interface DenoiseResult {
  loss: Tensor;
  /** ε̂ [B, C, h, w]. */
  prediction: Tensor;
  /** x_t. */
  noisy: Tensor;
  timesteps: Tensor;
  latents: Tensor;
}

async function denoise(sd: StableDiffusionPipeline, images512: Tensor, encoderHiddenStates: Tensor, d: DiffusionDraws): Promise<DenoiseResult> {
  const latents = d.latents ?? (await encodeLatents(sd, images512, d.seed, d.slots));
  const { timesteps, noise } = await draws(sd, latents, d);
  const r = await sd.unet.denoisingLoss(latents, noise, timesteps, encoderHiddenStates, sd.schedulerConfig);
  r.target.dispose();
  return { loss: r.loss, prediction: r.prediction, noisy: r.noisy, timesteps, latents };
}

/** CLIP text embeddings of the caption ids (frozen encoder: no graph). */
export async function captionEmbeddings(sd: StableDiffusionPipeline, captions: CaptionBatch): Promise<Tensor> {
  return noGrad(() => softOrIdEmbeddings(sd, { inputIds: captions.clipIds }));
}

/** SD's conditioning from ids or soft tokens (last_hidden_state). */
export async function softOrIdEmbeddings(sd: StableDiffusionPipeline, input: { inputIds?: Tensor; softTokens?: Tensor }): Promise<Tensor> {
  const out = await sd.textEncoder.call('text', input.softTokens ? { soft_tokens: input.softTokens } : { input_ids: input.inputIds });
  for (const [k, v] of Object.entries(out)) if (k !== 'last_hidden_state') v.dispose();
  return out.last_hidden_state;
}

/** The denoising pass of L_sd (caption ids), returned whole so L_rec_txt can reuse ε̂ and x_t. */
export async function sdDenoise(sd: StableDiffusionPipeline, images512: Tensor, captions: CaptionBatch | readonly string[], d: DiffusionDraws, blip?: Blip): Promise<DenoiseResult> {
  const { batch, owned } = asBatch(captions, blip, sd);
  try {
    const ehs = await captionEmbeddings(sd, batch);
    try {
      return await denoise(sd, images512, ehs, d);
    } finally {
      ehs.dispose();
    }
  } finally {
    if (owned) disposeCaptionBatch(batch);
  }
}

/** L_sd: the ordinary denoising loss with the caption ids. */
export async function sdLoss(sd: StableDiffusionPipeline, images512: Tensor, captions: CaptionBatch | readonly string[], d: DiffusionDraws = { seed: 0 }): Promise<Tensor> {
  return scope(async () => (await sdDenoise(sd, images512, captions, d)).loss);
}

/** L_rec_img: SD's denoising loss on the images' latents conditioned on soft tokens P [B, 77, V]. */
export async function reconstructImageLoss(sd: StableDiffusionPipeline, images512: Tensor, P: Tensor, d: DiffusionDraws = { seed: 0 }): Promise<Tensor> {
  return scope(async () => {
    const ehs = await softOrIdEmbeddings(sd, { softTokens: P });
    return (await denoise(sd, images512, ehs, d)).loss;
  });
}

/**
 * Bilinear resize (PyTorch `interpolate(mode='bilinear', align_corners=False)`, no antialias) built from
 * index_select + weighted sums, so it is differentiable and runs on any device: per axis each output
 * sample mixes its two nearest input samples.
 */
export function bilinearResize(x: Tensor, height: number, width: number): Tensor {
  const [, , H, W] = x.shape;
  let y = x;
  const axis = (t: Tensor, dim: 2 | 3, inSize: number, outSize: number): Tensor => {
    if (inSize === outSize) return t;
    const i0 = new BigInt64Array(outSize);
    const i1 = new BigInt64Array(outSize);
    const w0 = new Float32Array(outSize);
    const w1 = new Float32Array(outSize);
    const scale = inSize / outSize;
    for (let o = 0; o < outSize; o++) {
      const src = Math.max(0, (o + 0.5) * scale - 0.5);
      const a = Math.min(Math.floor(src), inSize - 1);
      const b = Math.min(a + 1, inSize - 1);
      const l = src - a;
      i0[o] = BigInt(a);
      i1[o] = BigInt(b);
      w0[o] = 1 - l;
      w1[o] = l;
    }
    const shape = dim === 2 ? [1, 1, outSize, 1] : [1, 1, 1, outSize];
    const dev = t.device;
    const ia = Tensor.fromTypedArray(i0, [outSize]).to(dev);
    const ib = Tensor.fromTypedArray(i1, [outSize]).to(dev);
    const wa = Tensor.fromTypedArray(w0, shape).to(dev);
    const wb = Tensor.fromTypedArray(w1, shape).to(dev);
    return Tensor.op('indexSelect', [t, ia], { dim }).mul(wa).add(Tensor.op('indexSelect', [t, ib], { dim }).mul(wb));
  };
  y = axis(y, 2, H, height);
  y = axis(y, 3, W, width);
  return y;
}

/** Decoded SD images in [-1, 1] → BLIP pixels: bilinear resize to `size`, then CLIP mean/std. */
export function sdToBlipPixels(images: Tensor, size: number): Tensor {
  const resized = bilinearResize(images, size, size);
  const dev = images.device;
  // ((x + 1)/2 − mean)/std = x·(0.5/std) + (0.5 − mean)/std
  const scale = Tensor.fromTypedArray(Float32Array.from(CLIP_STD.map((s) => 0.5 / s)), [1, 3, 1, 1]).to(dev);
  const shift = Tensor.fromTypedArray(Float32Array.from(CLIP_MEAN.map((m, i) => (0.5 - m) / CLIP_STD[i])), [1, 3, 1, 1]).to(dev);
  return resized.mul(scale).add(shift);
}

export const RECONSTRUCT_TEXT_MODES = ['x0', 'ddpm-step'] as const;
export type ReconstructTextMode = (typeof RECONSTRUCT_TEXT_MODES)[number];

export interface ReconstructTextOptions extends Partial<DiffusionDraws> {
  /**
   * 'x0' (the paper): x̂0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t. 'ddpm-step' (the authors' release): DDPM
   * `step(ε̂, t, latents).prev_sample` with the clean latents as `sample`, as the release calls it.
   */
  mode?: ReconstructTextMode;
  /** A denoising pass to reuse (from `sdDenoise` on the same images and captions). */
  denoised?: DenoiseResult;
  labelSmoothing?: number;
  /** BLIP input size; default the BLIP config's vision image_size. */
  blipImageSize?: number;
}

/** x̂ for L_rec_txt under `mode`, in the UNet's (scaled) latent space. */
async function cleanEstimate(sd: StableDiffusionPipeline, d: DenoiseResult, mode: ReconstructTextMode, seed: number, slots?: ItemSlots): Promise<Tensor> {
  if (mode === 'x0') {
    const prediction = String(sd.schedulerConfig.prediction_type ?? 'epsilon');
    if (prediction !== 'epsilon') throw new RoundtripError(`reconstructTextLoss: mode 'x0' needs an epsilon-prediction scheduler, this one predicts '${prediction}'`);
    return sd.unet.x0Estimate(d.noisy, d.prediction, d.timesteps, sd.schedulerConfig);
  }
  // The release steps a DDPM scheduler set to all training timesteps, one item at a time (t differs per item).
  const sched = await Scheduler.create('ddpm', sd.schedulerConfig);
  try {
    const schedule = await sched.setTimesteps(trainTimesteps(sd), { seed });
    const all = Array.from(schedule.timesteps.toTypedArray() as BigInt64Array | Float32Array, Number);
    disposeAll([schedule.timesteps, schedule.sigmas, schedule.alphasCumprod, schedule.betas]);
    const ts = Array.from(d.timesteps.toTypedArray() as BigInt64Array, Number);
    const [, C, h, w] = d.latents.shape;
    const outs: Tensor[] = [];
    for (let i = 0; i < ts.length; i++) {
      const index = all.indexOf(ts[i]);
      if (index < 0) throw new RoundtripError(`reconstructTextLoss: timestep ${ts[i]} is not on the DDPM schedule`);
      const noise = Tensor.randn([1, C, h, w], deriveSeed(seed, slot(slots, i), 4), { device: sd.unet.model.device });
      const r = await sched.step(d.prediction.narrow(0, i, 1), index, d.latents.narrow(0, i, 1), { noise });
      disposeAll([r.predOriginalSample, r.noise, noise]);
      outs.push(r.prevSample);
    }
    return Tensor.cat(outs, 0);
  } finally {
    sched.dispose();
  }
}

/**
 * L_rec_txt: BLIP's captioning loss on SD's one-step estimate of the clean image (decoded by the VAE,
 * resized and normalised for BLIP), against the input captions. Gradients reach the UNet through ε̂.
 */
export async function reconstructTextLoss(sd: StableDiffusionPipeline, blip: Blip | Blip2, images512: Tensor, captions: CaptionBatch | readonly string[], opts: ReconstructTextOptions = {}): Promise<Tensor> {
  const mode = expectOneOf('mode', opts.mode ?? 'x0', RECONSTRUCT_TEXT_MODES);
  const seed = opts.seed ?? 0;
  const size = expectInteger('blipImageSize', opts.blipImageSize ?? blip.imageSize, { min: 1 });
  const { batch, owned } = asBatch(captions, blip, sd);
  try {
    return await scope(async () => {
      const d = opts.denoised ?? (await sdDenoise(sd, images512, batch, { seed, timesteps: opts.timesteps, noise: opts.noise, latents: opts.latents, slots: opts.slots }));
      const x0 = await cleanEstimate(sd, d, mode, seed, opts.slots);
      const decoded = (await sd.vae.decode(x0, { scaled: true })).image;
      const pixels = sdToBlipPixels(decoded.to(blip.device), size);
      return captionLoss(blip, pixels, batch, { labelSmoothing: opts.labelSmoothing });
    });
  } finally {
    if (owned) disposeCaptionBatch(batch);
  }
}
