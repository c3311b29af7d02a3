/**
 * Model input preprocessing: RGB image → CHW tensor (one image) or NCHW batch, reproducing each
 * model's reference processor step by step, including its float32 rounding:
 *
 * - `multiply` rescale = transformers `rescale()`: `float32(float64(x) * factor)`;
 * - `divide` rescale = torchvision `ToTensor()`: `float32(x) / 255` in float32;
 * - normalisation = `(x - float32(mean)) / float32(std)` in float32 (both libraries);
 * - `fused` rescale = transformers' torchvision-backed ("fast") processors, the default in
 *   transformers 5: with normalisation, `(x - f32(mean)·f32(1/factor)) / (f32(std)·f32(1/factor))`
 *   in float32; without it, `x · f32(factor)`. (Checked bit-exact against transformers 5.17 on
 *   the same uint8 pixels. Their torch resize is NOT reproduced: it differs from Pillow by ±1–2
 *   levels on under 1% of values; this module's resize is Pillow's.)
 *
 * Because every step after the geometry is a per-channel function of the uint8 value, it is
 * applied through a 3×256 lookup table computed with exactly that arithmetic.
 *
 * Order of steps: random-resized-crop | resize → centre crop | random crop → horizontal flip →
 * RandAugment → rescale → normalise. That is the order of transformers' processors and of the torchvision
 * pipelines used by BLIP, DINO and the diffusers training scripts.
 */
import { RoundtripError, describe, expectBoolean, expectInteger, expectNumber, expectOneOf, invalid } from '../errors';
import { Resample, parseResample } from './resample';
import { resize } from './resample';
import { Rng, deriveSeed } from './random';
import { centerCropRect, crop, flipHorizontal, randomCropRect, randomResizedCropRect, shortestEdgeSize } from './transform';
import { Float32Tensor, ImageTensor, RgbImage, Uint8Tensor, assertRgbImage } from './types';
import { RandAugmentConfig, blipRandAugment, randAugment, validateRandAugment } from './randaugment';
import { readJsonFileAsync } from '../json';

export type Triple = [number, number, number];

/** OpenAI CLIP statistics (BLIP and CLIP processors). */
export const CLIP_MEAN: Triple = [0.48145466, 0.4578275, 0.40821073];
export const CLIP_STD: Triple = [0.26862954, 0.26130258, 0.27577711];
/** ImageNet statistics (DINO via torchvision, ViT feature extractors of DINO checkpoints). */
export const IMAGENET_MEAN: Triple = [0.485, 0.456, 0.406];
export const IMAGENET_STD: Triple = [0.229, 0.224, 0.225];

export interface Size {
  height: number;
  width: number;
}

export type ResizeSpec = { height: number; width: number } | { shortestEdge: number };

export type RescaleSpec = { op: 'multiply'; factor: number } | { op: 'fused'; factor: number } | { op: 'divide'; divisor: number };

/** A complete, explicit preprocessing recipe. Build one from a preset or an HF config. */
export interface PreprocessConfig {
  /** label used in logs and errors */
  name: string;
  /** plain resize (skipped when null or when `randomResizedCrop` is set) */
  resize: ResizeSpec | null;
  /** Pillow filter for every resize in this recipe */
  resample: Resample;
  /** torchvision RandomResizedCrop: crop window drawn by area/aspect, then resized to height×width */
  randomResizedCrop: { height: number; width: number; scale: [number, number]; ratio: [number, number] } | null;
  centerCrop: Size | null;
  /** 'floor' = transformers `center_crop`; 'round-half-even' = torchvision `CenterCrop` */
  cropRounding: 'floor' | 'round-half-even';
  /** torchvision RandomCrop (seeded) */
  randomCrop: Size | null;
  /** probability of a horizontal flip (0 = never, 0.5 = RandomHorizontalFlip, 1 = always) */
  flipProbability: number;
  /** BLIP's RandomAugment(N, M) on the uint8 image after the flip (seeded), or null */
  randAugment: RandAugmentConfig | null;
  rescale: RescaleSpec | null;
  normalize: { mean: Triple; std: Triple } | null;
  /** 'uint8' keeps pixel values (FID Inception input); needs rescale and normalize null */
  output: 'float32' | 'uint8';
}

