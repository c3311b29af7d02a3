/**
 * NativeModel: a model that lives in C++ (a `rt::Model` registered under a kind such as "blip").
 * Inputs and outputs are named tensors; every call runs off the JS thread and returns a Promise.
 */
import { RoundtripError, expectBoolean, expectOneOf } from '../errors';
import { FrozenDtypeReport, native, NativeModelHandle, NativeTensorHandle, ParameterInfo, WeightsReport } from './native';
import type { MethodInputs, MethodName, MethodOptions, MethodOutputs, ModelKind } from './native-methods';
import { DType, Tensor } from './tensor';

export type { FrozenDtypeReport, ParameterInfo, WeightsReport } from './native';

export interface LoadWeightsOptions {
  /** file key -> model key, applied before lookup (published alternative layouts). */
  renames?: Record<string, string>;
  /** Missing keys allowed (partial state dicts such as finetuned query weights). */
  partial?: boolean;
  /** Regular expressions of file keys that may be present without a model counterpart. */
  allowUnexpected?: string[];
  /** Accept [C, C, 1, 1] 1×1-conv weights for [C, C] linear ones and back. */
  reshapeSingletons?: boolean;
  /** Only file keys starting with this prefix are considered; the prefix is stripped. */
  prefix?: string;
  /**
   * Default true: CPU parameters whose dtype is the file's become views of the file's private mapping (no copy;
   * writes copy the touched pages and never reach the file). false copies every tensor.
   */
  map?: boolean;
}

function wrapError(err: unknown): Error {
  return err instanceof RoundtripError ? err : new RoundtripError(err instanceof Error ? err.message : String(err));
}

/** Extras of a long native call (a sampling loop): progress, cancellation, peer models. */
export interface CallControl {
  /** Called on the JS thread after each step, once per step and in order, all before the call resolves. */
  onStep?: (done: number, total: number) => void;
  /** Aborts the call at its next step (its memory is freed); the promise rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Other models the call runs, by role (the SD UNet's `sample` decodes with `{ vae }`). */
  models?: Record<string, NativeModel<ModelKind>>;
}

/** Mixed precision of model calls: CUDA autocast to bf16/fp16, or full fp32 ("off"). */
export type Autocast = 'off' | 'bf16' | 'fp16';

/**
 * How frozen weights are held on CPU: 'fp32' (exact), or 'bf16'/'fp16' — an approximation: frozen matrices,
 * kernels and embeddings stored at half the bytes and up-cast per op, so computation stays fp32 and only the
 * weights' rounding differs (bf16 keeps 8 significant bits, fp16 11).
 */
export type FrozenDtype = 'fp32' | 'bf16' | 'fp16';
export const FROZEN_DTYPES: readonly FrozenDtype[] = ['fp32', 'bf16', 'fp16'];

/** Precision of a run's model calls: fp32, or CUDA autocast in bf16/fp16 (`setAutocast`). */
export const PRECISIONS = ['fp32', 'bf16', 'fp16'] as const;
export type Precision = (typeof PRECISIONS)[number];

/**
 * A request's frozen dtype, checked once against the rest of it: a CPU option that does not combine with CUDA
 * autocast. `names` are the caller's spellings (flags or config keys), so errors name what the user wrote.
 */
export function checkFrozenDtype(
  value: unknown,
  request: { device?: string; precision?: string },
  names: { frozen: string; device: string; precision: string } = { frozen: 'frozenDtype', device: 'device', precision: 'precision' },
): FrozenDtype {
  if (request.precision !== undefined) expectOneOf(names.precision, request.precision, PRECISIONS);
  const dtype = expectOneOf(names.frozen, value ?? 'fp32', FROZEN_DTYPES);
  if (dtype === 'fp32') return dtype;
  if (request.device !== undefined && request.device !== 'cpu') throw new RoundtripError(`${names.frozen} ${dtype} is a CPU option (${names.device} ${request.device}: use ${names.precision})`);
  if (request.precision !== undefined && request.precision !== 'fp32') throw new RoundtripError(`${names.frozen} ${dtype} and ${names.precision} ${request.precision} do not combine (${names.precision} is CUDA autocast)`);
  return dtype;
}

/**
 * A native model of kind `K`; `call` is typed by the kind's row of lib/runtime/native-methods.ts (the one declaration of
 * every native method's inputs, options and outputs).
 */
export class NativeModel<K extends ModelKind = ModelKind> {
  /** @internal */
  readonly handle: NativeModelHandle;
  private autocastMode: Autocast = 'off';
  private checkpointing = false;
  private convPacking = true;

  private constructor(handle: NativeModelHandle) {
    this.handle = handle;
  }

