/**
 * A local stand-in for the Hugging Face hub's file API, on 127.0.0.1 with ephemeral ports:
 *
 * - hub server: `GET /api/models/{owner}/{name}/tree/{rev}?recursive=true` and
 *   `GET|HEAD /{owner}/{name}/resolve/{rev}/{path}` (LFS files: 302 to the CDN server with
 *   `X-Linked-Etag`/`X-Linked-Size`; small files: served directly with their git blob id as ETag);
 * - CDN server (a different origin, like the real CDN): `/blobs/{sha256}` and `/files/{name}` for
 *   plain URL downloads; both honour `Range`.
 *
 * Faults for tests: `cutOnce` (send N bytes then drop the connection, once), `stallOnce` (send N
 * bytes then go silent, once), `corrupt` (serve
 * altered bytes of the same length), gated repos (token required on the hub, not on the CDN).
 * Every request is recorded.
 */
import { createHash } from 'crypto';
import * as http from 'http';
import type { AddressInfo } from 'net';

export interface FakeFile {
  path: string;
  content: Buffer;
  /** Stored through LFS: served via a redirect to the CDN, listed with `lfs: {oid, size}`. */
  lfs?: boolean;
}

export interface FakeRepo {
  id: string;
  files: FakeFile[];
  /** 40-hex commit the `main` revision points at (default derived from the id). */
  commit?: string;
  /** When set, resolve requests need `Authorization: Bearer <gatedToken>`. */
  gatedToken?: string;
}

export interface RecordedRequest {
  server: 'hub' | 'cdn';
  method: string;
  path: string;
  range?: string;
  authorization?: string;
}

export function sha256Hex(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

export function gitBlobOid(data: Buffer): string {
  return createHash('sha1').update(`blob ${data.length}\0`).update(data).digest('hex');
}

/** Deterministic pseudo-random bytes (so content mistakes show up as hash mismatches). */
export function fakeBytes(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length);
  let state = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    out[i] = state & 0xff;
  }
  return out;
}

interface Served {
  content: Buffer;
  /** Fault key: `repo/path` for repo files, `/files/name` for URL files. */
  key: string;
}

export class FakeHub {
  readonly requests: RecordedRequest[] = [];
  /** Fault key → bytes to send before dropping the connection (applies once). */
  readonly cutOnce = new Map<string, number>();
  /** Fault key → bytes to send before going silent without closing (applies once). */
  readonly stallOnce = new Map<string, number>();
  /** Fault keys whose bytes are served altered. */
  readonly corrupt = new Set<string>();
  private readonly repos = new Map<string, FakeRepo>();
  private readonly blobs = new Map<string, Served>();
  private readonly urlFiles = new Map<string, Served>();
  private hubServer!: http.Server;
  private cdnServer!: http.Server;
  hubUrl = '';
  cdnUrl = '';

  static async start(): Promise<FakeHub> {
    const hub = new FakeHub();
    hub.hubServer = http.createServer((req, res) => hub.handleHub(req, res));
    hub.cdnServer = http.createServer((req, res) => hub.handleCdn(req, res));
    hub.hubUrl = await listen(hub.hubServer);
    hub.cdnUrl = await listen(hub.cdnServer);
    return hub;
  }

  addRepo(repo: FakeRepo): void {
    const commit = repo.commit ?? createHash('sha1').update(repo.id).digest('hex');
    this.repos.set(repo.id.toLowerCase(), { ...repo, commit });
    for (const file of repo.files) if (file.lfs) this.blobs.set(sha256Hex(file.content), { content: file.content, key: `${repo.id}/${file.path}` });
  }

  /** Serves `content` at `${cdnUrl}/files/${name}`; returns that URL. */
  addUrlFile(name: string, content: Buffer): string {
    this.urlFiles.set(`/files/${name}`, { content, key: `/files/${name}` });
    return `${this.cdnUrl}/files/${name}`;
  }

  commitOf(repoId: string): string {
    return this.repos.get(repoId.toLowerCase())!.commit!;
  }

  /** Requests that transferred (or tried to transfer) file contents. */
  contentRequests(): RecordedRequest[] {
    return this.requests.filter((r) => r.method === 'GET' && (r.server === 'cdn' || r.path.includes('/resolve/')));
  }

  async close(): Promise<void> {
    await Promise.all([this.hubServer, this.cdnServer].map((s) => new Promise<void>((resolve) => { s.closeAllConnections(); s.close(() => resolve()); })));
  }

  private record(server: 'hub' | 'cdn', req: http.IncomingMessage): void {
    this.requests.push({ server, method: req.method ?? '', path: req.url ?? '', range: header(req, 'range'), authorization: header(req, 'authorization') });
  }

