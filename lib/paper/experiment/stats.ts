/**
 * Intervals for comparisons over test items and training seeds.
 *
 * A metric is stored per (arm, seed, item) as a numerator and a denominator (a mean has denominator 1; an
 * attribute accuracy counts correct objects over objects). An arm's value is the mean over seeds of
 * Σ numerator / Σ denominator over the items. Its 95 % interval is a percentile bootstrap that resamples
 * the test items and the seeds together; the same resampled items and seeds are used for every arm in a
 * replicate, so differences between arms are paired (same items, same seeds).
 */
import { RoundtripError, expectInteger, invalid } from '../../errors';
import { Rng, deriveSeed } from '../../image/random';

/** Per seed, per item: [numerator, denominator]. */
export interface MetricSamples {
  num: number[][];
  den: number[][];
}

export interface Interval {
  value: number;
  lo: number;
  hi: number;
}

export interface ArmStats extends Interval {
  /** Standard deviation over seeds of the per-seed value (all items). */
  seedStd: number;
  perSeed: number[];
}

export interface Difference extends Interval {
  /** The interval excludes 0. */
  significant: boolean;
}

/** Mean-type samples: every denominator 1. */
export function meanSamples(values: number[][]): MetricSamples {
  return { num: values, den: values.map((row) => row.map(() => 1)) };
}

function check(name: string, s: MetricSamples, items: number): void {
  if (s.num.length === 0 || s.num.length !== s.den.length) throw invalid(`${name}: seeds`, 'as many numerator rows as denominator rows (≥ 1)', `${s.num.length} and ${s.den.length}`);
  s.num.forEach((row, k) => {
    if (row.length !== items || s.den[k].length !== items) throw invalid(`${name}: seed ${k}`, `${items} items`, `${row.length} numerators, ${s.den[k].length} denominators`);
  });
}

function ratio(num: number[], den: number[], idx: ArrayLike<number>): number {
  let a = 0;
  let b = 0;
  for (let i = 0; i < idx.length; i++) {
    a += num[idx[i]];
    b += den[idx[i]];
  }
  return b === 0 ? NaN : a / b;
}

function value(s: MetricSamples, items: ArrayLike<number>, seeds: ArrayLike<number>): number {
  let sum = 0;
  for (let k = 0; k < seeds.length; k++) {
    const seed = seeds[k] % s.num.length;
    sum += ratio(s.num[seed], s.den[seed], items);
  }
  return sum / seeds.length;
}

function percentile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const pos = q * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

export interface BootstrapOptions {
  /** Replicates (default 2000). */
  replicates?: number;
  seed?: number;
  /** Two-sided level (default 0.95). */
  level?: number;
}

/**
 * Resampling plans: for replicate r, item indices and seed indices drawn with replacement. Arms with
 * fewer seeds than `seeds` (a model that does not train) map seed indices modulo their count.
 */
export function bootstrapPlan(items: number, seeds: number, opts: BootstrapOptions = {}): { items: Uint32Array[]; seeds: Uint32Array[] } {
  expectInteger('items', items, { min: 1 });
  expectInteger('seeds', seeds, { min: 1 });
  const R = expectInteger('replicates', opts.replicates ?? 2000, { min: 10 });
  const rng = new Rng(deriveSeed(opts.seed ?? 0, 0xb007));
  const planItems: Uint32Array[] = [];
  const planSeeds: Uint32Array[] = [];
  for (let r = 0; r < R; r++) {
    const it = new Uint32Array(items);
    for (let i = 0; i < items; i++) it[i] = rng.int(0, items);
    const se = new Uint32Array(seeds);
    for (let k = 0; k < seeds; k++) se[k] = rng.int(0, seeds);
    planItems.push(it);
    planSeeds.push(se);
  }
  return { items: planItems, seeds: planSeeds };
}

const all = (n: number) => Uint32Array.from({ length: n }, (_, i) => i);

