/**
 * Every method of every native model kind, declared once: its tensor inputs, its options and its outputs, as the
 * C++ `call` of each kind reads and returns them (native/models/<kind>.cc). `NativeModel<K>.call` is typed by this
 * table, so a misspelt method, input, option or output is a compile error, not a run-time "unknown method".
 *
 * Input and output names are the C++ ones (snake_case, the reference implementations' argument names); the model
 * classes in lib/models translate to and from camelCase at the public API edge, where arguments are validated.
 */
import type { Tensor } from './tensor';

type T = Tensor;

/** One method: tensor inputs, JSON options, tensor outputs. */
export interface NativeMethod<In, Options, Out> {
  in: In;
  options: Options;
  out: Out;
}

/** Options every model method accepts (NativeModel adds them from its settings). */
export interface CommonCallOptions {
  autocast?: 'bf16' | 'fp16';
  gradient_checkpointing?: boolean;
  /** UNet: run frozen convolutions on packed weights under autograd too (default true; see setTrainingConvPacking). */
  training_conv_packing?: boolean;
}

/** Text inputs of the captioners' decoders (BLIP's BERT decoder, BLIP-2's OPT). */
export interface CaptionerTextInputs {
  input_ids: T;
  attention_mask?: T;
  pixel_values?: T;
  image_embeds?: T;
}

/** The decoding options both captioners' `generate` read (transformers' GenerationConfig names). */
export interface NativeGenerateOptions {
  num_beams?: number;
  num_return_sequences?: number;
  do_sample?: boolean;
  top_p?: number;
  top_k?: number;
  temperature?: number;
  repetition_penalty?: number;
  length_penalty?: number;
  max_length?: number;
  min_length?: number;
  max_new_tokens?: number;
  min_new_tokens?: number;
  bos_token_id?: number;
  eos_token_id?: number;
  pad_token_id?: number;
  seed?: number;
  [option: string]: unknown;
}

/** Beam search returns `sequences_scores`, greedy and sampling `token_logprobs`: always one of the two. */
export interface CaptionerGeneration {
  sequences: T;
  /** Greedy and sampling: the log-probability of each generated token. */
  token_logprobs?: T;
  /** Beam search: the final beam scores. */
  sequences_scores?: T;
}

/** A UNet training-time schedule (the scheduler config the noise and x̂0 formulas use). */
export interface ScheduleOption {
  scheduler_config?: Record<string, unknown>;
}

export interface SampleLoopOptions {
  scheduler?: string;
  scheduler_config?: Record<string, unknown>;
  steps?: number;
  guidance?: number;
  seed?: number;
  record?: boolean;
  strength?: number;
  decode?: Record<string, unknown>;
}

export interface SampleLoopOutputs {
  latents: T;
  timesteps: T;
  image?: T;
  model_input?: T;
  latents_steps?: T;
  noise_pred_uncond?: T;
  noise_pred_text?: T;
  noise_pred?: T;
  variance_noise?: T;
}

export interface EncoderOutputs {
  last_hidden_state: T;
  pooler_output: T;
}

