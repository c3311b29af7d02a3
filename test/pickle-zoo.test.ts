/**
 * The restricted PyTorch checkpoint reader against the pickle zoo (`cases.json` drives every case), the
 * published-layout checkpoints (BLIP `.pth`, LDM `.ckpt`, partial fine-tune files), the zip reader's edge
 * cases (ZIP64, compressed entries), the pickle VM's protocol 0–5 opcodes and its refusals, and `inspect`.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as crypto from 'crypto';
import * as childProcess from 'child_process';
import { CHECKPOINTS } from './support/paths';
import { RoundtripError } from '../lib/errors';
import { BARE_TENSOR_NAME, readTorchFile, stateDictOf, TorchTensor } from '../lib/weights/torchfile';
import { unpickle, PyDict, PyComplex, TorchDtype, TorchDevice, isTuple, PyValue } from '../lib/weights/pickle';
import { ZipArchive } from '../lib/weights/zip';
import { inspectWeightsFile, formatInspectReport, inspectCommand } from '../lib/cli/commands/weights-files';
import { readSafetensorsHeader } from '../lib/weights/safetensors';

const ZOO = path.join(CHECKPOINTS, 'pickle-zoo');
const BLIP = path.join(CHECKPOINTS, 'blip-original');
const LDM = path.join(CHECKPOINTS, 'sd-ldm');

interface ZooCase {
  id: string;
  file: string;
  kind: string;
  tests: string;
  opcodes_that_name_globals: string[] | string;
  reference_torch_load: { result: string; message?: string };
  expected: { result: string; value?: any };
  expected_if_supported?: Record<string, any>;
}
const zoo = JSON.parse(fs.readFileSync(path.join(ZOO, 'cases.json'), 'utf8')) as { cases: ZooCase[] };

/** Reads a file's tensors through the native safetensors reader (header) and plain positioned reads. */
function readSafetensorsNative(file: string): Map<string, { dtype: string; shape: number[]; data: Buffer }> {
  const header = readSafetensorsHeader(file);
  const bytes = fs.readFileSync(file);
  const out = new Map<string, { dtype: string; shape: number[]; data: Buffer }>();
  for (const t of header.tensors) {
    out.set(t.name, { dtype: t.dtype, shape: t.shape, data: bytes.subarray(header.dataStart + t.dataOffsets[0], header.dataStart + t.dataOffsets[1]) });
  }
  return out;
}

const expectedTensors = readSafetensorsNative(path.join(ZOO, 'expected.safetensors'));

async function expectTensorValues(tensor: TorchTensor, key: string): Promise<void> {
  const expected = expectedTensors.get(key);
  expect(expected).toBeDefined();
  expect(tensor.dtype).toBe(expected!.dtype);
  expect([...tensor.shape]).toEqual(expected!.shape);
  const data = await tensor.readContiguous();
  expect(data.equals(expected!.data)).toBe(true);
}

