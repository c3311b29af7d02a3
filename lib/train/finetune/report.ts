/** The final report of a finetuning run: loss curves (hand-written SVG), JSON and Markdown summaries. */
import * as path from 'path';
import { writeFileAtomicSync } from '../../fsutil';
import { RecipeName, recipeLines } from './recipes';

export interface ReportInput {
  config: object;
  logs: { step: number; loss: number; terms: Record<string, number | undefined>; samplesPerSecond: number; rssMB: number }[];
  validation: { step: number; cider: number }[];
  exported: Record<string, string | undefined>;
  interrupted: boolean;
}


const COLOURS = ['#222222', '#1f77b4', '#ff7f0e', '#2ca02c', '#d62728'];

/** Exponential moving average (weight `1 − alpha` on the past), as TensorBoard smooths curves. */
export function smoothSeries(points: [number, number][], alpha: number): [number, number][] {
  let m: number | undefined;
  return points.map(([x, y]) => {
    if (Number.isFinite(y)) m = m === undefined ? y : alpha * y + (1 - alpha) * m;
    return [x, m ?? y];
  });
}

function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/**
 * Loss curves that can be read: one panel per series (each term on its own scale), the raw values as a
 * faint line and an exponential moving average on top, a log y axis when the series spans more than a
 * factor of 20 (and is positive), the axis range written at both ends.
 */
