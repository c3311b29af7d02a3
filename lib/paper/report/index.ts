/**
 * Reports of reranking runs, rebuilt from saved results: the paper's Table 1 / Table 2 (JSON and
 * Markdown), the rank analysis of Figures 3/4 (data JSON + one SVG per quality metric) and an HTML
 * gallery. Several folders (shards of one run) are merged first.
 */
import * as path from 'path';
import { RoundtripError, expectInteger } from '../../errors';
import { checkOutputDir, cleanTempLeftovers, writeFileAtomicSync } from '../../fsutil';
import { ItemRecord, RunSettings } from '../rerank/types';
import { galleryHtml } from './gallery';
import { LoadedRuns, loadRuns } from './load';
import { ImageFeatureFn, RankAnalysis, SummaryOptions, SummaryTable, captionTable, fidIsByRank, imageTable, rankAnalysis } from './summary';
import { linePlotSvg } from './svg';
import { TieGainRow, tieGainMarkdown, tieGainTable } from './ties';
import { NOCAPS_DOMAINS, readNocapsDomains, splitByDomain } from './domains';

export * from './load';
export * from './summary';
export * from './svg';
export * from './gallery';
export * from './ties';
export * from './domains';

export interface ReportOptions extends SummaryOptions {
  /** Output folder; default `<first dir>/report`. */
  out?: string;
  /** Items in the gallery (default 100). */
  galleryItems?: number;
  /** NoCaps annotation file (images[].domain): Table 1 split in-domain / near-domain / out-domain. */
  nocapsDomains?: string;
}

export interface Report {
  out: string;
  settings: RunSettings;
  items: number;
  sources: LoadedRuns['sources'];
  table: SummaryTable;
  ranks: RankAnalysis;
  /** Ties counted and broken by the declared rule; the reranked-vs-random gain with a paired interval. */
  ties: TieGainRow[];
  /** Table 1 per NoCaps domain (with --nocaps-domains). */
  domains?: { domain: string; items: number; table: SummaryTable }[];
  files: { json: string; markdown: string; ranksJson: string; svgs: string[]; gallery: string; merged: string };
}

/** A readable statement of everything that produced the numbers. */
export function describeSettings(s: RunSettings, items: number, sources: LoadedRuns['sources']): string {
  const blip = s.blip;
  const sampling =
    blip.strategy === 'beam'
      ? `beam search, ${blip.numBeams} beams`
      : blip.strategy === 'top-p'
        ? `nucleus sampling top-p ${blip.topP}${blip.topK !== undefined ? `, top-k ${blip.topK}` : ' (top-k 50 as transformers)'}`
        : blip.strategy === 'top-k'
          ? `top-k sampling k ${blip.topK}`
          : blip.strategy === 'temperature'
            ? `temperature sampling T ${blip.temperature}`
            : 'greedy';
  const lines = [
    `direction: ${s.direction === 'i2t2i' ? 'image → text → image (rerank BLIP captions by SD reconstruction)' : 'text → image → text (rerank SD images by BLIP caption)'}`,
    `models: BLIP ${s.models.blip}; SD ${s.models.sd}${s.models.clip ? `; CLIP ${s.models.clip}` : ''}${s.models.dino ? `; DINO ${s.models.dino}` : ''}${s.models.sbert ? `; SBERT ${s.models.sbert}` : ''}${s.models.glove ? `; GloVe ${s.models.glove}` : ''}`,
    `similarity: ${s.similarity.join(', ')} (CLIP embedding variant: ${s.clipVariant}${s.dinoSize ? `; DINO input ${s.dinoSize}²` : ''}); distances are 1 − cos (cider: −CIDEr-D; wmd: WMD), lower = closer`,
    `BLIP: ${sampling}, repetition penalty ${blip.repetitionPenalty}, length ${blip.minLength}..${blip.maxLength} tokens`,
    `SD: ${s.sd.scheduler}, ${s.sd.steps} steps, guidance ${s.sd.guidance}, ${s.sd.width}×${s.sd.height}${s.sd.negative ? `, negative "${s.sd.negative}"` : ''}`,
    `K = ${s.k} candidates per item; baseline = a random candidate, mean over R = ${s.repeats} seeded picks per item`,
    `seed ${s.seed}: ${s.seeding}`,
    `dataset: ${s.dataset.kind} ${s.dataset.source} (${s.dataset.items} items); ${items} item(s) reported from ${sources.length} folder(s): ${sources.map((x) => `${x.dir} [shard ${x.shard.index}/${x.shard.count}, ${x.items} items]`).join('; ')}`,
  ];
  return lines.join('\n');
}

