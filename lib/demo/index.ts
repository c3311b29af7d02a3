/**
 * `roundtrip demo`: the whole method on the built-in synthetic world, with no downloads.
 *
 * 1. the small world models (weights/world-{blip,sd,clip}, or a quick pretraining into the cache) and the
 *    world they were trained on (written once into the cache, reused after);
 * 2. before finetuning: image → text → image and text → image → text reranking of held-out test items
 *    (K candidates, random baseline), BLIP's beam captions scored with the caption metrics, and both
 *    measured against the world's ground truth (caption attributes parsed, generated images read back);
 * 3. a short joint finetuning (all four losses, cross-attention queries of both models trainable);
 * 4. the finetuned models (exported partial weights merged through the loaders) evaluated the same way;
 * 5. one report folder: tables (Markdown + JSON), the rerank reports (rank-binned plots, galleries), the
 *    loss curves, an HTML index, timings; a short summary on stdout.
 *
 * Everything after the models and the world is recomputed on each run (the folders are cleared first),
 * so a report never mixes runs.
 */
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError } from '../errors';
import { CaptionEvaluation, evaluateCaptions } from '../metrics/eval/captions';
import { FinetuneResult, StepLog } from '../train/finetune';
import { ExperimentReport, MetricResult, WORLD_BLIP_SETTINGS, runExperiment } from '../paper/experiment';
import { formatInterval } from '../paper/experiment/stats';
import { readJsonLines } from '../json';
import { TieGainRow } from '../paper/report/ties';
import { Blip } from '../models/blip';
import { createProgress } from '../progress';
import { Report, buildReport } from '../paper/report';
import { rerankI2t2i, rerankT2i2t } from '../paper/rerank';
import { writeFileAtomicSync } from '../fsutil';
import { ItemRecord } from '../paper/rerank/types';
import { AttributeAccuracy, WORLD_FILES, WorldEntry, writeWorld } from '../world';
import { indexHtml } from './html';
import { DEMO_MAX_LENGTH, DEMO_MIN_LENGTH, FinetunedFolders, WorldModels, resolveWorldModels, worldRerankOptions, writeFinetunedFolders } from './models';
import { DemoOptions, checkDemoOptions } from './options';
import { ATTRIBUTE_KEYS, ATTRIBUTE_LABELS, RerankAttributes, captionAttributeAccuracy, rerankAttributes } from './world-metrics';
import { DemoRow, DemoTable, delta, finiteOrNull, formatValue, tableMarkdown, tableText } from './tables';

export * from './options';
export * from './tables';
export { resolveWorldModels, writeFinetunedFolders, worldRerankOptions, DEFAULT_WEIGHTS_DIR, DEMO_MAX_LENGTH, DEMO_MIN_LENGTH } from './models';
export type { WorldModels, FinetunedFolders, TensorChange } from './models';
export { captionAttributeAccuracy, rerankAttributes, ATTRIBUTE_KEYS } from './world-metrics';
export type { RerankAttributes } from './world-metrics';

/**
 * The demo's finetuning settings over the `default` recipe, so that finetuning is a fair test of the
 * method on the world models (see docs/EXPERIMENTS.md for the measurements): the world BLIP was
 * pretrained on whole, unflipped images with plain cross-entropy, so the finetuning does the same
 * (label smoothing 0, no random crop, no flip), instead of changing BLIP's input distribution and
 * target under it; the UNet side is unchanged (no crop, no flip).
 */
export const DEMO_FINETUNE_SETTINGS: Readonly<Record<string, unknown>> = WORLD_BLIP_SETTINGS;

/** A finished finetuning run folder as a FinetuneResult (log.jsonl, export/). */
export function readFinetuneRun(dir: string): FinetuneResult {
  const lines = readJsonLines<StepLog & { validation?: unknown }>(path.join(dir, 'log.jsonl')).filter((l) => typeof l.loss === 'number');
  const exported: FinetuneResult['exported'] = {};
  for (const model of ['blip', 'unet'] as const) {
    const file = path.join(dir, 'export', `${model}.safetensors`);
    if (fs.existsSync(file)) exported[model] = file;
  }
  return { steps: lines.length ? lines[lines.length - 1].step : 0, losses: lines.map((l) => l.loss), logs: lines, exported, interrupted: false, validation: [], rollbacks: [] };
}

/** Similarity used by each direction (the paper's CLIP choices). */
export const DEMO_SIMILARITY = { i2t2i: 'clip', t2i2t: 'clip-text' } as const;
export const PHASES = ['before', 'after'] as const;
export type Phase = (typeof PHASES)[number];
export const REPORT_FILES = { index: 'index.html', markdown: 'summary.md', json: 'summary.json' } as const;

/** Attribute accuracies quoted in the summary and the statements (full consistency is rare for models this small). */
export const HEADLINE_ATTRIBUTES = ['color', 'shape'] as const;
type HeadlineAttribute = (typeof HEADLINE_ATTRIBUTES)[number];

/** The evaluation of one model pair. */
export interface PhaseResult {
  models: { blip: string; sd: string };
  i2t2i: { dir: string; report: Report; attributes: RerankAttributes };
  t2i2t: { dir: string; report: Report; attributes: RerankAttributes };
  /** BLIP beam-search captions of the test images (the captioner on its own, without reranking). */
  captions: { corpus: CaptionEvaluation['corpus']; attributes: AttributeAccuracy; examples: { image: string; caption: string; reference: string }[] };
}

