/**
 * A small, dependency-free progress reporter shared by the whole project (downloads, sampling,
 * training, evaluation).
 *
 * - On a TTY it redraws one line in place (throttled), e.g.
 *   `unet/diffusion_pytorch_model.safetensors [#####.....] 45% 1.55/3.44 GB 12.3 MB/s ETA 2:34`.
 * - Elsewhere (CI, pipes, log files) it prints an occasional plain line: every ~10% of the total
 *   or every 5 s, whichever comes first, plus a closing line.
 * - `ROUNDTRIP_QUIET=1` silences it (unless `quiet: false` is passed explicitly).
 *
 * The rate is an exponentially smoothed estimate over samples at least 200 ms apart, so the ETA
 * does not jump with every network hiccup.
 */
import { expectInteger, expectNumber, expectString, invalid } from './errors';

/** Where progress is drawn: normally `process.stderr`. */
export interface ProgressStream {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressOptions {
  /** What is progressing (a file name, "sampling", "epoch 3"). Long labels are shortened from the left. */
  label: string;
  /** Total amount of work, if known; without it no bar, percentage or ETA is shown. */
  total?: number;
  /** `'B'` formats amounts as bytes (kB, MB, GB, rates in MB/s); any other word is shown as is ("step", "image"). */
  unit?: string;
  /** Work already done before this reporter started (e.g. a resumed download); not counted in the rate. */
  start?: number;
  /** Defaults to `process.stderr`. */
  stream?: ProgressStream;
  /** Overrides the stream's `isTTY`. */
  tty?: boolean;
  /** Overrides `ROUNDTRIP_QUIET`. */
  quiet?: boolean;
  /** Clock in milliseconds; injectable for tests. */
  now?: () => number;
  /** Minimum time between TTY redraws (ms). */
  redrawIntervalMs?: number;
  /** Maximum time between plain (non-TTY) lines (ms). */
  plainIntervalMs?: number;
}

export interface Progress {
  /** Adds `n` (default 1) units of finished work. */
  tick(n?: number): void;
  /** Sets the amount of finished work. */
  update(done: number): void;
  /** Draws the final state and ends the line; further calls are ignored. */
  done(): void;
  /** Finished work so far. */
  readonly value: number;
  /** Smoothed rate in units per second (0 until enough time has passed). */
  readonly rate: number;
}

const BAR_WIDTH = 20;
const MAX_LABEL = 40;
const RATE_SAMPLE_MS = 200;
const RATE_SMOOTHING = 0.3;

/** True when `ROUNDTRIP_QUIET` asks for silence (`1`, `true`, `yes`). */
export function quietFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  const value = (env.ROUNDTRIP_QUIET ?? '').trim().toLowerCase();
  return value === '1' || value === 'true' || value === 'yes';
}

/** Formats an amount: bytes with decimal prefixes (MB = 10^6 bytes, as download tools show), else a plain number. */
export function formatAmount(value: number, unit: string): string {
  if (unit !== 'B') {
    const text = Number.isInteger(value) ? String(value) : value.toFixed(1);
    return unit ? `${text} ${unit}` : text;
  }
  const prefixes = ['B', 'kB', 'MB', 'GB', 'TB'];
  let scaled = value;
  let index = 0;
  while (Math.abs(scaled) >= 1000 && index < prefixes.length - 1) {
    scaled /= 1000;
    index++;
  }
  return index === 0 ? `${Math.round(scaled)} B` : `${scaled.toFixed(scaled >= 100 ? 0 : scaled >= 10 ? 1 : 2)} ${prefixes[index]}`;
}

/** Formats a rate: `12.3 MB/s` for bytes, `3.2 step/s` otherwise. */
export function formatRate(perSecond: number, unit: string): string {
  if (unit === 'B') return `${formatAmount(perSecond, 'B')}/s`;
  return `${perSecond.toFixed(1)}${unit ? ` ${unit}` : ''}/s`;
}