export function lossPanelsSvg(series: Record<string, [number, number][]>, opts: { smoothing?: number; panelWidth?: number; panelHeight?: number } = {}): string {
  const names = Object.keys(series);
  const W = opts.panelWidth ?? 360;
  const H = opts.panelHeight ?? 200;
  const cols = Math.min(2, Math.max(1, names.length));
  const rows = Math.ceil(names.length / cols);
  const parts: string[] = [];
  names.forEach((name, i) => {
    const raw = series[name].filter(([, y]) => Number.isFinite(y));
    const ox = (i % cols) * W;
    const oy = Math.floor(i / cols) * H;
    const colour = COLOURS[i % COLOURS.length];
    if (raw.length === 0) return;
    const n = raw.length;
    const alpha = opts.smoothing ?? Math.min(1, 2 / (1 + Math.max(1, n / 10)));
    const smooth = smoothSeries(raw, alpha);
    const ys = raw.map(([, y]) => y);
    const [ymin, ymax] = [Math.min(...ys), Math.max(...ys)];
    const log = ymin > 0 && ymax / ymin > 20;
    const f = (y: number) => (log ? Math.log10(y) : y);
    let [y0, y1] = [f(ymin), f(ymax)];
    if (!(y1 > y0)) [y0, y1] = [y0 - 0.5, y0 + 0.5];
    const xs = raw.map(([x]) => x);
    const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    const sx = (x: number) => ox + 55 + ((x - x0) / (x1 - x0 || 1)) * (W - 75);
    const sy = (y: number) => oy + H - 30 - ((f(y) - y0) / (y1 - y0)) * (H - 60);
    const path = (pts: [number, number][]) => pts.map(([x, y], k) => `${k ? 'L' : 'M'}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ');
    parts.push(`<text x="${ox + 55}" y="${oy + 16}" font-size="12" font-weight="bold" fill="${colour}">${escapeXml(name)}${log ? ' (log scale)' : ''}</text>`);
    parts.push(`<line x1="${ox + 55}" y1="${oy + H - 30}" x2="${ox + W - 20}" y2="${oy + H - 30}" stroke="#999"/><line x1="${ox + 55}" y1="${oy + 28}" x2="${ox + 55}" y2="${oy + H - 30}" stroke="#999"/>`);
    parts.push(`<text x="${ox + 51}" y="${sy(ymin)}" font-size="9" text-anchor="end">${ymin.toPrecision(3)}</text><text x="${ox + 51}" y="${sy(ymax) + 8}" font-size="9" text-anchor="end">${ymax.toPrecision(3)}</text>`);
    parts.push(`<text x="${ox + 55}" y="${oy + H - 16}" font-size="9">step ${x0}</text><text x="${ox + W - 20}" y="${oy + H - 16}" font-size="9" text-anchor="end">${x1}</text>`);
    parts.push(`<path d="${path(raw)}" fill="none" stroke="${colour}" stroke-opacity="0.3" stroke-width="1"/>`);
    parts.push(`<path d="${path(smooth)}" fill="none" stroke="${colour}" stroke-width="2"/>`);
    parts.push(`<text x="${ox + W - 20}" y="${oy + 16}" font-size="9" text-anchor="end">raw (faint), EMA α = ${alpha.toPrecision(2)}</text>`);
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${cols * W}" height="${rows * H}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>${parts.join('')}</svg>\n`;
}

/** An SVG line plot of named series over steps (linear axes, min/max labels). */
export function lossCurvesSvg(series: Record<string, [number, number][]>, width = 720, height = 360): string {
  const pad = { l: 60, r: 130, t: 20, b: 40 };
  const pts = Object.values(series).flat().filter(([, y]) => Number.isFinite(y));
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  const [x0, x1] = xs.length ? [Math.min(...xs), Math.max(...xs)] : [0, 1];
  const [y0, y1] = ys.length ? [Math.min(...ys), Math.max(...ys)] : [0, 1];
  const sx = (x: number) => pad.l + ((x - x0) / (x1 - x0 || 1)) * (width - pad.l - pad.r);
  const sy = (y: number) => height - pad.b - ((y - y0) / (y1 - y0 || 1)) * (height - pad.t - pad.b);
  const lines = Object.entries(series).map(([name, s], i) => {
    const colour = COLOURS[i % COLOURS.length];
    const d = s.filter(([, y]) => Number.isFinite(y)).map(([x, y], k) => `${k ? 'L' : 'M'}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ');
    const ly = pad.t + 16 * i + 10;
    return `<path d="${d}" fill="none" stroke="${colour}" stroke-width="1.5"/><text x="${width - pad.r + 10}" y="${ly}" fill="${colour}" font-size="12">${name}</text>`;
  });
  const axis = `<line x1="${pad.l}" y1="${height - pad.b}" x2="${width - pad.r}" y2="${height - pad.b}" stroke="#888"/><line x1="${pad.l}" y1="${pad.t}" x2="${pad.l}" y2="${height - pad.b}" stroke="#888"/>`;
  const labels =
    `<text x="${pad.l}" y="${height - 15}" font-size="11">${x0}</text><text x="${width - pad.r}" y="${height - 15}" font-size="11" text-anchor="end">${x1} steps</text>` +
    `<text x="${pad.l - 5}" y="${sy(y0)}" font-size="11" text-anchor="end">${y0.toPrecision(3)}</text><text x="${pad.l - 5}" y="${sy(y1) + 10}" font-size="11" text-anchor="end">${y1.toPrecision(3)}</text>`;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>${axis}${labels}${lines.join('')}</svg>\n`;
}

/** Writes report.json, report.md and loss-curves.svg into the run folder (atomically). */
export function writeReport(dir: string, r: ReportInput): void {
  const series: Record<string, [number, number][]> = { total: r.logs.map((l) => [l.step, l.loss]) };
  for (const l of r.logs) for (const [k, v] of Object.entries(l.terms)) if (v !== undefined) (series[k] ??= []).push([l.step, v]);
  writeFileAtomicSync(path.join(dir, 'loss-curves.svg'), lossPanelsSvg(series));
  const last = r.logs[r.logs.length - 1];
  const mean = (f: (l: ReportInput['logs'][number]) => number) => (r.logs.length ? r.logs.reduce((a, l) => a + f(l), 0) / r.logs.length : 0);
  const summary = {
    steps: last?.step ?? 0,
    finalLoss: last?.loss ?? null,
    finalTerms: last?.terms ?? {},
    meanSamplesPerSecond: mean((l) => l.samplesPerSecond),
    peakRssMB: Math.max(0, ...r.logs.map((l) => l.rssMB)),
    validation: r.validation,
    bestCider: r.validation.length ? Math.max(...r.validation.map((v) => v.cider)) : null,
    exported: r.exported,
    interrupted: r.interrupted,
    config: r.config,
  };
  writeFileAtomicSync(path.join(dir, 'report.json'), JSON.stringify(summary, null, 2) + '\n');
  const rows = [
    '| metric | value |',
    '| --- | --- |',
    `| steps | ${summary.steps} |`,
    `| final loss | ${summary.finalLoss?.toFixed(4) ?? '-'} |`,
    ...Object.entries(summary.finalTerms).map(([k, v]) => `| final ${k} | ${(v as number).toFixed(4)} |`),
    `| samples/s (mean) | ${summary.meanSamplesPerSecond.toFixed(2)} |`,
    `| peak RSS (MB) | ${summary.peakRssMB.toFixed(0)} |`,
    `| best CIDEr-D | ${summary.bestCider?.toFixed(4) ?? '-'} |`,
  ];
  const recipe = (r.config as { recipe?: RecipeName }).recipe;
  if (recipe) rows.push('', `Recipe \`${recipe}\` (lib/train/finetune/recipes.ts):`, '', ...recipeLines(recipe, r.config as Record<string, unknown>).map((l) => `- ${l}`));
  const val = r.validation.length ? ['', '| step | CIDEr-D |', '| --- | --- |', ...r.validation.map((v) => `| ${v.step} | ${v.cider.toFixed(4)} |`)] : [];
  writeFileAtomicSync(path.join(dir, 'report.md'), `# Finetuning report\n\n${rows.join('\n')}\n${val.join('\n')}\n\n![loss curves](loss-curves.svg)\n`);
}
