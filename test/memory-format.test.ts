import * as fs from 'fs';
import * as path from 'path';
import { UNet } from '../lib/models/sd/unet';
import { parsePythonJson } from '../lib/models/sd/schedulers';
import { disposeAll } from '../lib/runtime/tensor';
import { loadSafetensors } from '../lib/weights/safetensors';
import { REFERENCE } from './support/paths';

test('channels-last UNet gives the reference outputs', async () => {
  const dir = path.join(REFERENCE, 'sd-unet');
  const caseJson = JSON.parse(fs.readFileSync(path.join(dir, 'case.json'), 'utf8'));
  const unet = await UNet.create(parsePythonJson(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>);
  await unet.model.loadWeights([path.join(dir, 'model.safetensors')]);
  unet.model.setChannelsLast(true);
  const io = await loadSafetensors(path.join(dir, 'io.safetensors'));
  const { sample } = await unet.forward(io['input.sample'], io['input.timesteps'], io['input.encoder_hidden_states']);
  const spec = caseJson.tensors['output.sample'];
  expect(sample.compare(io['output.sample'], spec.recommended_atol, spec.recommended_rtol).bad).toBe(0);
  // Back to contiguous: same function.
  unet.model.setChannelsLast(false);
  const again = await unet.forward(io['input.sample'], io['input.timesteps'], io['input.encoder_hidden_states']);
  expect(again.sample.compare(io['output.sample'], spec.recommended_atol, spec.recommended_rtol).bad).toBe(0);
  expect(() => unet.model.setChannelsLast('yes' as any)).toThrow(/channels last: expected a boolean/);
  disposeAll([io, sample, again.sample]);
  unet.dispose();
});
