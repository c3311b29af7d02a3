/**
 * `roundtrip experiment`: the paper's finetuning claim measured against baseline arms on the built-in
 * world, with the same data, steps, seeds and evaluation for every arm:
 *
 *   (a) no finetuning · (b) L_cap only · (c) L_sd only · (d) L_cap + L_sd (both task losses, no
 *   reconstruction) · (e) Eq. 5 (all four terms) · (f) Appendix I: Eq. 5 with each reconstruction loss
 *   updating only its own model (f-own) or only the other model (f-other).
 *
 * Each trained arm runs once per seed (the seed drives data order, augmentation and diffusion draws);
 * every model pair is evaluated on the same held-out test images with the same sampling noise. Every
 * number is reported with a 95 % interval (bootstrap over test items and seeds, paired between arms) and
 * each arm's difference to (d) and to (a); a difference whose interval includes 0 is reported as "no
 * significant difference". Finished runs are kept (runs/<arm>/seed-<k>/eval.json), so an interrupted
 * experiment resumes where it stopped.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError, expectBoolean, expectInteger, expectNumber, expectOneOf, expectString } from '../../errors';
import { buildBridge, loadBridge, saveBridge } from '../bridge';
import { resolveWorldModels } from '../../demo/models';
import { loadClipTextEncoder } from '../../metrics/eval/text-embeddings';
import { FinetuneConfig, TRAINABLE_SETS, TrainableSet, finetune, resolveConfig } from '../../train/finetune/trainer';
import { LossWeights, ReconstructionRoutes } from '../joint/objective';
import { RECIPES, RecipeName, recipeLines } from '../../train/finetune/recipes';
import { writeFileAtomicSync } from '../../fsutil';
import { Blip } from '../../models/blip';
import { StableDiffusionPipeline } from '../../models/sd/pipeline';
import { ProgressStream, createProgress } from '../../progress';
import { loadBertTokenizer } from '../../tokenizers/load';
import { WORLD_FILES, writeWorld } from '../../world';
import { EvalSettings, METRICS, Sample, evaluateBlip, evaluateLosses, evaluateSd } from './evaluate';
import { ArmStats, Difference, MetricSamples, armInterval, bootstrapPlan, formatInterval, pairedDifference, verdict } from './stats';
import { forestPlotSvg } from './plot';

export * from './stats';
export { METRICS } from './evaluate';
export type { MetricDef, Sample } from './evaluate';

export const ARM_NAMES = ['a', 'b', 'c', 'd', 'e', 'f-own', 'f-other'] as const;
export type ArmName = (typeof ARM_NAMES)[number];

export interface ArmDef {
  name: ArmName;
  label: string;
  /** null: no finetuning. */
  weights: LossWeights | null;
  trainable: { blip: 'xattn-q' | 'none'; unet: 'xattn-q' | 'none' };
  routes: ReconstructionRoutes;
}

const BOTH = { blip: 'xattn-q', unet: 'xattn-q' } as const;
const ALL: LossWeights = { cap: 1, recImg: 1, sd: 1, recTxt: 1 };

export const ARMS: Readonly<Record<ArmName, ArmDef>> = {
  a: { name: 'a', label: '(a) no finetuning', weights: null, trainable: { blip: 'none', unet: 'none' }, routes: { recImg: 'both', recTxt: 'both' } },
  b: { name: 'b', label: '(b) L_cap only (BLIP trains)', weights: { cap: 1, recImg: 0, sd: 0, recTxt: 0 }, trainable: { blip: 'xattn-q', unet: 'none' }, routes: { recImg: 'both', recTxt: 'both' } },
  c: { name: 'c', label: '(c) L_sd only (UNet trains)', weights: { cap: 0, recImg: 0, sd: 1, recTxt: 0 }, trainable: { blip: 'none', unet: 'xattn-q' }, routes: { recImg: 'both', recTxt: 'both' } },
  d: { name: 'd', label: '(d) L_cap + L_sd, no reconstruction', weights: { cap: 1, recImg: 0, sd: 1, recTxt: 0 }, trainable: BOTH, routes: { recImg: 'both', recTxt: 'both' } },
  e: { name: 'e', label: '(e) Eq. 5: L_cap + L_rec_img + L_sd + L_rec_txt', weights: ALL, trainable: BOTH, routes: { recImg: 'both', recTxt: 'both' } },
  'f-own': { name: 'f-own', label: '(f) Eq. 5, each reconstruction loss updates only its own model (L_rec_img → BLIP, L_rec_txt → UNet)', weights: ALL, trainable: BOTH, routes: { recImg: 'blip', recTxt: 'unet' } },
  'f-other': { name: 'f-other', label: '(f) Eq. 5, each reconstruction loss updates only the other model (L_rec_img → UNet, L_rec_txt → BLIP)', weights: ALL, trainable: BOTH, routes: { recImg: 'unet', recTxt: 'blip' } },
};

