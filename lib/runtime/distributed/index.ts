/**
 * Data-parallel primitives on PyTorch's c10d (native/dist): one process group per process (TCPStore
 * rendezvous at MASTER_ADDR:MASTER_PORT; Gloo on CPU, NCCL on CUDA builds of libtorch 2.x), in-place
 * collectives on native tensors, and `GradSync`, the bucketed gradient averager a training step runs
 * overlapped with backward. Every rank must call the collectives in the same order (as with torch.distributed).
 *
 *   await initDistributed();            // from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (roundtrip launch, torchrun)
 *   await allReduce(t, 'avg');
 *   destroyDistributed();
 */
import { createHash } from 'crypto';
import { RoundtripError, expectInteger, expectOneOf, expectString } from '../../errors';
import { NativeAddon, NativeGradSyncHandle, NativeGradSyncStats, NativeTensorHandle, native } from '../native';
import { Tensor } from '../tensor';
import { DEFAULT_MASTER_PORT, DEFAULT_TIMEOUT_SECONDS, DistributedEnv, readDistributedEnv } from './env';

export { DistributedEnv, readDistributedEnv } from './env';
export { shardOrder, shardLength } from './sampler';

export const REDUCE_OPS = ['sum', 'avg', 'min', 'max', 'product'] as const;
export type ReduceOp = (typeof REDUCE_OPS)[number];
export const BACKENDS = ['gloo', 'nccl'] as const;
export type Backend = (typeof BACKENDS)[number];


function addon(): NativeAddon {
  return native();
}

/** Re-throws native errors as RoundtripError (same message). */
async function wrap<T>(p: () => Promise<T>): Promise<T> {
  try {
    return await p();
  } catch (err) {
    throw new RoundtripError(err instanceof Error ? err.message : String(err));
  }
}

export interface InitOptions {
  rank?: number;
  worldSize?: number;
  masterAddr?: string;
  masterPort?: number;
  /** Rendezvous and collective timeout (default ROUNDTRIP_DIST_TIMEOUT or 300 s). */
  timeoutSeconds?: number;
  /** gloo (CPU tensors) or nccl (CUDA tensors; CUDA builds of libtorch 2.x). Default: gloo. */
  backend?: Backend;
  /** Gloo worker threads (default 2). */
  glooThreads?: number;
}

/** Backends compiled into this build of the addon. */
export function availableBackends(): string[] {
  return addon().distInfo().available;
}

/**
 * Joins the process group. Options default to the torch.distributed environment variables; a process
 * without them runs as rank 0 of 1. Resolves once every rank has joined (or rejects after the timeout,
 * naming the master address).
 */
export async function initDistributed(opts: InitOptions = {}): Promise<void> {
  const env: Partial<DistributedEnv> = readDistributedEnv() ?? {};
  const worldSize = expectInteger('worldSize', opts.worldSize ?? env.worldSize ?? 1, { min: 1 });
  const rank = expectInteger('rank', opts.rank ?? env.rank ?? 0, { min: 0, max: worldSize - 1 });
  const masterAddr = expectString('masterAddr', opts.masterAddr ?? env.masterAddr ?? '127.0.0.1');
  const masterPort = expectInteger('masterPort', opts.masterPort ?? env.masterPort ?? DEFAULT_MASTER_PORT, { min: 1, max: 65535 });
  const timeoutSeconds = expectInteger('timeoutSeconds', opts.timeoutSeconds ?? env.timeoutSeconds ?? DEFAULT_TIMEOUT_SECONDS, { min: 1 });
  const backend = expectOneOf('backend', opts.backend ?? env.backend ?? 'gloo', BACKENDS);
  const glooThreads = expectInteger('glooThreads', opts.glooThreads ?? 2, { min: 1 });
  // torchrun's agent already hosts the store at MASTER_PORT: rank 0 then joins it as a client.
  const agentStore = process.env.TORCHELASTIC_USE_AGENT_STORE === 'True';
  await wrap(() => addon().distInit(JSON.stringify({ rank, worldSize, masterAddr, masterPort, timeoutSeconds, backend, glooThreads, agentStore })));
}

/**
 * Joins from the environment when this process was started as one of several (WORLD_SIZE > 1) and
 * has not joined yet; returns whether the process is part of a group.
 */
export async function joinFromEnvironment(): Promise<boolean> {
  if (isDistributed()) return true;
  if (!readDistributedEnv()) return false;
  await initDistributed();
  return true;
}

/** Leaves the group (safe to call when not joined). */
export function destroyDistributed(): void {
  addon().distDestroy();
}

export function isDistributed(): boolean {
  return addon().distInfo().initialized;
}
/** This process's rank (0 when not distributed). */
export function rank(): number {
  return addon().distInfo().rank;
}
/** Number of processes in the group (1 when not distributed). */
export function worldSize(): number {
  return addon().distInfo().worldSize;
}
/** Rank 0, or a process running alone: the one that writes logs, checkpoints and reports. */
export function isMainProcess(): boolean {
  return rank() === 0;
}

function list(tensors: Tensor | Tensor[], what: string): NativeTensorHandle[] {
  const ts = Array.isArray(tensors) ? tensors : [tensors];
  ts.forEach((t, i) => {
    if (!(t instanceof Tensor)) throw new RoundtripError(`${what}: entry ${i} is not a Tensor`);
  });
  return ts.map((t) => t.handle);
}

