/** Conformance runner for `vit-dino/`: ViTModel without pooler (the DINO backbone) at its training size. */
import * as path from 'path';
import { NativeModel } from '../runtime/model';
import { Tensor, noGrad } from '../runtime/tensor';
import { registerConformance, ConformanceContext } from './registry';

async function run(ctx: ConformanceContext): Promise<Record<string, Tensor>> {
  const model = await NativeModel.create('vit', ctx.config, { device: ctx.device });
  try {
    await model.loadWeights([path.join(ctx.dir, 'model.safetensors')]);
    const out = await noGrad(() => model.call('forward', { pixel_values: ctx.io['input.pixel_values'] }));
    out.pos_embed.dispose();
    return { 'output.last_hidden_state': out.last_hidden_state, 'output.cls': out.cls };
  } finally {
    model.dispose();
  }
}

registerConformance('vit-dino', run);