  /**
   * Builds a model whose every parameter comes from safetensors `files` (in one native call): no random
   * initialisation first, and on CPU the parameters are views of the mapped files when the file's dtype is the
   * model's (a trained tensor copies the pages it writes; the files are never written). Missing keys are errors.
   * `loadReport` tells what was mapped, what copied, and the time taken.
   */
  static async fromFiles<K extends ModelKind>(
    kind: K,
    config: object,
    files: string[],
    opts: { device?: string; load?: Omit<LoadWeightsOptions, 'partial'> } = {},
  ): Promise<NativeModel<K>> {
    if (!Array.isArray(files) || files.length === 0 || files.some((f) => typeof f !== 'string')) {
      throw new RoundtripError(`${kind}: expected at least one weight file path, got ${JSON.stringify(files)}`);
    }
    try {
      return new NativeModel<K>(await native().createModel(kind, JSON.stringify(config), JSON.stringify({ device: opts.device, weights: files, load: opts.load ?? {} })));
    } catch (err) {
      throw wrapError(err);
    }
  }

  /** The load report of `fromFiles` (null for models built with `create`). */
  get loadReport(): WeightsReport | null {
    return this.handle.loadReport;
  }

  /** Builds a model of a registered kind from its config object (e.g. a parsed config.json). */
  static async create<K extends ModelKind>(kind: K, config: object, opts: { device?: string; [k: string]: unknown } = {}): Promise<NativeModel<K>> {
    // Deprecated: a scheduler is not a model kind; `create('scheduler', config, {scheduler})` still builds one.
    if (kind === 'scheduler') return (await NativeModel.createScheduler(String(opts.scheduler ?? ''), config)) as unknown as NativeModel<K>;
    try {
      return new NativeModel<K>(await native().createModel(kind, JSON.stringify(config), JSON.stringify(opts)));
    } catch (err) {
      throw wrapError(err);
    }
  }

  /**
   * A noise scheduler (native/models/schedulers/) from a scheduler_config.json object, called like a model
   * (`set_timesteps`, `scale_model_input`, `step`, `add_noise`, `get_velocity`). `kind`: "ddpm", "ddim", "pndm",
   * "euler", "euler_ancestral", "heun", "lms", "dpmsolver", or a diffusers class name. Schedulers are not model
   * kinds; `Scheduler.create` (lib/models/sd/schedulers.ts) is the typed face.
   */
  static async createScheduler(kind: string, config: object): Promise<NativeModel<'scheduler'>> {
    try {
      return new NativeModel<'scheduler'>(await native().createScheduler(kind, JSON.stringify(config)));
    } catch (err) {
      throw wrapError(err);
    }
  }

  get kind(): K {
    return this.handle.kind as K;
  }
  get device(): string {
    return this.handle.device;
  }

  /**
   * Runs every later call under CUDA autocast (bf16 or fp16), or in fp32 ("off", the default). The model
   * must be on CUDA: on this CPU bf16 runs 10–14× slower than fp32.
   */
  setAutocast(mode: Autocast): void {
    expectOneOf('autocast', mode, ['off', 'bf16', 'fp16'] as const);
    if (mode !== 'off' && !this.device.startsWith('cuda')) {
      throw new RoundtripError(`autocast "${mode}" needs a model on CUDA (this ${this.kind} model is on ${this.device}; CPU runs in fp32)`);
    }
    this.autocastMode = mode;
  }

  get autocast(): Autocast {
    return this.autocastMode;
  }

  /**
   * Gradient checkpointing for later calls: blocks keep only their inputs and are recomputed in backward
   * (less memory, about one more forward of time). Models without checkpointed blocks ignore it.
   */
  setGradientCheckpointing(on: boolean): void {
    this.checkpointing = expectBoolean('gradient checkpointing', on);
  }

  get gradientCheckpointing(): boolean {
    return this.checkpointing;
  }

  /**
   * UNet (libtorch 1.13, CPU float32): whether a training forward runs the frozen convolutions on packed oneDNN
   * weights as inference does (default). Faster (an SD v1.4 training step ~0.8× the time), but it holds the packed
   * copy beside the plain weights (+2.0 GB for SD v1.4); off gives that memory back. Gradients are the same bits
   * either way. Other models ignore it.
   */
  setTrainingConvPacking(on: boolean): void {
    this.convPacking = expectBoolean('training convolution packing', on);
  }

  get trainingConvPacking(): boolean {
    return this.convPacking;
  }