/** Compares an unpickled value with its `expected.value` description (see cases.json `value_encoding`). */
async function expectValue(actual: PyValue, expected: any, where: string): Promise<void> {
  const at = `${where}: ${JSON.stringify(expected).slice(0, 80)}`;
  switch (expected.type) {
    case 'dict':
    case 'OrderedDict': {
      expect({ at, ok: actual instanceof PyDict && actual.pythonType === expected.type }).toEqual({ at, ok: true });
      const entries = [...(actual as PyDict).entries()];
      expect({ at, size: entries.length }).toEqual({ at, size: expected.items.length });
      for (let i = 0; i < entries.length; i++) {
        await expectValue(entries[i][0], expected.items[i][0], `${where}.key${i}`);
        await expectValue(entries[i][1], expected.items[i][1], `${where}[${String(entries[i][0])}]`);
      }
      return;
    }
    case 'list':
    case 'tuple': {
      expect({ at, ok: Array.isArray(actual) && isTuple(actual) === (expected.type === 'tuple') }).toEqual({ at, ok: true });
      const items = actual as PyValue[];
      expect({ at, length: items.length }).toEqual({ at, length: expected.items.length });
      for (let i = 0; i < items.length; i++) await expectValue(items[i], expected.items[i], `${where}[${i}]`);
      return;
    }
    case 'int':
      expect({ at, ok: (typeof actual === 'number' && Number.isInteger(actual)) || typeof actual === 'bigint' }).toEqual({ at, ok: true });
      expect({ at, value: String(actual) }).toEqual({ at, value: expected.value });
      return;
    case 'float': {
      const value = expected.value === 'nan' ? NaN : expected.value === 'inf' ? Infinity : expected.value === '-inf' ? -Infinity : expected.value;
      expect({ at, ok: typeof actual === 'number' && Object.is(actual, value) }).toEqual({ at, ok: true });
      return;
    }
    case 'str':
    case 'bool':
      expect({ at, value: actual }).toEqual({ at, value: expected.value });
      return;
    case 'None':
      expect({ at, value: actual }).toEqual({ at, value: null });
      return;
    case 'bytes':
      expect({ at, ok: Buffer.isBuffer(actual) }).toEqual({ at, ok: true });
      expect((actual as Buffer).toString('hex')).toBe(expected.hex);
      return;
    case 'bytearray':
      expect({ at, ok: actual instanceof Uint8Array && !Buffer.isBuffer(actual) }).toEqual({ at, ok: true });
      expect(Buffer.from(actual as Uint8Array).toString('hex')).toBe(expected.hex);
      return;
    case 'set': {
      expect(actual).toBeInstanceOf(Set);
      const values = [...(actual as Set<PyValue>)].map(String).sort();
      expect(values).toEqual(expected.items.map((item: any) => item.value).sort());
      return;
    }
    case 'complex':
      expect(actual).toBeInstanceOf(PyComplex);
      expect([(actual as PyComplex).real, (actual as PyComplex).imag]).toEqual([expected.real, expected.imag]);
      return;
    case 'torch.Size':
      expect(isTuple(actual)).toBe(true);
      expect([...(actual as number[])]).toEqual(expected.value);
      return;
    case 'torch.dtype':
      expect(actual).toBeInstanceOf(TorchDtype);
      expect(`torch.${(actual as TorchDtype).name}`).toBe(expected.value);
      return;
    case 'torch.device': {
      expect(actual).toBeInstanceOf(TorchDevice);
      const device = actual as TorchDevice;
      expect(device.index === null ? device.type : `${device.type}:${device.index}`).toBe(expected.value);
      return;
    }
    case 'Parameter': {
      expect(actual).toBeInstanceOf(TorchTensor);
      const tensor = actual as TorchTensor;
      expect({ at, isParameter: tensor.isParameter, requiresGrad: tensor.requiresGrad }).toEqual({ at, isParameter: true, requiresGrad: expected.requires_grad });
      await expectTensor(tensor, expected.data, where, false);
      return;
    }
    case 'tensor':
      await expectTensor(actual, expected, where, true);
      return;
    default:
      throw new Error(`${where}: the test does not know value type ${expected.type}`);
  }
}

async function expectTensor(actual: PyValue, expected: any, where: string, checkGrad: boolean): Promise<void> {
  expect({ where, ok: actual instanceof TorchTensor }).toEqual({ where, ok: true });
  const tensor = actual as TorchTensor;
  expect({ where, dtype: tensor.dtype, shape: [...tensor.shape], stride: [...tensor.stride], offset: tensor.storageOffset }).toEqual({
    where,
    dtype: expected.dtype,
    shape: expected.shape,
    stride: expected.stride,
    offset: expected.storage_offset,
  });
  if (checkGrad) expect({ where, requiresGrad: tensor.requiresGrad }).toEqual({ where, requiresGrad: expected.requires_grad });
  if (expected.storage) {
    expect({ where, key: tensor.storage.key, numel: tensor.storage.numel, location: tensor.storage.location }).toEqual({
      where,
      key: expected.storage.key,
      numel: expected.storage.numel,
      location: expected.storage.location,
    });
  }
  await expectTensorValues(tensor, expected.values);
}

/** Globals that the reference loads in some case: a refusal must name a global outside this set. */
const legitimateGlobals = new Set(
  zoo.cases
    .filter((c) => c.reference_torch_load.result === 'loaded' && Array.isArray(c.opcodes_that_name_globals))
    .flatMap((c) => (c.opcodes_that_name_globals as string[]).map((g) => g.replace(/^(STACK_)?GLOBAL /, ''))),
);

const mustRefuse = (c: ZooCase) => /^(must be refused|refuse)/.test(c.expected.result);

/** Watches every way a payload could have run: child processes, eval, and the payload's marker output. */
function watchForExecution() {
  const spies = (['exec', 'execSync', 'execFile', 'execFileSync', 'spawn', 'spawnSync', 'fork'] as const).map((name) =>
    jest.spyOn(childProcess, name as any),
  );
  const evalSpy = jest.spyOn(globalThis, 'eval');
  const written: string[] = [];
  const stdout = jest.spyOn(process.stdout, 'write').mockImplementation(((chunk: unknown) => {
    written.push(String(chunk));
    return true;
  }) as any);
  const log = jest.spyOn(console, 'log').mockImplementation((...args: unknown[]) => void written.push(args.join(' ')));
  return {
    check(): void {
      for (const spy of spies) expect(spy).not.toHaveBeenCalled();
      expect(evalSpy).not.toHaveBeenCalled();
      expect(written.join('')).not.toContain('PICKLE-ZOO-PAYLOAD-EXECUTED');
    },
    restore(): void {
      for (const spy of [...spies, evalSpy, stdout, log]) spy.mockRestore();
    },
  };
}

