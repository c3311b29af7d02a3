/**
 * Finetuning augmentation (flips that keep side-naming captions true, BLIP's RandAugment) and the
 * recipe presets. Pure TypeScript apart from the micro-batch tensors: fast.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { saveRgbPng } from '../lib/image/encode';
import { Rng } from '../lib/image/random';
import { RgbImage } from '../lib/image/types';
import { applyGeometry, blipTrainPreprocess, isRandom, validatePreprocessConfig } from '../lib/image/preprocess';
import { applyRandAugmentOp, autoContrast, brightness, equalize, randAugment, rotate, sharpness, warpAffine, blipRandAugment } from '../lib/image/randaugment';
import { epochBatches, itemFlips, namesSide, readAnnotations, swapSides } from '../lib/train/finetune/data';
import { RECIPES, recipeLines, recipeSettings, resolveConfig, DEFAULT_CONFIG } from '../lib/train/finetune';

jest.setTimeout(60000);

function image(width: number, height: number, f: (x: number, y: number, c: number) => number): RgbImage {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) for (let c = 0; c < 3; c++) data[(y * width + x) * 3 + c] = f(x, y, c);
  return { data, width, height };
}

const px = (img: RgbImage, x: number, y: number) => Array.from(img.data.subarray((y * img.width + x) * 3, (y * img.width + x) * 3 + 3));

describe('captions of flipped images', () => {
  test('left and right are exchanged as whole words, case kept', () => {
    expect(swapSides('a red circle to the left of a blue square')).toBe('a red circle to the right of a blue square');
    expect(swapSides('Right of a LEFT thing; leftover rightly')).toBe('Left of a RIGHT thing; leftover rightly');
    expect(swapSides(swapSides('a circle on the left side, a square right of it'))).toBe('a circle on the left side, a square right of it');
    expect(namesSide('a circle on the left')).toBe(true);
    expect(namesSide('a leftover circle')).toBe(false);
  });

  test("'swap' shares one draw between the views and swaps the flipped view's caption; 'skip' never flips side captions; 'keep' leaves both", () => {
    const caption = 'a green star left of a red circle';
    let flipped = 0;
    for (let index = 0; index < 200; index++) {
      const f = itemFlips(caption, { seed: 7, epoch: 0, index, sdFlip: true, blipFlip: true, flipSides: 'swap' });
      expect(f.sd).toBe(f.blip);
      expect(f.blipCaption).toBe(f.blip ? 'a green star right of a red circle' : caption);
      if (f.blip) flipped++;
      // release layout: SD view never flips, so its caption never changes
      const r = itemFlips(caption, { seed: 7, epoch: 0, index, sdFlip: false, blipFlip: true, flipSides: 'swap' });
      expect(r.sd).toBe(false);
      expect(r.sdCaption).toBe(caption);
      expect(r.blip).toBe(f.blip);
      expect(itemFlips(caption, { seed: 7, epoch: 0, index, sdFlip: true, blipFlip: true, flipSides: 'skip' }).blip).toBe(false);
      const keep = itemFlips(caption, { seed: 7, epoch: 0, index, sdFlip: true, blipFlip: true, flipSides: 'keep' });
      expect([keep.shared, keep.sdCaption, keep.blipCaption]).toEqual([false, caption, caption]);
    }
    expect(flipped).toBeGreaterThan(70);
    expect(flipped).toBeLessThan(130);
    const plain = Array.from({ length: 50 }, (_, index) => itemFlips('a big red circle', { seed: 7, epoch: 0, index, sdFlip: true, blipFlip: true, flipSides: 'skip' }).blip);
    expect(plain.some(Boolean)).toBe(true);
  });

  test('micro-batches: a mirrored view carries the swapped caption, an unmirrored one the original', async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'augment-'));
    try {
      // left half dark, right half bright: the mirror is easy to tell apart
      const n = 12;
      for (let i = 0; i < n; i++) await saveRgbPng(path.join(root, `img${i}.png`), image(16, 16, (x, _y, c) => (x < 8 ? 20 + i : 220 - c)));
      const entries = Array.from({ length: n }, (_, i) => ({ image: `img${i}.png`, caption: `a circle left of a square number ${i}`, image_id: String(i) }));
      fs.writeFileSync(path.join(root, 'train.json'), JSON.stringify(entries));
      const items = readAnnotations(path.join(root, 'train.json'), root);
      const common = { seed: 3, epoch: 0, batchSize: 4, fromPosition: 0, concurrency: 4, sdSize: 16, sdRandomCrop: false, blipSize: 16, blipMinScale: 0.5 };
      let swapped = 0;
      let kept = 0;
      for await (const mb of epochBatches(items, { ...common, sdFlip: true, flipSides: 'swap' })) {
        const sd = mb.sdImages.toTypedArray() as Float32Array;
        mb.items.forEach((item, b) => {
          // SD view (centre crop, no random geometry): channel 0, row 0, first column dark unless mirrored
          const firstColumn = sd[b * 3 * 16 * 16];
          const mirrored = firstColumn > 0;
          expect(mb.sdCaptions[b]).toBe(mirrored ? swapSides(item.caption) : item.caption);
          expect(mb.blipCaptions[b]).toBe(mb.sdCaptions[b]); // both views flip together
          if (mirrored) swapped++;
          else kept++;
        });
        mb.sdImages.dispose();
        mb.blipImages.dispose();
      }
      expect(swapped).toBeGreaterThan(0);
      expect(kept).toBeGreaterThan(0);
      // 'keep' reproduces the old draws: captions untouched whatever the views show
      for await (const mb of epochBatches(items, { ...common, sdFlip: true, flipSides: 'keep' })) {
        mb.items.forEach((item, b) => expect([mb.sdCaptions[b], mb.blipCaptions[b]]).toEqual([item.caption, item.caption]));
        mb.sdImages.dispose();
        mb.blipImages.dispose();
      }
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('RandAugment (BLIP RandomAugment(2, 5))', () => {
  const ramp = image(12, 10, (x, y, c) => (x * 17 + y * 5 + c * 40) % 256);

  test('enhance factor at magnitude 5 is 1.0: Brightness and Sharpness are the identity', () => {
    expect(Array.from(applyRandAugmentOp(ramp, 'Brightness', 5, new Rng(1)).data)).toEqual(Array.from(ramp.data));
    expect(Array.from(applyRandAugmentOp(ramp, 'Sharpness', 5, new Rng(1)).data)).toEqual(Array.from(ramp.data));
    expect(px(brightness(ramp, 2), 3, 0)).toEqual(px(ramp, 3, 0).map((v) => Math.min(255, 2 * v)));
    // factor 0: the smoothed image inside the border, the border untouched
    const flat = image(5, 5, () => 90);
    expect(Array.from(sharpness(flat, 0).data)).toEqual(Array.from(flat.data));
  });

  test('AutoContrast stretches each channel to 0..255; Equalize spreads a two-level channel', () => {
    const dull = image(4, 4, (x, _y, c) => 100 + x * 10 + c);
    const a = autoContrast(dull);
    expect(px(a, 0, 0)).toEqual([0, 0, 0]);
    expect(px(a, 3, 0)).toEqual([255, 255, 255]);
    // 8 pixels at 10, 8 at 200: step = 8 // 255 = 0 → unchanged (the reference's early exit)
    const two = image(4, 4, (x) => (x < 2 ? 10 : 200));
    expect(Array.from(equalize(two).data)).toEqual(Array.from(two.data));
    const many = image(32, 32, (x, y) => (x + 32 * y) % 4 === 0 ? 10 : 200);
    // hist: 256 at 10, 768 at 200; step = 256 // 255 = 1; table[10] = 0, table[200] = (0 + 256) // 1 clipped to 255
    expect(px(equalize(many), 0, 0)).toEqual([0, 0, 0]);
    expect(px(equalize(many), 1, 0)).toEqual([255, 255, 255]);
  });

  test('geometric ops: integer translation shifts with grey fill; zero rotation is the identity', () => {
    const t = warpAffine(ramp, [1, 0, 2, 0, 1, 0]);
    expect(px(t, 5, 4)).toEqual(px(ramp, 3, 4));
    expect(px(t, 0, 4)).toEqual([128, 128, 128]);
    expect(Array.from(rotate(ramp, 0).data)).toEqual(Array.from(ramp.data));
    // 180° about the centre (W/2, H/2) maps pixel (x, y) to (W − x, H − y): (1, 1) reads source (11, 9)
    const r = rotate(ramp, 180);
    expect(px(r, 1, 1)).toEqual(px(ramp, 11, 9));
  });

  test('seeded: the same seed gives the same image; the recipe draws it after the flip', () => {
    const cfg = blipRandAugment();
    expect(cfg).toEqual({ n: 2, m: 5, ops: ['Identity', 'AutoContrast', 'Brightness', 'Sharpness', 'Equalize', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate'] });
    const a = randAugment(ramp, cfg, new Rng(11));
    expect(Array.from(randAugment(ramp, cfg, new Rng(11)).data)).toEqual(Array.from(a.data));
    const differs = [1, 2, 3, 4, 5, 6, 7, 8].some((s) => Buffer.compare(Buffer.from(randAugment(ramp, cfg, new Rng(s)).data), Buffer.from(ramp.data)) !== 0);
    expect(differs).toBe(true);
    const recipe = blipTrainPreprocess(8, 0.5, { flip: false, randAugment: true });
    expect(isRandom(recipe)).toBe(true);
    expect(recipe.flipProbability).toBe(0);
    expect(() => validatePreprocessConfig({ ...recipe, randAugment: { n: 2, m: 11 } as any })).toThrow(/randAugment\.m/);
    expect(() => validatePreprocessConfig({ ...recipe, randAugment: { n: 2, m: 5, ops: ['Blur'] } as any })).toThrow(/randAugment\.ops\[0\]/);
    expect(applyGeometry(ramp, recipe, new Rng(4)).width).toBe(8);
  });
});

describe('recipes', () => {
  const base = { blip: 'b', sd: 's', annotations: 'a.json', images: 'i', output: 'o' };

  test("'default' keeps the package's behaviour; keys given override the recipe and are marked", () => {
    const c = resolveConfig({ ...base });
    expect(c.recipe).toBe('default');
    for (const [key, value] of Object.entries(recipeSettings('default'))) expect((c as any)[key]).toEqual(value);
    expect(c.weightDecay).toBe(DEFAULT_CONFIG.weightDecay);
    const o = resolveConfig({ ...base, recipe: 'default', labelSmoothing: 0 });
    expect(o.labelSmoothing).toBe(0);
    expect(recipeLines('default', o as any)).toContain('labelSmoothing: 0 (recipe: 0.1)');
    expect(recipeLines('default', o as any)).toContain('schedule: "summed"');
  });

  test('bad values are refused by key', () => {
    expect(() => resolveConfig({ ...base, recipe: 'paper' })).toThrow(/recipe/);
    expect(() => resolveConfig({ ...base, flipSides: 'mirror' })).toThrow(/flipSides/);
    expect(() => resolveConfig({ ...base, routes: { recImg: 'sd' } })).toThrow(/routes\.recImg/);
    expect(() => resolveConfig({ ...base, routes: { recCap: 'blip' } })).toThrow(/routes' key/);
    expect(() => resolveConfig({ ...base, blipRandAugment: 'yes' })).toThrow(/blipRandAugment/);
    expect(RECIPES).toEqual(['default', 'release']);
  });

  test("'release' sets the release's augmentation and optimizer details", () => {
    const r = recipeSettings('release');
    expect(r).toMatchObject({ sdFlip: false, blipFlip: true, blipRandAugment: true, sdRandomCrop: true, labelSmoothing: 0.1, blipWeightDecay: 0, blipClip: 0, unetWeightDecay: 0.01, unetClip: 1, schedule: 'alternating-micro', batchSize: 1, gradAccum: 8 });
    // every key resolves in this build's finetuning config, and the resolved config carries it
    const c = resolveConfig({ ...base, recipe: 'release' }) as any;
    for (const [key, value] of Object.entries(r)) expect(c[key]).toEqual(value);
    expect(c).toMatchObject({ clipMode: 'per-model', softFraming: 'release', clipPadding: 'longest', recTxtNormalize: false, recTxtMode: 'ddpm-step' });
    // a key given beside the recipe wins
    expect(resolveConfig({ ...base, recipe: 'release', gradAccum: 2 }).gradAccum).toBe(2);
  });
});

describe('finetuning report', () => {
  test('loss panels: one per term, raw and smoothed, log scale for wide ranges', () => {
    const { lossPanelsSvg, smoothSeries } = require('../lib/train/finetune/report');
    expect(smoothSeries([[1, 1], [2, 3], [3, NaN], [4, 3]], 0.5)).toEqual([[1, 1], [2, 2], [3, 2], [4, 2.5]]);
    const wide: [number, number][] = Array.from({ length: 50 }, (_, i) => [i + 1, 100 / (i + 1)]);
    const flat: [number, number][] = Array.from({ length: 50 }, (_, i) => [i + 1, 1 + (i % 3) * 0.1]);
    const svg: string = lossPanelsSvg({ total: wide, cap: flat });
    expect(svg.match(/stroke-opacity="0.3"/g)).toHaveLength(2);
    expect(svg).toContain('total (log scale)');
    expect(svg).not.toContain('cap (log scale)');
  });
});
