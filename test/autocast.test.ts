import * as fs from 'fs';
import * as path from 'path';
import { NativeModel } from '../lib/runtime/model';
import { native } from '../lib/runtime/native';
import { loadSafetensors } from '../lib/weights/safetensors';
import { disposeAll } from '../lib/runtime/tensor';
import { REFERENCE } from './support/paths';

const DIR = path.join(REFERENCE, 'vit-dino');
const config = JSON.parse(fs.readFileSync(path.join(DIR, 'config.json'), 'utf8'));
const clsSpec = JSON.parse(fs.readFileSync(path.join(DIR, 'case.json'), 'utf8')).tensors['output.cls'];

describe('mixed precision (CUDA autocast)', () => {
  test('is refused on a CPU model, by the TS API and by the native call alike', async () => {
    const m = await NativeModel.create('vit', config);
    await m.loadWeights([path.join(DIR, 'model.safetensors')]);
    expect(() => m.setAutocast('bf16')).toThrow(/autocast "bf16" needs a model on CUDA \(this vit model is on cpu/);
    expect(() => m.setAutocast('int8' as any)).toThrow(/autocast: expected one of "off", "bf16", "fp16"/);
    m.setAutocast('off');
    const io = await loadSafetensors(path.join(DIR, 'io.safetensors'));
    await expect(m.call('forward', { pixel_values: io['input.pixel_values'] }, { autocast: 'fp16' })).rejects.toThrow(/needs a model on CUDA/);
    await expect(m.call('forward', { pixel_values: io['input.pixel_values'] }, { autocast: 'fp8' })).rejects.toThrow(/option autocast: expected "bf16", "fp16" or "off"/);
    const out = await m.call('forward', { pixel_values: io['input.pixel_values'] });
    expect(out.cls.compare(io['output.cls'], clsSpec.recommended_atol, clsSpec.recommended_rtol).bad).toBe(0);
    disposeAll([io, out]);
    m.dispose();
  });

  const cuda = native().info().cuda ? test : test.skip;
  cuda('bf16 and fp16 on CUDA stay close to fp32', async () => {
    const m = await NativeModel.create('vit', config, { device: 'cuda' });
    await m.loadWeights([path.join(DIR, 'model.safetensors')]);
    const io = await loadSafetensors(path.join(DIR, 'io.safetensors'), { device: 'cuda' });
    for (const mode of ['bf16', 'fp16'] as const) {
      m.setAutocast(mode);
      const out = await m.call('forward', { pixel_values: io['input.pixel_values'] });
      // Half precision: about 3 significant digits.
      expect(out.cls.compare(io['output.cls'], 5e-2, 5e-2).bad).toBe(0);
      disposeAll(out);
    }
    disposeAll(io);
    m.dispose();
  });
});
