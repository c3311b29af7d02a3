/**
 * BLIP-2 with an OPT language model (transformers 4.37.2 `Blip2ForConditionalGeneration`, e.g.
 * Salesforce/blip2-opt-2.7b) on the native core (model kind "blip2"): vision ViT → Q-Former → language
 * projection → OPT. Loads a Hugging Face folder (config.json + model.safetensors or its shards), captions
 * with every decoding strategy BLIP has (one native call per batch, OPT KV cache), scores captions
 * (teacher-forced loss) and gives the differentiable token distributions finetuning needs.
 *
 * Memory: blip2-opt-2.7b has 3,744,679,936 parameters: ~15 GB in fp32 on the CPU (plus activations);
 * on CUDA use `model.setAutocast('fp16'|'bf16')` or load fp16/bf16 weights converted to the model dtype.
 */
import { CONFIG_DEFAULTS, configInt } from './config-defaults';
import * as fs from 'fs';
import * as path from 'path';
import { OptionNames, RoundtripError, expectInteger, expectNumber, expectOneOf, expectString, invalid, optionName } from '../errors';
import { LIMITS, expectBounded } from '../limits';
import { NativeModel, WeightsReport } from '../runtime/model';
import { Tensor, disposeAll, noGrad } from '../runtime/tensor';
import type { CaptionerGeneration, CaptionerTextInputs } from '../runtime/native-methods';
import { hfWeightFiles } from '../weights/files';
import { blipPreprocess, preprocessFromHfConfig, PreprocessConfig, RgbImage } from '../image';
import { loadOptTokenizer, OptTokenizer } from '../tokenizers/opt';
import { readJsonFile } from '../json';
import { CaptionTokenizer } from './blip';
import { captionBatches, DECODING_STRATEGIES, DEFAULT_BEAMS, DecodingOptions, generationScores, nativeDecodingOptions, tensorRows } from './decoding';

/** Decoding strategies: the same set as BLIP's (lib/models/decoding.ts). */
export const BLIP2_STRATEGIES = DECODING_STRATEGIES;

export interface Blip2GenerateOptions extends DecodingOptions {
  /** Beams for 'beam'; default 5 (LAVIS' captioning setting). */
  numBeams?: number;
  /**
   * Length limits as transformers 4.37.2 counts them for BLIP-2: the leading BOS of the output counts,
   * the query tokens and the prompt do not. `maxNewTokens` (default 30) wins over `maxLength`.
   */
  maxNewTokens?: number;
  maxLength?: number;
  /** EOS is blocked while the output (leading BOS included) is shorter than this; default 0. */
  minLength?: number;
  /** EOS is blocked until this many tokens were generated; default 1 (no empty captions). */
  minNewTokens?: number;
  /** Prompt token ids without BOS (BOS is put first, as the OPT tokenizer does). */
  prompt?: number[];
}

/** Result of `Blip2.generate`, rows image-major (image i's K sequences are rows i·K … i·K+K-1). */
export interface Blip2Generation {
  /** As transformers returns them: [BOS] + generated tokens (the prompt is not repeated), padding. */
  sequences: number[][];
  /** Generated tokens only, cut before EOS, padding removed. */
  tokens: number[][];
  /** Beam scores for 'beam'; the sum of chosen-token log-probs otherwise. */
  scores: number[];
  numReturnSequences: number;
}

export interface Blip2ImageInput {
  pixelValues?: Tensor;
  /** Vision tower output [B, N, Hv] (from `vision()`), to skip the ViT. */
  imageEmbeds?: Tensor;
}

export interface Blip2TextInput extends Blip2ImageInput {
  /** [B, T] int64 OPT ids, BOS (2) first. */
  inputIds: Tensor;
  /** [B, T], 1 = token, 0 = padding; the query tokens are always attended. */
  attentionMask?: Tensor;
}

export interface Blip2Files {
  config: string | object;
  weights: string[];
  partial?: string[];
}

export interface Blip2LoadOptions {
  device?: string;
  /** safetensors files of trained tensors merged over the folder's weights (e.g. a finetune export). */
  partial?: string[];
}

export interface Blip2CaptionOptions extends Omit<Blip2GenerateOptions, 'prompt'> {
  /** Text the captions continue (e.g. 'a photo of'); not part of the returned text. */
  prompt?: string;
  tokenizer?: CaptionTokenizer;
  /** Images per native call; default 4. */
  batchSize?: number;
  onProgress?: (done: number, total: number) => void;
}

