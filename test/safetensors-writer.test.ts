/**
 * The streaming, atomic safetensors writer, the float casts, and checkpoint → safetensors conversion.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CHECKPOINTS } from './support/paths';
import { RoundtripError } from '../lib/errors';
import { writeSafetensors, SafetensorsEntry } from '../lib/weights/safetensors-writer';
import { readSafetensorsHeader } from '../lib/weights/safetensors';
import {
  convertToSafetensors,
  castFloatBytes,
  doubleToHalfBits,
  doubleToBFloat16Bits,
  halfBitsToNumber,
  bfloat16BitsToNumber,
} from '../lib/weights/convert';
import { readTorchFile, stateDictOf } from '../lib/weights/torchfile';
import { convertCommand } from '../lib/cli/commands/weights-files';

const ZOO = path.join(CHECKPOINTS, 'pickle-zoo');
const BLIP = path.join(CHECKPOINTS, 'blip-original');
const LDM = path.join(CHECKPOINTS, 'sd-ldm');

type Tensors = Map<string, { dtype: string; shape: number[]; data: Buffer }>;

/** Reads through the native header reader plus plain file reads. */
function readNative(file: string): Tensors {
  const header = readSafetensorsHeader(file);
  const bytes = fs.readFileSync(file);
  const out: Tensors = new Map();
  for (const t of header.tensors) {
    out.set(t.name, { dtype: t.dtype, shape: t.shape, data: bytes.subarray(header.dataStart + t.dataOffsets[0], header.dataStart + t.dataOffsets[1]) });
  }
  return out;
}

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'roundtrip-st-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const f32 = (values: number[]) => Buffer.from(new Float32Array(values).buffer);

describe('writeSafetensors', () => {
  it('reproduces the reference library\'s file byte for byte (layout order, header padding, metadata)', async () => {
    const source = path.join(ZOO, 'expected.safetensors');
    const tensors = readNative(source);
    const metadata = readSafetensorsHeader(source).metadata;
    // Hand the entries over in reverse name order: the writer must impose the layout itself.
    const entries: SafetensorsEntry[] = [...tensors].reverse().map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape, data: t.data }));
    const out = path.join(dir, 'copy.safetensors');
    const result = await writeSafetensors(out, entries, metadata);
    expect(result.tensors).toBe(tensors.size);
    expect(fs.readFileSync(out).equals(fs.readFileSync(source))).toBe(true);
  });

  it('pads the header to 8 bytes and aligns every tensor to its element size', async () => {
    const out = path.join(dir, 'aligned.safetensors');
    await writeSafetensors(out, [
      { name: 'b', dtype: 'U8', shape: [3], data: Buffer.from([1, 2, 3]) },
      { name: 'a', dtype: 'F64', shape: [1], data: Buffer.alloc(8) },
      { name: 'c', dtype: 'F16', shape: [1], data: Buffer.alloc(2) },
      { name: 'd', dtype: 'F32', shape: [2], data: f32([1, 2]) },
    ]);
    const bytes = fs.readFileSync(out);
    const n = Number(bytes.readBigUInt64LE(0));
    expect((8 + n) % 8).toBe(0);
    const header = readSafetensorsHeader(out);
    expect(header.dataStart).toBe(8 + n);
    const sizes: Record<string, number> = { F64: 8, F32: 4, F16: 2, U8: 1 };
    for (const t of header.tensors) expect(t.dataOffsets[0] % sizes[t.dtype]).toBe(0);
    expect(readNative(out).get('d')!.data.equals(f32([1, 2]))).toBe(true);
  });

  it('streams lazy entries one at a time, in layout order, after planning the header', async () => {
    const calls: string[] = [];
    let outstanding = 0;
    let maxOutstanding = 0;
    async function* entries(): AsyncGenerator<SafetensorsEntry> {
      for (const [name, dtype, n] of [['x', 'F32', 4], ['y', 'I64', 2], ['z', 'F32', 3]] as const) {
        yield {
          name,
          dtype,
          shape: [n],
          read: async () => {
            calls.push(name);
            outstanding++;
            maxOutstanding = Math.max(maxOutstanding, outstanding);
            await new Promise((r) => setTimeout(r, 1));
            outstanding--;
            return Buffer.alloc(n * (dtype === 'I64' ? 8 : 4), name.charCodeAt(0));
          },
        };
      }
    }
    const out = path.join(dir, 'lazy.safetensors');
    await writeSafetensors(out, entries());
    expect(calls).toEqual(['y', 'x', 'z']);
    expect(maxOutstanding).toBe(1);
    const written = readNative(out);
    expect(written.get('z')!.data.equals(Buffer.alloc(12, 'z'.charCodeAt(0)))).toBe(true);
  });

  describe('refusals leave an existing target untouched and no temporary file', () => {
    const cases: [string, () => Iterable<SafetensorsEntry> | AsyncIterable<SafetensorsEntry>, RegExp][] = [
      ['a wrong byte count', () => [{ name: 'w', dtype: 'F32', shape: [3], data: Buffer.alloc(8) }], /"w": expected 12 bytes .* got 8/],
      ['a wrong byte count from a lazy reader', () => [{ name: 'w', dtype: 'F32', shape: [2], read: () => Buffer.alloc(4) }], /"w": expected 8 bytes .* got 4/],
      ['an unknown dtype', () => [{ name: 'w', dtype: 'F128', shape: [1], data: Buffer.alloc(16) }], /dtype of "w": expected one of/],
      ['a negative dimension', () => [{ name: 'w', dtype: 'F32', shape: [-1], data: Buffer.alloc(0) }], /shape of "w"/],
      ['a duplicate name', () => [{ name: 'w', dtype: 'U8', shape: [1], data: Buffer.alloc(1) }, { name: 'w', dtype: 'U8', shape: [1], data: Buffer.alloc(1) }], /"w" appears twice/],
      ['a reader that fails midway', () => [
        { name: 'a', dtype: 'F32', shape: [1], data: f32([1]) },
        { name: 'b', dtype: 'F32', shape: [1], read: () => Promise.reject(new RoundtripError('disk on fire')) },
      ], /disk on fire/],
      ['an iterable that fails', () => (function* () {
        yield { name: 'a', dtype: 'F32', shape: [1], data: f32([1]) } as SafetensorsEntry;
        throw new RoundtripError('source broke');
      })(), /source broke/],
    ];
    for (const [what, entries, message] of cases) {
      it(what, async () => {
        const target = path.join(dir, 'model.safetensors');
        await writeSafetensors(target, [{ name: 'old', dtype: 'F32', shape: [2], data: f32([7, 8]) }]);
        const before = fs.readFileSync(target);
        await expect(writeSafetensors(target, entries())).rejects.toThrow(message);
        expect(fs.readFileSync(target).equals(before)).toBe(true);
        expect(fs.readdirSync(dir)).toEqual(['model.safetensors']);
      });
    }
  });

  it('refuses a target in a missing directory with an error naming it', async () => {
    const target = path.join(dir, 'missing', 'x.safetensors');
    await expect(writeSafetensors(target, [{ name: 'a', dtype: 'U8', shape: [1], data: Buffer.alloc(1) }])).rejects.toThrow(/x\.safetensors: writing safetensors failed/);
  });
});

