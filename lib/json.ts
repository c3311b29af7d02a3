/** Reading JSON files as the model ecosystem writes them, with errors that name the file. */
import * as fs from 'fs';
import { RoundtripError, invalid } from './errors';

/**
 * Parses JSON as Python's `json` writes it: bare `NaN`, `Infinity` and `-Infinity` are accepted (diffusers saves
 * `"lambda_min_clipped": -Infinity` in DPM-Solver configs). Plain JSON takes the fast path.
 */
export function parsePythonJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    if (!/NaN|Infinity/.test(text)) throw err;
  }
  // Non-finite numbers become marked strings (a NUL prefix no real config uses), mapped back by the reviver.
  const marks: Record<string, number> = { '\u0000NaN': NaN, '\u0000Infinity': Infinity, '\u0000-Infinity': -Infinity };
  let out = '';
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      out += c;
      if (c === '\\') out += text[++i] ?? '';
      else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') {
      inString = true;
      out += c;
      continue;
    }
    const rest = text.slice(i, i + 9);
    const token = rest.startsWith('-Infinity') ? '-Infinity' : rest.startsWith('Infinity') ? 'Infinity' : rest.startsWith('NaN') ? 'NaN' : '';
    if (token) {
      out += `"\\u0000${token}"`;
      i += token.length - 1;
    } else {
      out += c;
    }
  }
  return JSON.parse(out, (_key, value) => (typeof value === 'string' && value.startsWith('\u0000') ? marks[value] : value));
}

export interface ReadJsonOptions {
  /** The file's role in errors ("scheduler config", "annotations"). */
  what?: string;
  /** Require a JSON object at the top level. */
  object?: boolean;
  /** Require a JSON array at the top level. */
  array?: boolean;
}

/**
 * The one reader of JSON files (Python's NaN/Infinity allowed). Errors name the file, its role, and for a parse
 * error the line and column; `jsonPath` names a place inside the file for the caller's own checks.
 */
export function readJsonFile(file: string, opts: ReadJsonOptions = {}): any {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw cannotRead(file, opts, err);
  }
  return parseJsonText(text, file, opts);
}

/** `readJsonFile` off the event loop's thread pool (large annotation files). */
export async function readJsonFileAsync(file: string, opts: ReadJsonOptions = {}): Promise<any> {
  let text: string;
  try {
    text = await fs.promises.readFile(file, 'utf8');
  } catch (err) {
    throw cannotRead(file, opts, err);
  }
  return parseJsonText(text, file, opts);
}

/** Parses JSON text that came from `source` (a file, a URL, a tool's output), with readJsonFile's errors. */
export function parseJsonText(text: string, source: string, opts: ReadJsonOptions = {}): any {
  let parsed: unknown;
  try {
    parsed = parsePythonJson(text);
  } catch (err) {
    throw new RoundtripError(`${source}${where(text, err as Error)}: not valid JSON${opts.what ? ` (${opts.what})` : ''}: ${(err as Error).message}`);
  }
  if (opts.object && (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))) throw invalid(jsonPath(source), `a JSON object${opts.what ? ` (${opts.what})` : ''}`, parsed);
  if (opts.array && !Array.isArray(parsed)) throw invalid(jsonPath(source), `a JSON array${opts.what ? ` (${opts.what})` : ''}`, parsed);
  return parsed;
}

/**
 * Every record of a JSON Lines file ([] when absent). A last line without its newline is the trace of an
 * interrupted append: it is dropped (and the file truncated to the last full line with `repair`, so the next
 * append starts clean). Any other bad line is an error naming `file:line`, unless `skipBad` (logs whose torn lines
 * describe work that runs again).
 */
export function readJsonLines<T = Record<string, unknown>>(file: string, opts: { repair?: boolean; skipBad?: boolean } = {}): T[] {
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
      if (!opts.skipBad) throw new RoundtripError(`${file}:${i + 1}: not a JSON line (${(err as Error).message})`);
    }
  }
  return out;
}

/** Names a place inside a JSON file for errors: `jsonPath('a.json', 'images', 3, 'domain')` → `a.json $.images[3].domain`. */
export function jsonPath(file: string, ...keys: (string | number)[]): string {
  if (keys.length === 0) return file;
  return `${file} $${keys.map((k) => (typeof k === 'number' ? `[${k}]` : /^[A-Za-z_][A-Za-z0-9_]*$/.test(k) ? `.${k}` : `[${JSON.stringify(k)}]`)).join('')}`;
}

function cannotRead(file: string, opts: ReadJsonOptions, err: unknown): RoundtripError {
  const reason = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'file not found' : (err as Error).message;
  return new RoundtripError(`${file}: cannot read ${opts.what ?? 'file'}: ${reason}`);
}

/** `:line:column` of a JSON.parse error (V8 reports "at position N" or "line L column C"; else the start). */
function where(text: string, err: Error): string {
  const lc = /line (\d+) column (\d+)/.exec(err.message);
  if (lc) return `:${lc[1]}:${lc[2]}`;
  const m = /position (\d+)/.exec(err.message);
  if (!m) return ':1:1';
  const pos = Number(m[1]);
  const before = text.slice(0, pos);
  const line = before.split('\n').length;
  return `:${line}:${pos - before.lastIndexOf('\n')}`;
}
