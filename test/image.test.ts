import { createHash } from 'crypto';
import { promises as fs } from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { RoundtripError } from '../lib/errors';
import {
  CLIP_MEAN,
  CLIP_STD,
  IMAGENET_MEAN,
  IMAGENET_STD,
  Resample,
  RgbImage,
  Rng,
  applyGeometry,
  batchToImages,
  blipOriginalPreprocess,
  blipPreprocess,
  blipTrainPreprocess,
  centerCropRect,
  clipPreprocess,
  decodeBatch,
  decodeImage,
  deriveSeed,
  dinoPreprocess,
  encodePng,
  fidPreprocess,
  loadHfPreprocessConfig,
  loadImage,
  makeGrid,
  parseResample,
  pixelLookupTable,
  precomputeCoefficients,
  prefetchBatches,
  prefetchMap,
  preprocessBatch,
  preprocessFromHfConfig,
  preprocessImage,
  preprocessPreset,
  randomResizedCropRect,
  resize,
  roundHalfEven,
  saveGrid,
  savePng,
  sdVaePreprocess,
  shortestEdgeSize,
  tensorToImage,
} from '../lib/image';

const f32 = Math.fround;
let dir: string;

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'roundtrip-image-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

/** Image whose pixel (x, y, c) is fn(x, y, c). */
function makeImage(width: number, height: number, fn: (x: number, y: number, c: number) => number): RgbImage {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) for (let c = 0; c < 3; c++) data[(y * width + x) * 3 + c] = fn(x, y, c);
  return { data, width, height };
}
const px = (img: RgbImage, x: number, y: number): number[] => Array.from(img.data.subarray((y * img.width + x) * 3, (y * img.width + x) * 3 + 3));
const constant = (w: number, h: number, rgb: number[]) => makeImage(w, h, (_x, _y, c) => rgb[c]);
/** A smooth, colourful test picture (no hard edges), like a natural photo's low frequencies. */
const smooth = (w: number, h: number) =>
  makeImage(w, h, (x, y, c) =>
    c === 0 ? Math.round(127.5 + 127.5 * Math.sin(x / 37) * Math.cos(y / 23)) : c === 1 ? Math.round((255 * x) / (w - 1)) : Math.round(127.5 + 100 * Math.sin((x + y) / 50)),
  );
/** Integer-only pattern (identical in NumPy): used for the recorded Pillow/torchvision digests. */
function pattern(w: number, h: number, k: number): RgbImage {
  return makeImage(w, h, (x, y, c) =>
    c === 0 ? (x * 7 + y * 13 + k) % 256 : c === 1 ? Math.floor((x * x + 3 * y * y + k * 5) / 7) % 256 : ((Math.floor(x / 3) * 40 + Math.floor(y / 5) * 70) ^ k) % 256,
  );
}
const sha16 = (a: Uint8Array | Float32Array) => createHash('sha256').update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength)).digest('hex').slice(0, 16);
const rawSharp = (img: RgbImage) => sharp(Buffer.from(img.data), { raw: { width: img.width, height: img.height, channels: 3 } });
/** Pillow's fixed-point weight: round half away from zero of w·2^22. */
const fixed = (w: number) => (w < 0 ? Math.trunc(-0.5 + w * 4194304) : Math.trunc(0.5 + w * 4194304));
/** Pillow's 8-bit accumulation for one output value. */
const accumulate = (values: number[], weights: number[]) => {
  const s = values.reduce((acc, v, i) => acc + v * fixed(weights[i]), 1 << 21);
  return Math.min(255, Math.max(0, Math.floor(s / 4194304)));
};

