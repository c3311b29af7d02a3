/**
 * Attribute detector for world images: finds the coloured objects, their colour, shape, size and
 * spatial relation (or position), and the background texture. Used to measure how faithfully
 * generated images show what their prompt asked for.
 *
 * Method, knowing the world's palette and backgrounds:
 * 1. Each pixel takes the nearest palette colour if within `colorTolerance` (Euclidean RGB),
 *    otherwise it is background. Backgrounds are grey and the palette is far from grey, so
 *    anti-aliased edges (object blended with grey) are not mistaken for another colour.
 * 2. Connected components (4-neighbour) of equal labels; those of at least `minArea` pixels are
 *    objects, the `maxObjects` largest kept.
 * 3. Shape by template matching: each shape's template is fitted to the component (by moments and
 *    by box), rasterised and compared by IoU; the best wins. Size from the fitted radius; positions
 *    and relations from box centres (centroids would pull triangles and stars off-centre).
 * 4. Background from the grey pixels away from objects: flat → plain; luminance variance mostly
 *    explained by anti-diagonals → striped, by checker cells → checked; otherwise by its spread.
 */
import { RgbImage, assertRgbImage } from '../image';
import { expectInteger, expectNumber } from '../errors';
import { Background, COLORS, Color, PALETTE, Position, Relation, SHAPES, Shape, Size } from './vocabulary';
import { SHAPE_EXTENTS, shapeMask, shapeMoments, textureScale } from './render';
import { SIZE_RADIUS } from './scene';
import { DescribedObject, SceneDescription } from './captions';

// Module-level aliases: under Jest's vm sandbox every `Math.x` in a hot loop is a slow global
// lookup (about 10× slower rendering); local constants avoid it.
const { abs, ceil, floor, max, min, round, sqrt } = Math;

/** A detected object: attributes plus where it is (units of the image side) and how sure the shape is. */
export interface DetectedObject extends DescribedObject {
  color: Color;
  shape: Shape;
  size: Size;
  /** box centre, 0..1 */
  x: number;
  y: number;
  /** fitted radius of the best shape template, in units of the image side */
  radius: number;
  /** pixels in the component */
  area: number;
  /** IoU of the component with the best shape template (1 = exact) */
  shapeScore: number;
}

export interface DetectedScene extends SceneDescription {
  objects: DetectedObject[];
  background: Background;
}

export interface DetectOptions {
  /** largest RGB distance from a palette colour for a pixel to count as that colour; default 60 */
  colorTolerance?: number;
  /** smallest component taken as an object, in pixels; default from the smallest object the world draws */
  minArea?: number;
  /** most objects reported (largest first); default 2, the world's maximum */
  maxObjects?: number;
}

/** Fitted-radius threshold between small and large, in units of the image side (midway between the two classes' ranges). */
export const SIZE_THRESHOLD = (SIZE_RADIUS.small[1] + SIZE_RADIUS.large[0]) / 2;
/** A single object whose centre is within this distance of the middle (on both axes) is "center". */
export const CENTER_THRESHOLD = 0.125;

const NOT_PALETTE = 255;
/** Luminance spread below which a background is plain without further tests. */
const PLAIN_STD = 3;
/** Spread of an unstructured background above which it is noisy (the world's noise has about 19). */
const NOISY_STD = 12;
const PALETTE_RGB: Int32Array = Int32Array.from(COLORS.flatMap((c) => [...PALETTE[c]]));

/** Nearest palette colour index per pixel, or NOT_PALETTE. */
function labelPixels(image: RgbImage, tolerance: number): Uint8Array {
  const { data } = image;
  const n = image.width * image.height;
  const labels = new Uint8Array(n);
  const limit = tolerance * tolerance;
  const colors = COLORS.length;
  for (let i = 0; i < n; i++) {
    const r = data[3 * i];
    const g = data[3 * i + 1];
    const b = data[3 * i + 2];
    let best = NOT_PALETTE;
    let bestDistance = limit;
    for (let c = 0; c < colors; c++) {
      const dr = r - PALETTE_RGB[3 * c];
      const dg = g - PALETTE_RGB[3 * c + 1];
      const db = b - PALETTE_RGB[3 * c + 2];
      const d = dr * dr + dg * dg + db * db;
      if (d <= bestDistance) {
        bestDistance = d;
        best = c;
      }
    }
    labels[i] = best;
  }
  return labels;
}

interface Component {
  id: number;
  label: number;
  area: number;
  x0: number;
  y0: number;
  x1: number;
  y1: number;
  /** sums of pixel-centre coordinates, for the centroid */
  sumX: number;
  sumY: number;
}