/** How BLIP's side of every trained arm is set up (see docs/EXPERIMENTS.md, "Why finetuning lowered CIDEr-D"). */
export const BLIP_SETTINGS = ['pretraining', 'recipe'] as const;
export type BlipSettings = (typeof BLIP_SETTINGS)[number];

/**
 * `pretraining`: the world BLIP's own pretraining recipe (weights/world-blip/TRAINING.json: plain cross-entropy
 * on whole, unflipped images), applied over the finetuning recipe, so that the arms differ from (a) by their
 * losses and not by a new input distribution and target; with the recipe's label smoothing 0.1, crop and flip
 * (`recipe`) every finetune lowers CIDEr-D on the world, whatever its losses.
 */
export const WORLD_BLIP_SETTINGS: Readonly<Record<string, unknown>> = { labelSmoothing: 0, blipMinScale: 1, blipFlip: false };

export interface ExperimentOptions {
  out: string;
  /** World cache (default <out>/cache). */
  cache?: string;
  /** Folder with world-blip/, world-sd/, world-clip/ (default the package's weights/). */
  weights?: string;
  vocab?: string;
  arms: ArmName[];
  seeds: number;
  /** Optimizer steps per run. */
  steps: number;
  /** Default: the recipe's. */
  batchSize?: number;
  lr: number;
  trainImages: number;
  /** Held-out test images. */
  items: number;
  /** Test images the loss terms are measured on (the first ones). */
  lossItems: number;
  sdSteps: number;
  guidance: number;
  recipe: RecipeName;
  /** BLIP's training settings (default 'pretraining': WORLD_BLIP_SETTINGS over the recipe; 'recipe': the recipe's). */
  blipSettings?: BlipSettings;
  /** Trainable set of each model in the arms that train it (default xattn-q for both). */
  trainable?: { blip?: TrainableSet; unet?: TrainableSet };
  /** Finetuning config keys applied to every arm (after the recipe and blipSettings), e.g. {labelSmoothing: 0.1}. */
  overrides?: Record<string, unknown>;
  /** Seed of the evaluation draws and the first training seed (training seeds are seed … seed + seeds − 1). */
  seed: number;
  replicates: number;
  device: string;
  quick: boolean;
  quiet?: boolean;
  stream?: ProgressStream;
}

/** The full run: every arm, 3 seeds, sized to fit 30 minutes on two CPU cores (measured in docs/EXPERIMENTS.md). */
export const DEFAULT_EXPERIMENT: Omit<ExperimentOptions, 'out'> = {
  arms: [...ARM_NAMES],
  seeds: 3,
  steps: 40,
  lr: 1e-4,
  trainImages: 200,
  items: 64,
  lossItems: 32,
  sdSteps: 10,
  guidance: 4,
  recipe: 'default',
  blipSettings: 'pretraining',
  trainable: { blip: 'xattn-q', unet: 'xattn-q' },
  seed: 0,
  replicates: 2000,
  device: 'cpu',
  quick: false,
};

/** `--quick`: the whole flow on a handful of items (tests, smoke runs). */
export const QUICK_EXPERIMENT: Omit<ExperimentOptions, 'out'> = {
  ...DEFAULT_EXPERIMENT,
  seeds: 2,
  arms: ['a', 'd', 'e', 'f-own'],
  steps: 2,
  batchSize: 2,
  trainImages: 4,
  items: 4,
  lossItems: 2,
  sdSteps: 2,
  replicates: 200,
  quick: true,
};