describe('decoding', () => {
  test('EXIF orientation 6 is applied by default and can be turned off', async () => {
    // Stored 64×32: left half red, right half blue. Orientation 6 = rotate 90° clockwise to display,
    // so the displayed 32×64 image has red on top and blue at the bottom.
    const stored = makeImage(64, 32, (x, _y, c) => (x < 32 ? [230, 20, 20][c] : [20, 20, 230][c]));
    const file = path.join(dir, 'rotated.jpg');
    await rawSharp(stored).jpeg({ quality: 95 }).withMetadata({ orientation: 6 }).toFile(file);
    expect((await sharp(file).metadata()).orientation).toBe(6);

    const shown = await loadImage(file);
    expect([shown.width, shown.height]).toEqual([32, 64]);
    const top = px(shown, 16, 8);
    const bottom = px(shown, 16, 56);
    expect(top[0]).toBeGreaterThan(200);
    expect(top[2]).toBeLessThan(50);
    expect(bottom[2]).toBeGreaterThan(200);
    expect(bottom[0]).toBeLessThan(50);

    const asStored = await loadImage(file, { autoOrient: false });
    expect([asStored.width, asStored.height]).toEqual([64, 32]);
    expect(px(asStored, 8, 16)[0]).toBeGreaterThan(200);
  });

  test('PNG with alpha: alpha dropped without compositing (like PIL convert("RGB"))', async () => {
    const rgba = Buffer.from([10, 20, 30, 0, 40, 50, 60, 128, 70, 80, 90, 255, 1, 2, 3, 4]);
    const file = path.join(dir, 'alpha.png');
    await sharp(rgba, { raw: { width: 2, height: 2, channels: 4 } }).png().toFile(file);
    const img = await loadImage(file);
    expect([img.width, img.height]).toEqual([2, 2]);
    expect(Array.from(img.data)).toEqual([10, 20, 30, 40, 50, 60, 70, 80, 90, 1, 2, 3]);
  });

  test('greyscale and grey+alpha PNG become three equal channels', async () => {
    const grey = path.join(dir, 'grey.png');
    await sharp(Buffer.from([0, 50, 100, 250, 7, 8]), { raw: { width: 3, height: 2, channels: 1 } }).toColourspace('b-w').png().toFile(grey);
    expect((await sharp(grey).metadata()).channels).toBe(1);
    const g = await loadImage(grey);
    expect(Array.from(g.data)).toEqual([0, 0, 0, 50, 50, 50, 100, 100, 100, 250, 250, 250, 7, 7, 7, 8, 8, 8]);

    const greyAlpha = await sharp(Buffer.from([10, 0, 200, 255]), { raw: { width: 2, height: 1, channels: 2 } }).png().toBuffer();
    const ga = await decodeImage(greyAlpha);
    expect(Array.from(ga.data)).toEqual([10, 10, 10, 200, 200, 200]);
  });

  test('16-bit RGB PNG keeps the high byte (as PIL does for RGB;16B)', async () => {
    const values = [0, 255, 256, 4000, 32768, 65280, 65535];
    const u16 = new Uint16Array(values.length * 3);
    values.forEach((v, i) => u16.fill(v, i * 3, i * 3 + 3));
    const png = await sharp(u16, { raw: { width: values.length, height: 1, channels: 3 } }).toColourspace('rgb16').png().toBuffer();
    expect((await sharp(png).metadata()).depth).toBe('ushort');
    const img = await decodeImage(png);
    expect(values.map((_, i) => px(img, i, 0)[0])).toEqual(values.map((v) => v >> 8));
  });

  test('lossless WebP and PNG decode to the exact pixels, from a file or a Buffer', async () => {
    const img = smooth(17, 11);
    const webp = await rawSharp(img).webp({ lossless: true }).toBuffer();
    expect(Array.from((await decodeImage(webp)).data)).toEqual(Array.from(img.data));
    const file = path.join(dir, 'smooth.png');
    await rawSharp(img).png().toFile(file);
    const loaded = await loadImage(file);
    expect(loaded.width).toBe(17);
    expect(Array.from(loaded.data)).toEqual(Array.from(img.data));
  });

  test('missing, corrupt, truncated and empty files give RoundtripError naming the file', async () => {
    const missing = path.join(dir, 'does-not-exist.png');
    await expect(loadImage(missing)).rejects.toThrow(RoundtripError);
    await expect(loadImage(missing)).rejects.toThrow(`${missing}: cannot read image: file not found`);

    const corrupt = path.join(dir, 'corrupt.jpg');
    await fs.writeFile(corrupt, Buffer.from('this is not an image, just text pretending to be one'));
    await expect(loadImage(corrupt)).rejects.toThrow(new RegExp(`^${corrupt.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: cannot decode image`));

    const jpeg = await rawSharp(smooth(64, 64)).jpeg().toBuffer();
    const truncated = path.join(dir, 'truncated.jpg');
    await fs.writeFile(truncated, jpeg.subarray(0, jpeg.length >> 1));
    const err = await loadImage(truncated).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RoundtripError);
    expect((err as Error).message).toContain(truncated);

    const empty = path.join(dir, 'empty.png');
    await fs.writeFile(empty, Buffer.alloc(0));
    await expect(loadImage(empty)).rejects.toThrow(`${empty}: cannot decode image: the file is empty`);
    await expect(loadImage(dir)).rejects.toThrow(RoundtripError);
    await expect(decodeImage(Buffer.from([1, 2, 3]), {}, 'upload #3')).rejects.toThrow(/^upload #3: cannot decode image/);
  });
});

