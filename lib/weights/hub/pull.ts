/**
 * `pullModel`: fetch one of the paper's models (an alias) or any hub repo into a plain folder,
 * resumably and verified, recording what landed in `.roundtrip-pull.json` so that pulling the
 * same revision again transfers no file content.
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { expectString, invalid, RoundtripError } from '../../errors';
import { quietFromEnv } from '../../progress';
import { aliasForRepo, MODEL_ALIASES, REFUSED_REPOS, REPO_ID, type HubAlias, type ModelAlias, type UrlAlias } from './aliases';
import { defaultModelDir, hubEndpoint, readToken, type HubToken } from './config';
import { downloadFile } from './download';
import { HubError } from './errors';
import { landFileAtomic } from '../../fsutil';
import { HubHttp, type HubRequest } from './http';
import { manifestFilesPresent, readManifest, writeManifest, type ManifestFile, type PullManifest } from './manifest';
import { isWeightFile, selectRepoFiles, type TreeFile } from './select';

/** Converts a pickled PyTorch checkpoint to safetensors (the signature of `lib/weights/convert.ts`). */
export type SafetensorsConverter = (inputPath: string, outputPath: string) => Promise<unknown>;

export interface PullOptions {
  /** Folder to put the files in (default: `<models home>/<alias or owner--name>`). */
  out?: string;
  /** Branch, tag or commit (default `main`); hub models only. */
  revision?: string;
  /** Weights variant, e.g. `fp16` for `*.fp16.safetensors`; hub models only. */
  variant?: string;
  /** Name of the environment variable holding the token (default: HF_TOKEN and friends). */
  tokenEnv?: string;
  /** Environment to read HF_ENDPOINT, HF_TOKEN, ROUNDTRIP_HOME, ... from (default `process.env`). */
  env?: NodeJS.ProcessEnv;
  /** Alias table (default MODEL_ALIASES). */
  aliases?: Readonly<Record<string, ModelAlias>>;
  /** Converter for URL downloads that come as pickles (the FID Inception weights). */
  convert?: SafetensorsConverter;
  /** Tries per file, resuming after interruptions (default 3). */
  attempts?: number;
  retryDelayMs?: number;
  /** Abort when no byte arrives for this long (default 60 s). */
  stallTimeoutMs?: number;
  /** Draw per-file progress bars (default true; ROUNDTRIP_QUIET=1 silences them). */
  progress?: boolean;
}

export interface PullResult {
  name: string;
  source: 'hub' | 'url';
  repo?: string;
  url?: string;
  dir: string;
  revision?: string;
  commit?: string;
  /** Every file of the model folder as recorded in the manifest. */
  files: ManifestFile[];
  /** Paths downloaded by this call. */
  downloaded: string[];
  bytesFetched: number;
  /** True when nothing had to be fetched. */
  upToDate: boolean;
  /** Path (relative to `dir`) of the converted safetensors file, if any. */
  converted?: string;
  notes: string[];
}

/** What a model name stands for. */
export interface PullTarget {
  /** Alias, or the repo id for a repo without alias. */
  name: string;
  alias?: ModelAlias;
  repo?: string;
}

const COMMIT_SHA = /^[0-9a-f]{40}$/;

/** Maps a user-given name to an alias or repo id; throws a clear error for anything else. */
export function resolvePullTarget(name: unknown, aliases: Readonly<Record<string, ModelAlias>> = MODEL_ALIASES): PullTarget {
  const text = expectString('model name', name).trim();
  const alias = aliases[text];
  if (alias) return { name: alias.name, alias, repo: alias.kind === 'hub' ? alias.repo : undefined };
  const refused = REFUSED_REPOS.find((r) => r.pattern.test(text) || r.pattern.test(`Salesforce/${text}`));
  if (refused) throw new RoundtripError(`${text}: ${refused.reason}`);
  if (REPO_ID.test(text)) {
    const known = aliasForRepo(text, aliases);
    return known ? { name: known.name, alias: known, repo: known.repo } : { name: text, repo: text };
  }
  throw invalid('model name', `one of the aliases ${Object.keys(aliases).join(', ')} or a Hugging Face repo id "owner/name"`, text);
}