const BASE: PreprocessConfig = {
  name: 'custom',
  resize: null,
  resample: Resample.BICUBIC,
  randomResizedCrop: null,
  centerCrop: null,
  cropRounding: 'floor',
  randomCrop: null,
  flipProbability: 0,
  randAugment: null,
  rescale: null,
  normalize: null,
  output: 'float32',
};

/** transformers `BlipImageProcessor` (slow, PIL): 384×384 bicubic, ×1/255, CLIP mean/std. */
export function blipPreprocess(size = 384): PreprocessConfig {
  return {
    ...BASE,
    name: 'blip',
    resize: { height: size, width: size },
    resample: Resample.BICUBIC,
    rescale: { op: 'multiply', factor: 1 / 255 },
    normalize: { mean: [...CLIP_MEAN], std: [...CLIP_STD] },
  };
}

/**
 * BLIP's own evaluation transform (salesforce/BLIP `transform_test`): `Resize((size, size), bicubic)`
 * on the PIL image, `ToTensor()`, CLIP mean/std. Same pixels as `blipPreprocess`; the float
 * arithmetic is torchvision's (x/255), which can differ from transformers' in the last bit.
 */
export function blipOriginalPreprocess(size = 384): PreprocessConfig {
  return { ...blipPreprocess(size), name: 'blip-original', rescale: { op: 'divide', divisor: 255 } };
}

/**
 * BLIP's own training transform (salesforce/BLIP `transform_train`): RandomResizedCrop(size,
 * scale=(minScale, 1), bicubic), RandomHorizontalFlip (`flip`, default on), RandomAugment(2, 5)
 * (`randAugment`, default off), ToTensor, CLIP mean/std.
 */
export function blipTrainPreprocess(size = 384, minScale = 0.5, options: { flip?: boolean; randAugment?: boolean } = {}): PreprocessConfig {
  return {
    ...BASE,
    name: 'blip-train',
    resample: Resample.BICUBIC,
    randomResizedCrop: { height: size, width: size, scale: [minScale, 1], ratio: [3 / 4, 4 / 3] },
    flipProbability: options.flip === false ? 0 : 0.5,
    randAugment: options.randAugment ? blipRandAugment() : null,
    rescale: { op: 'divide', divisor: 255 },
    normalize: { mean: [...CLIP_MEAN], std: [...CLIP_STD] },
  };
}

/** transformers `CLIPImageProcessor`: shortest edge 224 bicubic, centre crop 224 (floor), ×1/255, CLIP mean/std. */
export function clipPreprocess(size = 224, cropSize = size): PreprocessConfig {
  return {
    ...BASE,
    name: 'clip',
    resize: { shortestEdge: size },
    resample: Resample.BICUBIC,
    centerCrop: { height: cropSize, width: cropSize },
    cropRounding: 'floor',
    rescale: { op: 'multiply', factor: 1 / 255 },
    normalize: { mean: [...CLIP_MEAN], std: [...CLIP_STD] },
  };
}

/**
 * DINO as the paper's authors ran it: torchvision `Resize((384, 384))` on a PIL image (= PIL
 * bilinear with antialiasing), `ToTensor()`, `Normalize(ImageNet mean, std)`.
 */
export function dinoPreprocess(size = 384): PreprocessConfig {
  return {
    ...BASE,
    name: 'dino',
    resize: { height: size, width: size },
    resample: Resample.BILINEAR,
    rescale: { op: 'divide', divisor: 255 },
    normalize: { mean: [...IMAGENET_MEAN], std: [...IMAGENET_STD] },
  };
}

/**
 * Stable Diffusion VAE input as in diffusers' training scripts: `Resize(size, bilinear)` (shortest
 * edge), `CenterCrop(size)` or `RandomCrop(size)`, optional `RandomHorizontalFlip`, `ToTensor()`,
 * `Normalize([0.5], [0.5])` → [-1, 1]. In float32 this equals diffusers' `2·(x/255) − 1`.
 */
