/**
 * `roundtrip bench recon`: the four loss terms (L_cap, L_sd, L_rec_img, L_rec_txt) and the task metrics
 * on a fixed held-out set, for the base models and each checkpoint, with identical seeded draws for
 * every checkpoint (lib/paper/joint/recon.ts). Output: a table, JSON, and an SVG of each term against the
 * checkpoint step with its 95 % interval. Deterministic: the same checkpoint gives the same numbers.
 */
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError, expectInteger, expectNumber, expectString } from '../../errors';
import { VocabularyBridge, buildBridge, buildOptBridge, loadBridge } from '../bridge';
import { ClipTextEncoder, clipTextEmbeddings, loadClipTextEncoder } from '../../metrics/eval/text-embeddings';
import { batchToImages } from '../../image/encode';
import { deriveSeed } from '../../image/random';
import type { RgbImage } from '../../image/types';
import { ciderD } from '../../metrics/cider';
import { Blip2 } from '../../models/blip2';
import { Captioner, captionerFamily, loadCaptioner } from '../../models/captioner';
import { Blip2CaptionTokenizer, blip2CaptionTokenizer } from './blip2';
import { ClipModel, cosineDistance } from '../../models/clip';
import { StableDiffusionPipeline } from '../../models/sd/pipeline';
import { clipImageEmbedder } from '../rerank/models';
import { preCaption } from '../../tokenizers/blip';
import { loadBertTokenizer } from '../../tokenizers/load';
import type { BertTokenizer } from '../../tokenizers/bert';
import { writeFileAtomicSync } from '../../fsutil';
import { createProgress, ProgressStream } from '../../progress';
import { ArmStats, Difference, armInterval, bootstrapPlan, formatInterval, meanSamples, pairedDifference } from '../experiment/stats';
import { HeldOutItem, RECON_TERMS, RECON_TERM_LABELS, ReconCheckpoint, ReconTerm, heldOutLosses, readHeldOut, resolveReconCheckpoint } from './recon';
import { RECONSTRUCT_TEXT_MODES, ReconstructTextMode } from './losses';

export interface BenchReconOptions {
  blip: string;
  sd: string;
  /** Checkpoint, export or run folders, measured after the base models. */
  checkpoints: string[];
  /** Karpathy-layout held-out list and the folder its images are relative to (default its own folder). */
  data: string;
  images?: string;
  n: number;
  seed: number;
  /** Bridge file (default: learned from the held-out captions). */
  bridge?: string;
  /** CLIP folder: adds the CLIP distance of SD images to their captions. */
  clip?: string;
  prompt: string;
  recTxtMode: ReconstructTextMode;
  sdSteps: number;
  guidance: number;
  /** Folder for recon.json, recon.md, recon.svg (default: no files). */
  out?: string;
  device: string;
  replicates: number;
  quiet?: boolean;
  stream?: ProgressStream;
}

export interface ReconRow {
  name: string;
  step: number;
  /** Per term: mean and 95 % interval over the items. */
  losses: Record<ReconTerm, ArmStats>;
  /** Per term: this row minus the base row (paired over items). */
  vsBase: Record<ReconTerm, Difference>;
  /** Task metrics: BLIP beam-caption CIDEr-D, and (with --clip) SD images' CLIP distance to their caption. */
  metrics: Record<string, ArmStats>;
  /** Per-item values (for checking determinism and for further analysis). */
  perItem: Record<string, number[]>;
}

export interface BenchReconResult {
  rows: ReconRow[];
  text: string;
  json: object;
  svg: string;
  files?: { json: string; markdown: string; svg: string };
}

