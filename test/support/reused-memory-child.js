'use strict';
/**
 * Child of test/memory-cache.test.ts: two native joint steps on the tiny models (argv: blipDir sdDir bridgeJson),
 * printing their losses, a hash of the trained weights and the large-block cache's counters as one JSON line.
 * Runs on the compiled dist/ (as the CLI does), in its own process so that ROUNDTRIP_CACHE_PERTURB and
 * MALLOC_PERTURB_ take effect from the first allocation.
 */
const crypto = require('crypto');
const path = require('path');
const dist = (p) => require(path.join(__dirname, '..', '..', 'dist', p));
const { Blip } = dist('models/blip');
const { StableDiffusionPipeline } = dist('models/sd/pipeline');
const { loadBridge } = dist('paper/bridge');
const { loadBertTokenizer } = dist('tokenizers/load');
const { Tensor, disposeAll } = dist('runtime/tensor');
const { AdamW } = dist('train/optimizer');
const { encodeCaptions, presetWeights, trainablePatterns, JointStep } = dist('train/finetune');
const { native } = dist('runtime/native');

async function main() {
  const [blipDir, sdDir, bridgeJson] = process.argv.slice(2);
  const blip = await Blip.load(blipDir);
  const sd = await StableDiffusionPipeline.load(sdDir);
  const bridge = loadBridge(bridgeJson);
  const params = {
    blip: blip.model.tensors(blip.model.setTrainable(trainablePatterns('blip', 'xattn-q'))),
    unet: sd.unet.model.tensors(sd.unet.model.setTrainable(trainablePatterns('unet', 'xattn-q'))),
  };
  const captions = encodeCaptions({ blip: loadBertTokenizer(blipDir), clip: sd.tokenizer }, ['A dog runs on the grass.', 'two red buses parked near a building']);
  const objective = {
    weights: presetWeights('joint'), schedule: 'alternating-micro', temperature: 1, softMode: 'probs', recTxtMode: 'ddpm-step',
    labelSmoothing: 0.1, clipStartId: 49406, clipEndId: 49407, clipPadId: 49407,
  };
  const adam = { lr: 2e-3, weightDecay: 0.01 };
  const step = JointStep.create({ blip, sd, bridge, visionTrainable: false }, objective, {
    optimizers: { blip: new AdamW(params.blip, adam), unet: new AdamW(params.unet, adam) }, clipMode: 'global', clip: 1,
  });
  const images = { blipImages: Tensor.randn([2, 3, 64, 64], 11), sdImages: Tensor.randn([2, 3, 64, 64], 12).mul(0.5), captions };
  const losses = [];
  for (let s = 0; s < 2; s++) {
    const seeds = [100 + 2 * s, 101 + 2 * s];
    const stats = await step.run(seeds.map(() => images), { step: s, lr: adam.lr, seeds });
    losses.push(stats.loss, ...Object.keys(stats.terms).sort().map((t) => stats.terms[t]), stats.gradNorm.total);
  }
  const hash = crypto.createHash('sha256');
  for (const group of [params.blip, params.unet]) for (const n of Object.keys(group).sort()) hash.update(Buffer.from(group[n].toFloat32Array().buffer));
  const { hits, misses } = native().memoryStats();
  process.stdout.write(JSON.stringify({ losses, weights: hash.digest('hex'), hits, misses }) + '\n');
  step.dispose();
  disposeAll([images.blipImages, images.sdImages]);
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack ? err.stack : err) + '\n');
  process.exitCode = 1;
});
