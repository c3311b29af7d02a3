/**
 * The native addon (C++, libtorch), loaded once. Everything here is internal: user code goes through
 * `Tensor`, `NativeModel` and the model classes, which check their arguments first.
 */
import type { NativeCompareResult, TensorOpName } from './native-methods';
import { PACKAGE_ROOT } from '../paths';

export type DType = 'float64' | 'float32' | 'float16' | 'bfloat16' | 'int64' | 'int32' | 'int16' | 'int8' | 'uint8' | 'bool';

export interface NativeTensorHandle {
  readonly shape: number[];
  readonly dtype: DType;
  readonly device: string;
  readonly disposed: boolean;
  readonly nbytes: number;
  requiresGrad: boolean;
  dispose(): void;
  toBuffer(): Buffer;
  to(device?: string | null, dtype?: DType | null): NativeTensorHandle;
  grad(): NativeTensorHandle | null;
  backward(gradient?: NativeTensorHandle): Promise<void>;
  item(): number;
}

/** A flag a running native call polls between steps (set from an AbortSignal). */
export interface NativeCancelToken {
  cancel(): void;
  readonly cancelled: boolean;
}

/** Extras of a long native call (native/core/call_context.h). */
export interface NativeCallControl {
  onStep?: (done: number, total: number) => void;
  cancel?: NativeCancelToken;
  models?: Record<string, NativeModelHandle>;
}

/** The addon's large-block cache (native/core/memory.h). */
export interface NativeMemoryStats {
  liveBytes: number;
  cachedBytes: number;
  peakBytes: number;
  /** Max of liveBytes alone over the same window (resetPeakMemory starts one). */
  peakLiveBytes: number;
  hits: number;
  misses: number;
  evictions: number;
  /** Convolution weights held as oneDNN-packed copies, one per packed weight (see setTrainingConvPacking). */
  packedWeightBytes: number;
}

export interface NativeModelHandle {
  readonly kind: string;
  readonly device: string;
  readonly loadReport: WeightsReport | null;
  call(
    method: string,
    inputs: Record<string, NativeTensorHandle>,
    options?: string,
    control?: NativeCallControl,
  ): Promise<Record<string, NativeTensorHandle>>;
  loadWeights(files: string[], options?: string): Promise<WeightsReport>;
  parameters(): ParameterInfo[];
  setTrainable(patterns: string[]): string[];
  tensors(names?: string[]): Record<string, NativeTensorHandle>;
  to(device: string, dtype?: DType): Promise<void>;
  train(on: boolean): void;
  setChannelsLast(on: boolean): void;
  setFrozenDtype(dtype: string): Promise<FrozenDtypeReport>;
  releaseWeightPages(): Promise<number>;
  dispose(): void;
}

/** What `setFrozenDtype` converted: frozen tensors and their bytes before (fp32) and after. */
export interface FrozenDtypeReport {
  tensors: number;
  bytesBefore: number;
  bytesAfter: number;
  dtype: string;
}

export interface WeightsReport {
  loaded: number;
  missing: string[];
  unexpected: string[];
  ignored: string[];
  files: string[];
  /** Bytes of tensors that are views of the mapped files (no copy). */
  mappedBytes: number;
  /** Bytes copied (another dtype or device, unaligned, or `map: false`). */
  copiedBytes: number;
  /** fromFiles only: construction and load time, ms. */
  constructMs?: number;
  loadMs?: number;
}

export interface ParameterInfo {
  name: string;
  shape: number[];
  dtype: DType;
  requiresGrad: boolean;
  numel: number;
}

export interface SafetensorsHeaderJson {
  tensors: { name: string; dtype: string; shape: number[]; dataOffsets: [number, number] }[];
  metadata: Record<string, string>;
  dataStart: number;
}

export interface NativeInfo {
  libtorch: string;
  cuda: boolean;
  cudaDeviceCount: number;
  cudnn: boolean;
  mkldnn: boolean;
  mkl: boolean;
  openmp: boolean;
  threads: number;
  interopThreads: number;
  fusedAttention: boolean;
  config: string;
  modelKinds: string[];
}

export interface NativeAddon {
  TensorHandle: unknown;
  ModelHandle: unknown;
  tensorFromBuffer(data: ArrayBufferView | ArrayBuffer, dtype: DType, shape: number[]): NativeTensorHandle;
  op(name: TensorOpName, tensors: NativeTensorHandle[], args?: string): NativeTensorHandle;
  op(name: 'gradNorm', tensors: NativeTensorHandle[], args?: string): number;
  op(name: 'compare', tensors: NativeTensorHandle[], args?: string): NativeCompareResult;
  readSafetensorsHeader(file: string): SafetensorsHeaderJson;
  loadSafetensors(file: string, names?: string[] | null, options?: string): Promise<Record<string, NativeTensorHandle>>;
  createModel(kind: string, config: string, options?: string): Promise<NativeModelHandle>;
  /** A noise scheduler (not a model kind) behind the model call interface. */
  createScheduler(kind: string, config: string): Promise<NativeModelHandle>;
  modelKinds(): string[];
  info(): NativeInfo;
  setNumThreads(n: number): void;
  getNumThreads(): number;
  setGradEnabled(on: boolean): void;
  manualSeed(seed: number): void;
  liveTensors(): number;
  CancelToken: new () => NativeCancelToken;
  memoryStats(): NativeMemoryStats;
  releaseMemory(): void;
  resetPeakMemory(): void;
  /** AdamW over `params` (native/core/optim.cc); options JSON: lr, beta1, beta2, eps, weightDecay. */
  createAdamW(params: NativeTensorHandle[], options: string): NativeOptimizerHandle;
  /** Clips the gradients' global L2 norm in place; returns the norm before clipping. */
  clipGradNorm(params: NativeTensorHandle[], maxNorm: number): number;
  /** The joint finetuning step (native/train/joint_handle.cc). */
  createJointStep(
    models: { blip: NativeModelHandle; unet: NativeModelHandle; vae: NativeModelHandle; text: NativeModelHandle },
    bridgeIndex: NativeTensorHandle,
    config: string,
    optimizers?: { blip?: NativeOptimizerHandle; unet?: NativeOptimizerHandle },
  ): NativeJointStepHandle;
  // c10d data parallelism (native/dist/dist_napi.cc); collectives run in JS call order on every rank.
  /** Joins the process group; options JSON: rank, worldSize, masterAddr, masterPort, timeoutSeconds, backend, glooThreads, agentStore. */
  distInit(options: string): Promise<void>;
  distDestroy(): void;
  distInfo(): { initialized: boolean; rank: number; worldSize: number; backend: string; available: string[] };
  distAllReduce(tensors: NativeTensorHandle[], op: string): Promise<void>;
  distBroadcast(tensors: NativeTensorHandle[], src: number): Promise<void>;
  distBarrier(timeoutSeconds?: number): Promise<void>;
  tensorsHash(tensors: NativeTensorHandle[]): Promise<string>;
  /** Bucketed gradient averaging over fixed parameters; options JSON: bucketBytes, overlap. */
  createGradSync(params: NativeTensorHandle[], options: string): NativeGradSyncHandle;
}

