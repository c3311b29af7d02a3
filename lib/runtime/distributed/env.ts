/**
 * The torch.distributed environment (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`,
 * `MASTER_ADDR`, `MASTER_PORT`), as `roundtrip launch`, `torchrun` or a cluster scheduler set it.
 */
import { RoundtripError } from '../../errors';

export interface DistributedEnv {
  rank: number;
  worldSize: number;
  localRank: number;
  localWorldSize: number;
  masterAddr: string;
  masterPort: number;
  /** Seconds before rendezvous or a collective gives up (`ROUNDTRIP_DIST_TIMEOUT`, default 300). */
  timeoutSeconds: number;
  /** `ROUNDTRIP_DIST_BACKEND`: gloo (default) or nccl. */
  backend?: 'gloo' | 'nccl';
}

export const DEFAULT_MASTER_PORT = 29500;
export const DEFAULT_TIMEOUT_SECONDS = 300;

function intVar(env: NodeJS.ProcessEnv, name: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const raw = env[name];
  const n = Number(raw);
  if (raw === undefined || raw.trim() === '' || !Number.isInteger(n) || n < min || n > max) {
    throw new RoundtripError(`${name}: expected an integer in [${min}, ${max}], got ${raw === undefined ? 'nothing (unset)' : JSON.stringify(raw)}`);
  }
  return n;
}

/**
 * The distributed environment, or undefined when this process runs alone (`WORLD_SIZE` unset or 1).
 * Inconsistent variables are errors naming the variable.
 */
export function readDistributedEnv(env: NodeJS.ProcessEnv = process.env): DistributedEnv | undefined {
  if (env.WORLD_SIZE === undefined || env.WORLD_SIZE === '' || env.WORLD_SIZE === '1') return undefined;
  const worldSize = intVar(env, 'WORLD_SIZE', 1);
  const rank = intVar(env, 'RANK', 0, worldSize - 1);
  const localWorldSize = env.LOCAL_WORLD_SIZE ? intVar(env, 'LOCAL_WORLD_SIZE', 1, worldSize) : worldSize;
  const localRank = env.LOCAL_RANK ? intVar(env, 'LOCAL_RANK', 0, localWorldSize - 1) : rank % localWorldSize;
  const masterAddr = env.MASTER_ADDR || '127.0.0.1';
  const masterPort = env.MASTER_PORT ? intVar(env, 'MASTER_PORT', 1, 65535) : DEFAULT_MASTER_PORT;
  const timeoutSeconds = env.ROUNDTRIP_DIST_TIMEOUT ? intVar(env, 'ROUNDTRIP_DIST_TIMEOUT', 1) : DEFAULT_TIMEOUT_SECONDS;
  const backend = env.ROUNDTRIP_DIST_BACKEND;
  if (backend !== undefined && backend !== '' && backend !== 'gloo' && backend !== 'nccl') {
    throw new RoundtripError(`ROUNDTRIP_DIST_BACKEND: expected "gloo" or "nccl", got ${JSON.stringify(backend)}`);
  }
  return { rank, worldSize, localRank, localWorldSize, masterAddr, masterPort, timeoutSeconds, backend: (backend || undefined) as DistributedEnv['backend'] };
}
