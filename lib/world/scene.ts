/**
 * Scene sampling for the synthetic world: one or two coloured shapes on a background, with a clear
 * spatial relation (two objects) or position (one object), and a fixed compositional split.
 *
 * Geometry is stored in units of the image side (x, y, radius ∈ (0, 1)), so scenes are independent
 * of the resolution they are rendered at. Scene i of a split is drawn from its own random stream
 * `deriveSeed(seed, splitCode, i)`, so it does not depend on the counts of any split.
 *
 * The split holds out one colour–shape pair per shape (each colour at most once), chosen by the
 * seed: train scenes never contain a held-out pair; about half of the val/test scenes ("novel")
 * contain at least one, the rest only pairs seen in training.
 */
import { Rng, deriveSeed } from '../image';
import { expectInteger, expectOneOf, invalid } from '../errors';
import { BACKGROUNDS, Background, COLORS, Color, POSITIONS, Position, RELATIONS, Relation, SHAPES, Shape, SIZES, Size } from './vocabulary';

export const SPLITS = ['train', 'val', 'test'] as const;
export type Split = (typeof SPLITS)[number];

/** Stable per-split codes mixed into seeds (and into nothing else: counts never matter). */
export const SPLIT_CODES: Readonly<Record<Split, number>> = { train: 1, val: 2, test: 3 };

/** One object of a scene; geometry in units of the image side. */
export interface WorldObject {
  color: Color;
  shape: Shape;
  size: Size;
  /** centre of the shape's box, 0 = left edge, 1 = right edge */
  x: number;
  /** centre of the shape's box, 0 = top edge, 1 = bottom edge */
  y: number;
  /** shape radius (half the box side for all shapes but the star) */
  radius: number;
}

/** A scene: what is drawn and what its captions say. */
export interface Scene {
  split: Split;
  /** index within the split (also the file name and the COCO image id) */
  index: number;
  background: Background;
  /** one or two objects */
  objects: WorldObject[];
  /** two objects: `objects[0]` is `relation` of `objects[1]` ("left" = objects[0] left of objects[1]) */
  relation?: Relation;
  /** one object: where it sits */
  position?: Position;
  /** true when some object is a held-out colour–shape pair (only in val/test) */
  novel: boolean;
  /** seed of the noisy background's pixels (unused by other backgrounds) */
  noiseSeed: number;
}

/** A colour–shape combination. */
export interface ColorShape {
  color: Color;
  shape: Shape;
}

/** Radius ranges per size class, in units of the image side. */
export const SIZE_RADIUS: Readonly<Record<Size, readonly [number, number]>> = { small: [0.1, 0.13], large: [0.18, 0.215] };
/** Distance kept between a shape's box and the image border. */
const BORDER_MARGIN = 0.02;
/** Gap between the two boxes along the relation's axis. */
const RELATION_GAP = 0.05;
/** Off-axis offset allowed between two related objects, as a fraction of their on-axis distance. */
const RELATION_SLACK = 0.3;
/** Off-centre jitter of a single object along the axis it does not sit on. */
const POSITION_JITTER = 0.05;
/** Distance from the centre of a single object placed left/right/top/bottom. */
const POSITION_OFFSET_MIN = 0.2;
/** Chance that a scene has two objects. */
const TWO_OBJECT_PROBABILITY = 0.6;
/** Chance that a val/test scene is drawn to contain a held-out pair. */
const NOVEL_PROBABILITY = 0.5;

function pick<T>(rng: Rng, items: readonly T[]): T {
  return items[rng.int(0, items.length)];
}

function pairKey(pair: ColorShape): string {
  return `${pair.color} ${pair.shape}`;
}

/**
 * The held-out colour–shape pairs of a seed: one per shape, each with a different colour, so every
 * colour and every shape still appears in training.
 */
export function heldOutPairs(seed: number): ColorShape[] {
  expectInteger('seed', seed);
  const rng = new Rng(deriveSeed(seed, 0x4e1d));
  const colors = [...COLORS];
  for (let i = colors.length - 1; i > 0; i--) {
    const j = rng.int(0, i + 1);
    [colors[i], colors[j]] = [colors[j], colors[i]];
  }
  return SHAPES.map((shape, i) => ({ color: colors[i], shape }));
}