export interface NativeGradSyncHandle {
  /** Launches what backward left, waits, unpacks; `extras` are summed across ranks in the same round. */
  finish(extras: number[]): Promise<number[]>;
  stats(): NativeGradSyncStats;
}

export interface NativeGradSyncStats {
  /** Seconds of the last `finish` (launching what backward left, waiting, unpacking): the exposed communication. */
  seconds: number;
  /** Seconds of the last step with at least one bucket all-reduce in flight (launch to completion). */
  commSeconds: number;
  /** The part of `commSeconds` before `finish`, i.e. hidden behind backward. */
  hiddenSeconds: number;
  /** Bytes all-reduced by this rank in the last step. */
  bytes: number;
  buckets: number;
  /** Each bucket's size in bytes, in launch order (last parameters first). */
  bucketBytes: number[];
  /** Buckets launched during backward in the last step. */
  launchedInBackward: number;
  /** Buckets reduced a second time (a parameter's gradient grew after its bucket was launched). */
  rereduced: number;
  overlap: boolean;
}


export interface NativeOptimizerHandle {
  step(): Promise<void>;
  zeroGrad(): void;
  setLr(lr: number): void;
  state(): { step: number; expAvg: (NativeTensorHandle | null)[]; expAvgSq: (NativeTensorHandle | null)[] };
  loadState(step: number, expAvg: (NativeTensorHandle | null)[], expAvgSq: (NativeTensorHandle | null)[]): void;
}

export interface NativeJointStepHandle {
  /** The loss terms of one batch, no update (the `jointObjective` path): tensors and numbers by name. */
  objective(tensors: Record<string, NativeTensorHandle | undefined>, options: string): Promise<Record<string, NativeTensorHandle | number>>;
  /** One optimizer step over micro-batches; returns its numbers packed (lib/paper/joint/joint-step.ts unpacks them). */
  step(tensors: Record<string, NativeTensorHandle | undefined>[], perBatch: string, options: string): Promise<Float32Array>;
  activeTerms(step: number, micro: number): string[];
  setGradSync(handle: NativeGradSyncHandle | null): void;
  dispose(): void;
}

let addon: NativeAddon | undefined;

/** log2 of the cycles an idle OpenBLAS worker spins before it sleeps (OpenBLAS's default: 28). */
export const OPENBLAS_THREAD_TIMEOUT = 18;

/** The addon; built by `npm install` (cmake-js) into build/Release. */
export function native(): NativeAddon {
  if (!addon) {
    const root = PACKAGE_ROOT;
    // OpenBLAS (Debian's libblas.so.3 here) keeps its worker threads spinning on sched_yield for ~2^28 cycles after
    // each product; between products they then take CPU from the oneDNN/OpenMP threads doing the convolutions
    // beside them. It reads this variable once, when the addon's libtorch loads it. A user's value stands.
    if (process.env.OPENBLAS_THREAD_TIMEOUT === undefined) process.env.OPENBLAS_THREAD_TIMEOUT = String(OPENBLAS_THREAD_TIMEOUT);
    try {
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      addon = require('node-gyp-build')(root) as NativeAddon;
      // Intra-op threads: all cores by default; ROUNDTRIP_THREADS=N overrides (setNumThreads at run time too).
      const threads = process.env.ROUNDTRIP_THREADS;
      if (threads !== undefined && threads !== '') {
        const n = Number(threads);
        if (!Number.isInteger(n) || n < 1) throw new Error(`ROUNDTRIP_THREADS: expected an integer >= 1, got "${threads}"`);
        addon.setNumThreads(n);
      }
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      // A bad ROUNDTRIP_* variable is the user's to fix, not the build's.
      if (/^ROUNDTRIP_[A-Z_]+: /.test(why)) throw new Error(`roundtrip: ${why}`);
      throw new Error(
        `roundtrip: the native addon could not be loaded (${why}). Build it with \`npm run build:native\` ` +
          '(needs libtorch: `sudo apt-get install -y libtorch-dev nlohmann-json3-dev`, or LIBTORCH=/path/to/libtorch).',
      );
    }
  }
  return addon;
}
