import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadImage, saveRgbPng } from '../lib/image';
import { bleu } from '../lib/metrics/bleu';
import { ciderD } from '../lib/metrics/cider';
import { inceptionScore } from '../lib/metrics/inception-score';
import { ptbTokenize } from '../lib/metrics/ptb-tokenizer';
import { ItemRecord, ReconstructionScorer, RerankOptions, loadDataset, readJsonLines, rerankI2t2i, rerankT2i2t, selectItems } from '../lib/paper/rerank';
import { buildReport } from '../lib/paper/report';
import { DATA } from './support/paths';
import { command as reportCommand } from '../lib/cli/commands/report';
import yargs from 'yargs';
import { makeTinyBlip, makeTinyClip, makeTinyDino, makeTinyMinilm, makeTinySd } from './support/tiny-models';


let root: string;
let models: { blip: string; sd: string; clip: string; dino: string; sbert: string };
let annotations: string;
let imagesDir: string;
let prompts: string;

function image(seed: number): { data: Uint8Array; width: number; height: number } {
  const data = new Uint8Array(64 * 64 * 3);
  let x = seed * 2654435761;
  for (let i = 0; i < data.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    data[i] = (x >>> 16) & 255;
  }
  return { data, width: 64, height: 64 };
}

beforeAll(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'rerank-'));
  models = {
    blip: makeTinyBlip(path.join(root, 'blip')),
    sd: makeTinySd(path.join(root, 'sd'), 'DDIMScheduler'),
    clip: makeTinyClip(path.join(root, 'clip')),
    dino: makeTinyDino(path.join(root, 'dino')),
    sbert: makeTinyMinilm(path.join(root, 'sbert')),
  };
  imagesDir = path.join(root, 'images');
  fs.mkdirSync(path.join(imagesDir, 'val2014'), { recursive: true });
  const entries = [];
  for (let i = 1; i <= 3; i++) {
    const rel = `val2014/COCO_val2014_${String(i).padStart(12, '0')}.png`;
    await saveRgbPng(path.join(imagesDir, rel), image(i));
    entries.push({ image: rel, caption: [`a photo of object number ${i}`, 'a small red cube on a table', 'some colourful noise'] });
  }
  annotations = path.join(root, 'karpathy.json');
  fs.writeFileSync(annotations, JSON.stringify(entries));
  prompts = path.join(root, 'prompts.json');
  fs.writeFileSync(prompts, JSON.stringify([
    { image: 'val2014/COCO_val2014_000000000001.png', caption: 'a red cube on a wooden table' },
    { image: 'val2014/COCO_val2014_000000000002.png', caption: 'two dogs playing in the snow' },
  ]));
});

afterAll(() => {
  fs.rmSync(root, { recursive: true, force: true });
});

function common(out: string, extra: Partial<RerankOptions> = {}): RerankOptions {
  return {
    out,
    blip: models.blip,
    sd: models.sd,
    clip: models.clip,
    dino: models.dino,
    sbert: models.sbert,
    k: 3,
    steps: 2,
    scheduler: 'ddim',
    size: 64,
    seed: 7,
    repeats: 4,
    dinoSize: 32,
    onWarning: () => undefined,
    ...extra,
  };
}

function results(dir: string): ItemRecord[] {
  return readJsonLines<ItemRecord>(path.join(dir, 'results.jsonl'));
}

/** Records without timings, for comparing runs. */
function comparable(records: ItemRecord[]): unknown {
  return records.map((r) => ({ ...r, seconds: 0, candidates: r.candidates.map((c) => ({ ...c, image: path.basename(c.image) })) }));
}

function argmin(values: number[]): number {
  let best = 0;
  values.forEach((v, j) => (v < values[best] ? (best = j) : undefined));
  return best;
}