/** A repo-relative path that stays inside the model folder (the listing comes from a server we do not control). */
export function isSafeRelativePath(p: string): boolean {
  if (!p || p.startsWith('/') || p.includes('\\') || p.includes('\0') || /^[A-Za-z]:/.test(p)) return false;
  return p.split('/').every((part) => part !== '' && part !== '.' && part !== '..');
}

function encodePath(p: string): string {
  return p.split('/').map(encodeURIComponent).join('/');
}

interface HubContext {
  name: string;
  repo: string;
  revision: string;
  endpoint: string;
  token: HubToken | undefined;
  tokenEnv?: string;
}

/** Turns a hub error answer into a message that says what to do. */
function hubHttpError(ctx: HubContext, what: string): (response: Response, request: HubRequest) => Promise<HubError> {
  return async (response, request) => {
    const errorCode = response.headers.get('x-error-code') ?? '';
    const serverMessage = response.headers.get('x-error-message') ?? '';
    await response.body?.cancel().catch(() => undefined);
    const page = `${ctx.endpoint}/${ctx.repo}`;
    const status = `HTTP ${response.status}`;
    if (errorCode === 'RevisionNotFound') return new HubError(`${ctx.repo}: revision "${ctx.revision}" not found (${status})`, 'not-found');
    if (errorCode === 'EntryNotFound') return new HubError(`${ctx.repo}: ${what} not found at revision "${ctx.revision}" (${status})`, 'not-found');
    if (errorCode === 'RepoNotFound' || (response.status === 404 && !ctx.token)) {
      return new HubError(
        `${ctx.repo}: repository not found at ${ctx.endpoint} (${status}); check the name${ctx.token ? '' : ', or set HF_TOKEN if it is private'}`,
        'not-found',
      );
    }
    if (response.status === 401 || response.status === 403) {
      const tokenHint = ctx.tokenEnv ? `the variable ${ctx.tokenEnv}` : 'HF_TOKEN (or --token-env VAR naming the variable that holds it)';
      const message = ctx.token
        ? `${ctx.repo} refused the token from ${ctx.token.source} (${status}${serverMessage ? `: ${serverMessage}` : ''}): accept the licence on ${page} with the account that owns the token, and check that the token has read access`
        : `${ctx.repo} is gated or private (${status}): set ${tokenHint} to an access token from ${ctx.endpoint}/settings/tokens, and accept the licence on ${page}`;
      return new HubError(message, 'auth');
    }
    if (response.status === 404) return new HubError(`${ctx.repo}: ${what} not found at revision "${ctx.revision}" (${status})`, 'not-found');
    return new HubError(`${request.url}: ${status} ${response.statusText}${serverMessage ? ` (${serverMessage})` : ''}`, 'http');
  };
}

/** The folder option named in offline errors. */
function offlineError(name: string, dir: string, err: HubError): HubError {
  return new HubError(
    `cannot pull "${name}": ${err.message}. If this machine is offline, pull on a connected one and copy the files into ${dir}, ` +
      `or pass the folder that holds the model's files wherever a model is expected instead of the name "${name}"`,
    'offline',
  );
}

