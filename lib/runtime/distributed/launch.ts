/**
 * `roundtrip launch`: starts N local processes of one job with the torch.distributed environment
 * (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), as torchrun does. Their
 * output lines are prefixed with the rank; SIGINT/SIGTERM are forwarded; when a rank fails, the others
 * are stopped (SIGTERM, then SIGKILL after a grace period) and the launcher exits with that rank's
 * status, naming it.
 */
import { ChildProcess, spawn } from 'child_process';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { RoundtripError, expectInteger, expectString } from '../../errors';
import { DEFAULT_MASTER_PORT } from './env';
import { PACKAGE_ROOT } from '../../paths';

export interface LaunchOptions {
  /** Processes on this node. */
  nproc: number;
  /** Nodes in the job (default 1); each runs its own launcher with its `nodeRank`. */
  nnodes?: number;
  nodeRank?: number;
  masterAddr?: string;
  masterPort?: number;
  /**
   * What each process runs: a roundtrip subcommand and its flags (`['finetune', '--config', …]`), or
   * any executable and its arguments (`['node', 'train.js']`).
   */
  command: string[];
  /** Intra-op threads per process (default: cores ÷ nproc, unless ROUNDTRIP_THREADS is set). */
  threads?: number;
  /** Seconds between SIGTERM and SIGKILL when stopping the other ranks (default 10). */
  graceSeconds?: number;
  /** Extra environment for the processes. */
  env?: NodeJS.ProcessEnv;
  /** Where prefixed lines go (default process.stdout / process.stderr). */
  stdout?: NodeJS.WritableStream;
  stderr?: NodeJS.WritableStream;
  /** Roundtrip subcommand names (first word of `command` that runs the roundtrip CLI). */
  subcommands?: readonly string[];
}

export interface RankExit {
  rank: number;
  pid: number;
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface LaunchResult {
  /** The launcher's exit status: 0, or the failing rank's (128 + signal number for a signal). */
  exitCode: number;
  exits: RankExit[];
  /** The first rank that failed, if any. */
  failed?: RankExit;
  /** A signal the launcher received and forwarded. */
  signal?: NodeJS.Signals;
}

/** Resolves when `port` on `host` can be listened on; rejects naming it when taken. */
export function checkPortFree(host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE') reject(new RoundtripError(`launch: master port ${port} on ${host} is already in use (another job?); choose another with --master-port`));
      else if (err.code === 'EADDRNOTAVAIL') reject(new RoundtripError(`launch: --master-addr ${host} is not an address of this machine (node rank 0 hosts the master); give one of its addresses`));
      else reject(new RoundtripError(`launch: cannot listen on ${host}:${port} (${err.message})`));
    });
    server.listen({ host, port, exclusive: true }, () => server.close(() => resolve()));
  });
}

function describeExit(e: RankExit): string {
  return e.signal ? `was killed by ${e.signal}` : `exited with status ${e.code}`;
}

function exitStatus(e: RankExit): number {
  if (e.signal) return 128 + (os.constants.signals[e.signal] ?? 0);
  return e.code ?? 1;
}

/** Pipes a stream's lines to `out`, each prefixed. */
function prefixLines(stream: NodeJS.ReadableStream, out: NodeJS.WritableStream, prefix: string): Promise<void> {
  return new Promise((resolve) => {
    let pending = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      pending += chunk;
      const lines = pending.split('\n');
      pending = lines.pop()!;
      if (lines.length) out.write(lines.map((l) => prefix + l.replace(/\r/g, '')).join('\n') + '\n');
    });
    stream.on('end', () => {
      if (pending) out.write(prefix + pending + '\n');
      resolve();
    });
  });
}

