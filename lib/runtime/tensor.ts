/**
 * Tensor: a TypeScript handle over a native libtorch tensor. Data stays native; copies to JS happen
 * only when asked (`toTypedArray`, `toBuffer`). Memory is released deterministically by `dispose()` or
 * by `scope()`, which frees every tensor created inside it except those returned or kept.
 */
import { DType, NativeTensorHandle, native } from './native';
import type { NativeTensorOps, TensorOpName } from './native-methods';
import { RoundtripError, expectOneOf, invalid } from '../errors';

export type { DType } from './native';
export const DTYPES: readonly DType[] = ['float64', 'float32', 'float16', 'bfloat16', 'int64', 'int32', 'int16', 'int8', 'uint8', 'bool'];

type TypedArray = Float64Array | Float32Array | BigInt64Array | Int32Array | Int16Array | Int8Array | Uint8Array | Uint16Array;

const TYPED_FOR: Partial<Record<DType, new (buf: ArrayBuffer, off: number, len: number) => TypedArray>> = {
  float64: Float64Array,
  float32: Float32Array,
  int64: BigInt64Array,
  int32: Int32Array,
  int16: Int16Array,
  int8: Int8Array,
  uint8: Uint8Array,
  bool: Uint8Array,
  float16: Uint16Array,
  bfloat16: Uint16Array,
};

function dtypeOf(data: TypedArray): DType {
  if (data instanceof Float32Array) return 'float32';
  if (data instanceof Float64Array) return 'float64';
  if (data instanceof BigInt64Array) return 'int64';
  if (data instanceof Int32Array) return 'int32';
  if (data instanceof Int16Array) return 'int16';
  if (data instanceof Int8Array) return 'int8';
  if (data instanceof Uint8Array) return 'uint8';
  throw invalid('data', 'a Float32Array, Float64Array, BigInt64Array, Int32Array, Int16Array, Int8Array or Uint8Array', data);
}

/** Scopes collect tensors created while they are open. */
const scopes: Set<Tensor>[] = [];
let gradDepth = 0;

export class Tensor {
  /** @internal */
  readonly handle: NativeTensorHandle;

  /** @internal Wraps a native handle; use the static constructors. */
  constructor(handle: NativeTensorHandle) {
    this.handle = handle;
    const top = scopes[scopes.length - 1];
    if (top) top.add(this);
  }

  /** Copies a typed array into a new tensor of the given shape (dtype from the array unless given). */
  static fromTypedArray(data: TypedArray | number[], shape: number[], dtype?: DType): Tensor {
    if (Array.isArray(data)) data = dtype === 'int64' ? BigInt64Array.from(data.map(BigInt)) : Float32Array.from(data);
    const dt = dtype ?? dtypeOf(data);
    const numel = shape.reduce((a, b) => a * b, 1);
    if (data.length !== numel) throw invalid('data', `${numel} elements for shape [${shape.join(', ')}]`, data);
    return new Tensor(native().tensorFromBuffer(data, dt, shape));
  }

  /** Copies raw little-endian bytes into a new tensor. */
  static fromBuffer(data: Uint8Array, dtype: DType, shape: number[]): Tensor {
    expectOneOf('dtype', dtype, DTYPES);
    return new Tensor(native().tensorFromBuffer(data, dtype, shape));
  }

  static zeros(shape: number[], opts: { dtype?: DType; device?: string } = {}): Tensor {
    return Tensor.op('zeros', [], { shape, ...opts });
  }

  static full(shape: number[], value: number, opts: { dtype?: DType; device?: string } = {}): Tensor {
    return Tensor.op('full', [], { shape, value, ...opts });
  }

  /** Standard normal draws from a seeded CPU generator (same numbers on every device). */
  static randn(shape: number[], seed: number, opts: { device?: string } = {}): Tensor {
    return Tensor.op('randn', [], { shape, seed, ...opts });
  }