/** 4-connected components of equal non-background labels; `ids` receives component ids (1-based). */
function components(labels: Uint8Array, width: number, height: number, ids: Int32Array): Component[] {
  const stack = new Int32Array(width * height);
  const found: Component[] = [];
  for (let start = 0; start < labels.length; start++) {
    if (labels[start] === NOT_PALETTE || ids[start] !== 0) continue;
    const label = labels[start];
    const component: Component = { id: found.length + 1, label, area: 0, x0: width, y0: height, x1: -1, y1: -1, sumX: 0, sumY: 0 };
    let top = 0;
    stack[top++] = start;
    ids[start] = component.id;
    while (top > 0) {
      const p = stack[--top];
      const x = p % width;
      const y = (p - x) / width;
      component.area++;
      component.sumX += x + 0.5;
      component.sumY += y + 0.5;
      if (x < component.x0) component.x0 = x;
      if (x > component.x1) component.x1 = x;
      if (y < component.y0) component.y0 = y;
      if (y > component.y1) component.y1 = y;
      if (x > 0 && ids[p - 1] === 0 && labels[p - 1] === label) (ids[p - 1] = component.id), (stack[top++] = p - 1);
      if (x < width - 1 && ids[p + 1] === 0 && labels[p + 1] === label) (ids[p + 1] = component.id), (stack[top++] = p + 1);
      if (y > 0 && ids[p - width] === 0 && labels[p - width] === label) (ids[p - width] = component.id), (stack[top++] = p - width);
      if (y < height - 1 && ids[p + width] === 0 && labels[p + width] === label) (ids[p + width] = component.id), (stack[top++] = p + width);
    }
    found.push(component);
  }
  return found;
}

/** IoU of a component with a shape template placed at (cx, cy) with radius r (pixels). */
function templateIou(component: Component, ids: Int32Array, width: number, shape: Shape, cx: number, cy: number, r: number, window: Window, template: Uint8Array): number {
  const { x0, y0, w, h } = window;
  shapeMask(shape, cx, cy, r, x0, y0, w, h, template);
  let intersection = 0;
  let union = 0;
  for (let y = 0; y < h; y++) {
    const row = (y0 + y) * width + x0;
    for (let x = 0; x < w; x++) {
      const inComponent = ids[row + x] === component.id ? 1 : 0;
      const inTemplate = template[y * w + x];
      intersection += inComponent & inTemplate;
      union += inComponent | inTemplate;
    }
  }
  return union === 0 ? 0 : intersection / union;
}

interface Window {
  x0: number;
  y0: number;
  w: number;
  h: number;
}

/**
 * Best-fitting shape of a component by template IoU. Each shape's template is fitted twice: by
 * moments (radius from the area, centre from the centroid: robust to thin tips that anti-aliasing
 * erodes, which shrink the box of small diamonds and stars) and by the box (robust to debris); the
 * better fit counts. Returns the shape, its IoU and its fitted radius in pixels.
 */
function classifyShape(component: Component, ids: Int32Array, width: number, height: number): { shape: Shape; score: number; radius: number } {
  // Compare over the component's box grown by a margin, so templates that overshoot are penalised.
  const boxWidth = component.x1 + 1 - component.x0;
  const boxHeight = component.y1 + 1 - component.y0;
  const margin = 2 + ceil(0.25 * max(boxWidth, boxHeight));
  const x0 = max(0, component.x0 - margin);
  const y0 = max(0, component.y0 - margin);
  const window: Window = { x0, y0, w: min(width - 1, component.x1 + margin) - x0 + 1, h: min(height - 1, component.y1 + margin) - y0 + 1 };
  const template = new Uint8Array(window.w * window.h);
  const moments = shapeMoments();
  const mx = component.sumX / component.area;
  const my = component.sumY / component.area;
  let best: Shape = SHAPES[0];
  let bestScore = -1;
  let bestRadius = 0;
  for (const shape of SHAPES) {
    const m = moments[shape];
    const rMoments = sqrt(component.area / m.area);
    const momentScore = templateIou(component, ids, width, shape, mx - m.u * rMoments, my - m.v * rMoments, rMoments, window, template);
    const [u0, u1, v0, v1] = SHAPE_EXTENTS[shape];
    const rBox = (boxWidth / (u1 - u0) + boxHeight / (v1 - v0)) / 2;
    const boxScore = templateIou(component, ids, width, shape, component.x0 + boxWidth / 2 - ((u0 + u1) / 2) * rBox, component.y0 + boxHeight / 2 - ((v0 + v1) / 2) * rBox, rBox, window, template);
    const score = max(momentScore, boxScore);
    if (score > bestScore) {
      bestScore = score;
      best = shape;
      bestRadius = momentScore >= boxScore ? rMoments : rBox;
    }
  }
  return { shape: best, score: bestScore, radius: bestRadius };
}

/** Fraction of the variance of `values` explained by the means of `groups` (1 = constant within each group). */
function explainedVariance(values: Float64Array, groups: Int32Array, count: number, groupCount: number, mean: number, variance: number): number {
  const sums = new Float64Array(groupCount);
  const sizes = new Int32Array(groupCount);
  for (let i = 0; i < count; i++) {
    sums[groups[i]] += values[i];
    sizes[groups[i]]++;
  }
  let between = 0;
  for (let g = 0; g < groupCount; g++) {
    if (sizes[g] === 0) continue;
    const d = sums[g] / sizes[g] - mean;
    between += sizes[g] * d * d;
  }
  return between / count / variance;
}

