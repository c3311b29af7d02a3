import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { OPENBLAS_THREAD_TIMEOUT, native } from '../lib/runtime/native';
import { Tensor, scope, noGrad, liveTensors, keep, disposeAll } from '../lib/runtime/tensor';
import { loadSafetensors, readSafetensorsHeader } from '../lib/weights/safetensors';
import { REFERENCE } from './support/paths';

describe('addon', () => {
  test('loads and reports its build', () => {
    const info = native().info();
    expect(info.libtorch).toMatch(/^\d+\.\d+\.\d+$/);
    expect(info.threads).toBeGreaterThanOrEqual(1);
  });

  test('thread count is configurable', () => {
    const before = native().getNumThreads();
    native().setNumThreads(1);
    expect(native().getNumThreads()).toBe(1);
    native().setNumThreads(before);
    expect(() => native().setNumThreads(0)).toThrow(/threads: expected an integer >= 1/);
  });

  test("OpenBLAS's idle spin is shortened before the addon loads it; a user's own value is kept", () => {
    const loadAndPrint = (env: Record<string, string | undefined>) => {
      const r = spawnSync(process.execPath, ['-e', "require('./dist/runtime/native').native(); process.stdout.write(String(process.env.OPENBLAS_THREAD_TIMEOUT))"], {
        cwd: path.join(__dirname, '..'), encoding: 'utf8', env: { ...process.env, OPENBLAS_THREAD_TIMEOUT: undefined, ...env },
      });
      expect(r.status).toBe(0);
      return r.stdout;
    };
    expect(loadAndPrint({})).toBe(String(OPENBLAS_THREAD_TIMEOUT));
    expect(loadAndPrint({ OPENBLAS_THREAD_TIMEOUT: '7' })).toBe('7');
  });

  test('denormal floats are flushed to zero (FTZ + DAZ) unless ROUNDTRIP_FLUSH_DENORMAL=off; other values are refused', () => {
    const script = "const { Tensor } = require('./dist/runtime/tensor'); process.stdout.write(String(Tensor.fromTypedArray(new Float32Array([1e-39, 3]), [2]).mul(1).toFloat32Array()[0]))";
    const child = (value: string | undefined) => spawnSync(process.execPath, ['-e', script], {
      cwd: path.join(__dirname, '..'), encoding: 'utf8', env: { ...process.env, ROUNDTRIP_FLUSH_DENORMAL: value },
    });
    // In this process (default on): the denormal operand reads as 0.
    const x = Tensor.fromTypedArray(new Float32Array([1e-39, 3]), [2]);
    const y = x.mul(1);
    expect(Array.from(y.toFloat32Array())).toEqual([0, 3]);
    disposeAll([x, y]);
    // JavaScript's own arithmetic on this thread keeps IEEE denormals: the mode is the op's, not the thread's.
    const tiny = Number('5e-324');
    expect(tiny * 3).toBe(Number('1.5e-323'));
    expect(child(undefined).stdout).toBe('0');
    const off = child('off');
    expect(off.status).toBe(0);
    expect(Number(off.stdout)).toBeCloseTo(1e-39, 44);
    const bad = child('sometimes');
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toContain("roundtrip: ROUNDTRIP_FLUSH_DENORMAL: expected on or off, got 'sometimes'");
  });

  test('a diagnostic variable with a value outside its choices fails the load, naming it and the choices', () => {
    const r = spawnSync(process.execPath, ['-e', "require('./dist/runtime/native').native()"], {
      cwd: path.join(__dirname, '..'), encoding: 'utf8', env: { ...process.env, ROUNDTRIP_MEMORY_POLICY: 'Off' },
    });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("roundtrip: ROUNDTRIP_MEMORY_POLICY: expected on or off, got 'Off'");
  });

  test('a bad ROUNDTRIP_THREADS is named as such, not as a build problem', () => {
    const r = spawnSync(process.execPath, ['-e', "require('./dist/runtime/native').native()"], {
      cwd: path.join(__dirname, '..'), encoding: 'utf8', env: { ...process.env, ROUNDTRIP_THREADS: 'many' },
    });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('roundtrip: ROUNDTRIP_THREADS: expected an integer >= 1, got "many"');
    expect(r.stderr).not.toContain('could not be loaded');
  });
});