describe('Pillow-exact resize', () => {
  test('same size is an identity copy for every filter', () => {
    const img = smooth(13, 9);
    for (const r of [0, 1, 2, 3, 4, 5] as Resample[]) {
      const out = resize(img, 13, 9, r);
      expect(out.data).not.toBe(img.data);
      expect(Array.from(out.data)).toEqual(Array.from(img.data));
    }
  });

  test('2×1 → 1×1 averages with Pillow rounding (half up)', () => {
    const img = makeImage(2, 1, (x, _y, c) => [[10, 0, 255], [21, 1, 254]][x][c]);
    for (const r of [Resample.BILINEAR, Resample.BICUBIC, Resample.BOX, Resample.HAMMING, Resample.LANCZOS]) {
      // Both taps get weight 1/2 → floor((a + b + 1) / 2).
      expect(px(resize(img, 1, 1, r), 0, 0)).toEqual([16, 1, 255]);
    }
  });

  test('4 → 2 bilinear uses the antialiased triangle (weights 3/7, 3/7, 1/7), box averages pairs', () => {
    const values = [0, 30, 70, 200];
    const img = makeImage(4, 1, (x) => values[x]);
    // Output 0 is centred at 1.0 with support 2: taps 0,1,2 with triangle weights .75,.75,.25.
    const expected = [accumulate([0, 30, 70], [3 / 7, 3 / 7, 1 / 7]), accumulate([30, 70, 200], [1 / 7, 3 / 7, 3 / 7])];
    const out = resize(img, 2, 1, Resample.BILINEAR);
    expect([px(out, 0, 0)[0], px(out, 1, 0)[0]]).toEqual(expected);
    expect(expected).toEqual([23, 120]); // 22.86 → 23; exactly 120 in real numbers, 120.499 in fixed point
    const box = resize(img, 2, 1, Resample.BOX);
    expect([px(box, 0, 0)[0], px(box, 1, 0)[0]]).toEqual([15, 135]);
  });

  test('2 → 4 bicubic upscaling reproduces the hand-computed Keys (a = -0.5) weights and clipping', () => {
    const keys = (t: number) => {
      const x = Math.abs(t);
      return x < 1 ? 1.5 * x ** 3 - 2.5 * x ** 2 + 1 : x < 2 ? -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2 : 0;
    };
    // Output 0 is centred at 0.25: taps 0 and 1 at distances 0.25 and 0.75 (+0.5 offset → 0.25, 1.25).
    const w0 = keys(0.25);
    const w1 = keys(1.25);
    const k = [w0 / (w0 + w1), w1 / (w0 + w1)];
    const img = makeImage(2, 1, (x, _y, c) => [[100, 0, 255], [200, 255, 0]][x][c]);
    const out = resize(img, 4, 1, Resample.BICUBIC);
    const expected0 = [0, 1, 2].map((c) => accumulate([[100, 0, 255][c], [200, 255, 0][c]], k));
    expect(px(out, 0, 0)).toEqual(expected0);
    expect(expected0).toEqual([91, 0, 255]); // 91.18; the overshoots clip to 0 and 255
    // The mirror image gives the mirrored result.
    expect(px(out, 3, 0)).toEqual([[200, 255, 0][0], 0, 0].map((_, c) => accumulate([[200, 255, 0][c], [100, 0, 255][c]], k)));
  });

  test('fixed-point coefficients: 22 fractional bits, rounded half away from zero', () => {
    const c = precomputeCoefficients(4, 0, 4, 2, Resample.BILINEAR);
    expect(c.ksize).toBe(5); // ceil(support 2) * 2 + 1
    expect(Array.from(c.first)).toEqual([0, 1]);
    expect(Array.from(c.count)).toEqual([3, 3]);
    expect(Array.from(c.weights.subarray(0, 3))).toEqual([fixed(3 / 7), fixed(3 / 7), fixed(1 / 7)]);
    expect(fixed(3 / 7)).toBe(1797559);
    expect(fixed(1 / 7)).toBe(599186);
    // Upscaling bicubic has a negative lobe; its weight rounds away from zero.
    const up = precomputeCoefficients(2, 0, 2, 4, Resample.BICUBIC);
    expect(Array.from(up.weights.subarray(0, 2))).toEqual([4564390, -370086]); // 1.0882353·2^22 = 4564389.6, −0.0882353·2^22 = −370085.6
    expect(() => precomputeCoefficients(4, 0, 4, 2, Resample.NEAREST)).toThrow(/NEAREST has no coefficients/);
  });

  test('NEAREST picks int((i + 0.5)·scale) like Pillow', () => {
    const img = makeImage(4, 1, (x) => [10, 20, 30, 40][x]);
    const down = resize(img, 2, 1, Resample.NEAREST);
    expect([px(down, 0, 0)[0], px(down, 1, 0)[0]]).toEqual([20, 40]);
    const three = makeImage(3, 1, (x) => [10, 20, 30][x]);
    const d3 = resize(three, 2, 1, Resample.NEAREST);
    expect([px(d3, 0, 0)[0], px(d3, 1, 0)[0]]).toEqual([10, 30]);
    const up = resize(makeImage(2, 1, (x) => [5, 9][x]), 4, 1, Resample.NEAREST);
    expect([0, 1, 2, 3].map((x) => px(up, x, 0)[0])).toEqual([5, 5, 9, 9]);
  });

  test('a constant image stays constant, any size and filter', () => {
    const img = constant(37, 23, [0, 123, 255]);
    for (const r of [0, 1, 2, 3, 4, 5] as Resample[]) {
      for (const [w, h] of [[10, 7], [80, 51], [37, 5], [1, 1], [200, 3]]) {
        const out = resize(img, w, h, r);
        expect(out.width).toBe(w);
        expect(out.height).toBe(h);
        let wrong = 0;
        for (let i = 0; i < w * h; i++) if (out.data[i * 3] !== 0 || out.data[i * 3 + 1] !== 123 || out.data[i * 3 + 2] !== 255) wrong++;
        expect(wrong).toBe(0);
      }
    }
  });

  test('a horizontal ramp stays monotonic (down- and upscaling)', () => {
    for (const r of [Resample.BILINEAR, Resample.BICUBIC, Resample.LANCZOS, Resample.NEAREST]) {
      for (const [w, ow] of [[256, 100], [256, 400], [50, 257], [300, 7]]) {
        const out = resize(makeImage(w, 2, (x) => Math.round((255 * x) / (w - 1))), ow, 3, r);
        for (let x = 1; x < ow; x++) expect(px(out, x, 1)[0]).toBeGreaterThanOrEqual(px(out, x - 1, 1)[0]);
        for (let x = 0; x < ow; x++) expect(px(out, x, 0)).toEqual(px(out, x, 2)); // rows stay identical
      }
    }
  });

  test('symmetric inputs give symmetric outputs (symmetric kernels)', () => {
    const sym = (w: number, h: number) => makeImage(w, h, (x, y, c) => (Math.min(x, w - 1 - x) * 37 + Math.min(y, h - 1 - y) * 11 + c * 50) % 256);
    for (const r of [Resample.BILINEAR, Resample.BICUBIC, Resample.LANCZOS, Resample.HAMMING]) {
      for (const [w, h, ow, oh] of [[12, 10, 8, 6], [40, 30, 17, 13], [7, 9, 21, 23], [640, 480, 384, 384]]) {
        const out = resize(sym(w, h), ow, oh, r);
        let asymmetric = 0;
        for (let y = 0; y < oh; y++) {
          for (let x = 0; x < ow; x++) {
            for (let c = 0; c < 3; c++) {
              const v = out.data[(y * ow + x) * 3 + c];
              if (v !== out.data[(y * ow + ow - 1 - x) * 3 + c] || v !== out.data[((oh - 1 - y) * ow + x) * 3 + c]) asymmetric++;
            }
          }
        }
        expect(asymmetric).toBe(0);
      }
    }
  });

  test('bit-exact against real Pillow 12.3 (recorded digests) for every filter, up/down, odd sizes and a box', () => {
    // Reference: Image.fromarray(pattern, 'RGB').resize((ow, oh), resample[, box]) run under Pillow 12.3.0;
    // the first 16 hex digits of sha256 over its RGB bytes. The pattern is integer-only, so it is the
    // same array in NumPy and here.
    const cases: [number, number, number, number, Resample, string][] = [
      [640, 480, 384, 384, 3, '1a916720bdc2c4e0'],
      [640, 480, 384, 384, 2, '318870d511071045'],
      [640, 480, 298, 224, 3, 'd80f2b28323fe64d'],
      [500, 375, 224, 224, 0, '6cd08b353fe31559'],
      [97, 61, 200, 150, 3, '7cd42a8ee55f3f11'],
      [97, 61, 31, 17, 1, 'da5346ee0dbc363b'],
      [300, 200, 123, 77, 4, '1707704784dd1ba0'],
      [300, 200, 123, 77, 5, '0bf14e7955816485'],
      [41, 43, 13, 101, 3, '9f7e5c09a8cbf806'],
      [64, 48, 24, 18, 0, '31b075ca278335e3'],
      [20, 10, 7, 3, 2, 'debf26507db5d446'],
      [173, 131, 384, 384, 3, '4a1185e7a8322925'],
      [173, 131, 96, 96, 2, 'd3e85905b30d6ab2'],
      [1000, 17, 3, 5, 3, 'e347e52d8ba377c0'],
      [33, 1000, 16, 999, 2, '3784dc714e8368ac'],
      [9, 7, 3, 3, 1, '2158ec3afaebd4e6'],
    ];
    cases.forEach(([w, h, ow, oh, r, digest], i) => {
      expect(`${i}: ${sha16(resize(pattern(w, h, i), ow, oh, r).data)}`).toBe(`${i}: ${digest}`);
    });
    expect(sha16(resize(pattern(80, 60, 99), 30, 20, Resample.BICUBIC, [5.5, 3.25, 70.75, 50]).data)).toBe('337dc7d0f64703f7');
  });

  test('agrees with sharp/libvips cubic and linear within 3/255 on a smooth image', async () => {
    const img = smooth(640, 480);
    for (const [w, h] of [[384, 384], [224, 300], [1000, 700]]) {
      for (const [ours, kernel] of [[Resample.BICUBIC, 'cubic'], [Resample.BILINEAR, 'linear']] as const) {
        const mine = resize(img, w, h, ours);
        const theirs = await rawSharp(img).resize(w, h, { kernel, fit: 'fill' }).raw().toBuffer();
        let max = 0;
        let sum = 0;
        for (let i = 0; i < theirs.length; i++) {
          const d = Math.abs(theirs[i] - mine.data[i]);
          max = Math.max(max, d);
          sum += d;
        }
        expect(max).toBeLessThanOrEqual(3);
        expect(sum / theirs.length).toBeLessThan(0.75);
      }
    }
  });

  test('box argument resizes a sub-region, and bad sizes/filters/boxes are rejected', () => {
    const img = smooth(20, 10);
    const left = resize(img, 10, 10, Resample.BILINEAR, [0, 0, 10, 10]);
    expect(Array.from(left.data)).toEqual(Array.from(makeImage(10, 10, (x, y, c) => img.data[(y * 20 + x) * 3 + c]).data));
    expect(() => resize(img, 0, 5)).toThrow('width: expected an integer >= 1, got number 0');
    expect(() => resize(img, 5, 5, 9 as Resample)).toThrow(/resample: expected a Pillow resample filter/);
    expect(() => resize(img, 5, 5, Resample.BICUBIC, [0, 0, 30, 10])).toThrow(/box: expected a region inside the 20×10 image/);
    expect(parseResample('r', 'bicubic')).toBe(3);
  });

  test('performance: 640×480 → 384×384 bicubic', () => {
    const img = smooth(640, 480);
    resize(img, 384, 384, Resample.BICUBIC); // warm-up (JIT)
    const runs = 10;
    const start = process.hrtime.bigint();
    for (let i = 0; i < runs; i++) resize(img, 384, 384, Resample.BICUBIC);
    const ms = Number(process.hrtime.bigint() - start) / 1e6 / runs;
    // eslint-disable-next-line no-console
    console.log(`resize 640x480 -> 384x384 bicubic: ${ms.toFixed(2)} ms`);
    expect(ms).toBeLessThan(250); // generous: the CI box is shared; typical is ~10 ms there
  });
});

