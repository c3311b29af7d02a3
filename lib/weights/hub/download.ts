/**
 * One file, downloaded resumably and verified before it lands:
 *
 * - bytes go to `<dest>.incomplete`; after an interruption the next attempt (or the next run)
 *   continues from its current size with a `Range` request;
 * - the finished file is checked against the expected size and sha256 (LFS files), sha256 prefix
 *   (torch.hub-style file names) or git blob sha1 (small non-LFS hub files);
 * - only then is it fsynced and renamed to `<dest>`, so a file under its final name is always
 *   complete. A file that fails verification is deleted, never installed.
 */
import { createHash, type Hash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { createProgress } from '../../progress';
import { HubError } from './errors';
import { fileSize, fsyncDir } from './fsutil';
import type { HubHeaders, HubHttp, HubRequest } from './http';

export interface DownloadSpec {
  url: string;
  /** Final path of the file. */
  dest: string;
  /** Name used in messages and the progress bar (e.g. `blip-base/model.safetensors`). */
  displayName: string;
  expectedSize?: number;
  /** Full expected sha256 (hex). */
  sha256?: string;
  /** Expected leading hex digits of the sha256. */
  sha256Prefix?: string;
  /** Expected git blob sha1 (hex); needs `expectedSize`. */
  gitOid?: string;
}

export interface DownloadOptions {
  http: HubHttp;
  /** Tries per file; interruptions are retried (resuming), other failures are not. Default 3. */
  attempts?: number;
  /** Pause before a retry (ms). Default 1000. */
  retryDelayMs?: number;
  /** Draw a progress bar (subject to ROUNDTRIP_QUIET). Default true. */
  progress?: boolean;
  /** Files smaller than this get no bar (configs and tokenizer files would only add noise). Default 1 MB. */
  progressMinBytes?: number;
  /** Turns a non-success answer into a user-facing error (the caller knows the repo and token). */
  describeHttpError?: (response: Response, request: HubRequest) => Promise<HubError>;
}

export interface DownloadResult {
  size: number;
  sha256: string;
  hub: HubHeaders;
  /** Bytes already on disk when the last attempt started (0 for a fresh download). */
  resumedFrom: number;
  /** Bytes received over the network, all attempts together. */
  bytesFetched: number;
  attempts: number;
}

/** Suffix of a partial download. */
export const INCOMPLETE_SUFFIX = '.incomplete';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

class Verifier {
  private readonly sha256: Hash = createHash('sha256');
  private readonly gitSha1: Hash | undefined;
  constructor(private readonly spec: DownloadSpec) {
    if (spec.gitOid && spec.expectedSize !== undefined) {
      this.gitSha1 = createHash('sha1').update(`blob ${spec.expectedSize}\0`);
    }
  }
  update(chunk: Uint8Array): void {
    this.sha256.update(chunk);
    this.gitSha1?.update(chunk);
  }
  /** Returns the sha256 of the content or throws when it is not the expected file. */
  check(size: number): string {
    const { spec } = this;
    const sha256 = this.sha256.digest('hex');
    const mismatch = (what: string, expected: string, actual: string) =>
      new HubError(
        `${spec.displayName}: the downloaded file does not match the expected ${what} (expected ${expected}, got ${actual}); it was deleted and nothing was installed. Run the command again; if this repeats, the server at ${new URL(spec.url).origin} is serving a different file.`,
        'corrupt',
      );
    if (spec.expectedSize !== undefined && size !== spec.expectedSize) throw mismatch('size', `${spec.expectedSize} bytes`, `${size} bytes`);
    if (spec.sha256 && sha256 !== spec.sha256.toLowerCase()) throw mismatch('sha256', spec.sha256, sha256);
    if (spec.sha256Prefix && !sha256.startsWith(spec.sha256Prefix.toLowerCase())) throw mismatch('sha256 prefix', spec.sha256Prefix, sha256);
    if (this.gitSha1 && spec.gitOid) {
      const oid = this.gitSha1.digest('hex');
      if (oid !== spec.gitOid.toLowerCase()) throw mismatch('git blob id', spec.gitOid, oid);
    }
    return sha256;
  }
}

async function hashPrefix(file: string, length: number, verifier: Verifier): Promise<void> {
  if (length === 0) return;
  const stream = fs.createReadStream(file, { start: 0, end: length - 1, highWaterMark: 1 << 20 });
  for await (const chunk of stream) verifier.update(chunk as Buffer);
}

async function land(partial: string, dest: string): Promise<void> {
  await fs.promises.rename(partial, dest);
  await fsyncDir(path.dirname(dest));
}

async function genericHttpError(response: Response, request: HubRequest): Promise<HubError> {
  await response.body?.cancel().catch(() => undefined);
  return new HubError(`${request.url}: HTTP ${response.status} ${response.statusText}`, response.status === 404 ? 'not-found' : 'http');
}

/** Downloads `spec.url` to `spec.dest` (see the module comment). Resolves once the verified file is in place. */
export async function downloadFile(spec: DownloadSpec, options: DownloadOptions): Promise<DownloadResult> {
  const attempts = options.attempts ?? 3;
  const partial = spec.dest + INCOMPLETE_SUFFIX;
  await fs.promises.mkdir(path.dirname(spec.dest), { recursive: true });
  let bytesFetched = 0;
  for (let attempt = 1; ; attempt++) {
    try {
      const result = await attemptDownload(spec, options, partial, (n) => (bytesFetched += n));
      return { ...result, bytesFetched, attempts: attempt };
    } catch (err) {
      if (err instanceof HubError && err.code === 'interrupted' && attempt < attempts) {
        await sleep(options.retryDelayMs ?? 1000);
        continue;
      }
      if (err instanceof HubError && err.code === 'interrupted') {
        const kept = (await fileSize(partial)) ?? 0;
        throw new HubError(
          `${spec.displayName}: ${err.message}; ${kept} bytes are kept in ${partial} — run the same command again to resume`,
          'interrupted',
        );
      }
      throw err;
    }
  }
}

async function attemptDownload(
  spec: DownloadSpec,
  options: DownloadOptions,
  partial: string,
  countFetched: (n: number) => void,
): Promise<Omit<DownloadResult, 'bytesFetched' | 'attempts'>> {
  let offset = (await fileSize(partial)) ?? 0;
  if (spec.expectedSize !== undefined && offset > spec.expectedSize) {
    await fs.promises.truncate(partial, 0);
    offset = 0;
  }
  const verifier = new Verifier(spec);
  const failVerification = async (err: unknown): Promise<never> => {
    await fs.promises.rm(partial, { force: true });
    throw err;
  };

  // A previous run may have received every byte and stopped before the rename.
  if (spec.expectedSize !== undefined && offset === spec.expectedSize) {
    await fs.promises.appendFile(partial, new Uint8Array(0));
    await hashPrefix(partial, offset, verifier);
    let sha256: string;
    try {
      sha256 = verifier.check(offset);
    } catch (err) {
      return failVerification(err);
    }
    await land(partial, spec.dest);
    return { size: offset, sha256, hub: {}, resumedFrom: offset };
  }

  // identity: byte offsets for Range must be offsets in the file, not in a compressed stream.
  const headers: Record<string, string> = { 'accept-encoding': 'identity' };
  if (offset > 0) headers.range = `bytes=${offset}-`;
  const request = await options.http.request(spec.url, { headers });
  const { response } = request;
  try {
    if (response.status === 206) {
      const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(response.headers.get('content-range') ?? '');
      if (!range || Number(range[1]) !== offset) {
        // The server answered a different range than asked: start over rather than splice wrong bytes.
        await fs.promises.truncate(partial, 0);
        throw new HubError(`server answered range ${response.headers.get('content-range') ?? '(none)'} for bytes=${offset}-`, 'interrupted');
      }
    } else if (response.status === 200) {
      offset = 0; // the server ignored the Range header: the body is the whole file
    } else if (response.status === 416 && offset > 0) {
      await fs.promises.truncate(partial, 0);
      throw new HubError('server refused to resume (HTTP 416); starting over', 'interrupted');
    } else {
      throw await (options.describeHttpError ?? genericHttpError)(response, request);
    }
    if (!response.body) throw new HubError(`${request.url}: empty response body`, 'http');

    const contentLength = Number(response.headers.get('content-length') ?? NaN);
    const total = spec.expectedSize ?? (Number.isFinite(contentLength) ? offset + contentLength : undefined);
    const handle = await fs.promises.open(partial, offset > 0 ? 'r+' : 'w');
    let position = offset;
    let received = 0;
    const worthABar = options.progress !== false && (total === undefined || total >= (options.progressMinBytes ?? 1_000_000));
    const progress = worthABar ? createProgress({ label: spec.displayName, total, unit: 'B', start: offset }) : undefined;
    try {
      if (offset > 0) await hashPrefix(partial, offset, verifier);
      else await handle.truncate(0);
      try {
        for await (const chunk of response.body) {
          request.touch();
          await handle.write(chunk, 0, chunk.length, position);
          verifier.update(chunk);
          position += chunk.length;
          received += chunk.length;
          countFetched(chunk.length);
          progress?.tick(chunk.length);
        }
      } catch (err) {
        const why = request.stalled() ? 'the connection stalled' : 'the connection dropped';
        throw new HubError(`${why} after ${position}${total !== undefined ? ` of ${total}` : ''} bytes`, 'interrupted');
      }
      await handle.sync();
    } finally {
      progress?.done();
      await handle.close();
    }
    const cleanlyShort =
      (spec.expectedSize !== undefined && position < spec.expectedSize) || (Number.isFinite(contentLength) && received < contentLength);
    if (cleanlyShort) throw new HubError(`the server closed the connection after ${position}${total !== undefined ? ` of ${total}` : ''} bytes`, 'interrupted');

    let sha256: string;
    try {
      sha256 = verifier.check(position);
    } catch (err) {
      return failVerification(err);
    }
    await land(partial, spec.dest);
    return { size: position, sha256, hub: request.hub, resumedFrom: offset };
  } finally {
    request.finish();
  }
}
