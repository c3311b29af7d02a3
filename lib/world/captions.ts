/**
 * Captions of world scenes from a small grammar with paraphrases, and the inverse: parsing a
 * caption back into the attributes it states.
 *
 * Grammar (lower case, no punctuation, every word a single BERT and CLIP token):
 *
 *   caption  := [opener] object relation object [bg] | object ["is"] relation object [bg]
 *             | [opener] object [position] [bg]     | object "is" position [bg]
 *   object   := ("a" | "an") [size] colour shape
 *   bg       := "on a" (plain | striped | checked | noisy) "background"
 *
 * Relations may be stated from either object ("a red circle left of a blue square" = "a blue square
 * to the right of a red circle"). Caption 0 of every scene is the complete one (sizes, relation or
 * position, background); the others drop sizes, the position or the background at random, so every
 * caption states colours and shapes, and every two-object caption states the relation.
 */
import { Rng, deriveSeed } from '../image';
import { expectInteger, expectString } from '../errors';
import {
  BACKGROUND_WORDS,
  BACKGROUNDS,
  Background,
  CAPTION_OPENERS,
  COLORS,
  Color,
  INVERSE_RELATION,
  POSITION_PHRASES,
  Position,
  RELATION_PHRASES,
  Relation,
  SHAPES,
  SIZE_WORDS,
  SIZES,
  Shape,
  Size,
} from './vocabulary';
import { SPLIT_CODES, Scene, WorldObject } from './scene';

/** Attributes of one object as a caption or a detector states them; absent = not stated. */
export interface DescribedObject {
  color?: Color;
  shape?: Shape;
  size?: Size;
}

/** What a caption (or a detector) says about a scene. */
export interface SceneDescription {
  objects: DescribedObject[];
  /** relation of `objects[0]` to `objects[1]`, when stated */
  relation?: Relation;
  /** position of the only object, when stated */
  position?: Position;
  background?: Background;
}

/** Default number of captions per image, like COCO's five references. */
export const CAPTIONS_PER_IMAGE = 5;

/** Chances that a paraphrase states each optional part. */
const P_SIZE = 0.5;
const P_BACKGROUND = 0.3;
const P_POSITION = 0.7;
const P_OPENER = 0.4;
const P_IS = 0.2;
const P_INVERT = 0.4;

function pick<T>(rng: Rng, items: readonly T[]): T {
  return items[rng.int(0, items.length)];
}

function withArticle(words: string[]): string {
  return `${/^[aeiou]/.test(words[0]) ? 'an' : 'a'} ${words.join(' ')}`;
}

/** "a small red circle"; `sizeWord` undefined leaves the size out. */
function objectPhrase(object: WorldObject, sizeWord: string | undefined): string {
  return withArticle(sizeWord ? [sizeWord, object.color, object.shape] : [object.color, object.shape]);
}

function backgroundPhrase(background: Background): string {
  return `on a ${BACKGROUND_WORDS[background]} background`;
}

/** The complete caption: canonical words, every attribute stated. */
export function canonicalCaption(scene: Scene): string {
  const [a, b] = scene.objects;
  const parts =
    b !== undefined && scene.relation !== undefined
      ? [objectPhrase(a, SIZE_WORDS[a.size][0]), RELATION_PHRASES[scene.relation][0], objectPhrase(b, SIZE_WORDS[b.size][0])]
      : [objectPhrase(a, SIZE_WORDS[a.size][0]), POSITION_PHRASES[scene.position ?? 'center'][0]];
  parts.push(backgroundPhrase(scene.background));
  return parts.join(' ');
}

/** One random paraphrase. */
function paraphrase(rng: Rng, scene: Scene): string {
  const maybeSize = (object: WorldObject): string | undefined => (rng.bernoulli(P_SIZE) ? pick(rng, SIZE_WORDS[object.size]) : undefined);
  const parts: string[] = [];
  const [a, b] = scene.objects;
  if (b !== undefined && scene.relation !== undefined) {
    const invert = rng.bernoulli(P_INVERT);
    const [first, second] = invert ? [b, a] : [a, b];
    const relation = invert ? INVERSE_RELATION[scene.relation] : scene.relation;
    const firstPhrase = objectPhrase(first, maybeSize(first));
    const relationPhrase = pick(rng, RELATION_PHRASES[relation]);
    const secondPhrase = objectPhrase(second, maybeSize(second));
    if (rng.bernoulli(P_IS)) parts.push(firstPhrase, 'is', relationPhrase, secondPhrase);
    else {
      if (rng.bernoulli(P_OPENER)) parts.push(pick(rng, CAPTION_OPENERS));
      parts.push(firstPhrase, relationPhrase, secondPhrase);
    }
  } else {
    const phrase = objectPhrase(a, maybeSize(a));
    const position = rng.bernoulli(P_POSITION) ? pick(rng, POSITION_PHRASES[scene.position ?? 'center']) : undefined;
    if (position !== undefined && rng.bernoulli(P_IS)) parts.push(phrase, 'is', position);
    else {
      if (rng.bernoulli(P_OPENER)) parts.push(pick(rng, CAPTION_OPENERS));
      parts.push(phrase);
      if (position !== undefined) parts.push(position);
    }
  }
  if (rng.bernoulli(P_BACKGROUND)) parts.push(backgroundPhrase(scene.background));
  return parts.join(' ');
}

/**
 * `count` distinct captions of a scene (distinct as long as the grammar allows): the canonical one
 * first, then paraphrases drawn from the stream `deriveSeed(seed, splitCode, index, 1)`.
 */
