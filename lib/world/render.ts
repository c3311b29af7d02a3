/**
 * Rasteriser of world scenes into 8-bit RGB: textured grey backgrounds and axis-aligned filled
 * shapes with anti-aliased edges (4×4 supersampling per pixel, only inside each object's box).
 *
 * Shapes are defined in a unit frame (u, v) centred on the object, y pointing down, scaled by the
 * object's radius; every shape fits the box [-1, 1]² (the star slightly less). All arithmetic is
 * IEEE float64 with no transcendental functions (the star's vertices come from square roots), so a
 * scene renders to the same bytes on every platform.
 */
import { RgbImage } from '../image';
import { expectInteger } from '../errors';
import { PALETTE, Shape } from './vocabulary';
import { Scene } from './scene';

// Module-level aliases: under Jest's vm sandbox every `Math.x` in a hot loop is a slow global
// lookup (about 10× slower rendering); local constants avoid it.
const { abs, ceil, floor, imul, max, min, round, sqrt } = Math;

/** Smallest and largest supported image side in pixels. */
export const MIN_IMAGE_SIZE = 32;
export const MAX_IMAGE_SIZE = 1024;

/** Half-width of the cross's arms, in units of the radius. */
const CROSS_HALF_WIDTH = 0.36;
/** Inner radius of the star's concave vertices, in units of the outer radius. */
const STAR_INNER = 0.48;

/** Star polygon: 10 vertices, alternating outer (radius 1) and inner, the first tip pointing up. */
const STAR_VERTICES: Float64Array = (() => {
  // cos/sin of 18° and 54° in closed form, so the vertices do not depend on Math.cos's last bit.
  const s5 = sqrt(5);
  const cos18 = sqrt(10 + 2 * s5) / 4;
  const sin18 = (s5 - 1) / 4;
  const cos54 = sqrt(10 - 2 * s5) / 4;
  const sin54 = (s5 + 1) / 4;
  // Outer tips at -90°, -18°, 54°, 126°, 198°; inner corners halfway between (-54°, 18°, 90°, 162°, 234°).
  const outer = [
    [0, -1],
    [cos18, -sin18],
    [cos54, sin54],
    [-cos54, sin54],
    [-cos18, -sin18],
  ];
  const inner = [
    [cos54, -sin54],
    [cos18, sin18],
    [0, 1],
    [-cos18, sin18],
    [-cos54, -sin54],
  ];
  const out = new Float64Array(20);
  for (let k = 0; k < 5; k++) {
    out[4 * k] = outer[k][0];
    out[4 * k + 1] = outer[k][1];
    out[4 * k + 2] = inner[k][0] * STAR_INNER;
    out[4 * k + 3] = inner[k][1] * STAR_INNER;
  }
  return out;
})();

/** Box of each shape in the unit frame: [uMin, uMax, vMin, vMax]. */
export const SHAPE_EXTENTS: Readonly<Record<Shape, readonly [number, number, number, number]>> = (() => {
  let uMax = 0;
  let vMin = 0;
  let vMax = 0;
  for (let k = 0; k < 10; k++) {
    uMax = max(uMax, STAR_VERTICES[2 * k]);
    vMin = min(vMin, STAR_VERTICES[2 * k + 1]);
    vMax = max(vMax, STAR_VERTICES[2 * k + 1]);
  }
  const unit = [-1, 1, -1, 1] as const;
  return { circle: unit, square: unit, triangle: unit, diamond: unit, cross: unit, star: [-uMax, uMax, vMin, vMax] as const };
})();

function insideStar(u: number, v: number): boolean {
  // Even-odd crossing test over the 10 edges.
  let inside = false;
  for (let k = 0, j = 9; k < 10; j = k++) {
    const uk = STAR_VERTICES[2 * k];
    const vk = STAR_VERTICES[2 * k + 1];
    const uj = STAR_VERTICES[2 * j];
    const vj = STAR_VERTICES[2 * j + 1];
    if (vk > v !== vj > v && u < ((uj - uk) * (v - vk)) / (vj - vk) + uk) inside = !inside;
  }
  return inside;
}

/** Point-in-shape test in the unit frame (u right, v down). */
export function insideShape(shape: Shape, u: number, v: number): boolean {
  switch (shape) {
    case 'circle':
      return u * u + v * v <= 1;
    case 'square':
      return u >= -1 && u <= 1 && v >= -1 && v <= 1;
    case 'triangle':
      // apex at (0, -1), base from (-1, 1) to (1, 1)
      return v <= 1 && abs(u) <= (v + 1) / 2;
    case 'diamond':
      return abs(u) + abs(v) <= 1;
    case 'cross': {
      const au = abs(u);
      const av = abs(v);
      return (au <= 1 && av <= CROSS_HALF_WIDTH) || (au <= CROSS_HALF_WIDTH && av <= 1);
    }
    case 'star':
      return insideStar(u, v);
  }
}