describe('pickle zoo (cases.json)', () => {
  it('lists every zoo file in cases.json', () => {
    const files = fs.readdirSync(ZOO).filter((f) => f.endsWith('.pt')).sort();
    expect(zoo.cases.map((c) => c.file).sort()).toEqual(files);
  });

  for (const c of zoo.cases) {
    const file = path.join(ZOO, c.file);
    if (mustRefuse(c)) {
      it(`${c.id} (${c.kind}): refused without executing anything`, async () => {
        const watch = watchForExecution();
        try {
          const error = await readTorchFile(file).then(
            () => null,
            (err: unknown) => err,
          );
          expect(error).toBeInstanceOf(RoundtripError);
          const message = (error as Error).message;
          expect(message).toContain(file);
          // Refusals of a global must name it, and happen at the GLOBAL opcode: before any REDUCE could use it.
          const offending = Array.isArray(c.opcodes_that_name_globals)
            ? c.opcodes_that_name_globals.filter((g) => /^(STACK_)?GLOBAL /.test(g)).map((g) => g.replace(/^(STACK_)?GLOBAL /, '')).filter((g) => !legitimateGlobals.has(g))
            : [];
          if (offending.length > 0) {
            expect(offending.some((g) => message.includes(`"${g}"`))).toBe(true);
            expect(message).toMatch(/opcode (STACK_)?GLOBAL/);
          }
          watch.check();
        } finally {
          watch.restore();
        }
      });
    } else if (c.expected_if_supported) {
      it(`${c.id} (${c.kind}): loaded (optional; reference: ${c.reference_torch_load.result})`, async () => {
        const { value } = await readTorchFile(file);
        // A string naming a tensor of expected.safetensors is that tensor; objects are dicts; the rest literals.
        const expectLike = async (actual: PyValue, spec: any, where: string): Promise<void> => {
          if (typeof spec === 'string' && expectedTensors.has(spec)) return expectTensorValues(actual as TorchTensor, spec);
          if (spec === null || typeof spec !== 'object') return expect({ where, actual }).toEqual({ where, actual: spec });
          expect(actual).toBeInstanceOf(PyDict);
          expect([...(actual as PyDict).keys()]).toEqual(Object.keys(spec));
          for (const [k, v] of Object.entries(spec)) await expectLike((actual as PyDict).get(k) as PyValue, v, `${where}.${k}`);
        };
        await expectLike(value, c.expected_if_supported, c.id);
      });
    } else {
      it(`${c.id} (${c.kind}): loads the expected values`, async () => {
        expect(c.expected.value).toBeDefined();
        const checkpoint = await readTorchFile(file);
        await expectValue(checkpoint.value, c.expected.value, c.id);
      });
    }
  }

  it('tied weights: two names, one storage object, identical bytes', async () => {
    const { value } = await readTorchFile(path.join(ZOO, 'tied_weights.pt'));
    const tensors = [...stateDictOf(value).tensors.values()];
    const byKey = new Map<string, TorchTensor[]>();
    for (const t of tensors) byKey.set(t.storage.key, [...(byKey.get(t.storage.key) ?? []), t]);
    const shared = [...byKey.values()].filter((group) => group.length > 1);
    expect(shared.length).toBeGreaterThan(0);
    for (const group of shared) for (const t of group) expect(t.storage).toBe(group[0].storage);
  });

  it('memo_put_huge_index: loads without allocating index-sized memory', async () => {
    const before = process.memoryUsage().rss;
    await readTorchFile(path.join(ZOO, 'memo_put_huge_index.pt'));
    expect(process.memoryUsage().rss - before).toBeLessThan(256 * 1024 * 1024);
  });
});