export function sdVaePreprocess(options: { size?: number; randomCrop?: boolean; randomFlip?: boolean } = {}): PreprocessConfig {
  const size = options.size ?? 512;
  expectInteger('size', size, { min: 1 });
  const random = options.randomCrop === undefined ? false : expectBoolean('randomCrop', options.randomCrop);
  const flip = options.randomFlip === undefined ? false : expectBoolean('randomFlip', options.randomFlip);
  return {
    ...BASE,
    name: 'sd-vae',
    resize: { shortestEdge: size },
    resample: Resample.BILINEAR,
    centerCrop: random ? null : { height: size, width: size },
    cropRounding: 'round-half-even',
    randomCrop: random ? { height: size, width: size } : null,
    flipProbability: flip ? 0.5 : 0,
    rescale: { op: 'divide', divisor: 255 },
    normalize: { mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] },
  };
}

/** FID Inception input (torch-fidelity): uint8 NCHW, unchanged; the network resizes to 299 itself. */
export function fidPreprocess(): PreprocessConfig {
  return { ...BASE, name: 'fid-inception', output: 'uint8' };
}

/** The presets by name (each call returns a fresh object). */
export const PRESETS = {
  blip: () => blipPreprocess(),
  'blip-original': () => blipOriginalPreprocess(),
  'blip-train': () => blipTrainPreprocess(),
  clip: () => clipPreprocess(),
  dino: () => dinoPreprocess(),
  'sd-vae': () => sdVaePreprocess(),
  'fid-inception': () => fidPreprocess(),
} as const;
export type PresetName = keyof typeof PRESETS;

/** A preset by name, with fields overridden. The result is validated. */
export function preprocessPreset(name: PresetName, overrides: Partial<PreprocessConfig> = {}): PreprocessConfig {
  const names = Object.keys(PRESETS) as PresetName[];
  expectOneOf('preprocessing preset', name, names);
  return validatePreprocessConfig({ ...PRESETS[name](), ...overrides });
}

function expectSize(name: string, value: unknown): Size {
  if (value === null || typeof value !== 'object') throw invalid(name, 'an object {height, width}', value);
  const v = value as Record<string, unknown>;
  return { height: expectInteger(`${name}.height`, v.height, { min: 1 }), width: expectInteger(`${name}.width`, v.width, { min: 1 }) };
}

function expectTriple(name: string, value: unknown, positive: boolean): Triple {
  if (!Array.isArray(value) || value.length !== 3) throw invalid(name, 'an array of 3 numbers (one per RGB channel)', value);
  return value.map((v, i) =>
    expectNumber(`${name}[${i}]`, v, positive ? { min: 0, exclusiveMin: true } : {}),
  ) as Triple;
}

function expectPair(name: string, value: unknown, min: number): [number, number] {
  if (!Array.isArray(value) || value.length !== 2) throw invalid(name, 'an array [low, high]', value);
  const lo = expectNumber(`${name}[0]`, value[0], { min, exclusiveMin: true });
  const hi = expectNumber(`${name}[1]`, value[1], { min: lo });
  return [lo, hi];
}