/** A reranking run as summary.json records it: its folder, its report files, the world measures. */
export interface RerankSummary {
  dir: string;
  report: { out: string; files: Report['files'] };
  attributes: RerankAttributes;
}

export interface PhaseSummary {
  models: { blip: string; sd: string };
  i2t2i: RerankSummary;
  t2i2t: RerankSummary;
  captions: PhaseResult['captions'];
}

/** summary.json. */
export interface DemoReport {
  format: 'roundtrip-demo-report';
  version: 1;
  created: string;
  command: string;
  options: Omit<DemoOptions, 'stream'>;
  models: WorldModels;
  world: { dir: string; seed: number; size: number; counts: Record<string, number>; reused: boolean; heldOut: { color: string; shape: string }[]; novelTestItems: number };
  finetune: {
    dir: string;
    steps: number;
    losses: number[];
    exported: FinetuneResult['exported'];
    change: FinetunedFolders['change'];
    models: { blip: string; sd: string };
  };
  /** The finetuning arms (a), (d), (e) with intervals (experiment/summary.md). */
  arms: { dir: string; settings: Record<string, unknown>; seeds: number; statements: string[]; metrics: MetricResult[] };
  phases: Record<Phase, PhaseSummary>;
  tables: DemoTable[];
  statements: string[];
  timing: { stage: string; seconds: number }[];
  seconds: number;
  warnings: string[];
}

export interface DemoResult {
  out: string;
  files: { index: string; markdown: string; json: string };
  report: DemoReport;
  /** Wall time of the whole run. */
  seconds: number;
  worldReused: boolean;
}

/** Folders the demo recreates on every run (the cache, holding the world, is kept). */
const RUN_FOLDERS = ['runs', 'finetune', 'models', 'experiment'];

/** Marks a folder as the demo's, so a rerun may clear its run folders (and no other folder is ever cleared). */
export const DEMO_MARKER = '.roundtrip-demo';

/** Creates the report folder, or checks that an existing non-empty one is a demo folder (it will be partly cleared). */
function prepareOutFolder(out: string): void {
  if (fs.existsSync(out)) {
    if (!fs.statSync(out).isDirectory()) throw new RoundtripError(`--out: ${out} is a file, not a folder`);
    const names = fs.readdirSync(out);
    if (names.length > 0 && !names.includes(DEMO_MARKER)) {
      throw new RoundtripError(`--out: ${out} is not empty and was not written by roundtrip demo (no ${DEMO_MARKER}); give a new or empty folder, since the demo replaces its runs/, experiment/ and models/ subfolders`);
    }
  }
  fs.mkdirSync(out, { recursive: true });
  writeFileAtomicSync(path.join(out, DEMO_MARKER), 'This folder is written by `roundtrip demo`; a rerun replaces runs/, experiment/, models/ and the report files, and keeps cache/.\n');
}

