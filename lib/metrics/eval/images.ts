/**
 * Image evaluation: FID (generated folder vs a reference folder or a saved statistics file), the
 * Inception Score of the generated images, and CLIP / DINO distances between paired images.
 *
 * - FID / IS follow torch-fidelity 0.4.0: uint8 images into the FID InceptionV3 (TF-1 bilinear
 *   resize to 299 inside the network), pool3 features (2048) for FID, `logits_unbiased` for IS;
 *   FID in the eigenvalue form of 0.4.0 by default (`fidForm: 'sqrtm'` gives 0.3.0 / pytorch-fid);
 *   IS with 10 splits and torch-fidelity's shuffle `np.random.RandomState(2020).permutation(N)`.
 * - Images in a folder: png/jpg/jpeg, not recursive, sorted by name (torch-fidelity's default).
 *   torch-fidelity needs equally sized images; here each run of equally sized images in a batch
 *   goes through the network together, which gives the same features.
 * - CLIP / DINO: each generated image is paired with the reference image of the same file name;
 *   distance = 1 − cos of the image embeddings. CLIP: 'pooled' (default, vision pooler_output)
 *   or 'projected' (image_embeds), preprocessing from the folder's preprocessor_config.json or
 *   CLIPImageProcessor defaults at the model's image size. DINO: CLS token after the final norm at
 *   384×384 (bilinear resize, ImageNet normalisation) with the original DINO position-embedding
 *   interpolation, as the paper's authors ran facebook/dino-vitb8.
 * - FID statistics of every image set are cached under `$ROUNDTRIP_HOME/fid` (or
 *   `~/.cache/roundtrip/fid`), keyed by file names + sizes + mtimes + model id + feature layer,
 *   so repeated evaluations against the same reference folder skip its features.
 * - Under `roundtrip launch` / torchrun (`split`), the feature passes are split by whole batches among the
 *   ranks and gathered (./distributed.ts); rank 0 computes the numbers, writes the cache and the output.
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { RoundtripError, expectBoolean, expectInteger, expectOneOf, expectString, invalid } from '../../errors';
import { PreprocessConfig, RgbImage, clipPreprocess, dinoPreprocess, loadHfPreprocessConfig, loadImage, prefetchBatches, prefetchMap } from '../../image';
import { FidStatistics, FrechetForm, fidStatistics, frechetDistance, inceptionScore, loadFidStatistics, saveFidStatistics } from '..';
import { ClipModel, EmbeddingVariant, cosineDistance, rows } from '../../models/clip';
import { InceptionModel } from '../../models/inception';
import { PosInterpolation, VitModel } from '../../models/vit';
import { Progress, createProgress } from '../../progress';
import { Tensor, noGrad, scope } from '../../runtime/tensor';
import { ImageFile, imageSetKey, listImages, pairByName } from './image-sets';
import { numpyPermutation } from './mt19937';
import { EvalSplit, gatherRows, isMainRank, ownedItems } from './distributed';
import { CONFIG_DEFAULTS, configInt } from '../../models/config-defaults';

export const IMAGE_EVAL_METRICS = ['fid', 'is', 'clip', 'dino'] as const;
export type ImageEvalMetric = (typeof IMAGE_EVAL_METRICS)[number];
export const DEFAULT_IMAGE_EVAL_METRICS: readonly ImageEvalMetric[] = ['fid', 'is'];
/** Defaults of evaluateImages (torch-fidelity 0.4's), shown by `roundtrip eval images --help`. */
export const IMAGE_EVAL_DEFAULTS = { batchSize: 32, fidForm: 'torch-fidelity-0.4', fidFeature: '2048', isSplits: 10, clipVariant: 'pooled', dinoSize: 384 } as const;
/** Inception feature layers torch-fidelity offers for FID (`feature_layer_fid`). */
export const FID_FEATURE_LAYERS = ['2048', '768', '192', '64'] as const;
export type FidFeatureLayer = (typeof FID_FEATURE_LAYERS)[number];
export const FID_FORMS: readonly FrechetForm[] = ['torch-fidelity-0.4', 'sqrtm'];
/** Version of the feature pipeline; part of the cache key. */
const PIPELINE_ID = 'torch-fidelity-inception-v3-compat';

