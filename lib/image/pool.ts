/**
 * Concurrent decoding + preprocessing, so a training or evaluation step does not wait on images.
 *
 * sharp decodes on libuv worker threads, so several decodes overlap each other and the caller's
 * work; the (synchronous, PIL-exact) resampling then runs on the main thread as each decode lands.
 * Results always come back in input order, and random preprocessing draws item i's randomness from
 * `deriveSeed(seed, epoch, i)`, so output is identical for any concurrency.
 */
import { RoundtripError, expectInteger, invalid } from '../errors';
import { DecodeOptions, loadImage } from './decode';
import { PreprocessConfig, isRandom, preprocessImage, stackBatch, validatePreprocessConfig } from './preprocess';
import { Rng, deriveSeed } from './random';
import { ImageTensor, RgbImage } from './types';

/** Either a recipe or a function `(image, index, rng) → CHW tensor`. */
export type Preprocessor = PreprocessConfig | ((image: RgbImage, index: number, rng: Rng | undefined) => ImageTensor);

export interface PoolOptions {
  /** decodes in flight at once; default 4 (libuv's default thread pool size) */
  concurrency?: number;
  /** seed for random recipes (crop/flip); required when the recipe is random */
  seed?: number;
  /** mixed into the per-item seed so each epoch gets new crops; default 0 */
  epoch?: number;
  decode?: DecodeOptions;
}

function makeItemFn(preprocess: Preprocessor, options: PoolOptions): (path: string, index: number) => Promise<ImageTensor> {
  let random = true;
  let apply: (image: RgbImage, index: number, rng: Rng | undefined) => ImageTensor;
  if (typeof preprocess === 'function') {
    apply = preprocess;
  } else {
    const config = validatePreprocessConfig(preprocess);
    random = isRandom(config);
    if (random && options.seed === undefined) {
      throw new RoundtripError(`preprocess "${config.name}": this recipe is random (crop/flip); pass options.seed`);
    }
    apply = (image, _index, rng) => preprocessImage(image, config, rng);
  }
  const seed = options.seed === undefined ? undefined : expectInteger('seed', options.seed);
  const epoch = expectInteger('epoch', options.epoch ?? 0, { min: 0 });
  return async (path, index) => {
    const image = await loadImage(path, options.decode);
    const rng = seed !== undefined && random ? new Rng(deriveSeed(seed, epoch, index)) : undefined;
    return apply(image, index, rng);
  };
}

/**
 * Ordered, bounded-concurrency async map: at most `concurrency` calls of `fn` run at once, results
 * are yielded in input order. An error is raised when the consumer reaches that item. Stopping the
 * iteration early (break) stops starting new work.
 */
export async function* prefetchMap<I, O>(items: Iterable<I>, fn: (item: I, index: number) => Promise<O>, concurrency: number): AsyncGenerator<O, void, undefined> {
  expectInteger('concurrency', concurrency, { min: 1 });
  const iterator = items[Symbol.iterator]();
  const pending: Promise<O>[] = [];
  let index = 0;
  let exhausted = false;
  const fill = () => {
    while (!exhausted && pending.length < concurrency) {
      const next = iterator.next();
      if (next.done) {
        exhausted = true;
        break;
      }
      const itemIndex = index;
      const promise = Promise.resolve().then(() => fn(next.value, itemIndex));
      // Rejections are re-raised when the consumer awaits this item; avoid "unhandled" warnings meanwhile.
      promise.catch(() => undefined);
      pending.push(promise);
      index++;
    }
  };
  fill();
  while (pending.length > 0) {
    const result = await (pending.shift() as Promise<O>);
    fill();
    yield result;
  }
}

function checkPaths(paths: unknown): string[] {
  if (!Array.isArray(paths) || paths.length === 0) throw invalid('paths', 'a non-empty array of image paths', paths);
  paths.forEach((p, i) => {
    if (typeof p !== 'string') throw invalid(`paths[${i}]`, 'a string', p);
  });
  return paths as string[];
}

/** Decodes and preprocesses images concurrently; returns one NCHW batch in input order. */
export async function decodeBatch(paths: string[], preprocess: Preprocessor, options: PoolOptions = {}): Promise<ImageTensor> {
  const list = checkPaths(paths);
  const concurrency = expectInteger('concurrency', options.concurrency ?? 4, { min: 1 });
  const itemFn = makeItemFn(preprocess, options);
  const tensors: ImageTensor[] = [];
  for await (const tensor of prefetchMap(list, itemFn, concurrency)) tensors.push(tensor);
  return stackBatch(tensors);
}

export interface BatchIteratorOptions extends PoolOptions {
  batchSize: number;
  /** keep the last batch when it is smaller than batchSize; default true */
  keepLast?: boolean;
}

/** One prefetched batch: the tensor and which paths (and input indices) it holds. */
export interface ImageBatch {
  tensor: ImageTensor;
  paths: string[];
  indices: number[];
}

/**
 * Async iterator over NCHW batches of `paths`, decoding up to `concurrency` images ahead of the
 * consumer, so while a training step runs on batch k the images of batch k+1 are being decoded.
 */
export async function* prefetchBatches(paths: string[], preprocess: Preprocessor, options: BatchIteratorOptions): AsyncGenerator<ImageBatch, void, undefined> {
  const list = checkPaths(paths);
  if (options === null || typeof options !== 'object') throw invalid('options', 'an object with batchSize', options);
  const batchSize = expectInteger('batchSize', options.batchSize, { min: 1 });
  const concurrency = expectInteger('concurrency', options.concurrency ?? Math.max(4, batchSize), { min: 1 });
  const keepLast = options.keepLast ?? true;
  const itemFn = makeItemFn(preprocess, options);
  const usable = keepLast ? list.length : list.length - (list.length % batchSize);
  let tensors: ImageTensor[] = [];
  let start = 0;
  let index = 0;
  for await (const tensor of prefetchMap(list.slice(0, usable), itemFn, concurrency)) {
    tensors.push(tensor);
    index++;
    if (tensors.length === batchSize || index === usable) {
      const indices = Array.from({ length: tensors.length }, (_, k) => start + k);
      yield { tensor: stackBatch(tensors), paths: indices.map((i) => list[i]), indices };
      start = index;
      tensors = [];
    }
  }
}
