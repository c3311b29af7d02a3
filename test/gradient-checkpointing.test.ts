import * as fs from 'fs';
import * as path from 'path';
import { UNet } from '../lib/models/sd/unet';
import { parsePythonJson } from '../lib/models/sd/schedulers';
import { Tensor, disposeAll } from '../lib/runtime/tensor';
import { loadSafetensors } from '../lib/weights/safetensors';
import { REFERENCE } from './support/paths';

const DIR = path.join(REFERENCE, 'sd-unet');
const caseJson = JSON.parse(fs.readFileSync(path.join(DIR, 'case.json'), 'utf8'));
const config = parsePythonJson(fs.readFileSync(path.join(DIR, 'config.json'), 'utf8')) as Record<string, unknown>;

/** Gradients of mean((unet(x) − target)²) wrt every attn2.to_q.weight and the conditioning. */
async function gradients(checkpointing: boolean): Promise<{ grads: Record<string, Tensor>; ehsGrad: Tensor; peak?: number }> {
  const unet = await UNet.create(config);
  await unet.model.loadWeights([path.join(DIR, 'model.safetensors')]);
  const names = unet.model.setTrainable(['attn2\\.to_q\\.weight$']);
  unet.model.setGradientCheckpointing(checkpointing);
  const io = await loadSafetensors(path.join(DIR, 'io.safetensors'));
  const ehs = io['input.encoder_hidden_states'].detach();
  ehs.requiresGrad = true;
  const { sample } = await unet.forward(io['input.sample'], io['input.timesteps'], ehs);
  const loss = Tensor.op('mse', [sample, io['input.target']]);
  await loss.backward();
  const params = unet.model.tensors(names);
  const grads: Record<string, Tensor> = {};
  for (const n of names) grads[n] = params[n].grad()!;
  const ehsGrad = ehs.grad()!;
  disposeAll([io, sample, loss]);
  unet.dispose();
  return { grads, ehsGrad };
}

test('UNet gradient checkpointing gives the reference gradients', async () => {
  const plain = await gradients(false);
  const ckpt = await gradients(true);
  const io = await loadSafetensors(path.join(DIR, 'io.safetensors'));
  const names = Object.keys(plain.grads);
  expect(names.length).toBeGreaterThan(0);
  for (const n of names) {
    const spec = caseJson.tensors[`grad.${n}`];
    const ref = io[`grad.${n}`];
    expect(ckpt.grads[n].compare(ref, spec.recommended_atol, spec.recommended_rtol).bad).toBe(0);
    // Recomputation repeats the same float operations: equal to the stored-activation gradients.
    expect(ckpt.grads[n].compare(plain.grads[n], 1e-7, 1e-6).bad).toBe(0);
  }
  const spec = caseJson.tensors['grad.encoder_hidden_states'];
  expect(ckpt.ehsGrad.compare(io['grad.encoder_hidden_states'], spec.recommended_atol, spec.recommended_rtol).bad).toBe(0);
  disposeAll([io, plain, ckpt]);
});

test('BLIP gradient checkpointing (vision and decoder layers) gives the reference gradients', async () => {
  const { Blip } = await import('../lib/models/blip');
  const dir = path.join(REFERENCE, 'blip-captioning');
  const blipCase = JSON.parse(fs.readFileSync(path.join(dir, 'case.json'), 'utf8'));
  const io = await loadSafetensors(path.join(dir, 'io.safetensors'));
  const prefix = 'grad.loss_label_smoothing_0.1.';
  const queries = Object.keys(blipCase.tensors).filter((n) => n.startsWith(prefix)).map((n) => n.slice(prefix.length));
  expect(queries.length).toBeGreaterThan(0);
  const vision = 'vision_model.encoder.layers.0.mlp.fc1.weight';
  const run = async (checkpointing: boolean) => {
    const blip = await Blip.load({ config: path.join(dir, 'config.json'), weights: [path.join(dir, 'model.safetensors')] });
    blip.model.setTrainable([...queries, vision].map((w) => `^${w.replace(/\./g, '\\.')}$`));
    blip.model.setGradientCheckpointing(checkpointing);
    const loss = await blip.loss(
      { pixelValues: io['input.pixel_values'], inputIds: io['input.input_ids'], attentionMask: io['input.attention_mask'], labels: io['input.labels'] },
      { labelSmoothing: 0.1 },
    );
    await loss.backward();
    const params = blip.model.tensors([...queries, vision]);
    const grads: Record<string, Tensor> = {};
    for (const [n, p] of Object.entries(params)) grads[n] = p.grad()!;
    disposeAll(loss);
    blip.dispose();
    return grads;
  };
  const plain = await run(false);
  const ckpt = await run(true);
  for (const q of queries) {
    const spec = blipCase.tensors[prefix + q];
    expect(ckpt[q].compare(io[prefix + q], spec.recommended_atol, spec.recommended_rtol).bad).toBe(0);
  }
  expect(ckpt[vision].compare(plain[vision], 1e-7, 1e-6).bad).toBe(0);
  disposeAll([io, plain, ckpt]);
});