/** Checks every field of a recipe; returns a normalised copy. Errors name the offending field. */
export function validatePreprocessConfig(config: PreprocessConfig): PreprocessConfig {
  if (config === null || typeof config !== 'object') throw invalid('preprocess config', 'an object', config);
  const c = config as unknown as Record<string, unknown>;
  const known = new Set(Object.keys(BASE));
  for (const key of Object.keys(c)) {
    if (!known.has(key)) throw invalid(`preprocess config key "${key}"`, `one of ${[...known].join(', ')}`, key);
  }
  const name = typeof c.name === 'string' ? c.name : 'custom';
  const at = (field: string) => `${name}.${field}`;
  let resizeSpec: ResizeSpec | null = null;
  if (c.resize !== null && c.resize !== undefined) {
    const r = c.resize as Record<string, unknown>;
    if (typeof r !== 'object') throw invalid(at('resize'), '{height, width} or {shortestEdge}', r);
    resizeSpec = 'shortestEdge' in r ? { shortestEdge: expectInteger(at('resize.shortestEdge'), r.shortestEdge, { min: 1 }) } : expectSize(at('resize'), r);
  }
  let rrc: PreprocessConfig['randomResizedCrop'] = null;
  if (c.randomResizedCrop !== null && c.randomResizedCrop !== undefined) {
    const r = c.randomResizedCrop as Record<string, unknown>;
    const size = expectSize(at('randomResizedCrop'), r);
    rrc = { ...size, scale: expectPair(at('randomResizedCrop.scale'), r.scale, 0), ratio: expectPair(at('randomResizedCrop.ratio'), r.ratio, 0) };
    if (rrc.scale[1] > 1) throw invalid(at('randomResizedCrop.scale[1]'), 'at most 1', rrc.scale[1]);
  }
  const centerCrop = c.centerCrop === null || c.centerCrop === undefined ? null : expectSize(at('centerCrop'), c.centerCrop);
  const randomCrop = c.randomCrop === null || c.randomCrop === undefined ? null : expectSize(at('randomCrop'), c.randomCrop);
  if (centerCrop && randomCrop) throw invalid(at('centerCrop'), 'null when randomCrop is set (one crop only)', c.centerCrop);
  let rescale: RescaleSpec | null = null;
  if (c.rescale !== null && c.rescale !== undefined) {
    const r = c.rescale as Record<string, unknown>;
    const op = expectOneOf(at('rescale.op'), r.op, ['multiply', 'fused', 'divide'] as const);
    rescale =
      op === 'divide'
        ? { op, divisor: expectNumber(at('rescale.divisor'), r.divisor, { min: 0, exclusiveMin: true }) }
        : { op, factor: expectNumber(at('rescale.factor'), r.factor, { min: 0, exclusiveMin: true }) };
  }
  let normalize: PreprocessConfig['normalize'] = null;
  if (c.normalize !== null && c.normalize !== undefined) {
    const n = c.normalize as Record<string, unknown>;
    normalize = { mean: expectTriple(at('normalize.mean'), n.mean, false), std: expectTriple(at('normalize.std'), n.std, true) };
  }
  const output = expectOneOf(at('output'), c.output ?? 'float32', ['float32', 'uint8'] as const);
  if (output === 'uint8' && (rescale || normalize)) {
    throw invalid(at('output'), '"float32" when rescale or normalize is set (uint8 output keeps raw pixel values)', output);
  }
  return {
    name,
    resize: resizeSpec,
    resample: parseResample(at('resample'), c.resample ?? Resample.BICUBIC),
    randomResizedCrop: rrc,
    centerCrop,
    cropRounding: expectOneOf(at('cropRounding'), c.cropRounding ?? 'floor', ['floor', 'round-half-even'] as const),
    randomCrop,
    flipProbability: expectNumber(at('flipProbability'), c.flipProbability ?? 0, { min: 0, max: 1 }),
    randAugment: c.randAugment === null || c.randAugment === undefined ? null : validateRandAugment(at('randAugment'), c.randAugment),
    rescale,
    normalize,
    output,
  };
}

/** True when the recipe draws random numbers (and so needs an Rng). */
export function isRandom(config: PreprocessConfig): boolean {
  return config.randomResizedCrop !== null || config.randomCrop !== null || (config.flipProbability > 0 && config.flipProbability < 1) || (config.randAugment !== null && config.randAugment.n > 0);
}

/** Output [height, width] of a recipe for a given input size. */
export function outputSize(config: PreprocessConfig, width: number, height: number): Size {
  let size: Size = { height, width };
  if (config.randomResizedCrop) size = { height: config.randomResizedCrop.height, width: config.randomResizedCrop.width };
  else if (config.resize) size = 'shortestEdge' in config.resize ? shortestEdgeSize(width, height, config.resize.shortestEdge) : { ...config.resize };
  if (config.centerCrop) size = { ...config.centerCrop };
  if (config.randomCrop) size = { ...config.randomCrop };
  return size;
}

/**
 * The float value of each uint8 level per channel (3×256), with the reference float32 arithmetic.
 * Exposed so that callers (and tests) can see exactly what a pixel maps to.
 */
export function pixelLookupTable(config: PreprocessConfig): Float32Array {
  const lut = new Float32Array(3 * 256);
  const f = Math.fround;
  const rescale = config.rescale;
  for (let ch = 0; ch < 3; ch++) {
    let mean = config.normalize ? f(config.normalize.mean[ch]) : 0;
    let std = config.normalize ? f(config.normalize.std[ch]) : 1;
    const fused = rescale?.op === 'fused' && config.normalize !== null;
    if (fused) {
      // transformers fast processors fold the rescale into float32 mean/std.
      const inverse = f(1 / (rescale as { factor: number }).factor);
      mean = f(mean * inverse);
      std = f(std * inverse);
    }
    for (let v = 0; v < 256; v++) {
      let x: number = v;
      if (rescale && !fused) {
        // transformers slow: float64 product cast to float32; fast: float32 product;
        // torchvision ToTensor: float32 division.
        if (rescale.op === 'multiply') x = f(v * rescale.factor);
        else if (rescale.op === 'fused') x = f(v * f(rescale.factor));
        else x = f(v / f(rescale.divisor));
      }
      if (config.normalize) x = f(f(x - mean) / std);
      lut[ch * 256 + v] = x;
    }
  }
  return lut;
}