/** Every record's winners are the argmin of its recorded distances, ranks agree, baseline has R picks in range. */
function checkRecords(records: ItemRecord[], methods: string[], k: number, repeats: number, dir: string): void {
  for (const r of records) {
    expect(r.candidates).toHaveLength(k);
    expect(r.baseline).toHaveLength(repeats);
    r.baseline.forEach((j) => expect(j >= 0 && j < k).toBe(true));
    for (const m of methods) {
      const d = r.candidates.map((c) => c.distance[m]);
      d.forEach((x) => expect(Number.isFinite(x)).toBe(true));
      expect(r.winner[m]).toBe(argmin(d));
      expect(r.candidates[r.winner[m]].rank[m]).toBe(1);
      expect(r.candidates.map((c) => c.rank[m]).sort()).toEqual(Array.from({ length: k }, (_, i) => i + 1));
    }
    for (const c of r.candidates) expect(fs.existsSync(path.resolve(dir, c.image))).toBe(true);
  }
}

const I2T2I_METHODS = ['clip', 'dino'];
let i2t2iDir: string;

test('i2t2i: K captions per image, SD reconstructions, winner = argmin of the distances, baseline picks', async () => {
  i2t2iDir = path.join(root, 'i2t2i');
  const stats = await rerankI2t2i({ ...common(i2t2iDir), annotations, images: imagesDir, similarity: 'clip,dino' });
  expect(stats).toMatchObject({ items: 3, done: 3, skipped: 0, blipCalls: 3, sdImages: 9, cacheHits: 0 });
  const records = results(i2t2iDir);
  expect(records.map((r) => r.index)).toEqual([0, 1, 2]);
  checkRecords(records, I2T2I_METHODS, 3, 4, i2t2iDir);
  // the reconstruction of candidate j is SD's drawing of candidate j's caption: distinct prompts or seeds give distinct files
  expect(new Set(records.flatMap((r) => r.candidates.map((c) => c.image))).size).toBe(9);
  // per-caption BLEU against the item's references is stored with each candidate
  const r0 = records[0];
  const refs = ptbTokenize(r0.references);
  const b = bleu(ptbTokenize(r0.candidates.map((c) => c.text)), r0.candidates.map(() => refs), 4);
  r0.candidates.forEach((c, j) => expect(c.scores.Bleu_4).toBeCloseTo(b.perImage[j][3], 12));
  const manifest = JSON.parse(fs.readFileSync(path.join(i2t2iDir, 'run.json'), 'utf8'));
  expect(manifest.settings).toMatchObject({ k: 3, repeats: 4, seed: 7, similarity: ['clip', 'dino'], clipVariant: 'projected', blip: { strategy: 'top-p', topP: 0.9, repetitionPenalty: 1.1, maxLength: 20, minLength: 5 } });
});

test('i2t2i resume: finished items are skipped, a torn item is redone from the image cache, same results', async () => {
  const before = results(i2t2iDir);
  const again = await rerankI2t2i({ ...common(i2t2iDir), annotations, images: imagesDir, similarity: 'clip,dino' });
  expect(again).toMatchObject({ done: 0, skipped: 3, blipCalls: 0, sdCalls: 0 });
  // simulate a crash while writing the last item: its line is cut short
  const file = path.join(i2t2iDir, 'results.jsonl');
  const lines = fs.readFileSync(file, 'utf8').split('\n').filter(Boolean);
  fs.writeFileSync(file, lines.slice(0, 2).join('\n') + '\n' + lines[2].slice(0, 40));
  const resumed = await rerankI2t2i({ ...common(i2t2iDir), annotations, images: imagesDir, similarity: 'clip,dino' });
  expect(resumed).toMatchObject({ done: 1, skipped: 2, blipCalls: 1, sdImages: 0, cacheHits: 3 });
  expect(comparable(results(i2t2iDir))).toEqual(comparable(before));
  // other settings in the same folder are refused
  await expect(rerankI2t2i({ ...common(i2t2iDir, { k: 2 }), annotations, images: imagesDir, similarity: 'clip,dino' })).rejects.toThrow(/other settings/);
});

