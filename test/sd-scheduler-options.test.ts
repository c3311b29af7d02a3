/**
 * Every scheduler option against diffusers 0.25.1 itself: test/fixtures/schedulers/ (written by
 * scripts/gen-scheduler-fixtures.py from diffusers' own scheduler classes; per-case tolerances from the float64
 * rerun recorded there). Each case checks the schedule (timesteps, σ, init_noise_sigma, img2img start index), the
 * first sample (txt2img: noise·init_noise_sigma; img2img: add_noise at the start timestep) and every step of the
 * rollout with the stand-in model 0.1·scale_model_input(x) + ε.
 */
import * as path from 'path';
import { readJsonFile } from '../lib/json';
import { NativeModel } from '../lib/runtime/model';
import { native } from '../lib/runtime/native';
import { Scheduler } from '../lib/models/sd/schedulers';
import { disposeAll, noGrad, Tensor } from '../lib/runtime/tensor';
import { loadSafetensors } from '../lib/weights/safetensors';
import { ROOT } from './support/paths';

jest.setTimeout(120000);
const DIR = path.join(ROOT, 'test', 'fixtures', 'schedulers');
const meta = readJsonFile(path.join(DIR, 'cases.json'), { what: 'scheduler fixtures', object: true }) as any;
const cases: any[] = meta.cases;
let io: Record<string, Tensor>;

beforeAll(async () => {
  io = await loadSafetensors(path.join(DIR, 'tensors.safetensors'));
});
afterAll(() => disposeAll(io));

function expectClose(what: string, mine: Tensor, ref: Tensor, atol: number, rtol: number): void {
  expect(mine.shape).toEqual(ref.shape);
  const c = mine.compare(ref, atol, rtol);
  if (c.bad) throw new Error(`${what}: ${c.bad}/${c.numel} values off (max |diff| ${c.maxAbs}, atol ${atol}, rtol ${rtol})`);
}

test('a scheduler is not a model kind: its own native entry, the old create() call still works', async () => {
  expect(native().modelKinds()).not.toContain('scheduler');
  await expect(NativeModel.create('unknown-kind', {})).rejects.toThrow(/unknown model kind/);
  const config = cases.find((c) => c.class === 'DDIMScheduler').config;
  for (const m of [await NativeModel.createScheduler('ddim', config), await NativeModel.create('scheduler', config, { scheduler: 'ddim' })]) {
    expect(m.kind).toBe('scheduler');
    const out = await m.call('set_timesteps', {}, { steps: 4 });
    expect(out.timesteps.shape).toEqual([4]);
    disposeAll(Object.values(out));
    m.dispose();
  }
  await expect(NativeModel.createScheduler('nope', {})).rejects.toThrow(/nope/);
});

test('fixtures cover every option the brief names', () => {
  const configs = cases.map((c) => JSON.stringify(c.config));
  for (const k of ['use_karras_sigmas', 'skip_prk_steps', 'thresholding', 'sample_max_value', 'dynamic_thresholding_ratio', 'timestep_spacing',
    'steps_offset', 'v_prediction', '"sample"', 'rescale_betas_zero_snr', '"solver_order":3', 'heun', 'lower_order_final', 'euler_at_final',
    'use_lu_lambdas', 'sde-dpmsolver', 'set_alpha_to_one', 'clip_sample', 'interpolation_type', 'timestep_type', 'lambda_min_clipped'])
    expect(configs.some((c) => c.includes(k))).toBe(true);
  const classes = new Set(cases.map((c) => c.class));
  expect(classes.size).toBe(8);
  expect(cases.filter((c) => c.strength !== null).length).toBeGreaterThanOrEqual(8);
  expect(meta.diffusers_commit).toBe('1909952826ffb0609f5df172ac7948c46422614d');
});

