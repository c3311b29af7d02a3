import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { Blip } from '../lib/models/blip';
import { StableDiffusionPipeline } from '../lib/models/sd/pipeline';
import { loadBridge } from '../lib/paper/bridge';
import { loadBertTokenizer } from '../lib/tokenizers/load';
import { Tensor, disposeAll, noGrad } from '../lib/runtime/tensor';
import { native } from '../lib/runtime/native';
import { AdamW } from '../lib/train/optimizer';
import {
  CaptionBatch,
  bilinearResize,
  captionLoss,
  disposeCaptionBatch,
  encodeCaptions,
  reconstructImageLoss,
  reconstructTextLoss,
  sdLoss,
  softCaption,
  softOrIdEmbeddings,
  trainablePatterns,
  jointObjective,
  presetWeights,
  finetune,
  resolveConfig,
  FinetuneConfig,
} from '../lib/train/finetune';
import { finetuneConfigFrom, runFinetuneCommand } from '../lib/cli/commands/finetune';
import { benchFinetune } from '../lib/train/finetune/bench';
import { listCheckpoints, loadCheckpoint, disposeCheckpoint } from '../lib/train/checkpoint';
import { DATA, ROOT } from './support/paths';
import { makeTinyBlip, makeTinySd } from './support/tiny-models';
import { pixels } from './support/pixels';


jest.setTimeout(180000);

let root: string;
let blipDir: string;
let sdDir: string;
let blip: Blip;
let sd: StableDiffusionPipeline;
let batch: CaptionBatch;
const bridge = loadBridge(path.join(DATA, 'seed-release', 'reindex_clip_to_blip.json'));
const CAPTIONS = ['A dog runs on the grass.', 'two red buses parked near a building'];

function gradNorms(tensors: Record<string, Tensor>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [n, t] of Object.entries(tensors)) out[n] = (native() as any).op('gradNorm', [t.handle], '{}');
  return out;
}

/** Names (prefixed by model) whose gradient is non-zero after backward of `loss`. */
async function reached(loss: Tensor, models: { blip: Record<string, Tensor>; unet: Record<string, Tensor> }): Promise<string[]> {
  await loss.backward();
  const names: string[] = [];
  for (const [m, ts] of Object.entries(models)) for (const [n, g] of Object.entries(gradNorms(ts))) if (g > 0) names.push(`${m}:${n}`);
  return names.sort();
}

async function writeImages(dir: string, n: number): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  for (let i = 0; i < n; i++) {
    const w = 80 + 8 * i;
    const h = 72 + 4 * i;
    const raw = Buffer.alloc(w * h * 3);
    for (let k = 0; k < raw.length; k++) raw[k] = (k * (7 + i) + i * 31) % 251;
    await sharp(raw, { raw: { width: w, height: h, channels: 3 } }).png().toFile(path.join(dir, `img${i}.png`));
  }
}

const TRAIN_CAPTIONS = ['a dog on the grass', 'a red bus in the street', 'a cat sleeping on a sofa', 'a man riding a bike', 'two birds on a wire', 'a plate of food'];

beforeAll(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'finetune-'));
  blipDir = makeTinyBlip(path.join(root, 'blip'));
  sdDir = makeTinySd(path.join(root, 'sd'), 'DDPMScheduler');
  blip = await Blip.load(blipDir);
  sd = await StableDiffusionPipeline.load(sdDir);
  batch = encodeCaptions({ blip: loadBertTokenizer(blipDir), clip: sd.tokenizer }, CAPTIONS);
  await writeImages(path.join(root, 'images'), TRAIN_CAPTIONS.length);
  fs.writeFileSync(path.join(root, 'train.json'), JSON.stringify(TRAIN_CAPTIONS.map((caption, i) => ({ image: `img${i}.png`, caption, image_id: String(i) }))));
  fs.writeFileSync(path.join(root, 'val.json'), JSON.stringify(TRAIN_CAPTIONS.slice(0, 2).map((caption, i) => ({ image: `img${i}.png`, caption: [caption, 'a photo'] }))));
});

afterAll(() => {
  if (batch) disposeCaptionBatch(batch);
  blip?.dispose();
  sd?.dispose();
  fs.rmSync(root, { recursive: true, force: true });
});

