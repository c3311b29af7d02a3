/**
 * `roundtrip bench --size tiny --json` (through the built CLI, as CI and users run it): every registered row is
 * present and has numbers.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { benchRows } from '../lib/bench';
import { ROOT } from './support/paths';

jest.setTimeout(300000);

test('bench --size tiny --json reports every row with time, faults and peak RSS', () => {
  const cache = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-test-'));
  try {
    const r = spawnSync(process.execPath, [path.join(ROOT, 'scripts', 'bench.js'), '--size', 'tiny', '--json', '--reps', '1', '--warmup', '0', '--cache', cache, '--threads', '1'], {
      encoding: 'utf8',
      env: { ...process.env, ROUNDTRIP_QUIET: '1' },
    });
    if (r.status !== 0) console.log(r.stderr);
    expect(r.status).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.size).toBe('tiny');
    expect(report.threads).toBe(1);
    const names = report.rows.map((x: any) => x.name);
    const expected = benchRows().map((x) => x.name);
    expect(names).toEqual(expected);
    for (const name of ['load.sd', 'load.blip', 'unet.forward', 'unet.forward_backward', 'vae.encode', 'vae.decode', 'clip.text', 'blip.loss_forward_backward', 'blip.beam_search', 'sd.sampling', 'generate.process', 'generate.process.2x', 'generate.process.bf16', 'generate.process.2x.bf16', 'train.joint_step', 'train.sd_only_step', 'train.blip_only_step', 'train.joint_step.bf16', 'train.sd_only_step.bf16']) {
      expect(names).toContain(name);
    }
    for (const row of report.rows) {
      expect(row.error).toBeUndefined();
      expect(row.ms).toBeGreaterThan(0);
      expect(row.minMs).toBeLessThanOrEqual(row.maxMs);
      expect(row.minorFaults).toBeGreaterThanOrEqual(0);
      expect(row.peakRssMB).toBeGreaterThan(10);
    }
    for (const name of ['train.joint_step', 'train.sd_only_step', 'train.blip_only_step', 'train.joint_step.bf16', 'train.sd_only_step.bf16']) expect(report.rows.find((x: any) => x.name === name).extras.hostSyncs).toBe(1);
    const gen = report.rows.find((x: any) => x.name === 'generate.process');
    expect(gen.extras.readyMs).toBeGreaterThan(0);
    expect(gen.extras.readyMs).toBeLessThan(gen.extras.wallMs);
    const load = report.rows.find((x: any) => x.name === 'load.sd');
    expect(load.extras.mappedMB).toBeGreaterThan(0);
    // Unknown sizes are refused by name.
    const bad = spawnSync(process.execPath, [path.join(ROOT, 'scripts', 'bench.js'), '--size', 'huge'], { encoding: 'utf8' });
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toMatch(/size/);
  } finally {
    fs.rmSync(cache, { recursive: true, force: true });
  }
});
