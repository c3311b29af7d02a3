/** A forest plot of every measure: one panel per measure, one row per arm, value with its 95 % interval. */
import type { ArmStats } from './stats';

const COLOURS = ['#555555', '#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b'];

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

export function forestPlotSvg(metrics: { label: string; higherIsBetter: boolean; arms: Record<string, ArmStats> }[], arms: { name: string; label: string }[]): string {
  const panelW = 300;
  const rowH = 14;
  const panelH = 34 + rowH * arms.length;
  const cols = 3;
  const width = cols * panelW + 20;
  const legendH = 16 * arms.length + 10;
  const height = Math.ceil(metrics.length / cols) * panelH + legendH + 10;
  const parts: string[] = [];
  metrics.forEach((m, i) => {
    const x0 = 10 + (i % cols) * panelW;
    const y0 = Math.floor(i / cols) * panelH + 10;
    const values = arms.flatMap((a) => [m.arms[a.name]?.lo, m.arms[a.name]?.hi]).filter((v): v is number => Number.isFinite(v));
    let lo = Math.min(...values);
    let hi = Math.max(...values);
    if (!values.length) [lo, hi] = [0, 1];
    if (hi - lo < 1e-9) [lo, hi] = [lo - 0.5, hi + 0.5];
    const pad = (hi - lo) * 0.05;
    lo -= pad;
    hi += pad;
    const left = x0 + 30;
    const right = x0 + panelW - 20;
    const sx = (v: number) => left + ((v - lo) / (hi - lo)) * (right - left);
    parts.push(`<text x="${x0}" y="${y0 + 10}" font-size="11" font-weight="bold">${esc(m.label)} ${m.higherIsBetter ? '↑' : '↓'}</text>`);
    parts.push(`<line x1="${left}" y1="${y0 + panelH - 18}" x2="${right}" y2="${y0 + panelH - 18}" stroke="#999"/>`);
    parts.push(`<text x="${left}" y="${y0 + panelH - 6}" font-size="9">${lo.toPrecision(3)}</text><text x="${right}" y="${y0 + panelH - 6}" font-size="9" text-anchor="end">${hi.toPrecision(3)}</text>`);
    arms.forEach((a, k) => {
      const s = m.arms[a.name];
      if (!s) return;
      const y = y0 + 20 + k * rowH;
      const c = COLOURS[k % COLOURS.length];
      parts.push(`<text x="${x0}" y="${y + 4}" font-size="9" fill="${c}">${esc(a.name)}</text>`);
      if (Number.isFinite(s.lo) && Number.isFinite(s.hi)) parts.push(`<line x1="${sx(s.lo).toFixed(1)}" y1="${y}" x2="${sx(s.hi).toFixed(1)}" y2="${y}" stroke="${c}" stroke-width="2"/>`);
      if (Number.isFinite(s.value)) parts.push(`<circle cx="${sx(s.value).toFixed(1)}" cy="${y}" r="3" fill="${c}"/>`);
    });
  });
  const ly = Math.ceil(metrics.length / cols) * panelH + 20;
  arms.forEach((a, k) => parts.push(`<text x="10" y="${ly + 16 * k}" font-size="11" fill="${COLOURS[k % COLOURS.length]}">${esc(a.name)}: ${esc(a.label)}</text>`));
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>${parts.join('')}</svg>\n`;
}