/**
 * What finetuning may train in BLIP-2; the vision tower and the OPT language model always stay frozen (no
 * gradient buffers). Published key names:
 * - `xattn-q` (default, the analogue of BLIP's cross-attention queries): the query projections of the Q-Former's
 *   cross-attention to the image, `qformer.encoder.layer.{i}.crossattention.attention.query.{weight,bias}` (layers
 *   with i % cross_attention_frequency == 0);
 * - `xattn-kv` / `xattn-qkv`: the same layers' `key`/`value` (and `query`) projections;
 * - `projection`: `language_projection.{weight,bias}` (Q-Former width → OPT width);
 * - `none`.
 */
export const BLIP2_TRAINABLE_SETS = ['xattn-q', 'xattn-kv', 'xattn-qkv', 'projection', 'none'] as const;
export type Blip2TrainableSet = (typeof BLIP2_TRAINABLE_SETS)[number];

/** Parameter-name patterns of a trainable set. */
export function blip2TrainablePatterns(set: Blip2TrainableSet = 'xattn-q'): string[] {
  const s = expectOneOf('trainable set', set, BLIP2_TRAINABLE_SETS);
  const xattn = (p: string) => `^qformer\\.encoder\\.layer\\.\\d+\\.crossattention\\.attention\\.${p}\\.(weight|bias)$`;
  if (s === 'xattn-q') return [xattn('query')];
  if (s === 'xattn-kv') return [xattn('key'), xattn('value')];
  if (s === 'xattn-qkv') return [xattn('query'), xattn('key'), xattn('value')];
  if (s === 'projection') return ['^language_projection\\.(weight|bias)$'];
  return [];
}

/**
 * Parameter count of a Blip2Config (OPT), closed form with the 4.37.2 defaults for missing keys: tied LM head
 * counted once (3,744,679,936 for blip2-opt-2.7b). Lets commands check memory before allocating anything.
 */
export function blip2ParameterCount(config: any): number {
  const d = CONFIG_DEFAULTS.blip2;
  const v = config?.vision_config ?? {};
  const t = config?.text_config ?? {};
  const vi = (key: string, fallback: number) => configInt(config, ['vision_config', key], fallback, 'BLIP-2 config');
  const qi = (key: string, fallback: number) => configInt(config, ['qformer_config', key], fallback, 'BLIP-2 config');
  const ti = (key: string, fallback: number) => configInt(config, ['text_config', key], fallback, 'BLIP-2 config');
  const Hv = vi('hidden_size', d.visionHidden), Iv = vi('intermediate_size', d.visionIntermediate), Lv = vi('num_hidden_layers', d.visionLayers), S = vi('image_size', d.imageSize), p = vi('patch_size', d.patchSize);
  const Hq = qi('hidden_size', d.qformerHidden), Iq = qi('intermediate_size', d.qformerIntermediate), Lq = qi('num_hidden_layers', d.qformerLayers), f = qi('cross_attention_frequency', d.crossAttentionFrequency);
  const Ht = ti('hidden_size', d.textHidden), F = ti('ffn_dim', d.textFfn), Lt = ti('num_hidden_layers', d.textLayers), V = ti('vocab_size', d.vocabSize), P = ti('max_position_embeddings', d.maxPositions);
  const Q = configInt(config, ['num_query_tokens'], d.numQueryTokens, 'BLIP-2 config');
  const N = Math.floor(S / p) ** 2;
  const lin = (i: number, o: number, bias = true) => i * o + (bias ? o : 0);
  const vision = Hv + lin(3 * p * p, Hv) + (N + 1) * Hv + 2 * Hv + Lv * (4 * Hv + lin(Hv, 3 * Hv, v.qkv_bias ?? true) + lin(Hv, Hv) + lin(Hv, Iv) + lin(Iv, Hv));
  let qformer = 2 * Hq;
  for (let i = 0; i < Lq; i++) {
    qformer += 4 * lin(Hq, Hq) + 2 * Hq + lin(Hq, Iq) + lin(Iq, Hq) + 2 * Hq;
    if (i % f === 0) qformer += 2 * lin(Hq, Hq) + 2 * lin(Hv, Hq) + 2 * Hq;
  }
  const bias = t.enable_bias ?? true;
  const ln = (t.layer_norm_elementwise_affine ?? true) ? 2 * Ht : 0;
  const finalLn = (t.do_layer_norm_before ?? true) && !t._remove_final_layer_norm ? ln : 0;
  const opt = V * Ht + (P + 2) * Ht + finalLn + Lt * (4 * lin(Ht, Ht, bias) + 2 * ln + lin(Ht, F, bias) + lin(F, Ht, bias)) + (t.tie_word_embeddings === false ? V * Ht : 0);
  return vision + Q * Hq + qformer + lin(Hq, Ht) + opt;
}

