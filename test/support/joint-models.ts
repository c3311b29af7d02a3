/**
 * Tiny BLIP + SD models for the joint step's tests, and the joint objective composed from the public loss-term
 * calls (what lib/train/finetune composed before the step was native): the reference the native step is held to.
 */
import { Blip } from '../../lib/models/blip';
import { StableDiffusionPipeline } from '../../lib/models/sd/pipeline';
import { VocabularyBridge } from '../../lib/paper/bridge';
import { loadBertTokenizer } from '../../lib/tokenizers/load';
import { Tensor, disposeAll, noGrad } from '../../lib/runtime/tensor';
import {
  CaptionBatch,
  JointBatch,
  LossTerm,
  ObjectiveOptions,
  activeTerms,
  captionLoss,
  disposeCaptionBatch,
  encodeCaptions,
  encodeLatents,
  reconstructImageLoss,
  reconstructTextLoss,
  sdDenoise,
  softCaption,
  trainablePatterns,
} from '../../lib/train/finetune';

export interface JointModels {
  blip: Blip;
  sd: StableDiffusionPipeline;
  bridge: VocabularyBridge;
  /** The query projections of both models, `blip:`/`unet:`-prefixed. */
  params: Record<string, Tensor>;
  captions: CaptionBatch;
}

export async function loadJointModels(blipDir: string, sdDir: string, captionTexts: string[], bridge: VocabularyBridge): Promise<JointModels> {
  const blip = await Blip.load(blipDir);
  const sd = await StableDiffusionPipeline.load(sdDir);
  const params: Record<string, Tensor> = {};
  for (const [n, t] of Object.entries(blip.model.tensors(blip.model.setTrainable(trainablePatterns('blip', 'xattn-q'))))) params[`blip:${n}`] = t;
  for (const [n, t] of Object.entries(sd.unet.model.tensors(sd.unet.model.setTrainable(trainablePatterns('unet', 'xattn-q'))))) params[`unet:${n}`] = t;
  const captions = encodeCaptions({ blip: loadBertTokenizer(blipDir), clip: sd.tokenizer }, captionTexts);
  return { blip, sd, bridge, params, captions };
}

export function free(m: JointModels): void {
  disposeCaptionBatch(m.captions);
  m.blip.dispose();
  m.sd.dispose();
}

/** The objective as a composition of the public loss-term calls, on the native step's seeds. */
export async function composed(m: JointModels, batch: JointBatch, opts: ObjectiveOptions, step: number, micro: number, seed: number): Promise<{ total: Tensor; terms: Partial<Record<LossTerm, Tensor>> }> {
  const { blip, sd, bridge } = m;
  const terms = activeTerms(opts, step, micro);
  const out: Partial<Record<LossTerm, Tensor>> = {};
  const imageEmbeds = terms.includes('cap') || terms.includes('recImg') ? (await noGrad(() => blip.vision(batch.blipImages))).lastHiddenState : undefined;
  const latents = terms.some((t) => t !== 'cap') ? await encodeLatents(sd, batch.sdImages, seed) : undefined;
  if (terms.includes('cap')) out.cap = await captionLoss(blip, { imageEmbeds }, batch.captions, { labelSmoothing: opts.labelSmoothing });
  if (terms.includes('recImg')) {
    const P = await softCaption(blip, { imageEmbeds }, batch.captions, bridge, { temperature: opts.temperature, mode: opts.softMode });
    out.recImg = await reconstructImageLoss(sd, batch.sdImages, P, { seed: seed + 1, latents });
    P.dispose();
  }
  if (terms.includes('sd') || terms.includes('recTxt')) {
    const d = await sdDenoise(sd, batch.sdImages, batch.captions, { seed: seed + 2, latents });
    if (terms.includes('sd')) out.sd = d.loss;
    if (terms.includes('recTxt')) out.recTxt = await reconstructTextLoss(sd, blip, batch.sdImages, batch.captions, { mode: opts.recTxtMode, denoised: d, labelSmoothing: opts.labelSmoothing, seed: seed + 3 });
  }
  let total: Tensor | undefined;
  for (const t of terms) total = total ? total.add(out[t]!.mul(opts.weights[t])) : out[t]!.mul(opts.weights[t]);
  disposeAll([imageEmbeds, latents]);
  return { total: total!, terms: out };
}
