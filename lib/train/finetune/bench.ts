/**
 * `bench finetune`: throughput, minor page faults and peak RSS of the joint step against an SD-only step (L_sd)
 * and a BLIP-only step (L_cap) on the same batch, same trainable sets and optimizers — each step one native call
 * (JointStep.run) with one host synchronisation. The paper reports the joint step at about 1.4× the cost of a
 * single-model step (a GPU figure at batch 8).
 */
import { OptionNames, RoundtripError, expectInteger, optionName } from '../../errors';
import { disposeAll } from '../../runtime/tensor';
import { AdamW } from '../optimizer';
import { deriveSeed } from '../../image/random';
import { disposeCaptionBatch, encodeCaptions } from '../../paper/joint/losses';
import { LossWeights, ObjectiveOptions } from '../../paper/joint/objective';
import { JointStep } from '../../paper/joint/joint-step';
import { FinetuneConfig, loadModels, withModelImageSizes } from './trainer';
import { epochBatches, readAnnotations } from './data';

export interface BenchOptions extends FinetuneConfig {
  /** Timed steps per variant (default 5). */
  steps?: number;
  /** Untimed steps first (default 1). */
  warmup?: number;
}

export interface BenchRow {
  name: 'joint' | 'sd-only' | 'blip-only';
  stepsPerSecond: number;
  /** Median milliseconds per optimizer step. */
  msPerStep: number;
  samplesPerSecond: number;
  /** Minor page faults per step (mean over the timed steps). */
  minorFaultsPerStep: number;
  /** Device-to-host synchronisations per step (the step's one read of its numbers). */
  hostSyncsPerStep: number;
  /** Peak RSS over the variant's steps, MB. */
  peakRssMB: number;
  /** Seconds per step relative to the cheaper single-model step. */
  ratio: number;
}

export interface BenchResult {
  rows: BenchRow[];
  /** Joint step time / mean single-model step time. */
  jointOverSingle: number;
  text: string;
  device: string;
  batchSize: number;
}

const VARIANTS: { name: BenchRow['name']; weights: LossWeights }[] = [
  { name: 'joint', weights: { cap: 1, recImg: 1, sd: 1, recTxt: 1 } },
  { name: 'sd-only', weights: { cap: 0, recImg: 0, sd: 1, recTxt: 0 } },
  { name: 'blip-only', weights: { cap: 1, recImg: 0, sd: 0, recTxt: 0 } },
];

