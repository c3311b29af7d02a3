/**
 * METEOR 1.5 and SPICE 1.0 through the official jars, driven exactly as pycocoevalcap's
 * `meteor/meteor.py` and `spice/spice.py` drive them. The jars are not shipped: they come from
 * the pycocoevalcap repository (`pycocoevalcap/meteor/meteor-1.5.jar` with its
 * `data/paraphrase-en.gz`; `pycocoevalcap/spice/spice-1.0.jar`, fetched by its
 * `get_stanford_models` script, with `lib/` holding Stanford CoreNLP 3.6.0) or the SPICE site
 * (https://panderson.me/spice/).
 *
 * Jar lookup order: the `meteorJar`/`spiceJar` option, then ROUNDTRIP_METEOR_JAR /
 * ROUNDTRIP_SPICE_JAR, then `~/.cache/roundtrip/jars/meteor-1.5.jar` / `spice-1.0.jar`.
 * Java: the `java` option, then ROUNDTRIP_JAVA, then `java` on PATH.
 */
import { ChildProcessWithoutNullStreams, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { RoundtripError, invalid } from '../errors';
import { readJsonFile } from '../json';

/** Default folder searched for the jars. */
export const JAR_CACHE_DIR = path.join(os.homedir(), '.cache', 'roundtrip', 'jars');

export interface JavaScorerOptions {
  /** Path of the java executable (default ROUNDTRIP_JAVA or `java`). */
  java?: string;
}
export interface MeteorOptions extends JavaScorerOptions {
  meteorJar?: string;
  /** Heap size flag as pycocoevalcap uses it. */
  maxHeap?: string;
}
export interface SpiceOptions extends JavaScorerOptions {
  spiceJar?: string;
  /** SPICE parse cache (`-cache`); default ~/.cache/roundtrip/spice-cache. */
  cacheDir?: string;
  maxHeap?: string;
}

const WHERE_METEOR =
  'get meteor-1.5.jar (and data/paraphrase-en.gz next to it) from the pycocoevalcap repository (github.com/salaniz/pycocoevalcap, folder pycocoevalcap/meteor)';
const WHERE_SPICE =
  'get spice-1.0.jar with its lib/ folder (Stanford CoreNLP 3.6.0) from https://panderson.me/spice/ or via pycocoevalcap (pycocoevalcap/spice/get_stanford_models.py)';

/** Resolves a jar from option → environment variable → cache folder, or explains where to get it. */
export function resolveJar(option: string | undefined, envName: string, fileName: string, where: string): string {
  const fromEnv = process.env[envName];
  const [file, source] =
    option !== undefined ? [option, 'option'] : fromEnv ? [fromEnv, `environment variable ${envName}`] : [path.join(JAR_CACHE_DIR, fileName), 'default cache folder'];
  if (!fs.existsSync(file) || !fs.statSync(file).isFile()) {
    throw new RoundtripError(
      `${fileName} not found at ${file} (from the ${source}); ${where}, then pass its path as an option, set ${envName}, or put it in ${JAR_CACHE_DIR}`,
    );
  }
  return path.resolve(file);
}

function javaExecutable(opts: JavaScorerOptions): string {
  return opts.java ?? process.env.ROUNDTRIP_JAVA ?? 'java';
}

function javaMissing(java: string, err: Error): RoundtripError {
  return new RoundtripError(
    `could not start Java (${java}): ${err.message}; METEOR and SPICE need a Java runtime (8 or newer) on PATH, or its path in the "java" option / ROUNDTRIP_JAVA`,
  );
}

function checkInputs<K>(candidates: ReadonlyMap<K, string>, references: ReadonlyMap<K, readonly string[]>): K[] {
  if (!(candidates instanceof Map)) throw invalid('candidates', 'a Map of image id → tokenised caption', candidates);
  if (!(references instanceof Map)) throw invalid('references', 'a Map of image id → tokenised captions', references);
  for (const [id, c] of candidates) {
    if (typeof c !== 'string') throw invalid(`candidates[${String(id)}]`, 'a string', c);
    const refs = references.get(id);
    if (refs === undefined) throw new RoundtripError(`references: image id ${String(id)} of the candidates has no references`);
    if (!Array.isArray(refs) || refs.length === 0 || refs.some((r) => typeof r !== 'string')) {
      throw invalid(`references[${String(id)}]`, 'a non-empty array of strings', refs);
    }
  }
  // pycocoevalcap sorts the ids (Python sort: numbers numerically, strings lexicographically)
  const ids = [...candidates.keys()];
  return ids.sort((a, b) => (typeof a === 'number' && typeof b === 'number' ? a - b : String(a) < String(b) ? -1 : String(a) > String(b) ? 1 : 0));
}

/** A child process with a line-oriented stdout reader. */
class LineProcess {
  private readonly child: ChildProcessWithoutNullStreams;
  private buffer = '';
  private readonly lines: string[] = [];
  private waiting: ((line: string | Error) => void) | undefined;
  private failure: Error | undefined;
  private stderr = '';

  constructor(java: string, args: string[], cwd: string) {
    this.child = spawn(java, args, { cwd, stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'en_US.UTF_8' } });
    this.child.stdout.setEncoding('utf8');
    this.child.stderr.setEncoding('utf8');
    this.child.stdout.on('data', (chunk: string) => {
      this.buffer += chunk;
      let nl: number;
      while ((nl = this.buffer.indexOf('\n')) >= 0) {
        this.lines.push(this.buffer.slice(0, nl).replace(/\r$/, ''));
        this.buffer = this.buffer.slice(nl + 1);
      }
      this.flush();
    });
    this.child.stderr.on('data', (chunk: string) => {
      this.stderr = (this.stderr + chunk).slice(-4000);
    });
    this.child.on('error', (err) => this.fail(javaMissing(java, err)));
    this.child.on('close', (code) => this.fail(new RoundtripError(`METEOR process exited (code ${code}) before answering; its error output: ${this.stderr.trim() || '(none)'}`)));
    this.child.stdin.on('error', () => undefined); // reported through 'close'
  }

  private fail(err: Error): void {
    if (!this.failure) this.failure = err;
    this.flush();
  }

  private flush(): void {
    if (!this.waiting) return;
    if (this.lines.length > 0) {
      const cb = this.waiting;
      this.waiting = undefined;
      cb(this.lines.shift()!);
    } else if (this.failure) {
      const cb = this.waiting;
      this.waiting = undefined;
      cb(this.failure);
    }
  }

  write(line: string): void {
    this.child.stdin.write(line + '\n');
  }

  readLine(): Promise<string> {
    return new Promise((resolve, reject) => {
      this.waiting = (v) => (v instanceof Error ? reject(v) : resolve(v));
      this.flush();
    });
  }

  close(): void {
    this.child.stdin.end();
    if (this.child.exitCode === null) this.child.kill();
  }
}

