/**
 * A hand-written SVG line plot (no plotting dependency): one polyline with markers per series over
 * x = 1..K, axes with ticks, a legend and a title. NaN points are left out.
 */

export interface LineSeries {
  name: string;
  values: readonly number[];
}

export interface LinePlotOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  width?: number;
  height?: number;
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b'];

/** Escapes text for XML/HTML content and attributes. */
export function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&#39;');
}

/** Round, readable tick values covering [lo, hi]. */
function ticks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function fmt(v: number): string {
  return Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(1) : String(Number(v.toPrecision(3)));
}

/** Renders the series as an SVG document. */
export function linePlotSvg(series: readonly LineSeries[], opts: LinePlotOptions): string {
  const width = opts.width ?? 560;
  const height = opts.height ?? 360;
  const m = { left: 64, right: 150, top: 36, bottom: 48 };
  const pw = width - m.left - m.right;
  const ph = height - m.top - m.bottom;
  const n = Math.max(1, ...series.map((s) => s.values.length));
  const finite = series.flatMap((s) => s.values.filter((v) => Number.isFinite(v)));
  let lo = finite.length ? Math.min(...finite) : 0;
  let hi = finite.length ? Math.max(...finite) : 1;
  if (hi === lo) {
    const pad = Math.abs(hi) * 0.1 || 1;
    lo -= pad;
    hi += pad;
  }
  const x = (i: number) => m.left + (n === 1 ? pw / 2 : (i * pw) / (n - 1));
  const y = (v: number) => m.top + ph - ((v - lo) / (hi - lo)) * ph;
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`);
  parts.push(`<rect width="${width}" height="${height}" fill="white"/>`);
  parts.push(`<text x="${m.left + pw / 2}" y="20" text-anchor="middle" font-size="14">${escapeXml(opts.title)}</text>`);
  parts.push(`<line x1="${m.left}" y1="${m.top + ph}" x2="${m.left + pw}" y2="${m.top + ph}" stroke="black"/>`);
  parts.push(`<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${m.top + ph}" stroke="black"/>`);
  for (let i = 0; i < n; i++) {
    parts.push(`<line x1="${x(i)}" y1="${m.top + ph}" x2="${x(i)}" y2="${m.top + ph + 4}" stroke="black"/>`);
    parts.push(`<text x="${x(i)}" y="${m.top + ph + 17}" text-anchor="middle">${i + 1}</text>`);
  }
  for (const t of ticks(lo, hi)) {
    parts.push(`<line x1="${m.left - 4}" y1="${y(t)}" x2="${m.left + pw}" y2="${y(t)}" stroke="#ddd"/>`);
    parts.push(`<text x="${m.left - 7}" y="${y(t) + 4}" text-anchor="end">${fmt(t)}</text>`);
  }
  parts.push(`<text x="${m.left + pw / 2}" y="${height - 10}" text-anchor="middle">${escapeXml(opts.xLabel)}</text>`);
  parts.push(`<text transform="translate(16 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle">${escapeXml(opts.yLabel)}</text>`);
  series.forEach((s, k) => {
    const color = COLORS[k % COLORS.length];
    const pts = s.values.map((v, i) => (Number.isFinite(v) ? `${x(i).toFixed(2)},${y(v).toFixed(2)}` : null)).filter((p): p is string => p !== null);
    if (pts.length > 1) parts.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.join(' ')}"/>`);
    for (const p of pts) {
      const [cx, cy] = p.split(',');
      parts.push(`<circle cx="${cx}" cy="${cy}" r="3.5" fill="${color}"><title>${escapeXml(s.name)}</title></circle>`);
    }
    const ly = m.top + 10 + k * 18;
    parts.push(`<line x1="${m.left + pw + 14}" y1="${ly}" x2="${m.left + pw + 34}" y2="${ly}" stroke="${color}" stroke-width="2"/>`);
    parts.push(`<text x="${m.left + pw + 40}" y="${ly + 4}">${escapeXml(s.name)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
