/**
 * BLIP captioner (transformers `BlipForConditionalGeneration`) on the native core (model kind "blip").
 *
 * Loads a Hugging Face folder (config.json + model.safetensors) or the original salesforce/BLIP layout
 * (`visual_encoder.*`, converted from `.pth` to safetensors), optionally merging partial fine-tune files
 * (DalleFlamingo's `--unfreeze_blip xattn_q` layout). Generation (greedy, beam search, sampling) runs in
 * one native call per batch.
 */
import { CONFIG_DEFAULTS, configInt } from './config-defaults';
import * as fs from 'fs';
import * as path from 'path';
import { OptionNames, RoundtripError, expectInteger, expectNumber, expectOneOf, expectString, invalid, optionName } from '../errors';
import { LIMITS, expectBounded } from '../limits';
import { NativeModel, WeightsReport } from '../runtime/model';
import { Tensor, disposeAll, noGrad } from '../runtime/tensor';
import type { CaptionerGeneration, CaptionerTextInputs } from '../runtime/native-methods';
import { readSafetensorsHeader } from '../weights/safetensors';
import { hfWeightFiles } from '../weights/files';
import { blipPreprocess, RgbImage } from '../image';
import { loadTokenizer } from '../tokenizers';
import { readJsonFile } from '../json';
import { captionBatches, DECODING_STRATEGIES, DEFAULT_BEAMS, DecodingOptions, DecodingStrategy, generationScores, nativeDecodingOptions, tensorRows } from './decoding';

/** Decoding strategies of `Blip.generate` (lib/models/decoding.ts, shared with BLIP-2). */
export const BLIP_STRATEGIES = DECODING_STRATEGIES;
export type BlipStrategy = DecodingStrategy;

/** Token ids BLIP generation uses (transformers' BLIP: EOS is [SEP], start is [DEC]). */
export interface BlipSpecialIds {
  bos: number;
  sep: number;
  pad: number;
  cls: number;
}

export interface BlipGenerateOptions extends DecodingOptions {
  /** Beams for 'beam'; default 3. */
  numBeams?: number;
  /** Length limits; both count the start token(s) and the prompt, as transformers does. Defaults 20 / 5. */
  maxLength?: number;
  minLength?: number;
  /** Prompt token ids without special tokens (e.g. `tokenizer.encode('a picture of')`). */
  prompt?: number[];
}

/** Result of `Blip.generate`, rows ordered image-major (image i's K sequences are rows i·K … i·K+K-1). */
export interface BlipGeneration {
  /** Full sequences as transformers returns them: start token(s), prompt, generated tokens, padding. */
  sequences: number[][];
  /** Generated tokens only: prompt removed, cut before EOS (EOS and padding removed). */
  tokens: number[][];
  /** Beam scores (length-normalised log-probability) for 'beam'; sum of chosen-token log-probs otherwise. */
  scores: number[];
  /** Start tokens + prompt length. */
  promptLength: number;
  numReturnSequences: number;
}

/** Image inputs to the decoder: pixels, or image embeddings from `vision()`. */
export interface BlipImageInput {
  pixelValues?: Tensor;
  imageEmbeds?: Tensor;
}

export interface BlipTextInput extends BlipImageInput {
  /** [B, T] int64, BOS (30522) first. */
  inputIds: Tensor;
  /** [B, T], 1 = token, 0 = padding. */
  attentionMask?: Tensor;
}

/** Where the weights are: a Hugging Face folder, or explicit files. */
export interface BlipFiles {
  /** config.json path or its parsed object (full BlipConfig with vision_config / text_config). */
  config: string | object;
  /** safetensors files with the full model (HF or original salesforce/BLIP names). */
  weights: string[];
  /** Partial files merged on top, in order (e.g. finetuned cross-attention queries). */
  partial?: string[];
}

export interface BlipLoadOptions {
  device?: string;
  /** safetensors files of trained tensors (e.g. a finetune export) merged over the folder's weights. */
  partial?: string[];
}

/** What captioning needs from a tokenizer (lib/tokenizers' BERT tokenizer fits). */
export interface CaptionTokenizer {
  /** Ids without special tokens. */
  encode(text: string): number[];
  decode(ids: ArrayLike<number>, options?: { skipSpecial?: boolean }): string;
}