/** Runs the three variants on one prefetched batch and formats the table (`names`: how errors name `steps`/`warmup`). */
export async function benchFinetune(opts: BenchOptions, names?: OptionNames): Promise<BenchResult> {
  const steps = expectInteger(optionName(names, 'steps'), opts.steps ?? 5, { min: 1 });
  const warmup = expectInteger(optionName(names, 'warmup'), opts.warmup ?? 1, { min: 0 });
  opts = withModelImageSizes(opts);
  const items = readAnnotations(opts.annotations, opts.images, opts.limit);
  if (items.length < opts.batchSize) throw new RoundtripError(`bench: ${items.length} items, fewer than batchSize ${opts.batchSize}`);
  const m = await loadModels({ ...opts, bridge: opts.bridge }, items);
  const gen = epochBatches(items, { ...opts, epoch: 0, fromPosition: 0, concurrency: opts.prefetch });
  const first = await gen.next();
  await gen.return(undefined);
  if (first.done) throw new RoundtripError('bench: no batch');
  const mb = first.value;
  const captions = encodeCaptions({ blip: m.bert, clip: m.sd.tokenizer }, mb.items.map((i) => i.caption), { prompt: opts.prompt });
  const prefixed = (model: string, t: Record<string, unknown>) => Object.fromEntries(Object.entries(t).map(([n, v]) => [`${model}:${n}`, v])) as any;
  const adam = (weightDecay: number) => ({ lr: opts.lr, beta1: opts.beta1, beta2: opts.beta2, eps: opts.eps, weightDecay });
  const optimizers = {
    blip: m.blipTrainable.length ? new AdamW(prefixed('blip', m.blip.model.tensors(m.blipTrainable)), adam(opts.blipWeightDecay ?? opts.weightDecay)) : undefined,
    unet: m.unetTrainable.length ? new AdamW(prefixed('unet', m.sd.unet.model.tensors(m.unetTrainable)), adam(opts.unetWeightDecay ?? opts.weightDecay)) : undefined,
  };
  const rows: BenchRow[] = [];
  try {
    for (const v of VARIANTS) {
      const objective: ObjectiveOptions = {
        weights: v.weights,
        schedule: 'summed',
        temperature: opts.temperature,
        softMode: opts.softMode,
        softFraming: opts.softFraming,
        recTxtMode: opts.recTxtMode,
        recTxtNormalize: opts.recTxtNormalize,
        labelSmoothing: opts.labelSmoothing,
        clipStartId: m.sd.tokenizer.sotId,
        clipEndId: m.sd.tokenizer.eotId,
        clipPadId: m.sd.tokenizer.padId,
      };
      const step = JointStep.create({ blip: m.blip, sd: m.sd, bridge: m.bridge, visionTrainable: false }, objective, {
        optimizers,
        clipMode: opts.clipMode,
        clip: opts.clip,
        blipClip: opts.blipClip,
        unetClip: opts.unetClip,
      });
      let peak = 0;
      const times: number[] = [];
      let faults = 0;
      try {
        for (let s = 0; s < warmup + steps; s++) {
          const f0 = process.resourceUsage().minorPageFault;
          const t0 = process.hrtime.bigint();
          const seeds = Array.from({ length: opts.gradAccum }, (_, k) => deriveSeed(opts.seed, 3, s, k));
          await step.run(seeds.map(() => ({ blipImages: mb.blipImages, sdImages: mb.sdImages, captions })), { step: s, lr: opts.lr, seeds });
          if (s >= warmup) {
            times.push(Number(process.hrtime.bigint() - t0) / 1e6);
            faults += process.resourceUsage().minorPageFault - f0;
          }
          peak = Math.max(peak, process.memoryUsage().rss / 2 ** 20);
        }
      } finally {
        step.dispose();
      }
      const ms = [...times].sort((x, y) => x - y)[Math.floor(times.length / 2)];
      rows.push({ name: v.name, stepsPerSecond: 1000 / ms, msPerStep: ms, samplesPerSecond: (opts.batchSize * opts.gradAccum * 1000) / ms, minorFaultsPerStep: faults / steps, hostSyncsPerStep: 1, peakRssMB: peak, ratio: 0 });
    }
  } finally {
    disposeCaptionBatch(captions);
    disposeAll([mb.blipImages, mb.sdImages]);
    m.blip.dispose();
    m.sd.dispose();
  }
  const single = Math.min(1 / rows[1].stepsPerSecond, 1 / rows[2].stepsPerSecond);
  for (const r of rows) r.ratio = 1 / r.stepsPerSecond / single;
  const jointOverSingle = 1 / rows[0].stepsPerSecond / ((1 / rows[1].stepsPerSecond + 1 / rows[2].stepsPerSecond) / 2);
  const lines = [
    `bench finetune: device ${opts.device}, batch ${opts.batchSize} × accumulation ${opts.gradAccum}, SD ${opts.sdSize}², BLIP ${opts.blipSize}², median of ${steps} timed steps`,
    '| step | ms/step | steps/s | samples/s | minor faults/step | host syncs/step | peak RSS (MB) | time / cheapest single |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
    ...rows.map(
      (r) =>
        `| ${r.name} | ${r.msPerStep.toFixed(0)} | ${r.stepsPerSecond.toFixed(3)} | ${r.samplesPerSecond.toFixed(2)} | ${r.minorFaultsPerStep.toFixed(0)} | ${r.hostSyncsPerStep} | ${r.peakRssMB.toFixed(0)} | ${r.ratio.toFixed(2)}× |`,
    ),
    `joint / single (mean of SD-only and BLIP-only step time): ${jointOverSingle.toFixed(2)}× (the paper reports ≈ 1.4×)`,
  ];
  return { rows, jointOverSingle, text: lines.join('\n') + '\n', device: opts.device, batchSize: opts.batchSize };
}
