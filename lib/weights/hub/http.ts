/**
 * HTTP transport for the hub, on Node's built-in fetch (undici).
 *
 * Why not `@huggingface/hub`: its `downloadFile` returns a Blob with no progress callback, no
 * resume-into-a-partial-file and no control over where bytes land, and `downloadFileToCacheDir`
 * writes the Python cache layout (blobs + symlinks), not a plain model folder. We need exactly
 * those three things, and the hub's file API is two GET routes, so a dependency would add little.
 *
 * Redirects are followed by hand so that (1) the hub's own headers (`X-Repo-Commit`,
 * `X-Linked-Etag`, `X-Linked-Size`) are read from the hub's answer rather than the CDN's, and
 * (2) the token is sent only to the hub's origin, never to the CDN a redirect points at.
 */
import { HubError } from './errors';
import type { HubToken } from './config';

export interface HubHeaders {
  /** Commit the revision resolved to. */
  commit?: string;
  /** For LFS files: sha256 of the content (quotes stripped). */
  linkedEtag?: string;
  linkedSize?: number;
  etag?: string;
}

export interface HubRequest {
  /** The final response (after redirects). */
  response: Response;
  /** URL of the final response. */
  url: string;
  hub: HubHeaders;
  /** Call whenever bytes arrive: the request is aborted after `stallTimeoutMs` without progress. */
  touch(): void;
  /** Stops the stall timer (body fully read or abandoned). */
  finish(): void;
  /** True once the stall timer aborted the request. */
  stalled(): boolean;
}

export interface HubHttpOptions {
  endpoint: string;
  token?: HubToken;
  /** Abort a request when no byte arrives for this long (ms). */
  stallTimeoutMs?: number;
}

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 10;
const USER_AGENT = 'roundtrip (node fetch)';

/** The socket-level error code behind a failed fetch (`ECONNREFUSED`, `ENOTFOUND`, ...). */
export function networkErrorCode(err: unknown): string | undefined {
  let current: unknown = err;
  for (let depth = 0; depth < 5 && current && typeof current === 'object'; depth++) {
    const record = current as { code?: unknown; cause?: unknown; errors?: unknown[] };
    if (typeof record.code === 'string' && /^E[A-Z]+$|^UND_ERR/.test(record.code)) return record.code;
    if (Array.isArray(record.errors) && record.errors.length > 0) current = record.errors[0];
    else current = record.cause;
  }
  return undefined;
}

function stripQuotes(value: string | null): string | undefined {
  if (!value) return undefined;
  return value.replace(/^W\//, '').replace(/^"|"$/g, '');
}

export class HubHttp {
  readonly endpoint: string;
  readonly token: HubToken | undefined;
  private readonly endpointOrigin: string;
  private readonly stallTimeoutMs: number;

  constructor(options: HubHttpOptions) {
    this.endpoint = options.endpoint;
    this.endpointOrigin = new URL(options.endpoint).origin;
    this.token = options.token;
    this.stallTimeoutMs = options.stallTimeoutMs ?? 60_000;
  }

  /** GETs (or HEADs) `url`, following redirects; throws HubError('offline'|'interrupted') when no answer comes. */
  async request(url: string, init: { method?: 'GET' | 'HEAD'; headers?: Record<string, string> } = {}): Promise<HubRequest> {
    const controller = new AbortController();
    let stalled = false;
    let timer: NodeJS.Timeout | undefined;
    const touch = () => {
      if (timer) clearTimeout(timer);
      timer = setTimeout(() => {
        stalled = true;
        controller.abort();
      }, this.stallTimeoutMs);
      timer.unref?.();
    };
    const finish = () => {
      if (timer) clearTimeout(timer);
      timer = undefined;
    };
    const hub: HubHeaders = {};
    let current = url;
    touch();
    try {
      for (let hop = 0; ; hop++) {
        const headers: Record<string, string> = { 'user-agent': USER_AGENT, ...init.headers };
        if (this.token && new URL(current).origin === this.endpointOrigin) headers.authorization = `Bearer ${this.token.token}`;
        const response = await fetch(current, { method: init.method ?? 'GET', headers, redirect: 'manual', signal: controller.signal });
        hub.commit ??= response.headers.get('x-repo-commit') ?? undefined;
        hub.linkedEtag ??= stripQuotes(response.headers.get('x-linked-etag'));
        const linkedSize = response.headers.get('x-linked-size');
        if (linkedSize && hub.linkedSize === undefined && /^\d+$/.test(linkedSize)) hub.linkedSize = Number(linkedSize);
        hub.etag ??= stripQuotes(response.headers.get('etag'));
        const location = response.headers.get('location');
        if (REDIRECT_STATUSES.has(response.status) && location) {
          await response.body?.cancel().catch(() => undefined);
          if (hop >= MAX_REDIRECTS) throw new HubError(`${url}: more than ${MAX_REDIRECTS} redirects`, 'http');
          current = new URL(location, current).toString();
          touch();
          continue;
        }
        touch();
        return { response, url: current, hub, touch, finish, stalled: () => stalled };
      }
    } catch (err) {
      finish();
      if (err instanceof HubError) throw err;
      if (stalled) throw new HubError(`${new URL(current).origin}: no answer for ${Math.round(this.stallTimeoutMs / 1000)} s`, 'interrupted');
      const code = networkErrorCode(err) ?? (err instanceof Error ? err.message : String(err));
      throw new HubError(`cannot reach ${new URL(current).origin} (${code})`, 'offline');
    }
  }
}