describe('loss terms', () => {
  test('captions are tokenised with the prompt ignored in the labels', () => {
    const ids = Array.from(batch.blipIds.toTypedArray() as BigInt64Array, Number);
    const labels = Array.from(batch.blipLabels.toTypedArray() as BigInt64Array, Number);
    const T = batch.blipIds.shape[1];
    expect(batch.promptLength).toBe(4); // [DEC] a picture of
    expect(ids[0]).toBe(30522);
    for (let b = 0; b < 2; b++) {
      for (let t = 0; t < batch.promptLength; t++) expect(labels[b * T + t]).toBe(-100);
      expect(labels[b * T + batch.promptLength]).toBe(ids[b * T + batch.promptLength]);
    }
    expect(batch.captionLengths[0]).toBe(6); // a dog runs on the grass
    // Without a prompt only [DEC] is skipped: models trained without one (the built-in world BLIP).
    const bare = encodeCaptions({ blip: loadBertTokenizer(blipDir), clip: sd.tokenizer }, CAPTIONS, { prompt: '' });
    expect(bare.promptLength).toBe(1);
    expect(Array.from(bare.blipIds.toTypedArray() as BigInt64Array, Number).slice(1, 3)).toEqual(ids.slice(4, 6));
    disposeCaptionBatch(bare);
  });

  test('each term reaches exactly its intended parameters', async () => {
    const blipQ = blip.model.tensors(blip.model.setTrainable(trainablePatterns('blip', 'xattn-q')));
    const unetQ = sd.unet.model.tensors(sd.unet.model.setTrainable(trainablePatterns('unet', 'xattn-q')));
    expect(Object.keys(blipQ).every((n) => /crossattention\.self\.query\./.test(n))).toBe(true);
    expect(Object.keys(unetQ).every((n) => /attn2\.to_q\./.test(n))).toBe(true);
    const both = { blip: blipQ, unet: unetQ };
    const allNames = (m: 'blip' | 'unet') => Object.keys(both[m]).map((n) => `${m}:${n}`).sort();
    const blip64 = pixels(2, 64, 1, -1.8, 2.1);
    const sd64 = pixels(2, 64, 2);
    const fresh = async (fn: () => Promise<Tensor>) => {
      // Rebuild the trainable sets so no gradient is left from the previous term.
      const bq = blip.model.tensors(blip.model.setTrainable(trainablePatterns('blip', 'xattn-q')));
      const uq = sd.unet.model.tensors(sd.unet.model.setTrainable(trainablePatterns('unet', 'xattn-q')));
      const all: Record<string, Tensor> = {};
      for (const [n, t] of Object.entries(bq)) all[`blip:${n}`] = t;
      for (const [n, t] of Object.entries(uq)) all[`unet:${n}`] = t;
      new AdamW(all).zeroGrad();
      const loss = await fn();
      const names = await reached(loss, { blip: bq, unet: uq });
      loss.dispose();
      return names;
    };
    expect(await fresh(() => captionLoss(blip, blip64, batch))).toEqual(allNames('blip'));
    expect(await fresh(() => sdLoss(sd, sd64, batch, { seed: 3 }))).toEqual(allNames('unet'));
    expect(
      await fresh(async () => {
        const P = await softCaption(blip, blip64, batch, bridge);
        return reconstructImageLoss(sd, sd64, P, { seed: 4 });
      }),
    ).toEqual([...allNames('blip'), ...allNames('unet')].sort());
    expect(await fresh(() => reconstructTextLoss(sd, blip, sd64, batch, { seed: 5 }))).toEqual([...allNames('blip'), ...allNames('unet')].sort());
    // SD frozen: L_rec_img reaches only BLIP; BLIP frozen: L_rec_txt reaches only the UNet.
    new AdamW(Object.fromEntries(Object.entries(blipQ).map(([n, t]) => [`blip:${n}`, t]))).zeroGrad();
    blip.model.setTrainable(trainablePatterns('blip', 'xattn-q'));
    sd.unet.model.setTrainable([]);
    const bq = blip.model.tensors(Object.keys(blipQ));
    const P = await softCaption(blip, blip64, batch, bridge);
    const rec = await reconstructImageLoss(sd, sd64, P, { seed: 4 });
    expect(await reached(rec, { blip: bq, unet: {} })).toEqual(allNames('blip'));
    new AdamW(bq).zeroGrad();
    blip.model.setTrainable([]);
    const uq = sd.unet.model.tensors(sd.unet.model.setTrainable(trainablePatterns('unet', 'xattn-q')));
    const txt = await reconstructTextLoss(sd, blip, sd64, batch, { seed: 5, mode: 'ddpm-step' });
    expect(await reached(txt, { blip: {}, unet: uq })).toEqual(allNames('unet'));
    disposeAll([blip64, sd64, P, rec, txt]);
    blip.model.setTrainable([]);
    sd.unet.model.setTrainable([]);
  });

  test('soft caption: framing, special tokens through the bridge, one-hot equals the id path', async () => {
    const P = await noGrad(() => softCaption(blip, pixels(2, 64, 7, -1.8, 2.1), batch, bridge));
    expect(P.shape).toEqual([2, 77, 49408]);
    const data = P.toFloat32Array();
    const V = 49408;
    const row = (b: number, j: number) => data.subarray((b * 77 + j) * V, (b * 77 + j + 1) * V);
    expect(row(0, 0)[49406]).toBe(1);
    const n = batch.captionLengths[0];
    expect(row(0, n + 1)[49407]).toBe(1);
    expect(row(0, 76)[49407]).toBe(1);
    // Caption rows are BLIP probabilities read through the bridge: positive, not one-hot.
    expect(Math.max(...row(0, 1))).toBeLessThan(1);
    P.dispose();
    // 'logits' mode re-indexes logits then normalises over CLIP's vocabulary: every row sums to 1.
    const PL = await noGrad(() => softCaption(blip, pixels(2, 64, 7, -1.8, 2.1), batch, bridge, { mode: 'logits', temperature: 0.5 }));
    const sums = PL.sum(-1).toFloat32Array();
    for (const v of sums) expect(v).toBeCloseTo(1, 4);
    disposeAll([PL]);
    // The bridge maps CLIP's start/end tokens to BLIP's [DEC]/[SEP].
    expect(bridge.clipToBlip[49406]).toBe(30522);
    expect(bridge.clipToBlip[49407]).toBe(102);
    // One-hot P of the CLIP ids conditions SD exactly as the ids do.
    const ids = Array.from(batch.clipIds.toTypedArray() as BigInt64Array, Number);
    const onehot = new Float32Array(2 * 77 * V);
    ids.forEach((id, k) => (onehot[k * V + id] = 1));
    const soft = Tensor.fromTypedArray(onehot, [2, 77, V]);
    const a = await noGrad(() => softOrIdEmbeddings(sd, { softTokens: soft }));
    const b = await noGrad(() => softOrIdEmbeddings(sd, { inputIds: batch.clipIds }));
    expect(a.compare(b, 0, 0).bad).toBe(0);
    disposeAll([soft, a, b]);
  });

  test('bilinear resize matches the align_corners=False formula', () => {
    const x = Tensor.fromTypedArray(new Float32Array([0, 1, 2, 3]), [1, 1, 1, 4]);
    const y = bilinearResize(x, 1, 2).toFloat32Array();
    // src = (o + 0.5)·2 − 0.5 → 0.5, 2.5
    expect(Array.from(y)).toEqual([0.5, 2.5]);
    x.dispose();
  });
});

