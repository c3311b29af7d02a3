/**
 * `resolveModel`: what every model-loading command calls on its model argument. The argument is
 * either a path (folder, or a single weights file) or the name of a pulled model (alias or repo
 * id). An existing path always wins, so a folder named like an alias is still a folder.
 */
import * as fs from 'fs';
import * as path from 'path';
import { expectString, invalid } from '../../errors';
import { MODEL_ALIASES, REPO_ID, type ModelAlias } from './aliases';
import { defaultModelDir, hfHubCache } from './config';
import { HubError } from './errors';
import { manifestFilesPresent, readManifest, type PullManifest } from './manifest';
import { resolvePullTarget } from './pull';

export interface ResolvedModel {
  /** `path`: the argument was an existing file or folder; `pulled`: a folder made by `weights pull`; `hf-cache`: a snapshot in the Python hub cache. */
  kind: 'path' | 'pulled' | 'hf-cache';
  /** Absolute path of the model folder (or of the file, for a file argument). */
  path: string;
  /** Alias or repo id, when resolved from a name. */
  name?: string;
  alias?: ModelAlias;
  repo?: string;
  manifest?: PullManifest;
  /** For single-file models (the FID Inception weights): the file to load, preferring the converted safetensors. */
  file?: string;
}

export interface ResolveOptions {
  env?: NodeJS.ProcessEnv;
  aliases?: Readonly<Record<string, ModelAlias>>;
}

function looksLikePath(text: string): boolean {
  return path.isAbsolute(text) || text.startsWith('.') || text.startsWith('~') || text.includes('\\') || (text.includes('/') && !REPO_ID.test(text));
}

function hfCacheSnapshot(repo: string, env: NodeJS.ProcessEnv): string | undefined {
  const base = path.join(hfHubCache(env), `models--${repo.replace(/\//g, '--')}`);
  try {
    const commit = fs.readFileSync(path.join(base, 'refs', 'main'), 'utf8').trim();
    const snapshot = path.join(base, 'snapshots', commit);
    if (['config.json', 'model_index.json'].some((f) => fs.existsSync(path.join(snapshot, f)))) return snapshot;
  } catch {
    // No snapshot of this repo in the Python cache.
  }
  return undefined;
}

/** Resolves a model argument to a local path; throws a HubError('missing') that says which pull to run. */
export function resolveModel(nameOrPath: string, options: ResolveOptions = {}): ResolvedModel {
  const env = options.env ?? process.env;
  const aliases = options.aliases ?? MODEL_ALIASES;
  const raw = expectString('model', nameOrPath).trim();
  if (!raw) throw invalid('model', 'a folder or a model name such as "blip-base"', nameOrPath);
  const expanded = raw === '~' || raw.startsWith('~/') ? path.join(env.HOME ?? '', raw.slice(1)) : raw;
  const absolute = path.resolve(expanded);
  if (fs.existsSync(absolute)) return { kind: 'path', path: absolute };
  if (looksLikePath(raw)) throw new HubError(`model: the folder ${absolute} does not exist`, 'missing');

  let target;
  try {
    target = resolvePullTarget(raw, aliases);
  } catch {
    throw invalid('model', `an existing folder, a pulled alias (${Object.keys(aliases).join(', ')}) or a Hugging Face repo id`, raw);
  }
  const dir = defaultModelDir(target.name, env);
  const manifest = readManifest(dir);
  if (manifest?.complete && manifestFilesPresent(dir, manifest)) {
    const file = target.alias?.kind === 'url' ? path.join(dir, manifest.converted?.path ?? manifest.files[0].path) : undefined;
    return { kind: 'pulled', path: dir, name: target.name, alias: target.alias, repo: target.repo, manifest, file };
  }
  if (target.repo) {
    const snapshot = hfCacheSnapshot(target.repo, env);
    if (snapshot) return { kind: 'hf-cache', path: snapshot, name: target.name, alias: target.alias, repo: target.repo };
  }
  const state = manifest ? ' (an earlier pull did not finish)' : '';
  throw new HubError(
    `model "${target.name}" is not present locally: nothing complete in ${dir}${state}. ` +
      `Run \`roundtrip weights pull ${target.name}\` to fetch it, or, offline, pass the folder that holds its files instead of the name.`,
    'missing',
  );
}

/**
 * The local path for a model argument of any loader: an existing path as given, else the folder of a
 * pulled alias or repo id (the file, for single-file models such as the FID Inception weights). A missing
 * model is an error that names the `roundtrip weights pull` to run.
 */
export function resolveModelPath(nameOrPath: string): string {
  if (typeof nameOrPath === 'string' && fs.existsSync(nameOrPath)) return nameOrPath;
  const r = resolveModel(nameOrPath);
  return r.file ?? r.path;
}