/** A loaded Inception network and the id that names its weights in cache keys. */
export interface InceptionSource {
  model: InceptionModel;
  id: string;
}

export interface EvaluateImagesOptions {
  /** Folder of generated images. */
  generated: string;
  /** Folder of reference images, or a FID statistics file (saveFidStatistics format). */
  reference?: string;
  /** Metric names (array or comma-separated); default fid, is. */
  metrics?: readonly string[] | string;
  /**
   * Inception weights: a safetensors conversion of pt_inception-2015-12-05-6726825d.pth, a folder
   * holding one, 'formula:TAG' (the fixtures' deterministic untrained weights — tests only), or a
   * loaded network with its id (not disposed here).
   */
  inception?: string | InceptionSource;
  /** Hugging Face CLIP folder or a loaded model (not disposed here). */
  clip?: string | ClipModel;
  clipVariant?: EmbeddingVariant;
  /** transformers ViT/DINO folder, an original DINO .safetensors file, or a loaded model. */
  dino?: string | VitModel;
  /** DINO input size (default 384). */
  dinoSize?: number;
  /** Position-embedding interpolation: 'dino' (default, original DINO code) or 'hf'. */
  dinoInterpolation?: PosInterpolation;
  /** Images per model call (default 32). */
  batchSize?: number;
  fidForm?: FrechetForm;
  fidFeature?: FidFeatureLayer;
  isSplits?: number;
  /** Use torch-fidelity's RandomState(2020) shuffle before splitting (default true). */
  isShuffle?: boolean;
  /** Read/write cached FID statistics (default true). */
  cache?: boolean;
  /** Cache folder (default $ROUNDTRIP_HOME/fid or ~/.cache/roundtrip/fid). */
  cacheDir?: string;
  device?: string;
  /** Progress bars on stderr (default true; ROUNDTRIP_QUIET silences them). */
  progress?: boolean;
  /**
   * Several processes share the feature passes (./distributed.ts); every rank must call with the same
   * options. Only rank 0's result is complete: the others stop after their share of the work.
   */
  split?: EvalSplit;
}

export type CacheStatus = 'hit' | 'miss' | 'off' | 'file';

export interface ImageEvaluation {
  metrics: ImageEvalMetric[];
  generated: { folder: string; images: number };
  reference?: { folder?: string; statsFile?: string; images: number };
  fid?: {
    value: number;
    form: FrechetForm;
    feature: FidFeatureLayer;
    diffDotDiff: number;
    traceSigma1: number;
    traceSigma2: number;
    traceCovmean: number;
    cache: { generated: CacheStatus; reference: CacheStatus };
  };
  is?: { mean: number; std: number; splits: number; shuffle: boolean; perSplit: number[] };
  clip?: { mean: number; variant: EmbeddingVariant; perImage: { file: string; distance: number }[] };
  dino?: { mean: number; size: number; interpolation: PosInterpolation; perImage: { file: string; distance: number }[] };
  /** Images run through each network in this call (cache hits run none). */
  featurePasses: { inception: number; clip: number; dino: number };
  warnings: string[];
}

/** Default cache folder for FID statistics. */
export function fidCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.ROUNDTRIP_HOME ? path.resolve(env.ROUNDTRIP_HOME, 'fid') : path.join(os.homedir(), '.cache', 'roundtrip', 'fid');
}