async function taskMetrics(blip: Captioner, sd: StableDiffusionPipeline, clip: ClipTextEncoder | undefined, items: readonly HeldOutItem[], o: BenchReconOptions, sizes: { sd: number }): Promise<Record<string, number[]>> {
  const images = items.map((i) => i.image);
  // BLIP-2 counts lengths in new tokens (transformers 4.37.2): the same 30-token budget, at least 5 tokens.
  const generated =
    blip instanceof Blip2
      ? await blip.caption(images, { strategy: 'beam', numBeams: 3, maxNewTokens: 30, minNewTokens: 5, batchSize: 8, prompt: o.prompt.trimEnd() || undefined })
      : await blip.caption(images, { strategy: 'beam', numBeams: 3, maxLength: 30, minLength: 5, batchSize: 8, prompt: o.prompt || undefined });
  const captions = generated.map((c) => c[0] || '(empty)');
  const out: Record<string, number[]> = { cider: ciderD(captions.map((c) => preCaption(c)), items.map((i) => i.captions.map((r) => preCaption(r)))).perImage };
  if (clip) {
    const prompts = items.map((i) => i.captions[0]);
    const images: RgbImage[] = [];
    for (let s = 0; s < prompts.length; s += 8) {
      const seeds = prompts.slice(s, s + 8).map((_, k) => deriveSeed(o.seed, 0x5d, s + k) & 0x7fffffff);
      const r = await sd.generate(prompts.slice(s, s + 8), { scheduler: 'ddim', steps: o.sdSteps, guidance: o.guidance, seed: seeds, height: sizes.sd, width: sizes.sd });
      images.push(...batchToImages(r.images.toFloat32Array(), r.images.shape, { range: '[-1,1]' }));
      r.images.dispose();
    }
    const t = await clipTextEmbeddings(clip, prompts, { variant: 'projected', batchSize: 16 });
    const v = await clipImageEmbedder(clip.model as ClipModel, 'projected').embed(images);
    out.clipDistance = t.map((x, i) => cosineDistance(x, v[i]));
  }
  return out;
}

/** Defaults of `benchRecon`, which `roundtrip bench recon`'s flags take too. */
export const BENCH_RECON_DEFAULTS = {
  checkpoints: [] as string[],
  n: 64,
  seed: 0,
  prompt: '',
  recTxtMode: 'x0' as ReconstructTextMode,
  sdSteps: 10,
  guidance: 4,
  device: 'cpu',
  replicates: 2000,
};
type Defaulted = keyof typeof BENCH_RECON_DEFAULTS;
/** `benchRecon`'s input: the options, those with a default (BENCH_RECON_DEFAULTS) optional. */
export type BenchReconInput = Omit<BenchReconOptions, Defaulted> & Partial<Pick<BenchReconOptions, Defaulted>>;

