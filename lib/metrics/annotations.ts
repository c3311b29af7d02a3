/**
 * The one reader of caption annotation files (evaluation, reranking, finetuning data, held-out sets):
 * - Karpathy layout (BLIP/LAVIS): `[{image: "val2014/COCO_val2014_000000391895.jpg", caption: str | [str, …]}]`;
 *   the image id is `image_id` or `img_id` when present, else the number at the end of the
 *   file name (391895, as BLIP's evaluation derives it), else the image path itself.
 * - COCO ground-truth layout: `{images: [{id}], annotations: [{image_id, caption}]}`.
 * - Results layout (what a captioner writes and cocoeval's `loadRes` reads): `[{image_id, caption}]`.
 * Errors name the file, the entry index and the key at fault.
 */
import * as path from 'path';
import { RoundtripError, describe } from '../errors';
import { readJsonFile } from '../json';

export type ImageId = number | string;
export type AnnotationLayout = 'karpathy' | 'coco' | 'results';

export interface CaptionAnnotations {
  layout: AnnotationLayout;
  /** image id → reference captions, in file order. */
  references: Map<ImageId, string[]>;
  /** image id → image path, where the file names images (Karpathy layout). */
  imagePaths: Map<ImageId, string>;
  /** The file's entries in order: one per Karpathy entry (an image may repeat), one per image in COCO layout. */
  entries: AnnotationEntry[];
}

export interface AnnotationEntry {
  id: ImageId;
  /** The image path as the file gives it (relative to the image folder); Karpathy layout only. */
  image?: string;
  captions: string[];
}

const readJson = (file: string): unknown => readJsonFile(file, { what: 'caption file' });

function isId(v: unknown): v is ImageId {
  return (typeof v === 'number' && Number.isFinite(v)) || (typeof v === 'string' && v !== '');
}

/** Image id of a Karpathy entry (see module comment). */
export function karpathyImageId(entry: { image?: unknown; image_id?: unknown; img_id?: unknown }): ImageId | undefined {
  if (isId(entry.image_id)) return entry.image_id;
  if (isId(entry.img_id)) return entry.img_id;
  if (typeof entry.image !== 'string' || entry.image === '') return undefined;
  const base = entry.image.split('/').pop()!;
  const m = /(\d+)\.[A-Za-z]+$/.exec(base);
  return m ? Number(m[1]) : entry.image;
}

function fail(source: string, where: string, expected: string, actual: unknown): RoundtripError {
  return new RoundtripError(`${source}: ${where}: expected ${expected}, got ${describe(actual)}`);
}

/** Detects the layout of parsed JSON. */
export function detectLayout(json: unknown, source = 'captions'): AnnotationLayout {
  if (json && typeof json === 'object' && !Array.isArray(json)) {
    if (Array.isArray((json as { annotations?: unknown }).annotations)) return 'coco';
    throw fail(source, 'top level', 'a list (Karpathy or results layout) or an object with "annotations" (COCO layout)', json);
  }
  if (!Array.isArray(json)) throw fail(source, 'top level', 'a JSON list or object', json);
  if (json.length === 0) throw fail(source, 'top level', 'at least one entry', json);
  const first = json[0] as Record<string, unknown>;
  if (first && typeof first === 'object' && typeof first.image === 'string') return 'karpathy';
  if (first && typeof first === 'object' && 'image_id' in first) return 'results';
  throw fail(source, 'entry 0', 'an object with "image" (Karpathy) or "image_id" (results)', first);
}

