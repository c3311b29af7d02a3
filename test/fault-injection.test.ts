/**
 * Faults from outside, on the compiled CLI (child processes): kill -9 at seeded random points during
 * finetune checkpointing and export, rerank, report and `weights pull` (≥ 20 trials in all; each resumed
 * run must end with exactly what an uninterrupted run gives, and no file in the output may be
 * half-written at any time), SIGINT/SIGTERM (checkpoint, no export, exit 130/143, a second signal quits
 * at once), and a full disk (`ulimit -f`) during a checkpoint and an export (clear error, previous state
 * intact). FAULT_SEED changes the kill points. Loopback only; every child is bounded in time.
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { finetune, resolveConfig } from '../lib/train/finetune';
import { resolveCheckpoint } from '../lib/train/checkpoint';
import { RunLog } from '../lib/train/runlog';
import { readSafetensorsHeader } from '../lib/weights/safetensors';
import { loadImage } from '../lib/image/decode';
import { FakeHub, fakeBytes, sha256Hex } from './support/fake-hub';
import { DATA, ROOT } from './support/paths';
import { makeTinyBlip, makeTinyClip, makeTinySd } from './support/tiny-models';
import { Rng } from '../lib/image/random';

jest.setTimeout(600000);

const SEED = Number(process.env.FAULT_SEED ?? 1919);
const hasDist = fs.existsSync(path.join(ROOT, 'dist', 'cli', 'index.js'));
const maybe = hasDist ? describe : describe.skip;

function rng(seed: number) {
  // lib/image/random.ts's mulberry32: the same sequence, one implementation.
  const g = new Rng(seed);
  const next = () => g.next();
  return { next, int: (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo)) };
}

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  killed: boolean;
}

/** Runs the CLI; kills it with SIGKILL when `killIf` turns true or at `killAtMs` (if given). Bounded by `limitMs`. */
function cli(args: string[], opts: { env?: NodeJS.ProcessEnv; killIf?: () => boolean; killAtMs?: number; limitMs?: number; shell?: string; onSpawn?: (c: ChildProcess) => void } = {}): Promise<Exit> {
  const env = { ...process.env, ROUNDTRIP_QUIET: '1', ...opts.env };
  const argv = [path.join(ROOT, 'bin', 'roundtrip.js'), ...args];
  const child = opts.shell
    ? spawn('bash', ['-c', `${opts.shell}; exec "$0" "$@"`, process.execPath, ...argv], { env })
    : spawn(process.execPath, argv, { env });
  opts.onSpawn?.(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  let killed = false;
  const started = Date.now();
  const limit = opts.limitMs ?? 120000;
  const timer = setInterval(() => {
    const elapsed = Date.now() - started;
    if (elapsed > limit || (opts.killAtMs !== undefined && elapsed >= opts.killAtMs) || opts.killIf?.()) {
      killed = elapsed <= limit;
      child.kill('SIGKILL');
      clearInterval(timer);
    }
  }, 5);
  return new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      clearInterval(timer);
      resolve({ code, signal, stdout, stderr, killed: killed && signal === 'SIGKILL' });
    });
  });
}

const TEMP = /^\..+(\.\d+\.[0-9a-f]+\.tmp|\.tmp-\d+|\.old-\d+)$|\.incomplete$/;

/** Every non-temporary file under `dir` is whole: JSON parses, JSONL lines parse, safetensors validate, images decode. */
async function assertIntact(dir: string): Promise<void> {
  const files: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (TEMP.test(e.name)) continue;
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else files.push(p);
    }
  };
  if (fs.existsSync(dir)) walk(dir);
  for (const f of files) {
    const text = () => fs.readFileSync(f, 'utf8');
    try {
      if (f.endsWith('.json')) JSON.parse(text());
      else if (f.endsWith('.jsonl')) {
        const t = text();
        if (t !== '' && !t.endsWith('\n')) throw new Error('torn last line');
        t.split('\n').filter(Boolean).forEach((l) => JSON.parse(l));
      } else if (f.endsWith('.safetensors')) readSafetensorsHeader(f);
      else if (f.endsWith('.png')) await loadImage(f);
      else if (f.endsWith('.svg')) expect(text().trimEnd().endsWith('</svg>')).toBe(true);
      else if (path.basename(f) === 'latest') resolveCheckpoint('latest', path.dirname(path.dirname(f)));
    } catch (err) {
      throw new Error(`half-written file after a kill: ${f}: ${(err as Error).message}`);
    }
  }
}