describe('stateDictOf', () => {
  const storage = { key: '0', dtype: 'F32', numel: 1, location: 'cpu', fileOffset: 0, byteLength: 4 };
  const tensor = () => new TorchTensor('x.pt', 'F32', [1], [1], 0, storage, false);
  const dict = (entries: [PyValue, PyValue][], type: 'dict' | 'OrderedDict' = 'dict') => {
    const d = new PyDict(type);
    for (const [k, v] of entries) d.set(k, v);
    return d;
  };

  it('unwraps {state_dict: …} and {model: …}, flattening nested dicts to dotted names', () => {
    const inner = dict([['a', tensor()], ['sub', dict([['b', tensor()], ['n', 3]])], ['l', [tensor()]]], 'OrderedDict');
    for (const key of ['state_dict', 'model']) {
      const sd = stateDictOf(dict([['epoch', 6], [key, inner]]));
      expect(sd.wrapper).toBe(key);
      expect([...sd.tensors.keys()]).toEqual(['a', 'sub.b']);
      expect(sd.skipped).toEqual(['sub.n', 'l']);
    }
  });

  it('accepts a bare tensor and a list/tuple of tensors or state dicts at the top level', () => {
    const bare = stateDictOf(tensor());
    expect(bare.top).toBe('tensor');
    expect([...bare.tensors.keys()]).toEqual([BARE_TENSOR_NAME]);
    const list = stateDictOf([tensor(), dict([['w', tensor()], ['n', 3]])]);
    expect(list.top).toBe('sequence');
    expect([...list.tensors.keys()]).toEqual(['0', '1.w']);
    expect(list.skipped).toEqual(['1.n']);
  });

  it('treats a dict with tensors of its own as the state dict, even with a "model" sub-dict', () => {
    const sd = stateDictOf(dict([['w', tensor()], ['model', dict([['x', tensor()]])]]));
    expect(sd.wrapper).toBeNull();
    expect([...sd.tensors.keys()]).toEqual(['w', 'model.x']);
  });

  it('refuses a non-dict top level and self-referencing nesting', () => {
    expect(() => stateDictOf(1, 'f.pt')).toThrow(/f\.pt: expected a tensor, a dict of tensors or a list of tensors/);
    expect(() => stateDictOf([1, 'x'], 'f.pt')).toThrow(/f\.pt: a list\/tuple at the top level must hold tensors/);
    const loop = dict([['t', tensor()]]);
    loop.set('self', loop);
    expect(() => stateDictOf(loop, 'f.pt')).toThrow(/"self" contains itself/);
    // 40 levels of a dict shared twice: 2^40 paths; must fail fast, not hang.
    let shared = dict([['t', tensor()]]);
    for (let i = 0; i < 40; i++) shared = dict([['a', shared], ['b', shared]]);
    const started = Date.now();
    expect(() => stateDictOf(shared, 'f.pt')).toThrow(/more than \d+ entries/);
    expect(Date.now() - started).toBeLessThan(30000);
  });
});

