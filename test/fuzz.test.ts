/**
 * A seeded fuzzer over what users hand us: images (truncated, bit flips, wrong magic, huge dimensions),
 * safetensors headers, finetune JSON configs, training annotations and rerank JSONL results. Each case
 * either works or ends in a RoundtripError whose message names the file (or the config key) and says
 * something: no crash, no hang, no "Unknown error". FUZZ_CASES scales it (the CI default is 520 cases;
 * `FUZZ_CASES=20000 npx jest test/fuzz.test.ts` for a long run), FUZZ_SEED changes the draw.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as zlib from 'zlib';
import sharp from 'sharp';
import { RoundtripError } from '../lib/errors';
import { decodeImage } from '../lib/image/decode';
import { loadSafetensors } from '../lib/weights/safetensors';
import { disposeAll } from '../lib/runtime/tensor';
import { resolveConfig } from '../lib/train/finetune/trainer';
import { readAnnotations } from '../lib/train/finetune/data';
import { loadRuns } from '../lib/paper/report/load';
import { Rng } from '../lib/image/random';

jest.setTimeout(120000);

const SEED = Number(process.env.FUZZ_SEED ?? 19);
const SCALE = Number(process.env.FUZZ_CASES ?? 520) / 520;
const n = (base: number) => Math.max(1, Math.round(base * SCALE));

/** A small seeded generator (mulberry32) with the helpers the fuzzer draws with. */
function rng(seed: number) {
  // lib/image/random.ts's mulberry32: the same sequence, one implementation.
  const g = new Rng(seed);
  const next = () => g.next();
  return { next, int: (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo)), pick: <T>(xs: readonly T[]) => xs[Math.floor(next() * xs.length)] };
}