/** Runs the demo (see the module comment) and writes the report into `options.out`. */
export async function runDemo(options: DemoOptions, command = 'runDemo()'): Promise<DemoResult> {
  const o = checkDemoOptions(options);
  const started = Date.now();
  const stream = o.stream ?? process.stderr;
  const quiet = o.quiet ?? false;
  const say = (m: string) => {
    if (!quiet) stream.write(`demo: ${m}\n`);
  };
  const warnings: string[] = [];
  const warn = (m: string) => {
    if (!warnings.includes(m)) warnings.push(m);
    if (!quiet) stream.write(`warning: ${m}\n`);
  };
  const timing: { stage: string; seconds: number }[] = [];
  const STAGES = 10;
  let stageNumber = 0;
  const stage = async <T>(name: string, run: () => Promise<T>): Promise<T> => {
    say(`[${++stageNumber}/${STAGES}] ${name}`);
    const t0 = Date.now();
    const value = await run();
    timing.push({ stage: name, seconds: (Date.now() - t0) / 1000 });
    return value;
  };

  prepareOutFolder(o.out);
  for (const sub of RUN_FOLDERS) fs.rmSync(path.join(o.out, sub), { recursive: true, force: true });
  for (const file of Object.values(REPORT_FILES)) fs.rmSync(path.join(o.out, file), { force: true });
  const runs = path.join(o.out, 'runs');
  fs.mkdirSync(runs, { recursive: true });

  const models = await stage('world models', () => resolveWorldModels({ weights: o.weights, cache: o.cache, vocab: o.vocab, quiet, stream, warn }));
  say(`models: ${models.blip}, ${models.sd}, ${models.clip} (${models.source})`);
  const worldDir = path.join(o.cache, 'world');
  const world = await stage('world', () =>
    writeWorld(worldDir, { seed: models.world.seed, counts: { train: o.trainImages, val: 0, test: o.items }, size: models.world.size, quiet, progressStream: stream }),
  );
  say(`world ${worldDir} (${world.reused ? 'reused' : `written in ${world.seconds.toFixed(1)} s`}): ${o.trainImages} training images, ${o.items} held-out test images`);
  const test = world.manifest.entries.test;
  const byPath = new Map<string, WorldEntry>(test.map((e) => [path.resolve(worldDir, e.image), e]));
  const byRelative = new Map<string, WorldEntry>(test.map((e) => [e.image, e]));
  const promptsFile = path.join(runs, 'prompts.json');
  // t2i2t inputs: each test image's first caption, paired with the image (CLIP distance to the real image)
  writeFileAtomicSync(promptsFile, JSON.stringify(test.map((e) => ({ image: e.image, caption: e.captions[0] })), null, 1) + '\n');

  const sceneOf = (r: ItemRecord): WorldEntry => {
    const entry = r.direction === 'i2t2i' ? byPath.get(path.resolve(r.input.image ?? '')) : byRelative.get(r.id);
    if (!entry) throw new RoundtripError(`rerank record ${r.id}: not an image of the world's test split`);
    return entry;
  };

  const evaluate = async (phase: Phase, pair: { blip: string; sd: string }): Promise<PhaseResult> => {
    const common = { ...worldRerankOptions(models, { ...o, sdBatch: o.k, progress: !quiet, onWarning: warn }), blip: pair.blip, sd: pair.sd };
    const i2t2iDir = path.join(runs, `${phase}-i2t2i`);
    const t2i2tDir = path.join(runs, `${phase}-t2i2t`);
    const i2t2i = await stage(`${phase}: image → text → image reranking (${o.items} items × ${o.k} captions)`, async () => {
      await rerankI2t2i({ ...common, out: i2t2iDir, annotations: path.join(worldDir, WORLD_FILES.test), images: worldDir, similarity: DEMO_SIMILARITY.i2t2i });
      const report = await buildReport([i2t2iDir], { galleryItems: o.items });
      return { dir: i2t2iDir, report, attributes: await rerankAttributes(i2t2iDir, sceneOf) };
    });
    const t2i2t = await stage(`${phase}: text → image → text reranking (${o.items} items × ${o.k} images)`, async () => {
      await rerankT2i2t({ ...common, out: t2i2tDir, prompts: promptsFile, images: worldDir, similarity: DEMO_SIMILARITY.t2i2t });
      const report = await buildReport([t2i2tDir], { galleryItems: o.items });
      return { dir: t2i2tDir, report, attributes: await rerankAttributes(t2i2tDir, sceneOf) };
    });
    const captions = await stage(`${phase}: BLIP beam captions and caption metrics`, () => captionEvaluation(phase, pair.blip, models.clip, test, worldDir, o.device, quiet, stream, warn));
    return { models: pair, i2t2i, t2i2t, captions };
  };

  const before = await evaluate('before', { blip: models.blip, sd: models.sd });

  const stepsPerEpoch = Math.floor((o.trainImages * world.manifest.captionsPerImage) / o.batchSize);
  if (stepsPerEpoch < 1) throw new RoundtripError(`--train-images ${o.trainImages} × ${world.manifest.captionsPerImage} captions do not fill one batch of --batch-size ${o.batchSize}`);
  // The finetuning arms (a) no finetuning, (d) L_cap + L_sd, (e) Eq. 5: same data, steps, seeds and
  // evaluation, with 95 % intervals. Arm (e)'s run with the demo's seed is the finetuned pair evaluated below.
  const seeds = o.quick ? 2 : 3;
  const experimentDir = path.join(o.out, 'experiment');
  const arms = await stage(`finetuning arms (a), (d), (e): ${seeds} seeds × ${o.finetuneSteps} steps of batch ${o.batchSize}, evaluated with 95 % intervals`, () =>
    runExperiment(
      {
        out: experimentDir,
        cache: o.cache,
        weights: o.weights,
        vocab: o.vocab,
        arms: ['a', 'd', 'e'],
        seeds,
        steps: o.finetuneSteps,
        batchSize: o.batchSize,
        lr: o.lr,
        trainImages: o.trainImages,
        items: o.items,
        lossItems: Math.min(o.items, 16),
        sdSteps: o.sdSteps,
        guidance: o.guidance,
        recipe: 'default',
        blipSettings: 'pretraining',
        seed: o.seed,
        replicates: o.quick ? 200 : 2000,
        device: o.device,
        quick: o.quick,
        quiet,
        stream,
      },
      command,
    ),
  );
  const eRun = arms.report.arms.find((a) => a.name === 'e');
  if (!eRun || !eRun.runs.length) throw new RoundtripError('the experiment ran no (e) arm');
  const finetuneDir = path.join(experimentDir, eRun.runs[0]);
  const tuned = readFinetuneRun(finetuneDir);
  if (!tuned.exported.blip && !tuned.exported.unet) throw new RoundtripError('finetuning exported no weights');
  const folders = await stage('finetuned model folders (exported partial weights merged through the loaders)', () => writeFinetunedFolders({ blip: models.blip, sd: models.sd }, tuned.exported, path.join(o.out, 'models'), o.device));
  const after = await evaluate('after', { blip: folders.blip, sd: folders.sd });

  const t0 = Date.now();
  const tables = buildTables({ before, after }, tuned, o, arms.report);
  const statements = buildStatements({ before, after }, tables, o, models, arms.report);
  timing.push({ stage: 'report', seconds: (Date.now() - t0) / 1000 });
  const seconds = (Date.now() - started) / 1000;
  tables.push({
    id: 'timing',
    title: 'Wall time',
    columns: ['seconds'],
    rows: [...timing.map((t) => ({ metric: t.stage, higherIsBetter: null, values: [t.seconds] })), { metric: 'total', higherIsBetter: null, values: [seconds] }],
    notes: [`device ${o.device}; ${models.source === 'pretrained-now' ? `includes ${models.pretrainSeconds.toFixed(1)} s of fallback pretraining; ` : ''}${world.reused ? 'world reused from the cache' : 'world written in this run'}`],
  });
  const novel = test.filter((e) => e.novel).length;
  const { stream: _stream, ...recorded } = o;
  const summarize = (ph: PhaseResult): PhaseSummary => ({
    models: ph.models,
    i2t2i: { dir: ph.i2t2i.dir, report: { out: ph.i2t2i.report.out, files: ph.i2t2i.report.files }, attributes: ph.i2t2i.attributes },
    t2i2t: { dir: ph.t2i2t.dir, report: { out: ph.t2i2t.report.out, files: ph.t2i2t.report.files }, attributes: ph.t2i2t.attributes },
    captions: ph.captions,
  });
  const report: DemoReport = {
    format: 'roundtrip-demo-report',
    version: 1,
    created: new Date().toISOString(),
    command,
    options: recorded,
    models,
    world: { dir: worldDir, seed: world.manifest.seed, size: world.manifest.size, counts: world.manifest.counts, reused: world.reused, heldOut: world.manifest.heldOut, novelTestItems: novel },
    arms: { dir: experimentDir, settings: { recipe: 'default', ...DEMO_FINETUNE_SETTINGS }, seeds, statements: arms.report.statements, metrics: arms.report.metrics },
    finetune: { dir: finetuneDir, steps: tuned.steps, losses: tuned.losses, exported: tuned.exported, change: folders.change, models: { blip: folders.blip, sd: folders.sd } },
    phases: { before: summarize(before), after: summarize(after) },
    tables,
    statements,
    timing,
    seconds,
    warnings,
  };
  const files = { index: path.join(o.out, REPORT_FILES.index), markdown: path.join(o.out, REPORT_FILES.markdown), json: path.join(o.out, REPORT_FILES.json) };
  writeFileAtomicSync(files.json, JSON.stringify(report, null, 2) + '\n');
  writeFileAtomicSync(files.markdown, reportMarkdown(report));
  writeFileAtomicSync(files.index, indexHtml(report, o.out));
  return { out: o.out, files, report, seconds, worldReused: world.reused };
}

