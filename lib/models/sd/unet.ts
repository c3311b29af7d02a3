/**
 * UNet2DConditionModel (SD v1.x) in the native core, model kind "unet". Config: diffusers unet/config.json.
 */
import { CONFIG_DEFAULTS, configInt } from '../config-defaults';
import { NativeModel } from '../../runtime/model';
import type { VAE, DecodeOptions } from './vae';
import { Tensor } from '../../runtime/tensor';

/** A scheduler_config.json object (diffusers). */
export type SchedulerConfig = Record<string, unknown>;

export interface UNetForwardResult {
  /** Predicted noise (or v), [B, C, H, W]. */
  sample: Tensor;
  /** `intermediate.*` module outputs, when requested. */
  intermediates: Record<string, Tensor>;
}

export interface DenoisingLossResult {
  loss: Tensor;
  prediction: Tensor;
  target: Tensor;
  noisy: Tensor;
}

export interface GuidedSampleInputs {
  /** N(0,1) initial latents [B, C, h, w] (multiplied by init_noise_sigma natively). */
  latents: Tensor;
  condEmbeds: Tensor;
  /** Needed when guidance > 1. */
  uncondEmbeds?: Tensor;
  /** Recorded DDPM noise [steps, B, C, h, w], replayed instead of drawing. */
  varianceNoise?: Tensor;
  /** img2img: the encoded init image (sample·scale), noised with `latents` to the run's first timestep. */
  initLatents?: Tensor;
}

export interface GuidedSampleOptions {
  /** ddpm, ddim, pndm, euler, lms, dpm++ (or a diffusers class name). */
  scheduler: string;
  schedulerConfig: SchedulerConfig;
  steps: number;
  guidance: number;
  seed?: number;
  record?: boolean;
  /** img2img (with `initLatents`): the share of the schedule to run, as StableDiffusionImg2ImgPipeline. */
  strength?: number;
}

/** What else the one native sampling call does: progress, abort, and the VAE decode of the result. */
export interface SampleControl {
  /** After every denoising step, once per step and in order, before the call resolves. */
  onStep?: (done: number, total: number) => void;
  /** Stops the loop within one step; the call rejects with the signal's reason and frees its tensors. */
  signal?: AbortSignal;
  /** Decodes latents / scaling_factor with this VAE in the same native call (result `image`). */
  vae?: VAE;
  /** VAE decode options (slicing, tiling). */
  decode?: DecodeOptions;
}

export interface GuidedSampleResult {
  latents: Tensor;
  timesteps: Tensor;
  /** The VAE decode, when `control.vae` was given. */
  image?: Tensor;
  /** Scaled model inputs per step (with `record`). */
  modelInput?: Tensor;
  latentsSteps?: Tensor;
  noisePredUncond?: Tensor;
  noisePredText?: Tensor;
  noisePred?: Tensor;
  varianceNoise?: Tensor;
}

export class UNet {
  constructor(readonly model: NativeModel<'unet'>, readonly config: Record<string, unknown>) {}

  /** Latent side the model was trained at (config `sample_size`). */
  get sampleSize(): number {
    return configInt(this.config, ['sample_size'], CONFIG_DEFAULTS.unet.sampleSize, 'unet config');
  }
  get inChannels(): number {
    return configInt(this.config, ['in_channels'], CONFIG_DEFAULTS.unet.inChannels, 'unet config');
  }
  /** Width of the text embeddings the cross-attention reads. */
  get crossAttentionDim(): number {
    return configInt(this.config, ['cross_attention_dim'], CONFIG_DEFAULTS.unet.crossAttentionDim, 'unet config');
  }

  /** Builds the UNet from a diffusers config object (random weights until loadWeights). */
  static async create(config: Record<string, unknown>, opts: { device?: string } = {}): Promise<UNet> {
    return new UNet(await NativeModel.create('unet', config, opts), config);
  }

