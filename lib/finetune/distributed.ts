/**
 * Data-parallel finetuning (the trainer's side of lib/distributed): joins the group the launcher set up,
 * checks that every rank holds the same config and weights (hashes), broadcasts the trained tensors from
 * rank 0, and averages gradients and loss terms once per optimizer step (GradSync).
 *
 * Exactness: with the DistributedSampler split, rank r's item j of a micro-batch is item j·W + r of the
 * global micro-batch a single process with batch b·W would see, and draws its noise under that index
 * (ItemSlots). The caption terms (L_cap, L_rec_txt) are token means; rank r's is weighted by
 * W·n_r/N (n_r its target tokens, N the global micro-batch's, counted locally from the captions) so the
 * averaged gradient is the gradient of the global token mean, as in one process. The other terms are
 * per-element means over equal-sized items and need no weight.
 */
import { RoundtripError } from '../errors';
import { GradSync, checkSameOnAllRanks, isDistributed, jsonHash, joinFromEnvironment, rank as distRank, worldSize as distWorld, tensorsHash, broadcast } from '../distributed';
import type { NativeModel } from '../model';
import { Tensor } from '../tensor';
import type { BertTokenizer } from '../tokenizers/bert';
import type { ClipTokenizer } from '../tokenizers/clip';
import type { TrainItem } from './data';
import { ItemSlots, disposeCaptionBatch, encodeCaptions } from './losses';
import type { LossTerm } from './objective';

/** Loss terms that are means over target tokens (weighted by token share across ranks). */
const TOKEN_MEAN_TERMS: readonly LossTerm[] = ['cap', 'recTxt'];

/** Config keys that may differ between ranks (devices, threads, display). */
const PER_RANK_KEYS = ['device', 'threads', 'progress', 'prefetch'];

export class DataParallel {
  private gradSync?: GradSync;
  /** Seconds and bytes of the gradient all-reduce, summed over the run. */
  allReduceSeconds = 0;
  allReduceBytes = 0;

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
   * then the trained tensors broadcast from rank 0.
   */
  async start(config: object, models: NativeModel[], trained: Tensor[]): Promise<void> {
    if (!this.active) return;
    const shared = Object.fromEntries(Object.entries(config).filter(([k]) => !PER_RANK_KEYS.includes(k)));
    await checkSameOnAllRanks('the finetune config', jsonHash(shared));
    const all: Tensor[] = [];
    for (const m of models) all.push(...Object.values(m.tensors()));
    await checkSameOnAllRanks('the model weights', await tensorsHash(all));
    await broadcast(trained, 0);
    this.gradSync = new GradSync(trained);
  }

  /**
   * Per-term loss weights of this rank's micro-batch: W·n_r/N for token-mean terms, 1 otherwise.
   * `globalItems` is the global micro-batch (every rank's items), `local` this rank's.
   */
  termScales(tokenizers: { blip: BertTokenizer; clip: ClipTokenizer }, prompt: string, local: TrainItem[], globalItems: TrainItem[] | undefined): Partial<Record<LossTerm, number>> {
    if (!this.active) return {};
    if (!globalItems) throw new RoundtripError('internal: a data-parallel micro-batch without its global items');
    const count = (items: TrainItem[]) => {
      const b = encodeCaptions(tokenizers, items.map((i) => i.caption), { prompt });
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
    const n = count(local);
    const N = count(globalItems);
    const scale = N > 0 ? (this.worldSize * n) / N : 1;
    return Object.fromEntries(TOKEN_MEAN_TERMS.map((t) => [t, scale]));
  }

  /**
   * After the micro-batches' backward: averages the trained tensors' gradients across ranks and returns
   * `values` summed over ranks ÷ W (each rank passes its already-weighted contributions).
   */
  async finishStep(values: number[]): Promise<number[]> {
    if (!this.active) return values;
    if (!this.gradSync) throw new RoundtripError('internal: DataParallel.finishStep before start');
    const summed = await this.gradSync.finish(values);
    const s = this.gradSync.stats();
    this.allReduceSeconds += s.seconds;
    this.allReduceBytes += s.bytes;
    return summed.map((v) => v / this.worldSize);
  }

  /** Last step's all-reduce seconds and bytes. */
  lastStats(): { seconds: number; bytes: number } {
    return this.gradSync ? this.gradSync.stats() : { seconds: 0, bytes: 0 };
  }
}

/** Whether this process is one rank of several (for code that only needs the flag). */
export function inDataParallelRun(): boolean {
  return isDistributed() && distWorld() > 1;
}

/** Σ_t w_t·s_t·L_t over the evaluated terms (a new graph node over the same term tensors). */
export function weightedTotal(terms: Partial<Record<LossTerm, Tensor>>, weights: Record<LossTerm, number>, scales: Partial<Record<LossTerm, number>>): Tensor {
  let total: Tensor | undefined;
  for (const [t, value] of Object.entries(terms) as [LossTerm, Tensor][]) {
    const weighted = value.mul(weights[t] * (scales[t] ?? 1));
    if (total) {
      const next = total.add(weighted);
      total.dispose();
      weighted.dispose();
      total = next;
    } else total = weighted;
  }
  if (!total) throw new RoundtripError('weightedTotal: no loss term');
  return total;
}