export interface BlipCaptionOptions extends Omit<BlipGenerateOptions, 'prompt'> {
  /** Text the captions continue (BLIP's own is 'a picture of '); it is not part of the returned text. */
  prompt?: string;
  /** Defaults to the tokenizer of the folder the model was loaded from. */
  tokenizer?: CaptionTokenizer;
  /** Images per native call; default 8. */
  batchSize?: number;
  /** Square input size; default vision_config.image_size (384 for the published models). */
  imageSize?: number;
  /** Called after each batch with the number of images done. */
  onProgress?: (done: number, total: number) => void;
}

/** Published architecture sizes (transformers configs of Salesforce/blip-image-captioning-base / -large). */
export type BlipSize = 'base' | 'large';


/**
 * Name of an original salesforce/BLIP key in transformers' layout (the renames of transformers'
 * `convert_blip_original_pytorch_to_hf.py`); keys already in transformers' layout come back unchanged.
 * Files saved from a multi-GPU run carry DDP's `module.` prefix (dropped), and a text decoder's own state dict
 * (`model.text_decoder.state_dict()`, as the paper release saves it) has no `text_decoder.` prefix (added).
 */
export function originalBlipKeyToHf(key: string): string {
  if (key.startsWith('module.')) key = key.slice('module.'.length);
  if (key.startsWith('bert.') || key.startsWith('cls.')) return 'text_decoder.' + key;
  if (!key.startsWith('visual_encoder.')) return key;
  let k = key.slice('visual_encoder.'.length);
  if (k === 'cls_token') return 'vision_model.embeddings.class_embedding';
  if (k === 'pos_embed') return 'vision_model.embeddings.position_embedding';
  if (k.startsWith('patch_embed.proj.')) return 'vision_model.embeddings.patch_embedding.' + k.slice('patch_embed.proj.'.length);
  if (k.startsWith('norm.')) return 'vision_model.post_layernorm.' + k.slice('norm.'.length);
  const m = /^blocks\.(\d+)\.(.*)$/.exec(k);
  if (!m) return key;
  k = m[2]
    .replace(/^norm1\./, 'layer_norm1.')
    .replace(/^norm2\./, 'layer_norm2.')
    .replace(/^attn\.proj\./, 'self_attn.projection.')
    .replace(/^attn\.qkv\./, 'self_attn.qkv.');
  return `vision_model.encoder.layers.${m[1]}.${k}`;
}

/** `loadWeights` renames for the keys of safetensors files (only keys that change). */
export function blipRenamesFor(files: string[]): Record<string, string> {
  const renames: Record<string, string> = {};
  for (const file of files) {
    for (const { name: key } of readSafetensorsHeader(file).tensors) {
      const hf = originalBlipKeyToHf(key);
      if (hf !== key) renames[key] = hf;
    }
  }
  return renames;
}

/**
 * A transformers BlipConfig from the original code's ViT arguments (`VisionTransformer(img_size,
 * patch_size, embed_dim, depth, num_heads, mlp_ratio, ...)`) and its `med_config.json` (BERT config).
 */
export function blipConfigFromOriginal(vit: any, med: any): object {
  const num = (o: any, k: string, source: string): number => expectNumber(`${source}: ${k}`, o?.[k]);
  const width = num(vit, 'embed_dim', 'ViT config');
  return {
    vision_config: {
      hidden_size: width,
      intermediate_size: Math.round(width * (vit.mlp_ratio ?? 4)),
      num_hidden_layers: num(vit, 'depth', 'ViT config'),
      num_attention_heads: num(vit, 'num_heads', 'ViT config'),
      image_size: num(vit, 'img_size', 'ViT config'),
      patch_size: num(vit, 'patch_size', 'ViT config'),
      // The released ViT uses 1e-6; transformers' conversion keeps its own 1e-5 default.
      layer_norm_eps: vit.layer_norm_eps ?? 1e-5,
      hidden_act: 'gelu',
    },
    text_config: {
      vocab_size: num(med, 'vocab_size', 'med_config'),
      hidden_size: num(med, 'hidden_size', 'med_config'),
      intermediate_size: num(med, 'intermediate_size', 'med_config'),
      num_hidden_layers: num(med, 'num_hidden_layers', 'med_config'),
      num_attention_heads: num(med, 'num_attention_heads', 'med_config'),
      max_position_embeddings: num(med, 'max_position_embeddings', 'med_config'),
      layer_norm_eps: med.layer_norm_eps ?? 1e-12,
      hidden_act: med.hidden_act ?? 'gelu',
      encoder_hidden_size: med.encoder_width ?? width,
      bos_token_id: 30522,
      pad_token_id: med.pad_token_id ?? 0,
      sep_token_id: 102,
    },
  };
}

