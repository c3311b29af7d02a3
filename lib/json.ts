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

/**
 * Reads and parses a JSON file (Python's NaN/Infinity allowed). `what` names the file's role in errors
 * ("scheduler config"); `object` requires a JSON object at the top level.
 */
export function readJsonFile(file: string, opts: { what?: string; object?: boolean } = {}): any {
  const role = opts.what ? ` ${opts.what}` : '';
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : (err as Error).message;
    throw new RoundtripError(`${file}: cannot read${role || ' file'}: ${reason}`);
  }
  let parsed: unknown;
  try {
    parsed = parsePythonJson(text);
  } catch (err) {
    throw new RoundtripError(`${file}: not valid JSON${role ? ` (${opts.what})` : ''}: ${(err as Error).message}`);
  }
  if (opts.object && (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))) throw invalid(file, 'a JSON object', parsed);
  return parsed;
}
