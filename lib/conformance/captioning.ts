/**
 * What the captioning families' conformance runners share (`blip-captioning.ts`, `blip2-opt.ts`): fixture
 * inputs by name, losses with the gradients of the weights case.json lists (`grad.<loss>.<weight>`), and every
 * `generate.<case>.*` of case.json → generation.cases, called as the case records it.
 */
import { RoundtripError } from '../errors';
import { NativeModel } from '../runtime/model';
import { Tensor, noGrad } from '../runtime/tensor';

/** The tensor `name` of io.safetensors; `who` names the fixture in the error. */
export function fixtureInput(io: Record<string, Tensor>, name: string, who: string): Tensor {
  const t = io[name];
  if (!t) throw new RoundtripError(`${who}: io.safetensors lacks ${name}`);
  return t;
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Each loss of `lossNames` (`loss(name)` computes it) into `output.<name>`, with the gradients case.json asks
 * for: only those weights are trainable, fresh for each loss.
 */
export async function lossesWithGradients(
  model: NativeModel,
  names: string[],
  lossNames: string[],
  loss: (lossName: string) => Promise<Tensor>,
  out: Record<string, Tensor>,
): Promise<void> {
  for (const lossName of lossNames) {
    const gradPrefix = `grad.${lossName}.`;
    const weights = names.filter((n) => n.startsWith(gradPrefix)).map((n) => n.slice(gradPrefix.length));
    model.setTrainable([]); // drops gradients of the previous loss
    model.setTrainable(weights.map((w) => `^${escapeRegex(w)}$`));
    const value = await loss(lossName);
    out[`output.${lossName}`] = value;
    if (weights.length === 0) continue;
    await value.backward();
    const params = model.tensors(weights);
    for (const w of weights) {
      const g = params[w]?.grad();
      if (g) out[`${gradPrefix}${w}`] = g.clone();
      g?.dispose();
    }
    for (const p of Object.values(params)) p.dispose();
  }
  model.setTrainable([]);
}

/** Every generate() case of case.json, on `pixels` with the inputs its `call` names, into `generate.<case>.*`. */
export async function generateCases(model: NativeModel<'blip' | 'blip2'>, caseJson: any, io: Record<string, Tensor>, pixels: Tensor, who: string, out: Record<string, Tensor>): Promise<void> {
  const cases: Record<string, any> = caseJson.generation?.cases ?? {};
  for (const [caseName, spec] of Object.entries(cases)) {
    const call: string = spec.call ?? '';
    const idsName = /\binput_ids=input\.([\w.]+)/.exec(call)?.[1];
    const maskName = /\battention_mask=input\.([\w.]+)/.exec(call)?.[1];
    const result = await noGrad(() =>
      model.call(
        'generate',
        {
          pixel_values: pixels,
          input_ids: idsName ? fixtureInput(io, `input.${idsName}`, who) : undefined,
          attention_mask: maskName ? fixtureInput(io, `input.${maskName}`, who) : undefined,
        },
        spec.kwargs ?? {},
      ),
    );
    out[`generate.${caseName}.sequences`] = result.sequences;
    if (result.sequences_scores) out[`generate.${caseName}.sequences_scores`] = result.sequences_scores;
    if (result.token_logprobs) out[`generate.${caseName}.chosen_token_logprobs`] = result.token_logprobs;
  }
}