describe('published checkpoint layouts', () => {
  it('blip-original/model.pth: every tensor of mapping.json, bit-identical, tied storages shared', async () => {
    const mapping = JSON.parse(fs.readFileSync(path.join(BLIP, 'mapping.json'), 'utf8'));
    const checkpoint = await readTorchFile(path.join(BLIP, 'model.pth'));
    expect(checkpoint.format).toBe('zip');
    const { tensors, wrapper, skipped } = stateDictOf(checkpoint.value);
    expect(wrapper).toBe('model');
    expect(skipped).toEqual([]);
    expect(tensors.size).toBe(mapping.entries.length);
    for (const entry of mapping.entries) {
      const tensor = tensors.get(entry.original);
      expect({ name: entry.original, found: tensor !== undefined }).toEqual({ name: entry.original, found: true });
      expect({ name: entry.original, dtype: tensor!.dtype, shape: [...tensor!.shape] }).toEqual({ name: entry.original, dtype: entry.dtype, shape: entry.shape });
      const sha = crypto.createHash('sha256').update(await tensor!.readContiguous()).digest('hex');
      expect({ name: entry.original, sha }).toEqual({ name: entry.original, sha: entry.sha256 });
    }
    // The decoder head is tied to the word embeddings: one storage record referenced twice.
    const decoder = tensors.get('text_decoder.cls.predictions.decoder.weight')!;
    const embeddings = tensors.get('text_decoder.bert.embeddings.word_embeddings.weight')!;
    expect(decoder.storage).toBe(embeddings.storage);
    const bias = tensors.get('text_decoder.cls.predictions.decoder.bias')!;
    expect(bias.storage).toBe(tensors.get('text_decoder.cls.predictions.bias')!.storage);
    const storageCount = new Set([...tensors.values()].map((t) => t.storage.key)).size;
    expect(storageCount).toBeLessThan(tensors.size);
  });

  it('sd-ldm/model.ckpt: Lightning wrapper, every tensor equal to model.safetensors and mapping.json', async () => {
    const mapping = JSON.parse(fs.readFileSync(path.join(LDM, 'mapping.json'), 'utf8'));
    const checkpoint = await readTorchFile(path.join(LDM, 'model.ckpt'));
    expect(checkpoint.prefix).toBe('archive');
    const { tensors, wrapper } = stateDictOf(checkpoint.value);
    expect(wrapper).toBe('state_dict');
    // The wrapper's own entries (epoch, global_step, …) are outside the state dict.
    expect((checkpoint.value as PyDict).get('state_dict')).toBeInstanceOf(PyDict);
    const reference = readSafetensorsNative(path.join(LDM, 'model.safetensors'));
    expect(tensors.size).toBe(reference.size);
    expect(tensors.size).toBe(mapping.entries.length);
    const dtypes = new Set<string>();
    for (const [name, expected] of reference) {
      const tensor = tensors.get(name);
      expect({ name, found: tensor !== undefined }).toEqual({ name, found: true });
      expect({ name, dtype: tensor!.dtype, shape: [...tensor!.shape] }).toEqual({ name, dtype: expected.dtype, shape: expected.shape });
      expect({ name, equal: (await tensor!.readContiguous()).equals(expected.data) }).toEqual({ name, equal: true });
      dtypes.add(tensor!.dtype);
    }
    for (const entry of mapping.entries) expect({ name: entry.ldm, dtype: tensors.get(entry.ldm)?.dtype }).toEqual({ name: entry.ldm, dtype: entry.dtype });
    expect(dtypes.size).toBeGreaterThan(1);
  });

  it('blip-original/partial-xattn-q.pth: a plain dict whose tensors equal partial.* of the expected file', async () => {
    const checkpoint = await readTorchFile(path.join(BLIP, 'partial-xattn-q.pth'));
    expect((checkpoint.value as PyDict).pythonType).toBe('dict');
    const { tensors, wrapper } = stateDictOf(checkpoint.value);
    expect(wrapper).toBeNull();
    const expected = readSafetensorsNative(path.join(BLIP, 'partial-xattn-q.expected.safetensors'));
    const partial = [...expected.keys()].filter((k) => k.startsWith('partial.'));
    expect(tensors.size).toBe(partial.length);
    for (const key of partial) {
      const tensor = tensors.get(key.slice('partial.'.length));
      expect({ key, found: tensor !== undefined }).toEqual({ key, found: true });
      expect((await tensor!.readContiguous()).equals(expected.get(key)!.data)).toBe(true);
    }
  });

  it('sd-ldm/partial-unet-xattn-q.pth: a plain dict of attn2.to_q weights with the UNet shapes of mapping.json', async () => {
    const mapping = JSON.parse(fs.readFileSync(path.join(LDM, 'mapping.json'), 'utf8'));
    const unetShapes = new Map<string, number[]>(mapping.entries.filter((e: any) => e.component === 'unet' && e.diffusers).map((e: any) => [e.diffusers, e.shape]));
    const checkpoint = await readTorchFile(path.join(LDM, 'partial-unet-xattn-q.pth'));
    expect((checkpoint.value as PyDict).pythonType).toBe('dict');
    const { tensors } = stateDictOf(checkpoint.value);
    // Every UNet cross-attention query weight, under its diffusers name, with the UNet's shape.
    const queries = [...unetShapes.keys()].filter((k) => k.endsWith('attn2.to_q.weight')).sort();
    expect([...tensors.keys()].sort()).toEqual(queries);
    for (const [name, tensor] of tensors) {
      expect({ name, shape: [...tensor.shape] }).toEqual({ name, shape: unetShapes.get(name) });
      expect((await tensor.readContiguous()).length).toBe(tensor.byteLength);
    }
  });
});