describe('geometry helpers', () => {
  test('shortest-edge size truncates like int(224 * long / short)', () => {
    expect(shortestEdgeSize(640, 480, 224)).toEqual({ width: 298, height: 224 });
    expect(shortestEdgeSize(480, 640, 224)).toEqual({ width: 224, height: 298 });
    expect(shortestEdgeSize(500, 375, 224)).toEqual({ width: 298, height: 224 });
    expect(shortestEdgeSize(100, 100, 224)).toEqual({ width: 224, height: 224 });
  });

  test('centre-crop offsets: transformers floors, torchvision rounds half to even, both pad small images', () => {
    expect(centerCropRect(303, 224, 224, 224, 'floor').left).toBe(39); // 79 // 2
    expect(centerCropRect(303, 224, 224, 224, 'round-half-even').left).toBe(40); // round(39.5) = 40
    expect(centerCropRect(301, 224, 224, 224, 'round-half-even').left).toBe(38); // round(38.5) = 38
    expect(centerCropRect(100, 224, 224, 224, 'floor')).toEqual({ top: 0, left: -62, height: 224, width: 224 });
    expect(centerCropRect(101, 224, 224, 224, 'floor').left).toBe(-62); // ceil(123/2) padded before
    expect(centerCropRect(101, 224, 224, 224, 'round-half-even').left).toBe(-61); // 123 // 2 padded before
    expect([roundHalfEven(0.5), roundHalfEven(1.5), roundHalfEven(2.5), roundHalfEven(-0.5), roundHalfEven(2.4)]).toEqual([0, 2, 2, -0, 2]);
  });

  test('random resized crop stays inside the image with torchvision scale/ratio limits', () => {
    const rng = new Rng(7);
    for (let i = 0; i < 200; i++) {
      const r = randomResizedCropRect(640, 480, [0.5, 1], [3 / 4, 4 / 3], rng);
      expect(r.top).toBeGreaterThanOrEqual(0);
      expect(r.left).toBeGreaterThanOrEqual(0);
      expect(r.top + r.height).toBeLessThanOrEqual(480);
      expect(r.left + r.width).toBeLessThanOrEqual(640);
      const area = (r.width * r.height) / (640 * 480);
      expect(area).toBeGreaterThan(0.49);
      expect(area).toBeLessThanOrEqual(1);
    }
    // A very wide image cannot fit the aspect range: torchvision falls back to a central crop.
    const wide = randomResizedCropRect(1000, 10, [0.9, 1], [3 / 4, 4 / 3], new Rng(1));
    expect(wide).toEqual({ top: 0, left: Math.floor((1000 - 13) / 2), height: 10, width: 13 });
  });
});

