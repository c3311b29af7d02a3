/**
 * Conformance runner for `sd-sampling/`: the StableDiffusionPipeline loop with given embeddings, CFG, DDIM or
 * DDPM (recorded noise replayed), then the VAE decode of latents / scaling_factor.
 */
import { RoundtripError } from '../errors';
import { schedulerName } from '../models/sd/schedulers';
import { Tensor, noGrad } from '../runtime/tensor';
import { ConformanceContext, registerConformance } from './registry';
import { loadCaseModels } from './sd-common';

async function run(ctx: ConformanceContext): Promise<Record<string, Tensor>> {
  const { unet, vae } = await loadCaseModels(ctx);
  const out: Record<string, Tensor> = {};
  try {
    const guidance = Number(ctx.config?.guidance_scale ?? ctx.caseJson.guidance_scale);
    if (!Number.isFinite(guidance)) throw new RoundtripError(`${ctx.dir}: guidance_scale is missing`);
    await noGrad(async () => {
      for (const [name, spec] of Object.entries<any>(ctx.config?.schedulers ?? {})) {
        const r = await unet.sample(
          {
            latents: ctx.io['input.initial_latents'],
            condEmbeds: ctx.io['input.cond_embeds'],
            uncondEmbeds: ctx.io['input.uncond_embeds'],
            varianceNoise: ctx.io[`${name}.variance_noise`],
          },
          { scheduler: schedulerName(spec.class), schedulerConfig: spec.config, steps: spec.num_inference_steps, guidance, record: true },
        );
        out[`${name}.timesteps`] = r.timesteps;
        if (r.latentsSteps) out[`${name}.latents`] = r.latentsSteps;
        if (r.noisePredUncond) out[`${name}.noise_pred_uncond`] = r.noisePredUncond;
        if (r.noisePredText) out[`${name}.noise_pred_text`] = r.noisePredText;
        if (r.noisePred) out[`${name}.noise_pred`] = r.noisePred;
        r.varianceNoise?.dispose();
        out[`${name}.image`] = (await vae.decode(r.latents, { scaled: true })).image;
        r.latents.dispose();
      }
    });
    return out;
  } finally {
    unet.dispose();
    vae.dispose();
  }
}

registerConformance('sd-sampling', run);