/** Area and centroid of a shape in its unit frame (radius 1). */
export interface ShapeMoments {
  area: number;
  u: number;
  v: number;
}

let momentsCache: Record<Shape, ShapeMoments> | undefined;

/** Unit-frame area and centroid of every shape, measured once on a fine grid (for the detector's fits). */
export function shapeMoments(): Readonly<Record<Shape, ShapeMoments>> {
  if (momentsCache) return momentsCache;
  const grid = 400;
  const cell = 2 / grid;
  const result = {} as Record<Shape, ShapeMoments>;
  for (const shape of Object.keys(INSIDE) as Shape[]) {
    const inside = INSIDE[shape];
    let count = 0;
    let su = 0;
    let sv = 0;
    for (let j = 0; j < grid; j++) {
      const v = -1 + (j + 0.5) * cell;
      for (let i = 0; i < grid; i++) {
        const u = -1 + (i + 0.5) * cell;
        if (inside(u, v)) {
          count++;
          su += u;
          sv += v;
        }
      }
    }
    result[shape] = { area: count * cell * cell, u: count ? su / count : 0, v: count ? sv / count : 0 };
  }
  momentsCache = result;
  return result;
}

/** Sub-samples per pixel side (SUPERSAMPLE² samples per pixel). */
const SUPERSAMPLE = 4;

/** Grey levels of the textured backgrounds (all on the grey axis, inside [90, 200]). */
const PLAIN_GREY = 150;
const TWO_TONE_DARK = 112;
const TWO_TONE_LIGHT = 176;
const NOISE_CENTER = 145;
const NOISE_AMPLITUDE = 32;

/** Stripe width and checker cell in pixels for an image side. */
export function textureScale(size: number): { stripe: number; cell: number } {
  return { stripe: max(2, round(size / 16)), cell: max(4, round(size / 8)) };
}

/** Fills `out` (size×size×3) with the scene's background. */
function paintBackground(out: Uint8Array, size: number, scene: Scene): void {
  const { stripe, cell } = textureScale(size);
  const pixels = size * size;
  switch (scene.background) {
    case 'plain':
      out.fill(PLAIN_GREY);
      return;
    case 'striped':
      // diagonal bands: constant along x + y
      for (let y = 0; y < size; y++) {
        for (let x = 0; x < size; x++) {
          const grey = floor((x + y) / stripe) % 2 === 0 ? TWO_TONE_LIGHT : TWO_TONE_DARK;
          const o = (y * size + x) * 3;
          out[o] = out[o + 1] = out[o + 2] = grey;
        }
      }
      return;
    case 'checked':
      for (let y = 0; y < size; y++) {
        for (let x = 0; x < size; x++) {
          const grey = (floor(x / cell) + floor(y / cell)) % 2 === 0 ? TWO_TONE_LIGHT : TWO_TONE_DARK;
          const o = (y * size + x) * 3;
          out[o] = out[o + 1] = out[o + 2] = grey;
        }
      }
      return;
    case 'noisy': {
      // Luminance-only noise keeps every pixel grey, hence far from the palette. The draws are
      // `new Rng(noiseSeed).nextUint32()` (mulberry32) inlined, with `imul` bound locally for speed.
      let state = scene.noiseSeed >>> 0;
      for (let i = 0; i < pixels; i++) {
        state = (state + 0x6d2b79f5) >>> 0;
        let t = state;
        t = imul(t ^ (t >>> 15), t | 1);
        t ^= t + imul(t ^ (t >>> 7), t | 61);
        const draw = (t ^ (t >>> 14)) >>> 0;
        const grey = NOISE_CENTER - NOISE_AMPLITUDE + (draw % (2 * NOISE_AMPLITUDE + 1));
        out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = grey;
      }
      return;
    }
  }
}

type InsideTest = (u: number, v: number) => boolean;

/** Per-shape inside tests without the dispatch, for the supersampling loop. */
const INSIDE: Readonly<Record<Shape, InsideTest>> = {
  circle: (u, v) => u * u + v * v <= 1,
  square: (u, v) => u >= -1 && u <= 1 && v >= -1 && v <= 1,
  triangle: (u, v) => v <= 1 && abs(u) <= (v + 1) / 2,
  diamond: (u, v) => abs(u) + abs(v) <= 1,
  cross: (u, v) => insideShape('cross', u, v),
  star: insideStar,
};

