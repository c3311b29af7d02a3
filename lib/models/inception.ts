/**
 * FID InceptionV3 (torch-fidelity FeatureExtractorInceptionV3) over the native "inception" model: pool3
 * features for FID/KID and the unbiased logits for the Inception Score, from uint8 images of any size
 * (TF1 bilinear resize to 299×299 inside).
 *
 * Weights: the real file (pt_inception-2015-12-05-6726825d.pth converted to safetensors; 472 tensors under
 * the same names), or the fixtures' deterministic formula weights (`inceptionFormulaWeights`), installed
 * with the model's "set_tensors" method so no file is written.
 */
import { RoundtripError, expectBoolean, expectString, invalid } from '../errors';
import { NativeModel } from '../runtime/model';
import { Tensor, disposeAll } from '../runtime/tensor';
import { jsonPath, readJsonFile } from '../json';

/** One tensor of a weight layout. */
export interface TensorLayout {
  name: string;
  shape: number[];
}

/** Knobs of the weight formula (case.json → weights.formula). */
export interface FormulaParams {
  /** Multiplies the conv weights' uniform bound sqrt(6/fan_in). Default 1.0. */
  convGain?: number;
  /** Added to the BatchNorm biases. Default 0.0. */
  bnBiasMean?: number;
}

const textEncoder = new TextEncoder();

/** FNV-1a 32-bit hash of the UTF-8 bytes of `s`. */
export function fnv1a32(s: string): number {
  let h = 0x811c9dc5;
  for (const b of textEncoder.encode(s)) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h >>> 0;
}

/** The formula's integer mixer (uint32 arithmetic). */
export function mix32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

/**
 * The values of one formula tensor: r_i = mix(h XOR mix(i))/2³¹ − 1 with h = FNV-1a(tag + "/" + name),
 * mapped per tensor kind in float64 and rounded once to float32 (case.json → weights.formula.values).
 */
export function inceptionFormulaTensor(tag: string, name: string, shape: readonly number[], params: FormulaParams = {}): Float32Array {
  const convGain = params.convGain ?? 1.0;
  const bnBiasMean = params.bnBiasMean ?? 0.0;
  const numel = shape.reduce((a, b) => a * b, 1);
  // Every rule has the form c0 + c1·r in float64 (for the conv/fc weights c0 = 0 and c1 = the bound, and
  // 0 + x == x exactly), so one monomorphic loop serves all tensors.
  let c0: number;
  let c1: number;
  if (name.endsWith('.conv.weight')) {
    if (shape.length !== 4) throw invalid(`formula tensor '${name}'`, 'a 4-d conv weight [O, I, kh, kw]', `shape [${shape.join(', ')}]`);
    [c0, c1] = [0, convGain * Math.sqrt(6.0 / (shape[1] * shape[2] * shape[3]))];
  } else if (name.endsWith('.bn.weight')) [c0, c1] = [1.0, 0.2];
  else if (name.endsWith('.bn.bias')) [c0, c1] = [bnBiasMean, 0.2];
  else if (name.endsWith('.bn.running_mean')) [c0, c1] = [0, 0.2];
  else if (name.endsWith('.bn.running_var')) [c0, c1] = [1.0, 0.5];
  else if (name === 'fc.weight') {
    if (shape.length !== 2) throw invalid(`formula tensor '${name}'`, 'a 2-d weight [out, in]', `shape [${shape.join(', ')}]`);
    [c0, c1] = [0, Math.sqrt(3.0 / shape[1])];
  } else if (name === 'fc.bias') [c0, c1] = [0, 0.5];
  else throw new RoundtripError(`inception formula: no rule for tensor '${name}'`);
  const h = fnv1a32(`${tag}/${name}`);
  const out = new Float32Array(numel);
  // A local alias: under a vm context (jest) every `Math.` lookup goes through the global proxy.
  const imul = Math.imul;
  for (let i = 0; i < numel; i++) {
    // mix32 inlined twice: this loop runs 24 million times for the full network.
    let x = i;
    x ^= x >>> 16;
    x = imul(x, 0x7feb352d);
    x ^= x >>> 15;
    x = imul(x, 0x846ca68b);
    x ^= x >>> 16;
    x ^= h;
    x ^= x >>> 16;
    x = imul(x, 0x7feb352d);
    x ^= x >>> 15;
    x = imul(x, 0x846ca68b);
    x ^= x >>> 16;
    const r = (x >>> 0) / 2147483648 - 1;
    out[i] = c0 + c1 * r; // Float32Array stores with round-to-nearest-even, once
  }
  return out;
}

/** Formula weights for every tensor of a layout, as CPU float32 tensors under their real names. */
export function inceptionFormulaWeights(tag: string, layout: readonly TensorLayout[], params: FormulaParams = {}): Record<string, Tensor> {
  expectString('formula tag', tag);
  const out: Record<string, Tensor> = {};
  try {
    for (const { name, shape } of layout) out[name] = Tensor.fromTypedArray(inceptionFormulaTensor(tag, name, shape, params), [...shape]);
  } catch (err) {
    disposeAll(out);
    throw err;
  }
  return out;
}