/** A minimal stored-zip writer for crafted archives (optionally with ZIP64 records and compressed entries). */
function makeZip(entries: { name: string; data: Buffer; method?: number }[], zip64 = false): Buffer {
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const { name, data, method = 0 } of entries) {
    const nameBytes = Buffer.from(name);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(zip64 ? 45 : 20, 4);
    local.writeUInt16LE(method, 8);
    local.writeUInt32LE(zip64 ? 0xffffffff : data.length, 18);
    local.writeUInt32LE(zip64 ? 0xffffffff : data.length, 22);
    local.writeUInt16LE(nameBytes.length, 26);
    const localExtra = zip64 ? Buffer.alloc(20) : Buffer.alloc(0);
    if (zip64) {
      localExtra.writeUInt16LE(1, 0);
      localExtra.writeUInt16LE(16, 2);
      localExtra.writeBigUInt64LE(BigInt(data.length), 4);
      localExtra.writeBigUInt64LE(BigInt(data.length), 12);
    }
    local.writeUInt16LE(localExtra.length, 28);
    const cd = Buffer.alloc(46);
    cd.writeUInt32LE(0x02014b50, 0);
    cd.writeUInt16LE(zip64 ? 45 : 20, 4);
    cd.writeUInt16LE(zip64 ? 45 : 20, 6);
    cd.writeUInt16LE(method, 10);
    cd.writeUInt32LE(zip64 ? 0xffffffff : data.length, 20);
    cd.writeUInt32LE(zip64 ? 0xffffffff : data.length, 24);
    cd.writeUInt16LE(nameBytes.length, 28);
    const cdExtra = zip64 ? Buffer.alloc(28) : Buffer.alloc(0);
    if (zip64) {
      cdExtra.writeUInt16LE(1, 0);
      cdExtra.writeUInt16LE(24, 2);
      cdExtra.writeBigUInt64LE(BigInt(data.length), 4);
      cdExtra.writeBigUInt64LE(BigInt(data.length), 12);
      cdExtra.writeBigUInt64LE(BigInt(offset), 20);
    }
    cd.writeUInt16LE(cdExtra.length, 30);
    cd.writeUInt32LE(zip64 ? 0xffffffff : offset, 42);
    parts.push(local, nameBytes, localExtra, data);
    central.push(cd, nameBytes, cdExtra);
    offset += 30 + nameBytes.length + localExtra.length + data.length;
  }
  const cdBytes = Buffer.concat(central);
  const tail: Buffer[] = [];
  if (zip64) {
    const record = Buffer.alloc(56);
    record.writeUInt32LE(0x06064b50, 0);
    record.writeBigUInt64LE(44n, 4);
    record.writeBigUInt64LE(BigInt(entries.length), 24);
    record.writeBigUInt64LE(BigInt(entries.length), 32);
    record.writeBigUInt64LE(BigInt(cdBytes.length), 40);
    record.writeBigUInt64LE(BigInt(offset), 48);
    const locator = Buffer.alloc(20);
    locator.writeUInt32LE(0x07064b50, 0);
    locator.writeBigUInt64LE(BigInt(offset + cdBytes.length), 8);
    locator.writeUInt32LE(1, 16);
    tail.push(record, locator);
  }
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(zip64 ? 0xffff : entries.length, 8);
  eocd.writeUInt16LE(zip64 ? 0xffff : entries.length, 10);
  eocd.writeUInt32LE(zip64 ? 0xffffffff : cdBytes.length, 12);
  eocd.writeUInt32LE(zip64 ? 0xffffffff : offset, 16);
  return Buffer.concat([...parts, cdBytes, ...tail, eocd]);
}

/** The entries of a zoo archive, read with our own zip reader, to re-pack them. */
function zooEntries(file: string): { name: string; data: Buffer }[] {
  const archive = ZipArchive.open(file);
  return archive.entries.map((e) => ({ name: e.name, data: archive.readEntry(e.name) }));
}

