/** BLIP-2 OPT as the captioner of reranking (i2t2i, t2i2t) and of the mirror score, end to end on tiny models. */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { saveRgbPng } from '../lib/image';
import { ItemRecord, ReconstructionScorer, readJsonLines, rerankI2t2i, rerankT2i2t } from '../lib/paper/rerank';
import { makeTinyBlip2, makeTinyClip, makeTinySd } from './support/tiny-models';

let root: string;
let models: { blip: string; sd: string; clip: string };
let imagesDir: string;

beforeAll(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'blip2-rerank-'));
  models = { blip: makeTinyBlip2(path.join(root, 'blip2')), sd: makeTinySd(path.join(root, 'sd'), 'DDIMScheduler'), clip: makeTinyClip(path.join(root, 'clip')) };
  imagesDir = path.join(root, 'images');
  fs.mkdirSync(path.join(imagesDir, 'val2014'), { recursive: true });
  const entries = [];
  for (let i = 1; i <= 2; i++) {
    const rel = `val2014/COCO_val2014_${String(i).padStart(12, '0')}.png`;
    const data = new Uint8Array(48 * 48 * 3).map((_, j) => (j * (3 + i)) & 255);
    await saveRgbPng(path.join(imagesDir, rel), { data, width: 48, height: 48 });
    entries.push({ image: rel, caption: [`a photo of object number ${i}`, 'a small red cube on a table'] });
  }
  fs.writeFileSync(path.join(root, 'karpathy.json'), JSON.stringify(entries));
  fs.writeFileSync(path.join(root, 'prompts.json'), JSON.stringify([{ image: entries[0].image, caption: 'a red cube on a wooden table' }]));
});

afterAll(() => {
  fs.rmSync(root, { recursive: true, force: true });
});

const common = (out: string) => ({ out, blip: models.blip, sd: models.sd, clip: models.clip, k: 2, steps: 2, scheduler: 'ddim', size: 32, seed: 3, repeats: 2, maxLength: 6, minLength: 0, onWarning: () => undefined });

test('i2t2i with BLIP-2: K captions per image, reconstructions, a winner per image', async () => {
  const out = path.join(root, 'i2t2i');
  const stats = await rerankI2t2i({ ...common(out), annotations: path.join(root, 'karpathy.json'), images: imagesDir, similarity: 'clip' });
  expect(stats).toMatchObject({ items: 2, done: 2, blipCalls: 2 });
  const records = readJsonLines<ItemRecord>(path.join(out, 'results.jsonl'));
  for (const r of records) {
    expect(r.candidates).toHaveLength(2);
    for (const c of r.candidates) expect(typeof c.text).toBe('string');
    expect(r.winner.clip).toBeGreaterThanOrEqual(0);
  }
}, 120000);

test('t2i2t and the mirror score caption with BLIP-2', async () => {
  const out = path.join(root, 't2i2t');
  const stats = await rerankT2i2t({ ...common(out), prompts: path.join(root, 'prompts.json'), images: imagesDir, similarity: 'clip-text,cider' });
  expect(stats).toMatchObject({ items: 1, done: 1 });
  const mirror = await ReconstructionScorer.load('text', { blip: models.blip, clip: models.clip, similarity: 'clip-text,cider' });
  try {
    const t = await mirror.textDistance('a red cube', path.join(imagesDir, 'val2014/COCO_val2014_000000000001.png'));
    expect(typeof t.caption).toBe('string');
    expect(Number.isFinite(t.distance['clip-text'])).toBe(true);
  } finally {
    mirror.dispose();
  }
}, 120000);