/** Applies the geometric steps (resize/crops/flip) of a recipe; returns the uint8 RGB result. */
export function applyGeometry(image: RgbImage, recipe: PreprocessConfig, rng?: Rng): RgbImage {
  assertRgbImage('image', image);
  const config = validatePreprocessConfig(recipe);
  if (isRandom(config) && !rng) {
    throw new RoundtripError(`preprocess "${config.name}": this recipe is random (crop/flip); pass an Rng (or a seed) to make it reproducible`);
  }
  let img = image;
  if (config.randomResizedCrop) {
    const r = config.randomResizedCrop;
    const rect = randomResizedCropRect(img.width, img.height, r.scale, r.ratio, rng as Rng);
    img = crop(img, rect);
    img = resize(img, r.width, r.height, config.resample);
  } else if (config.resize) {
    const target = 'shortestEdge' in config.resize ? shortestEdgeSize(img.width, img.height, config.resize.shortestEdge) : config.resize;
    img = resize(img, target.width, target.height, config.resample);
  }
  if (config.centerCrop) {
    const { width, height } = config.centerCrop;
    if (width !== img.width || height !== img.height) img = crop(img, centerCropRect(img.width, img.height, width, height, config.cropRounding));
  }
  if (config.randomCrop) {
    const { width, height } = config.randomCrop;
    img = crop(img, randomCropRect(img.width, img.height, width, height, rng as Rng));
  }
  if (config.flipProbability >= 1 || (config.flipProbability > 0 && (rng as Rng).bernoulli(config.flipProbability))) {
    img = flipHorizontal(img);
  }
  if (config.randAugment && config.randAugment.n > 0) img = randAugment(img, config.randAugment, rng as Rng);
  return img;
}

/** Writes an HWC uint8 image into a CHW float32 slot through the lookup table. */
function writeChwFloat(img: RgbImage, lut: Float32Array, out: Float32Array, offset: number): void {
  const plane = img.width * img.height;
  const src = img.data;
  for (let ch = 0; ch < 3; ch++) {
    const base = offset + ch * plane;
    const lb = ch * 256;
    for (let i = 0, s = ch; i < plane; i++, s += 3) out[base + i] = lut[lb + src[s]];
  }
}

function writeChwUint8(img: RgbImage, out: Uint8Array, offset: number): void {
  const plane = img.width * img.height;
  const src = img.data;
  for (let ch = 0; ch < 3; ch++) {
    const base = offset + ch * plane;
    for (let i = 0, s = ch; i < plane; i++, s += 3) out[base + i] = src[s];
  }
}

/** Rng argument: an Rng, a seed, or nothing (only for deterministic recipes). */
export type RngLike = Rng | number | undefined;

function toRng(rng: RngLike): Rng | undefined {
  return typeof rng === 'number' ? new Rng(rng) : rng;
}

/** Preprocesses one image to a CHW tensor ([3, H, W]); float32, or uint8 for `output: 'uint8'`. */
export function preprocessImage(image: RgbImage, recipe: PreprocessConfig, rng?: RngLike): ImageTensor {
  const config = validatePreprocessConfig(recipe);
  const img = applyGeometry(image, config, toRng(rng));
  const shape = [3, img.height, img.width];
  if (config.output === 'uint8') {
    const data = new Uint8Array(img.data.length);
    writeChwUint8(img, data, 0);
    return { data, shape };
  }
  const data = new Float32Array(img.data.length);
  writeChwFloat(img, pixelLookupTable(config), data, 0);
  return { data, shape };
}

/**
 * Preprocesses several images into one NCHW batch. Random recipes draw image i's randomness from
 * `deriveSeed(seed, i)`, so results do not depend on batch composition or processing order.
 */