test('i2t2i report: Table 1, rank analysis, SVG, gallery; numbers recomputed from the JSONL', async () => {
  // The tiny BLIP writes random word pieces, so its captions share no n-gram with human captions and
  // every metric would be 0. A copy of the run whose references quote some candidates gives the
  // tables non-trivial numbers to check.
  const dir = path.join(root, 'i2t2i-quoted');
  fs.mkdirSync(dir);
  fs.copyFileSync(path.join(i2t2iDir, 'run.json'), path.join(dir, 'run.json'));
  fs.symlinkSync(path.join(i2t2iDir, 'cache'), path.join(dir, 'cache'));
  const quoted = results(i2t2iDir).map((r, i) => ({ ...r, references: [r.candidates[i % 3].text, `${r.candidates[(i + 1) % 3].text} on a table`, 'a photo of something'] }));
  fs.writeFileSync(path.join(dir, 'results.jsonl'), quoted.map((r) => JSON.stringify(r)).join('\n') + '\n');
  const report = await buildReport([dir]);
  for (const f of [report.files.json, report.files.markdown, report.files.ranksJson, report.files.gallery, ...report.files.svgs]) expect(fs.existsSync(f)).toBe(true);
  const records = results(dir);
  const refs = records.map((r) => ptbTokenize(r.references));
  const captionsOf = (pick: (r: ItemRecord) => number) => ptbTokenize(records.map((r) => r.candidates[pick(r)].text));
  const summary = JSON.parse(fs.readFileSync(report.files.json, 'utf8'));
  const rowOf = (name: string) => summary.table.rows.find((x: { metric: string }) => x.metric === name);
  const cider = rowOf('CIDEr');
  const bleu4 = rowOf('BLEU-4');
  for (const m of I2T2I_METHODS) {
    expect(cider.reranked[m]).toBeCloseTo(ciderD(captionsOf((r) => r.winner[m]), refs).corpus, 10);
    expect(bleu4.reranked[m]).toBeCloseTo(bleu(captionsOf((r) => r.winner[m]), refs, 4).corpus[3], 10);
  }
  expect(Math.max(cider.reranked.clip, cider.reranked.dino, cider.baseline)).toBeGreaterThan(0.1);
  const picks = [0, 1, 2, 3].map((p) => ciderD(captionsOf((r) => r.baseline[p]), refs).corpus);
  expect(cider.baseline).toBeCloseTo(picks.reduce((a, b) => a + b, 0) / 4, 10);
  if (cider.baseline !== 0) expect(cider.gainPercent.clip).toBeCloseTo((100 * (cider.reranked.clip - cider.baseline)) / Math.abs(cider.baseline), 8);
  expect(rowOf('BLEU-3')).toBeDefined();
  expect(summary.table.notes.join(' ')).toMatch(/SPICE not computed/);
  // rank 1 candidates are exactly the winners: their mean CIDEr is the reranked corpus CIDEr
  const ranks = JSON.parse(fs.readFileSync(report.files.ranksJson, 'utf8'));
  expect(ranks.means.CIDEr.clip).toHaveLength(3);
  expect(ranks.means.CIDEr.clip[0]).toBeCloseTo(cider.reranked.clip, 10);
  expect(ranks.means.CIDEr.dino[0]).toBeCloseTo(cider.reranked.dino, 10);
  const md = fs.readFileSync(report.files.markdown, 'utf8');
  expect(md).toContain('Table 1');
  expect(md).toContain(cider.reranked.clip.toFixed(4));
  expect(md).toMatch(/K = 3 candidates/);
  expect(md).toMatch(/seed 7/);
  expect(md).toMatch(/nucleus sampling top-p 0.9/);
  expect(md).toMatch(/CLIP embedding variant: projected/);
  const svg = fs.readFileSync(report.files.svgs.find((f) => f.includes('CIDEr'))!, 'utf8');
  expect(svg).toMatch(/^<svg/);
  expect((svg.match(/<polyline/g) ?? []).length).toBe(2);
  const html = fs.readFileSync(report.files.gallery, 'utf8');
  const srcs = [...html.matchAll(/<img src="([^"]+)"/g)].map((m) => m[1]);
  expect(srcs).toHaveLength(3 * 4);
  for (const src of srcs) expect(fs.existsSync(path.resolve(report.out, src))).toBe(true);
  expect(html).toContain('★ clip');
  expect(html).toContain('baseline');
});