/**
 * Background texture from the pixels outside every object's box (grown by 2 pixels): stripes are
 * constant along anti-diagonals and checks within cells, which shows as most of the luminance
 * variance being explained by those groups (robust to pixel noise, unlike neighbour differences);
 * otherwise a flat background is plain and a varying one noisy.
 */
function classifyBackground(image: RgbImage, labels: Uint8Array, boxes: Component[]): Background {
  const { width, height, data } = image;
  const free = new Uint8Array(width * height);
  for (let i = 0; i < free.length; i++) free[i] = labels[i] === NOT_PALETTE ? 1 : 0;
  for (const box of boxes) {
    for (let y = max(0, box.y0 - 2); y <= min(height - 1, box.y1 + 2); y++) {
      for (let x = max(0, box.x0 - 2); x <= min(width - 1, box.x1 + 2); x++) free[y * width + x] = 0;
    }
  }
  const { cell } = textureScale(min(width, height));
  const cellsAcross = ceil(width / cell);
  const values = new Float64Array(width * height);
  const diagonal = new Int32Array(width * height);
  const cells = new Int32Array(width * height);
  let count = 0;
  let sum = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = y * width + x;
      if (!free[i]) continue;
      const l = (data[3 * i] + data[3 * i + 1] + data[3 * i + 2]) / 3;
      values[count] = l;
      diagonal[count] = x + y;
      cells[count] = floor(y / cell) * cellsAcross + floor(x / cell);
      sum += l;
      count++;
    }
  }
  if (count < 2) return 'plain';
  const mean = sum / count;
  let variance = 0;
  for (let i = 0; i < count; i++) variance += (values[i] - mean) ** 2;
  variance /= count;
  const std = sqrt(variance);
  if (std < PLAIN_STD) return 'plain';
  if (explainedVariance(values, diagonal, count, width + height, mean, variance) > 0.5) return 'striped';
  if (explainedVariance(values, cells, count, cellsAcross * ceil(height / cell), mean, variance) > 0.5) return 'checked';
  return std < NOISY_STD ? 'plain' : 'noisy';
}

function positionOf(x: number, y: number): Position {
  const dx = x - 0.5;
  const dy = y - 0.5;
  if (abs(dx) < CENTER_THRESHOLD && abs(dy) < CENTER_THRESHOLD) return 'center';
  if (abs(dx) >= abs(dy)) return dx < 0 ? 'left' : 'right';
  return dy < 0 ? 'top' : 'bottom';
}

function relationOf(a: DetectedObject, b: DetectedObject): Relation {
  const dx = a.x - b.x;
  const dy = a.y - b.y;
  if (abs(dx) >= abs(dy)) return dx < 0 ? 'left' : 'right';
  return dy < 0 ? 'above' : 'below';
}

/**
 * Detects the objects and attributes of a world image. Objects come largest first; the relation
 * is that of `objects[0]` to `objects[1]`; a single object gets a position.
 */
export function sceneFromImage(image: RgbImage, options: DetectOptions = {}): DetectedScene {
  assertRgbImage('image', image);
  const { width, height } = image;
  const side = min(width, height);
  const tolerance = expectNumber('colorTolerance', options.colorTolerance ?? 60, { min: 0, max: 442 });
  // A quarter of the smallest star the world draws: anti-aliasing debris stays far below it.
  const defaultMinArea = max(4, round(0.25 * 1.1 * (SIZE_RADIUS.small[0] * side) ** 2));
  const minArea = expectInteger('minArea', options.minArea ?? defaultMinArea, { min: 1 });
  const maxObjects = expectInteger('maxObjects', options.maxObjects ?? 2, { min: 1 });
  const labels = labelPixels(image, tolerance);
  const ids = new Int32Array(width * height);
  const all = components(labels, width, height, ids);
  const kept = all.filter((c) => c.area >= minArea).sort((a, b) => b.area - a.area || a.id - b.id).slice(0, maxObjects);
  const objects: DetectedObject[] = kept.map((c) => {
    const { shape, score, radius } = classifyShape(c, ids, width, height);
    return {
      color: COLORS[c.label],
      shape,
      size: radius / side >= SIZE_THRESHOLD ? 'large' : 'small',
      x: (c.x0 + c.x1 + 1) / 2 / width,
      y: (c.y0 + c.y1 + 1) / 2 / height,
      radius: radius / side,
      area: c.area,
      shapeScore: score,
    };
  });
  const detected: DetectedScene = { objects, background: classifyBackground(image, labels, all.filter((c) => c.area >= minArea)) };
  if (objects.length === 1) detected.position = positionOf(objects[0].x, objects[0].y);
  else if (objects.length >= 2) detected.relation = relationOf(objects[0], objects[1]);
  return detected;
}

