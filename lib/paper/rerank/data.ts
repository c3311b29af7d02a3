/**
 * Datasets for reranking: COCO Karpathy annotations (+ the user's image folder), NoCaps image
 * lists (+ an optional captions file), a plain image folder, and prompt files (the seed release's
 * `[{image, caption}]` layout, or plain text with one prompt per line).
 *
 * Missing images: an annotation file lists images the user may not have downloaded in full. They
 * are skipped with one warning that lists them (the first 20 and a count); when none is present
 * the load fails, naming the folder. Sharding (`i/n`) keeps items i, i+n, … of the (limited) list,
 * and every item keeps its dataset index, from which its seeds are derived.
 */
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError, expectInteger, invalid } from '../../errors';
import { listImages } from '../../metrics/eval/image-sets';
import { ImageId, karpathyImageId, loadCaptionAnnotations } from '../../metrics/annotations';
import { readJsonFile } from '../../json';

export interface DataItem {
  /** Index in the whole dataset (before sharding); seeds derive from it. */
  index: number;
  id: string;
  /** Absolute image path (i2t2i input; for t2i2t the real image paired with the prompt, when present). */
  image?: string;
  /** Input text (t2i2t). */
  text?: string;
  /** Reference captions (i2t2i: human captions; t2i2t: the input text itself). */
  references: string[];
}

export interface Dataset {
  kind: 'karpathy' | 'nocaps' | 'folder' | 'prompts';
  source: string;
  items: DataItem[];
  warnings: string[];
}

export interface DatasetOptions {
  /** Karpathy/COCO-style annotation file, or a NoCaps image list. */
  annotations?: string;
  /** Image folder (root of the annotation paths, or a plain folder on its own). */
  images?: string;
  /** NoCaps/COCO captions for an image list (COCO ground-truth or Karpathy layout), keyed by image id. */
  captions?: string;
  /** Prompt file (t2i2t). */
  prompts?: string;
}

export interface Shard {
  index: number;
  count: number;
}

/** Parses `i/n` (0 ≤ i < n). */
export function parseShard(text: string | undefined, flag = '--shard'): Shard {
  if (text === undefined) return { index: 0, count: 1 };
  const m = /^(\d+)\/(\d+)$/.exec(String(text).trim());
  if (!m) throw invalid(flag, 'i/n with 0 ≤ i < n (e.g. 0/4)', text);
  const index = Number(m[1]);
  const count = Number(m[2]);
  if (count < 1 || index >= count) throw invalid(flag, 'i/n with 0 ≤ i < n (e.g. 0/4)', text);
  return { index, count };
}

/** The first `limit` items, then every n-th from i. */
export function selectItems(items: readonly DataItem[], opts: { limit?: number; shard?: Shard } = {}): DataItem[] {
  const limit = opts.limit === undefined ? items.length : expectInteger('--limit', opts.limit, { min: 1 });
  const shard = opts.shard ?? { index: 0, count: 1 };
  return items.slice(0, limit).filter((it) => it.index % shard.count === shard.index);
}

function readJson(file: string, flag: string): unknown {
  if (!fs.existsSync(file)) throw new RoundtripError(`${flag}: ${file} does not exist`);
  return readJsonFile(file, { what: flag });
}

function missingWarning(missing: string[], folder: string): string {
  const shown = missing.slice(0, 20).join(', ');
  return `${missing.length} image(s) listed in the annotations are not in ${folder} and are skipped: ${shown}${missing.length > 20 ? ', …' : ''}`;
}

/** Keeps the items whose image exists; warns about the others; fails when none is left. */
function keepPresent(items: DataItem[], folder: string, warnings: string[]): DataItem[] {
  const present = items.filter((it) => it.image && fs.existsSync(it.image));
  const missing = items.filter((it) => !it.image || !fs.existsSync(it.image)).map((it) => it.image ?? it.id);
  if (present.length === 0) throw new RoundtripError(`--images: none of the ${items.length} image(s) of the annotation file is in ${folder} (first expected: ${missing[0]})`);
  if (missing.length) warnings.push(missingWarning(missing, folder));
  return present;
}

