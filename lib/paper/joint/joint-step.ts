/**
 * The joint objective and the whole training step as native calls (native/train/joint.cc):
 *
 * - `objective(batch)` evaluates one micro-batch's active terms with their graph (what `jointObjective` returns);
 * - `run(batches)` is one optimizer step: every micro-batch's forward and backward, gradient norms, clipping and
 *   AdamW per parameter group, in one native call with one host synchronisation, returning the step's numbers.
 *
 * Random draws (timesteps, noise, VAE posterior samples) are those of the TypeScript loss-term API in losses.ts
 * for the same seeds, so the step equals the composition of those calls.
 */
import { RoundtripError, expectInteger, expectNumber, expectOneOf, invalid } from '../../errors';
import type { VocabularyBridge } from '../bridge';
import type { Blip } from '../../models/blip';
import { Blip2 } from '../../models/blip2';
import type { StableDiffusionPipeline } from '../../models/sd/pipeline';
import { native, NativeJointStepHandle, NativeTensorHandle } from '../../runtime/native';
import { Tensor } from '../../runtime/tensor';
import type { AdamW } from '../../train/optimizer';
import type { GradSync } from '../../runtime/distributed';
import { bridgeIndex } from './losses';
import { GRADIENT_ROUTES, LOSS_TERMS, LossTerm, ObjectiveOptions, SCHEDULES, SOFT_FRAMINGS, type JointBatch } from './objective';

export interface JointModels {
  /** The captioner: BLIP, or BLIP-2 OPT (its logits on the text positions; the bridge must index OPT ids). */
  blip: Blip | Blip2;
  sd: StableDiffusionPipeline;
  bridge: VocabularyBridge;
  /** Whether BLIP's vision tower trains (otherwise it runs without a graph). */
  visionTrainable: boolean;
}

export const CLIP_MODES = ['global', 'per-model'] as const;
export type ClipMode = (typeof CLIP_MODES)[number];

/** What the training step updates and how: one AdamW per model (each with its own weight decay) and clipping. */
export interface JointTraining {
  optimizers: { blip?: AdamW; unet?: AdamW };
  /** 'global': one norm over both models clipped to `clip`; 'per-model' (the release): `blipClip` / `unetClip`. */
  clipMode: ClipMode;
  /** Max gradient norm; 0 = no clipping. */
  clip: number;
  blipClip?: number;
  unetClip?: number;
}

/** The numbers of one optimizer step (means over its micro-batches). */
export interface JointStepStats {
  loss: number;
  terms: Partial<Record<LossTerm, number>>;
  /** L2 norms of the gradients before clipping. */
  gradNorm: { total: number; blip: number; unet: number };
  /** Largest |w| among the trainable tensors before the update. */
  paramMaxAbs: number;
  /** false: a loss, gradient norm or weight was not finite, and the update was skipped (weights unchanged). */
  applied: boolean;
  /** Data-parallel steps: how many ranks asked to stop after this step (0 otherwise). */
  stopVotes: number;
  /** Native wall milliseconds: the micro-batches' forwards, their backwards, clipping + the optimizer update. */
  timings: { forwardMs: number; backwardMs: number; updateMs: number };
}


const cache = new WeakMap<Blip | Blip2, Map<string, JointStep>>();

export class JointStep {
  private constructor(private handle: NativeJointStepHandle | undefined, readonly options: ObjectiveOptions) {}

