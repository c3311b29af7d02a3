/**
 * The demo's index.html: statements, every table, the rank-binned plots and the loss curves inline,
 * and links to the galleries, the per-run reports, the finetuning report and the model folders.
 * Links are relative, so the folder can be moved or served as is.
 */
import * as path from 'path';
import { reportLink, type DemoReport } from './index';
import { escapeHtml, tableHtml } from './tables';

const STYLE = `body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px}td.num{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f4f4f4}ul.notes{font-size:90%;color:#555}img.plot{max-width:100%;border:1px solid #eee;margin:4px 0}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots figure{margin:0;width:48%}figcaption{font-size:90%;color:#555}code{background:#f4f4f4;padding:1px 3px}`;

export function indexHtml(r: DemoReport, outDir: string): string {
  const rel = (file: string) => {
    const link = reportLink(outDir, file);
    return escapeHtml(link.startsWith('/') ? `file://${link}` : link);
  };
  const link = (file: string, text: string) => `<a href="${rel(file)}">${escapeHtml(text)}</a>`;
  const runs = (['before', 'after'] as const)
    .map((phase) =>
      (['i2t2i', 't2i2t'] as const)
        .map((d) => {
          const run = r.phases[phase][d];
          const f = run.report.files;
          const plots = f.svgs.map((s) => `<figure><img class="plot" src="${rel(s)}" alt="${escapeHtml(path.basename(s))}"><figcaption>${escapeHtml(`${phase} finetuning, ${d}: ${path.basename(s, '.svg')}`)}</figcaption></figure>`).join('');
          return `<h3>${escapeHtml(`${phase} finetuning — ${d === 'i2t2i' ? 'image → text → image' : 'text → image → text'}`)}</h3>
<p>${link(f.gallery, 'gallery')} · ${link(f.markdown, 'report (Markdown)')} · ${link(f.json, 'report (JSON)')} · ${link(f.ranksJson, 'rank analysis (JSON)')} · ${link(path.join(run.dir, 'results.jsonl'), 'results.jsonl')}</p>
<div class="plots">${plots || '<p>No rank-binned plot (no per-candidate quality metric).</p>'}</div>`;
        })
        .join('\n'),
    )
    .join('\n');
  const exported = Object.values(r.finetune.exported)
    .filter((f): f is string => typeof f === 'string')
    .map((f) => link(f, path.basename(f)))
    .join(', ');
  const examples = r.phases.before.captions.examples
    .map((e, i) => {
      const after = r.phases.after.captions.examples[i];
      return `<tr><td><img src="${rel(path.join(r.world.dir, e.image))}" width="64" height="64" alt=""></td><td>${escapeHtml(e.reference)}</td><td>${escapeHtml(e.caption)}</td><td>${escapeHtml(after?.caption ?? '')}</td></tr>`;
    })
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>roundtrip demo report</title><style>${STYLE}</style></head>
<body>
<h1>roundtrip demo: BLIP and Stable Diffusion on the synthetic world</h1>
<p>Created ${escapeHtml(r.created)} by <code>${escapeHtml(r.command)}</code>; ${r.seconds.toFixed(1)} s wall time on ${escapeHtml(r.options.device)}${r.options.quick ? ' (--quick)' : ''}.
Models (${escapeHtml(r.models.source)}): ${link(r.models.blip, 'BLIP')}, ${link(r.models.sd, 'Stable Diffusion')}, ${link(r.models.clip, 'CLIP')}.
World: seed ${r.world.seed}, ${r.world.size}×${r.world.size}, ${r.world.counts.train} training and ${r.world.counts.test} held-out test images.</p>
<p>${link(path.join(outDir, 'summary.md'), 'summary.md')} · ${link(path.join(outDir, 'summary.json'), 'summary.json')}</p>
<h2>What happened</h2>
<ul>${r.statements.map((s) => `<li>${escapeHtml(s)}</li>`).join('\n')}</ul>
<h2>Tables</h2>
${r.tables.map(tableHtml).join('\n')}
<h2>Reranking runs: galleries and rank-binned analysis</h2>
${runs}
<h2>Finetuning arms: (a) none, (d) task losses, (e) Eq. 5</h2>
<p>${link(path.join(r.arms.dir, 'summary.md'), 'arms report')} · ${link(path.join(r.arms.dir, 'summary.json'), 'JSON')}</p>
<img class="plot" src="${rel(path.join(r.arms.dir, 'intervals.svg'))}" alt="every measure per arm with its 95 % interval">
<h2>Joint finetuning (arm e, seed ${r.options.seed})</h2>
<p>${link(path.join(r.finetune.dir, 'report.md'), 'finetuning report')} · ${link(path.join(r.finetune.dir, 'log.jsonl'), 'log.jsonl')} · exported partial weights: ${exported || 'none'} · finetuned folders: ${link(r.finetune.models.blip, 'BLIP')}, ${link(r.finetune.models.sd, 'Stable Diffusion')}</p>
<img class="plot" src="${rel(path.join(r.finetune.dir, 'loss-curves.svg'))}" alt="finetuning loss curves">
<h2>BLIP beam captions of test images, before and after finetuning</h2>
<table><tr><th>image</th><th>a reference</th><th>before</th><th>after</th></tr>
${examples}
</table>
${r.warnings.length ? `<h2>Warnings</h2><ul>${r.warnings.map((w) => `<li>${escapeHtml(w)}</li>`).join('')}</ul>` : ''}
</body></html>
`;
}
