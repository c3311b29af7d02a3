import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { runEvalCaptions, runEvalImages } from '../lib/cli/commands/eval';
import {
  CLIP_TEXT_KEY,
  SBERT_KEY,
  WMD_KEY,
  evaluateCaptions,
  evaluateImages,
  imageSetKey,
  listImages,
  loadClipTextEncoder,
  loadSbertEncoder,
  numpyPermutation,
  InceptionSource,
} from '../lib/metrics/eval';
import { captionWmd, inceptionScore, loadFidStatistics, loadWordVectors, saveFidStatistics } from '../lib/metrics';
import { ClipModel, cosineDistance, rows } from '../lib/models/clip';
import { InceptionModel } from '../lib/models/inception';
import { VitModel } from '../lib/models/vit';
import { Tensor, noGrad, disposeAll } from '../lib/runtime/tensor';
import { METRICS, REFERENCE, VOCAB } from './support/paths';

const captionFixture = JSON.parse(fs.readFileSync(path.join(METRICS, 'coco_caption_metrics.json'), 'utf8'));
const fidIs = JSON.parse(fs.readFileSync(path.join(METRICS, 'fid_is_cases.json'), 'utf8'));
const COCO_KEYS = ['Bleu_1', 'Bleu_2', 'Bleu_3', 'Bleu_4', 'ROUGE_L', 'CIDEr'];

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'roundtrip-eval-test-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

function writeJson(name: string, value: unknown): string {
  const file = path.join(tmp, name);
  fs.writeFileSync(file, JSON.stringify(value));
  return file;
}

/** The fixture's references as a COCO ground-truth file. */
function cocoAnnotations(): unknown {
  const images = captionFixture.images.map((im: any) => ({ id: im.image_id }));
  const annotations: any[] = [];
  let id = 1;
  for (const im of captionFixture.images) for (const c of im.references) annotations.push({ id: id++, image_id: im.image_id, caption: c });
  return { images, annotations };
}

/** The same references in the Karpathy layout: the image id is the number in the file name. */
function karpathyAnnotations(): unknown {
  return captionFixture.images.map((im: any) => ({
    image: `val2014/COCO_val2014_${String(im.image_id).padStart(12, '0')}.jpg`,
    caption: im.references,
  }));
}

/** A run's candidates as a results file ([{image_id, caption}]). */
function runResults(run: any): { image_id: number; caption: string }[] {
  return Object.entries(run.candidates as Record<string, string>).map(([id, caption]) => ({ image_id: Number(id), caption }));
}

function expectScores(corpus: Record<string, number>, expected: Record<string, number>): void {
  for (const k of COCO_KEYS) {
    expect({ k, diff: Math.abs(corpus[k] - expected[k]) <= 1e-9 }).toEqual({ k, diff: true });
  }
}

describe('MT19937 permutation (numpy RandomState(2020).permutation)', () => {
  test('equals the stored permutations of every IS case', () => {
    expect(fidIs.is_cases.length).toBeGreaterThan(0);
    for (const c of fidIs.is_cases) {
      const n = c.permutation_rng_seed_2020.length;
      expect(Array.from(numpyPermutation(n, 2020))).toEqual(c.permutation_rng_seed_2020);
    }
  });

  test('is a permutation and depends on the seed', () => {
    const p = numpyPermutation(1000, 2020);
    expect(new Set(p).size).toBe(1000);
    expect(Math.min(...p)).toBe(0);
    expect(Math.max(...p)).toBe(999);
    expect(Array.from(numpyPermutation(1000, 7))).not.toEqual(Array.from(p));
    expect(Array.from(numpyPermutation(1, 2020))).toEqual([0]);
    expect(numpyPermutation(0).length).toBe(0);
  });
});

