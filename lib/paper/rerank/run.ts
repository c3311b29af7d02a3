/**
 * What both reranking directions share: option checking, the run folder (`run.json`,
 * `results.jsonl`, `cache/`), resume, seeds, ranking and the random baseline.
 *
 * Seeds derive from the base seed and the item's dataset index only, so an item gets the same
 * captions and images whatever the shard, the resume point or the batch it runs in:
 * BLIP sampling `deriveSeed(seed, index, 0)`, SD image of candidate j `deriveSeed(seed, index, 1, j)`,
 * baseline picks from `Rng(deriveSeed(seed, index, 2))`.
 */
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError, expectInteger, expectNumber, expectOneOf, expectString, invalid } from '../../errors';
import { Rng, deriveSeed } from '../../image/random';
import { BLIP_STRATEGIES } from '../../models/blip';
import { Captioner, loadCaptioner } from '../../models/captioner';
import { StableDiffusionPipeline } from '../../models/sd/pipeline';
import { DEFAULT_BEAMS, beamCount } from '../../models/decoding';
import { SCHEDULER_NAMES } from '../../models/sd/schedulers';
import { DataItem, Dataset, DatasetOptions, Shard, loadDataset, parseShard, selectItems } from './data';
import { appendJsonLine, checkOutputDir, cleanTempLeftovers, writeFileAtomicSync } from '../../fsutil';
import { LIMITS, checkMemory, estimateBlipGenerate, estimateSdSample, expectBounded } from '../../limits';
import { createProgress } from '../../progress';
import { readJsonFile, readJsonLines } from '../../json';
import { BlipSettings, Direction, IMAGE_SIMILARITIES, ItemRecord, RunManifest, RunSettings, SdSettings, Similarity, TEXT_SIMILARITIES } from './types';

export const RESULTS_FILE = 'results.jsonl';
export const MANIFEST_FILE = 'run.json';
export const SEEDING = 'BLIP sampling seed = deriveSeed(seed, index, 0); SD seed of candidate j = deriveSeed(seed, index, 1, j); baseline picks from Rng(deriveSeed(seed, index, 2)); index = item index in the whole dataset';

/** Options shared by `rerank i2t2i` and `rerank t2i2t` (CLI flags in brackets). */
export interface RerankOptions extends DatasetOptions {
  /** Output folder [--out]. */
  out: string;
  blip: string;
  sd: string;
  clip?: string;
  dino?: string;
  sbert?: string;
  /** GloVe/word2vec text file for WMD [--glove]. */
  glove?: string;
  /** Candidates per item [--k], default 10. */
  k?: number;
  /** BLIP decoding [--strategy]: i2t2i default top-p; t2i2t always beam (3 beams). */
  strategy?: string;
  topP?: number;
  topK?: number;
  temperature?: number;
  repetitionPenalty?: number;
  maxLength?: number;
  minLength?: number;
  numBeams?: number;
  /** SD [--scheduler --steps --guidance --size --negative]; defaults ddpm, 50, 7.5, 512, "". */
  scheduler?: string;
  steps?: number;
  guidance?: number;
  size?: number;
  negative?: string;
  /** Similarity methods [--similarity], comma-separated or a list. */
  similarity?: string | string[];
  /** CLIP embedding [--clip-variant]: projected (default) or pooled. */
  clipVariant?: string;
  /** DINO input size [--dino-size], default 384. */
  dinoSize?: number;
  seed?: number;
  /** Random baseline picks per item [--repeats], default 5. */
  repeats?: number;
  shard?: string;
  limit?: number;
  device?: string;
  /** Image cache folder [--cache], default <out>/cache. */
  cache?: string;
  /** Prompts per SD call [--sd-batch] (deterministic schedulers), default 4. */
  sdBatch?: number;
  /** Draw a progress bar on stderr. */
  progress?: boolean;
  /** Where warnings go (default console.warn). */
  onWarning?: (message: string) => void;
}

export interface RerankStats {
  out: string;
  /** Items of this shard. */
  items: number;
  /** Items computed in this call. */
  done: number;
  /** Items found finished in results.jsonl and skipped. */
  skipped: number;
  blipCalls: number;
  sdCalls: number;
  sdImages: number;
  cacheHits: number;
  warnings: string[];
}

