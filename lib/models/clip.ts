/**
 * CLIP (transformers CLIPModel / CLIPTextModel) over the native "clip" model: text and image embeddings,
 * the differentiable soft-token text path, and cosine-distance helpers shared by the encoder wrappers.
 *
 * Native methods (see native/models/clip.cc): "text" ({input_ids [+ attention_mask]} or {soft_tokens}),
 * "vision" ({pixel_values}), "forward" (both + similarity logits).
 */
import { hfWeightFiles } from '../weights/files';
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError, expectOneOf, invalid } from '../errors';
import { LoadWeightsOptions, NativeModel } from '../runtime/model';
import type { MethodOutputs, ModelKind } from '../runtime/native-methods';
import { Tensor } from '../runtime/tensor';
import { readJsonFile } from '../json';

/** Reads `<dir>/config.json`, naming the file in errors. */
export function readConfig(dir: string): any {
  const file = path.join(dir, 'config.json');
  if (!fs.existsSync(file)) throw new RoundtripError(`${dir}: no config.json (expected a Hugging Face model folder)`);
  return readJsonFile(file, { object: true });
}

/** The safetensors weight files of a Hugging Face folder: model.safetensors or the shards of its index. */
export function weightFiles(dir: string): string[] {
  return hfWeightFiles(dir, ['model']);
}

/** Creates a native model of `kind` from a folder's config.json and loads its safetensors weights. */
export async function loadHfModel<K extends ModelKind>(kind: K, dir: string, opts: { device?: string; config?: any; weights?: LoadWeightsOptions } = {}): Promise<NativeModel<K>> {
  const config = opts.config ?? readConfig(dir);
  const model = await NativeModel.create(kind, config, { device: opts.device ?? 'cpu' });
  try {
    await model.loadWeights(weightFiles(dir), opts.weights ?? {});
  } catch (err) {
    model.dispose();
    throw err;
  }
  return model;
}

/** Which vector an encoder returns: the tower's pooled output or its projection into the joint space. */
export type EmbeddingVariant = 'pooled' | 'projected';
const VARIANTS: readonly EmbeddingVariant[] = ['pooled', 'projected'];

/** Text input: token ids (with optional padding mask) or soft tokens (probabilities over the vocabulary). */
export type ClipTextInput = { inputIds: Tensor; attentionMask?: Tensor } | { softTokens: Tensor; inputIds?: Tensor };

export class ClipModel {
  private constructor(
    readonly native: NativeModel<'clip'>,
    readonly config: any,
  ) {}

  /** Loads a Hugging Face CLIP folder (full CLIPModel, or a text-only CLIPTextModel such as SD's text_encoder). */
  static async load(dir: string, opts: { device?: string } = {}): Promise<ClipModel> {
    const config = readConfig(dir);
    return new ClipModel(await loadHfModel('clip', dir, { device: opts.device, config }), config);
  }

  /** Wraps an already created native "clip" model. */
  static wrap(native: NativeModel<'clip'>, config: any): ClipModel {
    if (native.kind !== 'clip') throw invalid('native model kind', '"clip"', native.kind);
    return new ClipModel(native, config);
  }

  /** Whether the model has the vision tower and projections (a full CLIPModel). */
  get hasVision(): boolean {
    return Boolean(this.config?.vision_config ?? this.config?.vision_config_dict) && this.config?.model_type !== 'clip_text_model';
  }

  /** Raw "text" outputs: last_hidden_state, pooler_output (+ text_embeds[_unnormalized] with a projection). */
  async text(input: ClipTextInput): Promise<MethodOutputs<'clip', 'text'>> {
    if ('softTokens' in input && input.softTokens) return this.native.call('text', { soft_tokens: input.softTokens, input_ids: input.inputIds });
    const ids = (input as { inputIds?: Tensor }).inputIds;
    if (!ids) throw invalid('CLIP text input', '{inputIds} or {softTokens}', input);
    return this.native.call('text', { input_ids: ids, attention_mask: (input as { attentionMask?: Tensor }).attentionMask });
  }