/**
 * For shapes that are convex (or, for the cross, a union of two rectangles tested separately), a
 * pixel whose four corners are inside one convex piece is fully covered: no need to supersample.
 */
function fullyInside(shape: Shape, u0: number, v0: number, u1: number, v1: number): boolean {
  switch (shape) {
    case 'circle':
    case 'square':
    case 'triangle':
    case 'diamond':
      return insideShape(shape, u0, v0) && insideShape(shape, u1, v0) && insideShape(shape, u0, v1) && insideShape(shape, u1, v1);
    case 'cross': {
      const uMax = max(abs(u0), abs(u1));
      const vMax = max(abs(v0), abs(v1));
      return (uMax <= 1 && vMax <= CROSS_HALF_WIDTH) || (uMax <= CROSS_HALF_WIDTH && vMax <= 1);
    }
    case 'star':
      return false;
  }
}

/** Blends one object into `out` with per-pixel coverage from supersampling. */
function paintObject(out: Uint8Array, size: number, shape: Shape, rgb: readonly [number, number, number], cxNorm: number, cyNorm: number, radiusNorm: number): void {
  const cx = cxNorm * size;
  const cy = cyNorm * size;
  const r = radiusNorm * size;
  const [u0, u1, v0, v1] = SHAPE_EXTENTS[shape];
  const xStart = max(0, floor(cx + u0 * r));
  const xEnd = min(size - 1, ceil(cx + u1 * r));
  const yStart = max(0, floor(cy + v0 * r));
  const yEnd = min(size - 1, ceil(cy + v1 * r));
  const samples = SUPERSAMPLE * SUPERSAMPLE;
  const step = 1 / SUPERSAMPLE;
  const invR = 1 / r;
  const inside = INSIDE[shape];
  const [cr, cg, cb] = rgb;
  for (let py = yStart; py <= yEnd; py++) {
    const top = (py - cy) * invR;
    const bottom = (py + 1 - cy) * invR;
    for (let px = xStart; px <= xEnd; px++) {
      let covered = 0;
      if (fullyInside(shape, (px - cx) * invR, top, (px + 1 - cx) * invR, bottom)) covered = samples;
      else {
        for (let sy = 0; sy < SUPERSAMPLE; sy++) {
          const v = (py + (sy + 0.5) * step - cy) * invR;
          for (let sx = 0; sx < SUPERSAMPLE; sx++) {
            if (inside((px + (sx + 0.5) * step - cx) * invR, v)) covered++;
          }
        }
      }
      if (covered === 0) continue;
      const o = (py * size + px) * 3;
      if (covered === samples) {
        out[o] = cr;
        out[o + 1] = cg;
        out[o + 2] = cb;
      } else {
        const a = covered / samples;
        out[o] = round(out[o] + (cr - out[o]) * a);
        out[o + 1] = round(out[o + 1] + (cg - out[o + 1]) * a);
        out[o + 2] = round(out[o + 2] + (cb - out[o + 2]) * a);
      }
    }
  }
}

/**
 * Renders a scene as a size×size RGB image. Scene geometry is resolution-independent, so the same
 * scene can be drawn at any supported size.
 */
export function renderScene(scene: Scene, size = 64): RgbImage {
  expectInteger('size', size, { min: MIN_IMAGE_SIZE, max: MAX_IMAGE_SIZE });
  const data = new Uint8Array(size * size * 3);
  paintBackground(data, size, scene);
  for (const object of scene.objects) paintObject(data, size, object.shape, PALETTE[object.color], object.x, object.y, object.radius);
  return { data, width: size, height: size };
}

/**
 * Binary mask of a shape placed at pixel centre (cx, cy) with radius r (pixels), sampled at pixel
 * centres over the window [x0, x0+w) × [y0, y0+h). Used by the detector's template matching.
 */
export function shapeMask(shape: Shape, cx: number, cy: number, r: number, x0: number, y0: number, w: number, h: number, out: Uint8Array): void {
  expectInteger('mask width', w, { min: 1 });
  expectInteger('mask height', h, { min: 1 });
  const invR = 1 / r;
  for (let y = 0; y < h; y++) {
    const v = (y0 + y + 0.5 - cy) * invR;
    for (let x = 0; x < w; x++) out[y * w + x] = insideShape(shape, (x0 + x + 0.5 - cx) * invR, v) ? 1 : 0;
  }
}