/** Bytes a BLIP-2 caption batch needs in fp32: the weights, the OPT KV cache of every row, and a step's logits. */
export function estimateBlip2Generate(config: any, o: { batch: number; rows: number; tokens: number }): number {
  const d = CONFIG_DEFAULTS.blip2;
  const t = (key: string, fallback: number) => configInt(config, ['text_config', key], fallback, 'BLIP-2 config');
  const Ht = t('hidden_size', d.textHidden), Lt = t('num_hidden_layers', d.textLayers), V = t('vocab_size', d.vocabSize);
  const R = o.batch * o.rows, S = configInt(config, ['num_query_tokens'], d.numQueryTokens, 'BLIP-2 config') + o.tokens + 1;
  return 4 * (blip2ParameterCount(config) + 2 * Lt * R * S * Ht + 4 * R * V);
}

/** Is this parsed config.json a BLIP-2 one (and with which language model)? */
export function isBlip2Config(config: any): boolean {
  return config?.model_type === 'blip-2' || (Array.isArray(config?.architectures) && config.architectures.some((a: string) => /^Blip2/.test(a)));
}

/** Native generate() options for a strategy, validated (`names`: how errors name each option, e.g. the CLI's flags). */
export function blip2NativeGenerateOptions(opts: Blip2GenerateOptions = {}, names?: OptionNames): Record<string, unknown> {
  const n = (key: keyof Blip2GenerateOptions) => optionName(names, key);
  const out: Record<string, unknown> = {
    min_length: expectInteger(n('minLength'), opts.minLength ?? 0, { min: 0 }),
    min_new_tokens: expectInteger(n('minNewTokens'), opts.minNewTokens ?? 1, { min: 0 }),
  };
  if (opts.maxLength !== undefined && opts.maxNewTokens === undefined) out.max_length = expectBounded(n('maxLength'), opts.maxLength, LIMITS.tokens, 2);
  else out.max_new_tokens = expectBounded(n('maxNewTokens'), opts.maxNewTokens ?? 30, LIMITS.tokens);
  return { ...out, ...nativeDecodingOptions(opts, DEFAULT_BEAMS.blip2, names) };
}

/** Checks caption options before any image is decoded (as checkBlipCaptionOptions); returns the batch size. */
export function checkBlip2CaptionOptions(opts: Blip2CaptionOptions, names?: OptionNames): number {
  const { prompt, tokenizer: _t, batchSize, onProgress: _p, ...generate } = opts;
  if (prompt !== undefined) expectString(optionName(names, 'prompt'), prompt);
  blip2NativeGenerateOptions(generate, names);
  return expectBounded(optionName(names, 'batchSize'), batchSize ?? 4, LIMITS.batch);
}

export class Blip2 {
  get imageSize(): number {
    return configInt(this.config, ['vision_config', 'image_size'], CONFIG_DEFAULTS.blip2.imageSize, 'BLIP-2 config');
  }
  get vocabSize(): number {
    return configInt(this.config, ['text_config', 'vocab_size'], CONFIG_DEFAULTS.blip2.vocabSize, 'BLIP-2 config');
  }

  readonly model: NativeModel<'blip2'>;
  readonly config: any;
  /** OPT special ids from text_config (EOS is 50118 "\n" in blip2-opt-2.7b, not BOS). */
  readonly special: { bos: number; eos: number; pad: number };
  /** The folder the model was loaded from (tokenizer and preprocessor defaults). */
  dir?: string;

  private constructor(model: NativeModel<'blip2'>, config: any) {
    this.model = model;
    this.config = config;
    const t = config?.text_config ?? {};
    this.special = { bos: t.bos_token_id ?? 2, eos: t.eos_token_id ?? 2, pad: t.pad_token_id ?? 1 };
  }

