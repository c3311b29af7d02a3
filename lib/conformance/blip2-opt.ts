/**
 * Conformance runner for `reference/blip2-opt` (transformers 4.37.2 Blip2ForConditionalGeneration with OPT):
 * image preprocessing, vision / Q-Former / projection outputs, logits, both losses with their gradients
 * `grad.<loss>.<weight>`, and every `generate.<case>.*` that case.json → generation.cases lists.
 */
import * as path from 'path';
import { preprocessBatch, preprocessFromHfConfig, RgbImage } from '../image';
import { readJsonFile } from '../json';
import { Blip2 } from '../models/blip2';
import { Tensor, noGrad } from '../runtime/tensor';
import { fixtureInput, generateCases, lossesWithGradients } from './captioning';
import { ConformanceContext, registerConformance } from './registry';

const input = (io: Record<string, Tensor>, name: string): Tensor => fixtureInput(io, name, 'blip2-opt');

/** BlipImageProcessor(preprocessor_config.json) on uint8 images [B, H, W, 3]. */
function processorPixels(dir: string, images: Tensor): Tensor {
  const [B, H, W] = images.shape;
  const data = images.toTypedArray() as Uint8Array;
  const list: RgbImage[] = [];
  for (let b = 0; b < B; b++) list.push({ data: data.slice(b * H * W * 3, (b + 1) * H * W * 3), width: W, height: H });
  const file = path.join(dir, 'preprocessor_config.json');
  const batch = preprocessBatch(list, preprocessFromHfConfig(readJsonFile(file, { object: true }), file));
  return Tensor.fromTypedArray(batch.data as Float32Array, batch.shape);
}

export async function runBlip2Opt(ctx: ConformanceContext): Promise<Record<string, Tensor>> {
  const { dir, caseJson, io, device } = ctx;
  const model = await Blip2.load({ config: path.join(dir, 'config.json'), weights: [path.join(dir, 'model.safetensors')] }, { device });
  const out: Record<string, Tensor> = {};
  const names = Object.keys(caseJson.tensors ?? {});
  try {
    if (names.includes('output.processor_pixel_values')) out['output.processor_pixel_values'] = processorPixels(dir, input(io, 'input.image_uint8'));
    const pixels = input(io, 'input.pixel_values');
    const text = { pixelValues: pixels, inputIds: input(io, 'input.input_ids'), attentionMask: io['input.attention_mask'] };
    await noGrad(async () => {
      const v = await model.vision(pixels);
      out['output.vision_last_hidden_state'] = v.lastHiddenState;
      out['output.vision_pooler_output'] = v.poolerOutput;
      const q = await model.queries({ imageEmbeds: v.lastHiddenState });
      out['output.qformer_last_hidden_state'] = q.qformerLastHiddenState;
      out['output.language_projection'] = q.languageProjection;
      out['output.logits'] = await model.logits(text);
    });

    // Losses with their gradients: `loss` uses input.labels, `loss_unmasked_labels` labels = input_ids.
    const lossNames = names.filter((n) => /^output\.loss(_unmasked_labels)?$/.test(n)).map((n) => n.slice('output.'.length));
    await lossesWithGradients(model.model, names, lossNames, (lossName) => model.loss({ ...text, labels: lossName === 'loss' ? input(io, 'input.labels') : text.inputIds }), out);
    await generateCases(model.model, caseJson, io, pixels, 'blip2-opt', out);
    return out;
  } finally {
    model.dispose();
  }
}

registerConformance('blip2-opt', runBlip2Opt);
