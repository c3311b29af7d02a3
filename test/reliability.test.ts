/**
 * Nothing lost, nothing hangs (issue #19), in process: the non-finite guard and its policies, run logs
 * across resumes, run-folder checks, image sizes from the model configs, bounded work, output checks and
 * the messages users used to get wrong. Child-process behaviour (signals, kill -9, disk full) is in
 * fault-injection.test.ts; the fuzzer in fuzz.test.ts.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as zlib from 'zlib';
import sharp from 'sharp';
import { FinetuneConfig, finetune, modelImageSizes, resolveConfig, trainablePatterns } from '../lib/train/finetune';
import { listCheckpoints, resolveCheckpoint } from '../lib/train/checkpoint';
import { RunLog } from '../lib/train/runlog';
import { checkTensors, lastVerifiedCheckpoint } from '../lib/train/guard';
import { checkOutputDir, cleanTempLeftovers } from '../lib/fsutil';
import { LIMITS, checkMemory, expectBounded, memoryCeiling } from '../lib/limits';
import { captionImages } from '../lib/cli/commands/caption';
import { runGenerate } from '../lib/cli/commands/generate';
import { rerankI2t2i } from '../lib/paper/rerank';
import { createParser, splitOperands } from '../lib/cli/index';
import { saveTensors } from '../lib/weights/save';
import { Tensor } from '../lib/runtime/tensor';
import { loadImage } from '../lib/image/decode';
import { convertToSafetensors } from '../lib/weights/convert';
import { DATA, ROOT } from './support/paths';
import { makeTinyBlip, makeTinySd } from './support/tiny-models';

jest.setTimeout(240000);

let root: string;
let blipDir: string;
let sdDir: string;
const CAPTIONS = ['a dog on the grass', 'a red bus in the street', 'a cat sleeping on a sofa', 'a man riding a bike', 'two birds on a wire', 'a plate of food'];

beforeAll(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'reliab-'));
  blipDir = makeTinyBlip(path.join(root, 'blip'));
  sdDir = makeTinySd(path.join(root, 'sd'), 'DDPMScheduler');
  fs.mkdirSync(path.join(root, 'images'));
  for (let i = 0; i < CAPTIONS.length; i++) {
    const raw = Buffer.alloc(40 * 36 * 3);
    for (let k = 0; k < raw.length; k++) raw[k] = (k * (7 + i) + i * 31) % 251;
    await sharp(raw, { raw: { width: 40, height: 36, channels: 3 } }).png().toFile(path.join(root, 'images', `img${i}.png`));
  }
  fs.writeFileSync(path.join(root, 'train.json'), JSON.stringify(CAPTIONS.map((caption, i) => ({ image: `img${i}.png`, caption, image_id: String(i) }))));
});

afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

function cfg(output: string, extra: Partial<FinetuneConfig> = {}): FinetuneConfig {
  return resolveConfig({
    blip: blipDir,
    sd: sdDir,
    bridge: path.join(DATA, 'seed-release', 'reindex_clip_to_blip.json'),
    annotations: path.join(root, 'train.json'),
    images: path.join(root, 'images'),
    output,
    sdSize: 16,
    blipSize: 16,
    batchSize: 2,
    epochs: 2,
    prefetch: 2,
    progress: false,
    checkpointEvery: 1,
    keepLast: 10,
    ...extra,
  });
}

const stepRows = (dir: string) => new RunLog(path.join(dir, 'log.jsonl')).stepRows<{ step: number; loss: number; lr: number }>();

describe('non-finite guard', () => {
  test('weights blown up under a finite loss trip at that step, naming the tensor; nothing bad is written', async () => {
    const out = path.join(root, 'guard-weights');
    const bad = path.join(root, 'bad.safetensors');
    let victim = '';
    const run = finetune(cfg(out), {
      afterUpdate: async (step, { blip }) => {
        if (step !== 3) return;
        // The run: weights at 3e29 (finite in float32, gradient norm unremarkable).
        victim = Object.keys(blip.model.tensors(blip.model.setTrainable(trainablePatterns('blip', 'xattn-q'))))[0];
        const t = blip.model.tensors([victim])[victim];
        const huge = t.detach().mul(0).add(3e29);
        await saveTensors(bad, { [victim]: huge });
        huge.dispose();
        await blip.model.loadWeights([bad], { partial: true });
      },
    });
    const err = await run.then(() => undefined, (e: Error) => e);
    expect(err?.message).toMatch(new RegExp(`step 3: trained tensor 'blip:${victim.replace(/\./g, '\\.')}' reached max \\|w\\| 3\\.000e\\+29`));
    expect(err?.message).toMatch(/--nan-policy stop; the state was not saved; the last verified checkpoint is .*step-00000002/);
    expect(listCheckpoints(out)).toEqual(['step-00000001', 'step-00000002']);
    expect(resolveCheckpoint('latest', out)).toMatch(/step-00000002$/);
    expect(lastVerifiedCheckpoint(out)).toMatch(/step-00000002$/);
    expect(fs.existsSync(path.join(out, 'export'))).toBe(false);
    expect(stepRows(out).map((r) => r.step)).toEqual([1, 2]);
  });

  test('checkTensors names the tensor; NaN and out-of-bound weights both trip', () => {
    const ok = Tensor.fromTypedArray(new Float32Array([0.1, -0.2]), [2]);
    const nan = Tensor.fromTypedArray(new Float32Array([0.1, NaN]), [2]);
    const big = Tensor.fromTypedArray(new Float32Array([2e4, 2e4]), [2]);
    expect(checkTensors(5, { a: ok })).toBeUndefined();
    expect(checkTensors(5, { a: ok, b: nan })?.message).toMatch(/step 5: trained tensor 'b' is not finite/);
    expect(checkTensors(5, { a: ok, c: big })?.message).toMatch(/'c' reached max \|w\| 2\.000e\+4 \(bound 1\.000e\+4/);
    expect(checkTensors(5, { c: big }, 1e5)).toBeUndefined();
    [ok, nan, big].forEach((t) => t.dispose());
  });

  test('skip-batch: a NaN step rolls back, its batch is left out, each step is logged once', async () => {
    const out = path.join(root, 'guard-skip');
    let tripped = false;
    const r = await finetune(cfg(out, { nanPolicy: 'skip-batch' }), {
      afterLoss: (step) => {
        if (step === 2 && !tripped) {
          tripped = true;
          return NaN;
        }
      },
    });
    expect(r.rollbacks).toEqual([{ step: 3, to: 2, reason: expect.stringMatching(/step 3: the loss is NaN/), policy: 'skip-batch' }]);
    expect(r.steps).toBe(6);
    expect(stepRows(out).map((s) => s.step)).toEqual([1, 2, 3, 4, 5, 6]);
    const events = new RunLog(path.join(out, 'log.jsonl')).rows().filter((x) => x.event);
    expect(events.map((e) => e.event)).toEqual(['start', 'rollback']);
    expect(events[1].skipped).toEqual(['0:2']);
    // The start state is kept as a verified checkpoint so that even step 1 can roll back.
    expect(listCheckpoints(out)[0]).toBe('step-00000000');
    expect(fs.existsSync(path.join(out, 'export', 'blip.safetensors'))).toBe(true);
  });

  test('lower-lr: a rollback scales the learning rate; the retry budget ends the run by name', async () => {
    const out = path.join(root, 'guard-lr');
    let tripped = false;
    await finetune(cfg(out, { nanPolicy: 'lower-lr', maxSteps: 2, lr: 1e-3 }), {
      afterLoss: (step) => {
        if (step === 0 && !tripped) {
          tripped = true;
          return Infinity;
        }
      },
    });
    expect(stepRows(out).map((s) => s.lr)).toEqual([5e-4, 5e-4]);
    await expect(finetune(cfg(path.join(root, 'guard-lr2'), { nanPolicy: 'lower-lr', nanRetries: 1, maxSteps: 2 }), { afterLoss: () => NaN })).rejects.toThrow(
      /step 1: the loss is NaN.*--nan-policy lower-lr gave up after 1 rollback\(s\) \(--nan-retries\)/,
    );
  });
});

describe('run folder and log', () => {
  test('resume drops log rows past the checkpoint, marks the resume, and continues bit-identically', async () => {
    const straight = await finetune(cfg(path.join(root, 'log-straight'), { checkpointEvery: 0 }));
    const out = path.join(root, 'log-resume');
    const stop = { stop: false };
    await finetune(cfg(out, { checkpointEvery: 2 }), { stopSignal: stop, afterStep: (l) => void (l.step === 3 && (stop.stop = true)) });
    // As a kill -9 after step 3 was logged but before its checkpoint: the newest checkpoint is step 2.
    fs.rmSync(path.join(out, 'checkpoints', 'step-00000003'), { recursive: true });
    fs.writeFileSync(path.join(out, 'checkpoints', 'latest'), 'step-00000002\n');
    fs.appendFileSync(path.join(out, 'log.jsonl'), '{"step":4,"loss":1'); // a torn line
    const second = await finetune(cfg(out, { checkpointEvery: 2, resume: 'latest' }));
    expect(second.losses).toHaveLength(4);
    const rows = stepRows(out);
    expect(rows.map((x) => x.step)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(rows.map((x) => x.loss)).toEqual(straight.losses);
    const events = new RunLog(path.join(out, 'log.jsonl')).rows().filter((x) => x.event).map((x) => `${x.event}@${x.step}`);
    // The interrupt row (step 3) went with the rows past the checkpoint.
    expect(events).toEqual(['start@0', 'resume@2']);
  });

  test('a fresh run refuses a non-empty folder unless --overwrite; temp leftovers are removed with a note', async () => {
    const out = path.join(root, 'used');
    fs.mkdirSync(path.join(out, 'checkpoints', '.step-00000004.tmp-99999999'), { recursive: true });
    fs.writeFileSync(path.join(out, 'log.jsonl'), '{"step":1,"loss":2}\n');
    fs.writeFileSync(path.join(out, 'notes.txt'), 'mine');
    const lines: string[] = [];
    await expect(finetune(cfg(out), { print: (l) => lines.push(l) })).rejects.toThrow(/output folder .*used is not empty \(checkpoints, log\.jsonl, notes\.txt\); continue that run with --resume latest, choose another --output, or pass --overwrite/);
    expect(lines.join('\n')).toMatch(/removed 1 temporary file\(s\) left by an interrupted write: checkpoints\/\.step-00000004\.tmp-99999999/);
    expect(fs.existsSync(path.join(out, 'checkpoints', '.step-00000004.tmp-99999999'))).toBe(false);
    const r = await finetune(cfg(out, { overwrite: true, maxSteps: 1 }));
    expect(r.steps).toBe(1);
    expect(stepRows(out).map((x) => x.step)).toEqual([1]);
    expect(fs.readFileSync(path.join(out, 'notes.txt'), 'utf8')).toBe('mine');
    await expect(finetune(cfg(path.join('/proc', 'roundtrip-run')))).rejects.toThrow(/output \(--output\) \/proc\/roundtrip-run: \/proc is on the proc file system/);
  });

  test('image sizes default to the model configs (sample_size × VAE factor, vision image_size)', () => {
    const unet = JSON.parse(fs.readFileSync(path.join(sdDir, 'unet', 'config.json'), 'utf8'));
    const vae = JSON.parse(fs.readFileSync(path.join(sdDir, 'vae', 'config.json'), 'utf8'));
    const blip = JSON.parse(fs.readFileSync(path.join(blipDir, 'config.json'), 'utf8'));
    expect(modelImageSizes(blipDir, sdDir)).toEqual({ sdSize: unet.sample_size * 2 ** (vae.block_out_channels.length - 1), blipSize: blip.vision_config.image_size });
    const c = resolveConfig({ blip: blipDir, sd: sdDir, annotations: 'a.json', images: '.', output: 'o' });
    expect([c.sdSize, c.blipSize]).toEqual([0, 0]);
    expect(() => resolveConfig({ ...c, sdSize: 100000 })).toThrow(/'sdSize': 100000 is over the limit of 8192/);
  });
});

describe('bounded work and outputs', () => {
  const withLimit = async <T>(limit: string, fn: () => Promise<T> | T): Promise<T> => {
    const old = process.env.ROUNDTRIP_MEMORY_LIMIT;
    process.env.ROUNDTRIP_MEMORY_LIMIT = limit;
    try {
      return await fn();
    } finally {
      if (old === undefined) delete process.env.ROUNDTRIP_MEMORY_LIMIT;
      else process.env.ROUNDTRIP_MEMORY_LIMIT = old;
    }
  };

  test('sizes past their ceiling or the memory estimate fail before anything is allocated, naming the flag', async () => {
    const img = path.join(root, 'images', 'img0.png');
    await expect(captionImages({ images: [img], model: blipDir, k: 100000 })).rejects.toThrow(/--k: 100000 is over the limit of 1000 .*lower --k/);
    await expect(captionImages({ images: [img], model: blipDir, k: 2, numBeams: 5000 })).rejects.toThrow(/--num-beams: 5000 is over the limit of 1000/);
    await withLimit('1M', () => expect(captionImages({ images: [img], model: blipDir, k: 1000, numBeams: 1000 })).rejects.toThrow(/caption: --batch-size 1 × --num-beams 1000 × --max-length 20: needs about \d+ MB of memory, over the ceiling of 1 MB \(ROUNDTRIP_MEMORY_LIMIT\); lower --k\/--num-beams or --batch-size/));
    await withLimit('1M', () => expect(finetune(cfg(path.join(root, 'big'), { batchSize: 64 }))).rejects.toThrow(/finetune: one step of --batch-size 64 at --sd-size 16 \/ --blip-size 16: needs about .* over the ceiling .*lower --batch-size \(with --grad-accum/));
    const gen = { prompts: ['a red bus'], model: sdDir, steps: 1, guidance: 1, seed: 0, batch: 1, device: 'cpu' };
    await expect(runGenerate({ ...gen, out: path.join(root, 'gen'), height: 100000 })).rejects.toThrow(/--height: 100000 is over the limit of 8192/);
    await withLimit('1M', () => expect(runGenerate({ ...gen, out: path.join(root, 'gen'), batch: 64 })).rejects.toThrow(/generate: 1 prompt\(s\) × --batch 64 at .*: needs about .*give fewer prompts per call, or lower --batch/));
    expect(() => expectBounded('--steps', 5000, LIMITS.steps)).toThrow(/--steps: 5000 is over the limit of 1000/);
    await expect(rerankI2t2i({ out: path.join(root, 'rr-big'), blip: blipDir, sd: sdDir, images: path.join(root, 'images'), k: 5000 })).rejects.toThrow(/--k: 5000 is over the limit of 1000/);
    expect(memoryCeiling({ ROUNDTRIP_MEMORY_LIMIT: '2G' }).bytes).toBe(2 ** 31);
    expect(() => memoryCeiling({ ROUNDTRIP_MEMORY_LIMIT: 'lots' })).toThrow(/ROUNDTRIP_MEMORY_LIMIT: expected bytes or a size like 16G/);
    expect(() => checkMemory('x', 2 ** 40, 'lower it', { ROUNDTRIP_MEMORY_LIMIT: '1G' })).toThrow(/x: needs about 1024\.0 GB of memory, over the ceiling of 1\.0 GB/);
  });

  test('--out is checked before any work: special file systems, files in the way, no space', async () => {
    const gen = { prompts: ['a red bus'], model: sdDir, steps: 1, guidance: 1, seed: 0, batch: 1, device: 'cpu' };
    const started = Date.now();
    await expect(runGenerate({ ...gen, out: '/proc/roundtrip-out' })).rejects.toThrow(/--out \/proc\/roundtrip-out: \/proc is on the proc file system, which does not store files/);
    await expect(runGenerate({ ...gen, out: '/sys/kernel/roundtrip' })).rejects.toThrow(/on the sysfs file system/);
    expect(Date.now() - started).toBeLessThan(2000); // no model was loaded
    const file = path.join(root, 'a-file');
    fs.writeFileSync(file, 'x');
    expect(() => checkOutputDir(path.join(file, 'sub'))).toThrow(/a-file is a file, so no folder can be created under it/);
    expect(() => checkOutputDir(file)).toThrow(/exists and is not a folder/);
    expect(() => checkOutputDir(path.join(root, 'roomy'), { bytes: 1e18 })).toThrow(/about 1000000\.0 TB of output expected, .* free there; free some space/);
    expect(checkOutputDir(path.join(root, 'new', 'deep'))).toBe(path.join(root, 'new', 'deep'));
    expect(fs.readdirSync(path.join(root, 'new', 'deep'))).toEqual([]);
  });

  test('temp leftovers of dead processes are removed, those of live ones kept', () => {
    const d = path.join(root, 'leftovers');
    fs.mkdirSync(path.join(d, 'sub', '.report.tmp-99999998'), { recursive: true });
    fs.writeFileSync(path.join(d, '.results.jsonl.99999997.abcdef012345.tmp'), 'x');
    fs.writeFileSync(path.join(d, `.mine.json.${process.ppid}.abcdef012345.tmp`), 'x');
    fs.writeFileSync(path.join(d, 'kept.tmp'), 'x');
    const removed = cleanTempLeftovers(d).map((p) => path.relative(d, p)).sort();
    expect(removed).toEqual(['.results.jsonl.99999997.abcdef012345.tmp', 'sub/.report.tmp-99999998']);
    expect(fs.readdirSync(d).sort()).toEqual([`.mine.json.${process.ppid}.abcdef012345.tmp`, 'kept.tmp', 'sub']);
  });
});

describe('messages', () => {
  test('truncated images, corrupt safetensors, tensor-less checkpoints', async () => {
    const png = fs.readFileSync(path.join(root, 'images', 'img0.png'));
    const cut = path.join(root, 'cut.png');
    fs.writeFileSync(cut, png.subarray(0, 60));
    await expect(loadImage(cut)).rejects.toThrow(/cut\.png: cannot decode image: truncated or corrupt PNG data \(60 bytes; decoder: /);
    fs.writeFileSync(cut, Buffer.from('GIF87a but not really'));
    await expect(loadImage(cut)).rejects.toThrow(/cannot decode image: truncated or corrupt GIF data/);
    fs.writeFileSync(cut, Buffer.from('hello world, no image'));
    await expect(loadImage(cut)).rejects.toThrow(/not a supported image format \(the file starts with 68 65 6c 6c 6f 20 77 6f/);
    const st = path.join(root, 'broken.safetensors');
    fs.writeFileSync(st, Buffer.concat([Buffer.from([0xff, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{"w":{"dtype":"F32"')]));
    await expect(convertToSafetensors(st, path.join(root, 'o.safetensors'))).rejects.toThrow(/broken\.safetensors: corrupt safetensors file: the header length 255 runs past the end of the file \(27 bytes; truncated\?\)/);
    // A torch zip whose pickle holds {'epoch': 3} and no tensor: nothing is written.
    const pkl = Buffer.from([0x80, 0x02, 0x7d, 0x71, 0x00, 0x58, 0x05, 0, 0, 0, ...Buffer.from('epoch'), 0x71, 0x01, 0x4b, 0x03, 0x73, 0x2e]);
    const ckpt = path.join(root, 'no-tensors.pt');
    fs.writeFileSync(ckpt, storedZip([{ name: 'archive/data.pkl', data: pkl }, { name: 'archive/version', data: Buffer.from('3\n') }]));
    const target = path.join(root, 'no-tensors.safetensors');
    await expect(convertToSafetensors(ckpt, target)).rejects.toThrow(/no-tensors\.pt: holds no tensors \(only 1 other entry: epoch\); nothing to convert/);
    expect(fs.existsSync(target)).toBe(false);
  });

  test('a prompt over 77 CLIP tokens is truncated with a warning, not silently', async () => {
    const long = Array.from({ length: 90 }, (_, i) => `word${i}`).join(' ');
    const lines: string[] = [];
    const files = await runGenerate({ prompts: [long], model: sdDir, out: path.join(root, 'long'), steps: 1, guidance: 1, seed: 0, batch: 1, device: 'cpu' }, { write: (s: string) => void lines.push(s) });
    expect(files).toHaveLength(1);
    expect(lines.join('')).toMatch(/roundtrip: warning: PROMPT 1: the prompt has \d+ CLIP tokens; Stable Diffusion truncates it to 77/);
  });

  test('POSIX -- ends options: operands may start with a dash', () => {
    const { args, restore } = splitOperands(['caption', '--k', '2', '--', '-dash.png', '--k']);
    expect(args.slice(0, 3)).toEqual(['caption', '--k', '2']);
    expect(args).toHaveLength(5);
    const parsed: Record<string, unknown> = { images: args.slice(3), _: ['caption', ...args.slice(3)], k: 2 };
    restore(parsed);
    expect(parsed.images).toEqual(['-dash.png', '--k']);
    expect(parsed._).toEqual(['caption', '-dash.png', '--k']);
    expect(splitOperands(['info']).args).toEqual(['info']);
  });
});

const hasDist = fs.existsSync(path.join(ROOT, 'dist', 'cli', 'index.js'));
(hasDist ? describe : describe.skip)('CLI conventions (compiled)', () => {
  const cli = (...args: string[]) => spawnSync(process.execPath, [path.join(ROOT, 'bin', 'roundtrip.js'), ...args], { encoding: 'utf8', env: { ...process.env, ROUNDTRIP_QUIET: '1', COLUMNS: '200' } });

  test('every flag of every command has help text that states its default', async () => {
    const help = (cmd: string[]) =>
      new Promise<string>((resolve) => createParser([...cmd, '--help']).exitProcess(false).wrap(200).parse([...cmd, '--help'], {}, (_e: unknown, _a: unknown, out: string) => resolve(out)));
    const commandsOf = (out: string) =>
      (out.split('Commands:')[1] ?? '')
        .split(/\n\s*\n/)[0]
        .split('\n')
        .map((l) => /^\s{2}roundtrip ([^<[]+?)(?:\s{2,}|\s<|\s\[|$)/.exec(l)?.[1].trim().split(' '))
        .filter((c): c is string[] => !!c);
    const missing: string[] = [];
    const seen = new Set<string>();
    const walk = async (cmd: string[]) => {
      const out = await help(cmd);
      let flag: { name: string; text: string } | undefined;
      const flags: { name: string; text: string }[] = [];
      for (const line of out.split('\n')) {
        const m = /^\s+(?:-\w, )?(--[\w-]+)(?:, --[\w-]+)*(.*)$/.exec(line);
        if (m) flags.push((flag = { name: m[1], text: m[2] }));
        else if (flag && /^\s{10,}[^\s-]/.test(line)) flag.text += ' ' + line.trim();
        else flag = undefined;
      }
      for (const f of flags) {
        if (f.name === '--help' || f.name === '--version') continue;
        const described = f.text.replace(/\[(string|number|boolean|array|required)\]|\[choices:[^\]]*\]|\[default:[^\]]*\]/g, '').trim();
        if (!described || !/default|required/i.test(f.text)) missing.push(`${cmd.join(' ')} ${f.name}`);
      }
      for (const sub of commandsOf(out)) {
        if (seen.has(sub.join(' ')) || sub.length <= cmd.length) continue;
        seen.add(sub.join(' '));
        await walk(sub);
      }
    };
    await walk([]);
    expect(seen.size).toBeGreaterThan(15);
    expect(missing).toEqual([]);
  });

  test('errors exit 1 in one style; -- passes a dash-led operand; empty bridge input is an error', () => {
    const tok = cli('tokenize', '--tokenizer', path.join(ROOT, '..', 'shared', 'vocab', 'clip'), '--json', '--', '-a photo');
    expect(tok.status).toBe(0);
    expect(JSON.parse(tok.stdout).texts[0].text).toBe('-a photo');
    const cap = cli('caption', '--model', blipDir, '--', '-missing.png');
    expect(cap.status).toBe(1);
    expect(cap.stderr).toMatch(/^roundtrip: -missing\.png: cannot read image: file not found\n$/);
    const k = cli('caption', '--model', blipDir, '--k', '100000', '--', '-missing.png');
    expect(k.stderr).toMatch(/^roundtrip: --k: 100000 is over the limit of 1000/);
    const empty = path.join(root, 'empty.txt');
    fs.writeFileSync(empty, '\n\n');
    const bridge = cli('bridge', 'build', '--captions', empty, '--out', path.join(root, 'b.json'), '--blip-tokenizer', blipDir, '--clip-tokenizer', path.join(sdDir, 'tokenizer'));
    expect(bridge.status).toBe(1);
    expect(bridge.stderr).toMatch(/bridge build: no captions in .*empty\.txt \(\d+\); give caption files with at least one non-empty caption/);
    expect(fs.existsSync(path.join(root, 'b.json'))).toBe(false);
  });
});

/** A stored (uncompressed) zip archive, as torch.save writes. */
function storedZip(entries: { name: string; data: Buffer }[]): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name);
    const crc = zlib.crc32(e.data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(e.data.length, 18);
    local.writeUInt32LE(e.data.length, 22);
    local.writeUInt16LE(name.length, 26);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(20, 4);
    central.writeUInt16LE(20, 6);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(e.data.length, 20);
    central.writeUInt32LE(e.data.length, 24);
    central.writeUInt16LE(name.length, 28);
    central.writeUInt32LE(offset, 42);
    locals.push(local, name, e.data);
    centrals.push(central, name);
    offset += 30 + name.length + e.data.length;
  }
  const cd = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cd, end]);
}