/** BLIP's beam-search captions (3 beams, as the paper captions generated images) scored against the references and the scenes. */
async function captionEvaluation(
  phase: Phase,
  blipDir: string,
  clipDir: string,
  test: readonly WorldEntry[],
  worldDir: string,
  device: string,
  quiet: boolean,
  stream: NonNullable<DemoOptions['stream']>,
  warn: (m: string) => void,
): Promise<PhaseResult['captions']> {
  const blip = await Blip.load(blipDir, { device });
  let captions: string[];
  const progress = createProgress({ label: `${phase}: beam captions`, total: test.length, unit: 'image', quiet, stream });
  try {
    captions = (
      await blip.caption(
        test.map((e) => path.resolve(worldDir, e.image)),
        { strategy: 'beam', numBeams: 3, maxLength: DEMO_MAX_LENGTH, minLength: DEMO_MIN_LENGTH, batchSize: 8, onProgress: (done) => progress.update(done) },
      )
    ).map((c) => c[0]);
  } finally {
    progress.done();
    blip.dispose();
  }
  const empty = captions.filter((c) => c.trim() === '').length;
  if (empty) warn(`${phase}: BLIP wrote ${empty} empty caption(s); they are scored as "(empty)"`);
  const scored = captions.map((c) => (c.trim() === '' ? '(empty)' : c));
  const evaluation = await evaluateCaptions(
    new Map(test.map((e, i) => [e.index, scored[i]])),
    new Map(test.map((e) => [e.index, e.captions])),
    { metrics: ['bleu', 'rouge', 'cider', 'clip-text'], clip: clipDir, clipVariant: 'projected', device },
  );
  return {
    corpus: evaluation.corpus,
    attributes: captionAttributeAccuracy(test, captions),
    examples: test.slice(0, 8).map((e, i) => ({ image: e.image, caption: captions[i], reference: e.captions[0] })),
  };
}

type Phases = Record<Phase, PhaseResult>;

function attributeRows(prefix: string, values: (key: (typeof ATTRIBUTE_KEYS)[number]) => (number | null)[]): DemoRow[] {
  return ATTRIBUTE_KEYS.map((key) => ({ metric: `${prefix}: ${ATTRIBUTE_LABELS[key]}`, higherIsBetter: true, values: values(key) }));
}

/** random, reranked, Δ for one phase. */
function triple(random: number | null, reranked: number | null): (number | null)[] {
  return [random, reranked, delta(random, reranked)];
}

const RERANK_COLUMNS = ['before: random', 'before: reranked', 'before: Δ', 'after: random', 'after: reranked', 'after: Δ'];

