/**
 * `roundtrip sweep`: image → text → image reranking on the built-in world under a range of one setting —
 * the number of candidates K (the paper's Figure 9) or BLIP's decoding (Appendices B/C: top-p, top-k,
 * temperature) — with everything else fixed. For each value: the random candidate's and the reranked
 * caption's CIDEr-D (ties broken by the declared rule) and the gain with its paired 95 % interval; one
 * table, JSON and a plot of both against the setting.
 */
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError, expectInteger, expectNumber, expectOneOf, expectString } from '../../errors';
import { resolveWorldModels, worldRerankOptions } from '../../demo/models';
import { writeFileAtomicSync } from '../../fsutil';
import { ProgressStream } from '../../progress';
import { buildReport } from '../report';
import { rerankI2t2i } from '../rerank';
import { WORLD_FILES, writeWorld } from '../../world';
import { formatInterval } from './stats';

export const SWEEPS = ['k', 'top-p', 'top-k', 'temperature'] as const;
export type SweepName = (typeof SWEEPS)[number];

/** The paper's ranges (Figure 9: K up to 20; Appendix B/C decoding settings). */
export const SWEEP_DEFAULTS: Record<SweepName, number[]> = {
  k: [2, 4, 8, 16],
  'top-p': [0.5, 0.7, 0.9, 0.95],
  'top-k': [5, 10, 50, 100],
  temperature: [0.5, 0.7, 1.0, 1.5],
};

export interface SweepOptions {
  out: string;
  cache?: string;
  weights?: string;
  vocab?: string;
  what: SweepName;
  values?: number[];
  /** K when K is not the swept setting. */
  k: number;
  items: number;
  sdSteps: number;
  guidance: number;
  repeats: number;
  seed: number;
  device: string;
  quiet?: boolean;
  stream?: ProgressStream;
}

export interface SweepPoint {
  value: number;
  random: number;
  reranked: number;
  gain: { value: number; lo: number; hi: number; significant: boolean };
  ties: number;
  items: number;
  run: string;
}

export async function runSweep(o: SweepOptions): Promise<{ points: SweepPoint[]; files: { json: string; markdown: string; svg: string } }> {
  const out = path.resolve(expectString('--out', o.out));
  const what = expectOneOf('--what', o.what, SWEEPS);
  const values = o.values?.length ? o.values : SWEEP_DEFAULTS[what];
  values.forEach((v, i) => (what === 'k' || what === 'top-k' ? expectInteger(`--values[${i}]`, v, { min: what === 'k' ? 2 : 1 }) : expectNumber(`--values[${i}]`, v, { min: 0, exclusiveMin: true })));
  expectInteger('--k', o.k, { min: 2 });
  expectInteger('--items', o.items, { min: 2 });
  fs.mkdirSync(out, { recursive: true });
  const cache = path.resolve(o.cache ?? path.join(out, 'cache'));
  const warnings: string[] = [];
  const models = await resolveWorldModels({ weights: o.weights, cache, vocab: o.vocab, quiet: o.quiet, stream: o.stream, warn: (m) => warnings.push(m) });
  const worldDir = path.join(cache, 'world');
  await writeWorld(worldDir, { seed: models.world.seed, counts: { train: 1, val: 0, test: o.items }, size: models.world.size, quiet: true });
  const points: SweepPoint[] = [];
  for (const value of values) {
    const dir = path.join(out, 'runs', `${what}-${value}`);
    const decoding =
      what === 'top-k' ? { strategy: 'top-k', topK: value } : what === 'temperature' ? { strategy: 'temperature', temperature: value } : what === 'top-p' ? { strategy: 'top-p', topP: value } : { strategy: 'top-p', topP: 0.9 };
    await rerankI2t2i({
      ...worldRerankOptions(models, { ...o, k: what === 'k' ? value : o.k, sdBatch: 4, progress: !o.quiet }),
      out: dir,
      annotations: path.join(worldDir, WORLD_FILES.test),
      images: worldDir,
      similarity: 'clip',
      ...decoding,
    });
    const report = await buildReport([dir], { galleryItems: 0 });
    const row = report.ties.find((t) => t.method === 'clip' && t.metric === 'CIDEr');
    if (!row) throw new RoundtripError(`sweep ${what}=${value}: no CIDEr in the report of ${dir}`);
    points.push({ value, random: row.random, reranked: row.tieBroken, gain: row.gain, ties: row.ties, items: row.items, run: path.relative(out, dir) });
  }
  const files = { json: path.join(out, 'sweep.json'), markdown: path.join(out, 'sweep.md'), svg: path.join(out, 'sweep.svg') };
  const label = what === 'k' ? 'K (candidates)' : what;
  writeFileAtomicSync(files.json, JSON.stringify({ format: 'roundtrip-sweep', version: 1, what, k: o.k, items: o.items, seed: o.seed, models, points, warnings }, null, 2) + '\n');
  const md = [
    `# sweep: ${label} (i2t2i on the world, ${o.items} test images${what === 'k' ? '' : `, K = ${o.k}`}, CLIP reconstruction distance)`,
    '',
    `| ${label} | random CIDEr-D | reranked CIDEr-D | gain [95 % interval] | ties |`,
    '| --- | --- | --- | --- | --- |',
    ...points.map((p) => `| ${p.value} | ${p.random.toFixed(4)} | ${p.reranked.toFixed(4)} | ${formatInterval(p.gain, 4)}${p.gain.significant ? '' : ' (n.s.)'} | ${p.ties}/${p.items} |`),
    '',
    '![sweep](sweep.svg)',
    '',
  ].join('\n');
  writeFileAtomicSync(files.markdown, md);
  writeFileAtomicSync(files.svg, sweepSvg(points, label));
  return { points, files };
}

