/**
 * Settings of `roundtrip demo`: the default run (sized to finish in about ten minutes on two CPU cores)
 * and `--quick` (tiny counts for the test suite), with the checks that turn bad flags into clear errors.
 */
import * as fs from 'fs';
import * as path from 'path';
import { ProgressStream } from '../progress';
import { RoundtripError, expectBoolean, expectInteger, expectNumber, expectString } from '../errors';

export interface DemoOptions {
  /** The report folder (also holds the run folders whose images the galleries show). */
  out: string;
  /** World and fallback-model cache; default `<out>/cache`. Reused between runs. */
  cache?: string;
  /** Folder with world-blip/, world-sd/, world-clip/ (default: the package's weights/). */
  weights?: string;
  /** BERT/CLIP vocabularies for the fallback pretraining (default: looked up in `weights`). */
  vocab?: string;
  /** Held-out test images reranked and evaluated. */
  items: number;
  /** Candidates per item. */
  k: number;
  /** Joint finetuning steps. */
  finetuneSteps: number;
  /** Finetuning batch size. */
  batchSize: number;
  /** Finetuning learning rate (AdamW; default the paper’s 1e-4). */
  lr: number;
  /** Training images of the world the finetuning draws from (5 captions each). */
  trainImages: number;
  /** Stable Diffusion sampling steps (DDIM). */
  sdSteps: number;
  /** Classifier-free guidance scale. */
  guidance: number;
  /** Random-baseline picks per item. */
  repeats: number;
  /** Seed of sampling, reranking and finetuning (the world's own seed comes from the models' TRAINING.json). */
  seed: number;
  device: string;
  /** Recorded in the report. */
  quick: boolean;
  /** No progress bars or log lines. */
  quiet?: boolean;
  /** Where progress and stage lines go (default stderr). */
  stream?: ProgressStream;
}

/**
 * The full demo. Measured with the shipped world models on 2 CPU cores shared with other jobs: 187 s
 * (load average ~5) and 634 s under heavy contention (load ~7, with garbage quick-pretrained models,
 * whose captions always run to the length limit); each run's timing table records its own.
 */
export const DEFAULT_DEMO: Omit<DemoOptions, 'out'> = {
  items: 32,
  k: 5,
  finetuneSteps: 40,
  batchSize: 8,
  lr: 1e-4,
  trainImages: 200,
  sdSteps: 15,
  guidance: 4,
  repeats: 5,
  seed: 0,
  device: 'cpu',
  quick: false,
};

/** `--quick`: the whole method on a handful of items, for tests and smoke runs (well under a minute). */
export const QUICK_DEMO: Omit<DemoOptions, 'out'> = {
  ...DEFAULT_DEMO,
  items: 3,
  k: 2,
  finetuneSteps: 2,
  batchSize: 4,
  trainImages: 8,
  sdSteps: 2,
  repeats: 2,
  quick: true,
};

/** Checks every option (messages name the CLI flag) and resolves the folders. */
export function checkDemoOptions(o: DemoOptions): DemoOptions & { cache: string } {
  const out = path.resolve(expectString('--out', o.out));
  const cache = path.resolve(o.cache === undefined ? path.join(out, 'cache') : expectString('--cache', o.cache));
  if (o.weights !== undefined && !fs.existsSync(expectString('--weights', o.weights))) throw new RoundtripError(`--weights: ${path.resolve(o.weights)} does not exist`);
  if (o.vocab !== undefined) expectString('--vocab', o.vocab);
  expectInteger('--items', o.items, { min: 1, max: 10000 });
  expectInteger('--k', o.k, { min: 2, max: 64 });
  expectInteger('--finetune-steps', o.finetuneSteps, { min: 1 });
  expectInteger('--batch-size', o.batchSize, { min: 1, max: 256 });
  expectNumber('--lr', o.lr, { min: 0, exclusiveMin: true });
  expectInteger('--train-images', o.trainImages, { min: 1, max: 100000 });
  expectInteger('--sd-steps', o.sdSteps, { min: 1, max: 1000 });
  expectNumber('--guidance', o.guidance, { min: 0 });
  expectInteger('--repeats', o.repeats, { min: 1, max: 100 });
  expectInteger('--seed', o.seed, { min: 0, max: 0xffffffff });
  expectString('--device', o.device);
  expectBoolean('--quick', o.quick);
  if (o.quiet !== undefined) expectBoolean('quiet', o.quiet);
  return { ...o, out, cache };
}