  static stack(tensors: Tensor[], dim = 0): Tensor {
    return Tensor.op('stack', tensors, { dim });
  }

  static cat(tensors: Tensor[], dim = 0): Tensor {
    return Tensor.op('cat', tensors, { dim });
  }

  /** @internal One native op. */
  static op<N extends TensorOpName>(name: N, tensors: Tensor[], args?: NativeTensorOps[N]): Tensor {
    return new Tensor(native().op(name, tensors.map((t) => t.handle), args ? JSON.stringify(args) : undefined));
  }

  get shape(): number[] {
    return this.handle.shape;
  }
  get dtype(): DType {
    return this.handle.dtype;
  }
  get device(): string {
    return this.handle.device;
  }
  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
  get disposed(): boolean {
    return this.handle.disposed;
  }
  get requiresGrad(): boolean {
    return this.handle.requiresGrad;
  }
  set requiresGrad(on: boolean) {
    this.handle.requiresGrad = on;
  }

  /** Releases the native memory now. Safe to call twice. */
  dispose(): void {
    this.handle.dispose();
  }

  /** Moves and/or casts; returns a new tensor (the same storage when nothing changes). */
  to(device?: string, dtype?: DType): Tensor {
    if (dtype !== undefined) expectOneOf('dtype', dtype, DTYPES);
    return new Tensor(this.handle.to(device ?? null, dtype ?? null));
  }

  /** Copies the data to JS as a typed array matching the dtype (float16/bfloat16 as raw Uint16 bits). */
  toTypedArray(): TypedArray {
    const buf = this.handle.toBuffer();
    const Ctor = TYPED_FOR[this.dtype];
    if (!Ctor) throw new RoundtripError(`toTypedArray: no typed array for dtype ${this.dtype}`);
    const bytes = BYTES[this.dtype];
    // Buffer pooling can misalign; copy into a fresh aligned buffer when needed.
    if (buf.byteOffset % bytes !== 0) {
      const copy = new Uint8Array(buf.length);
      copy.set(buf);
      return new Ctor(copy.buffer, 0, buf.length / bytes);
    }
    return new Ctor(buf.buffer as ArrayBuffer, buf.byteOffset, buf.length / bytes);
  }

  /** Float data as a Float32Array (casting on the native side when needed). */
  toFloat32Array(): Float32Array {
    if (this.dtype === 'float32') return this.toTypedArray() as Float32Array;
    const t = this.to(undefined, 'float32');
    try {
      return t.toTypedArray() as Float32Array;
    } finally {
      t.dispose();
    }
  }

  /** Raw bytes, contiguous little-endian. */
  toBuffer(): Buffer {
    return this.handle.toBuffer();
  }

  /** The single value of a one-element tensor. */
  item(): number {
    return this.handle.item();
  }

  grad(): Tensor | null {
    const g = this.handle.grad();
    return g ? new Tensor(g) : null;
  }

  /** Backpropagates from this (scalar) tensor; runs off the JS thread. */
  async backward(gradient?: Tensor): Promise<void> {
    return this.handle.backward(gradient?.handle);
  }