function sweepSvg(points: SweepPoint[], label: string): string {
  const W = 560;
  const H = 300;
  const xs = points.map((_, i) => i);
  const ys = points.flatMap((p) => [p.random, p.reranked, p.random + p.gain.lo, p.random + p.gain.hi]).filter(Number.isFinite);
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (!(y1 > y0)) [y0, y1] = [y0 - 0.5, y0 + 0.5];
  const sx = (i: number) => 60 + (xs.length > 1 ? (i / (xs.length - 1)) * (W - 100) : (W - 100) / 2);
  const sy = (y: number) => H - 40 - ((y - y0) / (y1 - y0)) * (H - 70);
  const line = (get: (p: SweepPoint) => number, colour: string) => `<polyline points="${points.map((p, i) => `${sx(i).toFixed(1)},${sy(get(p)).toFixed(1)}`).join(' ')}" fill="none" stroke="${colour}" stroke-width="2"/>`;
  const bars = points.map((p, i) => `<line x1="${sx(i).toFixed(1)}" y1="${sy(p.random + p.gain.lo).toFixed(1)}" x2="${sx(i).toFixed(1)}" y2="${sy(p.random + p.gain.hi).toFixed(1)}" stroke="#1f77b4" stroke-opacity="0.5" stroke-width="6"/>`).join('');
  const ticks = points.map((p, i) => `<text x="${sx(i).toFixed(1)}" y="${H - 22}" font-size="10" text-anchor="middle">${p.value}</text>`).join('');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>
<text x="60" y="16" font-size="12">CIDEr-D: reranked (blue, bar = random + gain's 95 % interval) vs random (grey), by ${label}</text>
<line x1="60" y1="${H - 40}" x2="${W - 40}" y2="${H - 40}" stroke="#999"/><line x1="60" y1="26" x2="60" y2="${H - 40}" stroke="#999"/>
<text x="56" y="${sy(y0)}" font-size="9" text-anchor="end">${y0.toFixed(3)}</text><text x="56" y="${sy(y1) + 8}" font-size="9" text-anchor="end">${y1.toFixed(3)}</text>
${bars}${line((p) => p.random, '#888888')}${line((p) => p.reranked, '#1f77b4')}${ticks}<text x="${W / 2}" y="${H - 6}" font-size="11" text-anchor="middle">${label}</text></svg>
`;
}