/** Checks the arms to run (`--arms`), each by name. */
export function checkArms(arms: readonly string[]): ArmName[] {
  if (!Array.isArray(arms) || arms.length === 0) throw new RoundtripError(`--arms: expected a list of ${ARM_NAMES.join(', ')}`);
  for (const arm of arms) if (!(ARM_NAMES as readonly string[]).includes(arm)) throw new RoundtripError(`--arms: unknown arm '${arm}' (known: ${ARM_NAMES.join(', ')})`);
  return arms as ArmName[];
}

export function checkExperimentOptions(o: ExperimentOptions): ExperimentOptions & { cache: string; blipSettings: BlipSettings; trainable: { blip: TrainableSet; unet: TrainableSet } } {
  const out = path.resolve(expectString('--out', o.out));
  const cache = path.resolve(o.cache === undefined ? path.join(out, 'cache') : expectString('--cache', o.cache));
  checkArms(o.arms);
  expectInteger('--seeds', o.seeds, { min: 1, max: 100 });
  expectInteger('--steps', o.steps, { min: 1 });
  if (o.batchSize !== undefined) expectInteger('--batch-size', o.batchSize, { min: 1, max: 256 });
  expectNumber('--lr', o.lr, { min: 0, exclusiveMin: true });
  expectInteger('--train-images', o.trainImages, { min: 1 });
  expectInteger('--items', o.items, { min: 2 });
  expectInteger('--loss-items', o.lossItems, { min: 1, max: o.items });
  expectInteger('--sd-steps', o.sdSteps, { min: 1, max: 1000 });
  expectNumber('--guidance', o.guidance, { min: 0 });
  expectOneOf('--recipe', o.recipe, RECIPES);
  const blipSettings = expectOneOf('--blip-settings', o.blipSettings ?? 'pretraining', BLIP_SETTINGS);
  const trainable = { blip: expectOneOf('--blip-trainable', o.trainable?.blip ?? 'xattn-q', TRAINABLE_SETS), unet: expectOneOf('--unet-trainable', o.trainable?.unet ?? 'xattn-q', TRAINABLE_SETS) };
  if (trainable.blip === 'none' || trainable.unet === 'none') throw new RoundtripError("--blip-trainable/--unet-trainable: 'none' would turn the arms into others; choose the arms with --arms instead");
  if (trainable.unet === 'text-decoder') throw new RoundtripError("--unet-trainable 'text-decoder': only BLIP has a text decoder");
  expectInteger('--seed', o.seed, { min: 0, max: 0x7fffffff });
  expectInteger('--replicates', o.replicates, { min: 100 });
  expectString('--device', o.device);
  expectBoolean('--quick', o.quick);
  if (o.overrides !== undefined && (typeof o.overrides !== 'object' || o.overrides === null || Array.isArray(o.overrides))) throw new RoundtripError('--set: expected finetuning config keys');
  return { ...o, out, cache, blipSettings, trainable, arms: ARM_NAMES.filter((a) => o.arms.includes(a)) };
}

/** Per arm, per seed: each metric's per-item samples. */
type ArmSamples = Record<string, Sample[]>[];

export interface MetricResult {
  key: string;
  label: string;
  higherIsBetter: boolean;
  arms: Record<string, ArmStats>;
  /** Each arm minus (d) and minus (a), paired. */
  vsD: Record<string, Difference & { verdict: string }>;
  vsA: Record<string, Difference & { verdict: string }>;
}

export interface ExperimentReport {
  format: 'roundtrip-experiment-report';
  version: 1;
  created: string;
  command: string;
  options: Omit<ExperimentOptions, 'stream'>;
  recipe: { name: RecipeName; settings: string[] };
  arms: { name: ArmName; label: string; seeds: number[]; runs: string[]; trainSeconds: number[] }[];
  world: { dir: string; seed: number; size: number; train: number; test: number };
  models: { blip: string; sd: string; clip: string; source: string };
  metrics: MetricResult[];
  statements: string[];
  seconds: number;
  load: number[];
}

export interface ExperimentResult {
  report: ExperimentReport;
  files: { json: string; markdown: string; svg: string };
}

function hashOf(value: unknown): string {
  return crypto.createHash('sha256').update(JSON.stringify(value)).digest('hex').slice(0, 16);
}

