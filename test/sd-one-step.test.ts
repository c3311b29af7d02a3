import * as fs from 'fs';
import * as path from 'path';
import { Scheduler } from '../lib/models/sd/schedulers';
import { UNet } from '../lib/models/sd/unet';
import { disposeAll, noGrad, Tensor } from '../lib/runtime/tensor';
import { loadSafetensors } from '../lib/weights/safetensors';
import '../lib/conformance/sd-one-step';
import { runConformanceCase } from '../lib/conformance/registry';
import { REFERENCE } from './support/paths';

jest.setTimeout(300000);

test('sd-one-step fixture: every output within its case.json tolerance', async () => {
  const res = await runConformanceCase(path.join(REFERENCE, 'sd-one-step'));
  const bad = res.results.filter((r) => r.status !== 'ok');
  if (bad.length) console.log(bad);
  expect(bad).toEqual([]);
  expect(res.results.length).toBeGreaterThan(5);
});

describe('training pieces', () => {
  const dir = path.join(REFERENCE, 'sd-one-step');
  test('denoising loss: add_noise, UNet prediction and ε / v targets', async () => {
    const caseJson = JSON.parse(fs.readFileSync(path.join(dir, 'case.json'), 'utf8'));
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    const unet = await UNet.create(JSON.parse(fs.readFileSync(path.join(REFERENCE, 'sd-unet', 'config.json'), 'utf8')));
    const io = await loadSafetensors(path.join(dir, 'io.safetensors'));
    try {
      await unet.model.loadWeights([path.join(REFERENCE, 'sd-unet', 'model.safetensors')]);
      await noGrad(async () => {
        const r = await unet.denoisingLoss(io['input.x0'], io['input.noise'], io['input.timesteps'], io['input.encoder_hidden_states'], cfg.scheduler_config);
        // x_t = add_noise(x0, noise, t) and the prediction match the fixture's eps.
        expect(r.noisy.compare(io['input.x_t'], 1e-6, 1e-5).bad).toBe(0);
        const eps = caseJson.tensors['output.eps'];
        expect(r.prediction.compare(io['output.eps'], eps.recommended_atol, eps.recommended_rtol).bad).toBe(0);
        expect(r.target.compare(io['input.noise'], 0, 0).bad).toBe(0);
        const mse = Tensor.op('mse', [r.prediction, io['input.noise']]);
        expect(Math.abs(mse.item() - r.loss.item())).toBeLessThan(1e-6);
        // v-prediction: target = √ᾱ·ε − √(1−ᾱ)·x0, as the scheduler's get_velocity.
        const vcfg = { ...cfg.scheduler_config, prediction_type: 'v_prediction' };
        const v = await unet.denoisingLoss(io['input.x0'], io['input.noise'], io['input.timesteps'], io['input.encoder_hidden_states'], vcfg);
        const sched = await Scheduler.create('ddpm', vcfg);
        const vel = await sched.getVelocity(io['input.x0'], io['input.noise'], io['input.timesteps']);
        expect(v.target.compare(vel, 0, 0).bad).toBe(0);
        // x̂0 from the true noise recovers x0.
        const x0 = await unet.x0Estimate(io['input.x_t'], io['input.noise'], io['input.timesteps'], cfg.scheduler_config);
        expect(x0.compare(io['input.x0'], 1e-5, 1e-4).bad).toBe(0);
        sched.dispose();
        disposeAll([r, v, vel, x0, mse]);
      });
    } finally {
      unet.dispose();
      disposeAll(io);
    }
  });
});