describe('Inception Score from logits with the permutation', () => {
  test('matches torch-fidelity (10 splits, shuffle) for every stored case', () => {
    for (const c of fidIs.is_cases) {
      let logits: Float32Array;
      let n: number;
      let classes: number;
      if (c.logits) {
        const spec = fidIs.arrays[c.logits];
        [n, classes] = spec.shape;
        const buf = fs.readFileSync(path.join(METRICS, spec.file));
        logits = new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
      } else {
        n = c.inline_logits.length;
        classes = c.inline_logits[0].length;
        logits = Float32Array.from(c.inline_logits.flat());
      }
      const splits = c.per_split_scores_default.splits;
      const r = inceptionScore(logits, n, classes, { splits, permutation: numpyPermutation(n) });
      const expected = c.per_split_scores_default.scores as number[];
      r.perSplit.forEach((s, i) => expect(Math.abs(s - expected[i])).toBeLessThanOrEqual(1e-9 * Math.abs(expected[i])));
      const ref = c[`splits${splits}_shuffleTrue`];
      expect(Math.abs(r.mean - ref.mean)).toBeLessThanOrEqual(1e-9 * ref.mean);
      expect(Math.abs(r.std - ref.std)).toBeLessThanOrEqual(1e-9 * Math.max(ref.std, 1e-300) + 1e-15);
    }
  });
});