/** The rows of a rerank summary table (by metric name), before and after. */
function rerankMetricRows(p: Phases, direction: 'i2t2i' | 't2i2t'): DemoRow[] {
  const method = DEMO_SIMILARITY[direction];
  return p.before[direction].report.table.rows.map((row) => {
    const later = p.after[direction].report.table.rows.find((r) => r.metric === row.metric);
    return {
      metric: row.metric,
      higherIsBetter: !row.lowerIsBetter,
      values: [
        ...triple(finiteOrNull(row.baseline), finiteOrNull(row.reranked[method])),
        ...triple(finiteOrNull(later?.baseline), finiteOrNull(later?.reranked[method])),
      ],
    };
  });
}

function rerankAttributeRows(p: Phases, direction: 'i2t2i' | 't2i2t', prefix: string): DemoRow[] {
  const method = DEMO_SIMILARITY[direction];
  return attributeRows(prefix, (key) =>
    PHASES.flatMap((phase) => {
      const a = p[phase][direction].attributes;
      return triple(finiteOrNull(a.random[key]), finiteOrNull(a.reranked[method]?.[key]));
    }),
  );
}

function baselineStdNote(p: Phases, direction: 'i2t2i' | 't2i2t', metric: string): string {
  const std = PHASES.map((phase) => p[phase][direction].report.table.rows.find((r) => r.metric === metric)?.baselineStd).map((v) => (v === undefined ? 'n/a' : formatValue(finiteOrNull(v))));
  return `${metric}: the random baseline varies by ± ${std[0]} (before) / ± ${std[1]} (after) across its seeded picks (std), the scale against which the Δ columns should be read`;
}

/** The arms table: (a), (d), (e) and the paired differences e − d and e − a with their 95 % intervals. */
function armsTable(r: ExperimentReport): DemoTable {
  const get = (m: MetricResult, arm: string) => finiteOrNull(m.arms[arm]?.value);
  const diff = (m: MetricResult, which: 'vsD' | 'vsA', arm: string) => {
    const d = m[which][arm];
    return d ? [finiteOrNull(d.value), finiteOrNull(d.lo), finiteOrNull(d.hi)] : [null, null, null];
  };
  return {
    id: 'arms',
    title: `Finetuning arms, ${r.options.seeds} seeds each, ${r.options.steps} steps (value; paired differences with 95 % intervals)`,
    columns: ['(a) no finetuning', '(d) L_cap + L_sd', '(e) Eq. 5', 'e − d', 'e − d: 95 % low', 'e − d: 95 % high', 'e − a', 'e − a: 95 % low', 'e − a: 95 % high'],
    rows: r.metrics.map((m) => ({ metric: m.label, higherIsBetter: m.higherIsBetter, values: [get(m, 'a'), get(m, 'd'), get(m, 'e'), ...diff(m, 'vsD', 'e'), ...diff(m, 'vsA', 'e')] })),
    notes: [
      'the same training data, steps and seeds for (d) and (e); the same test items and sampling noise for every arm; values are means over seeds',
      'intervals: percentile bootstrap resampling test items and seeds together, paired between arms; an interval that contains 0 means no significant difference',
      `each arm's own interval: experiment/summary.md; finetuning settings: recipe default with ${JSON.stringify(DEMO_FINETUNE_SETTINGS)}`,
    ],
  };
}

