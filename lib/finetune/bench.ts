/**
 * `bench finetune`: throughput and peak RSS of the joint step against an SD-only step (L_sd) and a
 * BLIP-only step (L_cap) on the same batch, same trainable sets and optimizer. The paper reports the
 * joint step at about 1.4× the cost of a single-model step.
 */
import { RoundtripError, expectInteger } from '../errors';
import { Tensor, disposeAll } from '../tensor';
import { AdamW } from '../train/optimizer';
import { deriveSeed } from '../image/random';
import { disposeCaptionBatch, encodeCaptions } from './losses';
import { LossWeights, ObjectiveOptions, jointObjective } from './objective';
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
  samplesPerSecond: number;
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

/** Runs the three variants on one prefetched batch and formats the table. */
export async function benchFinetune(opts: BenchOptions): Promise<BenchResult> {
  opts = withModelImageSizes(opts);
  const steps = expectInteger('steps', opts.steps ?? 5, { min: 1 });
  const warmup = expectInteger('warmup', opts.warmup ?? 1, { min: 0 });
  const items = readAnnotations(opts.annotations, opts.images, opts.limit);
  if (items.length < opts.batchSize) throw new RoundtripError(`bench: ${items.length} items, fewer than batchSize ${opts.batchSize}`);
  const m = await loadModels({ ...opts, bridge: opts.bridge }, items);
  const gen = epochBatches(items, { ...opts, epoch: 0, fromPosition: 0, concurrency: opts.prefetch });
  const first = await gen.next();
  await gen.return(undefined);
  if (first.done) throw new RoundtripError('bench: no batch');
  const mb = first.value;
  const captions = encodeCaptions({ blip: m.bert, clip: m.sd.tokenizer }, mb.items.map((i) => i.caption), { prompt: opts.prompt });
  const params: Record<string, Tensor> = {};
  for (const [n, t] of Object.entries(m.blip.model.tensors(m.blipTrainable))) params[`blip:${n}`] = t;
  for (const [n, t] of Object.entries(m.sd.unet.model.tensors(m.unetTrainable))) params[`unet:${n}`] = t;
  const optimizer = new AdamW(params, { lr: opts.lr, weightDecay: opts.weightDecay });
  const rows: BenchRow[] = [];
  try {
    for (const v of VARIANTS) {
      const objective: ObjectiveOptions = {
        weights: v.weights,
        schedule: 'summed',
        temperature: opts.temperature,
        softMode: opts.softMode,
        recTxtMode: opts.recTxtMode,
        labelSmoothing: opts.labelSmoothing,
        clipStartId: m.sd.tokenizer.sotId,
        clipEndId: m.sd.tokenizer.eotId,
        clipPadId: m.sd.tokenizer.padId,
      };
      let peak = 0;
      let seconds = 0;
      for (let s = 0; s < warmup + steps; s++) {
        const t0 = process.hrtime.bigint();
        optimizer.zeroGrad();
        const { total, terms } = await jointObjective({ blip: m.blip, sd: m.sd, bridge: m.bridge, visionTrainable: false }, { blipImages: mb.blipImages, sdImages: mb.sdImages, captions }, objective, s, deriveSeed(opts.seed, s));
        await total.backward();
        disposeAll([total, Object.values(terms)]);
        optimizer.clipGradNorm(opts.clip);
        await optimizer.step();
        if (s >= warmup) seconds += Number(process.hrtime.bigint() - t0) / 1e9;
        peak = Math.max(peak, process.memoryUsage().rss / 2 ** 20);
      }
      const perStep = seconds / steps;
      rows.push({ name: v.name, stepsPerSecond: 1 / perStep, samplesPerSecond: opts.batchSize / perStep, peakRssMB: peak, ratio: 0 });
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
    `bench finetune: device ${opts.device}, batch ${opts.batchSize}, SD ${opts.sdSize}², BLIP ${opts.blipSize}², ${steps} timed steps`,
    '| step | steps/s | samples/s | peak RSS (MB) | time / cheapest single |',
    '| --- | --- | --- | --- | --- |',
    ...rows.map((r) => `| ${r.name} | ${r.stepsPerSecond.toFixed(3)} | ${r.samplesPerSecond.toFixed(2)} | ${r.peakRssMB.toFixed(0)} | ${r.ratio.toFixed(2)}× |`),
    `joint / single (mean of SD-only and BLIP-only step time): ${jointOverSingle.toFixed(2)}× (the paper reports ≈ 1.4×)`,
  ];
  return { rows, jointOverSingle, text: lines.join('\n') + '\n', device: opts.device, batchSize: opts.batchSize };
}