/** The full-size published architectures (for parameter counts and shape checks). */
export function blipArchitectureConfig(size: BlipSize): object {
  const s = expectOneOf('size', size, ['base', 'large'] as const);
  const vision = s === 'base' ? { hidden_size: 768, num_hidden_layers: 12, num_attention_heads: 12, intermediate_size: 3072 } : { hidden_size: 1024, num_hidden_layers: 24, num_attention_heads: 16, intermediate_size: 4096 };
  return {
    vision_config: { ...vision, image_size: 384, patch_size: 16, layer_norm_eps: 1e-5, hidden_act: 'gelu' },
    text_config: {
      vocab_size: 30524,
      hidden_size: 768,
      intermediate_size: 3072,
      num_hidden_layers: 12,
      num_attention_heads: 12,
      max_position_embeddings: 512,
      encoder_hidden_size: vision.hidden_size,
      layer_norm_eps: 1e-12,
      hidden_act: 'gelu',
    },
  };
}

/** Native generate() options for a strategy, validated (`names`: how errors name each option, e.g. the CLI's flags). */
export function blipNativeGenerateOptions(opts: BlipGenerateOptions = {}, names?: OptionNames): Record<string, unknown> {
  const maxLength = expectBounded(optionName(names, 'maxLength'), opts.maxLength ?? 20, LIMITS.tokens, 2);
  const minLength = expectInteger(optionName(names, 'minLength'), opts.minLength ?? 5, { min: 0 });
  return { max_length: maxLength, min_length: minLength, ...nativeDecodingOptions(opts, DEFAULT_BEAMS.blip, names) };
}

/**
 * Checks caption options before any image is decoded: the batch, the prompt, every decoding option (`names`: how
 * errors name each option; `roundtrip caption` passes its flags). Returns the batch size.
 */
export function checkBlipCaptionOptions(opts: BlipCaptionOptions, names?: OptionNames): number {
  const { prompt, tokenizer: _t, batchSize, imageSize: _s, onProgress: _p, ...generate } = opts;
  if (prompt !== undefined) expectString(optionName(names, 'prompt'), prompt);
  blipNativeGenerateOptions(generate, names);
  return expectBounded(optionName(names, 'batchSize'), batchSize ?? 8, LIMITS.batch);
}

export class Blip {
  /** The vision tower's input side (config `vision_config.image_size`). */
  get imageSize(): number {
    return configInt(this.config, ['vision_config', 'image_size'], CONFIG_DEFAULTS.blip.imageSize, 'BLIP config');
  }
  get vocabSize(): number {
    return configInt(this.config, ['text_config', 'vocab_size'], CONFIG_DEFAULTS.blip.vocabSize, 'BLIP config');
  }

  readonly model: NativeModel<'blip'>;
  /** The parsed BlipConfig. */
  readonly config: any;
  readonly special: BlipSpecialIds;

  /** The folder the model was loaded from (its tokenizer is the default for `caption`). */
  dir?: string;

  private constructor(model: NativeModel<'blip'>, config: any) {
    this.model = model;
    this.config = config;
    const text = config?.text_config ?? {};
    this.special = { bos: text.bos_token_id ?? 30522, sep: text.sep_token_id ?? 102, pad: text.pad_token_id ?? 0, cls: 101 };
  }

  /** Builds the architecture of a config without loading weights. */
  static async fromConfig(config: object, opts: BlipLoadOptions = {}): Promise<Blip> {
    if (config === null || typeof config !== 'object') throw invalid('config', 'a BlipConfig object', config);
    return new Blip(await NativeModel.create('blip', config, { device: opts.device ?? 'cpu' }), config);
  }