  /** Builds the architecture of a Blip2Config without loading weights. */
  static async fromConfig(config: object, opts: Blip2LoadOptions = {}): Promise<Blip2> {
    if (config === null || typeof config !== 'object') throw invalid('config', 'a Blip2Config object', config);
    return new Blip2(await NativeModel.create('blip2', config, { device: opts.device ?? 'cpu' }), config);
  }

  /** Loads a folder (config.json + model.safetensors or sharded safetensors) or explicit files. */
  static async load(source: string | Blip2Files, opts: Blip2LoadOptions = {}): Promise<Blip2> {
    let files: Blip2Files;
    if (typeof source === 'string') {
      const dir = expectString('model folder', source);
      const configPath = path.join(dir, 'config.json');
      if (!fs.existsSync(configPath)) throw new RoundtripError(`${dir}: no config.json (expected a transformers BLIP-2 folder)`);
      files = { config: configPath, weights: hfWeightFiles(dir, ['model']), partial: opts.partial };
    } else {
      files = source;
    }
    const config = typeof files.config === 'string' ? readJsonFile(files.config, { object: true }) : files.config;
    if (!isBlip2Config(config)) throw new RoundtripError(`${typeof files.config === 'string' ? files.config : 'config'}: not a BLIP-2 config (model_type "${(config as any)?.model_type}")`);
    if (!Array.isArray(files.weights) || files.weights.length === 0) throw invalid('weights', 'a non-empty array of safetensors paths', files.weights);
    const model = await Blip2.fromConfig(config, opts);
    try {
      await model.loadWeights(files.weights);
      for (const p of files.partial ?? []) await model.loadWeights([p], { partial: true });
    } catch (err) {
      model.dispose();
      throw err;
    }
    if (typeof source === 'string') model.dir = source;
    return model;
  }

  async loadWeights(files: string[], opts: { partial?: boolean } = {}): Promise<WeightsReport> {
    for (const f of files) if (!fs.existsSync(f)) throw new RoundtripError(`${f}: weight file not found`);
    return this.model.loadWeights(files, { partial: opts.partial ?? false });
  }

  get device(): string {
    return this.model.device;
  }

  /** Parameter count (tied LM head counted once): 3,744,679,936 for blip2-opt-2.7b. */
  parameterCount(): number {
    return this.model.parameterCount();
  }

  /** Makes exactly a trainable set's tensors trainable (others frozen, no gradient buffers); returns their names. */
  setTrainable(set: Blip2TrainableSet = 'xattn-q'): string[] {
    this.model.setTrainable([]);
    return this.model.setTrainable(blip2TrainablePatterns(set));
  }

  /** Vision tower: last_hidden_state [B, 1+N, Hv] (the Q-Former memory), pooler_output [B, Hv]. */
  async vision(pixelValues: Tensor): Promise<{ lastHiddenState: Tensor; poolerOutput: Tensor }> {
    const out = await this.model.call('vision', { pixel_values: pixelValues });
    return { lastHiddenState: out.last_hidden_state, poolerOutput: out.pooler_output };
  }

  /** Q-Former output [B, Q, Hq] and its language projection [B, Q, Ht] (the LM's soft prompt). */
  async queries(input: Blip2ImageInput): Promise<{ qformerLastHiddenState: Tensor; languageProjection: Tensor }> {
    const out = await this.model.call('queries', this.imageInputs(input));
    return { qformerLastHiddenState: out.qformer_last_hidden_state, languageProjection: out.language_projection };
  }

  private imageInputs(input: Blip2ImageInput): { pixel_values?: Tensor; image_embeds?: Tensor } {
    if (!input.pixelValues && !input.imageEmbeds) throw new RoundtripError('BLIP-2: needs pixelValues or imageEmbeds');
    return { pixel_values: input.imageEmbeds ? undefined : input.pixelValues, image_embeds: input.imageEmbeds };
  }

  private textInputs(input: Blip2TextInput): CaptionerTextInputs {
    return { ...this.imageInputs(input), input_ids: input.inputIds, attention_mask: input.attentionMask };
  }

  /** LM logits [B, Q+T, V] over the query and text positions (`textOnly`: the last T, position t predicts t+1). */
  async logits(input: Blip2TextInput, opts: { textOnly?: boolean } = {}): Promise<Tensor> {
    return (await this.model.call('logits', this.textInputs(input), { text_only: opts.textOnly ?? false })).logits;
  }