export interface NativeMethods {
  /** native/models/blip.cc */
  blip: {
    vision: NativeMethod<{ pixel_values: T }, CommonCallOptions, EncoderOutputs>;
    positions: NativeMethod<Record<string, never>, { height?: number; width?: number }, { position_embedding: T }>;
    logits: NativeMethod<CaptionerTextInputs, CommonCallOptions, { logits: T }>;
    token_probs: NativeMethod<CaptionerTextInputs, CommonCallOptions & { temperature?: number }, { probs: T }>;
    loss: NativeMethod<CaptionerTextInputs & { labels: T }, CommonCallOptions & { label_smoothing?: number }, { loss: T }>;
    generate: NativeMethod<{ pixel_values?: T; image_embeds?: T; input_ids?: T; attention_mask?: T }, CommonCallOptions & NativeGenerateOptions, CaptionerGeneration>;
  };
  /** native/models/blip2.cc */
  blip2: {
    vision: NativeMethod<{ pixel_values: T }, CommonCallOptions, EncoderOutputs>;
    queries: NativeMethod<{ pixel_values?: T; image_embeds?: T }, CommonCallOptions, { qformer_last_hidden_state: T; language_projection: T }>;
    logits: NativeMethod<CaptionerTextInputs, CommonCallOptions & { text_only?: boolean }, { logits: T }>;
    token_probs: NativeMethod<CaptionerTextInputs, CommonCallOptions & { temperature?: number }, { probs: T }>;
    loss: NativeMethod<CaptionerTextInputs & { labels: T }, CommonCallOptions & { label_smoothing?: number }, { loss: T }>;
    generate: NativeMethod<{ pixel_values?: T; image_embeds?: T; input_ids?: T; attention_mask?: T }, CommonCallOptions & NativeGenerateOptions, CaptionerGeneration>;
  };
  /** native/models/clip.cc */
  clip: {
    text: NativeMethod<{ input_ids?: T; attention_mask?: T; soft_tokens?: T }, CommonCallOptions, EncoderOutputs & { text_embeds?: T; text_embeds_unnormalized?: T }>;
    vision: NativeMethod<{ pixel_values: T }, CommonCallOptions, EncoderOutputs & { image_embeds: T; image_embeds_unnormalized: T }>;
    forward: NativeMethod<
      { input_ids: T; pixel_values: T; attention_mask?: T },
      CommonCallOptions,
      {
        text_embeds: T;
        text_embeds_unnormalized: T;
        image_embeds: T;
        image_embeds_unnormalized: T;
        logit_scale_exp: T;
        logits_per_text: T;
        logits_per_image: T;
        [prefixed: string]: T;
      }
    >;
    set_tensors: NativeMethod<Record<string, T>, CommonCallOptions, Record<string, T>>;
  };
  /** native/models/bert.cc (MiniLM / Sentence-BERT) */
  bert: {
    encode: NativeMethod<
      { input_ids: T; attention_mask?: T; token_type_ids?: T },
      CommonCallOptions,
      EncoderOutputs & { cls: T; mean_pooled: T; sentence_embedding: T }
    >;
    set_tensors: NativeMethod<Record<string, T>, CommonCallOptions, Record<string, T>>;
  };
  /** native/models/vit.cc (DINO) */
  vit: {
    forward: NativeMethod<{ pixel_values: T }, CommonCallOptions & { interpolation?: string }, { last_hidden_state: T; cls: T; pos_embed: T }>;
    set_tensors: NativeMethod<Record<string, T>, CommonCallOptions, Record<string, T>>;
  };
  /** native/models/inception.cc (FID / IS) */
  inception: {
    forward: NativeMethod<
      { images: T },
      CommonCallOptions & { resized?: boolean; normalized?: boolean; block_means?: boolean; blocks?: string[] },
      { [output: string]: T }
    >;
    set_tensors: NativeMethod<Record<string, T>, CommonCallOptions, Record<string, T>>;
  };
  /** native/models/unet.cc and sd_sampling.cc */
  unet: {
    forward: NativeMethod<{ sample: T; timesteps: T; encoder_hidden_states: T }, CommonCallOptions & { intermediates?: boolean }, { sample: T; [intermediate: string]: T }>;
    sample: NativeMethod<
      { latents: T; cond_embeds: T; uncond_embeds?: T; variance_noise?: T; init_latents?: T },
      CommonCallOptions & SampleLoopOptions,
      SampleLoopOutputs
    >;
    guided_eps: NativeMethod<{ sample: T; timestep: T; cond_embeds: T; uncond_embeds?: T }, CommonCallOptions & { guidance?: number }, { eps: T; eps_uncond: T; eps_text: T }>;
    denoising_loss: NativeMethod<{ latents: T; noise: T; timesteps: T; encoder_hidden_states: T }, CommonCallOptions & ScheduleOption, { loss: T; prediction: T; target: T; noisy: T }>;
    x0_estimate: NativeMethod<{ sample: T; eps: T; timesteps: T }, CommonCallOptions & ScheduleOption, { x0_hat: T }>;
  };
  /** native/models/vae.cc */
  vae: {
    encode: NativeMethod<
      { image: T; noise?: T },
      CommonCallOptions & { seed?: number; intermediates?: boolean },
      { mean: T; logvar: T; std: T; sample: T; sample_scaled: T; mean_scaled: T; [intermediate: string]: T }
    >;
    decode: NativeMethod<
      { z: T },
      CommonCallOptions & { scaled?: boolean; intermediates?: boolean; slicing?: boolean; tiling?: boolean; [option: string]: unknown },
      { image: T; [intermediate: string]: T }
    >;
  };
  /** native/models/sd_sampling.cc: a diffusers scheduler driven step by step. */
  scheduler: {
    sample: NativeMethod<{ latents: T; fixed_eps: T; variance_noise?: T; init_latents?: T }, SampleLoopOptions & { a?: number }, SampleLoopOutputs>;
    set_timesteps: NativeMethod<
      Record<string, never>,
      { steps: number; strength?: number; begin?: number; seed?: number },
      { timesteps: T; init_noise_sigma: T; alphas_cumprod: T; betas: T; begin_index: T; order: T; sigmas?: T }
    >;
    scale_model_input: NativeMethod<{ sample: T }, { step: number }, { sample: T }>;
    step: NativeMethod<{ model_output: T; sample: T; noise?: T }, { step: number }, { prev_sample: T; variance: T; noise_drawn: T; pred_original_sample?: T; noise?: T }>;
    add_noise: NativeMethod<{ original_samples: T; noise: T; timesteps: T }, Record<string, never>, { noisy_samples: T }>;
    get_velocity: NativeMethod<{ sample: T; noise: T; timesteps: T }, Record<string, never>, { velocity: T }>;
  };
}