export interface MeteorResult<K> {
  corpus: number;
  perImage: Map<K, number>;
}

/**
 * METEOR 1.5 (`java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm`): one
 * `SCORE ||| ref1 ||| … ||| hyp` line per image (sorted ids) gives its statistics, then one
 * `EVAL ||| stats1 ||| …` line gives the per-image scores and the corpus score.
 */
export async function meteorScore<K>(
  candidates: ReadonlyMap<K, string>,
  references: ReadonlyMap<K, readonly string[]>,
  opts: MeteorOptions = {},
): Promise<MeteorResult<K>> {
  const ids = checkInputs(candidates, references);
  const jar = resolveJar(opts.meteorJar, 'ROUNDTRIP_METEOR_JAR', 'meteor-1.5.jar', WHERE_METEOR);
  const java = javaExecutable(opts);
  const proc = new LineProcess(java, ['-jar', `-Xmx${opts.maxHeap ?? '2G'}`, jar, '-', '-', '-stdio', '-l', 'en', '-norm'], path.dirname(jar));
  try {
    const stats: string[] = [];
    for (const id of ids) {
      const hyp = candidates.get(id)!.replaceAll('|||', '').replaceAll('  ', ' ');
      proc.write(['SCORE', references.get(id)!.join(' ||| '), hyp].join(' ||| '));
      stats.push((await proc.readLine()).trim());
    }
    proc.write('EVAL' + stats.map((s) => ' ||| ' + s).join(''));
    const perImage = new Map<K, number>();
    for (const id of ids) perImage.set(id, parseScore(await proc.readLine(), 'METEOR per-image score'));
    const corpus = parseScore(await proc.readLine(), 'METEOR corpus score');
    return { corpus, perImage };
  } finally {
    proc.close();
  }
}

function parseScore(line: string, what: string): number {
  const v = Number(line.trim());
  if (line.trim() === '' || !Number.isFinite(v)) throw new RoundtripError(`${what}: expected a number from the jar, got ${JSON.stringify(line)}`);
  return v;
}