/** Reads the hub's recursive tree listing, following `Link: rel="next"` pages. */
async function listTree(http: HubHttp, ctx: HubContext): Promise<TreeFile[]> {
  let url: string | undefined = `${ctx.endpoint}/api/models/${ctx.repo}/tree/${encodeURIComponent(ctx.revision)}?recursive=true`;
  const files: TreeFile[] = [];
  for (let page = 0; url && page < 1000; page++) {
    const request = await http.request(url);
    try {
      const { response } = request;
      if (!response.ok) throw await hubHttpError(ctx, 'file listing')(response, request);
      const body: unknown = await response.json().catch(() => undefined);
      if (!Array.isArray(body)) throw new HubError(`${request.url}: expected a JSON list of files, got something else`, 'http');
      for (const entry of body as Array<Record<string, unknown>>) {
        if (!entry || entry.type !== 'file' || typeof entry.path !== 'string') continue;
        if (!isSafeRelativePath(entry.path)) throw new HubError(`${request.url}: the listing names an unsafe path ${JSON.stringify(entry.path)}; refusing to write outside the model folder`, 'http');
        if (!Number.isSafeInteger(Number(entry.size)) || Number(entry.size) < 0) throw new HubError(`${request.url}: the listing gives ${entry.path} the invalid size ${JSON.stringify(entry.size)}`, 'http');
        const lfs = entry.lfs as { oid?: unknown; size?: unknown } | undefined;
        files.push({
          path: entry.path,
          size: Number(entry.size),
          oid: String(entry.oid ?? ''),
          lfs: lfs && typeof lfs.oid === 'string' ? { oid: lfs.oid, size: Number(lfs.size ?? entry.size) } : undefined,
        });
      }
      const next = /<([^>]+)>;\s*rel="next"/.exec(response.headers.get('link') ?? '');
      url = next ? new URL(next[1], request.url).toString() : undefined;
    } finally {
      request.finish();
    }
  }
  return files;
}

/** Downloads a model; see the module comment. One call per name. */
export async function pullModel(name: string, options: PullOptions = {}): Promise<PullResult> {
  const target = resolvePullTarget(name, options.aliases ?? MODEL_ALIASES);
  const env = options.env ?? process.env;
  const dir = path.resolve(options.out ?? defaultModelDir(target.name, env));
  options = { ...options, progress: options.progress ?? !quietFromEnv(env) };
  if (target.alias?.kind === 'url') {
    if (options.revision !== undefined) throw invalid('--revision', `nothing for "${target.name}" (a plain URL download)`, options.revision);
    if (options.variant !== undefined) throw invalid('--variant', `nothing for "${target.name}" (a plain URL download)`, options.variant);
    return pullUrl(target.alias, dir, options);
  }
  return pullHubRepo(target, dir, options, env);
}

