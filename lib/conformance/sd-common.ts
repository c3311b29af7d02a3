/**
 * Shared loading for the SD cases that reuse `sd-unet/` and `sd-vae/` weights (case.json → weights).
 */
import * as path from 'path';
import { RoundtripError } from '../errors';
import { UNet } from '../models/sd/unet';
import { VAE } from '../models/sd/vae';
import { readJsonFile } from '../json';

function weightsPath(ctx: { dir: string; caseJson: any }, which: 'unet' | 'vae'): string {
  const rel = ctx.caseJson?.weights?.[which];
  if (typeof rel !== 'string') throw new RoundtripError(`${ctx.dir}/case.json: weights.${which} is missing`);
  return path.resolve(ctx.dir, rel);
}


/** Loads the UNet and VAE a case names, with their config.json beside each weights file. */
export async function loadCaseModels(ctx: { dir: string; caseJson: any; device: string }): Promise<{ unet: UNet; vae: VAE }> {
  const uw = weightsPath(ctx, 'unet');
  const vw = weightsPath(ctx, 'vae');
  const unet = await UNet.create(readJsonFile(path.join(path.dirname(uw), 'config.json')), { device: ctx.device });
  try {
    await unet.model.loadWeights([uw]);
    const vae = await VAE.create(readJsonFile(path.join(path.dirname(vw), 'config.json')), { device: ctx.device });
    try {
      await vae.model.loadWeights([vw]);
    } catch (err) {
      vae.dispose();
      throw err;
    }
    return { unet, vae };
  } catch (err) {
    unet.dispose();
    throw err;
  }
}