/** Parses a metric list (array or "a,b"), checking names; duplicates are dropped. */
export function parseImageMetrics(metrics: readonly string[] | string | undefined, flag = '--metrics'): ImageEvalMetric[] {
  if (metrics === undefined) return [...DEFAULT_IMAGE_EVAL_METRICS];
  const list = typeof metrics === 'string' ? metrics.split(',').map((m) => m.trim()).filter((m) => m !== '') : metrics;
  if (!Array.isArray(list) || list.length === 0) throw invalid(flag, `a non-empty list of ${IMAGE_EVAL_METRICS.join(', ')}`, metrics);
  const out: ImageEvalMetric[] = [];
  for (const m of list) {
    const name = expectOneOf(`${flag} entry`, typeof m === 'string' ? m.toLowerCase() : m, IMAGE_EVAL_METRICS);
    if (!out.includes(name)) out.push(name);
  }
  return out;
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  await new Promise<void>((resolve, reject) => {
    fs.createReadStream(file)
      .on('data', (c) => h.update(c))
      .on('end', () => resolve())
      .on('error', (err) => reject(new RoundtripError(`${file}: cannot read: ${err.message}`)));
  });
  return h.digest('hex');
}

/** Loads the Inception network named by `spec` (see EvaluateImagesOptions.inception). */
export async function loadInception(spec: string, opts: { device?: string } = {}): Promise<InceptionSource> {
  expectString('--inception', spec);
  const formula = /^formula:(.+)$/.exec(spec);
  if (formula) return { model: await InceptionModel.fromFormula(formula[1], { device: opts.device }), id: `formula:${formula[1]}` };
  let file = spec;
  if (!fs.existsSync(spec)) throw new RoundtripError(`--inception: ${spec} does not exist (expected the FID Inception weights as .safetensors, or a folder holding them)`);
  if (fs.statSync(spec).isDirectory()) {
    const found = fs.readdirSync(spec).filter((f) => f.endsWith('.safetensors'));
    const preferred = found.length === 1 ? found : found.filter((f) => /inception/i.test(f));
    if (preferred.length !== 1) {
      throw new RoundtripError(`--inception: ${spec} holds ${found.length ? found.join(', ') : 'no .safetensors file'}; expected exactly one Inception weight file (name it *inception*.safetensors or pass the file)`);
    }
    file = path.join(spec, preferred[0]);
  }
  const model = await InceptionModel.load(file, { device: opts.device });
  return { model, id: `sha256:${await sha256File(file)}` };
}

function progressFor(label: string, total: number, enabled: boolean): Progress | undefined {
  return enabled ? createProgress({ label, total, unit: 'image' }) : undefined;
}

/** uint8 HWC images of one size → NCHW uint8 tensor. */
function uint8Batch(images: RgbImage[]): Tensor {
  const { width: w, height: h } = images[0];
  const plane = w * h;
  const data = new Uint8Array(images.length * 3 * plane);
  images.forEach((img, b) => {
    const base = b * 3 * plane;
    const src = img.data;
    for (let p = 0, s = 0; p < plane; p++, s += 3) {
      data[base + p] = src[s];
      data[base + plane + p] = src[s + 1];
      data[base + 2 * plane + p] = src[s + 2];
    }
  });
  return Tensor.fromTypedArray(data, [images.length, 3, h, w], 'uint8');
}

/** Inception features (and optionally unbiased logits) of image files, in file order. */
async function inceptionFeatures(
  model: InceptionModel,
  files: readonly ImageFile[],
  opts: { layer: FidFeatureLayer; logits: boolean; batchSize: number; progress?: Progress },
): Promise<{ features: Float32Array; dim: number; logits?: Float32Array; classes: number }> {
  let features: Float32Array | undefined;
  let logits: Float32Array | undefined;
  let dim = 0;
  let classes = 0;
  let row = 0;
  const run = async (images: RgbImage[]): Promise<void> => {
    await scope(async () => {
      const out = await model.forward(uint8Batch(images));
      const f = out[`feature.${opts.layer}`];
      if (!f) throw new RoundtripError(`inception network: no output feature.${opts.layer}`);
      const fd = f.toFloat32Array();
      if (!features) {
        dim = f.shape[1];
        features = new Float32Array(files.length * dim);
      }
      features.set(fd, row * dim);
      if (opts.logits) {
        const l = out['feature.logits_unbiased'];
        const ld = l.toFloat32Array();
        if (!logits) {
          classes = l.shape[1];
          logits = new Float32Array(files.length * classes);
        }
        logits.set(ld, row * classes);
      }
      row += images.length;
    });
  };
  await noGrad(async () => {
    let pending: RgbImage[] = [];
    const flush = async () => {
      // equally sized runs share one call (the network resizes each batch to 299 × 299)
      let start = 0;
      for (let i = 1; i <= pending.length; i++) {
        if (i === pending.length || pending[i].width !== pending[start].width || pending[i].height !== pending[start].height) {
          await run(pending.slice(start, i));
          start = i;
        }
      }
      opts.progress?.tick(pending.length);
      pending = [];
    };
    for await (const img of prefetchMap(files, (f) => loadImage(f.path), 4)) {
      pending.push(img);
      if (pending.length === opts.batchSize) await flush();
    }
    if (pending.length > 0) await flush();
  });
  return { features: features!, dim, logits, classes };
}