  /** Runs a named method of the model; `control` adds per-step progress, an AbortSignal and peer models. */
  async call<M extends MethodName<K>>(
    method: M,
    inputs: MethodInputs<K, M>,
    options: MethodOptions<K, M> = {} as MethodOptions<K, M>,
    control?: CallControl,
  ): Promise<MethodOutputs<K, M>> {
    const handles: Record<string, NativeTensorHandle> = {};
    for (const [k, t] of Object.entries(inputs as Record<string, Tensor | undefined>)) if (t) handles[k] = t.handle;
    const defaults: Record<string, unknown> = {};
    if (this.autocastMode !== 'off') defaults.autocast = this.autocastMode;
    if (this.checkpointing) defaults.gradient_checkpointing = true;
    if (!this.convPacking) defaults.training_conv_packing = false;
    const opts = { ...defaults, ...(options as object) };
    const signal = control?.signal;
    if (signal?.aborted) throw signal.reason;
    let out;
    let onAbort: (() => void) | undefined;
    try {
      if (!control) out = await this.handle.call(method, handles, JSON.stringify(opts));
      else {
        const cancel = new (native().CancelToken)();
        if (signal) {
          onAbort = () => cancel.cancel();
          signal.addEventListener('abort', onAbort, { once: true });
        }
        const models: Record<string, NativeModelHandle> = {};
        for (const [role, m] of Object.entries(control.models ?? {})) models[role] = m.handle;
        out = await this.handle.call(method, handles, JSON.stringify(opts), { onStep: control.onStep, cancel, models });
      }
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      throw wrapError(err);
    } finally {
      if (onAbort) signal!.removeEventListener('abort', onAbort);
    }
    const result: Record<string, Tensor> = {};
    for (const [k, h] of Object.entries(out)) result[k] = new Tensor(h);
    return result as MethodOutputs<K, M>;
  }

  /** Loads safetensors files by published key names; throws naming missing/mis-shaped/unexpected keys. */
  async loadWeights(files: string[], opts: LoadWeightsOptions = {}): Promise<WeightsReport> {
    try {
      return await this.handle.loadWeights(files, JSON.stringify(opts));
    } catch (err) {
      throw wrapError(err);
    }
  }

  parameters(): ParameterInfo[] {
    return this.handle.parameters();
  }

  /** Total parameter count (tied weights counted once, as PyTorch's `parameters()` does). */
  parameterCount(): number {
    return this.parameters().reduce((n, p) => n + p.numel, 0);
  }

  /**
   * Makes exactly the parameters whose names match one of the regular expressions trainable; all others
   * are frozen and hold no gradient buffers. Returns the trainable names.
   */
  setTrainable(patterns: string[]): string[] {
    try {
      return this.handle.setTrainable(patterns);
    } catch (err) {
      throw wrapError(err);
    }
  }

  /** Named parameters/buffers as tensors sharing storage with the model. */
  tensors(names?: string[]): Record<string, Tensor> {
    let out;
    try {
      out = this.handle.tensors(names);
    } catch (err) {
      throw wrapError(err);
    }
    const result: Record<string, Tensor> = {};
    for (const [k, h] of Object.entries(out)) result[k] = new Tensor(h);
    return result;
  }

  async to(device: string, dtype?: DType): Promise<void> {
    try {
      await this.handle.to(device, dtype);
    } catch (err) {
      throw wrapError(err);
    }
  }

  train(on = true): void {
    this.handle.train(on);
  }

  /**
   * Stores 4-D weights and inputs channels-last (NHWC): faster convolutions with cuDNN, especially under
   * bf16/fp16 autocast. Values are unchanged; on CPU it rarely helps.
   */
  setChannelsLast(on: boolean): void {
    expectBoolean('channels last', on);
    try {
      this.handle.setChannelsLast(on);
    } catch (err) {
      throw wrapError(err);
    }
  }

  /**
   * Holds this model's frozen weights (parameters without gradient, ≥ 2 dims) in bf16 or fp16 on CPU — an
   * approximation (see `FrozenDtype`) that halves their memory; trainable tensors stay fp32, so choose them
   * (`setTrainable`) first. 'fp32' leaves the model as it is. Tested on the unet, vae, clip and blip kinds;
   * other kinds are refused. Returns what was converted.
   */
  async setFrozenDtype(dtype: FrozenDtype): Promise<FrozenDtypeReport | null> {
    expectOneOf('frozen dtype', dtype, FROZEN_DTYPES);
    if (dtype === 'fp32') return null;
    if (!FROZEN_DTYPE_KINDS.includes(this.kind))
      throw new RoundtripError(`frozen dtype ${dtype}: not supported for '${this.kind}' models (supported: ${FROZEN_DTYPE_KINDS.join(', ')})`);
    if (this.autocastMode !== 'off') throw new RoundtripError(`frozen dtype ${dtype} is a CPU option; this model runs under CUDA autocast`);
    try {
      return await this.handle.setFrozenDtype(dtype === 'bf16' ? 'bfloat16' : 'float16');
    } catch (err) {
      throw wrapError(err);
    }
  }

  /**
   * Hands back the resident pages of the weights that still view their file unwritten (frozen, mapped ones); the
   * model keeps working, touching them again reads the same bytes from the page cache. For a model a one-shot
   * process is done with (`roundtrip generate` releases the text encoder once the prompts are encoded). Returns
   * the bytes handed back (0 for copied or converted weights).
   */
  async releaseWeightPages(): Promise<number> {
    try {
      return await this.handle.releaseWeightPages();
    } catch (err) {
      throw wrapError(err);
    }
  }

  dispose(): void {
    this.handle.dispose();
  }
}

/** Model kinds whose frozen weights may be held in bf16/fp16 (each checked against its fp32 fixture). */
export const FROZEN_DTYPE_KINDS: readonly string[] = ['unet', 'vae', 'clip', 'blip'];