describe('zip archive reader', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'roundtrip-zip-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('reads ZIP64 records (sizes, offsets, end records) with another top folder', async () => {
    const entries = zooEntries(path.join(ZOO, 'dtypes.pt')).map((e) => ({ ...e, name: e.name.replace(/^[^/]+\//, 'some-other.top/') }));
    const file = path.join(dir, 'zip64.pt');
    fs.writeFileSync(file, makeZip(entries, true));
    const checkpoint = await readTorchFile(file);
    expect(checkpoint.prefix).toBe('some-other.top');
    const c = zoo.cases.find((x) => x.file === 'dtypes.pt')!;
    await expectValue(checkpoint.value, c.expected.value, 'zip64');
  });

  it('refuses compressed entries with a clear error', async () => {
    const entries = zooEntries(path.join(ZOO, 'cuda_location.pt')).map((e) => (e.name.endsWith('data.pkl') ? { ...e, method: 8 } : e));
    const file = path.join(dir, 'deflated.pt');
    fs.writeFileSync(file, makeZip(entries));
    await expect(readTorchFile(file)).rejects.toThrow(/compressed \(method 8\)/);
  });

  it('refuses an entry whose size runs past the archive data', () => {
    const good = makeZip([{ name: 'a/data.pkl', data: Buffer.from('x') }]);
    const bad = Buffer.from(good);
    // Central directory entry size fields (compressed and uncompressed) of the only entry.
    const cd = bad.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
    bad.writeUInt32LE(1000, cd + 20);
    bad.writeUInt32LE(1000, cd + 24);
    const file = path.join(dir, 'overrun.pt');
    fs.writeFileSync(file, bad);
    expect(() => ZipArchive.open(file)).toThrow(/runs past the archive data/);
  });

  it('refuses a crafted os.system payload that would create a file, and the file never appears', async () => {
    const sentinel = path.join(dir, 'payload-ran');
    const payloads = [
      // protocol 0: GLOBAL os system + REDUCE
      Buffer.from(`cos\nsystem\n(S'touch ${sentinel}'\ntR.`, 'latin1'),
      // protocol 2 posix.system, as pickle writes os.system on Linux
      Buffer.concat([Buffer.from([0x80, 0x02]), Buffer.from(`cposix\nsystem\nX`, 'latin1'), u32(`touch ${sentinel}`.length), Buffer.from(`touch ${sentinel}`), Buffer.from([0x85, 0x52, 0x2e])]),
      // protocol 4 STACK_GLOBAL builtins exec
      Buffer.concat([Buffer.from([0x80, 0x04, 0x8c, 8]), Buffer.from('builtins'), Buffer.from([0x8c, 4]), Buffer.from('exec'), Buffer.from([0x93, 0x58]), u32(pyTouch(sentinel).length), Buffer.from(pyTouch(sentinel)), Buffer.from([0x85, 0x52, 0x2e])]),
      // INST instantiates a class directly
      Buffer.from(`(S'touch ${sentinel}'\nios\nsystem\n.`, 'latin1'),
    ];
    const watch = watchForExecution();
    try {
      for (const [i, pickle] of payloads.entries()) {
        const file = path.join(dir, `evil-${i}.pt`);
        fs.writeFileSync(file, makeZip([{ name: 'evil/data.pkl', data: pickle }, { name: 'evil/version', data: Buffer.from('3\n') }]));
        await expect(readTorchFile(file)).rejects.toThrow(/(os|posix|builtins) (system|exec)/);
      }
      watch.check();
    } finally {
      watch.restore();
    }
    expect(fs.existsSync(sentinel)).toBe(false);
  });
});

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}
function pyTouch(file: string): string {
  return `open(${JSON.stringify(file)}, 'w').close()`;
}

describe('pickle VM', () => {
  const run = (bytes: Buffer) => unpickle(bytes, { source: 'test.pkl' }).value;

  it('protocol 0 text opcodes: INT, LONG, FLOAT, STRING, UNICODE, PUT/GET, DICT, LIST, TUPLE', () => {
    const p0 = Buffer.from(
      "(dp0\nVa\np1\n(lp2\nI1\naF2.5\naVx\np3\naI-7\naL1180591620717411303424L\naFinf\nasVb\np4\n(I01\nNI00\ntp5\nsVu\np6\nV\xfcn\xef\\u2713\np7\nsVk\np8\n(dp9\nI3\nVthree\np10\nsg1\nS'it\\'s'\nss.",
      'latin1',
    );
    const value = run(p0) as PyDict;
    expect([...value.keys()]).toEqual(['a', 'b', 'u', 'k']);
    expect(value.get('a')).toEqual([1, 2.5, 'x', -7, 1180591620717411303424n, Infinity]);
    expect(isTuple(value.get('b'))).toBe(true);
    expect(value.get('b')).toEqual([true, null, false]);
    expect(value.get('u')).toBe('ünï\u2713');
    const k = value.get('k') as PyDict;
    expect([...k.entries()]).toEqual([[3, 'three'], ['a', "it's"]]);
  });

  it('protocol 1 binary opcodes', () => {
    const p1 = Buffer.from(
      '7d71002858010000006171015d7102284b0147400400000000000058010000007871034af9ffffff4c313138303539313632303731373431313330333432344c0a477ff0000000000000655801000000627104284930310a4e4930300a74710558010000007571065808000000c3bc6ec3afe29c93710758010000006b71087d71094b0358050000007468726565710a73752e',
      'hex',
    );
    const value = run(p1) as PyDict;
    expect(value.get('a')).toEqual([1, 2.5, 'x', -7, 1180591620717411303424n, Infinity]);
    expect(value.get('u')).toBe('ünï\u2713');
  });

  it('protocol 5: FRAME, MEMOIZE, BYTEARRAY8, EMPTY_SET/ADDITEMS, FROZENSET, SHORT_BINBYTES', () => {
    const p5 = Buffer.from(
      '80059535000000000000007d94288c026261949602000000000000006162948c0173948f94284b014b02908c02667394284b0391948c0162944302787994752e',
      'hex',
    );
    const value = run(p5) as PyDict;
    expect(Buffer.from(value.get('ba') as Uint8Array).toString()).toBe('ab');
    expect([...(value.get('s') as Set<number>)]).toEqual([1, 2]);
    expect([...(value.get('fs') as Set<number>)]).toEqual([3]);
    expect((value.get('b') as Buffer).toString()).toBe('xy');
  });

  it('refuses BUILD on anything but an OrderedDict, NEWOBJ, EXT, out-of-band buffers', () => {
    // EMPTY_DICT, EMPTY_DICT, BUILD, STOP
    expect(() => run(Buffer.from([0x80, 0x02, 0x7d, 0x7d, 0x62, 0x2e]))).toThrow(/BUILD .* only allowed on an OrderedDict/);
    expect(() => run(Buffer.from([0x80, 0x02, 0x63, ...Buffer.from('collections\nOrderedDict\n'), 0x29, 0x81, 0x2e]))).toThrow(/object instantiation/);
    expect(() => run(Buffer.from([0x80, 0x02, 0x82, 0x01, 0x2e]))).toThrow(/extension registry/);
    expect(() => run(Buffer.from([0x80, 0x05, 0x97, 0x2e]))).toThrow(/out-of-band/);
  });

  it('allows BUILD of an OrderedDict state (state_dict()._metadata)', () => {
    const bytes = Buffer.from([0x80, 0x02, 0x63, ...Buffer.from('collections\nOrderedDict\n'), 0x29, 0x52, 0x7d, 0x62, 0x2e]);
    const value = run(bytes) as PyDict;
    expect(value.pythonType).toBe('OrderedDict');
    expect(value.attributes).toBeInstanceOf(PyDict);
  });

  it('refuses oversized lengths without allocating them, and stack misuse', () => {
    // BINBYTES8 claiming 2^60 bytes.
    const huge = Buffer.from([0x80, 0x04, 0x8e, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x2e]);
    expect(() => run(huge)).toThrow(/ends early/);
    expect(() => run(Buffer.from([0x80, 0x02, 0x61, 0x2e]))).toThrow(/stack underflow/);
    expect(() => run(Buffer.from([0x80, 0x02, 0x74, 0x2e]))).toThrow(/no MARK/);
    expect(() => run(Buffer.from([0x80, 0x02, 0x4e, 0x4e, 0x2e]))).toThrow(/STOP with 2 values/);
    expect(() => run(Buffer.from([0x80, 0x06, 0x4e, 0x2e]))).toThrow(/protocol 6/);
  });
});

