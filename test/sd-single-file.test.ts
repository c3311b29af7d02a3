/**
 * CompVis single-file checkpoints as pipelines (`generate --model model.ckpt`), `weights convert` to a diffusers
 * folder, `--weights` as .pth, and img2img (`--init-image --strength`), on the tiny LDM model of
 * ../shared/fixtures/checkpoints/sd-ldm.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { convertCommand } from '../lib/cli/commands/weights-files';
import { inferSingleFileConfigs, writeDiffusersFolder } from '../lib/models/sd/single-file';
import { DEFAULT_CLIP_TOKENIZER, StableDiffusionPipeline } from '../lib/models/sd/pipeline';
import { Scheduler } from '../lib/models/sd/schedulers';
import { disposeAll, noGrad, Tensor } from '../lib/runtime/tensor';
import { loadSafetensors, readSafetensorsHeader } from '../lib/weights/safetensors';
import { CHECKPOINTS } from './support/paths';

jest.setTimeout(240000);
const DIR = path.join(CHECKPOINTS, 'sd-ldm');
const readJson = (f: string) => JSON.parse(fs.readFileSync(path.join(DIR, f), 'utf8'));
let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-single-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const GEN = { steps: 3, guidance: 3, seed: 5, scheduler: 'ddim' };

test('configs inferred from the shapes equal the shipped ones where shapes decide', () => {
  const shapes = new Map(readSafetensorsHeader(path.join(DIR, 'model.safetensors')).tensors.map((t) => [t.name, t.shape] as [string, readonly number[]]));
  const c = inferSingleFileConfigs(shapes, 'model.safetensors');
  const unet = readJson('unet_config.json');
  for (const k of ['block_out_channels', 'layers_per_block', 'down_block_types', 'up_block_types', 'cross_attention_dim', 'in_channels', 'out_channels', 'use_linear_projection'])
    expect([k, c.unet[k]]).toEqual([k, unet[k]]);
  const vae = readJson('vae_config.json');
  for (const k of ['block_out_channels', 'layers_per_block', 'latent_channels', 'in_channels', 'out_channels', 'scaling_factor']) expect([k, c.vae[k]]).toEqual([k, vae[k]]);
  const text = readJson('text_encoder_config.json');
  for (const k of ['hidden_size', 'intermediate_size', 'num_hidden_layers', 'vocab_size', 'max_position_embeddings']) expect([k, c.textEncoder[k]]).toEqual([k, text[k]]);
  // What shapes cannot say comes from v1-inference.yaml (SD v1: 8 heads, 32 groups).
  expect(c.unet.attention_head_dim).toBe(8);
  expect(c.unet.norm_num_groups).toBe(32);
  expect(c.scheduler._class_name).toBe('PNDMScheduler');
});

test('.ckpt, single-file .safetensors and the converted diffusers folder give the same image; text encoder matches', async () => {
  const io = await loadSafetensors(path.join(DIR, 'io.safetensors'), { names: ['input.input_ids', 'output.text.last_hidden_state'] });
  const folder = path.join(tmp, 'diffusers');
  await writeDiffusersFolder(path.join(DIR, 'model.ckpt'), folder, { configs: DIR, tokenizer: DEFAULT_CLIP_TOKENIZER });
  for (const f of ['model_index.json', 'unet/config.json', 'unet/diffusion_pytorch_model.safetensors', 'vae/diffusion_pytorch_model.safetensors', 'text_encoder/model.safetensors', 'tokenizer/vocab.json', 'scheduler/scheduler_config.json'])
    expect(fs.existsSync(path.join(folder, f))).toBe(true);
  const images: Tensor[] = [];
  try {
    for (const model of [path.join(DIR, 'model.ckpt'), path.join(DIR, 'model.safetensors'), folder]) {
      const pipe = await StableDiffusionPipeline.load(model, { configs: DIR });
      try {
        await noGrad(async () => {
          const out = await pipe.textEncoder.call('text', { input_ids: io['input.input_ids'] });
          const ref = io['output.text.last_hidden_state'];
          const spec = readJson('case.json').tensors['output.text.last_hidden_state'];
          expect(out.last_hidden_state.compare(ref, spec.recommended_atol, spec.recommended_rtol ?? 1e-4).bad).toBe(0);
          disposeAll(out);
        });
        images.push((await pipe.generate(['a red cube'], GEN)).images);
      } finally {
        pipe.dispose();
      }
    }
    expect(images[0].shape).toEqual([1, 3, 128, 128]);
    expect(images[0].compare(images[1], 0, 0).bad).toBe(0);
    expect(images[0].compare(images[2], 0, 0).bad).toBe(0);
  } finally {
    disposeAll([images, io]);
  }
});

test('`weights convert model.ckpt DIR` writes a folder; a non-SD file is refused by name', async () => {
  const out = path.join(tmp, 'cli-folder');
  const write = jest.spyOn(process.stdout, 'write').mockImplementation(() => true);
  try {
    await (convertCommand.handler as any)({ input: path.join(DIR, 'model.safetensors'), output: out, configs: DIR, json: false });
  } finally {
    write.mockRestore();
  }
  expect(JSON.parse(fs.readFileSync(path.join(out, 'unet', 'config.json'), 'utf8')).norm_num_groups).toBe(8);
  await expect(writeDiffusersFolder(path.join(DIR, 'partial-unet-xattn-q.pth'), path.join(tmp, 'bad'), { tokenizer: DEFAULT_CLIP_TOKENIZER })).rejects.toThrow(
    /partial-unet-xattn-q\.pth: not a Stable Diffusion v1 single-file checkpoint/,
  );
});

test('--weights as .pth (the paper release\'s unet.pth layout) merges like its safetensors conversion', async () => {
  const pth = path.join(DIR, 'partial-unet-xattn-q.pth');
  const base = await StableDiffusionPipeline.load(path.join(DIR, 'model.safetensors'), { configs: DIR });
  const merged = await StableDiffusionPipeline.load(path.join(DIR, 'model.safetensors'), { configs: DIR, partial: { unet: [pth] } });
  try {
    const a = (await base.generate(['a red cube'], GEN)).images;
    const b = (await merged.generate(['a red cube'], GEN)).images;
    expect(a.compare(b, 1e-6, 0).bad).toBeGreaterThan(0);
    disposeAll([a, b]);
  } finally {
    base.dispose();
    merged.dispose();
  }
});

test('img2img: strength sets the start step; runs from the init image; deterministic per seed', async () => {
  const pipe = await StableDiffusionPipeline.load(path.join(DIR, 'model.ckpt'), { configs: DIR });
  try {
    const txt = await pipe.generate(['a red cube'], { ...GEN, steps: 4 });
    const [png] = await StableDiffusionPipeline.savePngs(txt, path.join(tmp, 'init'));
    const steps: number[][] = [];
    const run = async (strength: number) =>
      (await pipe.generate(['a red cube'], { ...GEN, steps: 4, initImage: png, strength, onStep: (d, t) => steps.push([d, t]) })).images;
    const half = await run(0.5);
    expect(steps.slice(-1)).toEqual([[2, 2]]); // 4 steps, strength 0.5: the last 2
    const again = await run(0.5);
    expect(half.compare(again, 0, 0).bad).toBe(0);
    const full = await run(1.0);
    expect(steps.slice(-1)).toEqual([[4, 4]]);
    expect(full.compare(half, 1e-4, 0).bad).toBeGreaterThan(0);
    await expect(pipe.generate(['a red cube'], { ...GEN, steps: 4, initImage: png, strength: 0.1 })).rejects.toThrow(/strength/);
    disposeAll([txt.images, half, again, full]);
  } finally {
    pipe.dispose();
  }
});

test('the native guided loop starts mid-schedule from init latents (img2img) like the per-step scheduler API', async () => {
  const pipe = await StableDiffusionPipeline.load(path.join(DIR, 'model.ckpt'), { configs: DIR });
  const sched = await Scheduler.create('dpm++', pipe.schedulerConfig);
  try {
    await noGrad(async () => {
      const cond = await pipe.encodePrompts(['a red cube']);
      const init = Tensor.randn([1, 4, 8, 8], 1);
      const noise = Tensor.randn([1, 4, 8, 8], 2);
      const native = await pipe.unet.model.call(
        'sample',
        { latents: noise, cond_embeds: cond, init_latents: init },
        { scheduler: 'dpmsolver', scheduler_config: pipe.schedulerConfig, steps: 6, strength: 0.5, guidance: 1 },
      );
      const s = await sched.setTimesteps(6, { strength: 0.5 });
      expect(s.beginIndex).toBe(3);
      const t0 = s.timesteps.select(0, s.beginIndex);
      const tb = Tensor.stack([t0]);
      let x = await sched.addNoise(init, noise, tb);
      for (let i = s.beginIndex; i < s.timesteps.shape[0]; i++) {
        const t = s.timesteps.select(0, i);
        const input = await sched.scaleModelInput(x, i);
        const eps = (await pipe.unet.forward(input, t, cond)).sample;
        const r = await sched.step(eps, i, x);
        disposeAll([t, input, eps, x, r.predOriginalSample]);
        x = r.prevSample;
      }
      expect(Array.from(native.timesteps.toTypedArray() as BigInt64Array, Number)).toEqual(Array.from(s.timesteps.toTypedArray() as BigInt64Array, Number));
      expect(native.latents.compare(x, 1e-5, 1e-5).bad).toBe(0);
      disposeAll([native, s.timesteps, s.sigmas, s.alphasCumprod, s.betas, t0, tb, x, cond, init, noise]);
    });
  } finally {
    sched.dispose();
    pipe.dispose();
  }
});