describe('float casts (round to nearest even)', () => {
  it('F16: every finite half round-trips, midpoints round to even, just-off midpoints to nearest', () => {
    for (let h = 0; h < 0x7c00; h++) {
      for (const sign of [0, 0x8000]) {
        if (doubleToHalfBits(halfBitsToNumber(h | sign)) !== (h | sign)) throw new Error(`half 0x${(h | sign).toString(16)} does not round-trip`);
      }
      if (h + 1 >= 0x7c00) continue;
      const lo = halfBitsToNumber(h);
      const hi = halfBitsToNumber(h + 1);
      const mid = (lo + hi) / 2; // exact: halves have 11 significant bits
      const even = h % 2 === 0 ? h : h + 1;
      if (doubleToHalfBits(mid) !== even) throw new Error(`midpoint after half 0x${h.toString(16)} rounded wrongly`);
      if (doubleToHalfBits(mid + (hi - lo) * 2 ** -20) !== h + 1) throw new Error(`above midpoint after 0x${h.toString(16)}`);
      if (doubleToHalfBits(mid - (hi - lo) * 2 ** -20) !== h) throw new Error(`below midpoint after 0x${h.toString(16)}`);
    }
    expect(doubleToHalfBits(65504)).toBe(0x7bff);
    expect(doubleToHalfBits(65519.99)).toBe(0x7bff);
    expect(doubleToHalfBits(65520)).toBe(0x7c00); // the midpoint to "65536" rounds to even: infinity
    expect(doubleToHalfBits(-Infinity)).toBe(0xfc00);
    expect(doubleToHalfBits(NaN) & 0x7c00).toBe(0x7c00);
    expect(doubleToHalfBits(2 ** -25)).toBe(0); // half the smallest subnormal: ties to even (zero)
    expect(doubleToHalfBits(-0)).toBe(0x8000);
  });

  it('BF16: every finite bfloat16 round-trips and midpoints round to even', () => {
    for (let h = 0; h < 0x7f80; h++) {
      const x = bfloat16BitsToNumber(h);
      if (doubleToBFloat16Bits(x) !== h) throw new Error(`bfloat16 0x${h.toString(16)} does not round-trip`);
      if (h + 1 >= 0x7f80) continue;
      const mid = (x + bfloat16BitsToNumber(h + 1)) / 2;
      if (doubleToBFloat16Bits(mid) !== (h % 2 === 0 ? h : h + 1)) throw new Error(`bf16 midpoint after 0x${h.toString(16)}`);
    }
  });

  it('the F32/F16/BF16 fast paths agree with the double path on random bit patterns', () => {
    const bits = new Uint32Array(400000);
    let seed = 12345;
    for (let i = 0; i < bits.length; i++) bits[i] = seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    // Also every exponent around the F16 range, where the subnormal and overflow branches live.
    for (let i = 0; i < 100000; i++) bits[i] = (bits[i] & 0x807fffff) | ((96 + (i % 48)) << 23);
    const isNaN16 = (h: number, expMask: number) => (h & expMask) === expMask && (h & (0xffff ^ 0x8000 ^ expMask)) !== 0;
    const agree = (input: Buffer, from: string, to: 'F16' | 'BF16') => {
      const fast = castFloatBytes(input, from, to);
      const slow = castFloatBytes(castFloatBytes(input, from, 'F64'), 'F64', to);
      const expMask = to === 'F16' ? 0x7c00 : 0x7f80;
      for (let i = 0; i < fast.length / 2; i++) {
        const a = fast.readUInt16LE(2 * i);
        const b = slow.readUInt16LE(2 * i);
        if (isNaN16(a, expMask) ? !isNaN16(b, expMask) : a !== b) throw new Error(`${from}→${to} element ${i}: ${a} vs ${b}`);
      }
    };
    const input = Buffer.from(bits.buffer);
    agree(input, 'F32', 'BF16');
    agree(input, 'F32', 'F16');
    agree(input.subarray(0, 200000), 'BF16', 'F16');
    agree(input.subarray(0, 200000), 'F16', 'BF16');
    // F16 / BF16 → F32 are exact.
    const halves = Buffer.from(new Uint16Array(Array.from({ length: 0x7c00 }, (_, h) => h)).buffer);
    const widened = castFloatBytes(halves, 'F16', 'F32');
    for (let h = 0; h < 0x7c00; h++) if (widened.readFloatLE(4 * h) !== halfBitsToNumber(h)) throw new Error(`F16 0x${h.toString(16)} widened wrongly`);
    // F64 → F16 rounds once: through F32 first would round this value twice (to the wrong neighbour).
    const twice = 1 + 2 ** -11 + 2 ** -40; // just above the F16 midpoint 1 + 2^-11; F32 rounds it to the midpoint
    const direct = castFloatBytes(Buffer.from(new Float64Array([twice]).buffer), 'F64', 'F16').readUInt16LE(0);
    expect(direct).toBe(doubleToHalfBits(1) + 1);
  });
});

