/**
 * Conformance runner for `vit-dino-384/`: DINO at image sizes other than the training size. The
 * `output.dino.*` outputs come from the original-layout weights (model-dino-original.safetensors, fused
 * qkv split in TS) with the original code's LayerNorm eps and its "+0.1" interpolation step; the
 * `output.hf.*` ones from config.json + model.safetensors with transformers' step.
 */
import * as path from 'path';
import { NativeModel } from '../runtime/model';
import { Tensor, noGrad } from '../runtime/tensor';
import { VitModel, PosInterpolation } from '../models/vit';
import { registerConformance, ConformanceContext } from './registry';

async function run(ctx: ConformanceContext): Promise<Record<string, Tensor>> {
  const hf = await NativeModel.create('vit', ctx.config, { device: ctx.device });
  let dino: VitModel | undefined;
  try {
    await hf.loadWeights([path.join(ctx.dir, 'model.safetensors')]);
    dino = await VitModel.loadDinoOriginal(path.join(ctx.dir, 'model-dino-original.safetensors'), { config: ctx.config, device: ctx.device });
    const cases = Object.keys(ctx.io)
      .filter((k) => k.startsWith('input.pixel_values.'))
      .map((k) => k.slice('input.pixel_values.'.length));
    const result: Record<string, Tensor> = {};
    await noGrad(async () => {
      for (const c of cases) {
        const px = ctx.io[`input.pixel_values.${c}`];
        const runs: [string, NativeModel<'vit'>, PosInterpolation][] = [
          ['dino', dino!.native, 'dino'],
          ['hf', hf, 'hf'],
        ];
        for (const [tag, model, interpolation] of runs) {
          const out = await model.call('forward', { pixel_values: px }, { interpolation });
          for (const k of ['pos_embed', 'last_hidden_state', 'cls'] as const) result[`output.${tag}.${c}.${k}`] = out[k];
        }
        result[`output.diff.${c}.cls_dino_minus_hf`] = result[`output.dino.${c}.cls`].sub(result[`output.hf.${c}.cls`]);
        result[`output.diff.${c}.pos_embed_dino_minus_hf`] = result[`output.dino.${c}.pos_embed`].sub(result[`output.hf.${c}.pos_embed`]);
      }
    });
    return result;
  } finally {
    hf.dispose();
    dino?.dispose();
  }
}

registerConformance('vit-dino-384', run);