  /** Builds the native objective over the models (and, with `training`, the step's optimizers and clipping). */
  static create(models: JointModels, opts: ObjectiveOptions, training?: JointTraining): JointStep {
    const { blip, sd, bridge } = models;
    LOSS_TERMS.forEach((t) => expectNumber(`weights.${t}`, opts.weights[t], { min: 0 }));
    expectOneOf('schedule', opts.schedule, SCHEDULES);
    expectOneOf('softFraming', opts.softFraming ?? 'padded', SOFT_FRAMINGS);
    const blip2 = blip instanceof Blip2;
    const blipVocab = blip.vocabSize;
    if (bridge.tokenizer && bridge.tokenizer !== (blip2 ? 'opt' : 'bert')) {
      throw new RoundtripError(`bridge: it maps CLIP ids to ${bridge.tokenizer === 'opt' ? "BLIP-2's OPT" : "BLIP's WordPiece"} ids, but the captioner is ${blip2 ? 'BLIP-2 (OPT)' : 'BLIP'}; learn one for this captioner (roundtrip bridge build, or leave out --bridge)`);
    }
    const device = sd.unet.model.device;
    const config = {
      weights: opts.weights,
      schedule: opts.schedule,
      temperature: expectNumber('temperature', opts.temperature, { min: 0, exclusiveMin: true }),
      soft_mode: opts.softMode,
      soft_framing: opts.softFraming ?? 'padded',
      soft_length: sd.tokenizer.modelMaxLength,
      rec_txt_mode: opts.recTxtMode,
      rec_txt_normalize: opts.recTxtNormalize ?? true,
      label_smoothing: expectNumber('labelSmoothing', opts.labelSmoothing, { min: 0, max: 1 }),
      rec_img_route: expectOneOf('routes.recImg', opts.routes?.recImg ?? 'both', GRADIENT_ROUTES),
      rec_txt_route: expectOneOf('routes.recTxt', opts.routes?.recTxt ?? 'both', GRADIENT_ROUTES),
      clip_start: opts.clipStartId,
      clip_end: opts.clipEndId,
      clip_pad: opts.clipPadId,
      vision_trainable: models.visionTrainable,
      blip_image_size: blip.imageSize,
      gradient_checkpointing: blip.model.gradientCheckpointing || sd.unet.model.gradientCheckpointing,
      training_conv_packing: sd.unet.model.trainingConvPacking,
      autocast: blip.model.autocast,
      scheduler_config: sd.schedulerConfig,
      latent_channels: sd.vae.latentChannels,
      vae_factor: sd.vaeFactor,
      ...(training
        ? {
            clip_mode: expectOneOf('clipMode', training.clipMode, CLIP_MODES),
            clip: expectNumber('clip', training.clip, { min: 0 }),
            blip_clip: expectNumber('blipClip', training.blipClip ?? training.clip, { min: 0 }),
            unet_clip: expectNumber('unetClip', training.unetClip ?? training.clip, { min: 0 }),
          }
        : {}),
    };
    const index = bridgeIndex(bridge, device, blipVocab);
    const optimizers = training ? { blip: training.optimizers.blip?.nativeHandle, unet: training.optimizers.unet?.nativeHandle } : undefined;
    const models4 = { blip: blip.model.handle, unet: sd.unet.model.handle, vae: sd.vae.model.handle, text: sd.textEncoder.handle };
    try {
      return new JointStep(native().createJointStep(models4, index.handle, JSON.stringify(config), optimizers), opts);
    } catch (err) {
      throw new RoundtripError(err instanceof Error ? err.message : String(err));
    }
  }

  /** The objective-only step for `models` and `opts`, built once and reused (the `jointObjective` path). */
  static cached(models: JointModels, opts: ObjectiveOptions): JointStep {
    const key = JSON.stringify([opts, models.visionTrainable, models.sd.dir, models.sd.unet.model.gradientCheckpointing, models.sd.unet.model.trainingConvPacking, models.blip.model.autocast]);
    let perBlip = cache.get(models.blip);
    if (!perBlip) cache.set(models.blip, (perBlip = new Map()));
    let step = perBlip.get(key);
    if (!step || !step.handle) {
      step = JointStep.create(models, opts);
      perBlip.set(key, step);
    }
    return step;
  }

  private native(): NativeJointStepHandle {
    if (!this.handle) throw new RoundtripError('joint step: disposed');
    return this.handle;
  }

  /** The terms a micro-batch evaluates at optimizer step `step` (index `micro` within it). */
  activeTerms(step: number, micro = 0): LossTerm[] {
    return this.native().activeTerms(step, micro) as LossTerm[];
  }