/** Parses and checks the similarity list for a direction (defaults: clip / clip-text). */
export function parseSimilarities(value: string | string[] | undefined, direction: Direction): Similarity[] {
  const allowed: readonly string[] = direction === 'i2t2i' ? IMAGE_SIMILARITIES : TEXT_SIMILARITIES;
  const list = (value === undefined ? [direction === 'i2t2i' ? 'clip' : 'clip-text'] : Array.isArray(value) ? value : String(value).split(','))
    .map((s) => String(s).trim())
    .filter((s) => s !== '');
  if (list.length === 0) throw invalid('--similarity', `one or more of ${allowed.join(', ')}`, value);
  for (const s of list) if (!allowed.includes(s)) throw invalid('--similarity', `methods among ${allowed.join(', ')} for ${direction}`, s);
  return [...new Set(list)] as Similarity[];
}

/** Estimates the larger of an item's BLIP call and one SD call from the model configs, before loading them. */
export function checkRerankMemory(s: RunSettings, sdBatch: number): void {
  expectBounded('--sd-batch', sdBatch, LIMITS.batch);
  const read = (f: string) => (fs.existsSync(f) ? readJsonFile(f, { object: true }) : undefined);
  const blip = read(path.join(s.models.blip, 'config.json'));
  const unet = read(path.join(s.models.sd, 'unet', 'config.json'));
  const vae = read(path.join(s.models.sd, 'vae', 'config.json'));
  if (blip) {
    const rows = s.direction === 'i2t2i' ? (s.blip.strategy === 'beam' ? Math.max(s.k, s.blip.numBeams ?? s.k) : s.k) : (s.blip.numBeams ?? 3);
    const batch = s.direction === 'i2t2i' ? 1 : Math.min(s.k, sdBatch);
    checkMemory(`rerank: BLIP with --k ${s.k}`, estimateBlipGenerate(blip, { batch, rows, maxLength: s.blip.maxLength }), 'lower --k');
  }
  if (unet && vae) {
    checkMemory(`rerank: SD with --sd-batch ${sdBatch} at --size ${s.sd.width}`, estimateSdSample(unet, vae, { batch: Math.min(sdBatch, s.k), height: s.sd.height, width: s.sd.width, guidance: s.sd.guidance > 1 }), 'lower --sd-batch or --size');
  }
}

export const CLIP_VARIANTS = ['projected', 'pooled'] as const;

/**
 * Defaults of the options reranking and `score` share: applied here (buildSettings, sdSettings) and in
 * ReconstructionScorer, shown by the CLI's help (lib/cli/commands/rerank.ts) — one copy.
 */
export const RERANK_DEFAULTS = {
  k: 10,
  scheduler: 'ddpm',
  steps: 50,
  guidance: 7.5,
  size: 512,
  sdBatch: 4,
  clipVariant: 'projected',
  dinoSize: 384,
  maxLength: 20,
  minLength: 5,
  seed: 0,
  repeats: 5,
  strategy: 'top-p',
  device: 'cpu',
} as const;

/** The SD side of reranking and scoring (scheduler, steps, guidance, square side, negative prompt), checked by flag name. */
export function sdSettings(opts: Pick<RerankOptions, 'scheduler' | 'steps' | 'guidance' | 'size' | 'negative'>): SdSettings {
  const size = expectBounded('--size', opts.size ?? RERANK_DEFAULTS.size, LIMITS.side, 8);
  return {
    scheduler: expectOneOf('--scheduler', (opts.scheduler ?? RERANK_DEFAULTS.scheduler).toLowerCase(), SCHEDULER_NAMES),
    steps: expectInteger('--steps', opts.steps ?? RERANK_DEFAULTS.steps, { min: 1, max: 1000 }),
    guidance: expectNumber('--guidance', opts.guidance ?? RERANK_DEFAULTS.guidance),
    height: size,
    width: size,
    negative: opts.negative === undefined ? '' : expectString('--negative', opts.negative),
  };
}

/** The CLIP embedding of similarities, checked by flag name. */
export function clipVariantOf(variant: string | undefined): (typeof CLIP_VARIANTS)[number] {
  return expectOneOf('--clip-variant', variant ?? RERANK_DEFAULTS.clipVariant, CLIP_VARIANTS);
}