  /** unet(sample, timesteps, encoder_hidden_states); timesteps is 0-d or [B], integer or float. */
  async forward(sample: Tensor, timesteps: Tensor, encoderHiddenStates: Tensor, opts: { intermediates?: boolean } = {}): Promise<UNetForwardResult> {
    const out = await this.model.call('forward', { sample, timesteps, encoder_hidden_states: encoderHiddenStates }, { intermediates: !!opts.intermediates });
    const intermediates: Record<string, Tensor> = {};
    for (const [k, v] of Object.entries(out)) if (k.startsWith('intermediate.')) intermediates[k] = v;
    return { sample: out.sample, intermediates };
  }

  /**
   * The whole guided sampling loop natively: latents·init_noise_sigma, then per step CFG (unconditional first)
   * and a scheduler step. `variance_noise` ([steps, B, C, h, w]) replays DDPM noise; otherwise `seed` draws it.
   * With `record`, per-step tensors come back too.
   */
  async sample(inputs: GuidedSampleInputs, opts: GuidedSampleOptions, control: SampleControl = {}): Promise<GuidedSampleResult> {
    const out = await this.model.call(
      'sample',
      { latents: inputs.latents, cond_embeds: inputs.condEmbeds, uncond_embeds: inputs.uncondEmbeds, variance_noise: inputs.varianceNoise, init_latents: inputs.initLatents },
      {
        scheduler: opts.scheduler === 'dpm++' ? 'dpmsolver' : opts.scheduler,
        scheduler_config: opts.schedulerConfig,
        steps: opts.steps,
        guidance: opts.guidance,
        seed: opts.seed ?? 0,
        record: !!opts.record,
        strength: opts.strength,
        decode: control.vae ? control.vae.decodeOptions(control.decode) : undefined,
      },
      { onStep: control.onStep, signal: control.signal, models: control.vae ? { vae: control.vae.model } : undefined },
    );
    return {
      latents: out.latents,
      timesteps: out.timesteps,
      image: out.image,
      modelInput: out.model_input,
      latentsSteps: out.latents_steps,
      noisePredUncond: out.noise_pred_uncond,
      noisePredText: out.noise_pred_text,
      noisePred: out.noise_pred,
      varianceNoise: out.variance_noise,
    };
  }

  /** One guided ε for per-step loops driven from TypeScript (tensors stay native). */
  async guidedEps(sample: Tensor, timestep: Tensor, condEmbeds: Tensor, uncondEmbeds: Tensor | undefined, guidance: number): Promise<Tensor> {
    const out = await this.model.call('guided_eps', { sample, timestep, cond_embeds: condEmbeds, uncond_embeds: uncondEmbeds }, { guidance });
    out.eps_uncond.dispose();
    out.eps_text.dispose();
    return out.eps;
  }

  /**
   * Training objective: x_t = add_noise(latents, noise, t) under `schedulerConfig`, then MSE between the UNet
   * prediction and ε (prediction_type epsilon) or the velocity (v_prediction). `latents` are already scaled.
   */
  async denoisingLoss(latents: Tensor, noise: Tensor, timesteps: Tensor, encoderHiddenStates: Tensor, schedulerConfig: SchedulerConfig): Promise<DenoisingLossResult> {
    const out = await this.model.call('denoising_loss', { latents, noise, timesteps, encoder_hidden_states: encoderHiddenStates }, { scheduler_config: schedulerConfig });
    return { loss: out.loss, prediction: out.prediction, target: out.target, noisy: out.noisy };
  }

  /** One-step clean estimate x̂0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t, differentiable in ε̂. */
  async x0Estimate(sample: Tensor, eps: Tensor, timesteps: Tensor, schedulerConfig: SchedulerConfig): Promise<Tensor> {
    const out = await this.model.call('x0_estimate', { sample, eps, timesteps }, { scheduler_config: schedulerConfig });
    return out.x0_hat;
  }

  dispose(): void {
    this.model.dispose();
  }
}
