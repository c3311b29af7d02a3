/**
 * Configs of the small world models: the published architectures (BLIP, CLIP, SD v1.x UNet + VAE) at sizes
 * that train on two CPU cores in minutes, written with the full field sets that transformers / diffusers
 * save, so the folders load with the same code as the published checkpoints.
 */
import { expectInteger } from '../../errors';
import { BLIP_TEMPLATE, CLIP_TEMPLATE, CLIP_TEXT_TEMPLATE, DDIM_SCHEDULER_TEMPLATE, UNET_TEMPLATE, VAE_TEMPLATE } from './templates';

/** BERT vocabulary + BLIP's [DEC] and [ENC]. */
export const BLIP_VOCAB_SIZE = 30524;
/** CLIP BPE vocabulary (49,406 tokens + start/end of text). */
export const CLIP_VOCAB_SIZE = 49408;
/** CLIP's context length (SD's text encoder always sees 77 ids). */
export const CLIP_CONTEXT = 77;

/** Sizes of the small models; everything else follows the published configs. */
export interface WorldModelSizes {
  /** World image side (pixels); the models' input size. */
  imageSize: number;
  /** ViT patch of BLIP's and CLIP's vision towers. */
  patchSize: number;
  blipHidden: number;
  blipLayers: number;
  clipVisionHidden: number;
  clipTextHidden: number;
  clipLayers: number;
  clipProjection: number;
  /** VAE channels per level; 2^(levels-1) is the downsampling factor. */
  vaeChannels: number[];
  /** UNet channels per level. */
  unetChannels: number[];
}

export const DEFAULT_SIZES: Readonly<WorldModelSizes> = {
  imageSize: 64,
  patchSize: 8,
  blipHidden: 48,
  blipLayers: 2,
  clipVisionHidden: 64,
  clipTextHidden: 32,
  clipLayers: 2,
  clipProjection: 32,
  vaeChannels: [16, 32, 32],
  unetChannels: [32, 64],
};

function clone<T>(value: T): any {
  return JSON.parse(JSON.stringify(value));
}

/** Heads of a width: 4 heads, or fewer when the width is small (head dim ≥ 8). */
function heads(width: number): number {
  return Math.max(1, Math.min(4, Math.floor(width / 8)));
}

function checkSizes(s: WorldModelSizes): void {
  expectInteger('imageSize', s.imageSize, { min: 16 });
  expectInteger('patchSize', s.patchSize, { min: 1 });
  if (s.imageSize % s.patchSize !== 0) throw new Error(`imageSize ${s.imageSize} is not a multiple of patchSize ${s.patchSize}`);
  for (const [k, v] of Object.entries(s)) {
    if (Array.isArray(v)) v.forEach((x, i) => expectInteger(`${k}[${i}]`, x, { min: 8 }));
    else expectInteger(k, v, { min: 1 });
  }
  const factor = 2 ** (s.vaeChannels.length - 1);
  if (s.imageSize % factor !== 0) throw new Error(`imageSize ${s.imageSize} is not a multiple of the VAE factor ${factor}`);
}

/** transformers BlipConfig (BlipForConditionalGeneration) with a `blipLayers`-layer ViT and BERT decoder. */
export function worldBlipConfig(s: WorldModelSizes = DEFAULT_SIZES): any {
  checkSizes(s);
  const c = clone(BLIP_TEMPLATE);
  const h = s.blipHidden;
  Object.assign(c.vision_config, {
    hidden_size: h,
    intermediate_size: 2 * h,
    num_attention_heads: heads(h),
    num_hidden_layers: s.blipLayers,
    image_size: s.imageSize,
    patch_size: s.patchSize,
    initializer_range: 0.02,
  });
  Object.assign(c.text_config, {
    hidden_size: h,
    encoder_hidden_size: h,
    intermediate_size: 2 * h,
    num_attention_heads: heads(h),
    num_hidden_layers: s.blipLayers,
    // BLIP tokenizes captions to at most 40 ids.
    max_position_embeddings: 64,
    vocab_size: BLIP_VOCAB_SIZE,
  });
  c.image_text_hidden_size = h;
  c.projection_dim = h;
  return c;
}

/** transformers CLIPConfig (CLIPModel): the world's image/text similarity model. */
export function worldClipConfig(s: WorldModelSizes = DEFAULT_SIZES): any {
  checkSizes(s);
  const c = clone(CLIP_TEMPLATE);
  Object.assign(c.text_config, {
    hidden_size: s.clipTextHidden,
    intermediate_size: 4 * s.clipTextHidden,
    num_attention_heads: heads(s.clipTextHidden),
    num_hidden_layers: s.clipLayers,
    max_position_embeddings: CLIP_CONTEXT,
    vocab_size: CLIP_VOCAB_SIZE,
    projection_dim: s.clipProjection,
  });
  Object.assign(c.vision_config, {
    hidden_size: s.clipVisionHidden,
    intermediate_size: 4 * s.clipVisionHidden,
    num_attention_heads: heads(s.clipVisionHidden),
    num_hidden_layers: s.clipLayers,
    image_size: s.imageSize,
    patch_size: s.patchSize,
    projection_dim: s.clipProjection,
  });
  c.projection_dim = s.clipProjection;
  return c;
}