let tmp: string;
beforeAll(() => (tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'fuzz-'))));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A failure must be ours, name `where` and say something. */
function expectClear(err: unknown, where: string, label: string): void {
  if (!(err instanceof RoundtripError)) throw new Error(`${label}: not a RoundtripError: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
  const m = err.message;
  if (!m.includes(where) || /unknown error|\[object Object\]|:\s*$/i.test(m)) throw new Error(`${label}: unclear message: ${m}`);
}

const tally: Record<string, { ok: number; refused: number }> = {};
const count = (kind: string, ok: boolean) => ((tally[kind] ??= { ok: 0, refused: 0 })[ok ? 'ok' : 'refused']++);
afterAll(() => {
  const total = Object.values(tally).reduce((s, t) => s + t.ok + t.refused, 0);
  if (process.env.FUZZ_PRINT) process.stderr.write(`fuzz: ${total} cases ${JSON.stringify(tally)}\n`);
});

/** A PNG chunk with its CRC. */
function chunk(type: string, data: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(zlib.crc32(body) >>> 0);
  return Buffer.concat([len, body, crc]);
}

test('images: truncations, bit flips, wrong magic, huge dimensions', async () => {
  const r = rng(SEED);
  const raw = Buffer.alloc(24 * 20 * 3);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 37) % 256;
  const img = sharp(raw, { raw: { width: 24, height: 20, channels: 3 } });
  const bases = { png: await img.clone().png().toBuffer(), jpeg: await img.clone().jpeg().toBuffer(), webp: await img.clone().webp().toBuffer(), gif: await img.clone().gif().toBuffer() };
  const cases = n(170);
  for (let c = 0; c < cases; c++) {
    const kind = r.pick(['png', 'jpeg', 'webp', 'gif'] as const);
    let bytes = Buffer.from(bases[kind]);
    const how = r.pick(['truncate', 'flip', 'magic', 'huge', 'garbage'] as const);
    if (how === 'truncate') bytes = bytes.subarray(0, r.int(1, bytes.length));
    else if (how === 'flip') for (let k = r.int(1, 9); k > 0; k--) bytes[r.int(0, bytes.length)] ^= 1 << r.int(0, 8);
    else if (how === 'magic') bytes.writeUInt32BE(r.int(0, 2 ** 32), 0);
    else if (how === 'garbage') bytes = Buffer.from(Array.from({ length: r.int(1, 300) }, () => r.int(0, 256)));
    else {
      // A valid PNG header announcing a huge image (a decompression bomb): refused before allocation.
      const ihdr = Buffer.alloc(13);
      ihdr.writeUInt32BE(r.int(30000, 2 ** 31 - 1), 0);
      ihdr.writeUInt32BE(r.int(30000, 2 ** 31 - 1), 4);
      ihdr[8] = 8;
      ihdr[9] = 2;
      bytes = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(Buffer.alloc(64))), chunk('IEND', Buffer.alloc(0))]);
    }
    const label = `fuzz-image-${c}.${kind}`;
    try {
      const out = await decodeImage(bytes, {}, label);
      expect(out.data.length).toBe(out.width * out.height * 3);
      expect(how).not.toBe('huge');
      count('image', true);
    } catch (err) {
      expectClear(err, label, `${label} (${how})`);
      count('image', false);
    }
  }
});

test('safetensors headers: lengths, dtypes, shapes, offsets, JSON', async () => {
  const r = rng(SEED + 1);
  const data = Buffer.alloc(64);
  const valid = () => ({ a: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] }, b: { dtype: 'I64', shape: [5], data_offsets: [24, 64] }, __metadata__: { format: 'pt' } }) as Record<string, any>;
  const mutations: ((h: Record<string, any>) => void)[] = [
    (h) => (h.a.dtype = r.pick(['F33', '', 'f32', 7, null, 'BF16', 'U8', 'F64'])),
    (h) => (h.a.shape = r.pick([[-1, 3], [2, 3, 4], [], [1e12, 1e12], 'x', [2.5, 3], [0], null])),
    (h) => (h.b.data_offsets = r.pick([[24, 20], [24, 1e9], [-8, 64], [0, 40], [24], 'x', [24, 64, 3], [2 ** 53, 2 ** 53 + 40]])),
    (h) => delete h[r.pick(['a', 'b'])].data_offsets,
    (h) => (h.__metadata__ = r.pick([{ format: 3 }, 'pt', [1], null])),
    (h) => (h[''] = { dtype: 'F32', shape: [1], data_offsets: [0, 4] }),
    (h) => (h.c = { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] }),
  ];
  const cases = n(150);
  for (let c = 0; c < cases; c++) {
    const h = valid();
    for (let k = r.next() < 0.1 ? 0 : r.int(1, 3); k > 0; k--) r.pick(mutations)(h);
    let header = Buffer.from(JSON.stringify(h));
    if (r.next() < 0.15) header = header.subarray(0, r.int(1, header.length)); // broken JSON
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(r.next() < 0.1 ? r.pick([0, header.length + 1000, 2 ** 40]) : header.length));
    let bytes = Buffer.concat([len, header, data]);
    if (r.next() < 0.15) bytes = bytes.subarray(0, r.int(0, bytes.length));
    const file = path.join(tmp, `fuzz-${c}.safetensors`);
    fs.writeFileSync(file, bytes);
    try {
      const t = await loadSafetensors(file);
      for (const v of Object.values(t)) expect(v.numel).toBeGreaterThanOrEqual(0);
      disposeAll(t);
      count('safetensors', true);
    } catch (err) {
      expectClear(err, file, `safetensors case ${c}: ${JSON.stringify(h).slice(0, 200)}`);
      count('safetensors', false);
    }
  }
});

test('finetune JSON configs: every key with wrong types and ranges', () => {
  const r = rng(SEED + 2);
  const base = { blip: 'b', sd: 's', annotations: 'a.json', images: 'i', output: 'o' };
  const keys = ['lr', 'batchSize', 'epochs', 'sdSize', 'blipSize', 'seed', 'trainable', 'objective', 'schedule', 'weights', 'clip', 'nanPolicy', 'nanRetries', 'weightBound', 'precision', 'cacheLatents', 'maxSteps', 'gradAccum', 'keepLast', 'output', 'temperature', 'typo', 'lrSchedule', 'prompt'];
  const values = [-1, 0, 0.5, 1e12, NaN, Infinity, 'x', '', null, [], [1], {}, { blip: 'xattn-q' }, { cap: -1 }, { nope: 1 }, true, 2 ** 53, 'skip-batch', 'none'];
  const cases = n(120);
  for (let c = 0; c < cases; c++) {
    const cfg: Record<string, unknown> = { ...base };
    for (let k = r.int(1, 4); k > 0; k--) {
      const key = r.pick(keys);
      if (r.next() < 0.1) delete cfg[key];
      else cfg[key] = r.pick(values);
    }
    try {
      resolveConfig(cfg, 'fuzz.json');
      count('config', true);
    } catch (err) {
      expectClear(err, 'fuzz.json', `config ${JSON.stringify(cfg)}`);
      count('config', false);
    }
  }
});

test('training annotations: shapes, types, broken JSON', () => {
  const r = rng(SEED + 3);
  const entries = [{ image: 'a.png', caption: 'a dog', image_id: 1 }, { image: 'b.png', caption: ['x', 'y'] }, { image: 3 }, { caption: 'no image' }, null, 'str', { image: 'c.png', caption: [1] }, { image: 'd.png', caption: null }];
  const cases = n(40);
  for (let c = 0; c < cases; c++) {
    let text = JSON.stringify(r.next() < 0.15 ? r.pick([{}, 'x', 3, null]) : Array.from({ length: r.int(0, 5) }, () => r.pick(entries)));
    if (r.next() < 0.2) text = text.slice(0, r.int(0, text.length));
    if (r.next() < 0.1) text = '\ufeff' + text;
    const file = path.join(tmp, `ann-${c}.json`);
    fs.writeFileSync(file, text);
    try {
      expect(readAnnotations(file, tmp).length).toBeGreaterThan(0);
      count('annotations', true);
    } catch (err) {
      expectClear(err, file, `annotations ${text.slice(0, 120)}`);
      count('annotations', false);
    }
  }
});

test('rerank JSONL results: torn lines, garbage, wrong record shapes', () => {
  const r = rng(SEED + 4);
  const good = (index: number) => ({
    direction: 'i2t2i',
    index,
    id: `item${index}`,
    input: { image: 'x.png' },
    references: ['a dog'],
    candidates: [0, 1].map((j) => ({ index: j, text: `c${j}`, image: `cache/${j}.png`, seed: j, distance: { clip: 0.1 * j }, rank: { clip: j + 1 }, scores: { Bleu_1: 0.5 } })),
    winner: { clip: 0 },
    baseline: [1, 0],
    seconds: 1,
  });
  const breaks: ((x: any) => void)[] = [
    (x) => (x.index = r.pick([-1, 1.5, 'x', null])),
    (x) => (x.candidates = r.pick([[], 5, null, [null], [{ text: 1 }]])),
    (x) => (x.candidates[0].distance = r.pick([null, 'x', { clip: 'far' }])),
    (x) => (x.winner = r.pick([{ clip: 7 }, null, [0], { clip: -1 }])),
    (x) => (x.baseline = r.pick([null, [9], 'x'])),
    (x) => (x.references = r.pick([null, [1], 'a dog'])),
    (x) => delete x.id,
  ];
  const cases = n(40);
  for (let c = 0; c < cases; c++) {
    const dir = path.join(tmp, `run-${c}`);
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'run.json'), JSON.stringify({ version: 1, settings: { direction: 'i2t2i', k: 2 }, shard: { index: 0, count: 1 }, created: 'now' }));
    const lines = Array.from({ length: r.int(1, 5) }, (_, i) => {
      const rec = good(i);
      if (r.next() < 0.4) r.pick(breaks)(rec);
      return JSON.stringify(rec);
    });
    if (r.next() < 0.25) lines.splice(r.int(0, lines.length), 0, r.pick(['{"index": 3', 'garbage', '[]', '{}']));
    let text = lines.join('\n') + '\n';
    if (r.next() < 0.2) text = text.slice(0, r.int(1, text.length)); // torn last line (an interrupted append): dropped
    const file = path.join(dir, 'results.jsonl');
    fs.writeFileSync(file, text);
    try {
      loadRuns([dir]);
      count('jsonl', true);
    } catch (err) {
      expectClear(err, dir, `jsonl case ${c}: ${text.slice(0, 200)}`);
      count('jsonl', false);
    }
  }
  const total = Object.values(tally).reduce((s, t) => s + t.ok + t.refused, 0);
  expect(total).toBeGreaterThanOrEqual(n(520));
});
