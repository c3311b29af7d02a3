/**
 * Conformance runner for `sd-unet/`: UNet2DConditionModel forward, MSE loss, gradients wrt every attn2.to_q
 * weight and the encoder hidden states, intermediates, and the odd-size forward-only case.
 */
import * as path from 'path';
import { UNet } from '../models/sd/unet';
import { Tensor, noGrad } from '../runtime/tensor';
import { ConformanceContext, registerConformance } from './registry';

/** Regular expression of the cross-attention query weights (the fixtures' trainable set). */
export const XATTN_Q = '(^|\\.)attn2\\.to_q\\.weight$';

async function run(ctx: ConformanceContext): Promise<Record<string, Tensor>> {
  const unet = await UNet.create(ctx.config, { device: ctx.device });
  try {
    await unet.model.loadWeights([path.join(ctx.dir, 'model.safetensors')]);
    const trainable = unet.model.setTrainable([XATTN_Q]);
    const ehs = ctx.io['input.encoder_hidden_states'].detach();
    ehs.requiresGrad = true;
    const { sample, intermediates } = await unet.forward(ctx.io['input.sample'], ctx.io['input.timesteps'], ehs, { intermediates: true });
    const loss = Tensor.op('mse', [sample, ctx.io['input.target']]);
    await loss.backward();
    const result: Record<string, Tensor> = { 'output.sample': sample.detach(), 'output.loss': loss.detach(), ...intermediates };
    const g = ehs.grad();
    if (g) result['grad.encoder_hidden_states'] = g;
    const params = unet.model.tensors(trainable);
    for (const name of trainable) {
      const pg = params[name].grad();
      if (pg) result[`grad.${name}`] = pg;
    }
    if (ctx.io['odd.input.sample']) {
      await noGrad(async () => {
        const odd = await unet.forward(ctx.io['odd.input.sample'], ctx.io['odd.input.timesteps'], ctx.io['odd.input.encoder_hidden_states']);
        result['odd.output.sample'] = odd.sample;
        // An integer input outside the `input.` prefix: the registry lists it as an exact output, so echo it.
        result['odd.input.timesteps'] = ctx.io['odd.input.timesteps'].clone();
      });
    }
    return result;
  } finally {
    unet.dispose();
  }
}

registerConformance('sd-unet', run);
