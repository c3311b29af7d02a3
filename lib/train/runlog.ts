/**
 * A run's JSONL log (`log.jsonl`): one object per line, step rows and event rows (`{"event": ...}`).
 *
 * - A fresh run starts an empty log (the caller has refused or cleared a non-empty run folder).
 * - A resume from a checkpoint at step S first drops every row past S (a killed run may have logged steps
 *   its last checkpoint does not hold, and those steps will run again), then appends a marker row
 *   `{"event":"resume","step":S,...}`: each step appears once, in order, and the resume point is visible.
 * - A rollback (the non-finite guard) does the same with `"event":"rollback"`.
 * Rewrites are atomic; a half-written last line (a kill mid-append) is dropped.
 */
import * as fs from 'fs';
import { writeFileAtomicSync } from '../fsutil';

export interface LogEvent {
  event: 'start' | 'resume' | 'rollback' | 'interrupt' | 'guard';
  step: number;
  [key: string]: unknown;
}

export class RunLog {
  constructor(readonly file: string) {}

  /** Parsed rows; a torn last line is skipped. */
  rows(): Record<string, unknown>[] {
    if (!fs.existsSync(this.file)) return [];
    const out: Record<string, unknown>[] = [];
    for (const line of fs.readFileSync(this.file, 'utf8').split('\n')) {
      if (!line.trim()) continue;
      try {
        out.push(JSON.parse(line));
      } catch {
        // A line torn by a kill: the step it described is past the last checkpoint and runs again.
      }
    }
    return out;
  }

  /** Step rows (those with a numeric `loss`), in order. */
  stepRows<T = Record<string, unknown>>(): T[] {
    return this.rows().filter((r) => typeof r.loss === 'number' && typeof r.step === 'number') as T[];
  }

  /** Keeps rows up to `step` (step rows and events), then appends the marker. */
  rewindTo(step: number, marker: LogEvent): void {
    const kept = this.rows().filter((r) => typeof r.step !== 'number' || (r.step as number) <= step);
    writeFileAtomicSync(this.file, kept.map((r) => JSON.stringify(r) + '\n').join('') + JSON.stringify({ ...marker, time: new Date().toISOString() }) + '\n');
  }

  /** Starts an empty log with a start marker. */
  start(marker: LogEvent): void {
    writeFileAtomicSync(this.file, JSON.stringify({ ...marker, time: new Date().toISOString() }) + '\n');
  }

  append(row: object): void {
    const fd = fs.openSync(this.file, 'a');
    try {
      fs.writeSync(fd, JSON.stringify(row) + '\n');
    } finally {
      fs.closeSync(fd);
    }
  }
}
