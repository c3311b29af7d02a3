import * as path from 'path';
import '../lib/conformance/sd-schedulers';
import { conformanceNames, runConformanceCase } from '../lib/conformance/registry';
import { readSchedulerConfig, Scheduler } from '../lib/models/sd/schedulers';
import { disposeAll, Tensor } from '../lib/runtime/tensor';
import { loadSafetensors } from '../lib/weights/safetensors';
import { REFERENCE } from './support/paths';

jest.setTimeout(180000);
const DIR = path.join(REFERENCE, 'sd-schedulers');

test('sd-schedulers fixture: schedules, add_noise and rollouts of every run', async () => {
  expect(conformanceNames()).toContain('sd-schedulers');
  const results = (await runConformanceCase(DIR)).results;
  const bad = results.filter((r) => r.status !== 'ok');
  if (bad.length) console.log(bad);
  expect(bad).toEqual([]);
  expect(results.length).toBeGreaterThan(40);
});

test('scheduler configs from file, alphas_cumprod bit-exact, errors', async () => {
  const cfgFile = path.join(DIR, 'config.json');
  const all = readSchedulerConfig(cfgFile) as any;
  const source = all['source_scheduler_config (CompVis/stable-diffusion-v1-4 scheduler/scheduler_config.json)'];
  const io = await loadSafetensors(path.join(DIR, 'io.safetensors'), { names: ['common.alphas_cumprod'] });
  const s = await Scheduler.create(source._class_name, source);
  try {
    expect(s.name).toBe('pndm');
    const sch = await s.setTimesteps(4);
    expect(sch.alphasCumprod.compare(io['common.alphas_cumprod'], 0, 0).bad).toBe(0);
    expect(Array.from(sch.timesteps.toTypedArray() as BigInt64Array, Number)).toEqual([751, 501, 501, 251, 1]);
    disposeAll(sch);
    await expect(s.step(Tensor.zeros([1, 4, 2, 2]), 3, Tensor.zeros([1, 4, 2, 2]))).rejects.toThrow(/in order/);
    await expect(s.setTimesteps(0)).rejects.toThrow(/steps/);
  } finally {
    s.dispose();
    disposeAll(io);
  }
  await expect(Scheduler.create('unipc', source)).rejects.toThrow(/scheduler/);
  await expect(Scheduler.create('ddim', { ...source, beta_schedule: 'cosine-ish' })).rejects.toThrow(/beta_schedule/);
});