export function preprocessBatch(images: RgbImage[], recipe: PreprocessConfig, seed?: number): ImageTensor {
  if (!Array.isArray(images) || images.length === 0) throw invalid('images', 'a non-empty array of RgbImage', images);
  const config = validatePreprocessConfig(recipe);
  if (isRandom(config) && seed === undefined) {
    throw new RoundtripError(`preprocess "${config.name}": this recipe is random (crop/flip); pass a seed`);
  }
  const tensors = images.map((img, i) => preprocessImage(img, config, seed === undefined ? undefined : deriveSeed(seed, i)));
  return stackBatch(tensors);
}

/** Stacks CHW tensors of one shape and dtype into NCHW. Errors name the first mismatching item. */
export function stackBatch(tensors: ImageTensor[]): ImageTensor {
  if (!Array.isArray(tensors) || tensors.length === 0) throw invalid('tensors', 'a non-empty array of CHW tensors', tensors);
  const first = tensors[0];
  const isFloat = first.data instanceof Float32Array;
  const per = first.data.length;
  tensors.forEach((t, i) => {
    if (t.shape.length !== 3) throw invalid(`tensors[${i}].shape`, 'a CHW shape [C, H, W]', `[${t.shape.join(', ')}]`);
    if (t.shape.join() !== first.shape.join()) {
      throw invalid(`tensors[${i}].shape`, `[${first.shape.join(', ')}] like item 0 (images in a batch must share a size)`, `[${t.shape.join(', ')}]`);
    }
    if ((t.data instanceof Float32Array) !== isFloat) throw invalid(`tensors[${i}].data`, isFloat ? 'a Float32Array like item 0' : 'a Uint8Array like item 0', t.data);
  });
  const shape = [tensors.length, ...first.shape];
  if (isFloat) {
    const data = new Float32Array(per * tensors.length);
    tensors.forEach((t, i) => data.set(t.data as Float32Array, i * per));
    return { data, shape } as Float32Tensor;
  }
  const data = new Uint8Array(per * tensors.length);
  tensors.forEach((t, i) => data.set(t.data as Uint8Array, i * per));
  return { data, shape } as Uint8Tensor;
}

// ---------------------------------------------------------------------------------------------
// Hugging Face preprocessor_config.json

interface HfDefaults {
  size: ResizeSpec;
  squareIntSize: boolean;
  resample: Resample;
  doCenterCrop: boolean;
  cropSize: Size | null;
  mean: Triple | null;
  std: Triple | null;
}

/** Class defaults of the transformers image processors this project meets (transformers 4.57). */
const HF_DEFAULTS: Record<string, HfDefaults> = {
  BlipImageProcessor: { size: { height: 384, width: 384 }, squareIntSize: true, resample: Resample.BICUBIC, doCenterCrop: false, cropSize: null, mean: CLIP_MEAN, std: CLIP_STD },
  CLIPImageProcessor: { size: { shortestEdge: 224 }, squareIntSize: false, resample: Resample.BICUBIC, doCenterCrop: true, cropSize: { height: 224, width: 224 }, mean: CLIP_MEAN, std: CLIP_STD },
  ViTImageProcessor: { size: { height: 224, width: 224 }, squareIntSize: true, resample: Resample.BILINEAR, doCenterCrop: false, cropSize: null, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] },
};
const HF_ALIASES: Record<string, string> = {
  BlipImageProcessorFast: 'BlipImageProcessor',
  CLIPImageProcessorFast: 'CLIPImageProcessor',
  CLIPFeatureExtractor: 'CLIPImageProcessor',
  ViTImageProcessorFast: 'ViTImageProcessor',
  ViTFeatureExtractor: 'ViTImageProcessor',
};

/**
 * Builds a recipe from the JSON of a Hugging Face `preprocessor_config.json`, with the class
 * defaults of `image_processor_type` (or the legacy `feature_extractor_type`) for missing keys.
 * Follows the slow (PIL) processors. `source` names the file in errors.
 */