/** Pairs allowed in train (all but the held-out ones) and the held-out ones, for sampling. */
export interface PairPools {
  seen: ColorShape[];
  heldOut: ColorShape[];
  heldOutKeys: ReadonlySet<string>;
}

export function pairPools(seed: number): PairPools {
  const heldOut = heldOutPairs(seed);
  const heldOutKeys = new Set(heldOut.map(pairKey));
  const seen: ColorShape[] = [];
  for (const color of COLORS) for (const shape of SHAPES) if (!heldOutKeys.has(`${color} ${shape}`)) seen.push({ color, shape });
  return { seen, heldOut, heldOutKeys };
}

/** True when the pair is held out for `pools`. */
export function isHeldOut(pools: PairPools, pair: ColorShape): boolean {
  return pools.heldOutKeys.has(pairKey(pair));
}

function sampleRadius(rng: Rng, size: Size): number {
  const [lo, hi] = SIZE_RADIUS[size];
  return rng.uniform(lo, hi);
}

/** Samples centres for two objects so that `objects[0]` is unambiguously `relation` of `objects[1]`. */
function placePair(rng: Rng, relation: Relation, r0: number, r1: number): { x0: number; y0: number; x1: number; y1: number } {
  // Work along the relation's axis ("main") and the other one ("cross"); the first-drawn object of
  // the axis is the one with the smaller coordinate (left or top).
  const firstIsLow = relation === 'left' || relation === 'above';
  const rLow = firstIsLow ? r0 : r1;
  const rHigh = firstIsLow ? r1 : r0;
  const minDistance = rLow + rHigh + RELATION_GAP;
  const maxDistance = 1 - rLow - rHigh - 2 * BORDER_MARGIN;
  const distance = rng.uniform(minDistance, Math.max(minDistance, maxDistance));
  const lowMain = rng.uniform(rLow + BORDER_MARGIN, Math.max(rLow + BORDER_MARGIN, 1 - rHigh - BORDER_MARGIN - distance));
  const highMain = lowMain + distance;
  const slack = RELATION_SLACK * distance;
  // The low object's cross coordinate is kept where the other object can still be within `slack`.
  const lowCross = rng.uniform(
    Math.max(rLow, rHigh - slack) + BORDER_MARGIN,
    Math.min(1 - rLow, 1 - rHigh + slack) - BORDER_MARGIN,
  );
  const crossMin = Math.max(rHigh + BORDER_MARGIN, lowCross - slack);
  const crossMax = Math.min(1 - rHigh - BORDER_MARGIN, lowCross + slack);
  const highCross = rng.uniform(crossMin, Math.max(crossMin, crossMax));
  const [main0, main1] = firstIsLow ? [lowMain, highMain] : [highMain, lowMain];
  const [cross0, cross1] = firstIsLow ? [lowCross, highCross] : [highCross, lowCross];
  return relation === 'left' || relation === 'right' ? { x0: main0, y0: cross0, x1: main1, y1: cross1 } : { x0: cross0, y0: main0, x1: cross1, y1: main1 };
}

/** Samples the centre of a single object at `position`. */
function placeSingle(rng: Rng, position: Position, r: number): { x: number; y: number } {
  const jitter = (): number => 0.5 + rng.uniform(-POSITION_JITTER, POSITION_JITTER);
  if (position === 'center') return { x: jitter(), y: jitter() };
  const offset = rng.uniform(POSITION_OFFSET_MIN, Math.max(POSITION_OFFSET_MIN, 0.5 - r - BORDER_MARGIN));
  const cross = jitter();
  switch (position) {
    case 'left':
      return { x: 0.5 - offset, y: cross };
    case 'right':
      return { x: 0.5 + offset, y: cross };
    case 'top':
      return { x: cross, y: 0.5 - offset };
    case 'bottom':
      return { x: cross, y: 0.5 + offset };
  }
}