let root: string;
let blipDir: string;
let sdDir: string;
let clipDir: string;
const CAPTIONS = ['a dog on the grass', 'a red bus in the street', 'a cat sleeping on a sofa', 'a man riding a bike', 'two birds on a wire', 'a plate of food'];
const trials: Record<string, number> = {};

beforeAll(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'faults-'));
  blipDir = makeTinyBlip(path.join(root, 'blip'));
  sdDir = makeTinySd(path.join(root, 'sd'), 'DDPMScheduler');
  clipDir = makeTinyClip(path.join(root, 'clip'));
  fs.mkdirSync(path.join(root, 'images'));
  for (let i = 0; i < CAPTIONS.length; i++) {
    const raw = Buffer.alloc(40 * 36 * 3);
    for (let k = 0; k < raw.length; k++) raw[k] = (k * (7 + i) + i * 31) % 251;
    await sharp(raw, { raw: { width: 40, height: 36, channels: 3 } }).png().toFile(path.join(root, 'images', `img${i}.png`));
  }
  fs.writeFileSync(path.join(root, 'train.json'), JSON.stringify(CAPTIONS.map((caption, i) => ({ image: `img${i}.png`, caption, image_id: String(i) }))));
});

afterAll(() => {
  fs.rmSync(root, { recursive: true, force: true });
  if (process.env.FAULT_PRINT) process.stderr.write(`fault injection: ${JSON.stringify(trials)}\n`);
});

