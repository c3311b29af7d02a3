/**
 * The one native SD sampling loop (native/models/sd_sampling.cc) that StableDiffusionPipeline.generate,
 * reranking and conformance use: every scheduler fixture through the loop, generate as one native call equal to
 * the step-by-step composition, progress once per step in order, abort within one step, VAE slicing.
 */
import * as path from 'path';
import { NativeModel } from '../lib/runtime/model';
import { StableDiffusionPipeline } from '../lib/models/sd/pipeline';
import { Scheduler, schedulerName } from '../lib/models/sd/schedulers';
import { VAE } from '../lib/models/sd/vae';
import { Tensor, disposeAll, liveTensors, noGrad } from '../lib/runtime/tensor';
import { loadSafetensors } from '../lib/weights/safetensors';
import { readJsonFile } from '../lib/json';
import { REFERENCE, ROOT } from './support/paths';
import { tolerance } from './support/tolerance';

jest.setTimeout(120000);

const SCHED_DIR = path.join(REFERENCE, 'sd-schedulers');
const WORLD_SD = path.join(ROOT, 'weights', 'world-sd');

async function errorName(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    return (err as Error).name;
  }
  return 'resolved';
}

function expectClose(mine: Tensor, ref: Tensor, dir: string, name: string): void {
  const [atol, rtol] = tolerance(dir, name);
  expect(mine.shape).toEqual(ref.shape);
  const c = mine.compare(ref, atol, rtol);
  if (c.bad) console.log(name, c);
  expect(c.bad).toBe(0);
}

test('the native loop reproduces every scheduler fixture rollout (stand-in model)', async () => {
  const caseJson = readJsonFile(path.join(SCHED_DIR, 'case.json')) as any;
  const config = readJsonFile(path.join(SCHED_DIR, 'config.json')) as any;
  // "model_output_i = 0.1 * model_input_i + fixed_eps": the factor as the case states it.
  const a = Number(/=\s*([-+]?[0-9.eE+-]+)\s*\*/.exec(caseJson.stand_in_model)![1]);
  const io = await loadSafetensors(path.join(SCHED_DIR, 'io.safetensors'));
  const runs = Object.keys(caseJson.scheduler_runs);
  expect(runs.length).toBeGreaterThanOrEqual(7);
  try {
    for (const run of runs) {
      const spec = config.schedulers[run];
      const kind = schedulerName(spec.class);
      const sched = await NativeModel.createScheduler(kind === 'dpm++' ? 'dpmsolver' : kind, spec.config);
      const out = await sched.call(
        'sample',
        { latents: io['common.rollout.initial_noise'], fixed_eps: io['common.rollout.fixed_eps'], variance_noise: io[`${run}.rollout.variance_noise`] },
        { a, steps: spec.num_inference_steps, record: true },
      );
      const n = out.timesteps.shape[0];
      const first = out.latents_steps.select(0, 0);
      const rest = out.latents_steps.narrow(0, 1, n);
      expectClose(first, io[`${run}.rollout.initial_sample`], SCHED_DIR, `${run}.rollout.initial_sample`);
      expectClose(out.model_input, io[`${run}.rollout.model_input`], SCHED_DIR, `${run}.rollout.model_input`);
      expectClose(out.noise_pred, io[`${run}.rollout.model_output`], SCHED_DIR, `${run}.rollout.model_output`);
      expectClose(rest, io[`${run}.rollout.prev_sample`], SCHED_DIR, `${run}.rollout.prev_sample`);
      disposeAll([out, first, rest]);
      sched.dispose();
    }
  } finally {
    disposeAll(io);
  }
});

describe('pipeline on the built-in world-sd weights', () => {
  let pipe: StableDiffusionPipeline;
  beforeAll(async () => {
    pipe = await StableDiffusionPipeline.load(WORLD_SD);
  });
  afterAll(() => pipe?.dispose());

  test('generate (one native call) equals the step-by-step composition; progress once per step, in order', async () => {
    const steps: [number, number][] = [];
    let resolved = false;
    const r = await pipe.generate(['a red circle', 'a blue square'], {
      scheduler: 'dpm++',
      steps: 4,
      seed: 11,
      negative: 'green',
      onStep: (done, total) => {
        expect(resolved).toBe(false);
        steps.push([done, total]);
      },
    });
    resolved = true;
    expect(steps).toEqual([
      [1, 4],
      [2, 4],
      [3, 4],
      [4, 4],
    ]);
    // The same work as separate calls: text, per-step guided ε + scheduler step, VAE decode.
    const reference = await noGrad(async () => {
      const cond = await pipe.encodePrompts(['a red circle', 'a blue square']);
      const uncond = await pipe.encodePrompts(['green', 'green']);
      const noises = [11, 12].map((s) => Tensor.randn([1, 4, 16, 16], s));
      let x0 = Tensor.cat(noises, 0);
      const sched = await Scheduler.create('dpm++', pipe.schedulerConfig);
      const sch = await sched.setTimesteps(4, { seed: 11 });
      let x = x0.mul(sch.initNoiseSigma);
      for (let i = 0; i < sch.timesteps.shape[0]; i++) {
        const t = sch.timesteps.select(0, i);
        const input = await sched.scaleModelInput(x, i);
        const eps = await pipe.unet.guidedEps(input, t, cond, uncond, 7.5);
        const next = (await sched.step(eps, i, x)).prevSample;
        disposeAll([t, input, eps, x]);
        x = next;
      }
      const image = (await pipe.vae.decode(x, { scaled: true })).image;
      sched.dispose();
      disposeAll([cond, uncond, noises, x0, x, sch]);
      return image;
    });
    expect(r.images.shape).toEqual([2, 3, 16 * pipe.vaeFactor, 16 * pipe.vaeFactor]);
    expect(r.images.compare(reference, 0, 0).bad).toBe(0);
    disposeAll([r.images, reference]);
  });

  test('abort stops within one step, rejects with the signal reason and frees every tensor', async () => {
    const before = liveTensors();
    const ac = new AbortController();
    const seen: number[] = [];
    const run = pipe.generate(['a cat'], {
      scheduler: 'euler',
      steps: 20,
      onStep: (done) => {
        seen.push(done);
        if (done === 2) ac.abort();
      },
      signal: ac.signal,
    });
    expect(await errorName(run)).toBe('AbortError');
    // Aborted during the callback of step 2: step 3 may already be running, no later one starts.
    expect(seen[0]).toBe(1);
    expect(seen.length).toBeLessThanOrEqual(3);
    expect(liveTensors()).toBe(before);
    // An already aborted signal: nothing runs.
    expect(await errorName(pipe.generate(['a cat'], { steps: 2, signal: ac.signal }))).toBe('AbortError');
    // A callback that throws stops the loop and rejects with its error.
    let calls = 0;
    await expect(
      pipe.generate(['a cat'], {
        steps: 10,
        onStep: () => {
          calls++;
          throw new Error('stop here');
        },
      }),
    ).rejects.toThrow(/stop here/);
    expect(calls).toBe(1);
    expect(liveTensors()).toBe(before);
  });
});