/** Loads a dataset for i2t2i (images + references) or t2i2t (prompts). */
export function loadDataset(opts: DatasetOptions): Dataset {
  const warnings: string[] = [];
  if (opts.prompts) return loadPrompts(opts.prompts, opts.images, warnings);
  if (opts.annotations) {
    if (!opts.images) throw new RoundtripError('--images: the image folder is required with --annotations (the annotation file holds relative paths)');
    const json = readJson(opts.annotations, '--annotations');
    const isImageList = Array.isArray(json) && json.length > 0 && json.every((e) => e && typeof e === 'object' && typeof (e as { image?: unknown }).image === 'string' && (e as { caption?: unknown }).caption === undefined);
    if (isImageList) return loadImageList(json as { image: string }[], opts, warnings);
    const ann = loadCaptionAnnotations(opts.annotations);
    if (ann.imagePaths.size === 0) throw new RoundtripError(`--annotations: ${opts.annotations} names no image files (COCO ground-truth layout); use the Karpathy layout [{image, caption}]`);
    const items: DataItem[] = [];
    let index = 0;
    for (const [id, rel] of ann.imagePaths) {
      items.push({ index: index++, id: String(id), image: path.resolve(opts.images, rel), references: ann.references.get(id) ?? [] });
    }
    return { kind: 'karpathy', source: path.resolve(opts.annotations), items: keepPresent(items, opts.images, warnings), warnings };
  }
  if (opts.images) {
    const files = listImages(opts.images, '--images');
    return { kind: 'folder', source: path.resolve(opts.images), items: files.map((f, index) => ({ index, id: f.name, image: f.path, references: [] })), warnings };
  }
  throw new RoundtripError('no dataset: give --annotations FILE --images DIR, --images DIR, or --prompts FILE');
}

/** NoCaps-style image list `[{image, img_id}]`, with references from an optional captions file. */
function loadImageList(entries: { image: string; img_id?: unknown; image_id?: unknown }[], opts: DatasetOptions, warnings: string[]): Dataset {
  let refs = new Map<ImageId, string[]>();
  if (opts.captions) refs = loadCaptionAnnotations(opts.captions).references;
  const items: DataItem[] = entries.map((e, index) => {
    const id = karpathyImageId(e)!;
    return { index, id: String(id), image: path.resolve(opts.images!, e.image), references: refs.get(id) ?? refs.get(String(id)) ?? [] };
  });
  if (opts.captions && items.every((it) => it.references.length === 0)) {
    throw new RoundtripError(`--captions: ${opts.captions} has captions for none of the image ids of ${opts.annotations}`);
  }
  return { kind: 'nocaps', source: path.resolve(opts.annotations!), items: keepPresent(items, opts.images!, warnings), warnings };
}

/** `[{image, caption}]` (seed release) or a text file with one prompt per line. */
function loadPrompts(file: string, imagesDir: string | undefined, warnings: string[]): Dataset {
  if (!fs.existsSync(file)) throw new RoundtripError(`--prompts: ${file} does not exist`);
  let entries: { image?: string; caption: string }[];
  if (/\.json$/i.test(file)) {
    const json = readJson(file, '--prompts');
    if (!Array.isArray(json) || json.length === 0) throw invalid(`--prompts ${file}`, 'a non-empty list of {image, caption}', json);
    entries = json.map((e, i) => {
      const entry = e as { image?: unknown; caption?: unknown };
      if (!entry || typeof entry !== 'object' || typeof entry.caption !== 'string' || entry.caption.trim() === '') {
        throw invalid(`--prompts ${file} entry ${i}`, 'an object {image, caption} with a non-empty caption', e);
      }
      return { image: typeof entry.image === 'string' ? entry.image : undefined, caption: entry.caption };
    });
  } else {
    entries = fs
      .readFileSync(file, 'utf8')
      .split(/\r?\n/)
      .map((l) => l.trim())
      .filter((l) => l !== '')
      .map((caption) => ({ caption }));
    if (entries.length === 0) throw new RoundtripError(`--prompts: ${file} holds no prompt`);
  }
  const items: DataItem[] = entries.map((e, index) => {
    const image = e.image && imagesDir ? path.resolve(imagesDir, e.image) : undefined;
    return { index, id: e.image ?? String(index), text: e.caption, image: image && fs.existsSync(image) ? image : undefined, references: [e.caption] };
  });
  if (imagesDir) {
    const missing = entries.filter((e, i) => e.image && !items[i].image).map((e) => e.image!);
    if (missing.length) warnings.push(`${missing.length} real image(s) named in the prompt file are not in ${imagesDir}; their items have no real image (FID and image distances leave them out): ${missing.slice(0, 20).join(', ')}${missing.length > 20 ? ', …' : ''}`);
  }
  return { kind: 'prompts', source: path.resolve(file), items, warnings };
}
