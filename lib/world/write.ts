/**
 * The world on disk, in the layout BLIP/LAVIS loaders and the COCO caption evaluation read:
 *
 *   dir/images/{train,val,test}/000123.png
 *   dir/coco_karpathy_train.json     [{caption, image, image_id: "world_000123"}, ...]  one entry per caption
 *   dir/coco_karpathy_{val,test}.json  [{image: "images/val/000123.png", caption: [5 strings]}, ...]
 *   dir/coco_karpathy_{val,test}_gt.json  {annotations: [{image_id, caption, id}], images: [{id}]}
 *   dir/world.json                   generator version, seed, size, counts, held-out pairs, every scene
 *
 * Image paths are relative to `dir` (as COCO's are relative to the image root). The integer COCO
 * image id of an image is its index in its split, which is also its file name (`imageIdFromPath`),
 * because the Karpathy val/test entries carry no id: evaluation code recovers it from the file name.
 *
 * world.json is written last and removed first when regenerating, so its presence means a
 * complete world; a matching world.json (format, version, seed, size, counts, captions per image)
 * with all files present is reused without writing anything.
 */
import { promises as fs } from 'fs';
import * as path from 'path';
import { encodeRgbPng, writeFileAtomic } from '../image';
import { RoundtripError, expectBoolean, expectInteger, expectString, invalid } from '../errors';
import { ProgressStream, createProgress } from '../progress';
import { CAPTIONS_PER_IMAGE, captionScene } from './captions';
import { MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, renderScene } from './render';
import { ColorShape, SPLITS, Scene, Split, generateScene, heldOutPairs, pairPools, validateScene } from './scene';
import { PALETTE } from './vocabulary';
import { readJsonFileAsync } from '../json';

/** Bumped whenever scenes, rendering or captions change for a given seed (invalidates written worlds). */
export const WORLD_GENERATOR_VERSION = 1;
/** The `format` field of world.json. */
export const WORLD_FORMAT = 'roundtrip-synthetic-world';
/** Largest count per split (file names have six digits). */
export const MAX_SPLIT_COUNT = 1_000_000;

export type WorldCounts = Record<Split, number>;

export interface WorldOptions {
  seed: number;
  counts: WorldCounts;
  /** image side in pixels; default 64 */
  size?: number;
  /** captions per image; default 5 */
  captionsPerImage?: number;
}

export interface WriteWorldOptions extends WorldOptions {
  /** PNG encodes in flight; default 4 */
  concurrency?: number;
  /** regenerate even when a matching world.json exists */
  force?: boolean;
  /** silence the progress bar (default: ROUNDTRIP_QUIET) */
  quiet?: boolean;
  /** where progress is drawn; default stderr */
  progressStream?: ProgressStream;
}

/** One image of the world: its scene, where its PNG lives (relative to the world folder) and its captions. */
export interface WorldEntry extends Scene {
  image: string;
  captions: string[];
}

/** The content of world.json. */
export interface WorldManifest {
  format: typeof WORLD_FORMAT;
  version: number;
  seed: number;
  size: number;
  counts: WorldCounts;
  captionsPerImage: number;
  /** colour–shape pairs never in train */
  heldOut: ColorShape[];
  palette: typeof PALETTE;
  /** annotation files, relative to the world folder */
  files: WorldFiles;
  entries: Record<Split, WorldEntry[]>;
}

export interface WorldFiles {
  train: string;
  val: string;
  test: string;
  valGt: string;
  testGt: string;
}

export interface WriteWorldResult {
  manifest: WorldManifest;
  /** true when an existing matching world was reused and nothing was written */
  reused: boolean;
  /** seconds spent rendering and writing (0 when reused) */
  seconds: number;
}

/** Annotation file names, relative to the world folder (BLIP's names, so BLIP-style loaders find them). */
export const WORLD_FILES: Readonly<WorldFiles> = {
  train: 'coco_karpathy_train.json',
  val: 'coco_karpathy_val.json',
  test: 'coco_karpathy_test.json',
  valGt: 'coco_karpathy_val_gt.json',
  testGt: 'coco_karpathy_test_gt.json',
};
export const WORLD_MANIFEST = 'world.json';

/** Relative image path of scene `index` of `split`: `images/test/000123.png`. */
export function worldImagePath(split: Split, index: number): string {
  return `images/${split}/${String(index).padStart(6, '0')}.png`;
}

/** The integer COCO image id of a world image path (its file name's number). */
export function imageIdFromPath(imagePath: string): number {
  expectString('image path', imagePath);
  const match = /(\d+)\.png$/.exec(imagePath);
  if (!match) throw invalid('image path', 'a world image path ending in <digits>.png', imagePath);
  return Number(match[1]);
}

/** The Karpathy-train `image_id` string of an image (BLIP uses "coco_<id>"). */
export function trainImageId(index: number): string {
  return `world_${String(index).padStart(6, '0')}`;
}

interface ResolvedOptions {
  seed: number;
  counts: WorldCounts;
  size: number;
  captionsPerImage: number;
}