/** An arm's value with its bootstrap interval and its spread over seeds. */
export function armInterval(name: string, s: MetricSamples, plan: ReturnType<typeof bootstrapPlan>, level = 0.95): ArmStats {
  const items = plan.items[0]?.length ?? 0;
  check(name, s, items);
  const point = value(s, all(items), all(s.num.length));
  const reps = plan.items.map((it, r) => value(s, it, plan.seeds[r])).filter(Number.isFinite).sort((a, b) => a - b);
  const perSeed = s.num.map((row, k) => ratio(row, s.den[k], all(items)));
  const mean = perSeed.reduce((a, b) => a + b, 0) / perSeed.length;
  const seedStd = perSeed.length > 1 ? Math.sqrt(perSeed.reduce((a, v) => a + (v - mean) ** 2, 0) / (perSeed.length - 1)) : 0;
  return { value: point, lo: percentile(reps, (1 - level) / 2), hi: percentile(reps, 1 - (1 - level) / 2), seedStd, perSeed };
}

/** The paired difference a − b (same resampled items and seeds in each replicate). */
export function pairedDifference(name: string, a: MetricSamples, b: MetricSamples, plan: ReturnType<typeof bootstrapPlan>, level = 0.95): Difference {
  const items = plan.items[0]?.length ?? 0;
  check(`${name} (a)`, a, items);
  check(`${name} (b)`, b, items);
  const point = value(a, all(items), all(a.num.length)) - value(b, all(items), all(b.num.length));
  const reps = plan.items.map((it, r) => value(a, it, plan.seeds[r]) - value(b, it, plan.seeds[r])).filter(Number.isFinite).sort((x, y) => x - y);
  if (reps.length === 0) throw new RoundtripError(`${name}: no finite bootstrap replicate (every denominator zero?)`);
  const lo = percentile(reps, (1 - level) / 2);
  const hi = percentile(reps, 1 - (1 - level) / 2);
  return { value: point, lo, hi, significant: lo > 0 || hi < 0 };
}

/**
 * Kendall's τ-b between two paired score lists (ties in either list handled as τ-b does), O(n²): the
 * lists here are a few hundred items.
 */
export function kendallTau(x: readonly number[], y: readonly number[]): number {
  if (x.length !== y.length) throw invalid('kendallTau', 'two lists of equal length', `${x.length} and ${y.length}`);
  let concordant = 0;
  let discordant = 0;
  let tiesX = 0;
  let tiesY = 0;
  for (let i = 0; i < x.length; i++) {
    for (let j = i + 1; j < x.length; j++) {
      const dx = Math.sign(x[i] - x[j]);
      const dy = Math.sign(y[i] - y[j]);
      if (dx === 0 && dy === 0) continue;
      if (dx === 0) tiesX++;
      else if (dy === 0) tiesY++;
      else if (dx === dy) concordant++;
      else discordant++;
    }
  }
  const denom = Math.sqrt((concordant + discordant + tiesX) * (concordant + discordant + tiesY));
  return denom === 0 ? NaN : (concordant - discordant) / denom;
}

/** Kendall's τ-b with a percentile bootstrap interval over the paired items. */
export function kendallTauInterval(x: readonly number[], y: readonly number[], opts: BootstrapOptions = {}): Interval {
  const n = x.length;
  const plan = bootstrapPlan(n, 1, { ...opts, replicates: opts.replicates ?? 1000 });
  const reps = plan.items
    .map((idx) => kendallTau(Array.from(idx, (i) => x[i]), Array.from(idx, (i) => y[i])))
    .filter(Number.isFinite)
    .sort((a, b) => a - b);
  const level = opts.level ?? 0.95;
  return { value: kendallTau(x, y), lo: percentile(reps, (1 - level) / 2), hi: percentile(reps, 1 - (1 - level) / 2) };
}

/** "0.912 [0.871, 0.950]" with `digits` decimals. */
export function formatInterval(i: Interval, digits = 3): string {
  const f = (v: number) => (Number.isFinite(v) ? v.toFixed(digits) : 'n/a');
  return `${f(i.value)} [${f(i.lo)}, ${f(i.hi)}]`;
}

/** The verdict for a difference: which way it goes, or that the interval includes 0. */
export function verdict(d: Difference, higherIsBetter: boolean): 'better' | 'worse' | 'no significant difference' {
  if (!d.significant) return 'no significant difference';
  return (d.value > 0) === higherIsBetter ? 'better' : 'worse';
}