  /** One micro-batch's total and terms, with their graph. */
  async objective(batch: JointBatch, at: { step: number; seed: number; micro?: number }): Promise<{ total: Tensor; terms: Partial<Record<LossTerm, Tensor>> }> {
    const { tensors, options } = batchInputs(batch, at.seed, at.micro ?? 0);
    let out: Record<string, NativeTensorHandle | number>;
    try {
      out = await this.native().objective(tensors, JSON.stringify({ ...options, step: expectInteger('step', at.step, { min: 0 }) }));
    } catch (err) {
      throw new RoundtripError(err instanceof Error ? err.message : String(err));
    }
    const terms: Partial<Record<LossTerm, Tensor>> = {};
    const tensor = (name: string): Tensor | undefined => (typeof out[name] === 'object' ? new Tensor(out[name] as NativeTensorHandle) : undefined);
    for (const t of LOSS_TERMS) {
      const v = tensor(t);
      if (v) terms[t] = v;
    }
    const total = tensor('total');
    if (!total) throw new RoundtripError('joint step: the native objective returned no total');
    return { total, terms };
  }

  /**
   * One optimizer step over `batches` (its micro-batches, in order): forward and backward of each (loss scaled by
   * 1/len), gradient norms, clipping, and the AdamW updates at learning rate `lr` — skipped when any number is not
   * finite. `seeds[i]` drives micro-batch i's draws.
   */
  async run(batches: JointBatch[], at: { step: number; lr: number; seeds: number[]; stop?: boolean }): Promise<JointStepStats> {
    if (!Array.isArray(batches) || batches.length === 0) throw invalid('batches', 'at least one micro-batch', batches);
    if (at.seeds.length !== batches.length) throw invalid('seeds', `${batches.length} seeds (one per micro-batch)`, at.seeds.length);
    const inputs = batches.map((b, i) => batchInputs(b, at.seeds[i], i));
    let v: Float32Array;
    try {
      v = await this.native().step(
        inputs.map((x) => x.tensors),
        JSON.stringify(inputs.map((x) => x.options)),
        JSON.stringify({ step: expectInteger('step', at.step, { min: 0 }), lr: expectNumber('lr', at.lr, { min: 0 }), stop: at.stop === true }),
      );
    } catch (err) {
      throw new RoundtripError(err instanceof Error ? err.message : String(err));
    }
    const terms: Partial<Record<LossTerm, number>> = {};
    LOSS_TERMS.forEach((t, i) => {
      if (!Number.isNaN(v[1 + i])) terms[t] = v[1 + i];
    });
    return {
      loss: v[0],
      terms,
      gradNorm: { total: v[5], blip: v[6], unet: v[7] },
      paramMaxAbs: v[8],
      applied: v[9] === 1,
      timings: { forwardMs: v[10], backwardMs: v[11], updateMs: v[12] },
      stopVotes: v[13] ?? 0,
    };
  }

  /**
   * Data-parallel training: `run` averages the trained tensors' gradients (and its loss numbers) across the
   * ranks between the micro-batches' backward and clipping (lib/runtime/distributed GradSync; null detaches).
   */
  setGradSync(sync: GradSync | null): void {
    this.native().setGradSync(sync ? sync.nativeHandle : null);
  }

  /** Releases the native step (the models stay with their owners). */
  dispose(): void {
    this.handle?.dispose();
    this.handle = undefined;
  }
}

function batchInputs(batch: JointBatch, seed: number, micro: number): { tensors: Record<string, NativeTensorHandle>; options: Record<string, unknown> } {
  const c = batch.captions;
  const tensors: Record<string, NativeTensorHandle> = {
    blip_ids: c.blipIds.handle,
    blip_mask: c.blipMask.handle,
    blip_labels: c.blipLabels.handle,
    clip_ids: c.clipIds.handle,
  };
  if (batch.blipImages) tensors.blip_pixels = batch.blipImages.handle;
  if (batch.sdImages) tensors.sd_images = batch.sdImages.handle;
  if (batch.latents) tensors.latents = batch.latents.handle;
  return {
    tensors,
    options: {
      prompt_length: c.promptLength,
      caption_lengths: c.captionLengths,
      seed: expectInteger('seed', seed >>> 0, { min: 0 }),
      micro,
      // Data-parallel: item i draws as global item offset + i·stride; token-mean terms weighted (distributed.ts).
      ...(batch.slots ? { slot_offset: batch.slots.offset, slot_stride: batch.slots.stride } : {}),
      ...(batch.tokenScale !== undefined ? { token_scale: expectNumber('tokenScale', batch.tokenScale, { min: 0 }) } : {}),
    },
  };
}