function resolveOptions(options: WorldOptions): ResolvedOptions {
  if (options === null || typeof options !== 'object') throw invalid('world options', 'an object {seed, counts, size?}', options);
  const seed = expectInteger('world seed', options.seed, { min: 0, max: 0xffffffff });
  const counts = options.counts as unknown;
  if (counts === null || typeof counts !== 'object' || Array.isArray(counts)) throw invalid('world counts', 'an object {train, val, test}', counts);
  for (const key of Object.keys(counts)) {
    if (!(SPLITS as readonly string[]).includes(key)) throw invalid('world counts', `only the keys ${SPLITS.join(', ')}`, key);
  }
  const resolved = {} as WorldCounts;
  for (const split of SPLITS) resolved[split] = expectInteger(`world counts.${split}`, (counts as Record<string, unknown>)[split], { min: 0, max: MAX_SPLIT_COUNT - 1 });
  return {
    seed,
    counts: resolved,
    size: expectInteger('world size', options.size ?? 64, { min: MIN_IMAGE_SIZE, max: MAX_IMAGE_SIZE }),
    captionsPerImage: expectInteger('world captionsPerImage', options.captionsPerImage ?? CAPTIONS_PER_IMAGE, { min: 1, max: 100 }),
  };
}

/** The world's scenes and captions, in memory (no pixels): what `writeWorld` writes. */
export function generateWorld(options: WorldOptions): WorldManifest {
  const { seed, counts, size, captionsPerImage } = resolveOptions(options);
  const pools = pairPools(seed);
  const entries = {} as Record<Split, WorldEntry[]>;
  for (const split of SPLITS) {
    entries[split] = [];
    for (let index = 0; index < counts[split]; index++) {
      const scene = generateScene(seed, split, index, pools);
      entries[split].push({ ...scene, image: worldImagePath(split, index), captions: captionScene(scene, seed, captionsPerImage) });
    }
  }
  return {
    format: WORLD_FORMAT,
    version: WORLD_GENERATOR_VERSION,
    seed,
    size,
    counts,
    captionsPerImage,
    heldOut: heldOutPairs(seed),
    palette: PALETTE,
    files: { ...WORLD_FILES },
    entries,
  };
}

/** Karpathy train layout: one `{caption, image, image_id}` per caption. */
export function karpathyTrainAnnotations(entries: readonly WorldEntry[]): { caption: string; image: string; image_id: string }[] {
  return entries.flatMap((entry) => entry.captions.map((caption) => ({ caption, image: entry.image, image_id: trainImageId(entry.index) })));
}

/** Karpathy val/test layout: one `{image, caption: [...]}` per image. */
export function karpathyEvalAnnotations(entries: readonly WorldEntry[]): { image: string; caption: string[] }[] {
  return entries.map((entry) => ({ image: entry.image, caption: [...entry.captions] }));
}

/** COCO ground-truth layout: `{annotations: [{image_id, caption, id}], images: [{id}]}`; ids from file names. */
export function cocoGroundTruth(entries: readonly WorldEntry[], captionsPerImage: number): { annotations: { image_id: number; caption: string; id: number }[]; images: { id: number }[] } {
  const annotations = entries.flatMap((entry) => {
    const imageId = imageIdFromPath(entry.image);
    return entry.captions.map((caption, k) => ({ image_id: imageId, caption, id: imageId * captionsPerImage + k }));
  });
  return { annotations, images: entries.map((entry) => ({ id: imageIdFromPath(entry.image) })) };
}

async function exists(file: string): Promise<boolean> {
  try {
    await fs.stat(file);
    return true;
  } catch {
    return false;
  }
}

/** Reads and checks `dir/world.json`. Throws a RoundtripError naming the file when it is missing or malformed. */
export async function readWorld(dir: string): Promise<WorldManifest> {
  expectString('world folder', dir);
  const file = path.join(dir, WORLD_MANIFEST);
  const value: unknown = await readJsonFileAsync(file, { what: 'the world manifest', object: true });
  const manifest = value as WorldManifest;
  if (manifest.format !== WORLD_FORMAT) throw invalid(`${file}: format`, JSON.stringify(WORLD_FORMAT), manifest.format);
  expectInteger(`${file}: version`, manifest.version, { min: 1 });
  let counts: WorldCounts;
  try {
    ({ counts } = resolveOptions({ seed: manifest.seed, counts: manifest.counts, size: manifest.size, captionsPerImage: manifest.captionsPerImage }));
  } catch (error) {
    throw new RoundtripError(`${file}: ${(error as Error).message}`);
  }
  if (manifest.entries === null || typeof manifest.entries !== 'object') throw invalid(`${file}: entries`, 'an object of splits', manifest.entries);
  for (const split of SPLITS) {
    const list = manifest.entries[split];
    if (!Array.isArray(list) || list.length !== counts[split]) throw invalid(`${file}: entries.${split}`, `an array of ${counts[split]} entries`, list);
    list.forEach((entry, i) => {
      validateScene(`${file}: entries.${split}[${i}]`, entry);
      expectString(`${file}: entries.${split}[${i}].image`, entry.image);
      if (!Array.isArray(entry.captions) || entry.captions.length !== manifest.captionsPerImage || entry.captions.some((c) => typeof c !== 'string')) {
        throw invalid(`${file}: entries.${split}[${i}].captions`, `${manifest.captionsPerImage} strings`, entry.captions);
      }
    });
  }
  return manifest;
}