function cell(v: number): string {
  return Number.isFinite(v) ? (Math.abs(v) >= 100 ? v.toFixed(2) : v.toFixed(4)) : String(v);
}

/** The table in the paper's layout: one row per metric, baseline then each reranking method with its gain. */
export function tableMarkdown(table: SummaryTable, methods: readonly string[]): string {
  const head = ['metric', 'random (mean ± std over picks)', ...methods.flatMap((m) => [`reranked: ${m}`, `gain % (${m})`])];
  const lines = [`### ${table.title}`, '', `| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`];
  for (const r of table.rows) {
    const cells = [`${r.metric} ${r.lowerIsBetter ? '↓' : '↑'}`, `${cell(r.baseline)} ± ${cell(r.baselineStd)}`];
    for (const m of methods) cells.push(cell(r.reranked[m]), Number.isFinite(r.gainPercent[m]) ? `${r.gainPercent[m] >= 0 ? '+' : ''}${r.gainPercent[m].toFixed(1)}` : 'n/a');
    lines.push(`| ${cells.join(' | ')} |`);
  }
  if (table.notes.length) lines.push('', ...table.notes.map((n) => `- ${n}`));
  return lines.join('\n') + '\n';
}

function ranksMarkdown(r: RankAnalysis, methods: readonly string[]): string {
  const lines = ['### Quality by reconstruction rank (Figures 3/4)', ''];
  for (const [metric, byMethod] of Object.entries(r.means)) {
    const head = ['method', ...Array.from({ length: r.k }, (_, i) => `rank ${i + 1}`)];
    lines.push(`${metric} (${r.lowerIsBetter[metric] ? 'lower' : 'higher'} is better; ${r.counts[metric]} items)`, '', `| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`);
    for (const m of methods) lines.push(`| ${m} | ${byMethod[m].map(cell).join(' | ')} |`);
    lines.push('');
  }
  if (Object.keys(r.means).length === 0) lines.push('No per-candidate quality metric available.');
  return lines.join('\n') + '\n';
}

/** Items the HTML gallery shows by default. */
export const GALLERY_ITEMS = 100;

