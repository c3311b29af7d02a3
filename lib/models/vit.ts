/**
 * ViT / DINO image descriptors over the native "vit" model (transformers ViTModel without pooler,
 * facebook/dino-vitb8 layout), plus loading of the original facebookresearch/dino checkpoints.
 *
 * Position embeddings are interpolated for image sizes other than the training size. `interpolation`
 * picks the step of the bicubic resize: 'dino' (default) is the original DINO code (torch.hub dino_vitb8,
 * the paper authors' protocol: scale_factor (h+0.1)/g), 'hf' is transformers >= 4.45 (size=(h, w)).
 *
 * The original layout's fused `attn.qkv` cannot be mapped by a key rename, so it is split here in
 * TypeScript (rows 0..D-1 query, D..2D-1 key, 2D..3D-1 value) and installed with the model's
 * "set_tensors" method.
 */
import { RoundtripError, expectOneOf, expectNumber, invalid } from '../errors';
import { NativeModel } from '../runtime/model';
import { Tensor, disposeAll } from '../runtime/tensor';
import { loadSafetensors } from '../weights/safetensors';
import { loadHfModel, pick, readConfig } from './clip';

export type PosInterpolation = 'dino' | 'hf';
const INTERPOLATIONS: readonly PosInterpolation[] = ['dino', 'hf'];

/** LayerNorm eps of the original DINO code (the Hub conversion's config says 1e-12). */
export const DINO_ORIGINAL_EPS = 1e-6;

const DINO_RENAMES: [RegExp, string][] = [
  [/^cls_token$/, 'embeddings.cls_token'],
  [/^pos_embed$/, 'embeddings.position_embeddings'],
  [/^patch_embed\.proj\.(weight|bias)$/, 'embeddings.patch_embeddings.projection.$1'],
  [/^blocks\.(\d+)\.norm1\.(weight|bias)$/, 'encoder.layer.$1.layernorm_before.$2'],
  [/^blocks\.(\d+)\.attn\.proj\.(weight|bias)$/, 'encoder.layer.$1.attention.output.dense.$2'],
  [/^blocks\.(\d+)\.norm2\.(weight|bias)$/, 'encoder.layer.$1.layernorm_after.$2'],
  [/^blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$/, 'encoder.layer.$1.intermediate.dense.$2'],
  [/^blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$/, 'encoder.layer.$1.output.dense.$2'],
  [/^norm\.(weight|bias)$/, 'layernorm.$1'],
];

/**
 * Converts original DINO tensors (dino_vitb8_pretrain.pth names) to the transformers ViTModel names, as
 * transformers' convert_dino_to_pytorch.py does. The q/k/v tensors are views into the fused ones.
 * A classification `head.*` is dropped (the backbone has none); any other unknown key is an error.
 */
export function dinoOriginalToHf(tensors: Record<string, Tensor>): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const [key, t] of Object.entries(tensors)) {
    const qkv = /^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$/.exec(key);
    if (qkv) {
      const rows = t.shape[0];
      if (rows % 3 !== 0) throw invalid(`DINO weight '${key}'`, 'a fused q/k/v tensor with 3·D rows', `shape [${t.shape.join(', ')}]`);
      const d = rows / 3;
      const base = `encoder.layer.${qkv[1]}.attention.attention`;
      out[`${base}.query.${qkv[2]}`] = t.narrow(0, 0, d);
      out[`${base}.key.${qkv[2]}`] = t.narrow(0, d, d);
      out[`${base}.value.${qkv[2]}`] = t.narrow(0, 2 * d, d);
      continue;
    }
    if (key.startsWith('head.')) continue;
    const rule = DINO_RENAMES.find(([re]) => re.test(key));
    if (!rule) throw new RoundtripError(`DINO checkpoint: unexpected tensor '${key}' (not part of the original VisionTransformer layout)`);
    out[key.replace(rule[0], rule[1])] = t;
  }
  return out;
}

