/**
 * Conformance runner for `reference/blip-captioning` (transformers BlipForConditionalGeneration):
 * vision outputs, decoder logits, losses (with and without label smoothing, with unmasked labels),
 * gradients `grad.<loss>.<weight>`, and every `generate.<case>.*` listed in case.json → generation.cases.
 */
import * as path from 'path';
import { RoundtripError } from '../errors';
import { Blip } from '../models/blip';
import { Tensor, noGrad } from '../tensor';
import { ConformanceContext, registerConformance } from './registry';

function input(io: Record<string, Tensor>, name: string): Tensor {
  const t = io[name];
  if (!t) throw new RoundtripError(`blip-captioning: io.safetensors lacks ${name}`);
  return t;
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

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

    // Losses with their gradients: only the weights asked for are trainable, fresh for each loss.
    const lossNames = names.filter((n) => /^output\.loss(_label_smoothing_[0-9.eE+-]+)?$/.test(n)).map((n) => n.slice('output.'.length));
    for (const lossName of lossNames) {
      const gradPrefix = `grad.${lossName}.`;
      const weights = names.filter((n) => n.startsWith(gradPrefix)).map((n) => n.slice(gradPrefix.length));
      blip.model.setTrainable([]); // drops gradients of the previous loss
      blip.model.setTrainable(weights.map((w) => `^${escapeRegex(w)}$`));
      const loss = await blip.loss({ ...text, labels: input(io, 'input.labels') }, { labelSmoothing: smoothingOf(lossName) ?? 0 });
      out[`output.${lossName}`] = loss;
      if (weights.length === 0) continue;
      await loss.backward();
      const params = blip.model.tensors(weights);
      for (const w of weights) {
        const g = params[w]?.grad();
        if (g) out[`${gradPrefix}${w}`] = g.clone();
        g?.dispose();
      }
      for (const p of Object.values(params)) p.dispose();
    }
    blip.model.setTrainable([]);

    // generate() cases, called as case.json records them.
    const cases: Record<string, any> = caseJson.generation?.cases ?? {};
    for (const [caseName, spec] of Object.entries(cases)) {
      const call: string = spec.call ?? '';
      const idsName = /\binput_ids=input\.([\w.]+)/.exec(call)?.[1];
      const maskName = /\battention_mask=input\.([\w.]+)/.exec(call)?.[1];
      const result = await noGrad(() =>
        blip.model.call(
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
    blip.dispose();
  }
}

registerConformance('blip-captioning', runBlipCaptioning);
