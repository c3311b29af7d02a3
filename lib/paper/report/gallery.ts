/**
 * The HTML gallery: per item the input, every candidate with its image, text, distances, ranks and
 * scores; the winner of each similarity method and the first baseline pick are marked. Images are
 * referenced by paths relative to the gallery file (nothing is copied).
 */
import * as path from 'path';
import { ItemRecord, RunSettings } from '../rerank/types';
import { escapeXml } from './svg';

function rel(from: string, file: string): string {
  return escapeXml(path.relative(from, file).split(path.sep).join('/'));
}

function num(v: number): string {
  return Number.isFinite(v) ? v.toFixed(4) : String(v);
}

/** Renders the gallery for `records` (the first `limit`), as a file to be saved in `outDir`. */
export function galleryHtml(settings: RunSettings, records: readonly ItemRecord[], outDir: string, header: string, limit = 100): string {
  const shown = records.slice(0, limit);
  const css = `body{font-family:sans-serif;margin:20px}table{border-collapse:collapse}td{vertical-align:top;padding:6px;border:1px solid #ccc;width:180px}
img{width:160px;height:160px;object-fit:cover;display:block}.win{background:#e6ffe6}.base{outline:3px dashed #f90}.tag{font-size:11px;font-weight:bold}
.small{font-size:11px;color:#333}pre{background:#f6f6f6;padding:8px;white-space:pre-wrap}`;
  const out: string[] = [];
  out.push(`<!DOCTYPE html><html><head><meta charset="utf-8"><title>roundtrip rerank ${escapeXml(settings.direction)}</title><style>${css}</style></head><body>`);
  out.push(`<h1>Reranking gallery: ${escapeXml(settings.direction)}</h1><pre>${escapeXml(header)}</pre>`);
  out.push(`<p>Green: winner of a similarity method (closest reconstruction). Dashed orange: the baseline's first random pick. Distances: lower is closer.</p>`);
  if (shown.length < records.length) out.push(`<p>Showing ${shown.length} of ${records.length} items.</p>`);
  for (const r of shown) {
    out.push(`<h3>#${r.index} ${escapeXml(r.id)}</h3><table><tr>`);
    const inputImage = r.input.image ?? r.realImage;
    out.push(
      `<td><div class="tag">input</div>${inputImage ? `<img src="${rel(outDir, inputImage)}" alt="input">` : ''}${r.input.text ? `<div>${escapeXml(r.input.text)}</div>` : ''}` +
        (r.references.length && settings.direction === 'i2t2i' ? `<div class="small">references:<br>${r.references.map(escapeXml).join('<br>')}</div>` : '') +
        `</td>`,
    );
    for (const c of r.candidates) {
      const wins = Object.entries(r.winner).filter(([, j]) => j === c.index).map(([m]) => m);
      const isBase = r.baseline[0] === c.index;
      const cls = [wins.length ? 'win' : '', isBase ? 'base' : ''].filter(Boolean).join(' ');
      const dist = Object.entries(c.distance).map(([m, d]) => `${escapeXml(m)}: ${num(d)} (rank ${c.rank[m]})`).join('<br>');
      const scores = Object.entries(c.scores).map(([m, v]) => `${escapeXml(m)}: ${num(v)}`).join('<br>');
      out.push(
        `<td class="${cls}"><div class="tag">candidate ${c.index}${wins.length ? ` ★ ${escapeXml(wins.join(', '))}` : ''}${isBase ? ' · baseline' : ''}</div>` +
          `<img src="${rel(outDir, c.image)}" alt="candidate ${c.index}"><div>${escapeXml(c.text)}</div><div class="small">${dist}${scores ? '<br>' + scores : ''}<br>seed ${c.seed}</div></td>`,
      );
    }
    out.push('</tr></table>');
  }
  out.push('</body></html>');
  return out.join('\n') + '\n';
}
