/**
 * `roundtrip validate-score`: does `score` (the reconstruction distance of a caption: SD draws it, CLIP
 * compares the drawings with the image; the paper's §7 label-free quality measure) rank captions as the
 * references and the world's ground truth do? On the built-in world's test images, three captions per
 * image of spread-out quality are scored — BLIP's beam caption, one of the image's own captions (held out
 * of the references), and another image's caption — and the reconstruction score (−distance) is
 * compared with CIDEr-D against the remaining references and with the world's exact attribute accuracy
 * (the share of the scene's objects whose colour and shape the caption gets right), by Kendall's τ-b with
 * a bootstrap interval over the (image, caption) pairs.
 */
import * as fs from 'fs';
import * as path from 'path';
import { expectInteger, expectString } from '../../errors';
import { resolveWorldModels } from '../../demo/models';
import { writeFileAtomicSync } from '../../fsutil';
import { ciderD } from '../../metrics/cider';
import { Blip } from '../../models/blip';
import { ReconstructionScorer } from '../rerank/score';
import { preCaption } from '../../tokenizers/blip';
import { parseCaption, scoreDescription, writeWorld } from '../../world';
import { Interval, formatInterval, kendallTauInterval } from './stats';

export interface ValidateScoreOptions {
  out: string;
  cache?: string;
  weights?: string;
  vocab?: string;
  items: number;
  /** SD drawings per caption. */
  drawings: number;
  sdSteps: number;
  guidance: number;
  seed: number;
  device: string;
  quiet?: boolean;
}

export interface ValidateScoreResult {
  pairs: { image: string; kind: 'blip' | 'own' | 'other'; caption: string; distance: number; cider: number; attributes: number }[];
  tauCider: Interval;
  tauAttributes: Interval;
  files: { json: string; markdown: string };
}

export async function validateScore(o: ValidateScoreOptions): Promise<ValidateScoreResult> {
  const out = path.resolve(expectString('--out', o.out));
  const items = expectInteger('--items', o.items, { min: 3 });
  fs.mkdirSync(out, { recursive: true });
  const cache = path.resolve(o.cache ?? path.join(out, 'cache'));
  const models = await resolveWorldModels({ weights: o.weights, cache, vocab: o.vocab, quiet: o.quiet, warn: () => undefined });
  const worldDir = path.join(cache, 'world');
  const world = await writeWorld(worldDir, { seed: models.world.seed, counts: { train: 1, val: 0, test: items }, size: models.world.size, quiet: true });
  const test = world.manifest.entries.test;
  const blip = await Blip.load(models.blip, { device: o.device });
  let beams: string[];
  try {
    beams = (await blip.caption(test.map((e) => path.resolve(worldDir, e.image)), { strategy: 'beam', numBeams: 3, maxLength: 24, minLength: 5, batchSize: 16 })).map((c) => c[0] || '(empty)');
  } finally {
    blip.dispose();
  }
  const candidates = test.flatMap((e, i) => [
    { entry: e, kind: 'blip' as const, caption: beams[i] },
    { entry: e, kind: 'own' as const, caption: e.captions[0] },
    { entry: e, kind: 'other' as const, caption: test[(i + 1) % test.length].captions[0] },
  ]);
  // references without caption 0, so the image's own caption is not scored against itself
  const refs = candidates.map((c) => c.entry.captions.slice(1).map((r) => preCaption(r)));
  const cider = ciderD(candidates.map((c) => preCaption(c.caption)), refs).perImage;
  const scorer = await ReconstructionScorer.load('caption', { sd: models.sd, clip: models.clip, similarity: 'clip', seeds: o.drawings, seed: o.seed, scheduler: 'ddim', steps: o.sdSteps, guidance: o.guidance, size: models.world.size, cache: path.join(out, 'drawings'), device: o.device });
  const pairs: ValidateScoreResult['pairs'] = [];
  try {
    for (const [i, c] of candidates.entries()) {
      const s = await scorer.captionDistance(path.resolve(worldDir, c.entry.image), c.caption);
      const d = scoreDescription(c.entry, parseCaption(c.caption));
      const attributes = (d.color.correct + d.shape.correct) / Math.max(1, d.color.total + d.shape.total);
      pairs.push({ image: c.entry.image, kind: c.kind, caption: c.caption, distance: s.distance.clip, cider: cider[i], attributes });
    }
  } finally {
    scorer.dispose();
  }
  const score = pairs.map((p) => -p.distance);
  const tauCider = kendallTauInterval(score, pairs.map((p) => p.cider), { seed: o.seed });
  const tauAttributes = kendallTauInterval(score, pairs.map((p) => p.attributes), { seed: o.seed + 1 });
  const files = { json: path.join(out, 'validate-score.json'), markdown: path.join(out, 'validate-score.md') };
  const mean = (kind: string, key: 'distance' | 'cider' | 'attributes') => {
    const xs = pairs.filter((p) => p.kind === kind).map((p) => p[key]);
    return xs.reduce((a, b) => a + b, 0) / xs.length;
  };
  writeFileAtomicSync(files.json, JSON.stringify({ format: 'roundtrip-validate-score', version: 1, items, drawings: o.drawings, models, tauCider, tauAttributes, pairs }, null, 2) + '\n');
  writeFileAtomicSync(
    files.markdown,
    [
      `# Is the reconstruction score a label-free quality measure? (${items} world test images × 3 captions, ${o.drawings} drawings each)`,
      '',
      `- Kendall τ-b (score = −reconstruction distance) vs CIDEr-D against the held-out references: ${formatInterval(tauCider)}`,
      `- Kendall τ-b vs the world's colour + shape accuracy of the caption: ${formatInterval(tauAttributes)}`,
      '',
      '| caption | mean distance ↓ | mean CIDEr-D | mean attribute accuracy |',
      '| --- | --- | --- | --- |',
      ...(['own', 'blip', 'other'] as const).map((k) => `| ${k === 'own' ? "the image's own caption" : k === 'blip' ? "BLIP's beam caption" : "another image's caption"} | ${mean(k, 'distance').toFixed(4)} | ${mean(k, 'cider').toFixed(4)} | ${mean(k, 'attributes').toFixed(4)} |`),
      '',
    ].join('\n'),
  );
  return { pairs, tauCider, tauAttributes, files };
}
