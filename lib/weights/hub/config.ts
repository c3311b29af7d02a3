/**
 * Where models come from and where they go, all read from the environment so that the CLI, tests
 * and other modules agree:
 *
 * - Hub endpoint: `HF_ENDPOINT` (default `https://huggingface.co`), as the Python `huggingface_hub` reads it.
 * - Models folder: `$ROUNDTRIP_HOME/models` when `ROUNDTRIP_HOME` is set, else
 *   `$XDG_CACHE_HOME/roundtrip/models`, else `~/.cache/roundtrip/models`. Each model lives in
 *   `<models>/<alias>` (e.g. `blip-base`) or `<models>/<owner>--<name>` for a plain repo id.
 * - Python hub cache (read-only fallback for already-downloaded snapshots): `HF_HUB_CACHE`, else
 *   `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
 * - Token: the variable named by `--token-env`, else `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`,
 *   else the file written by `huggingface-cli login` (`HF_TOKEN_PATH`, else `$HF_HOME/token`, else
 *   `~/.cache/huggingface/token`).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { invalid, RoundtripError } from '../../errors';

export const DEFAULT_ENDPOINT = 'https://huggingface.co';

/** The hub's base URL without a trailing slash. */
export function hubEndpoint(env: NodeJS.ProcessEnv = process.env): string {
  const raw = (env.HF_ENDPOINT ?? '').trim();
  if (!raw) return DEFAULT_ENDPOINT;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw invalid('HF_ENDPOINT', 'an http(s) URL such as https://huggingface.co', raw);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw invalid('HF_ENDPOINT', 'an http(s) URL', raw);
  return raw.replace(/\/+$/, '');
}

function homeDir(env: NodeJS.ProcessEnv): string {
  return env.HOME || os.homedir();
}

/** The folder that holds every pulled model (see the module comment for the search order). */
export function modelsHome(env: NodeJS.ProcessEnv = process.env): string {
  if (env.ROUNDTRIP_HOME) return path.resolve(env.ROUNDTRIP_HOME, 'models');
  if (env.XDG_CACHE_HOME) return path.resolve(env.XDG_CACHE_HOME, 'roundtrip', 'models');
  return path.join(homeDir(env), '.cache', 'roundtrip', 'models');
}

/** Folder name of a model inside the models folder: the alias itself, or `owner--name` for a repo id. */
export function modelDirName(nameOrRepo: string): string {
  return nameOrRepo.replace(/\//g, '--');
}

/** Default folder of one model. */
export function defaultModelDir(nameOrRepo: string, env: NodeJS.ProcessEnv = process.env): string {
  return path.join(modelsHome(env), modelDirName(nameOrRepo));
}

/** The Python `huggingface_hub` cache (`models--owner--name/snapshots/<sha>` layout). */
export function hfHubCache(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return path.resolve(env.HF_HUB_CACHE);
  if (env.HF_HOME) return path.resolve(env.HF_HOME, 'hub');
  return path.join(homeDir(env), '.cache', 'huggingface', 'hub');
}

/** A token and where it came from (for error messages; the token itself is never printed). */
export interface HubToken {
  token: string;
  source: string;
}

/**
 * Reads the hub token. With `tokenEnv`, that variable must be set (a typo should not silently
 * fall back to anonymous access); otherwise the usual places are tried and none is fine.
 */
export function readToken(env: NodeJS.ProcessEnv = process.env, tokenEnv?: string): HubToken | undefined {
  if (tokenEnv !== undefined) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(tokenEnv)) throw invalid('--token-env', 'the name of an environment variable', tokenEnv);
    const value = (env[tokenEnv] ?? '').trim();
    if (!value) throw new RoundtripError(`--token-env: expected environment variable ${tokenEnv} to hold a Hugging Face token, but it is unset or empty`);
    return { token: value, source: tokenEnv };
  }
  for (const name of ['HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN']) {
    const value = (env[name] ?? '').trim();
    if (value) return { token: value, source: name };
  }
  const tokenFile = env.HF_TOKEN_PATH
    ? path.resolve(env.HF_TOKEN_PATH)
    : path.join(env.HF_HOME ? path.resolve(env.HF_HOME) : path.join(homeDir(env), '.cache', 'huggingface'), 'token');
  try {
    const value = fs.readFileSync(tokenFile, 'utf8').trim();
    if (value) return { token: value, source: tokenFile };
  } catch {
    // No saved login: anonymous access.
  }
  return undefined;
}
