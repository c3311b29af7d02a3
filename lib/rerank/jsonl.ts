/**
 * Append-only JSON Lines result files for long runs: each finished item is one line, written with
 * fsync so a crash loses at most the item in flight; reading tolerates a torn last line (an
 * interrupted write) and reports where a line is not JSON.
 */
import * as fs from 'fs';
import { RoundtripError } from '../errors';

/** Appends one record as a line and fsyncs it before returning. */
export function appendJsonLine(file: string, record: unknown): void {
  const fd = fs.openSync(file, 'a');
  try {
    fs.writeSync(fd, JSON.stringify(record) + '\n');
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Reads every record of a JSONL file ([] when absent). A last line without its newline is the trace
 * of an interrupted append: it is dropped (and the file truncated to the last full line when
 * `repair` is set, so the next append starts clean). Any other bad line is an error naming it.
 */
export function readJsonLines<T>(file: string, opts: { repair?: boolean } = {}): T[] {
  if (!fs.existsSync(file)) return [];
  const text = fs.readFileSync(file, 'utf8');
  const complete = text.endsWith('\n') || text === '' ? text : text.slice(0, text.lastIndexOf('\n') + 1);
  if (complete.length !== text.length && opts.repair) fs.truncateSync(file, Buffer.byteLength(complete));
  const out: T[] = [];
  const lines = complete.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '') continue;
    try {
      out.push(JSON.parse(line) as T);
    } catch (err) {
      throw new RoundtripError(`${file}:${i + 1}: not a JSON line (${(err as Error).message})`);
    }
  }
  return out;
}