/** Embeddings [N][D] of image files through a preprocessing recipe and a model call. */
async function imageEmbeddings(paths: string[], recipe: PreprocessConfig, batchSize: number, embed: (pixels: Tensor) => Promise<Tensor>, progress?: Progress): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  await noGrad(async () => {
    for await (const batch of prefetchBatches(paths, recipe, { batchSize })) {
      await scope(async () => {
        const pixels = Tensor.fromTypedArray(batch.tensor.data as Float32Array, batch.tensor.shape);
        out.push(...rows(await embed(pixels)));
      });
      progress?.tick(batch.paths.length);
    }
  });
  return out;
}

function mean(xs: readonly number[]): number {
  let s = 0;
  for (const x of xs) s += x;
  return s / xs.length;
}

/** Evaluates a folder of generated images; see the module comment for the protocol. */
export async function evaluateImages(opts: EvaluateImagesOptions): Promise<ImageEvaluation> {
  if (!opts || typeof opts !== 'object') throw invalid('options', 'an object with at least {generated}', opts);
  const metrics = parseImageMetrics(opts.metrics, 'metrics');
  const generatedDir = expectString('--generated', opts.generated);
  const batchSize = expectInteger('--batch', opts.batchSize ?? IMAGE_EVAL_DEFAULTS.batchSize, { min: 1 });
  // 'torch-fidelity' names the current form (0.4); a layer may come as a number (2048) from a parsed command line.
  const fidForm = expectOneOf('--fid-form', (opts.fidForm as string | undefined) === 'torch-fidelity' ? 'torch-fidelity-0.4' : (opts.fidForm ?? IMAGE_EVAL_DEFAULTS.fidForm), FID_FORMS);
  const layer = expectOneOf('--fid-feature', String(opts.fidFeature ?? IMAGE_EVAL_DEFAULTS.fidFeature), FID_FEATURE_LAYERS);
  const isSplits = expectInteger('--is-splits', opts.isSplits ?? IMAGE_EVAL_DEFAULTS.isSplits, { min: 1 });
  const isShuffle = expectBoolean('isShuffle', opts.isShuffle ?? true);
  const useCache = expectBoolean('cache', opts.cache ?? true);
  const showProgress = expectBoolean('progress', opts.progress ?? true);
  const clipVariant = expectOneOf('--clip-variant', opts.clipVariant ?? IMAGE_EVAL_DEFAULTS.clipVariant, ['pooled', 'projected'] as const);
  const dinoSize = expectInteger('--dino-size', opts.dinoSize ?? IMAGE_EVAL_DEFAULTS.dinoSize, { min: 1 });
  const dinoInterpolation = expectOneOf('--dino-interpolation', opts.dinoInterpolation ?? 'dino', ['dino', 'hf'] as const);
  const cacheDir = opts.cacheDir ?? fidCacheDir();
  const split = opts.split;
  const main = isMainRank(split);

  const needsInception = metrics.includes('fid') || metrics.includes('is');
  const paired = metrics.includes('clip') || metrics.includes('dino');
  // What each metric needs, checked before any work.
  if (metrics.includes('fid') && opts.reference === undefined) throw new RoundtripError('metric fid needs --reference (a folder of reference images or a FID statistics file)');
  if (needsInception && opts.inception === undefined) throw new RoundtripError('metrics fid/is need the FID Inception weights: pass --inception FILE (pt_inception-2015-12-05 converted to safetensors)');
  if (metrics.includes('clip') && opts.clip === undefined) throw new RoundtripError('metric clip needs --clip MODEL_DIR (a Hugging Face CLIP folder)');
  if (metrics.includes('dino') && opts.dino === undefined) throw new RoundtripError('metric dino needs --dino MODEL_DIR_OR_FILE (facebook/dino-vitb8)');

  const generated = listImages(generatedDir, '--generated');
  let referenceFiles: ImageFile[] | undefined;
  let referenceStatsFile: string | undefined;
  if (opts.reference !== undefined) {
    const ref = expectString('--reference', opts.reference);
    if (!fs.existsSync(ref)) throw new RoundtripError(`--reference: ${ref} does not exist (expected a folder of images or a FID statistics file)`);
    if (fs.statSync(ref).isDirectory()) referenceFiles = listImages(ref, '--reference');
    else referenceStatsFile = ref;
  }
  if (paired && !referenceFiles) throw new RoundtripError('metrics clip/dino compare image pairs: --reference must be a folder of images with the same file names');
  const pairs = paired ? pairByName(generated, referenceFiles!) : [];

  const result: ImageEvaluation = {
    metrics,
    generated: { folder: path.resolve(generatedDir), images: generated.length },
    featurePasses: { inception: 0, clip: 0, dino: 0 },
    warnings: [],
  };
  if (referenceFiles) result.reference = { folder: path.resolve(opts.reference!), images: referenceFiles.length };

  // ---- FID / IS
  if (needsInception) {
    if (metrics.includes('is') && generated.length < isSplits) throw invalid('--is-splits', `at most the number of generated images (${generated.length})`, isSplits);
    let inception: InceptionSource;
    const ownsInception = typeof opts.inception === 'string';
    if (ownsInception) inception = await loadInception(opts.inception as string, { device: opts.device });
    else {
      inception = opts.inception as InceptionSource;
      if (!inception || !(inception.model instanceof InceptionModel) || typeof inception.id !== 'string') throw invalid('inception', 'a weights path or {model: InceptionModel, id: string}', opts.inception);
    }
    try {
      const modelId = `${PIPELINE_ID}/${inception.id}`;
      const statsFor = async (files: ImageFile[], label: string, wantLogits: boolean): Promise<{ stats?: FidStatistics; logits?: Float32Array; classes: number; cache: CacheStatus }> => {
        const cacheFile = path.join(cacheDir, `${imageSetKey(files, modelId, layer)}.fidstats`);
        let cached: FidStatistics | undefined;
        if (useCache && !wantLogits && fs.existsSync(cacheFile)) {
          try {
            cached = loadFidStatistics(cacheFile);
          } catch {
            // unreadable cache entry (e.g. an interrupted older version): recompute and overwrite it
          }
        }
        if (split) {
          // The ranks take the same path (their caches may differ across machines): all hit, or all compute.
          const hits = new Float64Array([cached ? 1 : 0]);
          await split.sum(hits);
          if (hits[0] !== split.worldSize) cached = undefined;
        }
        if (cached) return { stats: cached, classes: 0, cache: 'hit' };
        if (files.length < 2 && metrics.includes('fid')) throw new RoundtripError(`FID needs at least 2 images in ${label} (a covariance), found ${files.length}`);
        const owned = ownedItems(files.length, batchSize, split);
        const progress = progressFor(`inception ${label}`, owned.length, showProgress && main);
        let out: { features: Float32Array; dim: number; logits?: Float32Array; classes: number };
        try {
          out = owned.length ? await inceptionFeatures(inception.model, owned.map((i) => files[i]), { layer, logits: wantLogits, batchSize, progress }) : { features: new Float32Array(0), dim: 0, classes: 0 };
        } finally {
          progress?.done();
        }
        if (split) {
          const table = (flat: Float32Array | undefined, dim: number) => Array.from({ length: owned.length }, (_, j) => flat!.subarray(j * dim, (j + 1) * dim));
          const flatten = (rs: Float32Array[]) => {
            const d = rs.length ? rs[0].length : 0;
            const f = new Float32Array(rs.length * d);
            rs.forEach((r, i) => f.set(r, i * d));
            return { f, d };
          };
          const feats = flatten(await gatherRows(files.length, owned, table(out.features, out.dim), split));
          const logits = wantLogits ? flatten(await gatherRows(files.length, owned, table(out.logits, out.classes), split)) : undefined;
          out = { features: feats.f, dim: feats.d, logits: logits?.f, classes: logits?.d ?? 0 };
        }
        result.featurePasses.inception += files.length;
        let stats: FidStatistics | undefined;
        if (metrics.includes('fid') && main) {
          stats = fidStatistics(out.features, files.length, out.dim);
          if (useCache) saveFidStatistics(cacheFile, stats, { modelId, feature: layer, folder: path.dirname(files[0].path), images: files.length });
        }
        return { stats, logits: out.logits, classes: out.classes, cache: useCache ? 'miss' : 'off' };
      };

      const gen = await statsFor(generated, 'generated', metrics.includes('is'));
      if (metrics.includes('is') && main) {
        const n = generated.length;
        const r = inceptionScore(gen.logits!, n, gen.classes, { splits: isSplits, permutation: isShuffle ? numpyPermutation(n, 2020) : undefined });
        result.is = { mean: r.mean, std: r.std, splits: isSplits, shuffle: isShuffle, perSplit: r.perSplit };
      }
      let refOf: { refStats: FidStatistics; refCache: CacheStatus } | undefined;
      if (metrics.includes('fid')) {
        if (referenceStatsFile) {
          const refStats = loadFidStatistics(referenceStatsFile);
          refOf = { refStats, refCache: 'file' };
          result.reference = { statsFile: path.resolve(referenceStatsFile), images: refStats.count };
        } else {
          const r = await statsFor(referenceFiles!, 'reference', false);
          refOf = { refStats: r.stats!, refCache: r.cache };
        }
      }
      // The other ranks only contributed their share of the features.
      if (metrics.includes('fid') && main) {
        const { refStats, refCache } = refOf!;
        if (refStats.dim !== gen.stats!.dim) {
          throw new RoundtripError(`--reference: the statistics have dimension ${refStats.dim}, the generated features ${gen.stats!.dim} (feature layer ${layer}); use statistics of the same layer`);
        }
        for (const [what, count] of [
          ['generated', gen.stats!.count],
          ['reference', refStats.count],
        ] as const) {
          if (count > 0 && count <= refStats.dim) {
            result.warnings.push(
              `FID: the ${what} set has ${count} images for ${refStats.dim} features, so its covariance is singular; the value is computed as torch-fidelity computes it but is strongly biased (use thousands of images), and the eigenvalue path is slow at this size`,
            );
          }
        }
        const f = frechetDistance(gen.stats!, refStats, { form: fidForm });
        result.fid = {
          value: f.fid,
          form: fidForm,
          feature: layer,
          diffDotDiff: f.diffDotDiff,
          traceSigma1: f.traceSigma1,
          traceSigma2: f.traceSigma2,
          traceCovmean: f.traceCovmean,
          cache: { generated: gen.cache, reference: refCache },
        };
      }
    } finally {
      if (ownsInception) inception.model.dispose();
    }
  }

  // ---- paired embedding distances
  const pairedDistances = async (label: string, recipe: PreprocessConfig, embed: (pixels: Tensor) => Promise<Tensor>): Promise<{ file: string; distance: number }[]> => {
    const paths = [...pairs.map((p) => p.generated.path), ...pairs.map((p) => p.reference.path)];
    const owned = ownedItems(paths.length, batchSize, split);
    const progress = progressFor(label, owned.length, showProgress && main);
    let vecs: Float32Array[];
    try {
      vecs = owned.length ? await imageEmbeddings(owned.map((i) => paths[i]), recipe, batchSize, embed, progress) : [];
    } finally {
      progress?.done();
    }
    vecs = await gatherRows(paths.length, owned, vecs, split);
    return pairs.map((p, i) => ({ file: p.generated.name, distance: cosineDistance(vecs[i], vecs[pairs.length + i]) }));
  };

  if (metrics.includes('clip')) {
    const owned = typeof opts.clip === 'string';
    const clip = owned ? await ClipModel.load(opts.clip as string, { device: opts.device }) : (opts.clip as ClipModel);
    try {
      if (!clip.hasVision) throw new RoundtripError('--clip: this CLIP folder has no vision tower (a text-only model); pass a full CLIPModel folder');
      const vision = clip.config.vision_config ?? {};
      const ppFile = owned ? path.join(opts.clip as string, 'preprocessor_config.json') : undefined;
      const recipe = ppFile && fs.existsSync(ppFile) ? await loadHfPreprocessConfig(ppFile) : clipPreprocess(configInt(vision, ['image_size'], CONFIG_DEFAULTS.clip.imageSize, 'CLIP vision config'));
      const perImage = await pairedDistances('clip', recipe, (px) => clip.encodeImage(px, { variant: clipVariant }));
      result.featurePasses.clip += 2 * pairs.length;
      result.clip = { mean: mean(perImage.map((p) => p.distance)), variant: clipVariant, perImage };
    } finally {
      if (owned) clip.dispose();
    }
  }

  if (metrics.includes('dino')) {
    const owned = typeof opts.dino === 'string';
    let dino: VitModel;
    if (owned) {
      const spec = opts.dino as string;
      if (!fs.existsSync(spec)) throw new RoundtripError(`--dino: ${spec} does not exist (expected a ViT/DINO folder or an original DINO .safetensors file)`);
      dino = fs.statSync(spec).isDirectory() ? await VitModel.load(spec, { device: opts.device }) : await VitModel.loadDinoOriginal(spec, { device: opts.device });
    } else dino = opts.dino as VitModel;
    try {
      const perImage = await pairedDistances('dino', dinoPreprocess(dinoSize), (px) => dino.cls(px, { interpolation: dinoInterpolation }));
      result.featurePasses.dino += 2 * pairs.length;
      result.dino = { mean: mean(perImage.map((p) => p.distance)), size: dinoSize, interpolation: dinoInterpolation, perImage };
    } finally {
      if (owned) dino.dispose();
    }
  }
  return result;
}