function buildTables(p: Phases, tuned: FinetuneResult, o: DemoOptions, arms: ExperimentReport): DemoTable[] {
  const tables: DemoTable[] = [armsTable(arms)];
  const i2t2iKey = p.before.i2t2i.report.table.rows[0]?.metric ?? 'CIDEr';
  tables.push({
    id: 'rerank-i2t2i',
    title: `Table 1: image → text → image — BLIP captions, random candidate vs reranked by CLIP reconstruction distance (${o.items} test images, K = ${o.k})`,
    columns: RERANK_COLUMNS,
    rows: [...rerankMetricRows(p, 'i2t2i'), ...rerankAttributeRows(p, 'i2t2i', 'caption attributes')],
    notes: [
      'random: the mean over the run’s seeded random picks (attributes: pooled over them); reranked: the caption whose Stable Diffusion reconstruction is closest to the input image (1 − cos of CLIP image embeddings); Δ = reranked − random',
      'caption attributes: each caption parsed with the world’s grammar and scored against the scene the image shows',
      baselineStdNote(p, 'i2t2i', i2t2iKey),
    ],
  });
  const t2i2tKey = p.before.t2i2t.report.table.rows[0]?.metric;
  tables.push({
    id: 'rerank-t2i2t',
    title: `Table 2: text → image → text — Stable Diffusion images, random candidate vs reranked by the CLIP text distance of BLIP's caption (${o.items} prompts, K = ${o.k})`,
    columns: RERANK_COLUMNS,
    rows: [...rerankMetricRows(p, 't2i2t'), ...rerankAttributeRows(p, 't2i2t', 'image attributes')],
    notes: [
      'reranked: the image whose BLIP caption (beam search, 3 beams) is closest to the prompt (1 − cos of CLIP text embeddings); Δ = reranked − random',
      'image attributes: each generated image read by the world’s attribute detector and scored against the scene the prompt describes',
      ...(t2i2tKey ? [baselineStdNote(p, 't2i2t', t2i2tKey)] : []),
      ...p.before.t2i2t.report.table.notes.filter((n) => !/FID|IS/.test(n)),
    ],
  });
  const corpusRow = (metric: string, key: string, higherIsBetter: boolean): DemoRow => {
    const a = finiteOrNull(p.before.captions.corpus[key]);
    const b = finiteOrNull(p.after.captions.corpus[key]);
    return { metric, higherIsBetter, values: [a, b, delta(a, b)] };
  };
  const pair = (metric: string, higherIsBetter: boolean, get: (phase: Phase) => number | null | undefined): DemoRow => {
    const a = finiteOrNull(get('before'));
    const b = finiteOrNull(get('after'));
    return { metric, higherIsBetter, values: [a, b, delta(a, b)] };
  };
  const clipTextImage = p.before.t2i2t.report.table.rows.find((r) => r.metric.startsWith('CLIP distance (image vs input text)'))?.metric;
  tables.push({
    id: 'finetune',
    title: `Table 3: before vs after the joint finetuning (${tuned.steps} steps)`,
    columns: ['before finetuning', 'after finetuning', 'Δ (after − before)'],
    rows: [
      corpusRow('BLIP beam captions: BLEU-4', 'Bleu_4', true),
      corpusRow('BLIP beam captions: ROUGE-L', 'ROUGE_L', true),
      corpusRow('BLIP beam captions: CIDEr-D', 'CIDEr', true),
      corpusRow('BLIP beam captions: CLIP text distance to the references', 'CLIP_text_distance', false),
      ...ATTRIBUTE_KEYS.map((key) => pair(`BLIP beam captions: attributes, ${ATTRIBUTE_LABELS[key]}`, true, (ph) => p[ph].captions.attributes[key])),
      pair('i2t2i reranked captions: CIDEr-D', true, (ph) => p[ph].i2t2i.report.table.rows.find((r) => r.metric === 'CIDEr')?.reranked[DEMO_SIMILARITY.i2t2i]),
      ...(clipTextImage ? [pair('SD images (random seed): CLIP distance to the prompt', false, (ph) => p[ph].t2i2t.report.table.rows.find((r) => r.metric === clipTextImage)?.baseline)] : []),
      ...ATTRIBUTE_KEYS.map((key) => pair(`SD images (random seed): attributes, ${ATTRIBUTE_LABELS[key]}`, true, (ph) => p[ph].t2i2t.attributes.random[key])),
      pair('SD images (reranked): attributes, fully consistent', true, (ph) => p[ph].t2i2t.attributes.reranked[DEMO_SIMILARITY.t2i2t]?.consistent),
    ],
    notes: [
      'the same test items, seeds and sampling settings before and after; only the cross-attention query weights of BLIP’s text decoder and of the UNet changed',
      'BLIP beam captions: 3 beams, no prompt (the world models were trained without one); metrics PTB-tokenised as cocoeval',
      `one run: arm (e) with seed ${o.seed}; finetuned and evaluated without a prompt, as the world BLIP was pretrained; whether a change is more than noise: the arms table`,
    ],
  });
  const terms = Object.keys(tuned.logs[0]?.terms ?? {});
  // single steps are noisy (each draws other images, timesteps and noise): compare quarter means
  const quarter = Math.max(1, Math.floor(tuned.logs.length / 4));
  const head = tuned.logs.slice(0, quarter);
  const tail = tuned.logs.slice(-quarter);
  const meanOf = (logs: typeof tuned.logs, get: (l: (typeof tuned.logs)[number]) => number | undefined): number | null => {
    const values = logs.map(get).filter((v): v is number => typeof v === 'number');
    return values.length ? finiteOrNull(values.reduce((a, b) => a + b, 0) / values.length) : null;
  };
  const lossRow = (metric: string, get: (l: (typeof tuned.logs)[number]) => number | undefined): DemoRow => {
    const a = meanOf(head, get);
    const b = meanOf(tail, get);
    return { metric, higherIsBetter: false, values: [a, b, delta(a, b)] };
  };
  tables.push({
    id: 'finetune-losses',
    title: `Finetuning losses (mean of the first vs the last ${quarter} step${quarter > 1 ? 's' : ''})`,
    columns: ['first steps', 'last steps', 'Δ'],
    rows: [lossRow('total', (l) => l.loss), ...terms.map((t) => lossRow(t, (l) => l.terms[t as keyof typeof l.terms]))],
    notes: ['the whole curves: loss-curves.svg and log.jsonl in the (e) run folder'],
  });
  const headline = (label: string, direction: 'i2t2i' | 't2i2t', get: (phase: Phase, pick: 'random' | 'reranked') => number | null | undefined, higherIsBetter: boolean): DemoRow => ({
    metric: `${direction}: ${label}`,
    higherIsBetter,
    values: PHASES.flatMap((phase) => [finiteOrNull(get(phase, 'random')), finiteOrNull(get(phase, 'reranked'))]),
  });
  const row = (phase: Phase, direction: 'i2t2i' | 't2i2t', metric: string | undefined, pick: 'random' | 'reranked') => {
    const r = p[phase][direction].report.table.rows.find((x) => x.metric === metric);
    return r ? (pick === 'random' ? r.baseline : r.reranked[DEMO_SIMILARITY[direction]]) : null;
  };
  const attr = (phase: Phase, direction: 'i2t2i' | 't2i2t', pick: 'random' | 'reranked', key: HeadlineAttribute) => {
    const a = p[phase][direction].attributes;
    return pick === 'random' ? a.random[key] : a.reranked[DEMO_SIMILARITY[direction]]?.[key];
  };
  tables.unshift({
    id: 'headline',
    title: 'Summary',
    columns: ['before: random', 'before: reranked', 'after: random', 'after: reranked'],
    rows: [
      headline('caption CIDEr-D', 'i2t2i', (ph, pick) => row(ph, 'i2t2i', 'CIDEr', pick), true),
      ...HEADLINE_ATTRIBUTES.map((key) => headline(`captions: ${ATTRIBUTE_LABELS[key]} right`, 'i2t2i', (ph, pick) => attr(ph, 'i2t2i', pick, key), true)),
      ...(clipTextImage ? [headline('CLIP distance image–prompt', 't2i2t', (ph, pick) => row(ph, 't2i2t', clipTextImage, pick), false)] : []),
      ...HEADLINE_ATTRIBUTES.map((key) => headline(`images: ${ATTRIBUTE_LABELS[key]} right`, 't2i2t', (ph, pick) => attr(ph, 't2i2t', pick, key), true)),
    ],
    notes: ['colour and shape: share of scene objects the caption states / the image shows with the right colour or shape; details in Tables 1–3'],
  });
  return tables;
}