describe('preprocessors', () => {
  const rgb = [200, 100, 50];

  test('BLIP: 384×384, ×1/255 then CLIP mean/std in float32 (transformers arithmetic)', () => {
    const batch = preprocessBatch([constant(640, 480, rgb), constant(100, 300, rgb)], blipPreprocess());
    expect(batch.shape).toEqual([2, 3, 384, 384]);
    expect(batch.data).toBeInstanceOf(Float32Array);
    const plane = 384 * 384;
    for (let c = 0; c < 3; c++) {
      const want = f32(f32(f32(rgb[c] * (1 / 255)) - f32(CLIP_MEAN[c])) / f32(CLIP_STD[c]));
      expect(want).toBeCloseTo((rgb[c] / 255 - CLIP_MEAN[c]) / CLIP_STD[c], 5);
      for (const n of [0, 1]) {
        const slice = batch.data.subarray((n * 3 + c) * plane, (n * 3 + c + 1) * plane);
        expect(slice.every((v) => v === want)).toBe(true);
      }
    }
  });

  test('BLIP original repo transform: same pixels, torchvision x/255 arithmetic', () => {
    const lut = pixelLookupTable(blipOriginalPreprocess());
    for (let c = 0; c < 3; c++) {
      for (let v = 0; v < 256; v++) expect(lut[c * 256 + v]).toBe(f32(f32(f32(v / 255) - f32(CLIP_MEAN[c])) / f32(CLIP_STD[c])));
    }
    const img = smooth(50, 40);
    expect(Array.from(applyGeometry(img, blipOriginalPreprocess(32)).data)).toEqual(Array.from(applyGeometry(img, blipPreprocess(32)).data));
    expect(() => preprocessImage(img, { ...blipPreprocess(), colour: 'red' } as never)).toThrow(/preprocess config key "colour"/);
  });

  test('CLIP: shortest edge 224, centre crop 224 (floor), CLIP mean/std', () => {
    const cfg = clipPreprocess();
    const out = preprocessImage(constant(640, 480, rgb), cfg);
    expect(out.shape).toEqual([3, 224, 224]);
    const want = f32(f32(f32(rgb[1] * (1 / 255)) - f32(CLIP_MEAN[1])) / f32(CLIP_STD[1]));
    expect(out.data[224 * 224 + 5]).toBe(want);
    // 303×224 needs no resize; the crop starts at column (303-224)//2 = 39.
    const columns = makeImage(303, 224, (x) => x % 256);
    const geo = applyGeometry(columns, cfg);
    expect([geo.width, geo.height]).toEqual([224, 224]);
    expect(px(geo, 0, 0)[0]).toBe(39);
    expect(px(geo, 223, 100)[0]).toBe((39 + 223) % 256);
  });

  test('DINO: 384×384 bilinear, ToTensor (x/255 in float32) + ImageNet mean/std', () => {
    const out = preprocessImage(constant(50, 70, rgb), dinoPreprocess());
    expect(out.shape).toEqual([3, 384, 384]);
    const plane = 384 * 384;
    for (let c = 0; c < 3; c++) {
      const want = f32(f32(f32(rgb[c] / 255) - f32(IMAGENET_MEAN[c])) / f32(IMAGENET_STD[c]));
      expect(out.data[c * plane + 1234]).toBe(want);
    }
    expect(dinoPreprocess().resample).toBe(Resample.BILINEAR);
    // The DINO geometry equals a plain Pillow bilinear resize.
    const img = smooth(64, 48);
    expect(Array.from(applyGeometry(img, dinoPreprocess(32)).data)).toEqual(Array.from(resize(img, 32, 32, Resample.BILINEAR).data));
  });

  test('SD VAE: [-1, 1] range, equals diffusers 2·(x/255) − 1 in float32, centre/random crop and flip', () => {
    const lut = pixelLookupTable(sdVaePreprocess());
    expect(lut[0]).toBe(-1);
    expect(lut[255]).toBe(1);
    for (let v = 0; v < 256; v++) expect(lut[v]).toBe(f32(f32(v / 255) * 2 - 1));
    const out = preprocessImage(smooth(96, 64), sdVaePreprocess({ size: 48 }));
    expect(out.shape).toEqual([3, 48, 48]);
    expect(Math.min(...out.data)).toBeGreaterThanOrEqual(-1);
    expect(Math.max(...out.data)).toBeLessThanOrEqual(1);

    const random = sdVaePreprocess({ size: 48, randomCrop: true, randomFlip: true });
    expect(() => preprocessImage(smooth(96, 64), random)).toThrow(/is random/);
    const a = preprocessImage(smooth(96, 64), random, 123);
    const b = preprocessImage(smooth(96, 64), random, 123);
    expect(a.shape).toEqual([3, 48, 48]);
    expect(Array.from(a.data)).toEqual(Array.from(b.data));

    const flipped = applyGeometry(smooth(8, 4), { ...sdVaePreprocess({ size: 4 }), flipProbability: 1 });
    const plain = applyGeometry(smooth(8, 4), sdVaePreprocess({ size: 4 }));
    expect(px(flipped, 0, 1)).toEqual(px(plain, 3, 1));
  });

  test('DINO and SD VAE recipes are bit-exact against torchvision 0.26 + Pillow 12.3 (recorded digests)', () => {
    // References: T.Compose([T.Resize((96, 96)), T.ToTensor(), T.Normalize(ImageNet)]) and
    // T.Compose([T.Resize(64, BILINEAR), T.CenterCrop(64), T.ToTensor(), T.Normalize([.5], [.5])])
    // on the 173×131 pattern; sha256 (first 16 hex) of the float32 CHW bytes.
    const photo = pattern(173, 131, 7);
    expect(sha16(preprocessImage(photo, dinoPreprocess(96)).data)).toBe('c29d507a5992e0f6');
    expect(sha16(preprocessImage(photo, sdVaePreprocess({ size: 64 })).data)).toBe('93d62712109d819b');
  });

  test('fused rescale+normalise reproduces transformers fast processors (float32 mean·255, std·255)', () => {
    const cfg = { ...clipPreprocess(), rescale: { op: 'fused' as const, factor: 1 / 255 } };
    const lut = pixelLookupTable(cfg);
    for (let c = 0; c < 3; c++) {
      const mean = f32(f32(CLIP_MEAN[c]) * 255);
      const std = f32(f32(CLIP_STD[c]) * 255);
      for (let v = 0; v < 256; v++) expect(lut[c * 256 + v]).toBe(f32(f32(v - mean) / std));
    }
    // It differs from the slow processors' arithmetic in the last bits for some values, never more.
    const slow = pixelLookupTable(clipPreprocess());
    let differing = 0;
    for (let i = 0; i < 768; i++) {
      if (slow[i] !== lut[i]) differing++;
      expect(Math.abs(slow[i] - lut[i])).toBeLessThan(1e-6);
    }
    expect(differing).toBeGreaterThan(0);
  });

  test('FID Inception: uint8 NCHW, pixels unchanged', () => {
    const img = smooth(5, 4);
    const out = preprocessBatch([img, img], fidPreprocess());
    expect(out.data).toBeInstanceOf(Uint8Array);
    expect(out.shape).toEqual([2, 3, 4, 5]);
    const chw = Array.from({ length: 60 }, (_, k) => img.data[(k % 20) * 3 + Math.floor(k / 20)]);
    expect(Array.from(out.data.subarray(0, 60))).toEqual(chw);
    expect(Array.from(out.data.subarray(60, 120))).toEqual(chw);
    expect(() => preprocessBatch([img, smooth(6, 4)], fidPreprocess())).toThrow(/tensors\[1\]\.shape: expected \[3, 4, 5\] like item 0/);
  });

  test('BLIP training crop + flip is deterministic per seed and varies across seeds', () => {
    const img = smooth(120, 90);
    const cfg = blipTrainPreprocess(32);
    const a = preprocessBatch([img, img, img], cfg, 5);
    const b = preprocessBatch([img, img, img], cfg, 5);
    const c = preprocessBatch([img, img, img], cfg, 6);
    expect(a.shape).toEqual([3, 3, 32, 32]);
    expect(Array.from(a.data)).toEqual(Array.from(b.data));
    expect(Array.from(a.data)).not.toEqual(Array.from(c.data));
    const per = 3 * 32 * 32;
    // Items get different crops (own derived seeds).
    expect(Array.from(a.data.subarray(0, per))).not.toEqual(Array.from(a.data.subarray(per, 2 * per)));
    expect(() => preprocessBatch([img], cfg)).toThrow(/pass a seed/);
  });

  test('presets accept overrides and validation names bad fields', () => {
    const cfg = preprocessPreset('clip', { centerCrop: { height: 100, width: 120 } });
    expect(preprocessImage(constant(300, 200, rgb), cfg).shape).toEqual([3, 100, 120]);
    expect(() => preprocessPreset('blip', { normalize: { mean: [0, 0], std: [1, 1, 1] } as never })).toThrow(/blip\.normalize\.mean: expected an array of 3 numbers/);
    expect(() => preprocessPreset('blip', { flipProbability: 2 })).toThrow(/blip\.flipProbability/);
    expect(() => preprocessPreset('nope' as never)).toThrow(/preprocessing preset: expected one of/);
  });
});