/** A ViTModel config inferred from original DINO tensors (heads cannot be inferred: pass them). */
export function dinoConfigFromTensors(tensors: Record<string, Tensor>, numHeads: number, layerNormEps = DINO_ORIGINAL_EPS): any {
  const need = (k: string) => {
    const t = tensors[k];
    if (!t) throw new RoundtripError(`DINO checkpoint: missing tensor '${k}'`);
    return t.shape;
  };
  const [hidden, channels, patch] = need('patch_embed.proj.weight');
  const positions = need('pos_embed')[1] - 1;
  const grid = Math.round(Math.sqrt(positions));
  if (grid * grid !== positions) throw invalid('DINO pos_embed', 'a square grid of positions plus one class row', positions + 1);
  let layers = 0;
  while (tensors[`blocks.${layers}.norm1.weight`]) layers++;
  return {
    model_type: 'vit',
    hidden_size: hidden,
    num_channels: channels,
    patch_size: patch,
    image_size: grid * patch,
    num_hidden_layers: layers,
    num_attention_heads: numHeads,
    intermediate_size: need('blocks.0.mlp.fc1.weight')[0],
    hidden_act: 'gelu',
    qkv_bias: Boolean(tensors['blocks.0.attn.qkv.bias']),
    layer_norm_eps: layerNormEps,
  };
}

export class VitModel {
  private constructor(
    readonly native: NativeModel<'vit'>,
    readonly config: any,
  ) {}

  /** Loads a transformers ViT folder (config.json + model.safetensors), e.g. facebook/dino-vitb8. */
  static async load(dir: string, opts: { device?: string } = {}): Promise<VitModel> {
    const config = readConfig(dir);
    return new VitModel(await loadHfModel('vit', dir, { device: opts.device, config }), config); // a saved pooler.* is skipped natively
  }

  /**
   * Loads an original facebookresearch/dino checkpoint converted to safetensors (cls_token, pos_embed,
   * blocks.{i}.attn.qkv, ...). `config` (a ViTConfig object) or `numHeads` describes the architecture;
   * the LayerNorm eps defaults to the original code's 1e-6.
   */
  static async loadDinoOriginal(file: string, opts: { config?: any; numHeads?: number; layerNormEps?: number; device?: string } = {}): Promise<VitModel> {
    const tensors = await loadSafetensors(file);
    try {
      let config = opts.config;
      if (!config) {
        const heads = opts.numHeads ?? defaultHeads(tensors);
        config = dinoConfigFromTensors(tensors, heads);
      }
      const eps = opts.layerNormEps ?? DINO_ORIGINAL_EPS;
      expectNumber('layerNormEps', eps, { min: 0, exclusiveMin: true });
      config = { ...config, layer_norm_eps: eps };
      const model = await NativeModel.create('vit', config, { device: opts.device ?? 'cpu' });
      try {
        const mapped = dinoOriginalToHf(tensors);
        const have = new Set(Object.keys(mapped));
        const missing = model.parameters().map((p) => p.name).filter((n) => !have.has(n));
        if (missing.length) throw new RoundtripError(`${file}: lacks ${missing.length} tensor(s) the DINO model needs: ${missing.slice(0, 8).join(', ')}`);
        await model.call('set_tensors', mapped);
      } catch (err) {
        model.dispose();
        throw err;
      }
      return new VitModel(model, config);
    } finally {
      disposeAll(tensors);
    }
  }

  /** Raw outputs: last_hidden_state [B, 1+h·w, D], cls [B, D], pos_embed [1, 1+h·w, D]. */
  async forward(pixelValues: Tensor, opts: { interpolation?: PosInterpolation } = {}): Promise<Record<string, Tensor>> {
    const interpolation = expectOneOf('interpolation', opts.interpolation ?? 'dino', INTERPOLATIONS);
    return this.native.call('forward', { pixel_values: pixelValues }, { interpolation });
  }

  /** The CLS descriptor [B, D] after the final norm (DINO's forward()). */
  async cls(pixelValues: Tensor, opts: { interpolation?: PosInterpolation } = {}): Promise<Tensor> {
    return pick(await this.forward(pixelValues, opts), 'cls');
  }

  dispose(): void {
    this.native.dispose();
  }
}

/** ViT-S/B/L use 64-wide heads; anything else needs numHeads. */
function defaultHeads(tensors: Record<string, Tensor>): number {
  const hidden = tensors['cls_token']?.shape[2];
  if (!hidden || hidden % 64 !== 0) throw new RoundtripError('DINO checkpoint: cannot infer the head count from the width; pass numHeads (or a config)');
  return hidden / 64;
}