/** True when `dir` holds a complete world made with these options by this generator version. */
async function matchingWorld(dir: string, options: ResolvedOptions): Promise<WorldManifest | undefined> {
  if (!(await exists(path.join(dir, WORLD_MANIFEST)))) return undefined;
  let manifest: WorldManifest;
  try {
    manifest = await readWorld(dir);
  } catch {
    return undefined; // unreadable or from another format: regenerate
  }
  const same =
    manifest.version === WORLD_GENERATOR_VERSION &&
    manifest.seed === options.seed &&
    manifest.size === options.size &&
    manifest.captionsPerImage === options.captionsPerImage &&
    SPLITS.every((split) => manifest.counts[split] === options.counts[split]);
  if (!same) return undefined;
  const required = [...Object.values(WORLD_FILES), ...SPLITS.flatMap((split) => manifest.entries[split].map((entry) => entry.image))];
  for (const file of required) if (!(await exists(path.join(dir, file)))) return undefined;
  return manifest;
}

/** Removes PNGs of a previous, larger world that the new counts no longer include. */
async function removeStaleImages(dir: string, split: Split, count: number): Promise<void> {
  const folder = path.join(dir, 'images', split);
  let names: string[];
  try {
    names = await fs.readdir(folder);
  } catch {
    return;
  }
  for (const name of names) {
    const match = /^(\d{6})\.png$/.exec(name);
    if (match && Number(match[1]) >= count) await fs.rm(path.join(folder, name), { force: true });
  }
}

async function writeJson(file: string, value: unknown): Promise<void> {
  await writeFileAtomic(file, Buffer.from(JSON.stringify(value), 'utf8'));
}

/**
 * Writes the world to `dir` (see the module comment for the layout), or reuses a matching one.
 * Images are rendered and PNG-encoded with `concurrency` encodes in flight; every file is written
 * atomically.
 */
export async function writeWorld(dir: string, options: WriteWorldOptions): Promise<WriteWorldResult> {
  expectString('world folder', dir);
  const resolved = resolveOptions(options);
  const concurrency = expectInteger('world concurrency', options.concurrency ?? 4, { min: 1, max: 64 });
  const force = expectBoolean('world force', options.force ?? false);
  if (!force) {
    const existing = await matchingWorld(dir, resolved);
    if (existing) return { manifest: existing, reused: true, seconds: 0 };
  }
  const started = Date.now();
  const manifest = generateWorld(resolved);
  try {
    await fs.mkdir(dir, { recursive: true });
    // The manifest marks a complete world: it goes first and comes back last.
    await fs.rm(path.join(dir, WORLD_MANIFEST), { force: true });
    for (const split of SPLITS) {
      await fs.mkdir(path.join(dir, 'images', split), { recursive: true });
      await removeStaleImages(dir, split, resolved.counts[split]);
    }
  } catch (error) {
    if (error instanceof RoundtripError) throw error;
    throw new RoundtripError(`${dir}: cannot prepare the world folder: ${(error as Error).message}`);
  }
  const all = SPLITS.flatMap((split) => manifest.entries[split]);
  const progress = createProgress({ label: `world ${path.basename(path.resolve(dir))}`, total: all.length, unit: 'image', quiet: options.quiet, stream: options.progressStream });
  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (next < all.length && !failed) {
      const entry = all[next++];
      try {
        const png = await encodeRgbPng(renderScene(entry, resolved.size));
        await writeFileAtomic(path.join(dir, entry.image), png);
      } catch (error) {
        failed = true; // stop the other workers; the first error is the one reported
        throw error;
      }
      progress.tick();
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, Math.max(1, all.length)) }, worker));
  progress.done();
  await writeJson(path.join(dir, WORLD_FILES.train), karpathyTrainAnnotations(manifest.entries.train));
  await writeJson(path.join(dir, WORLD_FILES.val), karpathyEvalAnnotations(manifest.entries.val));
  await writeJson(path.join(dir, WORLD_FILES.test), karpathyEvalAnnotations(manifest.entries.test));
  await writeJson(path.join(dir, WORLD_FILES.valGt), cocoGroundTruth(manifest.entries.val, resolved.captionsPerImage));
  await writeJson(path.join(dir, WORLD_FILES.testGt), cocoGroundTruth(manifest.entries.test, resolved.captionsPerImage));
  await writeJson(path.join(dir, WORLD_MANIFEST), manifest);
  return { manifest, reused: false, seconds: (Date.now() - started) / 1000 };
}