/** One plain sentence about a change: its size and whether it is an improvement. */
/** A change without an interval: its size only (no better/worse verdict). */
function change(what: string, a: number | null, b: number | null): string {
  if (a === null || b === null) return `${what}: not available.`;
  const d = b - a;
  return `${what}: ${formatValue(a)} → ${formatValue(b)} (Δ ${d >= 0 ? '+' : ''}${formatValue(d)}; no interval, no verdict).`;
}

function buildStatements(p: Phases, tables: DemoTable[], o: DemoOptions, models: WorldModels, arms: ExperimentReport): string[] {
  const out: string[] = [];
  const find = (id: string, metric: string) => tables.find((t) => t.id === id)?.rows.find((r) => r.metric === metric);
  const tieRow = (phase: Phase, direction: 'i2t2i' | 't2i2t', metric: string): TieGainRow | undefined => p[phase][direction].report.ties.find((t) => t.method === DEMO_SIMILARITY[direction] && t.metric === metric);
  const gain = (t: TieGainRow | undefined, what: string, higherIsBetter: boolean): string => {
    if (!t) return `${what}: not available.`;
    const verdict = !t.gain.significant ? 'no significant difference' : (t.gain.value > 0) === higherIsBetter ? 'better' : 'worse';
    return `${what}: random ${formatValue(finiteOrNull(t.random))} → reranked ${formatValue(finiteOrNull(t.tieBroken))} (gain ${formatInterval(t.gain, 4)}, ${verdict}; ${t.ties} of ${t.items} items tied, broken by the declared rule).`;
  };
  for (const phase of PHASES) {
    const label = phase === 'before' ? 'before finetuning' : 'after finetuning';
    const offset = phase === 'before' ? 0 : 3;
    out.push(gain(tieRow(phase, 'i2t2i', 'CIDEr'), `Reranking BLIP’s ${o.k} sampled captions by reconstruction (i2t2i, ${label}), CIDEr-D`, true));
    for (const key of HEADLINE_ATTRIBUTES) {
      const capAttr = find('rerank-i2t2i', `caption attributes: ${ATTRIBUTE_LABELS[key]}`);
      if (capAttr) out.push(change(`Same, ${ATTRIBUTE_LABELS[key]} accuracy of the captions against the scene`, capAttr.values[offset], capAttr.values[offset + 1]));
    }
    out.push(gain(tieRow(phase, 't2i2t', 'clip_text_image'), `Reranking ${o.k} Stable Diffusion images by BLIP’s caption (t2i2t, ${label}), CLIP distance image–prompt`, false));
    for (const key of HEADLINE_ATTRIBUTES) {
      const imgAttr = find('rerank-t2i2t', `image attributes: ${ATTRIBUTE_LABELS[key]}`);
      if (imgAttr) out.push(change(`Same, ${ATTRIBUTE_LABELS[key]} accuracy of the images against the prompt’s scene`, imgAttr.values[offset], imgAttr.values[offset + 1]));
    }
  }
  // finetuning: the arms, with intervals (one before/after pair is not evidence)
  for (const key of ['cider', 'capConsistent', 'clipDistance', 'imgConsistent']) {
    const m = arms.metrics.find((x) => x.key === key);
    if (!m) continue;
    const ed = m.vsD.e;
    const ea = m.vsA.e;
    const da = m.vsA.d;
    out.push(
      `Finetuning, ${m.label}: (a) ${formatValue(finiteOrNull(m.arms.a?.value))}, (d) ${formatValue(finiteOrNull(m.arms.d?.value))}, (e) ${formatValue(finiteOrNull(m.arms.e?.value))}; ` +
        `e − d ${ed ? `${formatInterval(ed, 4)} (${ed.verdict})` : 'n/a'}; e − a ${ea ? `${formatInterval(ea, 4)} (${ea.verdict})` : 'n/a'}; d − a ${da ? `${formatInterval(da, 4)} (${da.verdict})` : 'n/a'}.`,
    );
  }
  const task = arms.metrics.filter((m) => !['cap', 'sd', 'recImg', 'recTxt'].includes(m.key));
  const helps = task.filter((m) => m.vsD.e?.verdict === 'better').map((m) => m.label);
  const hurts = task.filter((m) => m.vsD.e?.verdict === 'worse').map((m) => m.label);
  out.push(
    helps.length
      ? `At this scale the reconstruction terms help on ${helps.join(', ')} (e vs d, 95 % intervals)${hurts.length ? ` and hurt on ${hurts.join(', ')}` : ''}.`
      : `At this scale the method does not help: adding the reconstruction terms to the task losses ((e) vs (d), ${arms.options.seeds} seeds × ${arms.options.steps} steps, ${arms.options.items} test images) improves none of the caption or image measures beyond its 95 % interval${hurts.length ? `, and makes ${hurts.join(', ')} worse` : ''}.`,
  );
  out.push(
    `Scale: ${o.items} held-out test images, K = ${o.k}, ${o.sdSteps} DDIM steps at ${models.world.size}×${models.world.size}, ${o.finetuneSteps} finetuning steps of batch ${o.batchSize}. A verdict is given only where a 95 % interval excludes no change; the attribute rows of Tables 1–2 have no interval and get none.`,
  );
  if (models.source !== 'weights') out.push('The world models come from a few-step fallback pretraining (not the shipped weights/): they have barely learned, so none of these numbers says anything about the method.');
  if (p.before.captions.examples.length) out.push(`Example (before → after finetuning): “${p.before.captions.examples[0].caption}” → “${p.after.captions.examples[0].caption}” (reference “${p.before.captions.examples[0].reference}”).`);
  return out;
}