  /** Raw "vision" outputs: last_hidden_state, pooler_output, image_embeds[_unnormalized]. */
  async vision(pixelValues: Tensor): Promise<MethodOutputs<'clip', 'vision'>> {
    return this.native.call('vision', { pixel_values: pixelValues });
  }

  /**
   * Text embedding [B, D]: 'projected' (default) is the L2-normalised text_embeds of the joint space;
   * 'pooled' is the text tower's pooler_output. Soft tokens keep the graph, so gradients reach them.
   */
  async encodeText(input: ClipTextInput, opts: { variant?: EmbeddingVariant } = {}): Promise<Tensor> {
    const variant = expectOneOf('variant', opts.variant ?? 'projected', VARIANTS);
    if (variant === 'projected' && !this.hasVision) throw new RoundtripError("CLIP encodeText: variant 'projected' needs a full CLIPModel (this is a text-only model); use 'pooled'");
    const out = await this.text(input);
    return pick(out, variant === 'projected' ? 'text_embeds' : 'pooler_output');
  }

  /** Image embedding [B, D] from normalised pixel values [B, 3, S, S]. */
  async encodeImage(pixelValues: Tensor, opts: { variant?: EmbeddingVariant } = {}): Promise<Tensor> {
    const variant = expectOneOf('variant', opts.variant ?? 'projected', VARIANTS);
    const out = await this.vision(pixelValues);
    return pick(out, variant === 'projected' ? 'image_embeds' : 'pooler_output');
  }

  dispose(): void {
    this.native.dispose();
  }
}

/** Keeps one output and disposes the others. */
export function pick<O extends object>(out: O, name: keyof O & string): Tensor {
  const t = (out as Record<string, Tensor | undefined>)[name];
  if (!t) throw new RoundtripError(`model output '${name}' is missing (got ${Object.keys(out).join(', ')})`);
  for (const [k, v] of Object.entries(out as Record<string, Tensor>)) if (k !== name) v.dispose();
  return t;
}

/** Rows of a [N, D] (or [D]) float tensor as Float32Array views. */
export function rows(t: Tensor): Float32Array[] {
  const shape = t.shape;
  if (shape.length !== 1 && shape.length !== 2) throw invalid('embedding tensor', 'a [D] or [N, D] tensor', `shape [${shape.join(', ')}]`);
  const data = t.toFloat32Array();
  const d = shape[shape.length - 1];
  const n = shape.length === 1 ? 1 : shape[0];
  const out: Float32Array[] = [];
  for (let i = 0; i < n; i++) out.push(data.subarray(i * d, (i + 1) * d));
  return out;
}

/** 1 − cos(a, b), accumulated in float64. A zero vector has no direction: that is an error. */
export function cosineDistance(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw invalid('cosineDistance vectors', 'two vectors of equal length', `${a.length} and ${b.length}`);
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  if (na === 0 || nb === 0) throw new RoundtripError('cosineDistance: a vector is all zeros, so its direction is undefined');
  return 1 - dot / Math.sqrt(na * nb);
}

/** Mean of 1 − cos(query, r) over the references (e.g. a caption against several reference captions). */
export function meanCosineDistance(query: ArrayLike<number>, references: ArrayLike<number>[]): number {
  if (references.length === 0) throw invalid('references', 'at least one reference vector', references);
  let sum = 0;
  for (const r of references) sum += cosineDistance(query, r);
  return sum / references.length;
}

/** Row-wise 1 − cos between two [N, D] embedding tensors (e.g. an image and its reconstruction). */
export function pairedCosineDistances(a: Tensor, b: Tensor): number[] {
  const ra = rows(a);
  const rb = rows(b);
  if (ra.length !== rb.length) throw invalid('pairedCosineDistances', 'two tensors with the same number of rows', `${ra.length} and ${rb.length}`);
  return ra.map((x, i) => cosineDistance(x, rb[i]));
}