/** A registered native model kind. */
export type ModelKind = keyof NativeMethods;
/** The methods of a kind. */
export type MethodName<K extends ModelKind> = keyof NativeMethods[K] & string;
type MethodOf<K extends ModelKind, M extends MethodName<K>> = NativeMethods[K][M] extends NativeMethod<infer I, infer O, infer R> ? { in: I; options: O; out: R } : never;
export type MethodInputs<K extends ModelKind, M extends MethodName<K>> = MethodOf<K, M>['in'];
export type MethodOptions<K extends ModelKind, M extends MethodName<K>> = MethodOf<K, M>['options'];
export type MethodOutputs<K extends ModelKind, M extends MethodName<K>> = MethodOf<K, M>['out'];

/** Tensor ops of `native().op` (native/core/ops.cc): each op's arguments. Ops return a tensor unless listed below. */
export interface NativeTensorOps {
  add: { scalar?: number };
  sub: { scalar?: number };
  mul: { scalar?: number };
  div: { scalar?: number };
  neg: Record<string, never>;
  exp: Record<string, never>;
  log: Record<string, never>;
  sqrt: Record<string, never>;
  abs: Record<string, never>;
  pow: { exponent: number };
  sum: { dim?: number | number[]; keepdim?: boolean };
  mean: { dim?: number | number[]; keepdim?: boolean };
  stack: { dim?: number };
  cat: { dim?: number };
  reshape: { shape: number[] };
  narrow: { dim: number; start: number; length: number };
  select: { dim: number; index: number };
  indexSelect: { dim: number };
  permute: { dims: number[] };
  argmax: { dim?: number; keepdim?: boolean };
  softmax: { dim?: number };
  logSoftmax: { dim?: number };
  detach: Record<string, never>;
  clone: Record<string, never>;
  contiguous: Record<string, never>;
  cast: { dtype: string };
  zeros: { shape: number[]; dtype?: string; device?: string };
  full: { shape: number[]; value: number; dtype?: string; device?: string };
  randn: { shape: number[]; seed: number; device?: string };
  rand: { shape: number[]; seed: number; device?: string };
  mse: Record<string, never>;
  cosineDistance: Record<string, never>;
}
export type TensorOpName = keyof NativeTensorOps;

/** The two ops that return numbers: the global gradient norm, and a conformance comparison. */
export interface NativeCompareResult {
  maxAbs: number;
  maxRel: number;
  bad: number;
  numel: number;
}