/**
 * A link written into a report in `out`: relative when the file is inside the report folder (so the
 * folder can be moved), absolute otherwise (a relative ../../.. link would break on a move).
 */
export function reportLink(out: string, file: string): string {
  const relative = path.relative(out, file);
  if (relative.startsWith('..') || path.isAbsolute(relative)) return path.resolve(file).split(path.sep).join('/');
  return relative.split(path.sep).join('/');
}

/** summary.md: the statements, every table, and where everything is. */
function reportMarkdown(r: DemoReport): string {
  const rel = (file: string) => reportLink(r.options.out, file);
  const lines = [
    '# roundtrip demo: BLIP and Stable Diffusion on the synthetic world',
    '',
    `Created ${r.created} by \`${r.command}\`; ${r.seconds.toFixed(1)} s wall time on ${r.options.device}${r.options.quick ? ' (--quick)' : ''}.`,
    '',
    `Models (${r.models.source}): BLIP ${r.models.blip}; SD ${r.models.sd}; CLIP ${r.models.clip}. World: seed ${r.world.seed}, ${r.world.size}×${r.world.size}, ${r.world.counts.train} training / ${r.world.counts.test} test images (${r.world.novelTestItems} of them show a colour–shape pair never seen in training), ${r.world.reused ? 'reused' : 'written'} in ${r.world.dir}.`,
    '',
    '## What happened',
    '',
    ...r.statements.map((s) => `- ${s}`),
    '',
    '## Tables',
    '',
    ...r.tables.map(tableMarkdown),
    '## Files',
    '',
    ...PHASES.flatMap((phase) =>
      (['i2t2i', 't2i2t'] as const).map((d) => {
        const f = r.phases[phase][d].report.files;
        return `- ${phase}, ${d}: [report](${rel(f.markdown)}), [gallery](${rel(f.gallery)}), ${f.svgs.map((s) => `[${path.basename(s)}](${rel(s)})`).join(', ') || 'no rank plots'}, [results](${rel(r.phases[phase][d].dir)})`;
      }),
    ),
    `- finetuning arms with intervals: [summary](${rel(path.join(r.arms.dir, 'summary.md'))}), [plot](${rel(path.join(r.arms.dir, 'intervals.svg'))}), [JSON](${rel(path.join(r.arms.dir, 'summary.json'))})`,
    `- finetuning (arm e, seed ${r.options.seed}): [loss curves](${rel(path.join(r.finetune.dir, 'loss-curves.svg'))}), [report](${rel(path.join(r.finetune.dir, 'report.md'))}), exported ${Object.values(r.finetune.exported).filter(Boolean).map((f) => `[${path.basename(f!)}](${rel(f!)})`).join(', ')}`,
    `- finetuned model folders: [BLIP](${rel(r.finetune.models.blip)}), [SD](${rel(r.finetune.models.sd)})`,
    ...(r.warnings.length ? ['', '## Warnings', '', ...r.warnings.map((w) => `- ${w}`)] : []),
  ];
  return lines.join('\n') + '\n';
}

/** The terminal summary: where the report is, the headline table, the statements, the wall time. */
export function demoSummaryText(result: DemoResult): string {
  const headline = result.report.tables.find((t) => t.id === 'headline');
  return [
    `report: ${result.files.index}`,
    `        ${result.files.markdown}`,
    '',
    headline ? tableText(headline) : '',
    ...result.report.statements.map((s) => `- ${s}`),
    '',
    `wall time ${result.seconds.toFixed(1)} s${result.worldReused ? ' (world reused)' : ''}`,
    '',
  ].join('\n');
}