export function captionScene(scene: Scene, seed: number, count = CAPTIONS_PER_IMAGE): string[] {
  expectInteger('seed', seed);
  expectInteger('count', count, { min: 1, max: 100 });
  const rng = new Rng(deriveSeed(seed, SPLIT_CODES[scene.split], scene.index, 1));
  const captions = [canonicalCaption(scene)];
  const seen = new Set(captions);
  // A bounded number of tries: one-object scenes have few enough paraphrases that a large `count`
  // could exhaust them; then repeats are allowed rather than looping forever.
  for (let attempt = 0; captions.length < count && attempt < 50 * count; attempt++) {
    const caption = paraphrase(rng, scene);
    if (!seen.has(caption)) {
      seen.add(caption);
      captions.push(caption);
    }
  }
  while (captions.length < count) captions.push(paraphrase(rng, scene));
  return captions;
}

const COLOR_WORDS: ReadonlyMap<string, Color> = new Map(COLORS.map((c) => [c, c]));
const SHAPE_WORDS: ReadonlyMap<string, Shape> = new Map(SHAPES.map((s) => [s, s]));
const SIZE_LOOKUP: ReadonlyMap<string, Size> = new Map([...SIZES.flatMap((size) => SIZE_WORDS[size].map((w) => [w, size] as const)), ['tiny', 'small'], ['huge', 'large']]);
const RELATION_LOOKUP: ReadonlyMap<string, Relation> = new Map<string, Relation>([
  ['left', 'left'],
  ['right', 'right'],
  ['above', 'above'],
  ['over', 'above'],
  ['top', 'above'],
  ['below', 'below'],
  ['under', 'below'],
  ['beneath', 'below'],
  ['underneath', 'below'],
  ['bottom', 'below'],
]);
const POSITION_LOOKUP: ReadonlyMap<string, Position> = new Map<string, Position>([
  ['center', 'center'],
  ['centre', 'center'],
  ['middle', 'center'],
  ['left', 'left'],
  ['right', 'right'],
  ['top', 'top'],
  ['bottom', 'bottom'],
]);
const BACKGROUND_LOOKUP: ReadonlyMap<string, Background> = new Map([
  ...BACKGROUNDS.map((b) => [BACKGROUND_WORDS[b], b] as const),
  ['stripy', 'striped'],
  ['checkered', 'checked'],
  ['grey', 'plain'],
  ['gray', 'plain'],
]);

/** Lower-cased words of a text; punctuation and digits separate words. */
export function captionTokens(text: string): string[] {
  return text
    .toLowerCase()
    .split(/[^a-z]+/)
    .filter((word) => word.length > 0);
}

/**
 * Parses a caption into the attributes it states. Object phrases are a shape word with up to two
 * modifiers (colour, size) right before it; the relation is read from the words between the first
 * two objects; a single object's position from the words outside its phrase; the background from
 * "<word> background". Unknown words are ignored, so free-form model captions parse as far as
 * they use the world's words.
 */
export function parseCaption(text: string): SceneDescription {
  expectString('caption', text);
  const tokens = captionTokens(text);
  const used = new Uint8Array(tokens.length);
  let background: Background | undefined;
  for (let i = 0; i + 1 < tokens.length; i++) {
    const kind = BACKGROUND_LOOKUP.get(tokens[i]);
    if (kind !== undefined && tokens[i + 1] === 'background') {
      background = kind;
      used[i] = used[i + 1] = 1;
    }
  }
  const objects: DescribedObject[] = [];
  const spans: [number, number][] = [];
  for (let j = 0; j < tokens.length; j++) {
    const shape = SHAPE_WORDS.get(tokens[j]);
    if (shape === undefined) continue;
    const object: DescribedObject = { shape };
    let start = j;
    for (let k = j - 1; k >= 0 && k >= j - 2 && !used[k]; k--) {
      const color = COLOR_WORDS.get(tokens[k]);
      const size = SIZE_LOOKUP.get(tokens[k]);
      if (color !== undefined && object.color === undefined) object.color = color;
      else if (size !== undefined && object.size === undefined) object.size = size;
      else break;
      start = k;
    }
    for (let k = start; k <= j; k++) used[k] = 1;
    objects.push(object);
    spans.push([start, j]);
  }
  const description: SceneDescription = { objects };
  if (objects.length >= 2) {
    for (let k = spans[0][1] + 1; k < spans[1][0]; k++) {
      const relation = RELATION_LOOKUP.get(tokens[k]);
      if (relation !== undefined) {
        description.relation = relation;
        break;
      }
    }
  } else if (objects.length === 1) {
    for (let k = 0; k < tokens.length; k++) {
      const position = used[k] ? undefined : POSITION_LOOKUP.get(tokens[k]);
      if (position !== undefined) {
        description.position = position;
        break;
      }
    }
  }
  if (background !== undefined) description.background = background;
  return description;
}

/**
 * The same description with two related objects ordered so that the relation is "left" or
 * "above" (A right of B → B left of A). Other descriptions come back unchanged (copied).
 */
export function canonicalDescription(description: SceneDescription): SceneDescription {
  const copy: SceneDescription = { ...description, objects: description.objects.map((o) => ({ ...o })) };
  if (copy.objects.length === 2 && (copy.relation === 'right' || copy.relation === 'below')) {
    copy.objects.reverse();
    copy.relation = INVERSE_RELATION[copy.relation];
  }
  return copy;
}
