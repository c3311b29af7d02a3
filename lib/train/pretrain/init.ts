/**
 * Seeded initialisation and saving of the small models' weights.
 *
 * libtorch's module constructors initialise like PyTorch's layers (embeddings N(0, 1), linears
 * Kaiming-uniform); transformers re-initialises BLIP and CLIP with N(0, initializer_range) weights,
 * zero biases and unit LayerNorms, which is what lets a tied BERT LM head start near uniform. We do the
 * same, from our own seeded generator, and load the result through the ordinary weight loader.
 */
import { promises as fs } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { NativeModel } from '../../runtime/model';
import { Tensor, disposeAll } from '../../runtime/tensor';
import { deriveSeed } from '../../image/random';
import { saveTensors } from '../../weights/save';

export interface TransformerInitOptions {
  seed: number;
  /** Standard deviation of weights and embeddings (transformers' initializer_range). */
  std?: number;
  /** Parameters left as constructed (e.g. CLIP's logit_scale). */
  keep?: RegExp;
  /** Embedding rows to keep non-zero, per parameter name; other rows start (and, without gradient, stay) at zero. */
  usedRows?: Record<string, ReadonlySet<number>>;
}

/** True for LayerNorm / GroupNorm scales and shifts (1-d parameters of normalisation layers). */
function isNorm(name: string): boolean {
  return /(^|\.)(layer_?norm\d*|LayerNorm|norm\d*|pre_layrnorm|post_layernorm|final_layer_norm|ln_\w+)\./.test(name);
}

/** Re-initialises a transformer the way transformers' `_init_weights` does, seeded per parameter. */
export async function initTransformer(model: NativeModel, opts: TransformerInitOptions): Promise<void> {
  const std = opts.std ?? 0.02;
  const params = model.tensors(model.parameters().map((p) => p.name));
  const fresh: Record<string, Tensor> = {};
  let k = 0;
  for (const [name, t] of Object.entries(params)) {
    k++;
    if (opts.keep?.test(name)) continue;
    const shape = t.shape;
    let value: Tensor;
    if (name.endsWith('bias')) value = Tensor.zeros(shape);
    else if (isNorm(name) && name.endsWith('weight')) value = Tensor.full(shape, 1);
    else {
      const draw = Tensor.randn(shape, deriveSeed(opts.seed, k));
      value = draw.mul(std);
      draw.dispose();
      const rows = opts.usedRows?.[name];
      if (rows && shape.length === 2) {
        const data = value.toFloat32Array();
        const width = shape[1];
        for (let r = 0; r < shape[0]; r++) if (!rows.has(r)) data.fill(0, r * width, (r + 1) * width);
        value.dispose();
        value = Tensor.fromTypedArray(data, shape);
      }
    }
    fresh[name] = value;
  }
  disposeAll(Object.values(params));
  await loadPartial(model, fresh);
  disposeAll(Object.values(fresh));
}

/** Copies named tensors into a model through the weight loader (a scratch safetensors file). */
export async function loadPartial(model: NativeModel, tensors: Record<string, Tensor>): Promise<void> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'rt-init-'));
  try {
    const file = path.join(dir, 'init.safetensors');
    await saveTensors(file, tensors);
    await model.loadWeights([file], { partial: true });
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/**
 * Writes a model's parameters and buffers (its published key layout) as safetensors, floating tensors
 * cast to `dtype` (float16 keeps the shipped folders small; the loader casts back to the model's dtype).
 */
export async function saveModelWeights(model: NativeModel, file: string, opts: { dtype?: 'float16' | 'float32'; metadata?: Record<string, string> } = {}): Promise<void> {
  const tensors = model.tensors();
  const out: Record<string, Tensor> = {};
  const cast: Tensor[] = [];
  for (const name of Object.keys(tensors).sort()) {
    const t = tensors[name];
    if (opts.dtype === 'float16' && t.dtype === 'float32') {
      const c = t.to(undefined, 'float16');
      cast.push(c);
      out[name] = c;
    } else out[name] = t;
  }
  try {
    await saveTensors(file, out, { format: 'pt', ...opts.metadata });
  } finally {
    disposeAll(cast);
    disposeAll(Object.values(tensors));
  }
}