test('shards 0/2 and 1/2 merge to the single run', async () => {
  const dirs = [0, 1].map((i) => path.join(root, `shard${i}`));
  const s0 = await rerankI2t2i({ ...common(dirs[0]), annotations, images: imagesDir, similarity: 'clip,dino', shard: '0/2' });
  const s1 = await rerankI2t2i({ ...common(dirs[1]), annotations, images: imagesDir, similarity: 'clip,dino', shard: '1/2' });
  expect([s0.items, s1.items]).toEqual([2, 1]);
  expect(results(dirs[1]).map((r) => r.index)).toEqual([1]);
  const merged = await buildReport(dirs, { out: path.join(root, 'merged') });
  const single = await buildReport([i2t2iDir], { out: path.join(root, 'single') });
  expect(merged.items).toBe(3);
  expect(merged.table).toEqual(single.table);
  expect(merged.ranks).toEqual(single.ranks);
  const mergedRecords = readJsonLines<ItemRecord>(merged.files.merged);
  expect(comparable(mergedRecords)).toEqual(comparable(results(i2t2iDir)));
  // a shard folder cannot be reused for another shard
  await expect(rerankI2t2i({ ...common(dirs[0]), annotations, images: imagesDir, similarity: 'clip,dino', shard: '1/2' })).rejects.toThrow(/shard 0\/2/);
});

test('t2i2t: K images per text, BLIP captions, winner = argmin; Table 2 with FID/IS from given features', async () => {
  const out = path.join(root, 't2i2t');
  const stats = await rerankT2i2t({ ...common(out), prompts, images: imagesDir, similarity: 'clip-text,sbert,cider' });
  expect(stats).toMatchObject({ items: 2, done: 2, blipCalls: 2, sdImages: 6 });
  const records = results(out);
  checkRecords(records, ['clip-text', 'sbert', 'cider'], 3, 4, out);
  for (const r of records) {
    expect(r.input.text).toBeDefined();
    expect(r.realImage).toBeDefined();
    for (const c of r.candidates) {
      expect(c.text.length).toBeGreaterThan(0);
      expect(Number.isFinite(c.scores.clip_text_image)).toBe(true);
      expect(Number.isFinite(c.scores.clip_real)).toBe(true);
    }
  }
  // stand-in features (mean colour, 2 dims; 1008 logits are not needed to test the plumbing)
  const features = async (files: string[]) => {
    const pool3: Float32Array[] = [];
    const logits: Float32Array[] = [];
    for (const f of files) {
      const img = await loadImage(f);
      const sums = [0, 0, 0];
      for (let i = 0; i < img.data.length; i++) sums[i % 3] += img.data[i];
      const px = img.data.length / 3;
      pool3.push(Float32Array.from([sums[0] / px / 255, sums[1] / px / 255]));
      logits.push(Float32Array.from([sums[0] / px / 64, sums[1] / px / 64, sums[2] / px / 64]));
    }
    return { pool3, logits };
  };
  const report = await buildReport([out], { imageFeatures: features });
  const rowOf = (name: string) => report.table.rows.find((x) => x.metric === name)!;
  const clipRow = rowOf('CLIP distance (image vs input text)');
  for (const m of ['clip-text', 'sbert', 'cider']) {
    expect(clipRow.reranked[m]).toBeCloseTo(records.reduce((a, r) => a + r.candidates[r.winner[m]].scores.clip_text_image, 0) / records.length, 10);
  }
  const basePicks = [0, 1, 2, 3].map((p) => records.reduce((a, r) => a + r.candidates[r.baseline[p]].scores.clip_text_image, 0) / records.length);
  expect(clipRow.baseline).toBeCloseTo(basePicks.reduce((a, b) => a + b, 0) / 4, 10);
  expect(rowOf('CLIP distance (image vs real image)')).toBeDefined();
  expect(Number.isFinite(rowOf('FID').reranked['clip-text'])).toBe(true);
  const winners = await features(records.map((r) => path.resolve(out, r.candidates[r.winner.sbert].image)));
  const flat = new Float32Array(6);
  winners.logits.forEach((l, i) => flat.set(l, i * 3));
  expect(rowOf('IS').reranked.sbert).toBeCloseTo(inceptionScore(flat, 2, 3, { splits: 2 }).mean, 6);
  const ranks = JSON.parse(fs.readFileSync(report.files.ranksJson, 'utf8'));
  expect(ranks.means.clip_text_image['clip-text'][0]).toBeCloseTo(clipRow.reranked['clip-text'], 10);
  expect(fs.readFileSync(report.files.markdown, 'utf8')).toContain('Table 2');
});

