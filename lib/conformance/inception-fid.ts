/**
 * Conformance runner for `inception-fid/`: torch-fidelity's FID InceptionV3 with the fixture's formula
 * weights (case.json → weights.formula), generated in TypeScript under the real names
 * (real-weights-layout.json) and installed without a weight file.
 */
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError } from '../errors';
import { Tensor, noGrad } from '../runtime/tensor';
import { InceptionModel, inceptionFormulaWeights, readInceptionLayout } from '../models/inception';
import { registerConformance, ConformanceContext } from './registry';

async function run(ctx: ConformanceContext): Promise<Record<string, Tensor>> {
  const formula = ctx.caseJson?.weights?.formula;
  if (typeof formula?.tag !== 'string') throw new RoundtripError(`${ctx.dir}/case.json: weights.formula.tag is missing`);
  const model = await InceptionModel.create({ device: ctx.device });
  try {
    const layoutFile = path.join(ctx.dir, 'real-weights-layout.json');
    const layout = fs.existsSync(layoutFile) ? readInceptionLayout(layoutFile) : model.layout();
    await model.setWeights(inceptionFormulaWeights(formula.tag, layout, { convGain: formula.conv_gain, bnBiasMean: formula.bn_bias_mean }), true);
    const wanted = Object.keys(ctx.caseJson.tensors ?? {});
    const result: Record<string, Tensor> = {};
    const ids = Object.keys(ctx.io)
      .filter((k) => /^input\.image_[^.]+$/.test(k))
      .map((k) => k.slice('input.image_'.length));
    await noGrad(async () => {
      for (const id of ids) {
        const prefix = `output.image_${id}.`;
        const mine = wanted.filter((k) => k.startsWith(prefix)).map((k) => k.slice(prefix.length));
        const out = await model.forward(ctx.io[`input.image_${id}`], {
          resized: mine.includes('resized'),
          normalized: mine.includes('normalized'),
          blockMeans: mine.some((k) => k.startsWith('block_mean.')),
          blocks: mine.filter((k) => k.startsWith('block.')).map((k) => k.slice('block.'.length)),
        });
        for (const [k, t] of Object.entries(out)) result[prefix + k] = t;
      }
    });
    return result;
  } finally {
    model.dispose();
  }
}

registerConformance('inception-fid', run);
