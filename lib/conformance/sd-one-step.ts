/**
 * Conformance runner for `sd-one-step/`: ε from the UNet, x̂0 = (x_t − √(1−ᾱ)ε)/√ᾱ, decoded by the frozen VAE,
 * an image MSE, and its gradients wrt x̂0, ε and every UNet attn2.to_q weight.
 */
import { Tensor } from '../runtime/tensor';
import { ConformanceContext, registerConformance } from './registry';
import { loadCaseModels } from './sd-common';
import { XATTN_Q } from './sd-unet';

async function run(ctx: ConformanceContext): Promise<Record<string, Tensor>> {
  const { unet, vae } = await loadCaseModels(ctx);
  const io = ctx.io;
  try {
    const trainable = unet.model.setTrainable([XATTN_Q]);
    vae.model.setTrainable([]);
    const schedulerConfig = ctx.config?.scheduler_config ?? {};
    const t = io['input.timesteps'];
    // The chain is split at ε and x̂0 (detached leaves) so their gradients can be read, then continued by hand.
    const eps = (await unet.forward(io['input.x_t'], t, io['input.encoder_hidden_states'])).sample;
    const epsLeaf = eps.detach();
    epsLeaf.requiresGrad = true;
    const x0 = await unet.x0Estimate(io['input.x_t'], epsLeaf, t, schedulerConfig);
    const x0Leaf = x0.detach();
    x0Leaf.requiresGrad = true;
    const decoded = (await vae.decode(x0Leaf, { scaled: true })).image;
    const loss = Tensor.op('mse', [decoded, io['input.target_image']]);
    await loss.backward();
    const gx0 = x0Leaf.grad();
    if (!gx0) throw new Error('sd-one-step: no gradient reached x0_hat');
    await x0.backward(gx0);
    const geps = epsLeaf.grad();
    if (!geps) throw new Error('sd-one-step: no gradient reached eps');
    await eps.backward(geps);
    const result: Record<string, Tensor> = {
      'output.eps': epsLeaf.detach(),
      'output.x0_hat': x0Leaf.detach(),
      'output.decoded': decoded.detach(),
      'output.loss': loss.detach(),
      'grad.x0_hat': gx0,
      'grad.eps': geps,
    };
    const params = unet.model.tensors(trainable);
    for (const name of trainable) {
      const g = params[name].grad();
      if (g) result[`grad.${name}`] = g;
    }
    for (const x of [eps, epsLeaf, x0, x0Leaf, decoded, loss]) x.dispose();
    return result;
  } finally {
    unet.dispose();
    vae.dispose();
  }
}

registerConformance('sd-one-step', run);