describe('Tensor', () => {
  test('round-trips typed arrays of every dtype', () => {
    const cases: [any, number[]][] = [
      [new Float32Array([1.5, -2, 3, 4, 5, 6]), [2, 3]],
      [new Float64Array([1e-300, 2]), [2]],
      [new BigInt64Array([1n, -2n, 9007199254740993n]), [3]],
      [new Int32Array([7, -8]), [1, 2]],
      [new Int16Array([1, 2, 3, 4]), [2, 2]],
      [new Int8Array([-1, 1]), [2]],
      [new Uint8Array([0, 255, 128]), [3]],
    ];
    for (const [data, shape] of cases) {
      const t = Tensor.fromTypedArray(data, shape);
      expect(t.shape).toEqual(shape);
      expect(Array.from(t.toTypedArray() as any)).toEqual(Array.from(data));
      t.dispose();
    }
  });

  test('casts and moves, and names bad dtypes and devices', () => {
    const t = Tensor.fromTypedArray(new Float32Array([1.25, 2.5]), [2]);
    const h = t.to(undefined, 'float16');
    expect(h.dtype).toBe('float16');
    expect(Array.from(h.toFloat32Array())).toEqual([1.25, 2.5]);
    expect(() => t.to(undefined, 'float8' as any)).toThrow(/dtype: expected one of/);
    expect(() => t.to('gpu')).toThrow(/device: expected "cpu", "cuda" or "cuda:N", got "gpu"/);
    if (!native().info().cuda) expect(() => t.to('cuda:0')).toThrow(/no usable CUDA/);
    expect(() => Tensor.fromTypedArray(new Float32Array(5), [2, 3])).toThrow(/expected 6 elements/);
    disposeAll([t, h]);
  });

  test('disposed tensors fail clearly and dispose is idempotent', () => {
    const t = Tensor.fromTypedArray(new Float32Array([1]), [1]);
    t.dispose();
    t.dispose();
    expect(t.disposed).toBe(true);
    expect(() => t.shape).toThrow(/disposed/);
    expect(() => t.add(1)).toThrow(/disposed/);
  });

  test('scope frees everything created inside except the result, with no growth over many iterations', async () => {
    const start = liveTensors();
    for (let i = 0; i < 500; i++) {
      const kept = await scope(async () => {
        const a = Tensor.full([64, 64], 1);
        const b = a.mul(2).add(a);
        return b.sum();
      });
      expect(kept.item()).toBe(64 * 64 * 3);
      kept.dispose();
    }
    expect(liveTensors()).toBe(start);
  });

  test('scope disposes on error and keep() escapes a scope', async () => {
    const start = liveTensors();
    let escaped: Tensor | undefined;
    await expect(
      scope(async () => {
        escaped = keep(Tensor.full([2], 3));
        Tensor.full([2], 1);
        throw new Error('boom');
      }),
    ).rejects.toThrow('boom');
    expect(escaped!.disposed).toBe(false);
    escaped!.dispose();
    expect(liveTensors()).toBe(start);
  });

  test('autograd: backward, grad, and noGrad', async () => {
    const w = Tensor.fromTypedArray(new Float32Array([1, 2, 3]), [3]);
    w.requiresGrad = true;
    const loss = w.mul(w).sum(); // d/dw = 2w
    await loss.backward();
    expect(Array.from(w.grad()!.toFloat32Array())).toEqual([2, 4, 6]);
    const frozen = await noGrad(() => w.mul(3).sum());
    expect(frozen.requiresGrad).toBe(false);
    await expect(frozen.backward()).rejects.toThrow(/does not require grad/);
    const vec = w.mul(2);
    await expect(vec.backward()).rejects.toThrow(/non-scalar/);
    disposeAll([w, loss, frozen, vec]);
  });

  test('heavy native work runs off the JS thread', async () => {
    const a = Tensor.randn([1200, 1200], 1);
    a.requiresGrad = true;
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    let loss = a;
    for (let i = 0; i < 6; i++) loss = Tensor.op('add', [loss, Tensor.op('mse', [loss, a])]);
    const big = Tensor.op('sum', [Tensor.op('mul', [loss, loss])]);
    const started = Date.now();
    await big.backward();
    clearInterval(timer);
    if (Date.now() - started > 20) expect(ticks).toBeGreaterThan(0);
    expect(a.grad()).not.toBeNull();
  });

  test('native errors become JS errors without C++ backtraces', () => {
    const a = Tensor.fromTypedArray(new Float32Array(6), [2, 3]);
    const b = Tensor.fromTypedArray(new Float32Array(4), [2, 2]);
    let message = '';
    try {
      a.add(b);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/size of tensor a \(3\) must match the size of tensor b \(2\)/);
    expect(message).not.toMatch(/Exception raised from|frame #/);
    disposeAll([a, b]);
  });
});

describe('safetensors reader', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-st-'));
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  function file(name: string, header: string | object, data: Buffer = Buffer.alloc(0), lengthOverride?: bigint): string {
    const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(lengthOverride ?? BigInt(json.length));
    const p = path.join(tmp, name);
    fs.writeFileSync(p, Buffer.concat([len, json, data]));
    return p;
  }
  const f32 = (n: number) => Buffer.from(new Float32Array(Array.from({ length: n }, (_, i) => i)).buffer);

  test('reads every tensor of a reference io file by name', async () => {
    const dir = path.join(REFERENCE, 'vit-dino');
    const header = readSafetensorsHeader(path.join(dir, 'io.safetensors'));
    const tensors = await loadSafetensors(path.join(dir, 'io.safetensors'));
    expect(Object.keys(tensors).sort()).toEqual(header.tensors.map((t) => t.name).sort());
    for (const t of header.tensors) expect(tensors[t.name].shape).toEqual(t.shape);
    disposeAll(tensors);
  });

  test('good file: values, metadata, casting, and copy-on-write views', async () => {
    const p = file('good.safetensors', { __metadata__: { format: 'pt' }, a: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] } }, f32(6));
    expect(readSafetensorsHeader(p).metadata).toEqual({ format: 'pt' });
    const { a } = await loadSafetensors(p);
    expect(Array.from(a.toFloat32Array())).toEqual([0, 1, 2, 3, 4, 5]);
    const { a: half } = await loadSafetensors(p, { dtype: 'float16' });
    expect(half.dtype).toBe('float16');
    // In-place writes to a mapped view never reach the file.
    Tensor.op('mul', [a], { scalar: 2 });
    const before = fs.readFileSync(p);
    const { a: again } = await loadSafetensors(p);
    expect(Array.from(again.toFloat32Array())).toEqual([0, 1, 2, 3, 4, 5]);
    expect(fs.readFileSync(p).equals(before)).toBe(true);
    disposeAll([a, half, again]);
  });

  test('misaligned tensors are copied, not mis-read', async () => {
    // A 1-element F16 first puts the F32 tensor at an odd offset (2 bytes).
    const data = Buffer.concat([Buffer.from([0, 0x3c]), f32(2)]);
    const p = file('misaligned.safetensors', { h: { dtype: 'F16', shape: [1], data_offsets: [0, 2] }, f: { dtype: 'F32', shape: [2], data_offsets: [2, 10] } }, data);
    const t = await loadSafetensors(p);
    expect(Array.from(t.f.toFloat32Array())).toEqual([0, 1]);
    expect(Array.from(t.h.toFloat32Array())).toEqual([1]);
    disposeAll(t);
  });

  const malformed: [string, () => string, RegExp][] = [
    ['truncated file', () => { const p = path.join(tmp, 'trunc.safetensors'); fs.writeFileSync(p, Buffer.from([1, 2, 3])); return p; }, /truncated/],
    ['header length past the end', () => file('len.safetensors', '{}', Buffer.alloc(0), 4096n), /header length 4096 runs past the end/],
    ['bad JSON', () => file('json.safetensors', '{"a": {'), /not valid JSON/],
    ['offsets out of range', () => file('range.safetensors', { a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, f32(2)), /run past the data section/],
    ['overlapping offsets', () => file('overlap.safetensors', { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, f32(3)), /overlap/],
    ['unknown dtype', () => file('dtype.safetensors', { a: { dtype: 'F7', shape: [1], data_offsets: [0, 4] } }, f32(1)), /unknown or unsupported dtype 'F7'/],
    ['byte count mismatch', () => file('count.safetensors', { a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, f32(2)), /holds 8 bytes but F32 \[3\] needs 12/],
    ['negative shape', () => file('shape.safetensors', { a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, f32(1)), /shape entry/],
    ['non-string metadata', () => file('meta.safetensors', { __metadata__: { a: 1 } }), /__metadata__ value/],
    ['missing file', () => path.join(tmp, 'absent.safetensors'), /cannot open/],
  ];
  test.each(malformed)('%s is a named error, never a crash', async (_label, make, pattern) => {
    const p = make();
    expect(() => readSafetensorsHeader(p)).toThrow(pattern);
    expect(() => readSafetensorsHeader(p)).toThrow(p);
    await expect(loadSafetensors(p)).rejects.toThrow(pattern);
  });
});