maybe('finetune', () => {
  const flags = (out: string) => [
    'finetune', '--blip', blipDir, '--sd', sdDir, '--bridge', path.join(DATA, 'seed-release', 'reindex_clip_to_blip.json'), '--annotations', path.join(root, 'train.json'),
    '--images', path.join(root, 'images'), '--output', out, '--sd-size', '16', '--blip-size', '16', '--batch-size', '2', '--epochs', '2', '--prefetch', '2', '--keep-last', '2',
  ];
  let reference: { losses: number[]; export: Record<string, Buffer> };

  beforeAll(async () => {
    // The uninterrupted run, as a fresh process like every run it is compared with.
    const out = path.join(root, 'ft-reference');
    expect((await cli([...flags(out), '--checkpoint-every', '0'])).code).toBe(0);
    const losses = new RunLog(path.join(out, 'log.jsonl')).stepRows<{ loss: number }>().map((r) => r.loss);
    reference = { losses, export: { blip: fs.readFileSync(path.join(out, 'export', 'blip.safetensors')), unet: fs.readFileSync(path.join(out, 'export', 'unet.safetensors')) } };
  });

  const expectReference = (out: string) => {
    const rows = new RunLog(path.join(out, 'log.jsonl')).stepRows<{ step: number; loss: number }>();
    expect(rows.map((r) => r.step)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(rows.map((r) => r.loss)).toEqual(reference.losses);
    for (const m of ['blip', 'unet']) expect(fs.readFileSync(path.join(out, 'export', `${m}.safetensors`)).equals(reference.export[m])).toBe(true);
  };

  test('kill -9 during checkpoints, export and at random points; each resume ends bit-identical to the straight run', async () => {
    const out = path.join(root, 'ft-kill');
    const r = rng(SEED);
    const ckDir = path.join(out, 'checkpoints');
    const modes = ['checkpoint', 'random', 'checkpoint', 'random', 'export'] as const;
    const latestFile = path.join(ckDir, 'latest');
    const latestStep = () => {
      try {
        return Number(/step-(\d+)/.exec(fs.readFileSync(latestFile, 'utf8'))![1]);
      } catch {
        return 0;
      }
    };
    const rowsPast = (s: number) => (fs.existsSync(path.join(out, 'log.jsonl')) ? new RunLog(path.join(out, 'log.jsonl')).stepRows<{ step: number }>().filter((x) => x.step > s).length : 0);
    let kills = 0;
    for (let i = 0; i < 12; i++) {
      const mode = modes[kills % modes.length];
      const resume = fs.existsSync(latestFile) ? ['--resume', 'latest'] : ['--overwrite'];
      const base = latestStep();
      // checkpoint: while the (d+1)-th checkpoint of this run is being written (its .tmp folder exists), so the
      // chain resumes from 0, 1 or more steps further each time; random: a seeded delay after this run's first step.
      const d = r.int(0, 2);
      const extra = r.int(0, 1500);
      let armed = 0;
      const inCheckpoint = () => latestStep() >= base + d && fs.existsSync(ckDir) && fs.readdirSync(ckDir).some((n) => /\.tmp-\d+$/.test(n));
      const atRandom = () => {
        if (!armed && rowsPast(base) >= 1) armed = Date.now();
        return armed > 0 && Date.now() - armed >= extra;
      };
      const inExport = () => fs.existsSync(path.join(out, 'export'));
      const e = await cli([...flags(out), '--checkpoint-every', '1', ...resume], { killIf: mode === 'checkpoint' ? inCheckpoint : mode === 'export' ? inExport : atRandom });
      await assertIntact(out);
      if (process.env.FAULT_PRINT) process.stderr.write(`finetune trial ${i}: ${mode} ${resume.join(' ')} killed=${e.killed} latest=${fs.existsSync(path.join(ckDir, 'latest')) ? fs.readFileSync(path.join(ckDir, 'latest'), 'utf8').trim() : '-'} rows=${JSON.stringify(new RunLog(path.join(out, 'log.jsonl')).rows().map((x) => x.event ?? x.step))}\n`);
      if (!e.killed) {
        expect([e.code, e.stderr]).toEqual([0, expect.not.stringMatching(/roundtrip: /)]);
        if (kills >= 5) break;
        // Finished before the kill point: start over to place the remaining kills.
        fs.rmSync(out, { recursive: true });
        continue;
      }
      kills++;
    }
    trials['finetune kill -9'] = kills;
    expect(kills).toBeGreaterThanOrEqual(5);
    const done = await cli([...flags(out), '--checkpoint-every', '1', ...(fs.existsSync(path.join(ckDir, 'latest')) ? ['--resume', 'latest'] : ['--overwrite'])]);
    expect(done.code).toBe(0);
    await assertIntact(out);
    expectReference(out);
  });

  test('SIGINT: finishes the step, checkpoints, no export, exit 130 with the resume command; the resume is bit-identical', async () => {
    const out = path.join(root, 'ft-sigint');
    const log = path.join(out, 'log.jsonl');
    let sent = false;
    const e = await cli([...flags(out), '--checkpoint-every', '0'], {
      onSpawn: (child) => {
        const t = setInterval(() => {
          if (!sent && fs.existsSync(log) && new RunLog(log).stepRows().length >= 2) {
            sent = true;
            child.kill('SIGINT');
            clearInterval(t);
          }
        }, 20);
        child.on('exit', () => clearInterval(t));
      },
    });
    expect(e.code).toBe(130);
    const m = /roundtrip: finetune interrupted at step (\d+); resume with: roundtrip (.*)\n/.exec(e.stderr);
    expect(m).not.toBeNull();
    const step = Number(m![1]);
    expect(step).toBeGreaterThanOrEqual(2);
    expect(step).toBeLessThan(6);
    expect(resolveCheckpoint('latest', out)).toBe(path.join(out, 'checkpoints', `step-${String(step).padStart(8, '0')}`));
    expect(fs.existsSync(path.join(out, 'export'))).toBe(false);
    expect(JSON.parse(e.stdout).interrupted).toBe(true);
    // The printed command, as a user would paste it.
    const args = m![2].split(' ').map((a) => a.replace(/^'(.*)'$/, '$1'));
    expect(args.slice(-2)).toEqual(['--resume', 'latest']);
    const resumed = await cli(args);
    expect(resumed.code).toBe(0);
    expectReference(out);
  });

  test('SIGTERM twice: the second quits at once (143) and leaves nothing half-written', async () => {
    const out = path.join(root, 'ft-sigterm');
    const log = path.join(out, 'log.jsonl');
    // No periodic checkpoints: the signals land while the next step runs.
    const e = await cli([...flags(out), '--checkpoint-every', '0'], {
      onSpawn: (child) => {
        const t = setInterval(() => {
          if (fs.existsSync(log) && new RunLog(log).stepRows().length >= 1) {
            clearInterval(t);
            child.kill('SIGTERM');
            setTimeout(() => child.kill('SIGTERM'), 30);
          }
        }, 10);
        child.on('exit', () => clearInterval(t));
      },
    });
    expect(e.code).toBe(143);
    expect(e.stderr).toMatch(/finetune: SIGTERM: finishing step \d+/);
    expect(e.stderr).toMatch(/second SIGTERM; quitting now/);
    await assertIntact(out);
    expect(fs.existsSync(path.join(out, 'export'))).toBe(false);
  });

  test('disk full (ulimit -f) during a checkpoint and during the export: clear error, previous state intact', async () => {
    const out = path.join(root, 'ft-full');
    expect((await cli([...flags(out), '--checkpoint-every', '1', '--max-steps', '2'])).code).toBe(0);
    const snapshot = (dir: string) => Object.fromEntries(fs.readdirSync(dir).map((n) => [n, fs.readFileSync(path.join(dir, n))]));
    const step2 = path.join(out, 'checkpoints', 'step-00000002');
    const before = snapshot(step2);
    const exportBefore = snapshot(path.join(out, 'export'));
    // 4 kB per file: the log fits, a checkpoint's tensors do not.
    const full = await cli([...flags(out), '--checkpoint-every', '1', '--max-steps', '4', '--resume', 'latest'], { shell: 'ulimit -f 4' });
    expect(full.code).toBe(1);
    expect(full.stderr).toMatch(/checkpoint .*step-00000003: not written: the file size limit was reached \(ulimit -f\); the previous checkpoint .*step-00000002 is intact \(resume with --resume latest once there is room\)/);
    expect(resolveCheckpoint('latest', out)).toBe(step2);
    expect(snapshot(step2)).toEqual(before);
    expect(fs.readdirSync(path.join(out, 'checkpoints')).filter((n) => n.includes('.tmp'))).toEqual([]);
    // Resuming the finished run only re-exports: under the limit the export fails and the old one stays.
    const exp = await cli([...flags(out), '--checkpoint-every', '1', '--max-steps', '2', '--resume', 'latest'], { shell: 'ulimit -f 4' });
    expect(exp.code).toBe(1);
    expect(exp.stderr).toMatch(/finetune: export to .*export failed: the file size limit was reached \(ulimit -f\); the trained state is in .*step-00000002/);
    expect(snapshot(path.join(out, 'export'))).toEqual(exportBefore);
    await assertIntact(out);
  });
});

maybe('rerank and report', () => {
  const rerankArgs = (out: string) => ['rerank', 'i2t2i', '--out', out, '--blip', blipDir, '--sd', sdDir, '--clip', clipDir, '--images', path.join(root, 'images'), '--limit', '4', '--k', '2', '--steps', '2', '--size', '16', '--no-report', '--no-progress'];
  const records = (out: string) =>
    fs.readFileSync(path.join(out, 'results.jsonl'), 'utf8').trim().split('\n').map((l) => {
      const { seconds: _s, ...rest } = JSON.parse(l);
      return rest;
    });

  test('kill -9 during rerank and report; reruns resume and end with the uninterrupted results', async () => {
    const straight = path.join(root, 'rr-straight');
    expect((await cli(rerankArgs(straight))).code).toBe(0);
    const out = path.join(root, 'rr-kill');
    const r = rng(SEED + 1);
    const lines = () => (fs.existsSync(path.join(out, 'results.jsonl')) ? fs.readFileSync(path.join(out, 'results.jsonl'), 'utf8').split('\n').length - 1 : 0);
    const cacheWrite = () => fs.existsSync(path.join(out, 'cache')) && fs.readdirSync(path.join(out, 'cache')).some((n) => n.endsWith('.tmp'));
    let kills = 0;
    // A run that finished before its kill is removed so the next trial starts over: until 3 kills, at most 12 runs.
    for (let i = 0; i < 12 && kills < 3; i++) {
      // Alternately: while a cached image is being written, or at a seeded point after the next record.
      const start = lines();
      let seen = 0;
      const e = await cli(rerankArgs(out), { killIf: kills % 2 === 0 ? cacheWrite : () => lines() > start && ++seen > r.int(0, 40) });
      await assertIntact(out);
      if (e.killed) kills++;
      else fs.rmSync(out, { recursive: true, force: true });
    }
    trials['rerank kill -9'] = kills;
    expect((await cli(rerankArgs(out))).code).toBe(0);
    expect(records(out)).toEqual(records(straight));
    for (const f of fs.readdirSync(path.join(straight, 'cache'))) expect(fs.readFileSync(path.join(out, 'cache', f)).equals(fs.readFileSync(path.join(straight, 'cache', f)))).toBe(true);
    expect(kills).toBeGreaterThanOrEqual(2);

    // report: killed at random points while writing; a rerun gives the files of a clean build.
    const report = path.join(straight, 'report');
    let reportKills = 0;
    const reportWrite = () => fs.existsSync(report) && fs.readdirSync(report).some((n) => TEMP.test(n));
    // A fast machine finishes some reports before the kill lands: try until 6 kills, at most 20 runs.
    for (let i = 0; i < 20 && reportKills < 6; i++) {
      const e = await cli(['report', straight], i % 2 ? { killAtMs: r.int(150, 1200) } : { killIf: reportWrite });
      await assertIntact(report);
      if (e.killed) reportKills++;
    }
    trials['report kill -9'] = reportKills;
    expect((await cli(['report', straight])).code).toBe(0);
    const built = Object.fromEntries(fs.readdirSync(report).map((n) => [n, fs.readFileSync(path.join(report, n), 'utf8')]));
    fs.rmSync(report, { recursive: true });
    expect((await cli(['report', straight])).code).toBe(0);
    for (const [n, text] of Object.entries(built)) expect([n, fs.readFileSync(path.join(report, n), 'utf8')]).toEqual([n, text]);
    expect(reportKills).toBeGreaterThanOrEqual(3);
  });
});

/** A valid safetensors file holding `body` as one U8 tensor (a complete download must parse as what it claims). */
function safetensorsBytes(body: Buffer): Buffer {
  let header = JSON.stringify({ x: { dtype: 'U8', shape: [body.length], data_offsets: [0, body.length] } });
  header += ' '.repeat((8 - (header.length % 8)) % 8);
  const size = Buffer.alloc(8);
  size.writeBigUInt64LE(BigInt(header.length));
  return Buffer.concat([size, Buffer.from(header), body]);
}

maybe('weights pull', () => {
  let hub: FakeHub;
  beforeAll(async () => {
    hub = await FakeHub.start();
  });
  afterAll(async () => hub.close());

  test('kill -9 during downloads; the next pull resumes and the files verify', async () => {
    const files = [
      { path: 'config.json', content: Buffer.from(JSON.stringify({ model_type: 'blip' })) },
      { path: 'model.safetensors', content: safetensorsBytes(fakeBytes(6_000_000, 1)), lfs: true },
      { path: 'vocab.txt', content: Buffer.from('[PAD]\n[UNK]\nhello\n') },
    ];
    hub.addRepo({ id: 'org/faulty', files });
    const home = path.join(root, 'hub-home');
    const env = { HOME: home, ROUNDTRIP_HOME: path.join(home, 'rt'), HF_ENDPOINT: hub.hubUrl };
    const r = rng(SEED + 2);
    let kills = 0;
    const dir = path.join(home, 'rt', 'models', 'org--faulty');
    const downloading = () => fs.existsSync(dir) && JSON.stringify(fs.readdirSync(dir, { recursive: true })).includes('.incomplete');
    // A pull that finished before its kill is removed so the next trial downloads again: until 6 kills, at most 20.
    for (let i = 0; i < 20 && kills < 6; i++) {
      const e = await cli(['weights', 'pull', 'org/faulty'], { env, ...(i % 3 === 2 ? { killAtMs: r.int(200, 1500) } : { killIf: downloading }) });
      await assertIntact(path.join(home, 'rt'));
      if (e.killed) kills++;
      else {
        expect(e.code).toBe(0);
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }
    trials['weights pull kill -9'] = kills;
    const done = await cli(['weights', 'pull', 'org/faulty'], { env });
    expect(done.code).toBe(0);
    for (const f of files) expect(sha256Hex(fs.readFileSync(path.join(dir, f.path)))).toBe(sha256Hex(f.content));
    expect(kills).toBeGreaterThanOrEqual(3);
    expect(Object.values(trials).reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(hasDist && Object.keys(trials).length === 4 ? 20 : 0);
  });
});