/** Runs the experiment (see the module comment) and writes summary.json, summary.md and intervals.svg. */
export async function runExperiment(options: ExperimentOptions, command = 'runExperiment()'): Promise<ExperimentResult> {
  const o = checkExperimentOptions(options);
  const started = Date.now();
  const stream = o.stream ?? process.stderr;
  const quiet = o.quiet ?? false;
  const say = (m: string) => !quiet && stream.write(`experiment: ${m}\n`);
  fs.mkdirSync(o.out, { recursive: true });
  const warnings: string[] = [];
  const models = await resolveWorldModels({ weights: o.weights, cache: o.cache, vocab: o.vocab, quiet, stream, warn: (m) => warnings.push(m) });
  const worldDir = path.join(o.cache, 'world');
  const world = await writeWorld(worldDir, { seed: models.world.seed, counts: { train: o.trainImages, val: 0, test: o.items }, size: models.world.size, quiet: true });
  const test = world.manifest.entries.test;
  const size = models.world.size;
  const bert = loadBertTokenizer(models.blip);
  const bridgeFile = path.join(o.out, 'bridge.json');
  const base = { blip: await Blip.load(models.blip, { device: o.device }), sd: await StableDiffusionPipeline.load(models.sd, { device: o.device }) };
  if (!fs.existsSync(bridgeFile)) saveBridge(bridgeFile, buildBridge(world.manifest.entries.train.flatMap((e) => e.captions), bert, base.sd.tokenizer));
  const bridge = loadBridge(bridgeFile);
  const clip = await loadClipTextEncoder(models.clip, { device: o.device });
  const evalSettings: EvalSettings = { test, worldDir, size, sdSteps: o.sdSteps, guidance: o.guidance, seed: o.seed, maxLength: 24, minLength: 5, lossItems: Math.min(o.lossItems, test.length), prompt: '' };
  const evalKey = hashOf({ evalSettings: { ...evalSettings, test: test.map((e) => e.image) }, models });

  const trainedArms = o.arms.filter((a) => ARMS[a].weights !== null);
  const total = 1 + trainedArms.length * o.seeds;
  const progress = createProgress({ label: 'experiment', total, unit: 'run', quiet, stream });
  const samples: Record<string, ArmSamples> = {};
  const runs: Record<string, { dirs: string[]; seconds: number[]; seeds: number[] }> = {};
  let baseSamples: Record<string, Sample[]>;
  try {
    // (a): the base models, evaluated once (deterministic)
    const baseFile = path.join(o.out, 'runs', 'a', 'eval.json');
    baseSamples = readCached(baseFile, evalKey) ?? (await evaluatePair(base.blip, base.sd, { blip: true, sd: true }, undefined));
    writeCached(baseFile, evalKey, baseSamples);
    samples.a = [baseSamples];
    runs.a = { dirs: [], seconds: [], seeds: [] };
    progress.tick();

    for (const arm of trainedArms) {
      const def = ARMS[arm];
      runs[arm] = { dirs: [], seconds: [], seeds: [] };
      samples[arm] = [];
      for (let k = 0; k < o.seeds; k++) {
        const seed = o.seed + k;
        const dir = path.join(o.out, 'runs', arm, `seed-${seed}`);
        const config = armConfig(def, seed, dir);
        const key = hashOf({ evalKey, config: { ...config, output: undefined, progress: undefined } });
        const evalFile = path.join(dir, 'eval.json');
        let result = readCached(evalFile, key);
        let seconds = readCachedSeconds(evalFile);
        if (!result) {
          say(`${def.label}, seed ${seed}: ${o.steps} steps`);
          fs.rmSync(dir, { recursive: true, force: true });
          const t0 = Date.now();
          const tuned = await finetune(config, { print: () => undefined });
          seconds = (Date.now() - t0) / 1000;
          const blip = def.trainable.blip !== 'none' ? await Blip.load(models.blip, { device: o.device, partial: tuned.exported.blip ? [tuned.exported.blip] : [] }) : base.blip;
          const sd = def.trainable.unet !== 'none' ? await StableDiffusionPipeline.load(models.sd, { device: o.device, partial: tuned.exported.unet ? { unet: [tuned.exported.unet] } : {} }) : base.sd;
          try {
            result = await evaluatePair(blip, sd, { blip: def.trainable.blip !== 'none', sd: def.trainable.unet !== 'none' }, baseSamples);
          } finally {
            if (blip !== base.blip) blip.dispose();
            if (sd !== base.sd) sd.dispose();
          }
          writeCached(evalFile, key, result, seconds);
        }
        samples[arm].push(result);
        runs[arm].dirs.push(dir);
        runs[arm].seconds.push(seconds);
        runs[arm].seeds.push(seed);
        progress.tick();
      }
    }
  } finally {
    progress.done();
    base.blip.dispose();
    base.sd.dispose();
    clip.model.dispose();
  }

  async function evaluatePair(blip: Blip, sd: StableDiffusionPipeline, changed: { blip: boolean; sd: boolean }, reuse: Record<string, Sample[]> | undefined): Promise<Record<string, Sample[]>> {
    const out: Record<string, Sample[]> = {};
    if (changed.blip || !reuse) Object.assign(out, (await evaluateBlip(blip, evalSettings)).samples);
    else for (const m of METRICS.filter((x) => x.model === 'blip' && x.key !== 'cap')) out[m.key] = reuse[m.key];
    if (changed.sd || !reuse) Object.assign(out, await evaluateSd(sd, clip, evalSettings));
    else for (const m of METRICS.filter((x) => x.model === 'sd' && x.key !== 'sd')) out[m.key] = reuse[m.key];
    Object.assign(out, await evaluateLosses({ blip, sd, bridge, bert }, evalSettings));
    return out;
  }

  /** The settings every arm shares over its recipe: BLIP's (blipSettings), then the caller's --set keys. */
  function armSettings(): Record<string, unknown> {
    return { ...(o.blipSettings === 'pretraining' ? WORLD_BLIP_SETTINGS : {}), ...(o.overrides ?? {}) };
  }

  function armConfig(def: ArmDef, seed: number, dir: string): FinetuneConfig {
    return resolveConfig(
      {
        recipe: o.recipe,
        blip: models.blip,
        sd: models.sd,
        bridge: bridgeFile,
        annotations: path.join(worldDir, WORLD_FILES.train),
        images: worldDir,
        output: dir,
        device: o.device,
        seed,
        trainable: { blip: def.trainable.blip === 'none' ? 'none' : o.trainable.blip, unet: def.trainable.unet === 'none' ? 'none' : o.trainable.unet },
        weights: def.weights!,
        routes: def.routes,
        lr: o.lr,
        ...(o.batchSize !== undefined ? { batchSize: o.batchSize } : {}),
        maxSteps: o.steps,
        // every epoch has at least one step, so this many never stops a run before maxSteps
        epochs: o.steps,
        sdSize: size,
        blipSize: size,
        prefetch: 8,
        checkpointEvery: 0,
        keepLast: 1,
        validateEvery: 0,
        progress: false,
        // the world BLIP was trained and is evaluated without a prompt
        prompt: '',
        ...armSettings(),
      },
      `experiment arm ${def.name}`,
    );
  }

  // statistics
  const plan = bootstrapPlan(test.length, o.seeds, { replicates: o.replicates, seed: o.seed });
  const lossPlan = bootstrapPlan(evalSettings.lossItems, o.seeds, { replicates: o.replicates, seed: o.seed + 1 });
  const toSamples = (arm: string, key: string): MetricSamples => ({
    num: samples[arm].map((s) => s[key].map((x) => x[0])),
    den: samples[arm].map((s) => s[key].map((x) => x[1])),
  });
  const metrics: MetricResult[] = METRICS.map((m) => {
    const p = ['cap', 'sd', 'recImg', 'recTxt'].includes(m.key) ? lossPlan : plan;
    const arms: Record<string, ArmStats> = {};
    const vsD: MetricResult['vsD'] = {};
    const vsA: MetricResult['vsA'] = {};
    for (const arm of o.arms) arms[arm] = armInterval(`${m.key} ${arm}`, toSamples(arm, m.key), p);
    for (const arm of o.arms) {
      if (o.arms.includes('d') && arm !== 'd') {
        const d = pairedDifference(`${m.key} ${arm} − d`, toSamples(arm, m.key), toSamples('d', m.key), p);
        vsD[arm] = { ...d, verdict: verdict(d, m.higherIsBetter) };
      }
      if (arm !== 'a') {
        const d = pairedDifference(`${m.key} ${arm} − a`, toSamples(arm, m.key), toSamples('a', m.key), p);
        vsA[arm] = { ...d, verdict: verdict(d, m.higherIsBetter) };
      }
    }
    return { key: m.key, label: m.label, higherIsBetter: m.higherIsBetter, arms, vsD, vsA };
  });

  const config0 = trainedArms.length ? resolveConfig({ recipe: o.recipe, blip: 'b', sd: 's', annotations: 'a', images: 'i', output: 'o', ...armSettings() }) : undefined;
  const report: ExperimentReport = {
    format: 'roundtrip-experiment-report',
    version: 1,
    created: new Date().toISOString(),
    command,
    options: (({ stream: _s, ...rest }) => rest)(o),
    recipe: { name: o.recipe, settings: config0 ? recipeLines(o.recipe, config0 as unknown as Record<string, unknown>) : [] },
    arms: o.arms.map((a) => ({ name: a, label: ARMS[a].label, seeds: runs[a].seeds, runs: runs[a].dirs.map((d) => path.relative(o.out, d)), trainSeconds: runs[a].seconds })),
    world: { dir: path.relative(o.out, worldDir) || '.', seed: world.manifest.seed, size, train: o.trainImages, test: test.length },
    models: { blip: models.blip, sd: models.sd, clip: models.clip, source: models.source },
    metrics,
    statements: statements(metrics, o),
    seconds: (Date.now() - started) / 1000,
    load: require('os').loadavg(),
  };
  if (warnings.length) report.statements.push(...warnings.map((w) => `warning: ${w}`));
  const files = { json: path.join(o.out, 'summary.json'), markdown: path.join(o.out, 'summary.md'), svg: path.join(o.out, 'intervals.svg') };
  writeFileAtomicSync(files.svg, forestPlotSvg(metrics, o.arms.map((a) => ({ name: a, label: ARMS[a].label }))));
  writeFileAtomicSync(files.json, JSON.stringify(report, null, 2) + '\n');
  writeFileAtomicSync(files.markdown, experimentMarkdown(report));
  return { report, files };
}