test.each(cases.map((c) => [c.name, c]))('%s matches diffusers', async (_name, c: any) => {
  const config = c.eta !== null ? { ...c.config, eta: c.eta } : c.config;
  const sched = await Scheduler.create(c.class, config);
  await noGrad(async () => {
    const sch = await sched.setTimesteps(c.steps, c.strength !== null ? { strength: c.strength } : {});
    const owned: Tensor[] = [sch.timesteps, sch.alphasCumprod, sch.betas];
    if (sch.sigmas) owned.push(sch.sigmas);
    try {
      // 1. The schedule.
      expect(sch.beginIndex).toBe(c.start_index);
      expect(sch.order).toBe(c.order);
      const ts = Array.from(sch.timesteps.toTypedArray() as ArrayLike<number | bigint>, Number);
      expect(ts.length).toBe(c.timesteps.length);
      if (c.timesteps_dtype === 'int64') expect(ts).toEqual(c.timesteps);
      else ts.forEach((t, k) => expect(Math.abs(t - c.timesteps[k])).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(c.timesteps[k]))));
      expect(Math.abs(sch.initNoiseSigma - c.init_noise_sigma)).toBeLessThanOrEqual(1e-6 * Math.abs(c.init_noise_sigma));
      if (io[`${c.name}.sigmas`]) expectClose('sigmas', sch.sigmas!, io[`${c.name}.sigmas`], 0, 1e-6);
      // 2. The first sample.
      let sample: Tensor;
      if (c.strength !== null) {
        const t = sch.timesteps.select(0, c.start_index);
        const tb = Tensor.stack([t, t]);
        sample = await sched.addNoise(io['common.x0'], io['common.noise'], tb);
        disposeAll([t, tb]);
      } else {
        sample = io['common.noise'].mul(sch.initNoiseSigma);
      }
      owned.push(sample);
      expectClose('first sample', sample, io[`${c.name}.first_sample`], c.atol, c.rtol);
      // 3. The rollout, replaying the noise diffusers drew.
      const refs = io[`${c.name}.prev_samples`];
      const noises = io[`${c.name}.noise`];
      expect(refs.shape[0]).toBe(c.num_rollout_steps);
      for (let k = 0; k < c.num_rollout_steps; k++) {
        const i = c.start_index + k;
        const input = await sched.scaleModelInput(sample, i);
        const scaled = input.mul(meta.stand_in_factor);
        const output = scaled.add(io['common.fixed_eps']);
        const noise = noises ? noises.select(0, k) : undefined;
        const r = await sched.step(output, i, sample, { noise });
        const ref = refs.select(0, k);
        try {
          expectClose(`step ${k} (index ${i})`, r.prevSample, ref, c.atol, c.rtol);
        } finally {
          disposeAll([input, scaled, output, noise, ref, r.predOriginalSample, r.noise]);
        }
        owned.push(r.prevSample);
        sample = r.prevSample;
      }
    } finally {
      disposeAll(owned);
    }
  }).finally(() => sched.dispose());
});

test('options refused by name', async () => {
  const bad: [string, Record<string, unknown>, RegExp][] = [
    ['DDPMScheduler', { variance_type: 'learned_range' }, /variance_type/],
    ['DDIMScheduler', { timestep_spacing: 'karras' }, /timestep_spacing/],
    ['EulerDiscreteScheduler', { interpolation_type: 'cubic' }, /interpolation_type/],
    ['EulerDiscreteScheduler', { timestep_type: 'weird' }, /timestep_type/],
    ['DPMSolverMultistepScheduler', { solver_order: 4 }, /solver_order/],
    ['DPMSolverMultistepScheduler', { variance_type: 'learned_range' }, /variance_type/],
    ['DPMSolverMultistepScheduler', { algorithm_type: 'unipc' }, /algorithm_type/],
    ['DPMSolverMultistepScheduler', { solver_type: 'rk4' }, /solver_type/],
    ['LMSDiscreteScheduler', { rescale_betas_zero_snr: true }, /rescale_betas_zero_snr/],
    ['PNDMScheduler', { prediction_type: 'sample' }, /prediction_type/],
    ['EulerAncestralDiscreteScheduler', { prediction_type: 'sample' }, /prediction_type/],
    ['HeunDiscreteScheduler', { beta_schedule: 'sigmoid' }, /beta_schedule/],
    ['DDIMScheduler', { use_karras_sigma: true }, /use_karras_sigma/],
  ];
  for (const [cls, cfg, re] of bad) await expect(Scheduler.create(cls, cfg)).rejects.toThrow(re);
  // A key of another diffusers scheduler is dropped as from_config drops it (SD's PNDM config runs Euler).
  const s = await Scheduler.create('euler', { skip_prk_steps: true, set_alpha_to_one: false, clip_sample: false });
  s.dispose();
  // PRK needs 4 steps; a begin index outside the schedule is refused.
  const p = await Scheduler.create('pndm', {});
  await expect(p.setTimesteps(3)).rejects.toThrow(/at least 4 steps/);
  await expect(p.setTimesteps(10, { begin: 99 })).rejects.toThrow(/begin index/);
  p.dispose();
});