/** Builds every report file from run folders (merging shards). */
export async function buildReport(dirs: readonly string[], opts: ReportOptions = {}): Promise<Report> {
  const galleryItems = expectInteger('--gallery-items', opts.galleryItems ?? GALLERY_ITEMS, { min: 0 });
  const runs = loadRuns(dirs);
  const { settings, records, sources } = runs;
  const out = checkOutputDir(opts.out ?? path.join(dirs[0], 'report'), { flag: '--out' });
  const leftovers = cleanTempLeftovers(out, 1);
  if (leftovers.length) process.stderr.write(`report: removed ${leftovers.length} temporary file(s) left by an interrupted write in ${out}\n`);
  const header = describeSettings(settings, records.length, sources);
  // Inception features are computed once per file list (Table 2 and the by-rank panels ask for the same sets)
  if (opts.imageFeatures) {
    const compute = opts.imageFeatures;
    const memo = new Map<string, ReturnType<ImageFeatureFn>>();
    const cached: ImageFeatureFn = (files) => {
      const key = files.join('\n');
      if (!memo.has(key)) memo.set(key, compute(files));
      return memo.get(key)!;
    };
    opts = { ...opts, imageFeatures: cached };
  }
  const table = settings.direction === 'i2t2i' ? await captionTable(settings, records, opts) : await imageTable(settings, records, opts);
  const ranks = rankAnalysis(settings, records);
  if (opts.imageFeatures && settings.direction === 't2i2t' && records.length >= 2) {
    const byRank = await fidIsByRank(settings, records, opts.imageFeatures);
    Object.assign(ranks.means, byRank.means);
    Object.assign(ranks.counts, byRank.counts);
    Object.assign(ranks.lowerIsBetter, byRank.lowerIsBetter);
  }
  const ties = tieGainTable(settings, records, { seed: settings.seed });
  let domains: Report['domains'];
  const domainNotes: string[] = [];
  if (opts.nocapsDomains) {
    if (settings.direction !== 'i2t2i') throw new RoundtripError('--nocaps-domains: the domain split is of Table 1 (i2t2i caption metrics); this run is t2i2t');
    const split = splitByDomain(records, readNocapsDomains(opts.nocapsDomains));
    domains = [];
    for (const d of [...NOCAPS_DOMAINS, ...[...split.groups.keys()].filter((k) => !(NOCAPS_DOMAINS as readonly string[]).includes(k))]) {
      const group = split.groups.get(d);
      if (group?.length) domains.push({ domain: d, items: group.length, table: await captionTable(settings, group, { ...opts, spice: false }) });
    }
    if (split.unknown) domainNotes.push(`${split.unknown} item(s) have no domain in ${opts.nocapsDomains}`);
  }
  const files: Report['files'] = {
    json: path.join(out, 'summary.json'),
    markdown: path.join(out, 'summary.md'),
    ranksJson: path.join(out, 'rank-analysis.json'),
    svgs: [],
    gallery: path.join(out, 'gallery.html'),
    merged: path.join(out, 'results.merged.jsonl'),
  };
  writeFileAtomicSync(files.json, JSON.stringify({ settings, header, items: records.length, sources, table, ties, domains }, null, 2) + '\n');
  writeFileAtomicSync(files.ranksJson, JSON.stringify({ settings, header, ...ranks }, null, 2) + '\n');
  for (const [metric, byMethod] of Object.entries(ranks.means)) {
    const file = path.join(out, `rank-${metric.replace(/[^A-Za-z0-9_-]+/g, '_')}.svg`);
    const svg = linePlotSvg(
      settings.similarity.map((m) => ({ name: m, values: byMethod[m] })),
      { title: `${metric} by reconstruction rank (${settings.direction}, K = ${settings.k})`, xLabel: 'rank of the candidate by reconstruction distance (1 = closest)', yLabel: `mean ${metric}${ranks.lowerIsBetter[metric] ? ' (lower is better)' : ''}` },
    );
    writeFileAtomicSync(file, svg);
    files.svgs.push(file);
  }
  const md = [`# roundtrip rerank report (${settings.direction})`, '', '```', header, '```', '', tableMarkdown(table, settings.similarity), tieGainMarkdown(ties), ...(domains ?? []).map((d) => tableMarkdown({ ...d.table, title: `${d.table.title} — NoCaps ${d.domain} (${d.items} items)` }, settings.similarity)), ...domainNotes.map((n) => `- ${n}\n`), ranksMarkdown(ranks, settings.similarity)].join('\n');
  writeFileAtomicSync(files.markdown, md);
  writeFileAtomicSync(files.gallery, galleryHtml(settings, records, out, header, galleryItems));
  // the merged records, image paths relative to the report folder
  writeFileAtomicSync(files.merged, records.map((r: ItemRecord) => JSON.stringify({ ...r, candidates: r.candidates.map((c) => ({ ...c, image: path.relative(out, c.image).split(path.sep).join('/') })) })).join('\n') + '\n');
  return { out, settings, items: records.length, sources, table, ranks, ties, domains, files };
}
