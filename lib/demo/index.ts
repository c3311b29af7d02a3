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
import { CaptionEvaluation, evaluateCaptions } from '../eval/captions';
import { FinetuneResult, finetune, resolveConfig } from '../finetune';
import { Blip } from '../models/blip';
import { createProgress } from '../progress';
import { Report, buildReport } from '../report';
import { RerankOptions, rerankI2t2i, rerankT2i2t } from '../rerank';
import { writeFileAtomicSync } from '../fsutil';
import { ItemRecord } from '../rerank/types';
import { AttributeAccuracy, WORLD_FILES, WorldEntry, writeWorld } from '../world';
import { indexHtml } from './html';
import { FinetunedFolders, WorldModels, resolveWorldModels, writeFinetunedFolders } from './models';
import { DemoOptions, checkDemoOptions } from './options';
import { ATTRIBUTE_KEYS, ATTRIBUTE_LABELS, RerankAttributes, captionAttributeAccuracy, rerankAttributes } from './world-metrics';
import { DemoRow, DemoTable, delta, finiteOrNull, formatValue, tableMarkdown, tableText } from './tables';

export * from './options';
export * from './tables';
export { resolveWorldModels, writeFinetunedFolders, DEFAULT_WEIGHTS_DIR } from './models';
export type { WorldModels, FinetunedFolders, TensorChange } from './models';
export { captionAttributeAccuracy, rerankAttributes, ATTRIBUTE_KEYS } from './world-metrics';
export type { RerankAttributes } from './world-metrics';

/** BLIP decoding limit: the world's captions run to 16 words, more than the paper's 20-token COCO limit leaves room for. */
export const DEMO_MAX_LENGTH = 24;
export const DEMO_MIN_LENGTH = 5;
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
const RUN_FOLDERS = ['runs', 'finetune', 'models'];

/** Marks a folder as the demo's, so a rerun may clear its run folders (and no other folder is ever cleared). */
export const DEMO_MARKER = '.roundtrip-demo';