describe('eval captions', () => {
  test('every run of the fixture, COCO ground-truth layout: corpus scores within 1e-9', async () => {
    const ann = writeJson('coco-gt.json', cocoAnnotations());
    for (const run of captionFixture.runs) {
      const res = writeJson(`results-${run.name}.json`, runResults(run));
      const ev = await evaluateCaptions(res, ann, { metrics: ['bleu', 'rouge', 'cider'] });
      expect(ev.images).toBe(run.n_images);
      expect(ev.annotationLayout).toBe('coco');
      expectScores(ev.corpus, run.scores);
      // per-image scores in results order
      for (const p of run.per_image) {
        const mine = ev.perImage.find((x) => x.image_id === p.image_id)!;
        for (const k of COCO_KEYS) expect(Math.abs(mine.scores[k] - p[k])).toBeLessThanOrEqual(1e-9);
      }
    }
  });

  test('Karpathy layout (ids from the file names) gives the same scores', async () => {
    const ann = writeJson('karpathy.json', karpathyAnnotations());
    const run = captionFixture.runs[captionFixture.runs.length - 1];
    const ev = await evaluateCaptions(writeJson('results-k.json', runResults(run)), ann);
    expect(ev.annotationLayout).toBe('karpathy');
    expectScores(ev.corpus, run.scores);
  });

  test('CLI layer: table in the paper layout, JSON to --out (atomic), --json output', async () => {
    const run = captionFixture.runs[0];
    const out = path.join(tmp, 'out', 'scores.json');
    fs.mkdirSync(path.dirname(out), { recursive: true });
    const args = { results: writeJson('results-cli.json', runResults(run)), annotations: writeJson('coco-gt-cli.json', cocoAnnotations()), out };
    const { output } = await runEvalCaptions(args);
    const [header, values] = output.split('\n');
    expect(header.trim().split(/\s+/)).toEqual(['BLEU-1', 'BLEU-2', 'BLEU-3', 'BLEU-4', 'METEOR', 'ROUGE-L', 'CIDEr', 'SPICE']);
    const cells = values.trim().split(/\s+/);
    expect(cells[3]).toBe((run.scores.Bleu_4 * 100).toFixed(1));
    expect(cells[4]).toBe('–');
    expect(cells[6]).toBe((run.scores.CIDEr * 100).toFixed(1));
    const written = JSON.parse(fs.readFileSync(out, 'utf8'));
    expect(Math.abs(written.corpus.CIDEr - run.scores.CIDEr)).toBeLessThanOrEqual(1e-9);
    expect(written.perImage.length).toBe(run.n_images);
    expect(fs.readdirSync(path.dirname(out))).toEqual(['scores.json']); // no temp file left behind
    const asJson = await runEvalCaptions({ ...args, out: undefined, json: true });
    expect(JSON.parse(asJson.output).corpus.Bleu_1).toBeCloseTo(run.scores.Bleu_1, 12);
  });

  test('errors: unknown image ids, empty captions, missing files, unknown metric, missing model', async () => {
    const ann = writeJson('coco-gt-err.json', cocoAnnotations());
    const base = runResults(captionFixture.runs[0]);
    const unknown = writeJson('results-unknown.json', [...base, { image_id: 987654321, caption: 'a dog' }, { image_id: 987654322, caption: 'a cat' }]);
    await expect(evaluateCaptions(unknown, ann)).rejects.toThrow(/2 image id\(s\) not in the annotations: 987654321, 987654322/);
    const empty = writeJson('results-empty.json', base.map((r, i) => (i === 1 ? { ...r, caption: '   ' } : r)));
    await expect(evaluateCaptions(empty, ann)).rejects.toThrow(new RegExp(`empty caption.*${base[1].image_id}`));
    await expect(evaluateCaptions(path.join(tmp, 'nope.json'), ann)).rejects.toThrow(/nope\.json: cannot read/);
    await expect(evaluateCaptions(writeJson('r-ok.json', base), path.join(tmp, 'missing-ann.json'))).rejects.toThrow(/missing-ann\.json/);
    await expect(evaluateCaptions(base, ann, { metrics: 'bleu,blue' })).rejects.toThrow(/metrics entry: expected one of .*got "blue"/);
    await expect(runEvalCaptions({ results: unknown, annotations: ann, metrics: 'cider,bogus' })).rejects.toThrow(/--metrics entry.*"bogus"/);
    await expect(evaluateCaptions(base, ann, { metrics: ['wmd'] })).rejects.toThrow(/--glove/);
    await expect(evaluateCaptions(base, ann, { metrics: ['clip-text'] })).rejects.toThrow(/--clip/);
    await expect(evaluateCaptions(base, ann, { metrics: ['sbert'] })).rejects.toThrow(/--sbert/);
  });

  test('wmd: the paper protocol per image, averaged over images', async () => {
    const glove = path.join(METRICS, 'wmd_embeddings_208x20.glove.txt');
    const wv = loadWordVectors(glove);
    // captions made of the embedding vocabulary, so that distances are finite
    const words = wv.words.filter((w) => /^[a-z]+$/.test(w));
    const refs = new Map<number, string[]>();
    const cands = new Map<number, string>();
    for (let i = 0; i < 6; i++) {
      const pick = (k: number) => words[(i * 7 + k * 13) % words.length];
      refs.set(i + 1, [0, 1, 2].map((r) => [pick(r), pick(r + 3), pick(r + 5)].join(' ')));
      cands.set(i + 1, [pick(1), pick(4), pick(9)].join(' '));
    }
    const ev = await evaluateCaptions(cands, refs, { metrics: ['wmd'], glove });
    let sum = 0;
    for (const p of ev.perImage) {
      const expected = captionWmd(wv, p.caption, refs.get(p.image_id as number)!).mean;
      expect(p.scores[WMD_KEY]).toBe(expected);
      sum += expected;
    }
    expect(ev.corpus[WMD_KEY]).toBeCloseTo(sum / 6, 12);
    expect(Number.isFinite(ev.corpus[WMD_KEY])).toBe(true);
    expect(ev.settings.stopwords).toBe(179);

    // a candidate of stop words only: gensim's infinite distance is kept (never a made-up number) and reported
    cands.set(2, 'the of and');
    const inf = await runEvalCaptions({ results: writeJson('results-wmd.json', [...cands].map(([image_id, caption]) => ({ image_id, caption }))), annotations: writeJson('refs-wmd.json', [...refs].map(([id, caption]) => ({ image: `x/img_${id}.jpg`, caption }))), metrics: 'wmd', glove, json: true });
    expect(inf.evaluation.corpus[WMD_KEY]).toBe(Infinity);
    expect(inf.evaluation.warnings.join('\n')).toMatch(/WMD is infinite for 1 image\(s\).*: 2;/);
    expect(JSON.parse(inf.output).corpus[WMD_KEY]).toBe('Infinity');
  });

  test('clip-text and sbert with the random-weight fixture models: batched = one by one, identical text = 0 / 1', async () => {
    const clipDir = path.join(tmp, 'clip-model');
    fs.mkdirSync(clipDir);
    for (const f of ['config.json', 'model.safetensors']) fs.symlinkSync(path.join(REFERENCE, 'clip-vit', f), path.join(clipDir, f));
    for (const f of ['vocab.json', 'merges.txt']) fs.symlinkSync(path.join(VOCAB, 'clip', f), path.join(clipDir, f));
    const sbertDir = path.join(tmp, 'sbert-model');
    fs.mkdirSync(sbertDir);
    for (const f of ['config.json', 'model.safetensors']) fs.symlinkSync(path.join(REFERENCE, 'bert-minilm', f), path.join(sbertDir, f));
    fs.symlinkSync(path.join(VOCAB, 'bert-base-uncased', 'vocab.txt'), path.join(sbertDir, 'vocab.txt'));

    const imgs = captionFixture.images.slice(0, 5);
    const refs = new Map<number, string[]>(imgs.map((im: any) => [im.image_id, im.references]));
    const cands = new Map<number, string>(imgs.map((im: any, i: number) => [im.image_id, i === 0 ? im.references[0] : im.candidates[0]]));
    const same = new Map<number, string[]>([[imgs[0].image_id, [imgs[0].references[0], imgs[0].references[0]]]]);

    const clip = await loadClipTextEncoder(clipDir);
    const sbert = await loadSbertEncoder(sbertDir);
    try {
      const ev = await evaluateCaptions(cands, refs, { metrics: ['clip-text', 'sbert'], clip, sbert, batchSize: 3 });
      expect(ev.settings.clipVariant).toBe('pooled');
      // unbatched reference computation, one text per call
      const one = async (enc: (ids: Tensor, mask: Tensor) => Promise<Tensor>, tok: any, maxLength: number, text: string) =>
        noGrad(async () => {
          const e = tok.encodeBatch([text], { padding: 'longest', maxLength, truncation: true });
          const ids = Tensor.fromTypedArray(BigInt64Array.from(e.inputIds[0].map(BigInt)), [1, e.inputIds[0].length]);
          const mask = Tensor.fromTypedArray(BigInt64Array.from(e.attentionMask[0].map(BigInt)), [1, e.inputIds[0].length]);
          const out = await enc(ids, mask);
          const v = Float32Array.from(rows(out)[0]);
          disposeAll([ids, mask, out]);
          return v;
        });
      for (const p of ev.perImage) {
        const id = p.image_id as number;
        const cv = await one((i, m) => clip.model.encodeText({ inputIds: i, attentionMask: m }, { variant: 'pooled' }), clip.tokenizer, 77, p.caption);
        const sv = await one((i, m) => sbert.model.sentenceEmbedding(i, m), sbert.tokenizer, sbert.maxLength, p.caption);
        let dClip = 0;
        let sSbert = 0;
        for (const r of refs.get(id)!) {
          dClip += cosineDistance(cv, await one((i, m) => clip.model.encodeText({ inputIds: i, attentionMask: m }, { variant: 'pooled' }), clip.tokenizer, 77, r));
          sSbert += 1 - cosineDistance(sv, await one((i, m) => sbert.model.sentenceEmbedding(i, m), sbert.tokenizer, sbert.maxLength, r));
        }
        expect(Math.abs(p.scores[CLIP_TEXT_KEY] - dClip / 5)).toBeLessThan(1e-5);
        expect(Math.abs(p.scores[SBERT_KEY] - sSbert / 5)).toBeLessThan(1e-5);
      }
      expect(ev.corpus[CLIP_TEXT_KEY]).toBeCloseTo(ev.perImage.reduce((a, p) => a + p.scores[CLIP_TEXT_KEY], 0) / 5, 12);
      // a caption equal to every reference: distance 0, similarity 1
      const eq = await evaluateCaptions(new Map([[imgs[0].image_id, imgs[0].references[0]]]), same, { metrics: ['clip-text', 'sbert'], clip, sbert });
      expect(Math.abs(eq.corpus[CLIP_TEXT_KEY])).toBeLessThan(1e-6);
      expect(Math.abs(eq.corpus[SBERT_KEY] - 1)).toBeLessThan(1e-6);
      // the projected variant is a different embedding
      const proj = await evaluateCaptions(cands, refs, { metrics: ['clip-text'], clip, clipVariant: 'projected' });
      expect(proj.settings.clipVariant).toBe('projected');
      expect(Math.abs(proj.corpus[CLIP_TEXT_KEY] - ev.corpus[CLIP_TEXT_KEY])).toBeGreaterThan(1e-6);
    } finally {
      clip.model.dispose();
      sbert.model.dispose();
    }
    // folders given by path are loaded (and released) by the evaluation itself
    const byPath = await evaluateCaptions(cands, refs, { metrics: 'sbert', sbert: sbertDir });
    expect(byPath.corpus[SBERT_KEY]).toBeGreaterThan(-1);
  });
});

