/**
 * Conformance runner for `clip-text-encoder/`: CLIPTextModel (the SD v1 text encoder) on token ids, and the
 * soft-token path of case.json → soft_path_recipe with gradients w.r.t. the soft logits.
 */
import * as path from 'path';
import { NativeModel } from '../runtime/model';
import { Tensor, noGrad } from '../runtime/tensor';
import { registerConformance, ConformanceContext } from './registry';

/** Runs the soft-path recipe: logits = A@B, P = softmax, encoder, loss = Σ out², backprop to the logits. */
export async function clipSoftPath(model: NativeModel<'clip'>, A: Tensor, B: Tensor, rowsIndex: Tensor): Promise<Record<string, Tensor>> {
  const [batch, length, rank] = A.shape;
  const vocab = B.shape[1];
  // logits = A @ B by broadcasting (no matmul op is exposed to TS); a leaf, so its gradient can be read.
  const logits = await noGrad(() => A.reshape([batch, length, rank, 1]).mul(B.reshape([1, 1, rank, vocab])).sum(2));
  logits.requiresGrad = true;
  const P = logits.softmax(-1);
  const out = await model.call('text', { soft_tokens: P });
  const h = out.last_hidden_state;
  const loss = h.mul(h).sum();
  await loss.backward();
  const g = logits.grad();
  if (!g) throw new Error('clip soft path: no gradient reached the logits');
  const result: Record<string, Tensor> = { 'output.soft.last_hidden_state': h.detach(), 'output.soft.loss': loss.detach() };
  await noGrad(() => {
    const idx = rowsIndex.toTypedArray() as BigInt64Array;
    const picked: Tensor[] = [];
    for (let i = 0; i < idx.length; i += 2) picked.push(g.select(0, Number(idx[i])).select(0, Number(idx[i + 1])));
    result['grad.soft.logits_rows'] = Tensor.stack(picked, 0);
    picked.forEach((t) => t.dispose());
    // dloss/dA = dloss/dlogits @ Bᵀ, by broadcasting over the vocabulary.
    result['grad.soft.logits_A'] = g.reshape([batch, length, 1, vocab]).mul(B.reshape([1, 1, rank, vocab])).sum(3);
  });
  const gd = g.toFloat32Array();
  let sum = 0;
  let abs = 0;
  let sq = 0;
  for (let i = 0; i < gd.length; i++) {
    const v = gd[i];
    sum += v;
    abs += v < 0 ? -v : v;
    sq += v * v; // (no Math.* calls in this 7.6M-element loop: slow under vm contexts)
  }
  result['grad.soft.logits_stats'] = Tensor.fromTypedArray(new Float64Array([sum, abs, Math.sqrt(sq)]), [3]);
  for (const t of [logits, P, h, loss, g, ...Object.values(out)]) if (!Object.values(result).includes(t)) t.dispose();
  return result;
}

async function run(ctx: ConformanceContext): Promise<Record<string, Tensor>> {
  const model = await NativeModel.create('clip', ctx.config, { device: ctx.device });
  try {
    await model.loadWeights([path.join(ctx.dir, 'model.safetensors')]);
    model.setTrainable([]);
    const result: Record<string, Tensor> = {};
    await noGrad(async () => {
      const out = await model.call('text', { input_ids: ctx.io['input.input_ids'] });
      result['output.last_hidden_state'] = out.last_hidden_state;
      result['output.pooler_output'] = out.pooler_output;
    });
    Object.assign(result, await clipSoftPath(model, ctx.io['input.soft.logits_A'], ctx.io['input.soft.logits_B'], ctx.io['input.soft.grad_rows_index']));
    return result;
  } finally {
    model.dispose();
  }
}

registerConformance('clip-text-encoder', run);