  /**
   * Loads a model: a folder with config.json + model.safetensors (transformers layout), or explicit
   * files (`weights` in transformers or original salesforce/BLIP names; `partial` merged on top).
   */
  static async load(source: string | BlipFiles, opts: BlipLoadOptions = {}): Promise<Blip> {
    let files: BlipFiles;
    if (typeof source === 'string') {
      const dir = expectString('model folder', source);
      const configPath = path.join(dir, 'config.json');
      if (!fs.existsSync(configPath)) throw new RoundtripError(`${dir}: no config.json (expected a transformers BLIP folder)`);
      files = { config: configPath, weights: hfWeightFiles(dir, ['model']), partial: opts.partial };
    } else {
      files = source;
    }
    const config = typeof files.config === 'string' ? readJsonFile(files.config) : files.config;
    if (!Array.isArray(files.weights) || files.weights.length === 0) throw invalid('weights', 'a non-empty array of safetensors paths', files.weights);
    if (config === null || typeof config !== 'object') throw invalid('config', 'a BlipConfig object', config);
    for (const f of files.weights) if (!fs.existsSync(f)) throw new RoundtripError(`${f}: weight file not found`);
    // One native call: parameters straight from the files (mapped on CPU, no random init first).
    const model = await NativeModel.fromFiles('blip', config, files.weights, { device: opts.device ?? 'cpu', load: { renames: blipRenamesFor(files.weights) } });
    const blip = new Blip(model, config);
    try {
      for (const p of files.partial ?? []) await blip.loadWeights([p], { partial: true });
    } catch (err) {
      blip.dispose();
      throw err;
    }
    if (typeof source === 'string') blip.dir = source;
    return blip;
  }

  /** Loads safetensors weights (either layout); `partial` allows files holding only some tensors. */
  async loadWeights(files: string[], opts: { partial?: boolean } = {}): Promise<WeightsReport> {
    for (const f of files) if (!fs.existsSync(f)) throw new RoundtripError(`${f}: weight file not found`);
    return this.model.loadWeights(files, { renames: blipRenamesFor(files), partial: opts.partial ?? false });
  }

  get device(): string {
    return this.model.device;
  }

  /** Parameter count (tied LM head counted once, as transformers' `num_parameters()`). */
  parameterCount(): number {
    return this.model.parameterCount();
  }

  /**
   * Vision position embeddings for an image of height×width pixels [1, 1 + (H/p)(W/p), D]: the trained
   * grid resized with PyTorch bicubic (align_corners=False) when the size differs from the config's.
   */
  async positionEmbedding(height: number, width: number): Promise<Tensor> {
    const options = { height: expectInteger('height', height, { min: 1 }), width: expectInteger('width', width, { min: 1 }) };
    return (await noGrad(() => this.model.call('positions', {}, options))).position_embedding;
  }

  /** Parameter count of a published architecture (builds it on the CPU, then frees it). */
  static async parameterCountOf(size: BlipSize): Promise<number> {
    const model = await Blip.fromConfig(blipArchitectureConfig(size));
    try {
      return model.parameterCount();
    } finally {
      model.dispose();
    }
  }

  /** Vision tower: last_hidden_state [B, 1+N, H] (post-LN on every token), pooler_output [B, H]. */
  async vision(pixelValues: Tensor): Promise<{ lastHiddenState: Tensor; poolerOutput: Tensor }> {
    const out = await this.model.call('vision', { pixel_values: pixelValues });
    return { lastHiddenState: out.last_hidden_state, poolerOutput: out.pooler_output };
  }

  private textInputs(input: BlipTextInput): CaptionerTextInputs {
    if (!input.pixelValues && !input.imageEmbeds) throw new RoundtripError('BLIP decoder: needs pixelValues or imageEmbeds');
    return { pixel_values: input.imageEmbeds ? undefined : input.pixelValues, image_embeds: input.imageEmbeds, input_ids: input.inputIds, attention_mask: input.attentionMask };
  }

  /** Decoder logits [B, T, V] (position t predicts token t+1). */
  async logits(input: BlipTextInput): Promise<Tensor> {
    return (await this.model.call('logits', this.textInputs(input))).logits;
  }

  /**
   * Captioning loss: CE(logits[:, :-1], labels[:, 1:]), -100 ignored, mean over kept targets.
   * `labelSmoothing` defaults to the config's (0.0 in transformers ≥ 4.38; the original BLIP used 0.1).
   */
  async loss(input: BlipTextInput & { labels: Tensor }, opts: { labelSmoothing?: number } = {}): Promise<Tensor> {
    const options: Record<string, number> = {};
    if (opts.labelSmoothing !== undefined) options.label_smoothing = expectNumber('labelSmoothing', opts.labelSmoothing, { min: 0, max: 1 });
    return (await this.model.call('loss', { ...this.textInputs(input), labels: input.labels }, options)).loss;
  }

