/**
 * The method measured: interval statistics, reconstruction-gradient routes (Appendix I arms), the
 * held-out loss benchmark (determinism), and `roundtrip experiment --quick` end to end on the world models.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { Blip } from '../lib/models/blip';
import { StableDiffusionPipeline } from '../lib/models/sd/pipeline';
import { loadBridge } from '../lib/paper/bridge';
import { loadBertTokenizer } from '../lib/tokenizers/load';
import { Tensor, disposeAll } from '../lib/runtime/tensor';
import { native } from '../lib/runtime/native';
import { AdamW } from '../lib/train/optimizer';
import { saveTensors } from '../lib/weights/save';
import { disposeCaptionBatch, encodeCaptions, jointObjective, trainablePatterns } from '../lib/train/finetune';
import { benchRecon } from '../lib/paper/joint/bench-recon';
import { armInterval, bootstrapPlan, kendallTau, kendallTauInterval, meanSamples, pairedDifference, verdict } from '../lib/paper/experiment/stats';
import { ARMS, QUICK_EXPERIMENT, checkExperimentOptions, runExperiment } from '../lib/paper/experiment';
import { experimentOptionsFromArgs, parseSettings } from '../lib/cli/commands/experiment';
import { DATA, ROOT } from './support/paths';
import { makeTinyBlip, makeTinySd } from './support/tiny-models';

jest.setTimeout(240000);

let root: string;
beforeAll(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'experiment-'));
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

describe('intervals', () => {
  const items = 40;
  const plan = bootstrapPlan(items, 3, { replicates: 500, seed: 1 });
  const base = Array.from({ length: 3 }, (_, s) => Array.from({ length: items }, (_, i) => Math.sin(i * 1.7 + s) + i / items));

  test('a constant shift is significant with a zero-width paired interval; an identical arm is not', () => {
    const shifted = base.map((row) => row.map((v) => v + 0.25));
    const d = pairedDifference('shift', meanSamples(shifted), meanSamples(base), plan);
    expect(d.value).toBeCloseTo(0.25, 12);
    expect(d.hi - d.lo).toBeLessThan(1e-12);
    expect(d.significant).toBe(true);
    expect(verdict(d, true)).toBe('better');
    expect(verdict(d, false)).toBe('worse');
    const same = pairedDifference('same', meanSamples(base), meanSamples(base), plan);
    expect([same.value, same.lo, same.hi, same.significant]).toEqual([0, 0, 0, false]);
    expect(verdict(same, true)).toBe('no significant difference');
  });

  test('the arm interval covers its value, widens with noise, and reports the spread over seeds', () => {
    const a = armInterval('a', meanSamples(base), plan);
    expect(a.lo).toBeLessThan(a.value);
    expect(a.hi).toBeGreaterThan(a.value);
    expect(a.perSeed).toHaveLength(3);
    const noisy = armInterval('noisy', meanSamples(base.map((row) => row.map((v, i) => v + (i % 2 ? 3 : -3)))), plan);
    expect(noisy.hi - noisy.lo).toBeGreaterThan(a.hi - a.lo);
    // ratio samples: 3 of 4 objects right on every item → 0.75 exactly
    const ratio = armInterval('ratio', { num: [Array(items).fill(3)], den: [Array(items).fill(4)] }, plan);
    expect([ratio.value, ratio.lo, ratio.hi]).toEqual([0.75, 0.75, 0.75]);
  });

  test("Kendall's τ-b: order, reversal, ties", () => {
    expect(kendallTau([1, 2, 3, 4], [10, 20, 30, 40])).toBe(1);
    expect(kendallTau([1, 2, 3, 4], [4, 3, 2, 1])).toBe(-1);
    // pairs: (1,2) tie in x; (1,3) +; (2,3) +  → (2 − 0) / sqrt((2 + 0 + 1)·(2 + 0 + 0))
    expect(kendallTau([1, 1, 2], [1, 2, 3])).toBeCloseTo(2 / Math.sqrt(6), 12);
    const t = kendallTauInterval(Array.from({ length: 30 }, (_, i) => i), Array.from({ length: 30 }, (_, i) => i + (i % 3)), { replicates: 200 });
    expect(t.value).toBeGreaterThan(0.8);
    expect(t.lo).toBeLessThanOrEqual(t.value);
  });
});

describe('reconstruction-gradient routes (Appendix I arms)', () => {
  test('each route reaches exactly the model it names', async () => {
    const blipDir = makeTinyBlip(path.join(root, 'blip'));
    const sdDir = makeTinySd(path.join(root, 'sd'), 'DDPMScheduler');
    const blip = await Blip.load(blipDir);
    const sd = await StableDiffusionPipeline.load(sdDir);
    const bridge = loadBridge(path.join(DATA, 'seed-release', 'reindex_clip_to_blip.json'));
    const captions = encodeCaptions({ blip: loadBertTokenizer(blipDir), clip: sd.tokenizer }, ['a dog on the grass', 'a red bus']);
    const S = Number(blip.config.vision_config.image_size);
    const pixels = (size: number, seed: number) => Tensor.randn([2, 3, size, size], seed);
    const blipImages = pixels(S, 1);
    const sdImages = pixels(64, 2);
    const run = async (term: 'recImg' | 'recTxt', route: 'both' | 'blip' | 'unet'): Promise<{ blip: boolean; unet: boolean }> => {
      const bq = blip.model.tensors(blip.model.setTrainable(trainablePatterns('blip', 'xattn-q')));
      const uq = sd.unet.model.tensors(sd.unet.model.setTrainable(trainablePatterns('unet', 'xattn-q')));
      const all: Record<string, Tensor> = {};
      for (const [n, t] of Object.entries(bq)) all[`blip:${n}`] = t;
      for (const [n, t] of Object.entries(uq)) all[`unet:${n}`] = t;
      new AdamW(all).zeroGrad();
      const weights = { cap: 0, recImg: term === 'recImg' ? 1 : 0, sd: 0, recTxt: term === 'recTxt' ? 1 : 0 };
      const { total, terms } = await jointObjective(
        { blip, sd, bridge, visionTrainable: false },
        { blipImages, sdImages, captions },
        { weights, routes: { recImg: term === 'recImg' ? route : 'both', recTxt: term === 'recTxt' ? route : 'both' }, schedule: 'summed', temperature: 1, softMode: 'probs', recTxtMode: 'x0', labelSmoothing: 0, clipStartId: sd.tokenizer.sotId, clipEndId: sd.tokenizer.eotId, clipPadId: sd.tokenizer.padId },
        0,
        7,
      );
      await total.backward();
      disposeAll([total, Object.values(terms)]);
      const norm = (ts: Record<string, Tensor>) => (native() as any).op('gradNorm', Object.values(ts).map((t) => t.handle), '{}') as number;
      // every flag is back on after the term
      expect([...Object.values(bq), ...Object.values(uq)].every((t) => t.requiresGrad)).toBe(true);
      return { blip: norm(bq) > 0, unet: norm(uq) > 0 };
    };
    try {
      expect(await run('recImg', 'both')).toEqual({ blip: true, unet: true });
      expect(await run('recImg', 'blip')).toEqual({ blip: true, unet: false });
      expect(await run('recImg', 'unet')).toEqual({ blip: false, unet: true });
      expect(await run('recTxt', 'both')).toEqual({ blip: true, unet: true });
      expect(await run('recTxt', 'blip')).toEqual({ blip: true, unet: false });
      expect(await run('recTxt', 'unet')).toEqual({ blip: false, unet: true });
      // a checkpointed block would recompute its forward with the weights back in the graph: refused by name
      sd.unet.model.setGradientCheckpointing(true);
      await expect(
        jointObjective({ blip, sd, bridge, visionTrainable: false }, { blipImages, sdImages, captions }, { weights: { cap: 0, recImg: 1, sd: 0, recTxt: 0 }, routes: { recImg: 'blip', recTxt: 'both' }, schedule: 'summed', temperature: 1, softMode: 'probs', recTxtMode: 'x0', labelSmoothing: 0, clipStartId: sd.tokenizer.sotId, clipEndId: sd.tokenizer.eotId, clipPadId: sd.tokenizer.padId }, 0, 0),
      ).rejects.toThrow(/rec_img_route .*gradient checkpointing/);
      sd.unet.model.setGradientCheckpointing(false);
      // the text-decoder set: every text-decoder weight (embeddings and LM head included), nothing of the vision encoder
      const dec = blip.model.setTrainable(trainablePatterns('blip', 'text-decoder'));
      expect(dec.every((n) => n.startsWith('text_decoder.'))).toBe(true);
      for (const part of ['word_embeddings', 'crossattention.self.query', 'attention.self.key', 'intermediate.dense']) expect(dec.some((n) => n.includes(part))).toBe(true);
      expect(Object.keys(blip.model.tensors()).filter((n) => n.startsWith('text_decoder.') && !dec.includes(n) && !n.includes('position_ids'))).toEqual([]);
      expect(() => trainablePatterns('unet', 'text-decoder')).toThrow(/only BLIP has a text decoder/);
    } finally {
      disposeCaptionBatch(captions);
      disposeAll([blipImages, sdImages]);
      blip.model.setTrainable([]);
      sd.unet.model.setTrainable([]);
      blip.dispose();
      sd.dispose();
    }
  });
});

describe('bench recon', () => {
  test('fixed draws: the same checkpoint gives the same numbers twice; a changed model moves L_cap', async () => {
    const blipDir = fs.existsSync(path.join(root, 'blip')) ? path.join(root, 'blip') : makeTinyBlip(path.join(root, 'blip'));
    const sdDir = fs.existsSync(path.join(root, 'sd')) ? path.join(root, 'sd') : makeTinySd(path.join(root, 'sd'), 'DDPMScheduler');
    const images = path.join(root, 'held');
    fs.mkdirSync(images, { recursive: true });
    const captions = ['a red circle left of a blue square', 'a green star', 'a big yellow triangle'];
    for (let i = 0; i < captions.length; i++) {
      const raw = Buffer.alloc(40 * 40 * 3);
      for (let k = 0; k < raw.length; k++) raw[k] = (k * (5 + i)) % 253;
      await sharp(raw, { raw: { width: 40, height: 40, channels: 3 } }).png().toFile(path.join(images, `h${i}.png`));
    }
    const data = path.join(images, 'held.json');
    fs.writeFileSync(data, JSON.stringify(captions.map((c, i) => ({ image: `h${i}.png`, caption: [c, 'a shape'] }))));
    // a "checkpoint": one BLIP query tensor scaled, saved under its published name with a step
    const ck = path.join(root, 'ck', 'step-00000005');
    fs.mkdirSync(ck, { recursive: true });
    const blip = await Blip.load(blipDir);
    const name = Object.keys(blip.model.tensors(blip.model.setTrainable(trainablePatterns('blip', 'xattn-q'))))[0];
    const moved = blip.model.tensors([name])[name].mul(3);
    await saveTensors(path.join(ck, 'blip.safetensors'), { [name]: moved }, { format: 'pt', model: 'blip' });
    disposeAll([moved]);
    blip.dispose();
    const opts = { blip: blipDir, sd: sdDir, checkpoints: [ck], data, n: 3, seed: 4, bridge: path.join(DATA, 'seed-release', 'reindex_clip_to_blip.json'), prompt: '', recTxtMode: 'x0' as const, sdSteps: 2, guidance: 4, device: 'cpu', replicates: 200, quiet: true, out: path.join(root, 'recon') };
    const first = await benchRecon(opts);
    const second = await benchRecon({ ...opts, out: undefined });
    expect(first.rows.map((r) => r.step)).toEqual([0, 5]);
    expect(second.rows.map((r) => r.perItem)).toEqual(first.rows.map((r) => r.perItem));
    const [base, tuned] = first.rows;
    for (const t of ['cap', 'sd', 'recImg', 'recTxt'] as const) expect(base.perItem[t].every(Number.isFinite)).toBe(true);
    expect(tuned.perItem.cap).not.toEqual(base.perItem.cap);
    expect(tuned.perItem.sd).toEqual(base.perItem.sd); // UNet untouched, same draws
    expect(first.text).toContain('L_rec_img');
    expect(fs.readFileSync(path.join(root, 'recon', 'recon.svg'), 'utf8')).toContain('<polyline');
    expect(JSON.parse(fs.readFileSync(path.join(root, 'recon', 'recon.json'), 'utf8')).rows).toHaveLength(2);
    await expect(benchRecon({ ...opts, checkpoints: [images] })).rejects.toThrow(/no blip\.safetensors or unet\.safetensors/);
  });
});

describe('roundtrip experiment --quick', () => {
  test('every arm gets intervals and a paired difference to (d); a rerun reuses the finished runs', async () => {
    const weights = path.join(ROOT, 'weights');
    const out = path.join(root, 'exp');
    const opts = { ...QUICK_EXPERIMENT, out, weights, quiet: true, arms: ['a', 'd', 'e', 'f-other'] as any, seeds: 2, steps: 1, items: 3, lossItems: 2 };
    const r = await runExperiment(opts);
    const { report } = r;
    expect(report.arms.map((a) => a.name)).toEqual(['a', 'd', 'e', 'f-other']);
    for (const m of report.metrics) {
      for (const arm of ['a', 'd', 'e', 'f-other']) {
        const s = m.arms[arm];
        expect(s.lo).toBeLessThanOrEqual(s.value + 1e-12);
        expect(s.hi).toBeGreaterThanOrEqual(s.value - 1e-12);
      }
      for (const arm of ['a', 'e', 'f-other']) expect(['better', 'worse', 'no significant difference']).toContain(m.vsD[arm].verdict);
    }
    const md = fs.readFileSync(r.files.markdown, 'utf8');
    expect(md).toContain('Difference to (d)');
    expect(md).toContain(ARMS['f-other'].label);
    expect(md).toContain('Recipe `default`, BLIP settings `pretraining`');
    expect(fs.readFileSync(r.files.svg, 'utf8')).toContain('<circle');
    const t0 = Date.now();
    const again = await runExperiment(opts);
    expect(Date.now() - t0).toBeLessThan(20000);
    expect(again.report.metrics.map((m) => m.arms.e.value)).toEqual(report.metrics.map((m) => m.arms.e.value));
  });

  test('flags: arms checked by name, --set parses values', () => {
    expect(() => experimentOptionsFromArgs({ out: 'x', arms: 'a,z' })).toThrow(/unknown arm 'z'/);
    expect(parseSettings(['labelSmoothing=0', 'flipSides=skip', 'blipFlip=false'])).toEqual({ labelSmoothing: 0, flipSides: 'skip', blipFlip: false });
    expect(() => parseSettings(['oops'])).toThrow(/key=value/);
    expect(experimentOptionsFromArgs({ out: 'x', quick: true }).arms).toEqual(QUICK_EXPERIMENT.arms);
    // BLIP's side defaults to the world BLIP's pretraining recipe; the recipe's own values stay available by name
    expect(experimentOptionsFromArgs({ out: 'x' }).blipSettings).toBe('pretraining');
    const o = experimentOptionsFromArgs({ out: 'x', blipSettings: 'recipe', blipTrainable: 'text-decoder' });
    expect(checkExperimentOptions(o)).toMatchObject({ blipSettings: 'recipe', trainable: { blip: 'text-decoder', unet: 'xattn-q' } });
    expect(() => checkExperimentOptions(experimentOptionsFromArgs({ out: 'x', blipSettings: 'smooth' }))).toThrow(/--blip-settings/);
    expect(() => checkExperimentOptions(experimentOptionsFromArgs({ out: 'x', unetTrainable: 'text-decoder' }))).toThrow(/--unet-trainable 'text-decoder'/);
    expect(() => checkExperimentOptions(experimentOptionsFromArgs({ out: 'x', blipTrainable: 'none' }))).toThrow(/--blip-trainable/);
  });
});

describe('reranking ties', () => {
  test('ties are counted, broken by the next method, then averaged; the gain gets a paired interval', () => {
    const { tieGainTable, tieGainMarkdown } = require('../lib/paper/report/ties');
    const cand = (d1: number[], d2: number[], s: number[]) => d1.map((_, j) => ({ index: j, text: 'a', image: 'x.png', seed: j, distance: { 'clip-text': d1[j], sbert: d2[j] }, rank: {}, scores: { clip_text_image: s[j] } }));
    const records = [
      { direction: 't2i2t', index: 0, id: '0', input: {}, references: [], candidates: cand([0.2, 0.2, 0.5], [0.3, 0.1, 0.2], [0.9, 0.1, 0.5]), winner: { 'clip-text': 0, sbert: 1 }, baseline: [2, 0], seconds: 0 },
      { direction: 't2i2t', index: 1, id: '1', input: {}, references: [], candidates: cand([0.4, 0.4, 0.4], [0.5, 0.5, 0.5], [0.3, 0.6, 0.9]), winner: { 'clip-text': 0, sbert: 0 }, baseline: [1], seconds: 0 },
      { direction: 't2i2t', index: 2, id: '2', input: {}, references: [], candidates: cand([0.1, 0.3, 0.2], [0.1, 0.3, 0.2], [0.2, 0.4, 0.6]), winner: { 'clip-text': 0, sbert: 0 }, baseline: [1, 2], seconds: 0 },
    ];
    const rows = tieGainTable({ direction: 't2i2t', similarity: ['clip-text', 'sbert'], k: 3 } as any, records as any, { replicates: 200 });
    const r = rows.find((x: any) => x.method === 'clip-text' && x.metric === 'clip_text_image');
    expect([r.ties, r.resolvedBySecondary]).toEqual([2, 1]);
    expect(r.tieShare).toBeCloseTo(2 / 3, 12);
    expect(r.firstIndex).toBeCloseTo((0.9 + 0.3 + 0.2) / 3, 12);
    expect(r.tieBroken).toBeCloseTo((0.1 + 0.6 + 0.2) / 3, 12);
    expect(r.random).toBeCloseTo((0.7 + 0.6 + 0.5) / 3, 12);
    expect(r.gain.value).toBeCloseTo(-0.3, 12);
    expect(r.gain.lo).toBeLessThanOrEqual(r.gain.value);
    expect(tieGainMarkdown(rows)).toContain('2 of 3 (67 %; 1 resolved by the next method)');
  });
});

describe('NoCaps domain split', () => {
  test('domains are read from images[].domain and Table 1 is computed per domain', async () => {
    const { readNocapsDomains, splitByDomain, captionTable } = require('../lib/paper/report');
    const file = path.join(root, 'nocaps_val_4500_captions.json');
    fs.writeFileSync(
      file,
      JSON.stringify({
        licenses: [],
        info: {},
        images: [
          { id: 0, file_name: '0013ea2087020901.jpg', domain: 'in-domain' },
          { id: 1, file_name: '0032257bf3cd56d0.jpg', domain: 'near-domain' },
          { id: 2, file_name: '003232584a062b07.jpg', domain: 'out-domain' },
          { id: 3, file_name: '00385794700c832e.jpg', domain: 'in-domain' },
        ],
        annotations: [],
      }),
    );
    const domains = readNocapsDomains(file);
    const rec = (id: string, image: string, texts: string[], refs: string[]) => ({ direction: 'i2t2i', index: Number(id), id, input: { image }, references: refs, candidates: texts.map((text, j) => ({ index: j, text, image: 'x', seed: j, distance: { clip: j }, rank: { clip: j + 1 }, scores: {} })), winner: { clip: 0 }, baseline: [1], seconds: 0 });
    const records = [
      rec('0', '/x/val/0013ea2087020901.jpg', ['a dog on grass', 'a cat'], ['a dog on the grass', 'a brown dog on grass']),
      rec('1', '/x/val/0032257bf3cd56d0.jpg', ['a red bus', 'a car'], ['a red bus on a road', 'a bus']),
      rec('9', '/x/val/00385794700c832e.jpg', ['a bird', 'a plane'], ['a bird on a wire', 'a small bird']),
      rec('7', '/x/val/unknown.jpg', ['a cup', 'a mug'], ['a cup of tea']),
    ];
    const split = splitByDomain(records as any, domains);
    // id 9 is not an id of the file, but its file name is (in-domain); the last is unknown
    expect(split.groups.get('in-domain').map((r: any) => r.id)).toEqual(['0', '9']);
    expect(split.groups.get('near-domain').map((r: any) => r.id)).toEqual(['1']);
    expect(split.unknown).toBe(1);
    const settings = { direction: 'i2t2i', similarity: ['clip'], repeats: 1, k: 2 } as any;
    const t = await captionTable(settings, split.groups.get('in-domain'));
    expect(t.rows.find((r: any) => r.metric === 'CIDEr').items).toBe(2);
    expect(() => readNocapsDomains(path.join(DATA, 'nocaps', 'nocaps_val.json'))).toThrow(/images: \[\{id, file_name, domain\}\]/);
  });
});

describe('FID / IS by reconstruction rank', () => {
  test('each rank’s set of candidates gets its own FID against the real images and IS', async () => {
    const { fidIsByRank } = require('../lib/paper/report/summary');
    const { fidStatistics, frechetDistance } = require('../lib/metrics/fid');
    const { inceptionScore } = require('../lib/metrics/inception-score');
    const vec = (name: string, d: number, salt: number) => Float32Array.from({ length: d }, (_, i) => Math.sin((name.length + 1) * (i + 1) * 1.3 + salt * name.charCodeAt(name.length - 5)));
    const features = async (files: string[]) => ({ pool3: files.map((f) => vec(f, 4, 1)), logits: files.map((f) => vec(f, 5, 2)) });
    const records = [0, 1, 2, 3].map((i) => ({
      direction: 't2i2t', index: i, id: String(i), input: { text: 't' }, references: [], realImage: `real${i}.png`,
      candidates: [0, 1].map((j) => ({ index: j, text: 'c', image: `c${i}${j}.png`, seed: j, distance: { 'clip-text': j }, rank: { 'clip-text': (i + j) % 2 + 1 }, scores: {} })),
      winner: { 'clip-text': 0 }, baseline: [0], seconds: 0,
    }));
    const r = await fidIsByRank({ direction: 't2i2t', similarity: ['clip-text'], k: 2 } as any, records as any, features);
    const stats = (rows: Float32Array[]) => {
      const data = new Float32Array(rows.length * rows[0].length);
      rows.forEach((x, i) => data.set(x, i * x.length));
      return { data, n: rows.length, d: rows[0].length };
    };
    const real = stats(records.map((x) => vec(x.realImage, 4, 1)));
    const rank1 = records.map((x) => x.candidates.find((c) => c.rank['clip-text'] === 1)!.image);
    const g = stats(rank1.map((f) => vec(f, 4, 1)));
    const fid = frechetDistance(fidStatistics(g.data, g.n, g.d), fidStatistics(real.data, real.n, real.d)).fid;
    expect(r.means.FID['clip-text'][0]).toBeCloseTo(fid, 9);
    const l = stats(rank1.map((f) => vec(f, 5, 2)));
    expect(r.means.IS['clip-text'][0]).toBeCloseTo(inceptionScore(l.data, l.n, l.d, { splits: 4 }).mean, 9);
    expect(r.means.FID['clip-text']).toHaveLength(2);
    expect(r.lowerIsBetter).toEqual({ IS: false, FID: true });
  });
});

describe('roundtrip sweep', () => {
  test('K sweep on the world: one point per value with a gain interval, table and plot', async () => {
    const { runSweep } = require('../lib/paper/experiment/sweep');
    const { parseValues } = require('../lib/cli/commands/sweep');
    expect(parseValues('2,3')).toEqual([2, 3]);
    expect(() => parseValues('2,x')).toThrow(/'x' is not a number/);
    const out = path.join(root, 'sweep');
    const r = await runSweep({ out, weights: path.join(ROOT, 'weights'), what: 'k', values: [2, 3], k: 2, items: 3, sdSteps: 2, guidance: 4, repeats: 2, seed: 0, device: 'cpu', quiet: true });
    expect(r.points.map((p: any) => p.value)).toEqual([2, 3]);
    for (const p of r.points) {
      expect(p.items).toBe(3);
      expect(p.gain.lo).toBeLessThanOrEqual(p.gain.value + 1e-12);
      expect(p.reranked - p.random).toBeCloseTo(p.gain.value, 9);
    }
    expect(fs.readFileSync(r.files.svg, 'utf8')).toContain('<polyline');
    expect(fs.readFileSync(r.files.markdown, 'utf8')).toContain('| K (candidates) |');
    await expect(runSweep({ out, what: 'beam', k: 2, items: 3, sdSteps: 2, guidance: 4, repeats: 2, seed: 0, device: 'cpu', quiet: true })).rejects.toThrow(/--what/);
  });

  test('decoding sweeps (Appendices B/C): each value reaches BLIP as its strategy and setting', async () => {
    const { runSweep } = require('../lib/paper/experiment/sweep');
    const out = path.join(root, 'sweep-decoding');
    for (const [what, values, key, strategy] of [['temperature', [0.7, 1.5], 'temperature', 'temperature'], ['top-k', [5], 'topK', 'top-k'], ['top-p', [0.5], 'topP', 'top-p']] as const) {
      const r = await runSweep({ out: path.join(out, what), weights: path.join(ROOT, 'weights'), what, values: [...values], k: 2, items: 2, sdSteps: 2, guidance: 4, repeats: 2, seed: 0, device: 'cpu', quiet: true });
      expect(r.points.map((p: any) => p.value)).toEqual(values);
      for (const v of values) {
        const run = JSON.parse(fs.readFileSync(path.join(out, what, 'runs', `${what}-${v}`, 'run.json'), 'utf8'));
        expect(run.settings.blip).toMatchObject({ strategy, [key]: v });
      }
    }
  });
});

describe('roundtrip validate-score', () => {
  test('three captions per image, Kendall τ against CIDEr-D and the attribute accuracy, with intervals', async () => {
    const { validateScore } = require('../lib/paper/experiment/validate-score');
    const r = await validateScore({ out: path.join(root, 'vs'), weights: path.join(ROOT, 'weights'), items: 3, drawings: 1, sdSteps: 2, guidance: 4, seed: 0, device: 'cpu', quiet: true });
    expect(r.pairs).toHaveLength(9);
    expect(r.pairs.filter((p: any) => p.kind === 'own').every((p: any) => p.attributes === 1)).toBe(true);
    for (const t of [r.tauCider, r.tauAttributes]) {
      expect(t.value).toBeGreaterThanOrEqual(-1);
      expect(t.value).toBeLessThanOrEqual(1);
      expect(t.lo).toBeLessThanOrEqual(t.hi);
    }
    expect(fs.readFileSync(r.files.markdown, 'utf8')).toContain('Kendall τ-b');
  });
});