test('VAE slicing decodes one image at a time with the same pixels (sd-vae fixture)', async () => {
  const dir = path.join(REFERENCE, 'sd-vae');
  const vae = await VAE.create(readJsonFile(path.join(dir, 'config.json')));
  const io = await loadSafetensors(path.join(dir, 'io.safetensors'), { names: ['input.z', 'output.decoded'] });
  try {
    await vae.model.loadWeights([path.join(dir, 'model.safetensors')]);
    await noGrad(async () => {
      const whole = (await vae.decode(io['input.z'])).image;
      const sliced = (await vae.decode(io['input.z'], { slicing: true })).image;
      expect(io['input.z'].shape[0]).toBeGreaterThan(1);
      expectClose(whole, io['output.decoded'], dir, 'output.decoded');
      expectClose(sliced, io['output.decoded'], dir, 'output.decoded');
      disposeAll([whole, sliced]);
    });
    await expect(vae.decode(io['input.z'], { slicing: 'yes' as any })).rejects.toThrow(/slicing/);
  } finally {
    vae.dispose();
    disposeAll(io);
  }
});

test('VAE tiling: one tile decodes exactly as the whole; larger latents follow diffusers tiled_decode', async () => {
  const dir = path.join(REFERENCE, 'sd-vae');
  const config = readJsonFile(path.join(dir, 'config.json')) as any;
  const vae = await VAE.create(config);
  const io = await loadSafetensors(path.join(dir, 'io.safetensors'), { names: ['input.z'] });
  try {
    await vae.model.loadWeights([path.join(dir, 'model.safetensors')]);
    await noGrad(async () => {
      // input.z is exactly one tile (sample_size / 2^(levels-1) latents): no tiling happens.
      const whole = (await vae.decode(io['input.z'])).image;
      const tiled = (await vae.decode(io['input.z'], { tiling: true })).image;
      expect(tiled.compare(whole, 0, 0).bad).toBe(0);
      disposeAll([whole, tiled]);
      // 5×7 latents: 2×3 overlapping tiles, blended as diffusers' blend_v / blend_h, cut to 3/4 of a tile.
      const z = Tensor.randn([1, 4, 5, 7], 21);
      const mine = (await vae.decode(z, { tiling: true })).image;
      const tileLatent = config.sample_size / 2 ** (config.block_out_channels.length - 1);
      const overlap = Math.floor(tileLatent * 0.75);
      const extent = Math.floor(config.sample_size * 0.25);
      const limit = config.sample_size - extent;
      const rows: Tensor[][] = [];
      for (let i = 0; i < 5; i += overlap) {
        const row: Tensor[] = [];
        for (let j = 0; j < 7; j += overlap) {
          const crop = z.narrow(2, i, Math.min(tileLatent, 5 - i)).narrow(3, j, Math.min(tileLatent, 7 - j)).clone();
          row.push((await vae.decode(crop)).image);
          crop.dispose();
        }
        rows.push(row);
      }
      const blend = (a: Tensor, b: Tensor, dim: number): Tensor => {
        const e = Math.min(a.shape[dim], b.shape[dim], extent);
        const parts: Tensor[] = [];
        for (let y = 0; y < e; y++) {
          const f = y / e;
          parts.push(a.narrow(dim, a.shape[dim] - e + y, 1).mul(1 - f).add(b.narrow(dim, y, 1).mul(f)));
        }
        if (b.shape[dim] > e) parts.push(b.narrow(dim, e, b.shape[dim] - e));
        return Tensor.cat(parts, dim);
      };
      const outRows: Tensor[] = [];
      for (let i = 0; i < rows.length; i++) {
        const cut: Tensor[] = [];
        for (let j = 0; j < rows[i].length; j++) {
          let tile = rows[i][j];
          if (i > 0) tile = blend(rows[i - 1][j], tile, 2);
          if (j > 0) tile = blend(rows[i][j - 1], tile, 3);
          rows[i][j] = tile;
          cut.push(tile.narrow(2, 0, Math.min(limit, tile.shape[2])).narrow(3, 0, Math.min(limit, tile.shape[3])));
        }
        outRows.push(Tensor.cat(cut, 3));
      }
      const reference = Tensor.cat(outRows, 2);
      expect(mine.shape).toEqual([1, 3, 40, 56]);
      expect(mine.compare(reference, 1e-6, 0).bad).toBe(0);
    });
  } finally {
    vae.dispose();
    disposeAll(io);
  }
});