/** One SPICE category: precision, recall, F and counts (NaN where the jar wrote "NaN"). */
export type SpiceCategoryScores = Record<string, number>;
export interface SpiceResult<K> {
  /** Mean of the per-image `All.f` (NaN if any is NaN, as np.mean). */
  corpus: number;
  perImage: Map<K, Record<string, SpiceCategoryScores>>;
}

function floatConvert(v: unknown): number {
  // Python float(): numbers and numeric strings ("NaN", "1e-3"); anything else → NaN
  if (typeof v === 'number') return v;
  if (typeof v === 'string') {
    const t = v.trim().toLowerCase();
    if (t === 'nan' || t === '+nan' || t === '-nan') return NaN;
    if (/^[+-]?inf(inity)?$/.test(t)) return t.startsWith('-') ? -Infinity : Infinity;
    const n = Number(t);
    return t !== '' && Number.isFinite(n) ? n : NaN;
  }
  return NaN;
}

function runToExit(java: string, args: string[], cwd: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(java, args, { cwd, stdio: ['ignore', 'inherit', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (c: string) => {
      stderr = (stderr + c).slice(-4000);
    });
    child.on('error', (err) => reject(javaMissing(java, err)));
    child.on('close', (code) => {
      if (code === 0) resolve();
      else reject(new RoundtripError(`SPICE exited with code ${code}; its error output: ${stderr.trim() || '(none)'}`));
    });
  });
}

/**
 * SPICE 1.0 (`java -jar -Xmx8G spice-1.0.jar in.json -cache DIR -out out.json -subset -silent`):
 * input `[{image_id, test, refs}]` for the sorted ids, output parsed as pycocoevalcap does.
 */
export async function spiceScore<K>(
  candidates: ReadonlyMap<K, string>,
  references: ReadonlyMap<K, readonly string[]>,
  opts: SpiceOptions = {},
): Promise<SpiceResult<K>> {
  const ids = checkInputs(candidates, references);
  const jar = resolveJar(opts.spiceJar, 'ROUNDTRIP_SPICE_JAR', 'spice-1.0.jar', WHERE_SPICE);
  const java = javaExecutable(opts);
  const cacheDir = opts.cacheDir ?? path.join(os.homedir(), '.cache', 'roundtrip', 'spice-cache');
  fs.mkdirSync(cacheDir, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'roundtrip-spice-'));
  try {
    const inFile = path.join(tmp, 'input.json');
    const outFile = path.join(tmp, 'output.json');
    const input = ids.map((id) => ({ image_id: id, test: candidates.get(id)!, refs: references.get(id)! }));
    fs.writeFileSync(inFile, JSON.stringify(input, null, 2));
    await runToExit(java, ['-jar', `-Xmx${opts.maxHeap ?? '8G'}`, jar, inFile, '-cache', cacheDir, '-out', outFile, '-subset', '-silent'], path.dirname(jar));
    const results: unknown = readJsonFile(outFile, { what: 'SPICE output' });
    if (!Array.isArray(results)) throw invalid('SPICE output', 'a JSON array of {image_id, scores}', results);
    const byId = new Map<string, Record<string, SpiceCategoryScores>>();
    const allF: number[] = [];
    for (const item of results as { image_id?: unknown; scores?: Record<string, Record<string, unknown>> }[]) {
      if (!item || typeof item !== 'object' || item.scores === undefined || typeof item.scores !== 'object') {
        throw invalid('SPICE output item', 'an object {image_id, scores}', item);
      }
      const converted: Record<string, SpiceCategoryScores> = {};
      for (const [category, tuple] of Object.entries(item.scores)) {
        converted[category] = {};
        for (const [k, v] of Object.entries(tuple ?? {})) converted[category][k] = floatConvert(v);
      }
      if (!converted.All || !('f' in converted.All)) throw invalid(`SPICE output for image ${String(item.image_id)}`, 'scores.All.f', item.scores);
      allF.push(converted.All.f);
      byId.set(JSON.stringify(item.image_id), converted);
    }
    const perImage = new Map<K, Record<string, SpiceCategoryScores>>();
    for (const id of ids) {
      const s = byId.get(JSON.stringify(id));
      if (!s) throw new RoundtripError(`SPICE output: no scores for image id ${String(id)}`);
      perImage.set(id, s);
    }
    const corpus = allF.length ? allF.reduce((a, b) => a + b, 0) / allF.length : NaN;
    return { corpus, perImage };
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