  private handleHub(req: http.IncomingMessage, res: http.ServerResponse): void {
    this.record('hub', req);
    const url = new URL(req.url ?? '/', this.hubUrl);
    const tree = /^\/api\/models\/([^/]+\/[^/]+)\/tree\/([^/]+)$/.exec(url.pathname);
    if (tree) {
      const repo = this.repos.get(decodeURIComponent(tree[1]).toLowerCase());
      if (!repo) return error(res, 401, 'RepoNotFound');
      if (!this.revisionOk(repo, decodeURIComponent(tree[2]))) return error(res, 404, 'RevisionNotFound');
      const dirs = new Set<string>();
      for (const f of repo.files) {
        const parts = f.path.split('/');
        for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
      }
      const listing = [
        ...[...dirs].map((d) => ({ type: 'directory', path: d, size: 0, oid: createHash('sha1').update(d).digest('hex') })),
        ...repo.files.map((f) => {
          if (!f.lfs) return { type: 'file', path: f.path, size: f.content.length, oid: gitBlobOid(f.content) };
          const pointer = Buffer.from(`version https://git-lfs.github.com/spec/v1\noid sha256:${sha256Hex(f.content)}\nsize ${f.content.length}\n`);
          return { type: 'file', path: f.path, size: f.content.length, oid: gitBlobOid(pointer), lfs: { oid: sha256Hex(f.content), size: f.content.length, pointerSize: pointer.length } };
        }),
      ];
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(listing));
      return;
    }
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    if (resolve) {
      const repo = this.repos.get(decodeURIComponent(resolve[1]).toLowerCase());
      if (!repo) return error(res, 401, 'RepoNotFound');
      if (repo.gatedToken) {
        const auth = header(req, 'authorization');
        if (!auth) return error(res, 401, 'GatedRepo', 'Access to this model is restricted. You must be authenticated.');
        if (auth !== `Bearer ${repo.gatedToken}`) return error(res, 403, 'GatedRepo', 'Access to this model is restricted.');
      }
      if (!this.revisionOk(repo, decodeURIComponent(resolve[2]))) return error(res, 404, 'RevisionNotFound');
      const filePath = resolve[3].split('/').map(decodeURIComponent).join('/');
      const file = repo.files.find((f) => f.path === filePath);
      if (!file) return error(res, 404, 'EntryNotFound');
      const headers = { 'x-repo-commit': repo.commit! };
      if (file.lfs) {
        const sha = sha256Hex(file.content);
        res.writeHead(302, {
          ...headers,
          location: `${this.cdnUrl}/blobs/${sha}?signature=fake`,
          'x-linked-etag': `"${sha}"`,
          'x-linked-size': String(file.content.length),
          etag: `"${sha}"`,
        });
        res.end();
        return;
      }
      serve(req, res, this.faulted({ content: file.content, key: `${repo.id}/${file.path}` }), { ...headers, etag: `"${gitBlobOid(file.content)}"` }, this.takeCut(`${repo.id}/${file.path}`));
      return;
    }
    error(res, 404, 'NotFound');
  }

  private handleCdn(req: http.IncomingMessage, res: http.ServerResponse): void {
    this.record('cdn', req);
    const url = new URL(req.url ?? '/', this.cdnUrl);
    const blob = /^\/blobs\/([0-9a-f]{64})$/.exec(url.pathname);
    const served = blob ? this.blobs.get(blob[1]) : this.urlFiles.get(url.pathname);
    if (!served) return error(res, 404, 'NotFound');
    const stallAfter = this.stallOnce.get(served.key);
    this.stallOnce.delete(served.key);
    serve(req, res, this.faulted(served), {}, this.takeCut(served.key), stallAfter);
  }

  private revisionOk(repo: FakeRepo, revision: string): boolean {
    return revision === 'main' || revision === repo.commit;
  }

  private faulted(served: Served): Buffer {
    if (!this.corrupt.has(served.key)) return served.content;
    const altered = Buffer.from(served.content);
    altered[altered.length >> 1] ^= 0xff;
    return altered;
  }

  private takeCut(key: string): number | undefined {
    const cut = this.cutOnce.get(key);
    this.cutOnce.delete(key);
    return cut;
  }
}

function header(req: http.IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function error(res: http.ServerResponse, status: number, code: string, message = code): void {
  res.writeHead(status, { 'x-error-code': code, 'x-error-message': message, 'content-type': 'application/json' });
  res.end(JSON.stringify({ error: message }));
}

/** Serves `content`, honouring `Range: bytes=N-[M]`; with `cutAfter`, drops the connection after that many body bytes. */
function serve(req: http.IncomingMessage, res: http.ServerResponse, content: Buffer, headers: Record<string, string>, cutAfter?: number, stallAfter?: number): void {
  let start = 0;
  let end = content.length - 1;
  let status = 200;
  const range = /^bytes=(\d+)-(\d*)$/.exec(header(req, 'range') ?? '');
  if (range) {
    start = Number(range[1]);
    if (range[2]) end = Math.min(end, Number(range[2]));
    if (start >= content.length) {
      res.writeHead(416, { 'content-range': `bytes */${content.length}` });
      res.end();
      return;
    }
    status = 206;
    headers = { ...headers, 'content-range': `bytes ${start}-${end}/${content.length}` };
  }
  const body = content.subarray(start, end + 1);
  res.writeHead(status, { ...headers, 'accept-ranges': 'bytes', 'content-length': String(body.length), 'content-type': 'application/octet-stream' });
  if (req.method === 'HEAD') {
    res.end();
    return;
  }
  if (stallAfter !== undefined && stallAfter < body.length) {
    res.write(body.subarray(0, stallAfter)); // then nothing more until the server closes
    return;
  }
  if (cutAfter !== undefined && cutAfter < body.length) {
    res.write(body.subarray(0, cutAfter), () => setTimeout(() => res.socket?.destroy(), 20));
    return;
  }
  res.end(body);
}

function listen(server: http.Server): Promise<string> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`));
  });
}

/** A URL on 127.0.0.1 where nothing listens (a port just released). */
export async function closedPortUrl(): Promise<string> {
  const server = http.createServer();
  const url = await listen(server);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return url;
}