/** Reduces each tensor across ranks, in place (`avg` = sum ÷ world size, floating point only). */
export async function allReduce(tensors: Tensor | Tensor[], op: ReduceOp = 'sum'): Promise<void> {
  expectOneOf('allReduce op', op, REDUCE_OPS);
  const handles = list(tensors, 'allReduce');
  await wrap(() => addon().distAllReduce(handles, op));
}

/** Copies each tensor of rank `src` into the same tensor on every other rank, in place. */
export async function broadcast(tensors: Tensor | Tensor[], src = 0): Promise<void> {
  expectInteger('broadcast src', src, { min: 0 });
  const handles = list(tensors, 'broadcast');
  await wrap(() => addon().distBroadcast(handles, src));
}

/** Resolves when every rank has reached it (within `timeoutSeconds`, default the group's timeout). */
export async function barrier(timeoutSeconds?: number): Promise<void> {
  if (timeoutSeconds !== undefined) expectInteger('barrier timeoutSeconds', timeoutSeconds, { min: 1 });
  await wrap(() => addon().distBarrier(timeoutSeconds));
}

/** A 64-bit hash (16 hex digits) of the tensors' bytes, shapes and dtypes. */
export async function tensorsHash(tensors: Tensor[]): Promise<string> {
  const handles = list(tensors, 'tensorsHash');
  return wrap(() => addon().tensorsHash(handles));
}

/** A 64-bit hash (16 hex digits) of a JSON value with sorted keys. */
export function jsonHash(value: unknown): string {
  const canonical = (v: unknown): unknown =>
    Array.isArray(v) ? v.map(canonical) : v && typeof v === 'object' ? Object.fromEntries(Object.keys(v as object).sort().map((k) => [k, canonical((v as any)[k])])) : v;
  return createHash('sha256').update(JSON.stringify(canonical(value))).digest('hex').slice(0, 16);
}

/**
 * Checks that every rank holds the same 16-hex-digit hash of `what` (config, weights); throws on every
 * rank, naming the ranks that differ from rank 0.
 */
export async function checkSameOnAllRanks(what: string, hash: string): Promise<void> {
  if (!/^[0-9a-f]{16}$/.test(hash)) throw new RoundtripError(`checkSameOnAllRanks(${what}): expected 16 hex digits, got ${JSON.stringify(hash)}`);
  const world = worldSize();
  if (world === 1) return;
  // Every rank fills its own row; a sum all-reduce then gives every rank the whole table.
  const rows = new BigInt64Array(world);
  rows[rank()] = BigInt.asIntN(64, BigInt('0x' + hash));
  const t = Tensor.fromTypedArray(rows, [world], 'int64');
  try {
    await allReduce(t, 'sum');
    const all = Array.from(t.toTypedArray() as BigInt64Array);
    const differ = all.map((v, r) => (v !== all[0] ? r : -1)).filter((r) => r >= 0);
    if (differ.length) {
      const hex = (v: bigint) => BigInt.asUintN(64, v).toString(16).padStart(16, '0');
      throw new RoundtripError(`distributed: ranks disagree on ${what}: rank 0 has ${hex(all[0])}, ${differ.map((r) => `rank ${r} has ${hex(all[r])}`).join(', ')}; every rank must start from the same ${what}`);
    }
  } finally {
    t.dispose();
  }
}

export type GradSyncStats = NativeGradSyncStats;

/**
 * Averages the gradients of a fixed parameter list across ranks, in flat buckets allocated once, in reverse
 * parameter order (`bucketMB`, default 25 as DDP; the first bucket at most 1 MiB). Parameters no rank has a
 * gradient for keep none. `extras` (e.g. the step's loss terms) are summed across ranks in the same round.
 * With `overlap` (default), the native training step launches each bucket's all-reduce during its last
 * micro-batch's backward, as soon as the bucket's gradients are accumulated (hooks on the parameters'
 * gradient accumulators, as c10d::Reducer); `finish` from JS runs after backward.
 */
export class GradSync {
  private readonly handle: NativeGradSyncHandle;

  constructor(params: Tensor[], opts: { bucketMB?: number; overlap?: boolean } = {}) {
    const handles = list(params, 'GradSync params');
    const mb = opts.bucketMB ?? 25;
    if (!(mb > 0)) throw new RoundtripError(`GradSync bucketMB: expected a number > 0, got ${mb}`);
    try {
      this.handle = addon().createGradSync(handles, JSON.stringify({ bucketBytes: Math.max(1, Math.round(mb * 2 ** 20)), overlap: opts.overlap ?? true }));
    } catch (err) {
      throw new RoundtripError(err instanceof Error ? err.message : String(err));
    }
  }

  /** Averages the gradients; resolves with `extras` summed over ranks. */
  finish(extras: number[] = []): Promise<number[]> {
    return wrap(() => this.handle.finish(extras));
  }

  stats(): GradSyncStats {
    return this.handle.stats();
  }

  /** @internal The native averager (the native training step runs it inside its call). */
  get nativeHandle(): NativeGradSyncHandle {
    return this.handle;
  }
}
