import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { XATTN_Q } from '../lib/conformance/sd-unet';
import { runConformanceCase } from '../lib/conformance/registry';
import { UNet } from '../lib/models/sd/unet';
import { parsePythonJson } from '../lib/models/sd/schedulers';
import { memorySnapshot } from '../lib/runtime/memory';
import { Tensor, disposeAll, noGrad } from '../lib/runtime/tensor';
import { loadSafetensors } from '../lib/weights/safetensors';
import { saveTensors } from '../lib/weights/save';
import { AdamW } from '../lib/train/optimizer';
import { REFERENCE } from './support/paths';

jest.setTimeout(120000);

test('sd-unet fixture: forward, loss, gradients, intermediates, odd size', async () => {
  const res = await runConformanceCase(path.join(REFERENCE, 'sd-unet'));
  const bad = res.results.filter((r) => r.status !== 'ok');
  if (bad.length) console.log(bad);
  expect(bad).toEqual([]);
  expect(res.results.length).toBeGreaterThan(30);
});

test('sd-unet fixture: an inference forward (convolutions on packed oneDNN weights) gives the reference output, also after a weight update', async () => {
  const dir = path.join(REFERENCE, 'sd-unet');
  const caseJson = JSON.parse(fs.readFileSync(path.join(dir, 'case.json'), 'utf8'));
  const spec = caseJson.tensors['output.sample'];
  const unet = await UNet.create(parsePythonJson(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>);
  await unet.model.loadWeights([path.join(dir, 'model.safetensors')]);
  const io = await loadSafetensors(path.join(dir, 'io.safetensors'));
  const args = [io['input.sample'], io['input.timesteps'], io['input.encoder_hidden_states']] as const;
  // Batch 2: libtorch runs every convolution through oneDNN, so each one takes the packed path.
  const first = (await noGrad(() => unet.forward(...args))).sample;
  const again = (await noGrad(() => unet.forward(...args))).sample;
  expect(first.compare(io['output.sample'], spec.recommended_atol, spec.recommended_rtol).bad).toBe(0);
  expect(again.compare(first, 0, 0).bad).toBe(0);
  // A replaced weight (a load, an optimizer step) is repacked: the output follows the new weight.
  const name = 'down_blocks.0.resnets.0.conv1.weight';
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-packed-'));
  const zero = unet.model.tensors([name])[name].mul(0);
  await saveTensors(path.join(tmp, 'w.safetensors'), { [name]: zero });
  await unet.model.loadWeights([path.join(tmp, 'w.safetensors')], { partial: true });
  const zeroed = (await noGrad(() => unet.forward(...args))).sample;
  const plain = (await unet.forward(...args)).sample;  // with autograd: libtorch's own convolution
  expect(zeroed.compare(plain, spec.recommended_atol, spec.recommended_rtol).bad).toBe(0);
  expect(zeroed.compare(first, spec.recommended_atol, spec.recommended_rtol).bad).toBeGreaterThan(0);
  disposeAll([io, first, again, zeroed, plain, zero]);
  unet.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('a trained, then frozen weight keeps its trained values after packing (its written pages are not handed back)', async () => {
  const dir = path.join(REFERENCE, 'sd-unet');
  const unet = await UNet.create(parsePythonJson(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>);
  await unet.model.loadWeights([path.join(dir, 'model.safetensors')]);
  const io = await loadSafetensors(path.join(dir, 'io.safetensors'));
  const args = [io['input.sample'], io['input.timesteps'], io['input.encoder_hidden_states']] as const;
  // One AdamW step on every convolution writes into the file-mapped parameters (private copies of their pages).
  const params = unet.model.tensors(unet.model.setTrainable(['conv']));
  expect(Object.keys(params).length).toBeGreaterThan(3);
  const opt = new AdamW(params, { lr: 0.05 });
  const loss = (await unet.forward(...args)).sample.mean();
  await loss.backward();
  await opt.step();
  unet.model.setTrainable([]);
  const packed = (await noGrad(() => unet.forward(...args))).sample; // packs; must keep the trained pages
  const plain = (await unet.forward(...args)).sample; // libtorch's own convolution on the plain weights
  const spec = JSON.parse(fs.readFileSync(path.join(dir, 'case.json'), 'utf8')).tensors['output.sample'];
  expect(packed.compare(plain, spec.recommended_atol, spec.recommended_rtol).bad).toBe(0);
  expect(packed.compare(io['output.sample'], spec.recommended_atol, spec.recommended_rtol).bad).toBeGreaterThan(0);
  disposeAll([io, loss, packed, plain, ...Object.values(params)]);
  unet.dispose();
});

test('a training forward runs frozen convolutions on packed weights, with gradients bit-equal to libtorch\'s own convolution', async () => {
  const dir = path.join(REFERENCE, 'sd-unet');
  const unet = await UNet.create(parsePythonJson(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>);
  await unet.model.loadWeights([path.join(dir, 'model.safetensors')]);
  const io = await loadSafetensors(path.join(dir, 'io.safetensors'));
  const weights = Object.values(unet.model.tensors(unet.model.setTrainable(['.'])));
  const convBytes = weights.filter((t) => t.shape.length === 4).reduce((n, t) => n + 4 * t.shape.reduce((a, b) => a * b, 1), 0);
  disposeAll(weights);
  // The fixture's set-up: frozen convolutions, trainable cross-attention queries, the text states' gradient.
  const run = async (trainable: string[]) => {
    const names = unet.model.setTrainable(trainable);
    const ehs = io['input.encoder_hidden_states'].detach();
    ehs.requiresGrad = true;
    const { sample } = await unet.forward(io['input.sample'], io['input.timesteps'], ehs);
    const loss = Tensor.op('mse', [sample, io['input.target']]);
    await loss.backward();
    const params = unet.model.tensors(names.filter((n) => /attn2\.to_q\.weight$/.test(n)));
    const grads = [ehs.grad()!, ...Object.values(params).map((p) => p.grad()!)];
    disposeAll([ehs, loss, Object.values(params)]);
    return { sample, grads };
  };
  const before = memorySnapshot().nativePackedWeightBytes;
  const packed = await run([XATTN_Q]);
  const held = memorySnapshot().nativePackedWeightBytes - before;
  expect(held).toBeGreaterThan(0.5 * convBytes);
  expect(held).toBeLessThanOrEqual(convBytes);
  // Trainable convolution weights take libtorch's own convolution: the same bits, forward and backward.
  const plain = await run([XATTN_Q, 'conv', 'proj_in', 'proj_out']);
  expect(plain.sample.compare(packed.sample, 0, 0).bad).toBe(0);
  expect(plain.grads.length).toBe(packed.grads.length);
  plain.grads.forEach((g, i) => expect(g.compare(packed.grads[i], 0, 0).bad).toBe(0));
  disposeAll([io, packed.sample, plain.sample, packed.grads, plain.grads]);
  unet.dispose();
  expect(memorySnapshot().nativePackedWeightBytes).toBe(before);

  // setTrainingConvPacking(false): a training forward packs nothing (its memory back), with the same bits.
  const other = await UNet.create(parsePythonJson(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>);
  await other.model.loadWeights([path.join(dir, 'model.safetensors')]);
  other.model.setTrainingConvPacking(false);
  expect(other.model.trainingConvPacking).toBe(false);
  expect(() => other.model.setTrainingConvPacking('no' as unknown as boolean)).toThrow(/training convolution packing/);
  const io2 = await loadSafetensors(path.join(dir, 'io.safetensors'));
  other.model.setTrainable([XATTN_Q]);
  const ehs = io2['input.encoder_hidden_states'].detach();
  ehs.requiresGrad = true;
  const { sample } = await other.model.call('forward', { sample: io2['input.sample'], timesteps: io2['input.timesteps'], encoder_hidden_states: ehs });
  expect(memorySnapshot().nativePackedWeightBytes).toBe(before);
  const spec = JSON.parse(fs.readFileSync(path.join(dir, 'case.json'), 'utf8')).tensors['output.sample'];
  expect(sample.compare(io2['output.sample'], spec.recommended_atol, spec.recommended_rtol).bad).toBe(0);
  disposeAll([io2, ehs, sample]);
  other.dispose();
});