describe('Hugging Face preprocessor_config.json', () => {
  test('BLIP config equals the BLIP preset', () => {
    const json = {
      do_normalize: true,
      do_rescale: true,
      do_resize: true,
      do_convert_rgb: true,
      image_mean: CLIP_MEAN,
      image_std: CLIP_STD,
      image_processor_type: 'BlipImageProcessor',
      processor_class: 'BlipProcessor',
      resample: 3,
      rescale_factor: 0.00392156862745098,
      size: { height: 384, width: 384 },
    };
    const cfg = preprocessFromHfConfig(json);
    expect(cfg.resize).toEqual({ height: 384, width: 384 });
    expect(cfg.resample).toBe(Resample.BICUBIC);
    expect(cfg.centerCrop).toBeNull();
    expect(Array.from(pixelLookupTable(cfg))).toEqual(Array.from(pixelLookupTable(blipPreprocess())));
  });

  test('legacy CLIP config (int size = shortest edge, int crop) equals the CLIP preset', async () => {
    const file = path.join(dir, 'preprocessor_config.json');
    await fs.writeFile(file, JSON.stringify({ crop_size: 224, do_center_crop: true, do_normalize: true, do_resize: true, feature_extractor_type: 'CLIPFeatureExtractor', image_mean: CLIP_MEAN, image_std: CLIP_STD, resample: 3, size: 224 }));
    const cfg = await loadHfPreprocessConfig(file);
    expect(cfg.resize).toEqual({ shortestEdge: 224 });
    expect(cfg.centerCrop).toEqual({ height: 224, width: 224 });
    const img = smooth(160, 120);
    expect(Array.from(preprocessImage(img, cfg).data)).toEqual(Array.from(preprocessImage(img, clipPreprocess()).data));
  });

  test('class defaults fill missing keys; do_* flags switch steps off', () => {
    const vit = preprocessFromHfConfig({ image_processor_type: 'ViTImageProcessor', size: 32, do_normalize: false });
    expect(vit.resize).toEqual({ height: 32, width: 32 });
    expect(vit.resample).toBe(Resample.BILINEAR);
    expect(vit.normalize).toBeNull();
    expect(pixelLookupTable(vit)[255]).toBe(f32(255 * (1 / 255)));
    const clip = preprocessFromHfConfig({ image_processor_type: 'CLIPImageProcessor' });
    expect(clip.resize).toEqual({ shortestEdge: 224 });
    expect(clip.centerCrop).toEqual({ height: 224, width: 224 });
    const raw = preprocessFromHfConfig({ image_processor_type: 'BlipImageProcessor', do_resize: false, do_rescale: false, do_normalize: false });
    expect(pixelLookupTable(raw)[77]).toBe(77);
  });

  test('bad values and unreadable files give errors naming the file and key', async () => {
    expect(() => preprocessFromHfConfig({ image_processor_type: 'BlipImageProcessor', resample: 7 }, 'cfg.json')).toThrow(/^cfg\.json: resample: expected a Pillow resample filter/);
    expect(() => preprocessFromHfConfig({ image_processor_type: 'BlipImageProcessor', image_mean: [0.5] }, 'cfg.json')).toThrow(/cfg\.json: image_mean: expected an array of 3 numbers/);
    expect(() => preprocessFromHfConfig({ image_processor_type: 'BlipImageProcessor', do_resize: 'yes' }, 'cfg.json')).toThrow(/cfg\.json: do_resize: expected a boolean/);
    expect(() => preprocessFromHfConfig({ image_processor_type: 'MysteryProcessor' }, 'cfg.json')).toThrow(/cfg\.json: size: expected .* got nothing/);
    await expect(loadHfPreprocessConfig(path.join(dir, 'nope.json'))).rejects.toThrow(/nope\.json: cannot read preprocessor config: file not found/);
    const bad = path.join(dir, 'bad.json');
    await fs.writeFile(bad, '{ not json');
    await expect(loadHfPreprocessConfig(bad)).rejects.toThrow(/bad\.json:\d+:\d+: not valid JSON/);
  });
});