/** Draws the colour–shape pairs of a scene, honouring the split's held-out rule. */
function samplePairs(rng: Rng, pools: PairPools, count: number, novel: boolean): ColorShape[] {
  const all = [...pools.seen, ...pools.heldOut];
  const pairs: ColorShape[] = [];
  if (novel) pairs.push(pick(rng, pools.heldOut));
  while (pairs.length < count) {
    const candidate = pick(rng, novel ? all : pools.seen);
    // Two identical objects would make captions ambiguous about which is which.
    if (pairs.some((p) => p.color === candidate.color && p.shape === candidate.shape)) continue;
    pairs.push(candidate);
  }
  // The held-out pair is not always the first object.
  if (novel && count === 2 && rng.bernoulli(0.5)) pairs.reverse();
  return pairs;
}

/** Samples scene `index` of `split` for `seed`. Pass `pools` (from `pairPools(seed)`) when sampling many. */
export function generateScene(seed: number, split: Split, index: number, pools: PairPools = pairPools(seed)): Scene {
  expectInteger('seed', seed);
  expectOneOf('split', split, SPLITS);
  expectInteger('index', index, { min: 0 });
  const rng = new Rng(deriveSeed(seed, SPLIT_CODES[split], index));
  const count = rng.bernoulli(TWO_OBJECT_PROBABILITY) ? 2 : 1;
  const novel = split !== 'train' && rng.bernoulli(NOVEL_PROBABILITY);
  const pairs = samplePairs(rng, pools, count, novel);
  const sizes = pairs.map(() => pick(rng, SIZES));
  const radii = sizes.map((size) => sampleRadius(rng, size));
  const background = pick(rng, BACKGROUNDS);
  const noiseSeed = rng.nextUint32();
  if (count === 1) {
    const position = pick(rng, POSITIONS);
    const { x, y } = placeSingle(rng, position, radii[0]);
    return { split, index, background, objects: [{ ...pairs[0], size: sizes[0], x, y, radius: radii[0] }], position, novel, noiseSeed };
  }
  const relation = pick(rng, RELATIONS);
  const { x0, y0, x1, y1 } = placePair(rng, relation, radii[0], radii[1]);
  return {
    split,
    index,
    background,
    objects: [
      { ...pairs[0], size: sizes[0], x: x0, y: y0, radius: radii[0] },
      { ...pairs[1], size: sizes[1], x: x1, y: y1, radius: radii[1] },
    ],
    relation,
    novel,
    noiseSeed,
  };
}

/** Checks a scene read back from JSON (world.json); `name` labels it in errors. */
export function validateScene(name: string, value: unknown): Scene {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw invalid(name, 'a scene object', value);
  const scene = value as Record<string, unknown>;
  expectOneOf(`${name}.split`, scene.split, SPLITS);
  expectInteger(`${name}.index`, scene.index, { min: 0 });
  expectOneOf(`${name}.background`, scene.background, BACKGROUNDS);
  expectInteger(`${name}.noiseSeed`, scene.noiseSeed, { min: 0, max: 0xffffffff });
  if (typeof scene.novel !== 'boolean') throw invalid(`${name}.novel`, 'a boolean', scene.novel);
  if (!Array.isArray(scene.objects) || scene.objects.length < 1 || scene.objects.length > 2) throw invalid(`${name}.objects`, 'an array of 1 or 2 objects', scene.objects);
  scene.objects.forEach((object: unknown, i: number) => {
    const where = `${name}.objects[${i}]`;
    if (object === null || typeof object !== 'object') throw invalid(where, 'an object', object);
    const o = object as Record<string, unknown>;
    expectOneOf(`${where}.color`, o.color, COLORS);
    expectOneOf(`${where}.shape`, o.shape, SHAPES);
    expectOneOf(`${where}.size`, o.size, SIZES);
    for (const key of ['x', 'y', 'radius']) {
      const v = o[key];
      if (typeof v !== 'number' || !(v > 0 && v < 1)) throw invalid(`${where}.${key}`, 'a number in (0, 1)', v);
    }
  });
  if (scene.objects.length === 2) expectOneOf(`${name}.relation`, scene.relation, RELATIONS);
  else expectOneOf(`${name}.position`, scene.position, POSITIONS);
  return value as Scene;
}