describe('inspect', () => {
  it('lists a checkpoint: names, dtypes, shapes, bytes and totals', async () => {
    const report = await inspectWeightsFile(path.join(BLIP, 'model.pth'));
    const { tensors } = stateDictOf((await readTorchFile(path.join(BLIP, 'model.pth'))).value);
    expect(report.format).toBe('torch-zip');
    expect(report.totalTensors).toBe(tensors.size);
    expect(report.totalBytes).toBe([...tensors.values()].reduce((s, t) => s + t.byteLength, 0));
    const text = formatInspectReport(report);
    expect(text).toContain(`${report.totalTensors} tensors, ${report.totalBytes} bytes`);
    expect(text).toContain('text_decoder.cls.predictions.decoder.weight');
  });

  it('lists a safetensors file through the native header reader', async () => {
    const file = path.join(LDM, 'model.safetensors');
    const report = await inspectWeightsFile(file);
    const header = readSafetensorsHeader(file);
    expect(report.format).toBe('safetensors');
    expect(report.totalTensors).toBe(header.tensors.length);
    expect(report.metadata).toEqual(header.metadata);
  });

  it('prints JSON from the command handler', async () => {
    const written: string[] = [];
    const spy = jest.spyOn(process.stdout, 'write').mockImplementation(((chunk: unknown) => (written.push(String(chunk)), true)) as any);
    try {
      await (inspectCommand.handler as any)({ file: path.join(ZOO, 'dtypes.pt'), json: true });
    } finally {
      spy.mockRestore();
    }
    const report = JSON.parse(written.join(''));
    expect(report.tensors.map((t: any) => t.dtype)).toEqual(
      (zoo.cases.find((c) => c.file === 'dtypes.pt')!.expected.value.items as any[]).map((item) => item[1].dtype),
    );
  });

  it('fails naming the file and the fault for malformed and malicious files', async () => {
    const truncated = path.join(ZOO, 'truncated_zip.pt');
    await expect(inspectWeightsFile(truncated)).rejects.toThrow(new RegExp(`${truncated.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}.*end-of-central-directory`));
    await expect(inspectWeightsFile(path.join(ZOO, 'evil_os_system.pt'))).rejects.toThrow(/evil_os_system\.pt.*"os system"/);
    await expect(inspectWeightsFile(path.join(ZOO, 'no-such-file.pt'))).rejects.toThrow(/no-such-file\.pt: cannot read/);
  });
});