/** Checks the shared options and builds the settings stored in run.json. */
export function buildSettings(direction: Direction, opts: RerankOptions, dataset: Dataset): RunSettings {
  const k = expectBounded('--k', opts.k ?? RERANK_DEFAULTS.k, LIMITS.k);
  const similarity = parseSimilarities(opts.similarity, direction);
  const clipVariant = clipVariantOf(opts.clipVariant);
  const needs: Record<string, keyof RerankOptions> = { clip: 'clip', dino: 'dino', 'clip-text': 'clip', sbert: 'sbert', wmd: 'glove' };
  for (const s of similarity) {
    const flag = needs[s];
    if (flag && !opts[flag]) throw new RoundtripError(`--similarity ${s} needs --${flag}`);
  }
  const sd = sdSettings(opts);
  return {
    direction,
    models: {
      blip: path.resolve(expectString('--blip', opts.blip)),
      sd: path.resolve(expectString('--sd', opts.sd)),
      ...(opts.clip ? { clip: path.resolve(opts.clip) } : {}),
      ...(opts.dino ? { dino: path.resolve(opts.dino) } : {}),
      ...(opts.sbert ? { sbert: path.resolve(opts.sbert) } : {}),
      ...(opts.glove ? { glove: path.resolve(opts.glove) } : {}),
    },
    similarity,
    clipVariant,
    ...(similarity.includes('dino') ? { dinoSize: expectInteger('--dino-size', opts.dinoSize ?? RERANK_DEFAULTS.dinoSize, { min: 8 }) } : {}),
    k,
    seed: expectInteger('--seed', opts.seed ?? RERANK_DEFAULTS.seed, { min: 0, max: 0xffffffff }),
    repeats: expectInteger('--repeats', opts.repeats ?? RERANK_DEFAULTS.repeats, { min: 1 }),
    blip: blipSettings(direction, opts, k),
    sd,
    dataset: { kind: dataset.kind, source: dataset.source, items: dataset.items.length },
    seeding: SEEDING,
  };
}

function blipSettings(direction: Direction, opts: RerankOptions, k: number): BlipSettings {
  const maxLength = expectInteger('--max-length', opts.maxLength ?? RERANK_DEFAULTS.maxLength, { min: 2 });
  const minLength = expectInteger('--min-length', opts.minLength ?? RERANK_DEFAULTS.minLength, { min: 0 });
  if (direction === 't2i2t') {
    // the paper captions each generated image with beam search (3 beams)
    const numBeams = expectBounded('--num-beams', opts.numBeams ?? DEFAULT_BEAMS.blip, LIMITS.beams);
    return { strategy: 'beam', numBeams, repetitionPenalty: expectNumber('--repetition-penalty', opts.repetitionPenalty ?? 1, { min: 0, exclusiveMin: true }), maxLength, minLength };
  }
  const strategy = expectOneOf('--strategy', opts.strategy ?? RERANK_DEFAULTS.strategy, BLIP_STRATEGIES);
  // BLIP's released sampling: nucleus 0.9 with repetition penalty 1.1 (transformers' top-k 50 also applies)
  const repetitionPenalty = expectNumber('--repetition-penalty', opts.repetitionPenalty ?? (strategy === 'beam' || strategy === 'greedy' ? 1 : 1.1), { min: 0, exclusiveMin: true });
  const s: BlipSettings = { strategy, repetitionPenalty, maxLength, minLength };
  if (strategy === 'top-p') s.topP = expectNumber('--top-p', opts.topP ?? 0.9, { min: 0, max: 1, exclusiveMin: true });
  if (strategy === 'top-k') s.topK = expectInteger('--top-k', opts.topK ?? 10, { min: 1 });
  else if (opts.topK !== undefined) s.topK = expectInteger('--top-k', opts.topK, { min: 0 });
  if (strategy === 'temperature') s.temperature = expectNumber('--temperature', opts.temperature ?? 0.7, { min: 0, exclusiveMin: true });
  if (strategy === 'beam') {
    s.numBeams = expectBounded('--num-beams', beamCount(opts.numBeams, k, DEFAULT_BEAMS.blip), LIMITS.beams);
    if (k > s.numBeams) throw invalid('--k', `at most --num-beams (${s.numBeams}) with beam search`, k);
  }
  if (strategy === 'greedy' && k !== 1) throw invalid('--k', '1 with --strategy greedy (greedy decoding gives one caption)', k);
  return s;
}

/** Settings without what may legitimately differ between shards of one run. */
function comparable(s: RunSettings): string {
  return JSON.stringify({ ...s, models: { ...s.models } });
}