/** Runs the job; resolves when every local process has exited. */
export async function launch(opts: LaunchOptions): Promise<LaunchResult> {
  const nproc = expectInteger('--nproc', opts.nproc, { min: 1 });
  const nnodes = expectInteger('--nnodes', opts.nnodes ?? 1, { min: 1 });
  const nodeRank = expectInteger('--node-rank', opts.nodeRank ?? 0, { min: 0, max: nnodes - 1 });
  const masterAddr = expectString('--master-addr', opts.masterAddr ?? '127.0.0.1');
  const masterPort = expectInteger('--master-port', opts.masterPort ?? DEFAULT_MASTER_PORT, { min: 1, max: 65535 });
  const graceSeconds = opts.graceSeconds ?? 10;
  if (!Array.isArray(opts.command) || opts.command.length === 0) throw new RoundtripError('launch: give the command to run after --, e.g. roundtrip launch --nproc 2 -- finetune --config run.yaml');
  const worldSize = nproc * nnodes;
  const baseEnv = { ...process.env, ...(opts.env ?? {}) };
  const threads = opts.threads ?? (baseEnv.ROUNDTRIP_THREADS ? Number(baseEnv.ROUNDTRIP_THREADS) : Math.max(1, Math.floor(os.cpus().length / nproc)));
  expectInteger('--threads', threads, { min: 1 });
  if (nodeRank === 0) await checkPortFree(masterAddr, masterPort);

  const [first, ...rest] = opts.command;
  const isSubcommand = (opts.subcommands ?? []).includes(first);
  const file = isSubcommand ? process.execPath : first;
  const args = isSubcommand ? [path.join(PACKAGE_ROOT, 'bin', 'roundtrip.js'), first, ...rest] : rest;
  const stdout = opts.stdout ?? process.stdout;
  const stderr = opts.stderr ?? process.stderr;
  const note = (line: string) => stderr.write(`launch: ${line}\n`);

  const children: ChildProcess[] = [];
  const exits: RankExit[] = [];
  const pipes: Promise<void>[] = [];
  let failed: RankExit | undefined;
  let received: NodeJS.Signals | undefined;
  let killTimer: NodeJS.Timeout | undefined;
  const running = () => children.filter((c) => c.exitCode === null && c.signalCode === null);
  const stopOthers = () => {
    for (const c of running()) c.kill('SIGTERM');
    killTimer ??= setTimeout(() => {
      for (const c of running()) c.kill('SIGKILL');
    }, graceSeconds * 1000);
    killTimer.unref();
  };
  const forward = (signal: NodeJS.Signals) => {
    if (received) {
      // A second signal: stop now.
      for (const c of running()) c.kill('SIGKILL');
      return;
    }
    received = signal;
    note(`${signal} received; forwarding it to ${running().length} process(es)`);
    for (const c of running()) c.kill(signal);
  };
  const onSigint = () => forward('SIGINT');
  const onSigterm = () => forward('SIGTERM');
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigterm);

  try {
    const done = Array.from({ length: nproc }, (_, localRank) => {
      const rank = nodeRank * nproc + localRank;
      const env: NodeJS.ProcessEnv = {
        ...baseEnv,
        RANK: String(rank),
        LOCAL_RANK: String(localRank),
        WORLD_SIZE: String(worldSize),
        LOCAL_WORLD_SIZE: String(nproc),
        GROUP_RANK: String(nodeRank),
        MASTER_ADDR: masterAddr,
        MASTER_PORT: String(masterPort),
        ROUNDTRIP_THREADS: String(threads),
      };
      // BLAS and OpenMP pools would otherwise each take every core in every process.
      env.OMP_NUM_THREADS ??= String(threads);
      env.OPENBLAS_NUM_THREADS ??= String(threads);
      const child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
      children.push(child);
      const prefix = `[rank ${rank}] `;
      pipes.push(prefixLines(child.stdout!, stdout, prefix), prefixLines(child.stderr!, stderr, prefix));
      return new Promise<void>((resolve) => {
        child.once('error', (err) => {
          note(`rank ${rank}: cannot start ${file} (${err.message})`);
          const e: RankExit = { rank, pid: child.pid ?? -1, code: 127, signal: null };
          exits.push(e);
          if (!failed) {
            failed = e;
            stopOthers();
          }
          resolve();
        });
        child.once('exit', (code, signal) => {
          const e: RankExit = { rank, pid: child.pid ?? -1, code, signal };
          exits.push(e);
          if ((code !== 0 || signal) && !failed) {
            failed = e;
            if (!received) {
              const others = running().length;
              note(`rank ${rank} (pid ${e.pid}) ${describeExit(e)}${others ? `; stopping the other ${others} rank(s)` : ''}`);
              stopOthers();
            }
          }
          resolve();
        });
      });
    });
    note(`${nproc} process(es) of world size ${worldSize}, master ${masterAddr}:${masterPort}, ${threads} thread(s) each: ${children.map((c, i) => `rank ${nodeRank * nproc + i} pid ${c.pid}`).join(', ')}`);
    await Promise.all(done);
    await Promise.all(pipes);
  } finally {
    process.removeListener('SIGINT', onSigint);
    process.removeListener('SIGTERM', onSigterm);
    if (killTimer) clearTimeout(killTimer);
  }
  const exitCode = failed ? exitStatus(failed) : 0;
  if (failed) note(`failed: rank ${failed.rank} ${describeExit(failed)} (launcher exit status ${exitCode})`);
  return { exitCode, exits, failed, signal: received };
}