/** Plain-text summary of an image evaluation. */
export function formatImageEvaluation(ev: ImageEvaluation): string {
  const lines: string[] = [];
  const ref = ev.reference ? (ev.reference.folder ?? `statistics ${ev.reference.statsFile}`) : undefined;
  lines.push(`generated: ${ev.generated.folder} (${ev.generated.images} images)${ref ? `; reference: ${ref} (${ev.reference!.images} images)` : ''}`);
  if (ev.fid) lines.push(`FID   ${ev.fid.value.toFixed(4)}  (${ev.fid.form}, pool ${ev.fid.feature}; cache generated ${ev.fid.cache.generated}, reference ${ev.fid.cache.reference})`);
  if (ev.is) lines.push(`IS    ${ev.is.mean.toFixed(4)} ± ${ev.is.std.toFixed(4)}  (${ev.is.splits} splits${ev.is.shuffle ? ', RandomState(2020) shuffle' : ''})`);
  if (ev.clip) lines.push(`CLIP  ${ev.clip.mean.toFixed(4)}  (mean 1 − cos, ${ev.clip.variant} image embeddings, ${ev.clip.perImage.length} pairs)`);
  if (ev.dino) lines.push(`DINO  ${ev.dino.mean.toFixed(4)}  (mean 1 − cos of CLS at ${ev.dino.size}, ${ev.dino.interpolation} interpolation, ${ev.dino.perImage.length} pairs)`);
  for (const w of ev.warnings) lines.push(`warning: ${w}`);
  return lines.join('\n') + '\n';
}