/** An open run folder: its items to do, the finished records, and an appender. */
export interface RunFolder {
  dir: string;
  settings: RunSettings;
  shard: Shard;
  items: DataItem[];
  finished: Map<number, ItemRecord>;
  resultsFile: string;
  cacheDir: string;
  warnings: string[];
  warn(message: string): void;
  append(record: ItemRecord): void;
}

/**
 * Processes the items still to do in order, appending each item's record (with its wall time) as soon as it
 * is done, with a progress bar; the SD cache's counters go into the stats.
 */
export async function processItems(
  run: RunFolder,
  stats: RerankStats,
  todo: RunFolder['items'],
  opts: { progress?: boolean },
  cache: { calls: number; generated: number; hits: number },
  work: (item: RunFolder['items'][number]) => Promise<ItemRecord>,
): Promise<RerankStats> {
  const progress = opts.progress ? createProgress({ label: `rerank ${run.settings.direction}`, total: run.items.length, unit: 'item', start: stats.skipped }) : undefined;
  try {
    for (const item of todo) {
      const started = Date.now();
      // An item with many candidates can take minutes: after 2 s its candidate images get their own line.
      const before = cache.generated + cache.hits;
      let inner: ReturnType<typeof createProgress> | undefined;
      const timer = opts.progress
        ? setInterval(() => {
            inner ??= createProgress({ label: `item ${item.index} candidates`, total: run.settings.k, unit: 'image' });
            inner.update(Math.min(run.settings.k, cache.generated + cache.hits - before));
          }, 2000)
        : undefined;
      let record: ItemRecord;
      try {
        record = await work(item);
      } finally {
        if (timer) clearInterval(timer);
        inner?.done();
      }
      record.seconds = (Date.now() - started) / 1000;
      run.append(record);
      stats.done++;
      progress?.tick();
    }
  } finally {
    progress?.done();
  }
  stats.sdCalls = cache.calls;
  stats.sdImages = cache.generated;
  stats.cacheHits = cache.hits;
  return stats;
}

/** Opens the run folder and lists the items still to do (a resumed run skips finished ones). */
/** The run's captioner and Stable Diffusion pipeline on `device`, each pushed onto `owned` as soon as it exists. */
export async function loadRunModels(s: RunSettings, device: string, owned: { dispose(): void }[]): Promise<{ blip: Captioner; sd: StableDiffusionPipeline }> {
  const blip = await loadCaptioner(s.models.blip, { device });
  owned.push(blip);
  const sd = await StableDiffusionPipeline.load(s.models.sd, { device });
  owned.push(sd);
  return { blip, sd };
}

/** What a direction's reranking works with: the run folder and its settings, the items left, both models. */
export interface RunContext {
  run: RunFolder;
  s: RunSettings;
  stats: RerankStats;
  todo: RunFolder['items'];
  device: string;
  blip: Captioner;
  sd: StableDiffusionPipeline;
  /** Models the direction loads besides (similarity models): disposed with the captioner and SD at the end. */
  owned: { dispose(): void }[];
}

/**
 * The start both directions share: opens (or resumes) the run folder, returns its stats when nothing is left,
 * loads the captioner and SD, runs `body`, and disposes every model in `owned` whatever happens.
 */
export async function runDirection(direction: Direction, opts: RerankOptions, body: (ctx: RunContext) => Promise<RerankStats>): Promise<RerankStats> {
  const { run, stats, todo } = beginRun(direction, opts);
  if (todo.length === 0) return stats;
  const device = opts.device ?? RERANK_DEFAULTS.device;
  const owned: { dispose(): void }[] = [];
  try {
    const { blip, sd } = await loadRunModels(run.settings, device, owned);
    return await body({ run, s: run.settings, stats, todo, device, blip, sd, owned });
  } finally {
    owned.reverse().forEach((m) => m.dispose());
  }
}

export function beginRun(direction: Direction, opts: RerankOptions): { run: RunFolder; stats: RerankStats; todo: RunFolder['items'] } {
  const run = openRunFolder(direction, opts);
  const todo = run.items.filter((it) => !run.finished.has(it.index));
  const stats: RerankStats = {
    out: run.dir,
    items: run.items.length,
    done: 0,
    skipped: run.items.length - todo.length,
    blipCalls: 0,
    sdCalls: 0,
    sdImages: 0,
    cacheHits: 0,
    warnings: run.warnings,
  };
  return { run, stats, todo };
}