/** Reference captions from parsed JSON in Karpathy or COCO ground-truth layout. */
export function parseCaptionAnnotations(json: unknown, source = 'annotations'): CaptionAnnotations {
  const layout = detectLayout(json, source);
  const references = new Map<ImageId, string[]>();
  const imagePaths = new Map<ImageId, string>();
  const entries: AnnotationEntry[] = [];
  const add = (id: ImageId, caption: unknown, where: string): void => {
    if (typeof caption !== 'string') throw fail(source, where, 'a caption string', caption);
    let list = references.get(id);
    if (!list) references.set(id, (list = []));
    list.push(caption);
  };
  if (layout === 'karpathy') {
    (json as unknown[]).forEach((e, i) => {
      const entry = e as { image?: unknown; caption?: unknown; captions?: unknown; image_id?: unknown; img_id?: unknown };
      if (!entry || typeof entry !== 'object') throw fail(source, `entry ${i}`, 'an object {image, caption}', e);
      if (typeof entry.image !== 'string' || entry.image === '') throw fail(source, `entry ${i}.image`, 'an image path string', entry.image);
      const id = karpathyImageId(entry)!;
      imagePaths.set(id, entry.image);
      // `captions` is the plural some held-out lists use.
      const key = entry.caption === undefined && entry.captions !== undefined ? 'captions' : 'caption';
      const caps = entry[key];
      const captions = Array.isArray(caps) ? caps : [caps];
      if (captions.length === 0) throw fail(source, `entry ${i}.${key}`, 'at least one caption', caps);
      captions.forEach((c, j) => add(id, c, Array.isArray(caps) ? `entry ${i}.${key}[${j}]` : `entry ${i}.${key}`));
      entries.push({ id, image: entry.image, captions: captions as string[] });
    });
  } else if (layout === 'coco') {
    const anns = (json as { annotations: unknown[] }).annotations;
    anns.forEach((a, i) => {
      const ann = a as { image_id?: unknown; caption?: unknown };
      if (!ann || typeof ann !== 'object') throw fail(source, `annotations[${i}]`, 'an object {image_id, caption}', a);
      if (!isId(ann.image_id)) throw fail(source, `annotations[${i}].image_id`, 'an image id (number or string)', ann.image_id);
      add(ann.image_id, ann.caption, `annotations[${i}].caption`);
    });
    for (const [id, captions] of references) entries.push({ id, captions });
  } else {
    throw new RoundtripError(`${source}: this is a results file ([{image_id, caption}]); reference annotations must be in Karpathy or COCO ground-truth layout`);
  }
  return { layout, references, imagePaths, entries };
}

/** Loads reference captions from a Karpathy-layout or COCO ground-truth file. */
export function loadCaptionAnnotations(file: string): CaptionAnnotations {
  return parseCaptionAnnotations(readJson(file), file);
}

/**
 * The entries of a Karpathy-layout file (`[{image, caption: str | [str]}]`, training, validation and held-out
 * lists), in file order, with image paths resolved against `imagesDir`. `flag` names the file's role in errors.
 */
export function loadImageCaptions(file: string, imagesDir: string, flag = 'annotations'): Required<AnnotationEntry>[] {
  const ann = parseCaptionAnnotations(readJsonFile(file, { what: flag }), `${flag} ${file}`);
  if (ann.layout !== 'karpathy') throw new RoundtripError(`${flag} ${file}: expected the Karpathy layout [{image, caption}], got the ${ann.layout} layout`);
  return ann.entries.map((e) => ({ id: e.id, image: path.resolve(imagesDir, e.image!), captions: e.captions }));
}

/** Candidate captions from parsed JSON in results layout (`[{image_id, caption}]`); one per image. */
export function parseCaptionResults(json: unknown, source = 'results'): Map<ImageId, string> {
  if (!Array.isArray(json)) throw fail(source, 'top level', 'a list of {image_id, caption}', json);
  const out = new Map<ImageId, string>();
  json.forEach((e, i) => {
    const entry = e as { image_id?: unknown; caption?: unknown };
    if (!entry || typeof entry !== 'object') throw fail(source, `entry ${i}`, 'an object {image_id, caption}', e);
    if (!isId(entry.image_id)) throw fail(source, `entry ${i}.image_id`, 'an image id (number or string)', entry.image_id);
    if (typeof entry.caption !== 'string') throw fail(source, `entry ${i}.caption`, 'a caption string', entry.caption);
    if (out.has(entry.image_id)) throw new RoundtripError(`${source}: entry ${i}: image_id ${String(entry.image_id)} appears more than once (one caption per image)`);
    out.set(entry.image_id, entry.caption);
  });
  return out;
}

/** Loads a results file (`[{image_id, caption}]`). */
export function loadCaptionResults(file: string): Map<ImageId, string> {
  return parseCaptionResults(readJson(file), file);
}

/**
 * Checks that every result image id is in the annotations (string/number forms are not
 * mixed up silently: "42" and 42 are different ids) and lists any that are missing.
 */
export function checkResultsAgainstAnnotations(results: ReadonlyMap<ImageId, string>, references: ReadonlyMap<ImageId, readonly string[]>, source = 'results'): void {
  const missing = [...results.keys()].filter((id) => !references.has(id));
  if (missing.length > 0) {
    const shown = missing.slice(0, 5).map((id) => JSON.stringify(id)).join(', ');
    throw new RoundtripError(`${source}: ${missing.length} image id(s) not in the annotations: ${shown}${missing.length > 5 ? ', …' : ''}`);
  }
}