function baseConfig(output: string, extra: Partial<FinetuneConfig> = {}): FinetuneConfig {
  return resolveConfig({
    blip: blipDir,
    sd: sdDir,
    bridge: path.join(DATA, 'seed-release', 'reindex_clip_to_blip.json'),
    annotations: path.join(root, 'train.json'),
    images: path.join(root, 'images'),
    output,
    sdSize: 64,
    blipSize: 64,
    batchSize: 2,
    epochs: 2,
    prefetch: 4,
    progress: false,
    checkpointEvery: 1,
    keepLast: 10,
    sdRandomCrop: true,
    sdFlip: true,
    ...extra,
  });
}

describe('trainer', () => {
  test('a few steps on a tiny fixed batch lower the loss', async () => {
    // Own copies: training changes the weights.
    const blip = await Blip.load(blipDir);
    const sd = await StableDiffusionPipeline.load(sdDir);
    const params: Record<string, Tensor> = {};
    for (const [n, t] of Object.entries(blip.model.tensors(blip.model.setTrainable(trainablePatterns('blip', 'xattn-q'))))) params[`blip:${n}`] = t;
    for (const [n, t] of Object.entries(sd.unet.model.tensors(sd.unet.model.setTrainable(trainablePatterns('unet', 'xattn-q'))))) params[`unet:${n}`] = t;
    const opt = new AdamW(params, { lr: 3e-3, weightDecay: 0 });
    const fixed = { blipImages: pixels(2, 64, 11, -1.8, 2.1), sdImages: pixels(2, 64, 12), captions: batch };
    const objective = { weights: presetWeights('joint'), schedule: 'summed' as const, temperature: 1, softMode: 'probs' as const, recTxtMode: 'x0' as const, labelSmoothing: 0.1, clipStartId: 49406, clipEndId: 49407, clipPadId: 49407 };
    const losses: number[] = [];
    for (let k = 0; k < 5; k++) {
      opt.zeroGrad();
      const { total, terms } = await jointObjective({ blip, sd, bridge, visionTrainable: false }, fixed, objective, 0, 42);
      losses.push(total.item());
      await total.backward();
      disposeAll([total, Object.values(terms)]);
      opt.clipGradNorm(1);
      await opt.step();
    }
    expect(losses[4]).toBeLessThan(losses[0]);
    disposeAll([fixed.blipImages, fixed.sdImages]);
    blip.dispose();
    sd.dispose();
  });

  test('a run writes its report and exports partial weights that load in Blip.load', async () => {
    const out = path.join(root, 'run-export');
    const r = await finetune(baseConfig(out, { limit: 2, epochs: 2, maxSteps: 1, checkpointEvery: 0, lr: 1e-3, valAnnotations: path.join(root, 'val.json'), validateEvery: 1, valSize: 2 }));
    expect(r.interrupted).toBe(false);
    expect(r.losses).toHaveLength(1);
    expect(listCheckpoints(out)).toEqual(['step-00000001']);
    expect(r.validation).toHaveLength(1);
    expect(r.validation[0].cider).toBeGreaterThanOrEqual(0);
    expect(listCheckpoints(path.join(out, 'best'))).toEqual(['step-00000001']);
    expect(fs.existsSync(path.join(out, 'report.md'))).toBe(true);
    expect(fs.readFileSync(path.join(out, 'loss-curves.svg'), 'utf8')).toContain('<svg');
    const lines = fs.readFileSync(path.join(out, 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.find((l) => typeof l.loss === 'number').terms).toHaveProperty('recImg');
    const tuned = await Blip.load({ config: path.join(blipDir, 'config.json'), weights: [path.join(blipDir, 'model.safetensors')], partial: [r.exported.blip!] });
    const name = Object.keys(tuned.model.tensors(tuned.model.setTrainable(trainablePatterns('blip', 'xattn-q'))))[0];
    const base = blip.model.tensors([name])[name];
    const after = tuned.model.tensors([name])[name];
    expect(after.compare(base, 0, 0).bad).toBeGreaterThan(0);
    tuned.dispose();
    // The UNet export loads over the base diffusers folder, as `roundtrip generate --weights` does.
    const tunedSd = await StableDiffusionPipeline.load(sdDir, { partial: { unet: [r.exported.unet!] } });
    const q = Object.keys(tunedSd.unet.model.tensors()).find((n) => /attn2\.to_q\.weight$/.test(n))!;
    expect(tunedSd.unet.model.tensors([q])[q].compare(sd.unet.model.tensors([q])[q], 0, 0).bad).toBeGreaterThan(0);
    tunedSd.dispose();
  });

  test('gradient checkpointing trains to the same losses', async () => {
    const plain = await finetune(baseConfig(path.join(root, 'run-plain'), { maxSteps: 2, checkpointEvery: 0 }));
    const ckpt = await finetune(baseConfig(path.join(root, 'run-ckpt'), { maxSteps: 2, checkpointEvery: 0, gradientCheckpointing: true }));
    expect(ckpt.losses).toHaveLength(2);
    ckpt.losses.forEach((l, i) => expect(l).toBeCloseTo(plain.losses[i], 5));
  });

  test('cached VAE latents: each image is encoded once and training matches the uncached run', async () => {
    const { LatentCache } = await import('../lib/paper/joint/losses');
    const spy = jest.spyOn(LatentCache.prototype, 'latents');
    const opts = { epochs: 2, checkpointEvery: 0, sdRandomCrop: false, sdFlip: false };
    const plain = await finetune(baseConfig(path.join(root, 'run-uncached'), opts));
    expect(spy).not.toHaveBeenCalled();
    const cached = await finetune(baseConfig(path.join(root, 'run-cached'), { ...opts, cacheLatents: true }));
    expect(spy).toHaveBeenCalledTimes(cached.losses.length);
    const caches = spy.mock.contexts as InstanceType<typeof LatentCache>[];
    // Every distinct training image was encoded exactly once over both epochs.
    expect(caches[caches.length - 1].encoded).toBe(TRAIN_CAPTIONS.length);
    cached.losses.forEach((l, i) => expect(l).toBeCloseTo(plain.losses[i], 4));
    spy.mockRestore();
    expect(() => resolveConfig({ ...baseConfig(path.join(root, 'x'), {}), cacheLatents: true, sdFlip: true })).toThrow(/cacheLatents needs the same SD images every epoch/);
  });

  test('resume continues exactly; checkpoints on disk are always complete', async () => {
    const straight = await finetune(baseConfig(path.join(root, 'run-a'), { epochs: 2 }));
    const dirB = path.join(root, 'run-b');
    const stopAt = { stop: false };
    let seen = 0;
    const first = await finetune(baseConfig(dirB), {
      stopSignal: stopAt,
      afterStep: async (log) => {
        // Every complete checkpoint visible while training loads whole.
        for (const name of listCheckpoints(dirB)) {
          const ck = await loadCheckpoint(path.join(dirB, 'checkpoints', name));
          expect(Object.keys(ck.tensors.blip).length).toBeGreaterThan(0);
          disposeCheckpoint(ck);
          seen++;
        }
        if (log.step === 2) stopAt.stop = true;
      },
    });
    expect(first.interrupted).toBe(true);
    expect(seen).toBeGreaterThan(0);
    const second = await finetune(baseConfig(dirB, { resume: 'latest' }));
    expect(straight.losses).toHaveLength(6);
    expect([...first.losses, ...second.losses]).toEqual(straight.losses);
  });

  test('a non-finite loss stops the run with a clear message and keeps the last good checkpoint', async () => {
    const out = path.join(root, 'run-nan');
    await expect(finetune(baseConfig(out), { afterLoss: (step) => (step === 2 ? NaN : undefined) })).rejects.toThrow(/step 3: the loss is NaN.*last verified checkpoint is .*step-00000002/);
    expect(listCheckpoints(out)).toEqual(['step-00000001', 'step-00000002']);
  });

  test('CLI end to end from a JSON config, flags override the file; bench prints the table', async () => {
    const cfgFile = path.join(root, 'cfg.json');
    const out = path.join(root, 'run-cli');
    const { output: _o, ...rest } = baseConfig(out);
    fs.writeFileSync(cfgFile, JSON.stringify({ ...rest, output: path.join(root, 'ignored'), epochs: 5, objective: 'reconstruction-only', schedule: 'alternating' }));
    const r = await runFinetuneCommand({ config: cfgFile, output: out, maxSteps: 2 });
    expect(r.steps).toBe(2);
    expect(fs.existsSync(path.join(out, 'export', 'unet.safetensors'))).toBe(true);
    await expect(runFinetuneCommand({ config: cfgFile, lr: -1 })).rejects.toThrow(/lr/);
    const table = await benchFinetune({ ...baseConfig(path.join(root, 'bench')), steps: Number(process.env.FINETUNE_BENCH_STEPS ?? 1), warmup: 0 });
    expect(table.rows.map((r) => r.name)).toEqual(['joint', 'sd-only', 'blip-only']);
    expect(table.text).toMatch(/joint \/ single/);
    if (process.env.FINETUNE_BENCH_PRINT) process.stderr.write(table.text);
    // The documented example config is valid as it stands.
    const example = finetuneConfigFrom({ config: path.join(ROOT, 'examples', 'finetune-coco.json') });
    expect([example.lr, example.batchSize, example.epochs, example.trainable.blip, example.trainable.unet, example.weightDecay]).toEqual([1e-4, 8, 5, 'xattn-q', 'xattn-q', 0.05]);
    // YAML configs read like JSON ones; a malformed one is a named error.
    const yamlFile = path.join(root, 'run.yaml');
    fs.writeFileSync(yamlFile, `blip: ${JSON.stringify(blipDir)}\nsd: ${JSON.stringify(sdDir)}\nannotations: ${JSON.stringify(path.join(root, 'train.json'))}\nimages: ${JSON.stringify(path.join(root, 'images'))}\noutput: ${JSON.stringify(path.join(root, 'yaml-run'))}\nlr: 0.0002\nbatchSize: 3\n`);
    const fromYaml = finetuneConfigFrom({ config: yamlFile } as any) as any;
    expect(fromYaml.lr).toBe(0.0002);
    expect(fromYaml.batchSize).toBe(3);
    expect([fromYaml.precision, fromYaml.gradientCheckpointing, fromYaml.trainingConvPacking, fromYaml.prompt]).toEqual(['fp32', false, true, 'a picture of ']);
    expect(() => finetuneConfigFrom({ config: cfgFile, trainingConvPacking: 'no' } as any)).toThrow(/trainingConvPacking/);
    expect(() => finetuneConfigFrom({ config: cfgFile, precision: 'fp8' } as any)).toThrow(/precision/);
    fs.writeFileSync(yamlFile, 'lr: [1, 2\n');
    expect(() => finetuneConfigFrom({ config: yamlFile } as any)).toThrow(/run\.yaml: invalid YAML/);
  });
});