  /** softmax(logits / temperature) per position [B, T, V], differentiable (soft token bridge). */
  async tokenProbs(input: BlipTextInput, opts: { temperature?: number } = {}): Promise<Tensor> {
    const temperature = expectNumber('temperature', opts.temperature ?? 1, { min: 0, exclusiveMin: true });
    return (await this.model.call('token_probs', this.textInputs(input), { temperature })).probs;
  }

  /** Decoder start ids for a prompt: [CLS] prompt [SEP]; generate replaces [CLS] by BOS and drops [SEP]. */
  private promptTensor(prompt: number[]): Tensor {
    if (!Array.isArray(prompt)) throw invalid('prompt', 'an array of token ids', prompt);
    const vocab = this.vocabSize;
    prompt.forEach((id, i) => expectInteger(`prompt[${i}]`, id, { min: 0, max: vocab - 1 }));
    const ids = [this.special.cls, ...prompt, this.special.sep];
    return Tensor.fromTypedArray(ids, [1, ids.length], 'int64');
  }

  /** Generates token ids for a batch of images (pixels [B, 3, S, S] or `imageEmbeds`). */
  async generate(images: Tensor | BlipImageInput, opts: BlipGenerateOptions = {}): Promise<BlipGeneration> {
    const input: BlipImageInput = images instanceof Tensor ? { pixelValues: images } : images;
    if (!input.pixelValues && !input.imageEmbeds) throw new RoundtripError('Blip.generate: needs pixel values or image embeddings');
    const options = blipNativeGenerateOptions(opts);
    const prompt = opts.prompt && opts.prompt.length > 0 ? this.promptTensor(opts.prompt) : undefined;
    const promptLength = 1 + (opts.prompt?.length ?? 0);
    if (promptLength >= (options.max_length as number)) throw invalid('maxLength', `more than the start token + prompt length (${promptLength})`, options.max_length);
    let out: CaptionerGeneration = {} as CaptionerGeneration;
    try {
      out = await noGrad(() =>
        this.model.call('generate', { pixel_values: input.imageEmbeds ? undefined : input.pixelValues, image_embeds: input.imageEmbeds, input_ids: prompt }, options),
      );
      const sequences = tensorRows(out.sequences);
      const tokens = sequences.map((row) => {
        const gen = row.slice(promptLength);
        const end = gen.indexOf(this.special.sep);
        return end >= 0 ? gen.slice(0, end) : gen.filter((id) => id !== this.special.pad);
      });
      return { sequences, tokens, scores: generationScores(out), promptLength, numReturnSequences: options.num_return_sequences as number };
    } finally {
      prompt?.dispose();
      disposeAll(out);
    }
  }

  /**
   * Captions images (file paths or decoded RGB images): BLIP preprocessing (bicubic resize to the
   * model's size, CLIP mean/std), batched generation, decoding without special tokens. Returns, per
   * image, its `numReturnSequences` captions (best first for beam search).
   */
  async caption(images: readonly (string | RgbImage)[], opts: BlipCaptionOptions = {}): Promise<string[][]> {
    if (!Array.isArray(images)) throw invalid('images', 'an array of image paths or RGB images', images);
    const tokenizer = opts.tokenizer ?? this.defaultTokenizer();
    const batchSize = checkBlipCaptionOptions(opts); // before decoding any image
    const size = expectInteger('imageSize', opts.imageSize ?? this.imageSize, { min: 1 });
    const { prompt: promptText, tokenizer: _t, batchSize: _b, imageSize: _s, onProgress, ...generate } = opts;
    const prompt = promptText !== undefined ? tokenizer.encode(promptText) : undefined;
    return captionBatches(images, {
      batchSize,
      recipe: blipPreprocess(size),
      generate: (pixels) => this.generate(pixels, { ...generate, prompt }),
      decode: (ids) => tokenizer.decode(ids, { skipSpecial: true }),
      onProgress,
    });
  }

  private defaultTokenizer(): CaptionTokenizer {
    if (!this.dir) throw new RoundtripError('Blip.caption: no tokenizer given and the model was not loaded from a folder holding one');
    return loadTokenizer(this.dir, 'bert');
  }

  dispose(): void {
    this.model.dispose();
  }
}