export function preprocessFromHfConfig(json: unknown, source = 'preprocessor_config.json'): PreprocessConfig {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw invalid(source, 'a JSON object', json);
  const j = json as Record<string, unknown>;
  const key = (k: string) => `${source}: ${k}`;
  const typeName = (j.image_processor_type ?? j.feature_extractor_type) as unknown;
  let defaults: HfDefaults | undefined;
  if (typeName !== undefined) {
    if (typeof typeName !== 'string') throw invalid(key('image_processor_type'), 'a string', typeName);
    defaults = HF_DEFAULTS[HF_ALIASES[typeName] ?? typeName];
  }
  const flag = (k: string, fallback: boolean): boolean => (j[k] === undefined || j[k] === null ? fallback : expectBoolean(key(k), j[k]));
  const required = (k: string, what: string): never => {
    throw new RoundtripError(
      `${source}: ${k}: expected ${what}, got nothing (the key is missing and image processor type ${describe(typeName)} has no known default; known: ${Object.keys(HF_DEFAULTS).join(', ')})`,
    );
  };

  const doResize = flag('do_resize', true);
  let resizeSpec: ResizeSpec | null = null;
  if (doResize) {
    const size = j.size;
    if (size === undefined || size === null) {
      resizeSpec = defaults ? defaults.size : required('size', '{height, width} or {shortest_edge}');
    } else if (typeof size === 'number') {
      const n = expectInteger(key('size'), size, { min: 1 });
      // transformers get_size_dict: an int is square for BLIP/ViT, a shortest edge for CLIP.
      resizeSpec = (defaults?.squareIntSize ?? true) ? { height: n, width: n } : { shortestEdge: n };
    } else if (typeof size === 'object' && !Array.isArray(size)) {
      const s = size as Record<string, unknown>;
      if (s.shortest_edge !== undefined) resizeSpec = { shortestEdge: expectInteger(key('size.shortest_edge'), s.shortest_edge, { min: 1 }) };
      else if (s.height !== undefined || s.width !== undefined) resizeSpec = expectSize(key('size'), s);
      else throw invalid(key('size'), '{height, width} or {shortest_edge} (longest_edge alone is not supported)', size);
    } else {
      throw invalid(key('size'), 'an integer or {height, width} or {shortest_edge}', size);
    }
  }

  const resample = j.resample === undefined || j.resample === null ? (defaults?.resample ?? Resample.BILINEAR) : parseResample(key('resample'), j.resample);

  const doCenterCrop = flag('do_center_crop', defaults?.doCenterCrop ?? false);
  let centerCrop: Size | null = null;
  if (doCenterCrop) {
    const c = j.crop_size;
    if (c === undefined || c === null) centerCrop = defaults?.cropSize ?? required('crop_size', '{height, width}');
    else if (typeof c === 'number') {
      const n = expectInteger(key('crop_size'), c, { min: 1 });
      centerCrop = { height: n, width: n };
    } else centerCrop = expectSize(key('crop_size'), c);
  }

  const doRescale = flag('do_rescale', true);
  const factor = j.rescale_factor === undefined || j.rescale_factor === null ? 1 / 255 : expectNumber(key('rescale_factor'), j.rescale_factor, { min: 0, exclusiveMin: true });

  const doNormalize = flag('do_normalize', true);
  let normalize: PreprocessConfig['normalize'] = null;
  if (doNormalize) {
    const mean = j.image_mean === undefined || j.image_mean === null ? (defaults?.mean ?? required('image_mean', 'an array of 3 numbers')) : expectTriple(key('image_mean'), j.image_mean, false);
    const std = j.image_std === undefined || j.image_std === null ? (defaults?.std ?? required('image_std', 'an array of 3 numbers')) : expectTriple(key('image_std'), j.image_std, true);
    normalize = { mean: [...mean], std: [...std] };
  }
  // do_convert_rgb: images are always decoded to RGB here, so the flag is only type-checked.
  flag('do_convert_rgb', true);

  return validatePreprocessConfig({
    ...BASE,
    name: typeof typeName === 'string' ? typeName : source,
    resize: resizeSpec,
    resample,
    centerCrop,
    cropRounding: 'floor',
    rescale: doRescale ? { op: 'multiply', factor } : null,
    normalize,
  });
}

/** Reads a `preprocessor_config.json` file; errors name the file. */
export async function loadHfPreprocessConfig(path: string): Promise<PreprocessConfig> {
  return preprocessFromHfConfig(await readJsonFileAsync(path, { what: 'preprocessor config' }), path);
}
