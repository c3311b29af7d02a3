/**
 * Conformance runner for `sd-vae/`: AutoencoderKL encode (mean, logvar, std), posterior sample with the given
 * noise, decode, the decoder loss and its gradient wrt z, and encoder/decoder intermediates.
 */
import * as path from 'path';
import { VAE } from '../models/sd/vae';
import { Tensor, noGrad } from '../runtime/tensor';
import { ConformanceContext, registerConformance } from './registry';

/** Runs the sd-vae case on an already loaded VAE. */
export async function vaeCaseOutputs(vae: VAE, io: Record<string, Tensor>): Promise<Record<string, Tensor>> {
  vae.model.setTrainable([]);
  const result: Record<string, Tensor> = {};
  await noGrad(async () => {
    const post = await vae.encode(io['input.image'], { noise: io['input.sample_noise'], intermediates: true });
    Object.assign(result, post.intermediates, {
      'output.latent_dist.mean': post.mean,
      'output.latent_dist.logvar': post.logvar,
      'output.latent_dist.std': post.std,
      'output.latent_sample': post.sample,
      'output.latent_sample_scaled': post.sampleScaled,
    });
  });
  const z = io['input.z'].detach();
  z.requiresGrad = true;
  const dec = await vae.decode(z, { intermediates: true });
  const loss = Tensor.op('mse', [dec.image, io['input.target_image']]);
  await loss.backward();
  Object.assign(result, dec.intermediates, { 'output.decoded': dec.image.detach(), 'output.loss': loss.detach() });
  const g = z.grad();
  if (g) result['grad.z'] = g;
  return result;
}

async function run(ctx: ConformanceContext): Promise<Record<string, Tensor>> {
  const vae = await VAE.create(ctx.config, { device: ctx.device });
  try {
    await vae.model.loadWeights([path.join(ctx.dir, 'model.safetensors')]);
    return await vaeCaseOutputs(vae, ctx.io);
  } finally {
    vae.dispose();
  }
}

registerConformance('sd-vae', run);