// ---------------------------------------------------------------------------------------------
// images

/** A deterministic noise/gradient RGB image. */
async function writePng(file: string, seed: number, width = 40, height = 36): Promise<void> {
  const data = Buffer.alloc(width * height * 3);
  let s = seed * 2654435761 + 12345;
  for (let i = 0; i < data.length; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const x = (i / 3) % width;
    data[i] = ((s >>> 24) ^ (x * seed * 5)) & 0xff;
  }
  await sharp(data, { raw: { width, height, channels: 3 } }).png().toFile(file);
}

describe('eval images', () => {
  const inceptionTag = JSON.parse(fs.readFileSync(path.join(REFERENCE, 'inception-fid', 'case.json'), 'utf8')).weights.formula.tag;
  let inception: InceptionSource;
  let genDir: string;
  let refDir: string;
  let cacheDir: string;

  beforeAll(async () => {
    inception = { model: await InceptionModel.fromFormula(inceptionTag), id: `formula:${inceptionTag}` };
    genDir = path.join(tmp, 'generated');
    refDir = path.join(tmp, 'reference');
    cacheDir = path.join(tmp, 'fid-cache');
    fs.mkdirSync(genDir);
    fs.mkdirSync(refDir);
    // img0, img1 identical in both folders; img2..img4 differ; one odd size; ref has an extra image
    for (let i = 0; i < 5; i++) {
      await writePng(path.join(refDir, `img${i}.png`), 10 + i, i === 4 ? 48 : 40);
      if (i < 2) fs.copyFileSync(path.join(refDir, `img${i}.png`), path.join(genDir, `img${i}.png`));
      else await writePng(path.join(genDir, `img${i}.png`), 100 + i, i === 4 ? 48 : 40);
    }
    await writePng(path.join(refDir, 'extra.png'), 77);
    fs.writeFileSync(path.join(genDir, 'notes.txt'), 'not an image');
  });
  afterAll(() => inception?.model.dispose());

  test('FID of a set with itself ≈ 0; FID + IS against a folder; cache hit on the second call', async () => {
    const self = await evaluateImages({ generated: refDir, reference: refDir, metrics: 'fid', inception, fidFeature: '64', cache: false, progress: false });
    expect(self.fid!.cache).toEqual({ generated: 'off', reference: 'off' });
    expect(Math.abs(self.fid!.value)).toBeLessThan(1e-6 * self.fid!.traceSigma1 + 1e-9);
    expect(self.featurePasses.inception).toBe(12);

    const first = await evaluateImages({ generated: genDir, reference: refDir, metrics: ['fid', 'is'], inception, fidFeature: '64', isSplits: 2, cacheDir, progress: false });
    expect(first.generated.images).toBe(5); // notes.txt is not an image
    expect(first.reference!.images).toBe(6);
    expect(first.fid!.cache).toEqual({ generated: 'miss', reference: 'miss' });
    expect(first.featurePasses.inception).toBe(11);
    expect(first.fid!.value).toBeGreaterThan(0);
    expect(first.warnings.join('\n')).toMatch(/generated set has 5 images for 64 features/);
    expect(fs.readdirSync(cacheDir).filter((f) => f.endsWith('.fidstats')).length).toBe(2);

    // IS equals the computation from the network's logits with the RandomState(2020) shuffle
    const files = listImages(genDir, 'gen');
    const logits: number[] = [];
    await noGrad(async () => {
      for (const f of files) {
        const { data, info } = await sharp(f.path).raw().toBuffer({ resolveWithObject: true });
        const chw = new Uint8Array(3 * info.width * info.height);
        for (let p = 0; p < info.width * info.height; p++) for (let c = 0; c < 3; c++) chw[c * info.width * info.height + p] = data[p * 3 + c];
        const t = Tensor.fromTypedArray(chw, [1, 3, info.height, info.width], 'uint8');
        const out = await inception.model.features(t);
        logits.push(...out.logitsUnbiased.toFloat32Array());
        disposeAll([t, out.pool3, out.logitsUnbiased]);
      }
    });
    const classes = logits.length / files.length;
    const is = inceptionScore(Float32Array.from(logits), files.length, classes, { splits: 2, permutation: numpyPermutation(files.length) });
    expect(Math.abs(first.is!.mean - is.mean)).toBeLessThan(1e-6 * is.mean);
    expect(first.is!.mean).toBeGreaterThanOrEqual(1);

    const second = await evaluateImages({ generated: genDir, reference: refDir, metrics: 'fid', inception, fidFeature: '64', cacheDir, progress: false });
    expect(second.fid!.cache).toEqual({ generated: 'hit', reference: 'hit' });
    expect(second.featurePasses.inception).toBe(0);
    expect(second.fid!.value).toBe(first.fid!.value);

    // the reference's statistics saved to a file give the same FID without the reference images
    const refKey = imageSetKey(listImages(refDir, 'ref'), `torch-fidelity-inception-v3-compat/${inception.id}`, '64');
    const stats = loadFidStatistics(path.join(cacheDir, `${refKey}.fidstats`));
    const statsFile = path.join(tmp, 'ref-stats.fidstats');
    saveFidStatistics(statsFile, stats);
    const fromFile = await evaluateImages({ generated: genDir, reference: statsFile, metrics: 'fid', inception, fidFeature: '64', cacheDir, progress: false });
    expect(fromFile.fid!.cache.reference).toBe('file');
    expect(fromFile.fid!.value).toBe(first.fid!.value);
    // wrong layer against these statistics: a clear error
    await expect(evaluateImages({ generated: genDir, reference: statsFile, metrics: 'fid', inception, fidFeature: '192', cacheDir, progress: false })).rejects.toThrow(
      /dimension 64.*192/,
    );

    // rewriting one generated image invalidates only the generated set's entry
    await writePng(path.join(genDir, 'img3.png'), 555);
    const third = await evaluateImages({ generated: genDir, reference: refDir, metrics: 'fid', inception, fidFeature: '64', cacheDir, progress: false });
    expect(third.fid!.cache).toEqual({ generated: 'miss', reference: 'hit' });
    expect(third.featurePasses.inception).toBe(5);
    expect(third.fid!.value).not.toBe(first.fid!.value);

    const sqrtm = await evaluateImages({ generated: genDir, reference: refDir, metrics: 'fid', inception, fidFeature: '64', fidForm: 'sqrtm', cacheDir, progress: false });
    expect(Math.abs(sqrtm.fid!.value - third.fid!.value)).toBeLessThan(1e-6 * third.fid!.value);
  });

  test('CLIP and DINO distances between paired images: identical pairs give 0', async () => {
    const clip = await ClipModel.load(path.join(REFERENCE, 'clip-vit'));
    const dino = await VitModel.load(path.join(REFERENCE, 'vit-dino'));
    try {
      const ev = await evaluateImages({ generated: genDir, reference: refDir, metrics: ['clip', 'dino'], clip, dino, dinoSize: 64, batchSize: 2, progress: false });
      expect(ev.featurePasses).toEqual({ inception: 0, clip: 10, dino: 10 });
      for (const m of [ev.clip!, ev.dino!]) {
        expect(m.perImage.map((p) => p.file)).toEqual(['img0.png', 'img1.png', 'img2.png', 'img3.png', 'img4.png']);
        expect(Math.abs(m.perImage[0].distance)).toBeLessThan(1e-6);
        expect(Math.abs(m.perImage[1].distance)).toBeLessThan(1e-6);
        for (const p of m.perImage.slice(2)) expect(p.distance).toBeGreaterThan(1e-6);
        expect(m.mean).toBeCloseTo(m.perImage.reduce((a, p) => a + p.distance, 0) / 5, 12);
      }
      expect(ev.clip!.variant).toBe('pooled');
      expect(ev.dino!.interpolation).toBe('dino');
      const proj = await evaluateImages({ generated: genDir, reference: refDir, metrics: 'clip', clip, clipVariant: 'projected', progress: false });
      expect(Math.abs(proj.clip!.mean - ev.clip!.mean)).toBeGreaterThan(1e-7);
    } finally {
      clip.dispose();
      dino.dispose();
    }
  });

  test('CLI layer with weights named by string, and errors', async () => {
    const out = path.join(tmp, 'images.json');
    const { output, evaluation } = await runEvalImages({
      generated: genDir,
      reference: refDir,
      metrics: 'fid',
      inception: `formula:${inceptionTag}`,
      fidFeature: '64',
      cacheDir,
      out,
      progress: false,
    });
    expect(evaluation.fid!.cache).toEqual({ generated: 'hit', reference: 'hit' });
    expect(output).toMatch(/^generated: .*\nFID {3}\d+\.\d{4}/);
    expect(JSON.parse(fs.readFileSync(out, 'utf8')).fid.value).toBe(evaluation.fid!.value);

    await expect(evaluateImages({ generated: path.join(tmp, 'nowhere'), reference: refDir, metrics: 'fid', inception })).rejects.toThrow(/--generated: cannot read folder .*nowhere/);
    await expect(evaluateImages({ generated: genDir, metrics: 'fid', inception })).rejects.toThrow(/fid needs --reference/);
    await expect(evaluateImages({ generated: genDir, reference: refDir, metrics: 'fid' })).rejects.toThrow(/--inception/);
    await expect(evaluateImages({ generated: genDir, reference: refDir, metrics: 'fid,kid', inception })).rejects.toThrow(/metrics entry.*"kid"/);
    await expect(evaluateImages({ generated: genDir, reference: refDir, metrics: 'is', inception, isSplits: 10, progress: false })).rejects.toThrow(/--is-splits/);
    // paired metrics need partners by file name
    const lonely = path.join(tmp, 'lonely');
    fs.mkdirSync(lonely);
    await writePng(path.join(lonely, 'unmatched.png'), 3);
    const clipDir = path.join(REFERENCE, 'clip-vit');
    await expect(evaluateImages({ generated: lonely, reference: refDir, metrics: 'clip', clip: clipDir, progress: false })).rejects.toThrow(/1 have none: unmatched\.png/);
  });
});