/** Creates or reopens `opts.out`; refuses to mix results of different settings or shards. */
export function openRunFolder(direction: Direction, opts: RerankOptions): RunFolder {
  const dir = checkOutputDir(expectString('--out', opts.out), { flag: '--out' });
  const leftovers = cleanTempLeftovers(dir, 2);
  if (opts.k !== undefined && (!Number.isInteger(opts.k) || opts.k < 1)) throw invalid('--k', 'an integer ≥ 1 (candidates per item)', opts.k);
  const dataset = loadDataset(opts);
  if (direction === 't2i2t' && dataset.kind !== 'prompts') throw new RoundtripError('rerank t2i2t: give the input texts with --prompts FILE');
  if (direction === 'i2t2i' && dataset.kind === 'prompts') throw new RoundtripError('rerank i2t2i: give images (--annotations FILE --images DIR, or --images DIR), not --prompts');
  const settings = buildSettings(direction, opts, dataset);
  checkRerankMemory(settings, opts.sdBatch ?? RERANK_DEFAULTS.sdBatch);
  const shard = parseShard(opts.shard);
  const items = selectItems(dataset.items, { limit: opts.limit, shard });
  fs.mkdirSync(dir, { recursive: true });
  const manifestFile = path.join(dir, MANIFEST_FILE);
  if (fs.existsSync(manifestFile)) {
    const old = readJsonFile(manifestFile, { what: 'rerank manifest', object: true }) as RunManifest;
    if (comparable(old.settings) !== comparable(settings)) {
      throw new RoundtripError(`--out: ${dir} holds results of other settings (see ${manifestFile}); use another folder or the same settings to resume`);
    }
    if (old.shard.index !== shard.index || old.shard.count !== shard.count) {
      throw new RoundtripError(`--out: ${dir} holds shard ${old.shard.index}/${old.shard.count}, not ${shard.index}/${shard.count}; give each shard its own folder`);
    }
  } else {
    const manifest: RunManifest = { version: 1, settings, shard, created: new Date().toISOString() };
    writeFileAtomicSync(manifestFile, JSON.stringify(manifest, null, 2) + '\n');
  }
  const resultsFile = path.join(dir, RESULTS_FILE);
  const finished = new Map<number, ItemRecord>();
  for (const r of readJsonLines<ItemRecord>(resultsFile, { repair: true })) finished.set(r.index, r);
  const warnings: string[] = [];
  const sink = opts.onWarning ?? ((m: string) => console.warn(`warning: ${m}`));
  const warn = (m: string) => {
    warnings.push(m);
    sink(m);
  };
  dataset.warnings.forEach(warn);
  if (leftovers.length) warn(`removed ${leftovers.length} temporary file(s) left by an interrupted write in ${dir}`);
  const cacheDir = path.resolve(opts.cache ?? path.join(dir, 'cache'));
  return { dir, settings, shard, items, finished, resultsFile, cacheDir, warnings, warn, append: (r) => appendJsonLine(resultsFile, r) };
}

/** Seeds of an item (see module comment). */
export function blipSeed(seed: number, index: number): number {
  return deriveSeed(seed, index, 0);
}
export function sdSeed(seed: number, index: number, candidate: number): number {
  return deriveSeed(seed, index, 1, candidate);
}

/** R random candidate indices in [0, K), seeded by the item. */
export function baselinePicks(seed: number, index: number, k: number, repeats: number): number[] {
  const rng = new Rng(deriveSeed(seed, index, 2));
  return Array.from({ length: repeats }, () => rng.int(0, k));
}

/** Ranks 1..K by ascending distance (ties: lower candidate index first); NaN ranks last. */
export function ranksOf(distances: readonly number[]): number[] {
  const order = distances.map((d, j) => j).sort((a, b) => {
    const da = Number.isNaN(distances[a]) ? Infinity : distances[a];
    const db = Number.isNaN(distances[b]) ? Infinity : distances[b];
    return da - db || a - b;
  });
  const ranks = new Array<number>(distances.length);
  order.forEach((j, r) => (ranks[j] = r + 1));
  return ranks;
}

/** Path of `file` relative to the run folder, with forward slashes (portable in JSONL and HTML). */
export function relativeTo(dir: string, file: string): string {
  return path.relative(dir, file).split(path.sep).join('/');
}
