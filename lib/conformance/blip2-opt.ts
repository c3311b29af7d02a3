/**
 * Conformance runner for `reference/blip2-opt` (transformers 4.37.2 Blip2ForConditionalGeneration with OPT):
 * image preprocessing, vision / Q-Former / projection outputs, logits, both losses with their gradients
 * `grad.<loss>.<weight>`, and every `generate.<case>.*` that case.json → generation.cases lists.
 */
import * as path from 'path';
import { RoundtripError } from '../errors';
import { preprocessBatch, preprocessFromHfConfig, RgbImage } from '../image';
import { readJsonFile } from '../json';
import { Blip2 } from '../models/blip2';
import { Tensor, noGrad } from '../tensor';
import { ConformanceContext, registerConformance } from './registry';

function input(io: Record<string, Tensor>, name: string): Tensor {
  const t = io[name];
  if (!t) throw new RoundtripError(`blip2-opt: io.safetensors lacks ${name}`);
  return t;
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

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
    for (const lossName of lossNames) {
      const gradPrefix = `grad.${lossName}.`;
      const weights = names.filter((n) => n.startsWith(gradPrefix)).map((n) => n.slice(gradPrefix.length));
      model.model.setTrainable([]);
      model.model.setTrainable(weights.map((w) => `^${escapeRegex(w)}$`));
      const labels = lossName === 'loss' ? input(io, 'input.labels') : text.inputIds;
      const loss = await model.loss({ ...text, labels });
      out[`output.${lossName}`] = loss;
      if (weights.length === 0) continue;
      await loss.backward();
      const params = model.model.tensors(weights);
      for (const w of weights) {
        const g = params[w]?.grad();
        if (g) out[`${gradPrefix}${w}`] = g.clone();
        g?.dispose();
      }
      for (const p of Object.values(params)) p.dispose();
    }
    model.model.setTrainable([]);

    // generate() cases, called as case.json records them.
    const cases: Record<string, any> = caseJson.generation?.cases ?? {};
    for (const [caseName, spec] of Object.entries(cases)) {
      const call: string = spec.call ?? '';
      const idsName = /\binput_ids=input\.([\w.]+)/.exec(call)?.[1];
      const maskName = /\battention_mask=input\.([\w.]+)/.exec(call)?.[1];
      const result = await noGrad(() =>
        model.model.call(
          'generate',
          { pixel_values: pixels, input_ids: idsName ? input(io, `input.${idsName}`) : undefined, attention_mask: maskName ? input(io, `input.${maskName}`) : undefined },
          spec.kwargs ?? {},
        ),
      );
      out[`generate.${caseName}.sequences`] = result.sequences;
      if (result.sequences_scores) out[`generate.${caseName}.sequences_scores`] = result.sequences_scores;
      if (result.token_logprobs) out[`generate.${caseName}.chosen_token_logprobs`] = result.token_logprobs;
    }
    return out;
  } finally {
    model.dispose();
  }
}

registerConformance('blip2-opt', runBlip2Opt);