/** Creates the report folder, or checks that an existing non-empty one is a demo folder (it will be partly cleared). */
function prepareOutFolder(out: string): void {
  if (fs.existsSync(out)) {
    if (!fs.statSync(out).isDirectory()) throw new RoundtripError(`--out: ${out} is a file, not a folder`);
    const names = fs.readdirSync(out);
    if (names.length > 0 && !names.includes(DEMO_MARKER)) {
      throw new RoundtripError(`--out: ${out} is not empty and was not written by roundtrip demo (no ${DEMO_MARKER}); give a new or empty folder, since the demo replaces its runs/, finetune/ and models/ subfolders`);
    }
  }
  fs.mkdirSync(out, { recursive: true });
  writeFileAtomicSync(path.join(out, DEMO_MARKER), 'This folder is written by `roundtrip demo`; a rerun replaces runs/, finetune/, models/ and the report files, and keeps cache/.\n');
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
    const common: Omit<RerankOptions, 'out'> = {
      blip: pair.blip,
      sd: pair.sd,
      clip: models.clip,
      k: o.k,
      scheduler: 'ddim',
      steps: o.sdSteps,
      guidance: o.guidance,
      size: models.world.size,
      seed: o.seed,
      repeats: o.repeats,
      device: o.device,
      sdBatch: o.k,
      maxLength: DEMO_MAX_LENGTH,
      minLength: DEMO_MIN_LENGTH,
      progress: !quiet,
      onWarning: warn,
    };
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

  const finetuneDir = path.join(o.out, 'finetune');
  const stepsPerEpoch = Math.floor((o.trainImages * world.manifest.captionsPerImage) / o.batchSize);
  if (stepsPerEpoch < 1) throw new RoundtripError(`--train-images ${o.trainImages} × ${world.manifest.captionsPerImage} captions do not fill one batch of --batch-size ${o.batchSize}`);
  const config = resolveConfig(
    {
      blip: models.blip,
      sd: models.sd,
      annotations: path.join(worldDir, WORLD_FILES.train),
      images: worldDir,
      output: finetuneDir,
      device: o.device,
      seed: o.seed,
      trainable: { blip: 'xattn-q', unet: 'xattn-q' },
      objective: 'joint',
      weights: { cap: 1, recImg: 1, sd: 1, recTxt: 1 },
      schedule: 'summed',
      lr: o.lr,
      batchSize: o.batchSize,
      maxSteps: o.finetuneSteps,
      epochs: Math.ceil(o.finetuneSteps / stepsPerEpoch),
      sdSize: models.world.size,
      blipSize: models.world.size,
      prefetch: Math.min(16, 2 * o.batchSize),
      checkpointEvery: 0,
      keepLast: 1,
      validateEvery: 0,
      progress: !quiet,
      // The world BLIP was trained and is evaluated without a prompt.
      prompt: '',
    },
    'demo finetuning config',
  );
  const tuned = await stage(`joint finetuning (${o.finetuneSteps} steps, batch ${o.batchSize}, all four losses, cross-attention queries trainable)`, () =>
    finetune(config, { print: (line) => !quiet && stream.write(`${line}\n`) }),
  );
  if (!tuned.exported.blip && !tuned.exported.unet) throw new RoundtripError('finetuning exported no weights');
  const folders = await stage('finetuned model folders (exported partial weights merged through the loaders)', () => writeFinetunedFolders({ blip: models.blip, sd: models.sd }, tuned.exported, path.join(o.out, 'models'), o.device));
  const after = await evaluate('after', { blip: folders.blip, sd: folders.sd });

  const t0 = Date.now();
  const tables = buildTables({ before, after }, tuned, o);
  const statements = buildStatements({ before, after }, tables, o, models);
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

function buildTables(p: Phases, tuned: FinetuneResult, o: DemoOptions): DemoTable[] {
  const tables: DemoTable[] = [];
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
      'the finetuning’s captioning terms put BLIP’s released prompt “a picture of ” before each caption (lib/finetune has no prompt setting), while the world BLIP was pretrained and is evaluated without a prompt: part of any change in the captions may come from that mismatch',
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
    notes: ['the whole curves: finetune/loss-curves.svg and finetune/log.jsonl'],
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
function change(what: string, a: number | null, b: number | null, higherIsBetter: boolean): string {
  if (a === null || b === null) return `${what}: not available.`;
  const d = b - a;
  const verdict = Math.abs(d) < 5e-5 ? 'no change' : (d > 0) === higherIsBetter ? 'better' : 'worse';
  return `${what}: ${formatValue(a)} → ${formatValue(b)} (Δ ${d >= 0 ? '+' : ''}${formatValue(d)}, ${verdict}).`;
}

function buildStatements(p: Phases, tables: DemoTable[], o: DemoOptions, models: WorldModels): string[] {
  const out: string[] = [];
  const find = (id: string, metric: string) => tables.find((t) => t.id === id)?.rows.find((r) => r.metric === metric);
  for (const phase of PHASES) {
    const label = phase === 'before' ? 'before finetuning' : 'after finetuning';
    const cider = find('rerank-i2t2i', 'CIDEr');
    const offset = phase === 'before' ? 0 : 3;
    if (cider) out.push(change(`Reranking BLIP’s ${o.k} sampled captions by reconstruction (i2t2i, ${label}), CIDEr-D random → reranked`, cider.values[offset], cider.values[offset + 1], true));
    for (const key of HEADLINE_ATTRIBUTES) {
      const capAttr = find('rerank-i2t2i', `caption attributes: ${ATTRIBUTE_LABELS[key]}`);
      if (capAttr) out.push(change(`Same, ${ATTRIBUTE_LABELS[key]} accuracy of the captions against the scene`, capAttr.values[offset], capAttr.values[offset + 1], true));
    }
    const clip = find('rerank-t2i2t', 'CLIP distance (image vs input text)');
    if (clip) out.push(change(`Reranking ${o.k} Stable Diffusion images by BLIP’s caption (t2i2t, ${label}), CLIP distance image–prompt, random → reranked`, clip.values[offset], clip.values[offset + 1], false));
    for (const key of HEADLINE_ATTRIBUTES) {
      const imgAttr = find('rerank-t2i2t', `image attributes: ${ATTRIBUTE_LABELS[key]}`);
      if (imgAttr) out.push(change(`Same, ${ATTRIBUTE_LABELS[key]} accuracy of the images against the prompt’s scene`, imgAttr.values[offset], imgAttr.values[offset + 1], true));
    }
  }
  const ft = (metric: string) => find('finetune', metric);
  const finetuneRows: [string, string][] = [
    ['BLIP beam captions: CIDEr-D', 'Joint finetuning, BLIP beam-caption CIDEr-D before → after'],
    ...HEADLINE_ATTRIBUTES.map((key): [string, string] => [`BLIP beam captions: attributes, ${ATTRIBUTE_LABELS[key]}`, `Joint finetuning, ${ATTRIBUTE_LABELS[key]} accuracy of the beam captions`]),
    ['SD images (random seed): CLIP distance to the prompt', 'Joint finetuning, CLIP distance of SD images to their prompts'],
    ...HEADLINE_ATTRIBUTES.map((key): [string, string] => [`SD images (random seed): attributes, ${ATTRIBUTE_LABELS[key]}`, `Joint finetuning, ${ATTRIBUTE_LABELS[key]} accuracy of SD images against the prompt’s scene`]),
  ];
  for (const [metric, label] of finetuneRows) {
    const r = ft(metric);
    if (r) out.push(change(label, r.values[0], r.values[1], r.higherIsBetter !== false));
  }
  out.push(
    `Scale: ${o.items} held-out test images, K = ${o.k}, ${o.sdSteps} DDIM steps at ${models.world.size}×${models.world.size}, ${o.finetuneSteps} finetuning steps of batch ${o.batchSize}; with this few items a difference smaller than the random baseline’s spread (see the notes under Tables 1 and 2) is not evidence either way.`,
  );
  if (models.source !== 'weights') out.push('The world models come from a few-step fallback pretraining (not the shipped weights/): they have barely learned, so none of these numbers says anything about the method.');
  if (p.before.captions.examples.length) out.push(`Example (before → after finetuning): “${p.before.captions.examples[0].caption}” → “${p.after.captions.examples[0].caption}” (reference “${p.before.captions.examples[0].reference}”).`);
  return out;
}

/** summary.md: the statements, every table, and where everything is. */
function reportMarkdown(r: DemoReport): string {
  const rel = (file: string) => path.relative(path.dirname(path.join(r.options.out, REPORT_FILES.markdown)), file).split(path.sep).join('/');
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
    `- finetuning: [loss curves](${rel(path.join(r.finetune.dir, 'loss-curves.svg'))}), [report](${rel(path.join(r.finetune.dir, 'report.md'))}), exported ${Object.values(r.finetune.exported).filter(Boolean).map((f) => `[${path.basename(f!)}](${rel(f!)})`).join(', ')}`,
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
