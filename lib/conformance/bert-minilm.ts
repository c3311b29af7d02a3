/** Conformance runner for `bert-minilm/`: BertModel + sentence-transformers mean pooling and normalisation. */
import * as path from 'path';
import { NativeModel } from '../runtime/model';
import { Tensor, noGrad } from '../runtime/tensor';
import { registerConformance, ConformanceContext } from './registry';

async function run(ctx: ConformanceContext): Promise<Record<string, Tensor>> {
  const model = await NativeModel.create('bert', ctx.config, { device: ctx.device });
  try {
    await model.loadWeights([path.join(ctx.dir, 'model.safetensors')]);
    const out = await noGrad(() =>
      model.call('encode', {
        input_ids: ctx.io['input.input_ids'],
        attention_mask: ctx.io['input.attention_mask'],
        token_type_ids: ctx.io['input.token_type_ids'],
      }),
    );
    const result: Record<string, Tensor> = {};
    for (const [k, v] of Object.entries(out)) result[`output.${k}`] = v;
    return result;
  } finally {
    model.dispose();
  }
}

registerConformance('bert-minilm', run);