/** Reads a real-weights-layout.json ({keys: [{name, shape}]}). */
export function readInceptionLayout(file: string): TensorLayout[] {
  const json = readJsonFile(file, { what: 'weight layout', object: true });
  if (!Array.isArray(json.keys)) throw invalid(jsonPath(file, 'keys'), 'an array of {name, shape}', json.keys);
  return json.keys.map((k: any, i: number) => ({ name: expectString(jsonPath(file, 'keys', i, 'name'), k?.name), shape: k.shape as number[] }));
}

/** Features of a batch of images. */
export interface InceptionFeatures {
  /** [B, 2048] pool3 features (FID, KID, precision/recall). */
  pool3: Tensor;
  /** [B, 1008] pool3 · fc.weightᵀ without bias (the Inception Score input). */
  logitsUnbiased: Tensor;
}

export class InceptionModel {
  private constructor(readonly native: NativeModel<'inception'>) {}

  /** An inception network with untrained weights (load or set weights before use). */
  static async create(opts: { device?: string } = {}): Promise<InceptionModel> {
    return new InceptionModel(await NativeModel.create('inception', {}, { device: opts.device ?? 'cpu' }));
  }

  /** Loads the real FID weights from a safetensors conversion of pt_inception-2015-12-05-6726825d.pth. */
  static async load(file: string, opts: { device?: string } = {}): Promise<InceptionModel> {
    const m = await InceptionModel.create(opts);
    try {
      await m.native.loadWeights([file]);
    } catch (err) {
      m.dispose();
      throw err;
    }
    return m;
  }

  /** Builds the model with the deterministic formula weights of the reference fixtures. */
  static async fromFormula(tag: string, opts: FormulaParams & { device?: string } = {}): Promise<InceptionModel> {
    const m = await InceptionModel.create(opts);
    try {
      await m.setWeights(inceptionFormulaWeights(tag, m.layout(), opts), true);
    } catch (err) {
      m.dispose();
      throw err;
    }
    return m;
  }

  /** The weight layout (names and shapes of the 472 file tensors: parameters and BN running statistics). */
  layout(): TensorLayout[] {
    const all = this.native.tensors();
    const out: TensorLayout[] = [];
    for (const [name, t] of Object.entries(all)) {
      if (!name.endsWith('.num_batches_tracked')) out.push({ name, shape: t.shape });
      t.dispose();
    }
    return out;
  }

  /** Copies tensors into the weights by name (all layout tensors must be given); optionally disposes them. */
  async setWeights(weights: Record<string, Tensor>, dispose = false): Promise<void> {
    try {
      const missing = this.layout().filter((l) => !weights[l.name]).map((l) => l.name);
      if (missing.length) throw new RoundtripError(`inception weights lack ${missing.length} tensor(s): ${missing.slice(0, 8).join(', ')}`);
      disposeAll(await this.native.call('set_tensors', weights));
    } finally {
      if (dispose) disposeAll(weights);
    }
  }

  /**
   * Raw forward: feature.{64,192,768,2048,logits_unbiased,logits}, plus on request resized / normalized
   * (the 299×299 input before/after (x−128)/128), block_mean.<stage> and block.<stage>.
   */
  async forward(images: Tensor, opts: { resized?: boolean; normalized?: boolean; blockMeans?: boolean; blocks?: string[] } = {}): Promise<Record<string, Tensor>> {
    checkImages(images);
    return this.native.call(
      'forward',
      { images },
      {
        resized: expectBoolean('resized', opts.resized ?? false),
        normalized: expectBoolean('normalized', opts.normalized ?? false),
        block_means: expectBoolean('blockMeans', opts.blockMeans ?? false),
        blocks: opts.blocks ?? [],
      },
    );
  }

  /** pool3 features and unbiased logits of uint8 images [B, 3, H, W]. */
  async features(images: Tensor): Promise<InceptionFeatures> {
    const out = await this.forward(images);
    const result = { pool3: out['feature.2048'], logitsUnbiased: out['feature.logits_unbiased'] };
    for (const [k, t] of Object.entries(out)) if (k !== 'feature.2048' && k !== 'feature.logits_unbiased') t.dispose();
    return result;
  }

  dispose(): void {
    this.native.dispose();
  }
}

function checkImages(images: Tensor): void {
  if (!(images instanceof Tensor)) throw invalid('images', 'a uint8 Tensor [B, 3, H, W]', images);
  if (images.dtype !== 'uint8' || images.shape.length !== 4 || images.shape[1] !== 3)
    throw invalid('images', 'a uint8 Tensor [B, 3, H, W]', `${images.dtype} [${images.shape.join(', ')}]`);
}
