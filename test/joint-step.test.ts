/**
 * The native joint objective and one-call training step equal the TypeScript loss-term composition (losses.ts)
 * on the same seeds: losses, gradient norms and trained weights, for both schedules and gradient accumulation.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadBridge } from '../lib/paper/bridge';
import { loadBertTokenizer } from '../lib/tokenizers/load';
import { Tensor, disposeAll, noGrad } from '../lib/runtime/tensor';
import { AdamW } from '../lib/train/optimizer';
import {
  LossTerm,
  ObjectiveOptions,
  disposeCaptionBatch,
  encodeCaptions,
  encodeLatents,
  presetWeights,
  reconstructImageLoss,
  reconstructTextLoss,
  sdDenoise,
} from '../lib/train/finetune';
import { JointStep } from '../lib/paper/joint/joint-step';
import { deriveSeed } from '../lib/image/random';
import { DATA } from './support/paths';
import { makeTinyBlip, makeTinySd } from './support/tiny-models';
import { JointModels as Models, composed, free, loadJointModels } from './support/joint-models';
import { pixels } from './support/pixels';
import { memorySnapshot } from '../lib/runtime/memory';

jest.setTimeout(300000);

let root: string;
let blipDir: string;
let sdDir: string;
const bridge = loadBridge(path.join(DATA, 'seed-release', 'reindex_clip_to_blip.json'));
const CAPTIONS = ['A dog runs on the grass.', 'two red buses parked near a building'];

beforeAll(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'joint-step-'));
  blipDir = makeTinyBlip(path.join(root, 'blip'));
  sdDir = makeTinySd(path.join(root, 'sd'), 'DDPMScheduler');
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const load = () => loadJointModels(blipDir, sdDir, CAPTIONS, bridge);

const objective = (schedule: ObjectiveOptions['schedule'], extra: Partial<ObjectiveOptions> = {}): ObjectiveOptions => ({
  weights: presetWeights('joint'),
  schedule,
  temperature: 1,
  softMode: 'probs',
  recTxtMode: 'ddpm-step',
  labelSmoothing: 0.1,
  clipStartId: 49406,
  clipEndId: 49407,
  clipPadId: 49407,
  ...extra,
});

function maxRelDiff(a: number, b: number): number {
  return Math.abs(a - b) / Math.max(1e-12, Math.abs(a), Math.abs(b));
}

describe('native joint step', () => {
  test.each([
    ['summed', 1],
    ['alternating-micro', 4],
  ] as const)('schedule %s, accumulation %i: equals the loss-term composition (losses, grad norms, trained weights)', async (schedule, accum) => {
    const a = await load(); // the native step
    const b = await load(); // the composition
    const opts = objective(schedule);
    const images = { blipImages: pixels(2, 64, 11, -1.8, 2.1), sdImages: pixels(2, 64, 12) };
    const adam = { lr: 2e-3, weightDecay: 0.01 };
    const split = (m: Models, prefix: string) => Object.fromEntries(Object.entries(m.params).filter(([n]) => n.startsWith(prefix)));
    const step = JointStep.create({ blip: a.blip, sd: a.sd, bridge, visionTrainable: false }, opts, {
      optimizers: { blip: new AdamW(split(a, 'blip:'), adam), unet: new AdamW(split(a, 'unet:'), adam) },
      clipMode: 'global',
      clip: 1,
    });
    const ref = new AdamW(b.params, adam);
    for (let s = 0; s < 2; s++) {
      const seeds = Array.from({ length: accum }, (_, k) => deriveSeed(7, 3, s, k));
      const stats = await step.run(seeds.map(() => ({ ...images, captions: a.captions })), { step: s, lr: adam.lr, seeds });
      expect(stats.applied).toBe(true);
      ref.zeroGrad();
      let loss = 0;
      const sums: Partial<Record<LossTerm, number>> = {};
      for (let k = 0; k < accum; k++) {
        const { total, terms } = await composed(b, { ...images, captions: b.captions }, opts, s, k, seeds[k]);
        loss += total.item() / accum;
        for (const [t, v] of Object.entries(terms)) sums[t as LossTerm] = (sums[t as LossTerm] ?? 0) + v!.item() / accum;
        const scaled = accum > 1 ? total.div(accum) : total;
        await scaled.backward();
        disposeAll([total, scaled, Object.values(terms)]);
      }
      const norm = ref.clipGradNorm(1);
      await ref.step();
      expect(maxRelDiff(stats.loss, loss)).toBeLessThan(1e-5);
      expect(Object.keys(stats.terms).sort()).toEqual(Object.keys(sums).sort());
      for (const [t, v] of Object.entries(sums)) expect(maxRelDiff(stats.terms[t as LossTerm]!, v!)).toBeLessThan(1e-5);
      // The first step's gradient norm and (clipped) gradients: equal to summation order (1e-4 of the tensor's largest
      // entry). Later steps start from weights that already differ by AdamW's rounding (below): only losses compared.
      if (s === 0) expect(maxRelDiff(stats.gradNorm.total, norm)).toBeLessThan(1e-4);
      if (s === 0) for (const [n, t] of Object.entries(a.params)) {
        const [ga, gb] = [t.grad()!, b.params[n].grad()!];
        const scale = Math.max(...Array.from(gb.toFloat32Array(), Math.abs));
        expect({ n, bad: ga.compare(gb, 1e-4 * scale, 0).bad }).toEqual({ n, bad: 0 });
        disposeAll([ga, gb]);
      }
      // The updated weights. AdamW divides each element's step by its own gradient scale, so an element whose
      // gradient is near eps moves by up to lr on a summation-order difference: bound them by 1 % of lr.
      if (s === 0) for (const [n, t] of Object.entries(a.params)) expect({ n, bad: t.compare(b.params[n], 0.01 * adam.lr, 0).bad }).toEqual({ n, bad: 0 });
    }
    step.dispose();
    disposeAll([images.blipImages, images.sdImages]);
    free(a);
    free(b);
  });

  test('trainingConvPacking off: the step packs none of the UNet\'s convolutions and gives the same bits', async () => {
    const run = async (packing: boolean) => {
      const m = await load();
      m.sd.unet.model.setTrainingConvPacking(packing);
      const images = { blipImages: pixels(2, 64, 41, -1.8, 2.1), sdImages: pixels(2, 64, 42) };
      const before = memorySnapshot().nativePackedWeightBytes;
      const { total, terms } = await JointStep.cached({ blip: m.blip, sd: m.sd, bridge, visionTrainable: false }, objective('summed')).objective({ ...images, captions: m.captions }, { step: 0, seed: 5 });
      const held = memorySnapshot().nativePackedWeightBytes - before;
      const values = [total.item(), ...Object.values(terms).map((t) => t!.item())];
      disposeAll([total, Object.values(terms), images.blipImages, images.sdImages]);
      free(m);
      return { held, values };
    };
    const on = await run(true);
    const off = await run(false);
    expect(on.held).toBeGreaterThan(0);
    expect(off.held).toBe(0);
    expect(off.values).toEqual(on.values);
  });

  test('the release framing: BOS, softmax of every row from the first caption prediction on, EOS', async () => {
    const m = await load();
    const images = { blipImages: pixels(2, 64, 21, -1.8, 2.1), sdImages: pixels(2, 64, 22) };
    const opts = objective('summed', { weights: { cap: 0, recImg: 1, sd: 0, recTxt: 0 }, softFraming: 'release' });
    const { terms } = await JointStep.cached({ blip: m.blip, sd: m.sd, bridge, visionTrainable: false }, opts).objective({ ...images, captions: m.captions }, { step: 0, seed: 5 });
    // The same soft caption built by hand from BLIP's logits.
    const expected = await noGrad(async () => {
      const embeds = (await m.blip.vision(images.blipImages)).lastHiddenState;
      const logits = await m.blip.logits({ imageEmbeds: embeds, inputIds: m.captions.blipIds, attentionMask: m.captions.blipMask });
      const first = m.captions.promptLength - 1;
      const T = logits.shape[1];
      const index = Tensor.fromTypedArray(BigInt64Array.from(bridge.clipToBlip.map(BigInt)), [bridge.clipToBlip.length]);
      const body = Tensor.op('indexSelect', [logits.narrow(1, first, T - first).softmax(-1), index], { dim: 2 });
      const V = bridge.clipToBlip.length;
      const row = (id: number) => {
        const d = new Float32Array(2 * V);
        d[id] = 1;
        d[V + id] = 1;
        return Tensor.fromTypedArray(d, [2, 1, V]);
      };
      const P = Tensor.cat([row(49406), body, row(49407)], 1);
      const latents = await encodeLatents(m.sd, images.sdImages, 5);
      return reconstructImageLoss(m.sd, images.sdImages, P, { seed: 6, latents });
    });
    expect(maxRelDiff(terms.recImg!.item(), expected.item())).toBeLessThan(1e-5);
    disposeAll([expected, Object.values(terms), images.blipImages, images.sdImages]);
    free(m);
  });

  test('release options: raw pixels for L_rec_txt change it, CLIP ids padded to the longest caption, per-model clipping', async () => {
    const m = await load();
    const images = { blipImages: pixels(2, 64, 31, -1.8, 2.1), sdImages: pixels(2, 64, 32) };
    const models = { blip: m.blip, sd: m.sd, bridge, visionTrainable: false };
    const rec = (normalize: boolean) => objective('summed', { weights: { cap: 0, recImg: 0, sd: 0, recTxt: 1 }, recTxtNormalize: normalize });
    const a = await JointStep.cached(models, rec(true)).objective({ ...images, captions: m.captions }, { step: 0, seed: 9 });
    const b = await JointStep.cached(models, rec(false)).objective({ ...images, captions: m.captions }, { step: 0, seed: 9 });
    const latents = await encodeLatents(m.sd, images.sdImages, 9);
    const denoised = await sdDenoise(m.sd, images.sdImages, m.captions, { seed: 9 + 2, latents });
    const viaTerms = await reconstructTextLoss(m.sd, m.blip, images.sdImages, m.captions, { mode: 'ddpm-step', denoised, seed: 9 + 3, labelSmoothing: 0.1 });
    expect(maxRelDiff(a.total.item(), viaTerms.item())).toBeLessThan(1e-5);
    expect(Math.abs(a.total.item() - b.total.item())).toBeGreaterThan(1e-4);
    const longest = encodeCaptions({ blip: loadBertTokenizer(blipDir), clip: m.sd.tokenizer }, CAPTIONS, { clipPadding: 'longest' });
    const ids = Array.from(longest.clipIds.toTypedArray() as BigInt64Array, Number);
    const L = longest.clipIds.shape[1];
    expect(L).toBeLessThan(77);
    expect(ids[L - 1]).toBe(49407); // the longer caption ends with <|endoftext|> in the last column
    // Per-model clipping: BLIP unclipped, UNet clipped to a tiny norm; the step reports the norms before clipping.
    const split = (prefix: string) => Object.fromEntries(Object.entries(m.params).filter(([n]) => n.startsWith(prefix)));
    const before = Object.fromEntries(Object.entries(m.params).map(([n, t]) => [n, t.clone()]));
    const step = JointStep.create(models, objective('summed'), {
      optimizers: { blip: new AdamW(split('blip:'), { lr: 1e-3, weightDecay: 0 }), unet: new AdamW(split('unet:'), { lr: 1e-3, weightDecay: 0.01 }) },
      clipMode: 'per-model',
      clip: 1,
      blipClip: 0,
      unetClip: 1e-3,
    });
    const stats = await step.run([{ ...images, captions: m.captions }], { step: 0, lr: 1e-3, seeds: [3] });
    expect(stats.applied).toBe(true);
    expect(stats.gradNorm.blip).toBeGreaterThan(0);
    expect(maxRelDiff(stats.gradNorm.total, Math.hypot(stats.gradNorm.blip, stats.gradNorm.unet))).toBeLessThan(1e-5);
    for (const [n, t] of Object.entries(m.params)) expect(t.compare(before[n], 0, 0).bad).toBeGreaterThan(0);
    step.dispose();
    disposeCaptionBatch(longest);
    disposeAll([a.total, b.total, viaTerms, latents, denoised.loss, denoised.prediction, denoised.noisy, denoised.timesteps, Object.values(a.terms), Object.values(b.terms), Object.values(before), images.blipImages, images.sdImages]);
    free(m);
  });

  test('a non-finite loss skips the update and says so; a disposed model is a named error', async () => {
    const m = await load();
    const images = { blipImages: pixels(2, 64, 41, -1.8, 2.1), sdImages: pixels(2, 64, 42) };
    const before = Object.fromEntries(Object.entries(m.params).map(([n, t]) => [n, t.clone()]));
    const step = JointStep.create({ blip: m.blip, sd: m.sd, bridge, visionTrainable: false }, objective('summed'), {
      optimizers: { blip: new AdamW(m.params, { lr: 1e-3 }) },
      clipMode: 'global',
      clip: 1,
    });
    const nan = Tensor.fromTypedArray(new Float32Array(2 * 3 * 64 * 64).fill(NaN), [2, 3, 64, 64]);
    const stats = await step.run([{ blipImages: nan, sdImages: images.sdImages, captions: m.captions }], { step: 0, lr: 1e-3, seeds: [1] });
    expect(stats.applied).toBe(false);
    expect(Number.isNaN(stats.loss)).toBe(true);
    for (const [n, t] of Object.entries(m.params)) expect(t.compare(before[n], 0, 0).bad).toBe(0);
    m.sd.dispose();
    await expect(step.run([{ ...images, captions: m.captions }], { step: 0, lr: 1e-3, seeds: [1] })).rejects.toThrow(/a model it uses was disposed/);
    step.dispose();
    disposeCaptionBatch(m.captions);
    m.blip.dispose();
    disposeAll([nan, Object.values(before), images.blipImages, images.sdImages]);
  });
});