/** Formats seconds as `m:ss` or `h:mm:ss`. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?:??';
  const total = Math.round(seconds);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const ss = String(s).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

function shortenLabel(label: string): string {
  return label.length <= MAX_LABEL ? label : '…' + label.slice(label.length - MAX_LABEL + 1);
}

/** Creates a progress reporter; see the module comment for what it draws where. */
export function createProgress(options: ProgressOptions): Progress {
  const label = shortenLabel(expectString('progress label', options.label));
  const total = options.total === undefined ? undefined : expectNumber('progress total', options.total, { min: 0 });
  const unit = options.unit === undefined ? '' : expectString('progress unit', options.unit);
  const start = options.start === undefined ? 0 : expectNumber('progress start', options.start, { min: 0 });
  const stream: ProgressStream = options.stream ?? process.stderr;
  const tty = options.tty ?? Boolean(stream.isTTY);
  const quiet = options.quiet ?? quietFromEnv();
  const now = options.now ?? (() => Date.now());
  const redrawIntervalMs = expectInteger('progress redrawIntervalMs', options.redrawIntervalMs ?? 100, { min: 0 });
  const plainIntervalMs = expectInteger('progress plainIntervalMs', options.plainIntervalMs ?? 5000, { min: 0 });

  const startedAt = now();
  let value = start;
  let rate = 0;
  let sampleAt = startedAt;
  let sampleValue = start;
  let lastDrawAt = -Infinity;
  let lastPlainAt = startedAt;
  let lastPlainDecile = total && total > 0 ? Math.floor((10 * start) / total) : 0;
  let finished = false;

  function sampleRate(t: number): void {
    const elapsed = t - sampleAt;
    if (elapsed < RATE_SAMPLE_MS) return;
    const instant = ((value - sampleValue) * 1000) / elapsed;
    rate = rate === 0 ? instant : RATE_SMOOTHING * instant + (1 - RATE_SMOOTHING) * rate;
    sampleAt = t;
    sampleValue = value;
  }

  function render(final: boolean, t: number): string {
    const parts = [label];
    if (total !== undefined && total > 0) {
      const fraction = Math.min(1, value / total);
      const filled = Math.round(fraction * BAR_WIDTH);
      parts.push(`[${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}]`, `${Math.floor(fraction * 100)}%`);
      parts.push(unit === 'B' ? `${formatAmount(value, 'B')}/${formatAmount(total, 'B')}` : `${value}/${formatAmount(total, unit)}`);
    } else {
      parts.push(formatAmount(value, unit));
    }
    if (final) {
      const seconds = (t - startedAt) / 1000;
      const average = seconds > 0 ? (value - start) / seconds : 0;
      parts.push(`in ${formatDuration(seconds)}`);
      if (average > 0) parts.push(`(${formatRate(average, unit)})`);
    } else if (rate > 0) {
      parts.push(formatRate(rate, unit));
      if (total !== undefined && total > value) parts.push(`ETA ${formatDuration((total - value) / rate)}`);
    }
    return parts.join(' ');
  }

  function drawTty(final: boolean, t: number): void {
    let line = render(final, t);
    const columns = stream.columns ?? 100;
    if (line.length > columns - 1) line = line.slice(0, Math.max(10, columns - 1));
    // `\x1b[K` clears what a longer previous line left behind.
    stream.write(`\r${line}\x1b[K${final ? '\n' : ''}`);
    lastDrawAt = t;
  }

  function maybeDraw(): void {
    if (quiet || finished) return;
    const t = now();
    sampleRate(t);
    if (tty) {
      if (t - lastDrawAt >= redrawIntervalMs) drawTty(false, t);
      return;
    }
    const decile = total && total > 0 ? Math.floor((10 * Math.min(value, total)) / total) : 0;
    if (decile > lastPlainDecile || t - lastPlainAt >= plainIntervalMs) {
      if (decile >= 10) return; // the closing line reports 100%
      stream.write(render(false, t) + '\n');
      lastPlainDecile = decile;
      lastPlainAt = t;
    }
  }

  return {
    tick(n = 1) {
      if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) throw invalid('progress tick', 'a finite number >= 0', n);
      value += n;
      maybeDraw();
    },
    update(done: number) {
      expectNumber('progress update', done, { min: 0 });
      value = done;
      maybeDraw();
    },
    done() {
      if (finished) return;
      finished = true;
      if (quiet) return;
      const t = now();
      if (tty) drawTty(true, t);
      else stream.write(render(true, t) + '\n');
    },
    get value() {
      return value;
    },
    get rate() {
      return rate;
    },
  };
}