async function pullHubRepo(target: PullTarget, dir: string, options: PullOptions, env: NodeJS.ProcessEnv): Promise<PullResult> {
  const repo = target.repo as string;
  const alias = target.alias as HubAlias | undefined;
  const revision = options.revision === undefined ? 'main' : expectString('--revision', options.revision).trim();
  if (!revision || revision.includes('..')) throw invalid('--revision', 'a branch, tag or commit', options.revision);
  const variant = options.variant === undefined ? undefined : expectString('--variant', options.variant).trim();
  if (variant !== undefined && !/^[A-Za-z0-9_]+$/.test(variant)) throw invalid('--variant', 'a variant name such as "fp16"', options.variant);
  const endpoint = hubEndpoint(env);
  const token = readToken(env, options.tokenEnv);
  const http = new HubHttp({ endpoint, token, stallTimeoutMs: options.stallTimeoutMs });
  const ctx: HubContext = { name: target.name, repo, revision, endpoint, token, tokenEnv: options.tokenEnv };
  const notes: string[] = [];

  const previous = readManifest(dir);
  const sameRepo = previous?.source === 'hub' && previous.repo?.toLowerCase() === repo.toLowerCase();
  const sameTarget = sameRepo && previous?.revision === revision && previous?.variant === variant;
  const completeHere = Boolean(previous && sameTarget && previous.complete && manifestFilesPresent(dir, previous));
  const upToDate = (note?: string): PullResult => {
    const m = previous as PullManifest;
    return {
      name: target.name, source: 'hub', repo, dir, revision, commit: m.commit, files: m.files,
      downloaded: [], bytesFetched: 0, upToDate: true, notes: note ? [note] : [],
    };
  };
  // A commit never changes: a complete pull of it needs no network at all.
  if (completeHere && COMMIT_SHA.test(revision)) return upToDate();

  let tree: TreeFile[];
  try {
    tree = await listTree(http, ctx);
  } catch (err) {
    if (err instanceof HubError && err.code === 'offline') {
      if (completeHere) return upToDate(`could not reach ${endpoint} to check for updates; kept the local copy`);
      throw offlineError(target.name, dir, err);
    }
    throw err;
  }
  const selection = selectRepoFiles(tree, { variant, allow: alias?.allow });
  notes.push(...selection.notes);
  if (selection.files.length === 0) {
    throw new HubError(`${repo} at revision "${revision}" has no usable files (configs, tokenizer files, safetensors or PyTorch weights)`, 'not-found');
  }
  for (const weightDir of alias?.weightDirs ?? ['']) {
    const hasWeights = selection.files.some((f) => isWeightFile(f.path) && path.posix.dirname(f.path) === (weightDir || '.'));
    if (!hasWeights) {
      throw new HubError(`${repo} at revision "${revision}" has no safetensors or PyTorch weights in ${weightDir ? `${weightDir}/` : 'its top folder'}`, 'not-found');
    }
  }

  const known = new Map<string, ManifestFile>();
  if (sameRepo && previous) for (const f of previous.files) known.set(f.path, f);
  const manifest: PullManifest = {
    format: 1, name: target.name, source: 'hub', repo, revision, commit: sameTarget ? previous?.commit : undefined, variant,
    endpoint, complete: false, files: [], updatedAt: '',
  };
  const downloaded: string[] = [];
  let bytesFetched = 0;
  let pinned: string | undefined; // once the first answer names the commit, fetch every other file from it
  await fs.promises.mkdir(dir, { recursive: true });
  for (const file of selection.files) {
    const size = file.lfs ? file.lfs.size : file.size;
    const dest = path.join(dir, ...file.path.split('/'));
    const entry = known.get(file.path);
    const sameContent = entry && entry.size === size && (file.lfs ? entry.sha256 === file.lfs.oid : entry.gitOid === file.oid);
    if (sameContent && entry && (await fs.promises.stat(dest).then((s) => s.isFile() && s.size === size, () => false))) {
      manifest.files.push(entry);
      continue;
    }
    const url = `${endpoint}/${repo}/resolve/${encodeURIComponent(pinned ?? revision)}/${encodePath(file.path)}`;
    let result;
    try {
      result = await downloadFile(
        {
          url, dest, displayName: `${target.name}/${file.path}`, expectedSize: size,
          sha256: file.lfs?.oid, gitOid: file.lfs ? undefined : file.oid || undefined,
        },
        {
          http, attempts: options.attempts, retryDelayMs: options.retryDelayMs, progress: options.progress,
          describeHttpError: hubHttpError(ctx, file.path),
        },
      );
    } catch (err) {
      if (err instanceof HubError && err.code === 'offline') throw offlineError(target.name, dir, err);
      throw err;
    }
    bytesFetched += result.bytesFetched;
    if (result.hub.commit && COMMIT_SHA.test(result.hub.commit)) {
      manifest.commit = result.hub.commit;
      pinned ??= result.hub.commit;
    }
    manifest.files.push({ path: file.path, size: result.size, sha256: result.sha256, ...(file.lfs ? {} : { gitOid: file.oid }) });
    downloaded.push(file.path);
    await writeManifest(dir, manifest);
  }
  if (downloaded.length === 0 && completeHere && manifest.files.length === previous?.files.length) return upToDate();

  // Files an earlier pull of this repo put here that the new selection no longer wants.
  if (sameRepo && previous) {
    const wanted = new Set(manifest.files.map((f) => f.path));
    for (const f of previous.files) if (!wanted.has(f.path) && isSafeRelativePath(f.path)) await fs.promises.rm(path.join(dir, ...f.path.split('/')), { force: true });
  }
  if (COMMIT_SHA.test(revision)) manifest.commit ??= revision;
  manifest.complete = true;
  await writeManifest(dir, manifest);
  return {
    name: target.name, source: 'hub', repo, dir, revision, commit: manifest.commit, files: manifest.files,
    downloaded, bytesFetched, upToDate: downloaded.length === 0, notes,
  };
}