interface CachedEval {
  key: string;
  samples: Record<string, Sample[]>;
  trainSeconds?: number;
}

function readCached(file: string, key: string): Record<string, Sample[]> | undefined {
  if (!fs.existsSync(file)) return undefined;
  try {
    const c = JSON.parse(fs.readFileSync(file, 'utf8')) as CachedEval;
    return c.key === key ? c.samples : undefined;
  } catch {
    return undefined;
  }
}

function readCachedSeconds(file: string): number {
  try {
    return Number((JSON.parse(fs.readFileSync(file, 'utf8')) as CachedEval).trainSeconds ?? 0);
  } catch {
    return 0;
  }
}

function writeCached(file: string, key: string, samples: Record<string, Sample[]>, trainSeconds?: number): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  writeFileAtomicSync(file, JSON.stringify({ key, samples, trainSeconds } satisfies CachedEval) + '\n');
}

/** Plain sentences: what (e) did against (d) and (a), metric by metric, only as far as the intervals allow. */
function statements(metrics: MetricResult[], o: ExperimentOptions): string[] {
  const out: string[] = [];
  const scale = `${o.items} test images, ${o.seeds} seed${o.seeds > 1 ? 's' : ''} per arm, ${o.steps} finetuning steps`;
  for (const target of ['e', 'f-own', 'f-other'] as const) {
    if (!o.arms.includes(target) || !o.arms.includes('d')) continue;
    const better = metrics.filter((m) => m.vsD[target]?.verdict === 'better').map((m) => m.label);
    const worse = metrics.filter((m) => m.vsD[target]?.verdict === 'worse').map((m) => m.label);
    const name = ARMS[target].label;
    if (!better.length && !worse.length) out.push(`${name} vs (d): no significant difference on any measure (${scale}).`);
    else out.push(`${name} vs (d): better on ${better.length ? better.join(', ') : 'nothing'}; worse on ${worse.length ? worse.join(', ') : 'nothing'}; no significant difference on the rest (${scale}).`);
  }
  if (o.arms.includes('e') && o.arms.includes('d')) {
    const task = metrics.filter((m) => !['cap', 'sd', 'recImg', 'recTxt'].includes(m.key));
    const helped = task.some((m) => m.vsD.e?.verdict === 'better');
    if (!helped) out.push('At this scale the reconstruction terms do not measurably help the task metrics: adding them to the task losses ((e) vs (d)) improves none of the caption or image measures beyond its 95 % interval.');
  }
  for (const arm of ['b', 'd', 'e'] as const) {
    const cider = metrics.find((m) => m.key === 'cider')?.vsA[arm];
    if (cider) out.push(`CIDEr-D of ${ARMS[arm].label} minus (a) no finetuning: ${formatInterval(cider)} (${cider.verdict}).`);
  }
  return out;
}