test('bad input: missing images are skipped with a warning, none present is an error, long prompts warn, K < 1', async () => {
  const withMissing = path.join(root, 'missing.json');
  const entries = JSON.parse(fs.readFileSync(annotations, 'utf8'));
  fs.writeFileSync(withMissing, JSON.stringify([...entries.slice(0, 1), { image: 'val2014/COCO_val2014_000000000099.jpg', caption: ['gone'] }]));
  const warnings: string[] = [];
  const out = path.join(root, 'missing');
  const stats = await rerankI2t2i({ ...common(out, { k: 2, repeats: 2, onWarning: (m) => warnings.push(m) }), annotations: withMissing, images: imagesDir, similarity: 'clip' });
  expect(stats.items).toBe(1);
  expect(warnings.join('\n')).toMatch(/1 image\(s\) listed in the annotations are not in .* skipped: .*COCO_val2014_000000000099\.jpg/);
  const allMissing = path.join(root, 'all-missing.json');
  fs.writeFileSync(allMissing, JSON.stringify([{ image: 'val2014/nothing_1.jpg', caption: ['x'] }]));
  await expect(rerankI2t2i({ ...common(path.join(root, 'none')), annotations: allMissing, images: imagesDir })).rejects.toThrow(/none of the 1 image\(s\)/);
  await expect(rerankI2t2i({ ...common(path.join(root, 'k0'), { k: 0 }), annotations, images: imagesDir })).rejects.toThrow(/--k/);
  await expect(rerankT2i2t({ ...common(path.join(root, 'k0t'), { k: -1 }), prompts })).rejects.toThrow(/--k/);
  await expect(rerankI2t2i({ ...common(path.join(root, 'badshard')), annotations, images: imagesDir, shard: '2/2' })).rejects.toThrow(/--shard/);
  await expect(rerankI2t2i({ ...common(path.join(root, 'badsim')), annotations, images: imagesDir, similarity: 'sbert' })).rejects.toThrow(/--similarity/);

  const long = path.join(root, 'long.json');
  fs.writeFileSync(long, JSON.stringify([{ image: 'x.jpg', caption: Array.from({ length: 90 }, (_, i) => `word${i}`).join(' ') }]));
  const longWarnings: string[] = [];
  const longOut = path.join(root, 'long');
  await rerankT2i2t({ ...common(longOut, { k: 2, repeats: 1, onWarning: (m) => longWarnings.push(m) }), prompts: long, similarity: 'cider' });
  expect(longWarnings.join('\n')).toMatch(/Stable Diffusion truncates it to 77/);
  const [rec] = results(longOut);
  expect(rec.warnings?.join(' ')).toMatch(/truncates it to 77/);
  expect(rec.candidates).toHaveLength(2);
});

