/**
 * Conformance runner for `reference/blip-captioning` (transformers BlipForConditionalGeneration):
 * vision outputs, decoder logits, losses (with and without label smoothing, with unmasked labels),
 * gradients `grad.<loss>.<weight>`, and every `generate.<case>.*` listed in case.json → generation.cases.
 */
import * as path from 'path';
import { Blip } from '../models/blip';
import { Tensor, noGrad } from '../runtime/tensor';
import { fixtureInput, generateCases, lossesWithGradients } from './captioning';
import { ConformanceContext, registerConformance } from './registry';

const input = (io: Record<string, Tensor>, name: string): Tensor => fixtureInput(io, name, 'blip-captioning');

/** Label smoothing of a loss output name: `loss` → config default, `loss_label_smoothing_0.1` → 0.1. */
function smoothingOf(lossName: string): number | undefined {
  const m = /^loss_label_smoothing_([0-9.eE+-]+)$/.exec(lossName);
  return m ? Number(m[1]) : undefined;
}

export async function runBlipCaptioning(ctx: ConformanceContext): Promise<Record<string, Tensor>> {
  const { dir, caseJson, io, device } = ctx;
  const blip = await Blip.load({ config: path.join(dir, 'config.json'), weights: [path.join(dir, 'model.safetensors')] }, { device });
  const out: Record<string, Tensor> = {};
  const names = Object.keys(caseJson.tensors ?? {});
  try {
    const pixels = input(io, 'input.pixel_values');
    const text = { pixelValues: pixels, inputIds: input(io, 'input.input_ids'), attentionMask: io['input.attention_mask'] };
    await noGrad(async () => {
      const v = await blip.vision(pixels);
      out['output.vision_last_hidden_state'] = v.lastHiddenState;
      out['output.vision_pooler_output'] = v.poolerOutput;
      out['output.logits'] = await blip.logits(text);
      if (names.includes('output.loss_unmasked_labels')) out['output.loss_unmasked_labels'] = await blip.loss({ ...text, labels: text.inputIds }, { labelSmoothing: 0 });
    });

    // Losses with their gradients.
    const lossNames = names.filter((n) => /^output\.loss(_label_smoothing_[0-9.eE+-]+)?$/.test(n)).map((n) => n.slice('output.'.length));
    await lossesWithGradients(blip.model, names, lossNames, (lossName) => blip.loss({ ...text, labels: input(io, 'input.labels') }, { labelSmoothing: smoothingOf(lossName) ?? 0 }), out);
    await generateCases(blip.model, caseJson, io, pixels, 'blip-captioning', out);
    return out;
  } finally {
    blip.dispose();
  }
}

registerConformance('blip-captioning', runBlipCaptioning);
