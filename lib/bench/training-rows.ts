/**
 * Training-step rows of `roundtrip bench` (issue #15): one optimizer step of the joint finetuning as the authors'
 * release runs it (2 micro-batches of batch 1, alternating per micro-batch: even L_sd + L_rec_txt, odd L_cap +
 * L_rec_img; per-model AdamW, UNet clipped), and the same step with only L_sd or only L_cap — each one native
 * call (JointStep.run) with one host synchronisation. The joint / SD-only ratio is printed under the table.
 */
import type { VocabularyBridge } from '../paper/bridge';
import { JointStep } from '../paper/joint/joint-step';
import { CaptionBatch, disposeCaptionBatch, encodeCaptions } from '../paper/joint/losses';
import { LossWeights, ObjectiveOptions } from '../paper/joint/objective';
import { trainablePatterns } from '../train/finetune/trainer';
import { deriveSeed } from '../image/random';
import type { FrozenDtype } from '../runtime/model';
import { Tensor, disposeAll } from '../runtime/tensor';
import { loadBertTokenizer } from '../tokenizers/load';
import { AdamW } from '../train/optimizer';
import type { BenchModels } from './models';
import { registerBenchRow } from './registry';

const CAPTION = 'a man riding a horse on a dirt road near a fence';
const MICRO = 2;

const STEPS: { name: string; weights: LossWeights; schedule: ObjectiveOptions['schedule']; frozenDtype?: FrozenDtype }[] = [
  { name: 'train.joint_step', weights: { cap: 1, recImg: 1, sd: 1, recTxt: 1 }, schedule: 'alternating-micro' },
  { name: 'train.sd_only_step', weights: { cap: 0, recImg: 0, sd: 1, recTxt: 0 }, schedule: 'summed' },
  { name: 'train.blip_only_step', weights: { cap: 1, recImg: 0, sd: 0, recTxt: 0 }, schedule: 'summed' },
  // The same steps with the frozen weights of all four models held in bf16 (finetune frozenDtype, an approximation).
  { name: 'train.joint_step.bf16', weights: { cap: 1, recImg: 1, sd: 1, recTxt: 1 }, schedule: 'alternating-micro', frozenDtype: 'bf16' },
  { name: 'train.sd_only_step.bf16', weights: { cap: 0, recImg: 0, sd: 1, recTxt: 0 }, schedule: 'summed', frozenDtype: 'bf16' },
];

for (const s of STEPS) {
  registerBenchRow({
    name: s.name,
    describe: `one optimizer step (${MICRO} micro-batches of 1, ${s.schedule}; cross-attention queries trainable; one native call)${s.frozenDtype ? `; frozen weights in ${s.frozenDtype}` : ''}`,
    maxReps: 5,
    setup: async (m: BenchModels) => {
      const sd = await m.sd();
      const blip = await m.blip();
      const blipVocab = blip.vocabSize;
      // Any valid CLIP → BLIP index serves for timing: the work does not depend on which BLIP id a CLIP id takes.
      const bridge: VocabularyBridge = {
        format: 'roundtrip-bridge-v1',
        clipVocabSize: sd.tokenizer.vocabSize,
        blipVocabSize: blipVocab,
        clipToBlip: Array.from({ length: sd.tokenizer.vocabSize }, (_, c) => c % blipVocab),
      };
      const blipTrainable = blip.model.setTrainable(trainablePatterns('blip', 'xattn-q'));
      const unetTrainable = sd.unet.model.setTrainable(trainablePatterns('unet', 'xattn-q'));
      // Held reduced after the trainable sets are chosen, as the trainer does; irreversible, so dispose() frees the
      // shared models and later rows load fp32 ones again.
      if (s.frozenDtype) await Promise.all([blip.model, sd.unet.model, sd.vae.model, sd.textEncoder].map((x) => x.setFrozenDtype(s.frozenDtype!)));
      const captions: CaptionBatch = encodeCaptions({ blip: loadBertTokenizer(m.blipDir), clip: sd.tokenizer }, [CAPTION]);
      const side = blip.imageSize;
      const blipImages = Tensor.randn([1, 3, side, side], 21);
      const sdSide = m.latentSize * sd.vaeFactor;
      const sdImages = Tensor.fromTypedArray(Float32Array.from({ length: 3 * sdSide * sdSide }, (_, i) => Math.sin(i * 0.37)), [1, 3, sdSide, sdSide]); // in [-1, 1]
      const step = JointStep.create(
        { blip, sd, bridge, visionTrainable: false },
        { weights: s.weights, schedule: s.schedule, temperature: 1, softMode: 'probs', recTxtMode: 'ddpm-step', labelSmoothing: 0.1, clipStartId: sd.tokenizer.sotId, clipEndId: sd.tokenizer.eotId, clipPadId: sd.tokenizer.padId },
        {
          optimizers: {
            blip: new AdamW(blip.model.tensors(blipTrainable), { lr: 1e-5, weightDecay: 0 }),
            unet: new AdamW(sd.unet.model.tensors(unetTrainable), { lr: 1e-5, weightDecay: 0.01 }),
          },
          clipMode: 'per-model',
          clip: 1,
          blipClip: 0,
          unetClip: 1,
        },
      );
      let k = 0;
      return {
        run: async () => {
          const seeds = Array.from({ length: MICRO }, (_, i) => deriveSeed(0, 3, k, i));
          const stats = await step.run(seeds.map(() => ({ blipImages, sdImages, captions })), { step: k++, lr: 1e-5, seeds });
          return { hostSyncs: 1, forwardMs: stats.timings.forwardMs, backwardMs: stats.timings.backwardMs, updateMs: stats.timings.updateMs };
        },
        dispose: () => {
          step.dispose();
          disposeCaptionBatch(captions);
          disposeAll([blipImages, sdImages]);
          blip.model.setTrainable([]);
          sd.unet.model.setTrainable([]);
          if (s.frozenDtype) m.dispose();
        },
      };
    },
  });
}