function experimentMarkdown(r: ExperimentReport): string {
  const arms = r.arms.map((a) => a.name);
  const lines: string[] = [
    '# roundtrip experiment: baseline arms with intervals',
    '',
    `Created ${r.created} by \`${r.command}\`; ${r.seconds.toFixed(0)} s wall time on ${r.options.device} (load average at the end ${r.load.map((v) => v.toFixed(1)).join(' / ')})${r.options.quick ? ' (--quick)' : ''}.`,
    '',
    `World: seed ${r.world.seed}, ${r.world.size}×${r.world.size}, ${r.world.train} training images, ${r.world.test} held-out test images (losses on the first ${r.options.lossItems}). Models (${r.models.source}): ${r.models.blip}, ${r.models.sd}. ${r.options.steps} steps per run, seeds ${r.options.seed}…${r.options.seed + r.options.seeds - 1}.`,
    '',
    `Recipe \`${r.recipe.name}\`, BLIP settings \`${r.options.blipSettings ?? 'pretraining'}\`${r.options.blipSettings === 'recipe' ? " (the recipe's)" : ` (the world BLIP's pretraining: ${JSON.stringify(WORLD_BLIP_SETTINGS)})`}${r.options.overrides && Object.keys(r.options.overrides).length ? `, then ${JSON.stringify(r.options.overrides)}` : ''}; trainable sets BLIP \`${r.options.trainable?.blip ?? 'xattn-q'}\`, UNet \`${r.options.trainable?.unet ?? 'xattn-q'}\` where they train: ${r.recipe.settings.join('; ')}.`,
    '',
    '## What the numbers say',
    '',
    ...r.statements.map((s) => `- ${s}`),
    '',
    '## Arms',
    '',
    ...r.arms.map((a) => `- **${a.name}** ${a.label}${a.trainSeconds.length ? ` — training ${a.trainSeconds.map((s) => s.toFixed(0)).join(' / ')} s` : ''}`),
    '',
    '## Every measure (value [95 % interval]; seed std)',
    '',
    `| measure | ${arms.join(' | ')} |`,
    `| --- | ${arms.map(() => '---').join(' | ')} |`,
    ...r.metrics.map((m) => `| ${m.label} ${m.higherIsBetter ? '↑' : '↓'} | ${arms.map((a) => `${formatInterval(m.arms[a])}; ±${m.arms[a].seedStd.toFixed(3)}`).join(' | ')} |`),
    '',
  ];
  if (arms.includes('d')) {
    const others = arms.filter((a) => a !== 'd');
    lines.push(
      '## Difference to (d) (arm − d, paired: same items and seeds)',
      '',
      `| measure | ${others.join(' | ')} |`,
      `| --- | ${others.map(() => '---').join(' | ')} |`,
      ...r.metrics.map((m) => `| ${m.label} | ${others.map((a) => `${formatInterval(m.vsD[a])} ${m.vsD[a].verdict}`).join(' | ')} |`),
      '',
    );
  }
  const trained = arms.filter((a) => a !== 'a');
  lines.push(
    '## Difference to (a) no finetuning',
    '',
    `| measure | ${trained.join(' | ')} |`,
    `| --- | ${trained.map(() => '---').join(' | ')} |`,
    ...r.metrics.map((m) => `| ${m.label} | ${trained.map((a) => `${formatInterval(m.vsA[a])} ${m.vsA[a].verdict}`).join(' | ')} |`),
    '',
    'Intervals: percentile bootstrap (' + r.options.replicates + ' replicates) resampling test items and training seeds together, the same draws for every arm (paired differences). "better"/"worse" only where the interval of the difference excludes 0.',
    '',
    '![intervals](intervals.svg)',
    '',
  );
  return lines.join('\n');
}
