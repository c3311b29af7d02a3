/**
 * BLIP-2 (OPT) as the captioner of the joint finetuning and of `bench recon`, on the blip2-opt fixture model and a
 * tiny SD: its caption batch (LAVIS layout), the learned OPT-BPE → CLIP-BPE bridge, the native objective against the
 * loss-term composition, the trainable sets (gradients reach exactly their tensors; frozen weights get no gradient
 * buffer), a `roundtrip finetune` run end to end, and a deterministic `bench recon` of its export.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { saveRgbPng } from '../lib/image';
import { VocabularyBridge, buildOptBridge, loadBridge } from '../lib/paper/bridge';
import { BLIP2_TRAINABLE_SETS, Blip2 } from '../lib/models/blip2';
import { StableDiffusionPipeline } from '../lib/models/sd/pipeline';
import { Tensor, disposeAll, noGrad } from '../lib/runtime/tensor';
import { loadImage } from '../lib/image/decode';
import { blipPreprocess, preprocessImage, sdVaePreprocess } from '../lib/image/preprocess';
import { deriveSeed } from '../lib/image/random';
import { loadOptTokenizer } from '../lib/tokenizers/opt';
import {
  CaptionBatch,
  LossTerm,
  ObjectiveOptions,
  captionLoss,
  disposeCaptionBatch,
  encodeCaptions,
  encodeLatents,
  presetWeights,
  reconstructImageLoss,
  reconstructTextLoss,
  resolveConfig,
  sdDenoise,
  sdLoss,
  softCaption,
  trainablePatterns,
} from '../lib/train/finetune';
import { Blip2CaptionTokenizer, blip2CaptionTokenizer } from '../lib/paper/joint/blip2';
import { JointStep } from '../lib/paper/joint/joint-step';
import { benchRecon } from '../lib/paper/joint/bench-recon';
import { ROOT } from './support/paths';
import { makeTinyBlip2, makeTinySd } from './support/tiny-models';
import { pixels } from './support/pixels';

jest.setTimeout(300000);

// Every OPT id of these captions is below the fixture's vocabulary of 1000.
const CAPTIONS = ['a man with a car on the road', 'a woman in front of the house'];
const TRAIN = [...CAPTIONS, 'a black car near the building', 'a young man playing music in the room'];

let root: string;
let blip2Dir: string;
let sdDir: string;
let blip: Blip2;
let sd: StableDiffusionPipeline;
let tok: Blip2CaptionTokenizer;
let bridge: VocabularyBridge;
let captions: CaptionBatch;
const config = () => JSON.parse(fs.readFileSync(path.join(blip2Dir, 'config.json'), 'utf8'));

beforeAll(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'blip2-finetune-'));
  blip2Dir = makeTinyBlip2(path.join(root, 'blip2'));
  sdDir = makeTinySd(path.join(root, 'sd'), 'DDPMScheduler');
  blip = await Blip2.load(blip2Dir);
  sd = await StableDiffusionPipeline.load(sdDir);
  tok = blip2CaptionTokenizer(blip);
  bridge = buildOptBridge(TRAIN, tok.opt, sd.tokenizer, { eosId: tok.eosId, vocabSize: tok.vocabSize });
  captions = encodeCaptions({ blip: tok, clip: sd.tokenizer }, CAPTIONS);
  fs.mkdirSync(path.join(root, 'images'));
  for (let i = 0; i < TRAIN.length; i++) {
    const data = new Uint8Array(40 * 36 * 3).map((_, j) => (j * (5 + i) + 17 * i) & 255);
    await saveRgbPng(path.join(root, 'images', `img${i}.png`), { data, width: 40, height: 36 });
  }
  fs.writeFileSync(path.join(root, 'train.json'), JSON.stringify(TRAIN.map((caption, i) => ({ image: `img${i}.png`, caption, image_id: String(i) }))));
  fs.writeFileSync(path.join(root, 'val.json'), JSON.stringify(TRAIN.slice(0, 2).map((caption, i) => ({ image: `img${i}.png`, caption: [caption, 'a man on the road'] }))));
});

afterAll(() => {
  if (captions) disposeCaptionBatch(captions);
  blip?.dispose();
  sd?.dispose();
  fs.rmSync(root, { recursive: true, force: true });
});

const ints = (t: Tensor) => Array.from(t.toTypedArray() as BigInt64Array, Number);

describe('BLIP-2 caption side and bridge', () => {
  test("captions are BOS + caption + the model's EOS, labels -100 on BOS, prompt and padding", () => {
    const c = config().text_config;
    const ids = CAPTIONS.map((t) => tok.opt.encode(t));
    const T = Math.max(...ids.map((r) => r.length)) + 2;
    expect(captions.blipIds.shape).toEqual([2, T]);
    expect(captions.promptLength).toBe(1);
    expect(captions.captionLengths).toEqual(ids.map((r) => r.length));
    const rows = ids.map((r) => [c.bos_token_id, ...r, c.eos_token_id]);
    const flat = ints(captions.blipIds);
    const labels = ints(captions.blipLabels);
    const mask = ints(captions.blipMask);
    rows.forEach((r, b) => {
      const padded = [...r, ...Array(T - r.length).fill(c.pad_token_id)];
      expect(flat.slice(b * T, (b + 1) * T)).toEqual(padded);
      expect(mask.slice(b * T, (b + 1) * T)).toEqual(padded.map((_, j) => (j < r.length ? 1 : 0)));
      expect(labels.slice(b * T, (b + 1) * T)).toEqual(padded.map((id, j) => (j >= 1 && j < r.length ? id : -100)));
    });
    // A prompt: its tokens follow BOS and are not predicted; a trailing space does not become a token.
    const withPrompt = encodeCaptions({ blip: tok, clip: sd.tokenizer }, ['man with a car'], { prompt: 'a ' });
    expect(withPrompt.promptLength).toBe(2);
    expect(ints(withPrompt.blipIds)).toEqual([c.bos_token_id, ...tok.opt.encode('a man with a car'), c.eos_token_id]);
    expect(ints(withPrompt.blipLabels).slice(0, 2)).toEqual([-100, -100]);
    disposeCaptionBatch(withPrompt);
    // Ids the model cannot embed are refused by name.
    expect(() => encodeCaptions({ blip: tok, clip: sd.tokenizer }, ['two red buses'])).toThrow(/caption 0 \('two red buses'\): OPT id \d+ at position 1 is outside the model's vocabulary of 1000/);
  });

  test("the OPT → CLIP bridge: start → BOS, end → the model's EOS, aligned words, only ids the model holds", () => {
    expect(bridge.tokenizer).toBe('opt');
    expect(bridge.clipToBlip).toHaveLength(sd.tokenizer.vocabSize);
    expect(bridge.clipToBlip[sd.tokenizer.sotId]).toBe(config().text_config.bos_token_id);
    expect(bridge.clipToBlip[sd.tokenizer.eotId]).toBe(config().text_config.eos_token_id);
    expect(Math.max(...bridge.clipToBlip)).toBeLessThan(1000);
    // A word inside a caption: CLIP's 'car</w>' reads OPT's ' car'.
    const [clipCar] = sd.tokenizer.encode('car');
    expect(bridge.clipToBlip[clipCar]).toBe(tok.opt.tokenToId('\u0120car'));
    expect(bridge.stats!.fromAlignment).toBeGreaterThan(5);
    // Saved and read back with its tokenizer kind; a BLIP bridge is refused for a BLIP-2 captioner by name.
    const file = path.join(root, 'bridge.json');
    require('../lib/paper/bridge').saveBridge(file, bridge);
    expect(loadBridge(file).tokenizer).toBe('opt');
    const bert = { ...bridge, tokenizer: 'bert' as const };
    expect(() => JointStep.create({ blip, sd, bridge: bert, visionTrainable: false }, objective())).toThrow(/maps CLIP ids to BLIP's WordPiece ids, but the captioner is BLIP-2/);
  });
});

const objective = (extra: Partial<ObjectiveOptions> = {}): ObjectiveOptions => ({
  weights: presetWeights('joint'),
  schedule: 'summed',
  temperature: 1,
  softMode: 'probs',
  recTxtMode: 'x0',
  labelSmoothing: 0,
  clipStartId: sd.tokenizer.sotId,
  clipEndId: sd.tokenizer.eotId,
  clipPadId: sd.tokenizer.padId,
  ...extra,
});

const rel = (a: number, b: number) => Math.abs(a - b) / Math.max(1e-12, Math.abs(a), Math.abs(b));

describe('joint objective with BLIP-2 as the captioner', () => {
  test('every term equals the loss-term composition on the same draws (L_cap is 4.37.2\'s loss, no smoothing)', async () => {
    const images = { blipImages: pixels(2, 32, 11, -1.8, 2.1), sdImages: pixels(2, 64, 12) };
    const seed = 17;
    const opts = objective();
    const { total, terms } = await JointStep.cached({ blip, sd, bridge, visionTrainable: false }, opts).objective({ ...images, captions }, { step: 0, seed });
    // The composition, call by call (joint.h: latents from the seed, recImg's pass from seed + 1, sd's from seed + 2).
    const latents = await encodeLatents(sd, images.sdImages, seed);
    const cap = await captionLoss(blip, images.blipImages, captions);
    const reference = await blip.loss({ pixelValues: images.blipImages, inputIds: captions.blipIds, attentionMask: captions.blipMask, labels: captions.blipLabels });
    const P = await softCaption(blip, images.blipImages, captions, bridge, { startId: sd.tokenizer.sotId, endId: sd.tokenizer.eotId, padId: sd.tokenizer.padId });
    const recImg = await reconstructImageLoss(sd, images.sdImages, P, { seed: seed + 1, latents });
    const d = await sdDenoise(sd, images.sdImages, captions, { seed: seed + 2, latents });
    const recTxt = await reconstructTextLoss(sd, blip, images.sdImages, captions, { denoised: d, labelSmoothing: 0, seed: seed + 3 });
    const composed: Record<LossTerm, number> = { cap: cap.item(), recImg: recImg.item(), sd: d.loss.item(), recTxt: recTxt.item() };
    expect(Object.keys(terms).sort()).toEqual(['cap', 'recImg', 'recTxt', 'sd']);
    for (const t of Object.keys(composed) as LossTerm[]) {
      expect(Number.isFinite(terms[t]!.item())).toBe(true);
      expect({ t, rel: rel(terms[t]!.item(), composed[t]) < 1e-5 }).toEqual({ t, rel: true });
    }
    expect(rel(cap.item(), reference.item())).toBeLessThan(1e-6);
    expect(rel(total.item(), Object.values(composed).reduce((a, b) => a + b, 0))).toBeLessThan(1e-5);
    disposeAll([total, Object.values(terms), latents, cap, reference, P, recImg, d.loss, d.prediction, d.noisy, d.timesteps, recTxt, images.blipImages, images.sdImages]);
  });

  test.each(BLIP2_TRAINABLE_SETS.map((s) => [s]))('trainable set %s: gradients reach exactly its tensors; frozen weights hold no gradient buffer', async (set) => {
    const model = await Blip2.load(blip2Dir);
    try {
      const chosen = model.model.setTrainable(trainablePatterns('blip', set, 'blip2'));
      const unet = sd.unet.model.setTrainable(trainablePatterns('unet', 'xattn-q'));
      const expected: Record<string, RegExp> = {
        'xattn-q': /^qformer\.encoder\.layer\.\d+\.crossattention\.attention\.query\.(weight|bias)$/,
        'xattn-kv': /^qformer\.encoder\.layer\.\d+\.crossattention\.attention\.(key|value)\.(weight|bias)$/,
        'xattn-qkv': /^qformer\.encoder\.layer\.\d+\.crossattention\.attention\.(query|key|value)\.(weight|bias)$/,
        projection: /^language_projection\.(weight|bias)$/,
      };
      const all = model.model.parameters().map((p) => p.name);
      expect(chosen.sort()).toEqual(set === 'none' ? [] : all.filter((n) => expected[set].test(n)).sort());
      if (set !== 'none') expect(chosen.length).toBeGreaterThan(0);
      const images = { blipImages: pixels(2, 32, 21, -1.8, 2.1), sdImages: pixels(2, 64, 22) };
      const { total, terms } = await JointStep.cached({ blip: model, sd, bridge, visionTrainable: false }, objective()).objective({ ...images, captions }, { step: 0, seed: 3 });
      for (const v of Object.values(terms)) expect(Number.isFinite(v!.item())).toBe(true);
      await total.backward();
      const tensors = model.model.tensors(all);
      const withGrad: string[] = [];
      for (const [n, t] of Object.entries(tensors)) {
        const g = t.grad();
        if (!g) continue;
        withGrad.push(n);
        expect({ n, nonzero: g.mul(g).sum().item() > 0 }).toEqual({ n, nonzero: true });
        g.dispose();
      }
      expect(withGrad.sort()).toEqual([...chosen].sort());
      expect(model.model.parameters().filter((p) => p.requiresGrad).map((p) => p.name).sort()).toEqual([...chosen].sort());
      // The UNet's chosen tensors got theirs too (through L_sd, L_rec_img and L_rec_txt).
      for (const [n, t] of Object.entries(sd.unet.model.tensors(unet))) {
        const g = t.grad();
        expect({ n, has: !!g }).toEqual({ n, has: true });
        g?.dispose();
      }
      sd.unet.model.setTrainable([]);
      disposeAll([total, Object.values(terms), images.blipImages, images.sdImages]);
    } finally {
      model.dispose();
    }
  });

  test("BLIP's trainable sets name 'projection' as BLIP-2's", () => {
    expect(() => trainablePatterns('blip', 'projection')).toThrow(/only a BLIP-2 captioner has a language projection/);
    expect(() => trainablePatterns('unet', 'projection', 'blip2')).toThrow(/only a BLIP-2 captioner has a language projection/);
  });
});

describe('roundtrip finetune and bench recon with BLIP-2', () => {
  const out = () => path.join(root, 'run');

  test('a short `roundtrip finetune` run on the fixture model: steps, bridge, export loadable by Blip2.load', async () => {
    const args = ['finetune', '--blip', blip2Dir, '--sd', sdDir, '--annotations', path.join(root, 'train.json'), '--images', path.join(root, 'images'), '--output', out(),
      '--batch-size', '2', '--max-steps', '2', '--sd-size', '64', '--checkpoint-every', '0', '--lr', '1e-3', '--no-progress',
      '--val-annotations', path.join(root, 'val.json'), '--validate-every', '2', '--val-size', '2'];
    const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'roundtrip.js'), ...args], { encoding: 'utf8', env: { ...process.env, ROUNDTRIP_THREADS: '1' } });
    expect({ status: r.status, stderr: r.stderr }).toMatchObject({ status: 0 });
    const rows = fs.readFileSync(path.join(out(), 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((l) => typeof l.loss === 'number');
    expect(rows.map((l) => l.step)).toEqual([1, 2]);
    for (const l of rows) for (const t of ['cap', 'recImg', 'sd', 'recTxt']) expect(Number.isFinite(l.terms[t])).toBe(true);
    expect(JSON.parse(fs.readFileSync(path.join(out(), 'bridge.json'), 'utf8')).tokenizer).toBe('opt');
    // Validation captions with BLIP-2 (greedy) and scores them with CIDEr-D.
    const validation = fs.readFileSync(path.join(out(), 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((l) => l.validation);
    expect(validation.map((l) => l.step)).toEqual([2]);
    expect(validation[0].validation.cider).toBeGreaterThanOrEqual(0);
    const exported = path.join(out(), 'export', 'blip.safetensors');
    const trained = await Blip2.load(blip2Dir, { partial: [exported] });
    const names = Object.keys(trained.model.tensors(trained.model.setTrainable(trainablePatterns('blip', 'xattn-q', 'blip2'))));
    const saved = require('../lib/weights/safetensors');
    const header = await saved.loadSafetensors(exported);
    expect(Object.keys(header).sort()).toEqual(names.sort());
    disposeAll(header);
    trained.dispose();
    // The config the run resolved: BLIP-2's own training has no prompt and no label smoothing.
    const c = resolveConfig({ blip: blip2Dir, sd: sdDir, annotations: 'a', images: 'b', output: 'c' });
    expect([c.prompt, c.labelSmoothing]).toEqual(['', 0]);
  });

  test('bench recon with a BLIP-2 folder: base and checkpoint rows, the same numbers twice', async () => {
    const data = path.join(root, 'train.json');
    const run = (checkpoints: string[]) =>
      benchRecon({ blip: blip2Dir, sd: sdDir, checkpoints, data, images: path.join(root, 'images'), n: 2, seed: 5, prompt: '', recTxtMode: 'x0', sdSteps: 1, guidance: 1, device: 'cpu', replicates: 50, quiet: true });
    const a = await run([path.join(out(), 'export')]);
    const b = await run([]);
    expect(a.rows.map((r) => r.name === 'base')).toEqual([true, false]);
    for (const r of a.rows) for (const t of ['cap', 'sd', 'recImg', 'recTxt'] as const) for (const v of r.perItem[t]) expect(Number.isFinite(v)).toBe(true);
    // Deterministic: a second run (in the same process, models loaded afresh) gives the base row bit for bit.
    expect(b.rows[0].perItem).toEqual(a.rows[0].perItem);
    // Item 0 of the base row on the draws of the loss-term calls with seed deriveSeed(5, 0) (lib/paper/joint/recon.ts).
    const item = (await loadImage(path.join(root, 'images', 'img0.png')));
    const sdPix = preprocessImage(item, sdVaePreprocess({ size: Number(sd.unet.config.sample_size) * sd.vaeFactor }));
    const blipPix = preprocessImage(item, blipPreprocess(32));
    const sdImages = Tensor.fromTypedArray(sdPix.data as Float32Array, [1, ...sdPix.shape]);
    const blipImages = Tensor.fromTypedArray(blipPix.data as Float32Array, [1, ...blipPix.shape]);
    const one = encodeCaptions({ blip: tok, clip: sd.tokenizer }, [TRAIN[0]], { prompt: '' });
    const l = await noGrad(async () => ({ sd: await sdLoss(sd, sdImages, one, { seed: deriveSeed(5, 0) }), cap: await captionLoss(blip, blipImages, one) }));
    expect(rel(a.rows[0].perItem.sd[0], l.sd.item())).toBeLessThan(1e-5);
    expect(rel(a.rows[0].perItem.cap[0], l.cap.item())).toBeLessThan(1e-5);
    disposeAll([sdImages, blipImages, l.sd, l.cap]);
    disposeCaptionBatch(one);
    // The UNet and Q-Former queries changed: so did the losses that see them.
    expect(a.rows[1].perItem.cap).not.toEqual(a.rows[0].perItem.cap);
    expect(a.text).toMatch(/L_rec_txt/);
  });
});

describe('BLIP-2 under CUDA autocast (runs only where libtorch has CUDA)', () => {
  const cuda = require('../lib/runtime/native').native().info().cuda ? test : test.skip;
  cuda('fp16 and bf16 logits stay close to the fp32 reference; greedy generation and the joint objective run', async () => {
    const { REFERENCE } = require('./support/paths');
    const { loadSafetensors } = require('../lib/weights/safetensors');
    const m = await Blip2.load(blip2Dir, { device: 'cuda' });
    const gpuSd = await StableDiffusionPipeline.load(sdDir, { device: 'cuda' });
    const io = await loadSafetensors(path.join(REFERENCE, 'blip2-opt', 'io.safetensors'), { device: 'cuda' });
    try {
      for (const mode of ['fp16', 'bf16'] as const) {
        m.model.setAutocast(mode);
        const logits = await noGrad(() => m.logits({ pixelValues: io['input.pixel_values'], inputIds: io['input.input_ids'], attentionMask: io['input.attention_mask'] }));
        // Half precision: about 3 significant digits; the logits of a random OPT are O(10).
        expect(logits.compare(io['output.logits'], 0.25, 5e-2).bad).toBe(0);
        const gen = await m.generate(io['input.pixel_values'], { strategy: 'greedy', maxNewTokens: 4 });
        expect(gen.sequences).toHaveLength(io['input.pixel_values'].shape[0]);
        gpuSd.setAutocast(mode);
        const images = { blipImages: pixels(2, 32, 31, -1.8, 2.1).to('cuda'), sdImages: pixels(2, 64, 32).to('cuda') };
        const c = encodeCaptions({ blip: blip2CaptionTokenizer(m), clip: gpuSd.tokenizer }, CAPTIONS);
        const { total, terms } = await noGrad(() => JointStep.create({ blip: m, sd: gpuSd, bridge, visionTrainable: false }, objective()).objective({ ...images, captions: c }, { step: 0, seed: 1 }));
        for (const v of Object.values(terms)) expect(Number.isFinite(v!.item())).toBe(true);
        disposeAll([logits, total, Object.values(terms), images.blipImages, images.sdImages]);
        disposeCaptionBatch(c);
      }
    } finally {
      disposeAll(io);
      m.dispose();
      gpuSd.dispose();
    }
  });
});
