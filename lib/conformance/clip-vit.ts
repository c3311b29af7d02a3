/** Conformance runner for `clip-vit/`: the full CLIPModel (both towers, projections, similarity logits). */
import * as path from 'path';
import { NativeModel } from '../runtime/model';
import { Tensor, noGrad } from '../runtime/tensor';
import { registerConformance, ConformanceContext } from './registry';

async function run(ctx: ConformanceContext): Promise<Record<string, Tensor>> {
  const model = await NativeModel.create('clip', ctx.config, { device: ctx.device });
  try {
    await model.loadWeights([path.join(ctx.dir, 'model.safetensors')]);
    const out = await noGrad(() =>
      model.call('forward', {
        pixel_values: ctx.io['input.pixel_values'],
        input_ids: ctx.io['input.input_ids'],
        attention_mask: ctx.io['input.attention_mask'],
      }),
    );
    const result: Record<string, Tensor> = {};
    for (const [k, v] of Object.entries(out)) result[`output.${k}`] = v;
    return result;
  } finally {
    model.dispose();
  }
}

registerConformance('clip-vit', run);
