/**
 * Data-parallel finetuning (the trainer's side of lib/runtime/distributed): joins the group the launcher set up,
 * checks that every rank holds the same config and weights (hashes), broadcasts the trained tensors from
 * rank 0, and averages gradients and loss terms once per optimizer step (GradSync, overlapped with the last
 * micro-batch's backward).
 *
 * Exactness: with the DistributedSampler split, rank r's item j of a micro-batch is item j·W + r of the
 * global micro-batch a single process with batch b·W would see, and draws its noise under that index
 * (ItemSlots). The caption terms (L_cap, L_rec_txt) are token means; rank r's is weighted by
 * W·n_r/N (n_r its target tokens, N the global micro-batch's, counted locally from the captions) so the
 * averaged gradient is the gradient of the global token mean, as in one process. The other terms are
 * per-element means over equal-sized items and need no weight.
 */
import { RoundtripError } from '../../errors';
import { GradSync, checkSameOnAllRanks, isDistributed, jsonHash, joinFromEnvironment, rank as distRank, worldSize as distWorld, tensorsHash, broadcast } from '../../runtime/distributed';
import type { JointStep } from '../../paper/joint/joint-step';
import { RunLog } from '../runlog';
import type { NativeModel } from '../../runtime/model';
import type { Tensor } from '../../runtime/tensor';
import type { TrainItem } from './data';
import { CaptionTokenizers, ItemSlots, disposeCaptionBatch, encodeCaptions } from '../../paper/joint/losses';

/** Config keys that may differ between ranks (devices, threads, display). */
const PER_RANK_KEYS = ['device', 'threads', 'progress', 'prefetch'];

/** One step's gradient all-reduce as the run log records it (per rank; see GradSyncStats). */
export interface AllReduceStats {
  /** Exposed: seconds after backward until the averaged gradients were in place. */
  seconds: number;
  /** Seconds with a bucket all-reduce in flight, and the part of them during backward. */
  commSeconds: number;
  hiddenSeconds: number;
  bytes: number;
  buckets: number;
  /** Buckets launched during backward, and buckets reduced a second time. */
  launchedInBackward: number;
  rereduced: number;
}

export class DataParallel {
  private gradSync?: GradSync;

  private constructor(
    readonly rank: number,
    readonly worldSize: number,
  ) {}

  /** Joins the group the environment describes (WORLD_SIZE > 1), or a single-process stand-in. */
  static async fromEnvironment(): Promise<DataParallel> {
    if (await joinFromEnvironment()) return new DataParallel(distRank(), distWorld());
    return new DataParallel(0, 1);
  }

  get active(): boolean {
    return this.worldSize > 1;
  }
  /** Rank 0 writes logs, checkpoints, exports and reports. */
  get isMain(): boolean {
    return this.rank === 0;
  }
  /** Where this rank's items sit in the global micro-batch. */
  get slots(): ItemSlots | undefined {
    return this.active ? { offset: this.rank, stride: this.worldSize } : undefined;
  }

  /**
   * At start (after resume): same config and weights on every rank (errors name the ranks that differ),
   * then the trained tensors broadcast from rank 0, and the gradient averager handed to the training step
   * (which runs it between the micro-batches' backward and clipping).
   */
  async start(config: { allReduceBucketMib?: number; allReduceOverlap?: boolean }, models: NativeModel[], trained: Tensor[], step: JointStep): Promise<void> {
    if (!this.active) return;
    const shared = Object.fromEntries(Object.entries(config).filter(([k]) => !PER_RANK_KEYS.includes(k)));
    await checkSameOnAllRanks('the finetune config', jsonHash(shared));
    const all: Tensor[] = [];
    for (const m of models) all.push(...Object.values(m.tensors()));
    await checkSameOnAllRanks('the model weights', await tensorsHash(all));
    await broadcast(trained, 0);
    this.gradSync = new GradSync(trained, { bucketMB: config.allReduceBucketMib, overlap: config.allReduceOverlap });
    step.setGradSync(this.gradSync);
  }

  /**
   * Weight of this rank's token-mean terms in its micro-batch: W·n_r/N, with n_r the target tokens of its
   * captions and N those of the global micro-batch (every rank's items), counted the way the loss counts them.
   */
  tokenScale(tokenizers: CaptionTokenizers, opts: Parameters<typeof encodeCaptions>[2], local: TrainItem[], globalItems: TrainItem[] | undefined): number {
    if (!this.active) return 1;
    if (!globalItems) throw new RoundtripError('internal: a data-parallel micro-batch without its global items');
    const count = (items: TrainItem[]) => {
      const b = encodeCaptions(tokenizers, items.map((i) => i.caption), opts);
      try {
        // The loss's targets: labels[:, 1:] that are not -100.
        const labels = b.blipLabels.toTypedArray() as BigInt64Array;
        const T = b.blipLabels.shape[1];
        let n = 0;
        for (let k = 0; k < labels.length; k++) if (k % T !== 0 && labels[k] !== -100n) n++;
        return n;
      } finally {
        disposeCaptionBatch(b);
      }
    };
    const N = count(globalItems);
    return N > 0 ? (this.worldSize * count(local)) / N : 1;
  }

  /**
   * Last step's gradient all-reduce (per rank): `seconds` not hidden behind backward (exposed), `commSeconds`
   * with an all-reduce in flight, `hiddenSeconds` of those during backward, and the bytes.
   */
  lastStats(): AllReduceStats {
    if (!this.gradSync) return { seconds: 0, commSeconds: 0, hiddenSeconds: 0, bytes: 0, buckets: 0, launchedInBackward: 0, rereduced: 0 };
    const s = this.gradSync.stats();
    return { seconds: s.seconds, commSeconds: s.commSeconds, hiddenSeconds: s.hiddenSeconds, bytes: s.bytes, buckets: s.buckets, launchedInBackward: s.launchedInBackward, rereduced: s.rereduced };
  }
}

/** The run log of ranks other than 0: rank 0 writes log.jsonl, the others keep nothing. */
export class SilentRunLog extends RunLog {
  override rows(): Record<string, unknown>[] {
    return [];
  }
  override rewindTo(): void {}
  override start(): void {}
  override append(): void {}
}

/** Whether this process is one rank of several (for code that only needs the flag). */
export function inDataParallelRun(): boolean {
  return isDistributed() && distWorld() > 1;
}