export async function benchRecon(input: BenchReconInput): Promise<BenchReconResult> {
  if (input.data === undefined) throw new RoundtripError('bench recon: --data FILE is required (a Karpathy-layout list of held-out images and captions)');
  if (input.blip === undefined || input.sd === undefined) throw new RoundtripError('bench recon: --blip and --sd are required (the base model folders the checkpoints were trained from)');
  const o: BenchReconOptions = { ...BENCH_RECON_DEFAULTS } as BenchReconOptions;
  for (const [k, v] of Object.entries(input)) if (v !== undefined) (o as unknown as Record<string, unknown>)[k] = v;
  expectString('--blip', o.blip);
  expectString('--sd', o.sd);
  expectString('--data', o.data);
  expectInteger('--n', o.n, { min: 2 });
  expectInteger('--seed', o.seed, { min: 0, max: 0x7fffffff });
  expectInteger('--sd-steps', o.sdSteps, { min: 1 });
  expectNumber('--guidance', o.guidance, { min: 0 });
  expectInteger('--replicates', o.replicates, { min: 1 });
  expectString('--device', o.device);
  if (!RECONSTRUCT_TEXT_MODES.includes(o.recTxtMode)) throw new RoundtripError(`--rec-txt-mode: expected ${RECONSTRUCT_TEXT_MODES.join(' or ')}, got '${o.recTxtMode}'`);
  const items = readHeldOut(o.data, o.images ?? path.dirname(path.resolve(o.data)), o.n);
  const checkpoints: ReconCheckpoint[] = [{ name: 'base', step: 0, files: {} }, ...o.checkpoints.map((c, i) => resolveReconCheckpoint(c, i + 1))];
  const family = captionerFamily(o.blip);
  let bert: BertTokenizer | Blip2CaptionTokenizer | undefined = family === 'blip' ? loadBertTokenizer(o.blip) : undefined;
  const clip = o.clip ? await loadClipTextEncoder(o.clip, { device: o.device }) : undefined;
  let bridge: VocabularyBridge | undefined = o.bridge ? loadBridge(o.bridge) : undefined;
  const progress = createProgress({ label: 'bench recon', total: checkpoints.length * items.length, unit: 'item', quiet: o.quiet, stream: o.stream });
  const perItem: Record<string, number[]>[] = [];
  try {
    for (const [k, ck] of checkpoints.entries()) {
      const blip = await loadCaptioner(o.blip, { device: o.device, partial: ck.files.blip ? [ck.files.blip] : [] });
      const sd = await StableDiffusionPipeline.load(o.sd, { device: o.device, partial: ck.files.unet ? { unet: [ck.files.unet] } : {} });
      try {
        const tok = (bert ??= blip instanceof Blip2 ? blip2CaptionTokenizer(blip) : loadBertTokenizer(o.blip));
        const captions = items.flatMap((i) => i.captions);
        bridge ??= tok.kind === 'blip2' ? buildOptBridge(captions, tok.opt, sd.tokenizer, { eosId: tok.eosId, vocabSize: tok.vocabSize }) : buildBridge(captions, tok, sd.tokenizer);
        const sizes = { blip: blip.imageSize, sd: sd.unet.sampleSize * sd.vaeFactor };
        const losses = await heldOutLosses({ blip, sd, bridge, bert: tok }, items, {
          seed: o.seed,
          blipSize: sizes.blip,
          sdSize: sizes.sd,
          prompt: o.prompt,
          recTxtMode: o.recTxtMode,
          onItem: (done) => progress.update(k * items.length + done),
        });
        perItem.push({ ...losses, ...(await taskMetrics(blip, sd, clip, items, o, sizes)) });
      } finally {
        blip.dispose();
        sd.dispose();
      }
    }
  } finally {
    progress.done();
    clip?.model.dispose();
  }
  const plan = bootstrapPlan(items.length, 1, { replicates: o.replicates, seed: o.seed });
  const rows: ReconRow[] = checkpoints.map((ck, k) => {
    const stats = (key: string) => armInterval(`${ck.name} ${key}`, meanSamples([perItem[k][key]]), plan);
    return {
      name: ck.name,
      step: ck.step,
      losses: Object.fromEntries(RECON_TERMS.map((t) => [t, stats(t)])) as Record<ReconTerm, ArmStats>,
      vsBase: Object.fromEntries(RECON_TERMS.map((t) => [t, pairedDifference(`${ck.name} ${t} − base`, meanSamples([perItem[k][t]]), meanSamples([perItem[0][t]]), plan)])) as Record<ReconTerm, Difference>,
      metrics: Object.fromEntries(Object.keys(perItem[k]).filter((key) => !(RECON_TERMS as readonly string[]).includes(key)).map((key) => [key, stats(key)])),
      perItem: perItem[k],
    };
  });
  const text = reconTable(rows, items.length, o);
  const json = { format: 'roundtrip-bench-recon', version: 1, data: path.resolve(o.data), n: items.length, seed: o.seed, blip: o.blip, sd: o.sd, prompt: o.prompt, recTxtMode: o.recTxtMode, labelSmoothing: 0, rows };
  const svg = reconSvg(rows);
  const result: BenchReconResult = { rows, text, json, svg };
  if (o.out) {
    fs.mkdirSync(o.out, { recursive: true });
    result.files = { json: path.join(o.out, 'recon.json'), markdown: path.join(o.out, 'recon.md'), svg: path.join(o.out, 'recon.svg') };
    writeFileAtomicSync(result.files.json, JSON.stringify(json, null, 2) + '\n');
    writeFileAtomicSync(result.files.markdown, `# bench recon\n\n${text}\n![losses against step](recon.svg)\n`);
    writeFileAtomicSync(result.files.svg, svg);
  }
  return result;
}