/** transformers CLIPTextConfig (CLIPTextModel): SD's text_encoder, the text tower of `worldClipConfig`. */
export function worldClipTextConfig(s: WorldModelSizes = DEFAULT_SIZES): any {
  const full = worldClipConfig(s);
  const c = clone(CLIP_TEXT_TEMPLATE);
  for (const key of ['hidden_size', 'intermediate_size', 'num_attention_heads', 'num_hidden_layers', 'max_position_embeddings', 'vocab_size', 'projection_dim']) {
    c[key] = full.text_config[key];
  }
  return c;
}

/** diffusers AutoencoderKL: `vaeChannels.length` levels, one resnet per level, 4 latent channels. */
export function worldVaeConfig(s: WorldModelSizes = DEFAULT_SIZES, scalingFactor = 0.18215): any {
  checkSizes(s);
  const c = clone(VAE_TEMPLATE);
  const n = s.vaeChannels.length;
  Object.assign(c, {
    block_out_channels: [...s.vaeChannels],
    down_block_types: Array(n).fill('DownEncoderBlock2D'),
    up_block_types: Array(n).fill('UpDecoderBlock2D'),
    layers_per_block: 1,
    norm_num_groups: 8,
    sample_size: s.imageSize,
    scaling_factor: scalingFactor,
  });
  return c;
}

/** diffusers UNet2DConditionModel on the VAE's latents, cross-attending to the CLIP text tower. */
export function worldUnetConfig(s: WorldModelSizes = DEFAULT_SIZES): any {
  checkSizes(s);
  const c = clone(UNET_TEMPLATE);
  const n = s.unetChannels.length;
  const factor = 2 ** (s.vaeChannels.length - 1);
  Object.assign(c, {
    block_out_channels: [...s.unetChannels],
    // Attention below full latent resolution only (plus the mid block): at 16×16 latents, self-attention
    // over 256 positions would cost 2.5× the whole UNet step on CPU, and 8×8 cells still resolve the
    // world's positions and relations.
    down_block_types: ['DownBlock2D', ...Array(n - 1).fill('CrossAttnDownBlock2D')],
    up_block_types: [...Array(n - 1).fill('CrossAttnUpBlock2D'), 'UpBlock2D'],
    // SD1 configs name the head count attention_head_dim.
    attention_head_dim: 4,
    cross_attention_dim: s.clipTextHidden,
    layers_per_block: 1,
    norm_num_groups: 8,
    sample_size: s.imageSize / factor,
  });
  return c;
}

/** diffusers DDIMScheduler with SD v1.x's training schedule (scaled_linear 0.00085 → 0.012, 1000 steps). */
export function worldSchedulerConfig(): any {
  return clone(DDIM_SCHEDULER_TEMPLATE);
}

/** diffusers model_index.json of a StableDiffusionPipeline without safety checker. */
export function worldModelIndex(): any {
  return {
    _class_name: 'StableDiffusionPipeline',
    _diffusers_version: '0.25.1',
    feature_extractor: [null, null],
    requires_safety_checker: false,
    safety_checker: [null, null],
    scheduler: ['diffusers', 'DDIMScheduler'],
    text_encoder: ['transformers', 'CLIPTextModel'],
    tokenizer: ['transformers', 'CLIPTokenizer'],
    unet: ['diffusers', 'UNet2DConditionModel'],
    vae: ['diffusers', 'AutoencoderKL'],
  };
}

/** tokenizer_config.json of a CLIPTokenizer folder (SD v1.x's). */
export function clipTokenizerConfig(): any {
  return {
    add_prefix_space: false,
    bos_token: '<|startoftext|>',
    clean_up_tokenization_spaces: true,
    do_lower_case: true,
    eos_token: '<|endoftext|>',
    errors: 'replace',
    model_max_length: CLIP_CONTEXT,
    pad_token: '<|endoftext|>',
    tokenizer_class: 'CLIPTokenizer',
    unk_token: '<|endoftext|>',
  };
}

/** tokenizer_config.json of BLIP's BertTokenizer folder. */
export function blipTokenizerConfig(): any {
  return {
    clean_up_tokenization_spaces: true,
    cls_token: '[CLS]',
    do_basic_tokenize: true,
    do_lower_case: true,
    mask_token: '[MASK]',
    model_max_length: 512,
    never_split: null,
    pad_token: '[PAD]',
    processor_class: 'BlipProcessor',
    sep_token: '[SEP]',
    strip_accents: null,
    tokenize_chinese_chars: true,
    tokenizer_class: 'BertTokenizer',
    unk_token: '[UNK]',
  };
}