  /** Captioning loss of 4.37.2: CE(text logits[:, :-1], labels[:, 1:]), -100 ignored, mean; no smoothing. */
  async loss(input: Blip2TextInput & { labels: Tensor }, opts: { labelSmoothing?: number } = {}): Promise<Tensor> {
    const options: Record<string, number> = {};
    if (opts.labelSmoothing !== undefined) options.label_smoothing = expectNumber('labelSmoothing', opts.labelSmoothing, { min: 0, max: 1 });
    return (await this.model.call('loss', { ...this.textInputs(input), labels: input.labels }, options)).loss;
  }

  /** softmax(text logits / temperature) [B, T, V], differentiable (the soft token bridge). */
  async tokenProbs(input: Blip2TextInput, opts: { temperature?: number } = {}): Promise<Tensor> {
    const temperature = expectNumber('temperature', opts.temperature ?? 1, { min: 0, exclusiveMin: true });
    return (await this.model.call('token_probs', this.textInputs(input), { temperature })).probs;
  }

  /** Generates for a batch of images (pixels [B, 3, S, S] or `imageEmbeds`). */
  async generate(images: Tensor | Blip2ImageInput, opts: Blip2GenerateOptions = {}): Promise<Blip2Generation> {
    const input: Blip2ImageInput = images instanceof Tensor ? { pixelValues: images } : images;
    const options = blip2NativeGenerateOptions(opts);
    let prompt: Tensor | undefined;
    if (opts.prompt && opts.prompt.length > 0) {
      if (!Array.isArray(opts.prompt)) throw invalid('prompt', 'an array of token ids', opts.prompt);
      const vocab = this.vocabSize;
      opts.prompt.forEach((id, i) => expectInteger(`prompt[${i}]`, id, { min: 0, max: vocab - 1 }));
      const ids = [this.special.bos, ...opts.prompt];
      prompt = Tensor.fromTypedArray(ids, [1, ids.length], 'int64');
    }
    let out: CaptionerGeneration = {} as CaptionerGeneration;
    try {
      out = await noGrad(() => this.model.call('generate', { ...this.imageInputs(input), input_ids: prompt }, options));
      const sequences = tensorRows(out.sequences);
      const tokens = sequences.map((row) => {
        const gen = row.slice(1);
        const end = gen.indexOf(this.special.eos);
        return (end >= 0 ? gen.slice(0, end) : gen).filter((id) => id !== this.special.pad);
      });
      return { sequences, tokens, scores: generationScores(out), numReturnSequences: options.num_return_sequences as number };
    } finally {
      prompt?.dispose();
      disposeAll(out);
    }
  }

  /** The image recipe: the folder's preprocessor_config.json, else BlipImageProcessor at vision_config.image_size. */
  preprocessConfig(): PreprocessConfig {
    const file = this.dir ? path.join(this.dir, 'preprocessor_config.json') : undefined;
    if (file && fs.existsSync(file)) return preprocessFromHfConfig(readJsonFile(file, { object: true }), file);
    return blipPreprocess(this.imageSize);
  }

  /**
   * Captions images (paths or RGB images): preprocessing, batched generation, decoding without special
   * tokens, trimmed (the EOS of blip2-opt is "\n"). Per image, its `numReturnSequences` captions.
   */
  async caption(images: readonly (string | RgbImage)[], opts: Blip2CaptionOptions = {}): Promise<string[][]> {
    if (!Array.isArray(images)) throw invalid('images', 'an array of image paths or RGB images', images);
    const tokenizer = opts.tokenizer ?? this.defaultTokenizer();
    const batchSize = checkBlip2CaptionOptions(opts); // before decoding any image
    const { prompt: promptText, tokenizer: _t, batchSize: _b, onProgress, ...generate } = opts;
    const prompt = promptText !== undefined && promptText !== '' ? tokenizer.encode(promptText) : undefined;
    return captionBatches(images, {
      batchSize,
      recipe: this.preprocessConfig(),
      generate: (pixels) => this.generate(pixels, { ...generate, prompt }),
      decode: (ids) => tokenizer.decode(ids, { skipSpecial: true }).trim(),
      onProgress,
    });
  }

  /** The OPT tokenizer of the folder the model was loaded from. */
  defaultTokenizer(): OptTokenizer {
    if (!this.dir) throw new RoundtripError('Blip2: no tokenizer given and the model was not loaded from a folder holding one (vocab.json + merges.txt)');
    return loadOptTokenizer(this.dir);
  }

  dispose(): void {
    this.model.dispose();
  }
}
