/**
 * Reranking with ties counted and broken by a declared rule, and the reranked-vs-random gain with a
 * paired interval.
 *
 * A tie: two or more candidates share the smallest distance (relative difference < 1e-9), e.g. BLIP
 * writing the same caption for several t2i2t images. The run's recorded winner is then simply the
 * first index. Here the rule is declared and applied instead:
 *   1. the next similarity method of the run (in the order the run lists them) decides among the tied
 *      candidates, when it separates them;
 *   2. otherwise the item scores the mean quality of the still-tied candidates (the expectation of a
 *      random choice among them).
 * The gain per item is (tie-broken reranked quality) − (mean quality of the R random baseline picks);
 * its mean over items gets a bootstrap interval over items (paired: the same items on both sides).
 */
import { ciderD } from '../../metrics/cider';
import { ptbTokenize } from '../../metrics/ptb-tokenizer';
import { ItemRecord, RunSettings } from '../rerank/types';
import { Interval, armInterval, bootstrapPlan, meanSamples } from '../experiment/stats';

export const TIE_RULE = 'ties (distance equal within 1e-9 relative) are broken by the run’s next similarity method, then scored as the mean over the tied candidates';

export interface TieGainRow {
  method: string;
  metric: string;
  lowerIsBetter: boolean;
  items: number;
  /** Items whose best distance is shared by ≥ 2 candidates, and their share. */
  ties: number;
  tieShare: number;
  /** Tied items the secondary method resolved. */
  resolvedBySecondary: number;
  firstIndex: number;
  tieBroken: number;
  random: number;
  /** Mean per-item gain (tie-broken reranked − random) with its 95 % interval. */
  gain: Interval & { significant: boolean };
}

function tiedSet(values: number[], candidates: number[]): number[] {
  const best = Math.min(...candidates.map((j) => values[j]));
  return candidates.filter((j) => Math.abs(values[j] - best) <= 1e-9 * Math.max(1, Math.abs(best)));
}

/** Per-candidate quality per item for each metric the direction has. */
function perCandidateQuality(settings: RunSettings, records: ItemRecord[]): { metric: string; lower: boolean; values: (number[] | undefined)[] }[] {
  const out: { metric: string; lower: boolean; values: (number[] | undefined)[] }[] = [];
  if (settings.direction === 'i2t2i') {
    const idx = records.map((r, i) => (r.references.length ? i : -1)).filter((i) => i >= 0);
    if (idx.length) {
      const refs = ptbTokenize(idx.flatMap((i) => records[i].references));
      const cands = ptbTokenize(idx.flatMap((i) => records[i].candidates.map((c) => c.text)));
      const R: string[][] = [];
      const C: string[][] = [];
      let a = 0;
      let b = 0;
      for (const i of idx) {
        R.push(refs.slice(a, (a += records[i].references.length)));
        C.push(cands.slice(b, (b += records[i].candidates.length)));
      }
      // per-candidate CIDEr-D: one corpus per candidate index (as the rank analysis computes it)
      const values: (number[] | undefined)[] = records.map(() => undefined);
      idx.forEach((i) => (values[i] = new Array(records[i].candidates.length).fill(NaN)));
      for (let j = 0; j < settings.k; j++) {
        const col = ciderD(C.map((c) => c[j]), R).perImage;
        idx.forEach((i, n) => (values[i]![j] = col[n]));
      }
      out.push({ metric: 'CIDEr', lower: false, values });
    }
  } else {
    for (const key of ['clip_text_image', 'clip_real']) {
      const values = records.map((r) => (r.candidates.every((c) => typeof c.scores[key] === 'number') ? r.candidates.map((c) => c.scores[key]) : undefined));
      if (values.some(Boolean)) out.push({ metric: key, lower: true, values });
    }
  }
  return out;
}

/** The tie-aware reranking table of one run (one row per method and quality metric). */
export function tieGainTable(settings: RunSettings, records: ItemRecord[], opts: { replicates?: number; seed?: number } = {}): TieGainRow[] {
  const rows: TieGainRow[] = [];
  for (const q of perCandidateQuality(settings, records)) {
    const covered = records.map((r, i) => ({ r, v: q.values[i] })).filter((x): x is { r: ItemRecord; v: number[] } => x.v !== undefined);
    if (covered.length < 2) continue;
    const plan = bootstrapPlan(covered.length, 1, { replicates: opts.replicates ?? 2000, seed: opts.seed ?? 0 });
    for (const method of settings.similarity) {
      const secondary = settings.similarity.filter((m) => m !== method);
      let ties = 0;
      let resolved = 0;
      const first: number[] = [];
      const broken: number[] = [];
      const random: number[] = [];
      for (const { r, v } of covered) {
        const all = r.candidates.map((_, j) => j);
        let tied = tiedSet(r.candidates.map((c) => c.distance[method]), all);
        if (tied.length > 1) {
          ties++;
          for (const m of secondary) {
            const narrowed = tiedSet(r.candidates.map((c) => c.distance[m]), tied);
            if (narrowed.length < tied.length) {
              tied = narrowed;
              if (tied.length === 1) resolved++;
              break;
            }
          }
        }
        first.push(v[r.winner[method]]);
        broken.push(tied.reduce((a, j) => a + v[j], 0) / tied.length);
        random.push(r.baseline.reduce((a, j) => a + v[j], 0) / r.baseline.length);
      }
      const gains = broken.map((x, i) => x - random[i]);
      const g = armInterval(`${method} ${q.metric} gain`, meanSamples([gains]), plan);
      const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
      rows.push({
        method,
        metric: q.metric,
        lowerIsBetter: q.lower,
        items: covered.length,
        ties,
        tieShare: ties / covered.length,
        resolvedBySecondary: resolved,
        firstIndex: mean(first),
        tieBroken: mean(broken),
        random: mean(random),
        gain: { value: g.value, lo: g.lo, hi: g.hi, significant: g.lo > 0 || g.hi < 0 },
      });
    }
  }
  return rows;
}

export function tieGainMarkdown(rows: TieGainRow[]): string {
  if (!rows.length) return '';
  const f = (v: number) => (Number.isFinite(v) ? v.toFixed(4) : 'n/a');
  const lines = [
    '### Ties and the reranked-vs-random gain (paired 95 % interval over items)',
    '',
    '| method | metric | ties (share) | reranked: first index | reranked: tie rule | random | gain [95 % interval] | verdict |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
    ...rows.map((r) => {
      const verdict = !r.gain.significant ? 'no significant difference' : (r.gain.value > 0) !== r.lowerIsBetter ? 'better' : 'worse';
      return `| ${r.method} | ${r.metric} ${r.lowerIsBetter ? '↓' : '↑'} | ${r.ties} of ${r.items} (${(100 * r.tieShare).toFixed(0)} %; ${r.resolvedBySecondary} resolved by the next method) | ${f(r.firstIndex)} | ${f(r.tieBroken)} | ${f(r.random)} | ${f(r.gain.value)} [${f(r.gain.lo)}, ${f(r.gain.hi)}] | ${verdict} |`;
    }),
    '',
    `- rule: ${TIE_RULE}; "first index" is the recorded winner (the lowest candidate index among tied ones)`,
  ];
  return lines.join('\n') + '\n';
}