describe('tensors back to images', () => {
  test('[-1,1] uses diffusers rounding: (x/2+0.5).clamp(0,1)·255, round half to even', () => {
    const values = [-1, 1, 0, -3, 2, NaN, 1 / 255 - 1, 0.5];
    const data = new Float32Array(3 * values.length);
    data.set(values, 0);
    data.set(values, values.length);
    data.set(values, 2 * values.length);
    const img = tensorToImage(data, [3, 1, values.length]);
    const expected = values.map((x) => {
      const v = Math.min(1, Math.max(0, f32(f32(f32(x) / 2) + 0.5))) || 0;
      const s = f32(v * 255);
      const fl = Math.floor(s);
      return s - fl === 0.5 ? (fl % 2 === 0 ? fl : fl + 1) : Math.round(s);
    });
    expect(expected.slice(0, 6)).toEqual([0, 255, 128, 0, 255, 0]); // 127.5 → 128 (even)
    expect(Array.from({ length: values.length }, (_, i) => px(img, i, 0)[0])).toEqual(expected);
    const hwc = tensorToImage(new Float32Array([0, 0.5, 1, 1, 0.5, 0]), [1, 2, 3], { range: '[0,1]' });
    expect(Array.from(hwc.data)).toEqual([0, 128, 255, 255, 128, 0]);
    expect(() => tensorToImage(new Float32Array(27), [3, 3, 3])).toThrow(/ambiguous/);
  });

  test('savePng writes atomically and the PNG decodes back to the same pixels', async () => {
    const img = smooth(21, 13);
    const chw = new Uint8Array(3 * 21 * 13);
    for (let c = 0; c < 3; c++) for (let i = 0; i < 21 * 13; i++) chw[c * 273 + i] = img.data[i * 3 + c];
    const sub = await fs.mkdtemp(path.join(dir, 'save-'));
    const file = path.join(sub, 'out.png');
    await savePng(file, chw, [3, 13, 21], { range: 'uint8' });
    expect(await fs.readdir(sub)).toEqual(['out.png']); // no temp file left behind
    expect(Array.from((await loadImage(file)).data)).toEqual(Array.from(img.data));

    // float [-1, 1] CHW → PNG → decoded bytes follow the rounding rule
    const floats = new Float32Array(chw.length);
    for (let i = 0; i < chw.length; i++) floats[i] = chw[i] / 127.5 - 1;
    const decoded = await decodeImage(await encodePng(floats, [1, 3, 13, 21]));
    expect(Array.from(decoded.data)).toEqual(Array.from(tensorToImage(floats, [3, 13, 21]).data));
    let maxDiff = 0;
    for (let i = 0; i < img.data.length; i++) maxDiff = Math.max(maxDiff, Math.abs(decoded.data[i] - img.data[i]));
    expect(maxDiff).toBe(0);

    // Missing folders are created; a path through a regular file is a named error.
    await savePng(path.join(dir, 'new-dir', 'x.png'), chw, [3, 13, 21]);
    expect((await fs.stat(path.join(dir, 'new-dir', 'x.png'))).isFile()).toBe(true);
    await fs.writeFile(path.join(dir, 'plain-file'), 'x');
    await expect(savePng(path.join(dir, 'plain-file', 'x.png'), chw, [3, 13, 21])).rejects.toThrow(/plain-file\/x\.png: cannot write file/);
  });

  test('batchToImages splits NCHW, and the contact sheet tiles images with padding', async () => {
    const batch = preprocessBatch([constant(2, 2, [255, 0, 0]), constant(2, 2, [0, 255, 0]), constant(2, 2, [0, 0, 255])], fidPreprocess());
    const images = batchToImages(batch.data, batch.shape);
    expect(images.map((im) => px(im, 1, 1))).toEqual([[255, 0, 0], [0, 255, 0], [0, 0, 255]]);
    const sheet = makeGrid(images, { columns: 2, padding: 1, background: [9, 9, 9] });
    expect([sheet.width, sheet.height]).toEqual([7, 7]);
    expect(px(sheet, 0, 0)).toEqual([9, 9, 9]);
    expect(px(sheet, 1, 1)).toEqual([255, 0, 0]);
    expect(px(sheet, 4, 2)).toEqual([0, 255, 0]);
    expect(px(sheet, 3, 3)).toEqual([9, 9, 9]);
    expect(px(sheet, 2, 5)).toEqual([0, 0, 255]);
    expect(px(sheet, 5, 5)).toEqual([9, 9, 9]); // empty last cell
    const file = path.join(dir, 'grid.png');
    await saveGrid(file, images, { columns: 3 });
    const back = await loadImage(file);
    expect([back.width, back.height]).toEqual([3 * 2 + 4 * 2, 2 + 2 * 2]);
  });
});

