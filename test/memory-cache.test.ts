/**
 * The addon's large-block cache (native/core/memory.cc) hands a reused block out as its last user left it, as
 * PyTorch's allocators do. That is only sound while no kernel reads memory it has not written: the native joint
 * step must give the same bits when every large block arrives filled with garbage (ROUNDTRIP_CACHE_PERTURB) and
 * every small one too (glibc's MALLOC_PERTURB_).
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { DATA } from './support/paths';
import { makeTinyBlip, makeTinySd } from './support/tiny-models';

jest.setTimeout(300000);

const CHILD = path.join(__dirname, 'support', 'reused-memory-child.js');
let root: string;
let blipDir: string;
let sdDir: string;

beforeAll(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'memory-cache-'));
  blipDir = makeTinyBlip(path.join(root, 'blip'));
  sdDir = makeTinySd(path.join(root, 'sd'), 'DDPMScheduler');
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

function run(env: Record<string, string>): { losses: number[]; weights: string; hits: number; misses: number } {
  const r = spawnSync(process.execPath, [CHILD, blipDir, sdDir, path.join(DATA, 'seed-release', 'reindex_clip_to_blip.json')], {
    encoding: 'utf8',
    env: { ...process.env, ROUNDTRIP_THREADS: '2', ...env },
    timeout: 240000,
  });
  if (r.status !== 0) throw new Error(`child failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

test('two joint steps give the same bits whatever reused (and fresh) memory holds', () => {
  const plain = run({});
  const perturbed = run({ ROUNDTRIP_CACHE_PERTURB: '113', MALLOC_PERTURB_: '113' });  // 0x71717171 = 1.2e30 as float32
  const negative = run({ ROUNDTRIP_CACHE_PERTURB: '0xf1', MALLOC_PERTURB_: '241' });  // -1.9e30
  // The steps did reuse cached blocks, so the fill was seen by kernels writing into them.
  expect(plain.hits).toBeGreaterThan(0);
  expect(perturbed.hits).toBe(plain.hits);
  expect(plain.losses.every(Number.isFinite)).toBe(true);
  expect(perturbed).toEqual(plain);
  expect(negative).toEqual(plain);
});

test('a bad ROUNDTRIP_CACHE_PERTURB fails the addon load, naming the variable', () => {
  const r = spawnSync(process.execPath, ['-e', "require('./dist/runtime/native').native()"], {
    cwd: path.join(__dirname, '..'), encoding: 'utf8', env: { ...process.env, ROUNDTRIP_CACHE_PERTURB: 'lots' },
  });
  expect(r.status).not.toBe(0);
  expect(r.stderr).not.toContain('could not be loaded');
  expect(r.stderr).toContain("roundtrip: ROUNDTRIP_CACHE_PERTURB: expected a byte value 0-255 (e.g. 113 or 0x71), got 'lots'");
});