async function sha256OfFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/**
 * Converts a downloaded pickle next to itself into `<outputName>` (a safetensors file) through
 * `convert`, landing it atomically. Separate from the download so that callers without a converter
 * still get the verified original.
 */
export async function convertDownloadedWeights(dir: string, inputName: string, outputName: string, convert: SafetensorsConverter): Promise<ManifestFile> {
  const output = path.join(dir, outputName);
  try {
    await landFileAtomic(output, (temp) => convert(path.join(dir, inputName), temp));
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new RoundtripError(`${path.join(dir, inputName)}: conversion to safetensors failed: ${message}`);
  }
  const stat = await fs.promises.stat(output);
  return { path: outputName, size: stat.size, sha256: await sha256OfFile(output) };
}

async function pullUrl(alias: UrlAlias, dir: string, options: PullOptions): Promise<PullResult> {
  const notes: string[] = [];
  const previous = readManifest(dir);
  const sameSource = previous?.source === 'url' && previous.url === alias.url;
  const dest = path.join(dir, alias.fileName);
  const wantsConversion = Boolean(options.convert && alias.convertedName);
  const result = (m: PullManifest, downloaded: string[], bytesFetched: number, convertedNow: boolean): PullResult => ({
    name: alias.name, source: 'url', url: alias.url, dir, files: m.files, downloaded, bytesFetched,
    upToDate: downloaded.length === 0 && !convertedNow, converted: m.converted?.path, notes,
  });
  if (previous && sameSource && previous.complete && manifestFilesPresent(dir, previous) && (!wantsConversion || previous.converted)) {
    return result(previous, [], 0, false);
  }

  const manifest: PullManifest = {
    format: 1, name: alias.name, source: 'url', url: alias.url, complete: false, files: [],
    converted: sameSource ? previous?.converted : undefined, updatedAt: '',
  };
  const recorded = sameSource ? previous?.files.find((f) => f.path === alias.fileName) : undefined;
  const downloaded: string[] = [];
  let bytesFetched = 0;
  if (recorded && (await fs.promises.stat(dest).then((s) => s.size === recorded.size, () => false))) {
    manifest.files.push(recorded);
  } else {
    // The file is not on the hub: no token goes with it.
    const http = new HubHttp({ endpoint: new URL(alias.url).origin, stallTimeoutMs: options.stallTimeoutMs });
    let got;
    try {
      got = await downloadFile(
        { url: alias.url, dest, displayName: `${alias.name}/${alias.fileName}`, sha256Prefix: alias.sha256Prefix },
        { http, attempts: options.attempts, retryDelayMs: options.retryDelayMs, progress: options.progress },
      );
    } catch (err) {
      if (err instanceof HubError && err.code === 'offline') throw offlineError(alias.name, dir, err);
      throw err;
    }
    bytesFetched = got.bytesFetched;
    manifest.files.push({ path: alias.fileName, size: got.size, sha256: got.sha256 });
    manifest.converted = undefined; // a new download invalidates an old conversion
    downloaded.push(alias.fileName);
    await writeManifest(dir, manifest);
  }
  let convertedNow = false;
  if (options.convert && alias.convertedName && !manifest.converted) {
    manifest.converted = await convertDownloadedWeights(dir, alias.fileName, alias.convertedName, options.convert);
    convertedNow = true;
  } else if (!options.convert && alias.convertedName) {
    notes.push(`kept ${alias.fileName} as downloaded (no safetensors converter was given)`);
  }
  manifest.complete = true;
  await writeManifest(dir, manifest);
  return result(manifest, downloaded, bytesFetched, convertedNow);
}