describe('decode pool', () => {
  let files: string[];
  beforeAll(async () => {
    files = [];
    for (let i = 0; i < 7; i++) {
      const file = path.join(dir, `pool-${i}.png`);
      await rawSharp(makeImage(40 + i * 3, 30 + i, (x, y, c) => (x * 5 + y * 3 + c * 40 + i * 20) % 256)).png().toFile(file);
      files.push(file);
    }
  });

  test('decodeBatch equals sequential decode + preprocess, in input order', async () => {
    const cfg = blipPreprocess(24);
    const batch = await decodeBatch(files, cfg, { concurrency: 3 });
    const images = await Promise.all(files.map((f) => loadImage(f)));
    const sequential = preprocessBatch(images, cfg);
    expect(batch.shape).toEqual([7, 3, 24, 24]);
    expect(Array.from(batch.data)).toEqual(Array.from(sequential.data));
  });

  test('random recipes give the same batches for any concurrency (per-item seeds)', async () => {
    const cfg = blipTrainPreprocess(16);
    const one = await decodeBatch(files, cfg, { concurrency: 1, seed: 42 });
    const many = await decodeBatch(files, cfg, { concurrency: 5, seed: 42 });
    expect(Array.from(one.data)).toEqual(Array.from(many.data));
    const epoch1 = await decodeBatch(files, cfg, { concurrency: 5, seed: 42, epoch: 1 });
    expect(Array.from(epoch1.data)).not.toEqual(Array.from(one.data));
    const img = await loadImage(files[2]);
    const direct = preprocessImage(img, cfg, new Rng(deriveSeed(42, 0, 2)));
    const per = 3 * 16 * 16;
    expect(Array.from(one.data.subarray(2 * per, 3 * per))).toEqual(Array.from(direct.data));
    await expect(decodeBatch(files, cfg)).rejects.toThrow(/pass options\.seed/);
  });

  test('prefetchBatches yields ordered batches with their paths; errors name the bad file', async () => {
    const cfg = blipPreprocess(20);
    const whole = await decodeBatch(files, cfg);
    const seen: number[][] = [];
    const per = 3 * 20 * 20;
    for await (const b of prefetchBatches(files, cfg, { batchSize: 3, concurrency: 4 })) {
      seen.push(b.indices);
      expect(b.paths).toEqual(b.indices.map((i) => files[i]));
      expect(b.tensor.shape).toEqual([b.indices.length, 3, 20, 20]);
      expect(Array.from(b.tensor.data)).toEqual(Array.from(whole.data.subarray(b.indices[0] * per, (b.indices[0] + b.indices.length) * per)));
    }
    expect(seen).toEqual([[0, 1, 2], [3, 4, 5], [6]]);
    const dropLast: number[][] = [];
    for await (const b of prefetchBatches(files, cfg, { batchSize: 3, keepLast: false })) dropLast.push(b.indices);
    expect(dropLast).toEqual([[0, 1, 2], [3, 4, 5]]);

    const missing = path.join(dir, 'gone.png');
    const withMissing = [files[0], missing, files[1]];
    await expect(decodeBatch(withMissing, cfg, { concurrency: 2 })).rejects.toThrow(`${missing}: cannot read image: file not found`);
    // FID input keeps each image's size, so mixed sizes cannot form one batch: a clear error.
    await expect(decodeBatch(files.slice(0, 2), fidPreprocess())).rejects.toThrow(/images in a batch must share a size/);
  });
});

describe('Rng', () => {
  test('deterministic by seed, ints in range and roughly uniform, seeds checked', () => {
    const a = new Rng(99);
    const b = new Rng(99);
    const xs = Array.from({ length: 5 }, () => a.nextUint32());
    expect(Array.from({ length: 5 }, () => b.nextUint32())).toEqual(xs);
    expect(new Rng(100).nextUint32()).not.toBe(xs[0]);
    const counts = new Array(6).fill(0);
    const r = new Rng(3);
    for (let i = 0; i < 6000; i++) {
      const v = r.int(2, 8);
      expect(v >= 2 && v < 8).toBe(true);
      counts[v - 2]++;
    }
    for (const c of counts) expect(Math.abs(c - 1000)).toBeLessThan(150);
    for (let i = 0; i < 1000; i++) {
      const u = r.next();
      expect(u >= 0 && u < 1).toBe(true);
    }
    expect(deriveSeed(1, 2)).toBe(deriveSeed(1, 2));
    expect(deriveSeed(1, 2)).not.toBe(deriveSeed(1, 3));
    expect(deriveSeed(1, 0, 2)).not.toBe(deriveSeed(1, 1, 2));
    expect(() => new Rng(1.5)).toThrow('seed: expected an integer, got number 1.5');
    expect(() => r.int(5, 5)).toThrow(/high: expected an integer >= 6/);
  });
});

describe('prefetchMap', () => {
  test('bounded concurrency, ordered output, errors surface at their item', async () => {
    let active = 0;
    let peak = 0;
    const delays = [30, 5, 20, 1, 10, 2];
    const out: number[] = [];
    for await (const v of prefetchMap(delays, async (d, i) => {
      active++;
      peak = Math.max(peak, active);
      await new Promise((r) => setTimeout(r, d));
      active--;
      return i * 10;
    }, 3)) out.push(v);
    expect(out).toEqual([0, 10, 20, 30, 40, 50]);
    expect(peak).toBe(3);

    const got: number[] = [];
    const failing = (async () => {
      for await (const v of prefetchMap([1, 2, 3], async (x) => {
        if (x === 2) throw new RoundtripError('item 2 broke');
        return x;
      }, 2)) got.push(v);
    })();
    await expect(failing).rejects.toThrow('item 2 broke');
    expect(got).toEqual([1]);
  });
});