  add(other: Tensor | number): Tensor {
    return typeof other === 'number' ? Tensor.op('add', [this], { scalar: other }) : Tensor.op('add', [this, other]);
  }
  sub(other: Tensor | number): Tensor {
    return typeof other === 'number' ? Tensor.op('sub', [this], { scalar: other }) : Tensor.op('sub', [this, other]);
  }
  mul(other: Tensor | number): Tensor {
    return typeof other === 'number' ? Tensor.op('mul', [this], { scalar: other }) : Tensor.op('mul', [this, other]);
  }
  div(other: Tensor | number): Tensor {
    return typeof other === 'number' ? Tensor.op('div', [this], { scalar: other }) : Tensor.op('div', [this, other]);
  }
  sum(dim?: number | number[], keepdim = false): Tensor {
    return Tensor.op('sum', [this], dim === undefined ? {} : { dim, keepdim });
  }
  mean(dim?: number | number[], keepdim = false): Tensor {
    return Tensor.op('mean', [this], dim === undefined ? {} : { dim, keepdim });
  }
  reshape(shape: number[]): Tensor {
    return Tensor.op('reshape', [this], { shape });
  }
  narrow(dim: number, start: number, length: number): Tensor {
    return Tensor.op('narrow', [this], { dim, start, length });
  }
  select(dim: number, index: number): Tensor {
    return Tensor.op('select', [this], { dim, index });
  }
  detach(): Tensor {
    return Tensor.op('detach', [this]);
  }
  clone(): Tensor {
    return Tensor.op('clone', [this]);
  }
  argmax(dim = -1): Tensor {
    return Tensor.op('argmax', [this], { dim });
  }
  softmax(dim = -1): Tensor {
    return Tensor.op('softmax', [this], { dim });
  }
  /** Elementwise comparison with a reference: |x - ref| <= atol + rtol·|ref|. */
  compare(reference: Tensor, atol: number, rtol: number): { maxAbs: number; maxRel: number; bad: number; numel: number } {
    return native().op('compare', [this.handle, reference.handle], JSON.stringify({ atol, rtol }));
  }

  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}], ${this.device})`;
  }
}

const BYTES: Record<DType, number> = { float64: 8, float32: 4, float16: 2, bfloat16: 2, int64: 8, int32: 4, int16: 2, int8: 1, uint8: 1, bool: 1 };

/** Disposes anything that holds tensors: a tensor, arrays and plain objects of them. */
export function disposeAll(value: unknown): void {
  if (value instanceof Tensor) value.dispose();
  else if (Array.isArray(value)) value.forEach(disposeAll);
  else if (value && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) Object.values(value).forEach(disposeAll);
}

function collect(value: unknown, into: Set<Tensor>): void {
  if (value instanceof Tensor) into.add(value);
  else if (Array.isArray(value)) value.forEach((v) => collect(v, into));
  else if (value && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) Object.values(value).forEach((v) => collect(v, into));
}

/**
 * Runs `fn`; every tensor created inside that is not part of the result is disposed when it ends.
 * Works with async functions: the scope stays open until the promise settles, so keep concurrent work
 * out of one scope. Tensors in the result move to the enclosing scope.
 */
export async function scope<T>(fn: () => Promise<T> | T): Promise<T> {
  const mine = new Set<Tensor>();
  scopes.push(mine);
  let result: T;
  try {
    result = await fn();
  } catch (err) {
    popScope(mine);
    for (const t of mine) t.dispose();
    throw err;
  }
  popScope(mine);
  const keep = new Set<Tensor>();
  collect(result, keep);
  for (const t of mine) if (!keep.has(t)) t.dispose();
  const parent = scopes[scopes.length - 1];
  if (parent) for (const t of keep) parent.add(t);
  return result;
}

function popScope(s: Set<Tensor>): void {
  const i = scopes.lastIndexOf(s);
  if (i >= 0) scopes.splice(i, 1);
}

/** Keeps a tensor alive past the current scope (it becomes the caller's to dispose). */
export function keep<T extends Tensor>(t: T): T {
  for (const s of scopes) s.delete(t);
  return t;
}

/**
 * Runs `fn` with autograd off (no graph is recorded by native calls started inside).
 * Native calls capture the mode when they start, so awaited calls inside are covered.
 */
export async function noGrad<T>(fn: () => Promise<T> | T): Promise<T> {
  gradDepth++;
  native().setGradEnabled(false);
  try {
    return await fn();
  } finally {
    gradDepth--;
    if (gradDepth === 0) native().setGradEnabled(true);
  }
}

/** Number of live native tensor handles (for leak checks). */
export function liveTensors(): number {
  return native().liveTensors();
}