describe('convertToSafetensors', () => {
  it('blip-original/model.pth: every tensor written, tied names each with their own data, equal to model.pth', async () => {
    const out = path.join(dir, 'blip.safetensors');
    const report = await convertToSafetensors(path.join(BLIP, 'model.pth'), out);
    const { tensors } = stateDictOf((await readTorchFile(path.join(BLIP, 'model.pth'))).value);
    expect(report.tensors).toBe(tensors.size);
    expect(report.wrapper).toBe('model');
    expect(report.skipped).toEqual([]);
    const written = readNative(out);
    expect(written.size).toBe(tensors.size);
    let bytes = 0;
    for (const [name, tensor] of tensors) {
      const w = written.get(name);
      expect({ name, dtype: w?.dtype, shape: w?.shape }).toEqual({ name, dtype: tensor.dtype, shape: [...tensor.shape] });
      expect({ name, equal: w!.data.equals(await tensor.readContiguous()) }).toEqual({ name, equal: true });
      bytes += tensor.byteLength;
    }
    expect(report.bytes).toBe(bytes);
    expect(readSafetensorsHeader(out).metadata).toEqual({ format: 'pt' });
  });

  it('sd-ldm/model.ckpt: same tensors as the shipped model.safetensors (byte-identical file when metadata agrees)', async () => {
    const out = path.join(dir, 'ldm.safetensors');
    const reference = path.join(LDM, 'model.safetensors');
    const started = process.hrtime.bigint();
    const report = await convertToSafetensors(path.join(LDM, 'model.ckpt'), out);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    expect(report.wrapper).toBe('state_dict');
    const expected = readNative(reference);
    const written = readNative(out);
    expect([...written.keys()].sort()).toEqual([...expected.keys()].sort());
    for (const [name, t] of expected) {
      const w = written.get(name)!;
      expect({ name, dtype: w.dtype, shape: w.shape, equal: w.data.equals(t.data) }).toEqual({ name, dtype: t.dtype, shape: t.shape, equal: true });
    }
    if (JSON.stringify(readSafetensorsHeader(reference).metadata) === JSON.stringify({ format: 'pt' })) {
      expect(fs.readFileSync(out).equals(fs.readFileSync(reference))).toBe(true);
    }
    // Throughput on the largest fixture, for the record.
    console.log(`convert ${path.basename(report.input)}: ${(report.bytes / 1e6).toFixed(2)} MB in ${seconds.toFixed(3)} s = ${(report.bytes / 1e6 / seconds).toFixed(1)} MB/s`);
  });

  it('casts float tensors to F16 / BF16 (round to nearest even) and keeps integer tensors', async () => {
    const { tensors } = stateDictOf((await readTorchFile(path.join(LDM, 'model.ckpt'))).value);
    for (const dtype of ['F16', 'BF16'] as const) {
      const out = path.join(dir, `ldm-${dtype}.safetensors`);
      const report = await convertToSafetensors(path.join(LDM, 'model.ckpt'), out, { dtype });
      const written = readNative(out);
      let floats = 0;
      for (const [name, tensor] of tensors) {
        const w = written.get(name)!;
        const source = await tensor.readContiguous();
        if (tensor.dtype === 'F32') {
          floats++;
          expect({ name, dtype: w.dtype }).toEqual({ name, dtype });
          const encode = dtype === 'F16' ? doubleToHalfBits : doubleToBFloat16Bits;
          for (let i = 0; i < tensor.numel; i++) {
            const want = encode(source.readFloatLE(4 * i));
            const got = w.data.readUInt16LE(2 * i);
            if (want !== got) throw new Error(`${name}[${i}]: ${got} vs ${want}`);
          }
        } else {
          expect({ name, dtype: w.dtype, equal: w.data.equals(source) }).toEqual({ name, dtype: tensor.dtype, equal: true });
        }
      }
      expect(report.cast).toBe(floats);
      expect(floats).toBeGreaterThan(0);
    }
  });

  it('applies renames (map and function; null drops) and refuses two names mapping to one', async () => {
    const input = path.join(ZOO, 'tied_weights.pt');
    const out = path.join(dir, 'renamed.safetensors');
    const report = await convertToSafetensors(input, out, { renames: (n) => (n === 'part_b' ? null : `m.${n}`) });
    expect(report.dropped).toEqual(['part_b']);
    const written = readNative(out);
    expect(written.has('m.embed.weight') && written.has('m.lm_head.weight') && !written.has('m.part_b')).toBe(true);
    expect(written.get('m.embed.weight')!.data.equals(written.get('m.lm_head.weight')!.data)).toBe(true);
    await expect(convertToSafetensors(input, path.join(dir, 'clash.safetensors'), { renames: { part_a: 'part_b' } })).rejects.toThrow(/both map to "part_b"/);
    expect(fs.existsSync(path.join(dir, 'clash.safetensors'))).toBe(false);
  });

  it('refuses a malicious checkpoint and leaves the previous output untouched', async () => {
    const out = path.join(dir, 'out.safetensors');
    await convertToSafetensors(path.join(ZOO, 'dtypes.pt'), out);
    const before = fs.readFileSync(out);
    await expect(convertToSafetensors(path.join(ZOO, 'evil_nested_after_tensors.pt'), out)).rejects.toThrow(/evil_nested_after_tensors\.pt.*"__builtin__ exec"/);
    expect(fs.readFileSync(out).equals(before)).toBe(true);
    expect(fs.readdirSync(dir)).toEqual(['out.safetensors']);
  });

  it('the convert command handler writes the file and prints a report', async () => {
    const out = path.join(dir, 'cmd.safetensors');
    const written: string[] = [];
    const spy = jest.spyOn(process.stdout, 'write').mockImplementation(((chunk: unknown) => (written.push(String(chunk)), true)) as any);
    try {
      await (convertCommand.handler as any)({ input: path.join(ZOO, 'views_and_strides.pt'), output: out, dtype: 'BF16', json: true });
    } finally {
      spy.mockRestore();
    }
    const report = JSON.parse(written.join(''));
    expect(report.tensors).toBe(readSafetensorsHeader(out).tensors.length);
    expect(readSafetensorsHeader(out).tensors.find((t) => t.name === 'transposed')!.dtype).toBe('BF16');
  });
});
