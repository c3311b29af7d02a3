import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { StableDiffusionPipeline } from '../lib/models/sd/pipeline';
import { disposeAll } from '../lib/runtime/tensor';
import { loadSafetensors } from '../lib/weights/safetensors';
import { saveTensors } from '../lib/weights/save';
import { makeTinySd } from './support/tiny-models';

// Hub folders often ship only `*.fp16.safetensors` (the fp16 variant); they load into the fp32 models.
test('a diffusers folder with only fp16 variant weights loads and generates like the fp32 one', async () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-fp16-'));
  const full = makeTinySd(path.join(root, 'fp32'), 'DDIMScheduler');
  const half = makeTinySd(path.join(root, 'fp16'), 'DDIMScheduler');
  for (const [sub, name] of [['unet', 'diffusion_pytorch_model'], ['vae', 'diffusion_pytorch_model'], ['text_encoder', 'model']]) {
    const src = path.join(half, sub, `${name}.safetensors`);
    const tensors = await loadSafetensors(src, { dtype: 'float16' });
    await saveTensors(path.join(half, sub, `${name}.fp16.safetensors`), tensors);
    disposeAll(tensors);
    fs.rmSync(src);
  }
  const a = await StableDiffusionPipeline.load(full);
  const b = await StableDiffusionPipeline.load(half);
  const opts = { steps: 2, guidance: 3, seed: 5, height: 64, width: 64, scheduler: 'ddim' };
  const ra = await a.generate(['a red circle'], opts);
  const rb = await b.generate(['a red circle'], opts);
  expect(rb.images.shape).toEqual(ra.images.shape);
  // Only the weights' fp16 rounding separates them.
  const c = rb.images.compare(ra.images, 5e-2, 5e-2);
  expect(c.bad).toBe(0);
  expect(c.maxAbs).toBeGreaterThan(0);
  disposeAll([ra.images, rb.images]);
  a.dispose();
  b.dispose();
  fs.rmSync(root, { recursive: true, force: true });
});