function reconTable(rows: ReconRow[], n: number, o: BenchReconOptions): string {
  const metricKeys = Object.keys(rows[0]?.metrics ?? {});
  const label: Record<string, string> = { cider: 'CIDEr-D ↑', clipDistance: 'CLIP dist ↓' };
  const lines = [
    `bench recon: ${n} held-out images of ${o.data}, draws seeded by ${o.seed} (identical for every row), label smoothing 0, x̂ mode ${o.recTxtMode}; mean [95 % interval]`,
    '',
    `| checkpoint | step | ${RECON_TERMS.map((t) => RECON_TERM_LABELS[t]).join(' | ')} | ${metricKeys.map((k) => label[k] ?? k).join(' | ')} |`,
    `| --- | --- | ${RECON_TERMS.map(() => '---').join(' | ')} | ${metricKeys.map(() => '---').join(' | ')} |`,
    ...rows.map((r) => `| ${r.name === 'base' ? 'base' : path.basename(r.name)} | ${r.step} | ${RECON_TERMS.map((t) => formatInterval(r.losses[t], 4) + (r.name !== 'base' ? ` (Δ ${formatInterval(r.vsBase[t], 4)}${r.vsBase[t].significant ? '' : ', n.s.'})` : '')).join(' | ')} | ${metricKeys.map((k) => formatInterval(r.metrics[k])).join(' | ')} |`),
    '',
    'Δ: minus the base row, paired over the same items and draws; n.s.: the interval includes 0.',
  ];
  return lines.join('\n') + '\n';
}

const COLOURS: Record<ReconTerm, string> = { cap: '#1f77b4', sd: '#ff7f0e', recImg: '#2ca02c', recTxt: '#d62728' };

/** Each term against the checkpoint step: one panel per term (own y scale), mean with its interval. */
function reconSvg(unsorted: ReconRow[]): string {
  const rows = [...unsorted].sort((a, b) => a.step - b.step);
  const W = 360;
  const H = 200;
  const parts: string[] = [];
  const steps = rows.map((r) => r.step);
  const [x0, x1] = [Math.min(...steps), Math.max(...steps)];
  RECON_TERMS.forEach((t, i) => {
    const ox = (i % 2) * W;
    const oy = Math.floor(i / 2) * H;
    const vals = rows.flatMap((r) => [r.losses[t].lo, r.losses[t].hi]).filter(Number.isFinite);
    let [y0, y1] = [Math.min(...vals), Math.max(...vals)];
    if (!(y1 > y0)) [y0, y1] = [y0 - 0.5, y0 + 0.5];
    const sx = (x: number) => ox + 50 + ((x - x0) / (x1 - x0 || 1)) * (W - 70);
    const sy = (y: number) => oy + H - 30 - ((y - y0) / (y1 - y0)) * (H - 60);
    parts.push(`<text x="${ox + 50}" y="${oy + 16}" font-size="12" font-weight="bold" fill="${COLOURS[t]}">${RECON_TERM_LABELS[t]}</text>`);
    parts.push(`<line x1="${ox + 50}" y1="${oy + H - 30}" x2="${ox + W - 20}" y2="${oy + H - 30}" stroke="#999"/><line x1="${ox + 50}" y1="${oy + 30}" x2="${ox + 50}" y2="${oy + H - 30}" stroke="#999"/>`);
    parts.push(`<text x="${ox + 46}" y="${sy(y0)}" font-size="9" text-anchor="end">${y0.toPrecision(4)}</text><text x="${ox + 46}" y="${sy(y1) + 8}" font-size="9" text-anchor="end">${y1.toPrecision(4)}</text>`);
    parts.push(`<text x="${ox + 50}" y="${oy + H - 16}" font-size="9">step ${x0}</text><text x="${ox + W - 20}" y="${oy + H - 16}" font-size="9" text-anchor="end">${x1}</text>`);
    const band = [...rows.map((r) => `${sx(r.step).toFixed(1)},${sy(r.losses[t].hi).toFixed(1)}`), ...[...rows].reverse().map((r) => `${sx(r.step).toFixed(1)},${sy(r.losses[t].lo).toFixed(1)}`)].join(' ');
    parts.push(`<polygon points="${band}" fill="${COLOURS[t]}" fill-opacity="0.15"/>`);
    parts.push(`<polyline points="${rows.map((r) => `${sx(r.step).toFixed(1)},${sy(r.losses[t].value).toFixed(1)}`).join(' ')}" fill="none" stroke="${COLOURS[t]}" stroke-width="2"/>`);
    for (const r of rows) parts.push(`<circle cx="${sx(r.step).toFixed(1)}" cy="${sy(r.losses[t].value).toFixed(1)}" r="3" fill="${COLOURS[t]}"/>`);
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${2 * W}" height="${2 * H}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>${parts.join('')}</svg>\n`;
}