test('score: caption reconstruction distance averaged over N seeds, and the mirror', async () => {
  const img = path.join(imagesDir, 'val2014/COCO_val2014_000000000001.png');
  const scorer = await ReconstructionScorer.load('caption', { sd: models.sd, clip: models.clip, similarity: 'clip', seeds: 2, steps: 2, scheduler: 'ddpm', size: 64, cache: path.join(root, 'score-cache') });
  try {
    const s = await scorer.captionDistance(img, 'a red cube');
    expect(s.perSeed.clip).toHaveLength(2);
    expect(s.seeds[0]).not.toBe(s.seeds[1]);
    expect(s.distance.clip).toBeCloseTo((s.perSeed.clip[0] + s.perSeed.clip[1]) / 2, 12);
    const again = await scorer.captionDistance(img, 'a red cube');
    expect(again.distance).toEqual(s.distance);
  } finally {
    scorer.dispose();
  }
  const mirror = await ReconstructionScorer.load('text', { blip: models.blip, clip: models.clip, similarity: 'clip-text,cider' });
  try {
    const t = await mirror.textDistance('a red cube', img);
    expect(t.caption.length).toBeGreaterThan(0);
    expect(Number.isFinite(t.distance['clip-text'])).toBe(true);
    expect(Number.isFinite(t.distance.cider)).toBe(true);
  } finally {
    mirror.dispose();
  }
});

test('datasets: the real Karpathy, NoCaps and seed-release files with a partial image folder; sharding', async () => {
  const dir = path.join(root, 'partial');
  const karpathy = JSON.parse(fs.readFileSync(path.join(DATA, 'coco-karpathy', 'coco_karpathy_test.json'), 'utf8'));
  const nocaps = JSON.parse(fs.readFileSync(path.join(DATA, 'nocaps', 'nocaps_val.json'), 'utf8'));
  for (const rel of [karpathy[1].image, nocaps[2].image]) {
    fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    await saveRgbPng(path.join(dir, rel), image(5));
  }
  const coco = loadDataset({ annotations: path.join(DATA, 'coco-karpathy', 'coco_karpathy_test.json'), images: dir });
  expect(coco.kind).toBe('karpathy');
  expect(coco.items).toHaveLength(1);
  expect(coco.items[0]).toMatchObject({ index: 1, image: path.join(dir, karpathy[1].image), references: karpathy[1].caption });
  expect(coco.warnings[0]).toMatch(new RegExp(`^${karpathy.length - 1} image\\(s\\) listed`));
  expect(coco.warnings[0]).toContain(karpathy[0].image);

  const captions = path.join(root, 'nocaps-captions.json');
  fs.writeFileSync(captions, JSON.stringify({ images: [{ id: nocaps[2].img_id }], annotations: [{ image_id: nocaps[2].img_id, id: 1, caption: 'a thing' }] }));
  const nc = loadDataset({ annotations: path.join(DATA, 'nocaps', 'nocaps_val.json'), images: dir, captions });
  expect(nc.kind).toBe('nocaps');
  expect(nc.items).toEqual([{ index: 2, id: String(nocaps[2].img_id), image: path.join(dir, nocaps[2].image), references: ['a thing'] }]);

  const sdCoco = loadDataset({ prompts: path.join(DATA, 'seed-release', 'sd_coco.json'), images: dir });
  expect(sdCoco.items[1].text).toBe(JSON.parse(fs.readFileSync(path.join(DATA, 'seed-release', 'sd_coco.json'), 'utf8'))[1].caption);
  const shard = selectItems(sdCoco.items, { limit: 10, shard: { index: 1, count: 3 } });
  expect(shard.map((it) => it.index)).toEqual([1, 4, 7]);

  const folder = loadDataset({ images: path.join(imagesDir, 'val2014') });
  expect(folder.items.map((it) => it.id)).toEqual([1, 2, 3].map((i) => `COCO_val2014_${String(i).padStart(12, '0')}.png`));
  expect(() => loadDataset({ annotations: path.join(root, 'nope.json'), images: dir })).toThrow(/does not exist/);
});

test('report command (handler) rebuilds the report from a run folder', async () => {
  const out = path.join(root, 'cli-report');
  const write = jest.spyOn(process.stdout, 'write').mockImplementation(() => true);
  try {
    await yargs([]).command(reportCommand).strict().parseAsync(['report', i2t2iDir, '--out', out]);
  } finally {
    write.mockRestore();
  }
  for (const f of ['summary.json', 'summary.md', 'rank-analysis.json', 'rank-CIDEr.svg', 'gallery.html']) expect(fs.existsSync(path.join(out, f))).toBe(true);
});
