/**
 * A restricted pickle virtual machine (protocols 0–5) for the data-only pickles inside PyTorch checkpoints.
 *
 * It builds containers and primitives, and nothing else: GLOBAL / STACK_GLOBAL names are compared as exact
 * `(module, name)` pairs against a fixed allow-list at the moment they are read, before any argument is even
 * parsed, and the allowed callables are implemented here as plain data constructors (OrderedDict, set, …) or
 * handed to the caller's tensor hook. Nothing named in a pickle is ever imported, looked up or called, so a
 * malicious file can only make the reader throw. Memory use is bounded by the pickle's own size: the memo is a
 * sparse Map (a huge PUT index costs one entry), and every length field is checked against the bytes left.
 */
import { RoundtripError } from '../errors';

/** A value produced by the unpickler. See the module docs for the Python → JS mapping. */
export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Buffer
  | Uint8Array
  | PyValue[]
  | readonly PyValue[]
  | PyDict
  | Set<PyValue>
  | PyComplex
  | TorchDtype
  | TorchDevice
  | PyGlobal
  | object;

/**
 * A Python `dict` or `collections.OrderedDict` (a Map keeps insertion order and non-string keys).
 * `attributes` holds state set by BUILD (torch's `state_dict()` OrderedDicts carry `_metadata` this way).
 */
export class PyDict extends Map<PyValue, PyValue> {
  attributes: PyDict | null = null;
  constructor(readonly pythonType: 'dict' | 'OrderedDict') {
    super();
  }
}

/** A Python complex number. */
export class PyComplex {
  constructor(readonly real: number, readonly imag: number) {}
}

/** A `torch.<dtype>` object (e.g. `torch float16`), with its safetensors name when it has one. */
export class TorchDtype {
  constructor(readonly name: string, readonly safetensors: string | null) {}
}

/** A `torch.device('cuda:0')`: kept as its type and optional index. */
export class TorchDevice {
  constructor(readonly type: string, readonly index: number | null) {}
}

/** What an allow-listed global is for. */
export type GlobalKind =
  | 'OrderedDict'
  | 'rebuild_tensor_v2'
  | 'rebuild_tensor_v3'
  | 'rebuild_parameter'
  | 'rebuild_parameter_with_state'
  | 'storage'
  | 'Size'
  | 'device'
  | 'codecs_encode'
  | 'set'
  | 'frozenset'
  | 'complex'
  | 'bytearray';

/** A reference to an allow-listed global. It is a token, never a function: REDUCE dispatches on `kind`. */
export class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
    readonly kind: GlobalKind,
    /** For storage classes: the safetensors dtype of their elements (U8 for the untyped byte storage). */
    readonly storageDtype: string | null = null,
  ) {}
}

/** Legacy typed storage classes (`torch <X>Storage`) and their element dtypes. */
export const STORAGE_CLASS_DTYPES: Readonly<Record<string, string>> = {
  FloatStorage: 'F32',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  DoubleStorage: 'F64',
  LongStorage: 'I64',
  IntStorage: 'I32',
  ShortStorage: 'I16',
  CharStorage: 'I8',
  ByteStorage: 'U8',
  BoolStorage: 'BOOL',
};

/** `torch <dtype>` globals and their safetensors names (null: allowed as a value, no safetensors dtype). */
export const TORCH_DTYPES: Readonly<Record<string, string | null>> = {
  float32: 'F32',
  float16: 'F16',
  bfloat16: 'BF16',
  float64: 'F64',
  int64: 'I64',
  int32: 'I32',
  int16: 'I16',
  int8: 'I8',
  uint8: 'U8',
  uint16: 'U16',
  uint32: 'U32',
  uint64: 'U64',
  bool: 'BOOL',
  float8_e4m3fn: 'F8_E4M3',
  float8_e5m2: 'F8_E5M2',
  complex64: null,
  complex128: null,
};

/** The allow-list: exact `"module name"` pairs. Protocol 2 writes builtins under their Python 2 module name. */
const ALLOWED_GLOBALS: ReadonlyMap<string, () => PyGlobal | TorchDtype> = (() => {
  const table = new Map<string, () => PyGlobal | TorchDtype>();
  const add = (module: string, name: string, kind: GlobalKind, storageDtype: string | null = null) => {
    const token = new PyGlobal(module, name, kind, storageDtype);
    table.set(`${module} ${name}`, () => token);
  };
  add('collections', 'OrderedDict', 'OrderedDict');
  add('torch._utils', '_rebuild_tensor_v2', 'rebuild_tensor_v2');
  add('torch._utils', '_rebuild_tensor_v3', 'rebuild_tensor_v3');
  add('torch._utils', '_rebuild_parameter', 'rebuild_parameter');
  add('torch._utils', '_rebuild_parameter_with_state', 'rebuild_parameter_with_state');
  for (const [name, dtype] of Object.entries(STORAGE_CLASS_DTYPES)) add('torch', name, 'storage', dtype);
  add('torch.storage', 'UntypedStorage', 'storage', 'U8');
  add('torch', 'Size', 'Size');
  add('torch', 'device', 'device');
  add('_codecs', 'encode', 'codecs_encode');
  for (const module of ['__builtin__', 'builtins']) {
    add(module, 'set', 'set');
    add(module, 'frozenset', 'frozenset');
    add(module, 'complex', 'complex');
    add(module, 'bytearray', 'bytearray');
  }
  for (const [name, safetensors] of Object.entries(TORCH_DTYPES)) {
    const dtype = new TorchDtype(name, safetensors);
    table.set(`torch ${name}`, () => dtype);
  }
  return table;
})();

/** Called for `_rebuild_tensor_v2/v3` and `_rebuild_parameter*`: the caller builds its tensor object. */
export type TensorHook = (callable: PyGlobal, args: readonly PyValue[]) => PyValue;
/** Resolves a persistent id (BINPERSID / PERSID) to a storage object. */
export type PersistentLoad = (pid: PyValue) => PyValue;

export interface UnpickleOptions {
  /** The file (and entry) being read, named in every error. */
  source: string;
  persistentLoad?: PersistentLoad;
  tensorHook?: TensorHook;
}

export interface UnpickleResult {
  value: PyValue;
  /** Offset just past the STOP opcode (the legacy format holds several pickles back to back). */
  end: number;
}

/** Thrown when the pickle stops before STOP; the legacy reader uses it to read more of the file and retry. */
export class PickleTruncatedError extends RoundtripError {
  constructor(message: string) {
    super(message);
    this.name = 'PickleTruncatedError';
  }
}

/** True for a Python tuple (tuples are frozen arrays; lists are ordinary arrays). */
export function isTuple(value: unknown): value is readonly PyValue[] {
  return Array.isArray(value) && Object.isFrozen(value);
}

const tuple = (items: PyValue[]): readonly PyValue[] => Object.freeze(items);

/** Normalises an integer: a number when exactly representable, else a bigint. */
function normaliseInt(value: bigint): number | bigint {
  return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
}

/** Decodes a little-endian two's complement integer (LONG1 / LONG4). */
function decodeLong(bytes: Buffer): number | bigint {
  const n = bytes.length;
  if (n === 0) return 0;
  let hex = '';
  for (let i = n - 1; i >= 0; i--) hex += bytes[i].toString(16).padStart(2, '0');
  let value = BigInt('0x' + hex);
  if (bytes[n - 1] & 0x80) value -= 1n << BigInt(8 * n);
  return normaliseInt(value);
}

const OPCODE_NAMES: Record<number, string> = {
  0x28: 'MARK', 0x2e: 'STOP', 0x30: 'POP', 0x31: 'POP_MARK', 0x32: 'DUP', 0x46: 'FLOAT', 0x49: 'INT', 0x4a: 'BININT',
  0x4b: 'BININT1', 0x4c: 'LONG', 0x4d: 'BININT2', 0x4e: 'NONE', 0x50: 'PERSID', 0x51: 'BINPERSID', 0x52: 'REDUCE',
  0x53: 'STRING', 0x54: 'BINSTRING', 0x55: 'SHORT_BINSTRING', 0x56: 'UNICODE', 0x58: 'BINUNICODE', 0x61: 'APPEND',
  0x62: 'BUILD', 0x63: 'GLOBAL', 0x64: 'DICT', 0x7d: 'EMPTY_DICT', 0x65: 'APPENDS', 0x67: 'GET', 0x68: 'BINGET',
  0x69: 'INST', 0x6a: 'LONG_BINGET', 0x6c: 'LIST', 0x5d: 'EMPTY_LIST', 0x6f: 'OBJ', 0x70: 'PUT', 0x71: 'BINPUT',
  0x72: 'LONG_BINPUT', 0x73: 'SETITEM', 0x74: 'TUPLE', 0x29: 'EMPTY_TUPLE', 0x75: 'SETITEMS', 0x47: 'BINFLOAT',
  0x80: 'PROTO', 0x81: 'NEWOBJ', 0x82: 'EXT1', 0x83: 'EXT2', 0x84: 'EXT4', 0x85: 'TUPLE1', 0x86: 'TUPLE2',
  0x87: 'TUPLE3', 0x88: 'NEWTRUE', 0x89: 'NEWFALSE', 0x8a: 'LONG1', 0x8b: 'LONG4', 0x42: 'BINBYTES',
  0x43: 'SHORT_BINBYTES', 0x8c: 'SHORT_BINUNICODE', 0x8d: 'BINUNICODE8', 0x8e: 'BINBYTES8', 0x8f: 'EMPTY_SET',
  0x90: 'ADDITEMS', 0x91: 'FROZENSET', 0x92: 'NEWOBJ_EX', 0x93: 'STACK_GLOBAL', 0x94: 'MEMOIZE', 0x95: 'FRAME',
  0x96: 'BYTEARRAY8', 0x97: 'NEXT_BUFFER', 0x98: 'READONLY_BUFFER',
};

/** Decodes Python's `raw-unicode-escape` (protocol 0 UNICODE): only \uXXXX and \UXXXXXXXX are escapes. */
function decodeRawUnicodeEscape(bytes: Buffer): string {
  const text = bytes.toString('latin1');
  return text.replace(/\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g, (_m, short: string | undefined, long: string | undefined) =>
    String.fromCodePoint(parseInt((short ?? long) as string, 16)),
  );
}

/** Decodes a protocol 0 STRING argument: a quoted Python 2 `repr` with backslash escapes. */
function decodeQuotedString(line: string, fail: (why: string) => never): Buffer {
  const quote = line[0];
  if (line.length < 2 || (quote !== "'" && quote !== '"') || line[line.length - 1] !== quote) fail('STRING argument is not quoted');
  const body = line.slice(1, -1);
  const out: number[] = [];
  for (let i = 0; i < body.length; i++) {
    const c = body.charCodeAt(i);
    if (c !== 0x5c) {
      out.push(c & 0xff);
      continue;
    }
    const next = body[++i];
    const simple: Record<string, number> = { n: 10, r: 13, t: 9, '\\': 92, "'": 39, '"': 34, a: 7, b: 8, f: 12, v: 11, '0': 0 };
    if (next === 'x') {
      const hex = body.slice(i + 1, i + 3);
      if (!/^[0-9a-fA-F]{2}$/.test(hex)) fail('STRING has a malformed \\x escape');
      out.push(parseInt(hex, 16));
      i += 2;
    } else if (next !== undefined && next in simple && !(next === '0' && /[0-7]/.test(body[i + 1] ?? ''))) {
      out.push(simple[next]);
    } else if (next !== undefined && /[0-7]/.test(next)) {
      const oct = /^[0-7]{1,3}/.exec(body.slice(i))![0];
      out.push(parseInt(oct, 8) & 0xff);
      i += oct.length - 1;
    } else {
      out.push(0x5c);
      if (next !== undefined) out.push(next.charCodeAt(0) & 0xff);
    }
  }
  return Buffer.from(out);
}

/**
 * Runs one pickle from `data[start]` to its STOP opcode.
 * @throws RoundtripError naming `options.source`, the opcode and its byte offset for anything outside the
 *   data-only subset; PickleTruncatedError when the data ends before STOP.
 */
export function unpickle(data: Buffer, options: UnpickleOptions, start = 0): UnpickleResult {
  const { source } = options;
  let pos = start;
  let opcodePos = start;
  let opcodeName = '';
  const stack: PyValue[] = [];
  const marks: number[] = [];
  const memo = new Map<number, PyValue>();

  const fail = (why: string): never => {
    throw new RoundtripError(`${source}: refused pickle: ${why} (opcode ${opcodeName || '?'} at byte ${opcodePos})`);
  };
  const need = (n: number): void => {
    if (n < 0 || pos + n > data.length) {
      throw new PickleTruncatedError(
        `${source}: pickle ends early: ${opcodeName || 'the next opcode'} at byte ${opcodePos} needs ${n} more bytes, ${data.length - pos} left (truncated file, no STOP)`,
      );
    }
  };
  const readU8 = (): number => (need(1), data[pos++]);
  const readU16 = (): number => (need(2), (pos += 2), data.readUInt16LE(pos - 2));
  const readU32 = (): number => (need(4), (pos += 4), data.readUInt32LE(pos - 4));
  const readI32 = (): number => (need(4), (pos += 4), data.readInt32LE(pos - 4));
  const readU64 = (): number => {
    need(8);
    const v = data.readBigUInt64LE(pos);
    pos += 8;
    // Any length beyond the data is refused by need(); clamp so the comparison stays exact.
    return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
  };
  const readBytes = (n: number): Buffer => {
    need(n);
    pos += n;
    return data.subarray(pos - n, pos);
  };
  const readLine = (): string => {
    const nl = data.indexOf(0x0a, pos);
    if (nl < 0) need(data.length - pos + 1);
    const line = data.toString('latin1', pos, nl);
    pos = nl + 1;
    return line.endsWith('\r') ? line.slice(0, -1) : line;
  };
  const pop = (): PyValue => {
    if (stack.length === 0 || (marks.length > 0 && stack.length <= marks[marks.length - 1])) fail('stack underflow');
    return stack.pop() as PyValue;
  };
  const top = (): PyValue => {
    if (stack.length === 0) fail('stack underflow');
    return stack[stack.length - 1];
  };
  const popMark = (): PyValue[] => {
    const mark = marks.pop();
    if (mark === undefined) fail('no MARK on the stack');
    return stack.splice(mark as number);
  };
  const memoGet = (index: number): PyValue => {
    if (!memo.has(index)) fail(`memo slot ${index} was never set`);
    return memo.get(index) as PyValue;
  };
  const memoPut = (index: number): void => {
    memo.set(index, top());
  };
  const resolveGlobal = (module: string, name: string): PyValue => {
    const make = ALLOWED_GLOBALS.get(`${module} ${name}`);
    if (!make) fail(`global "${module} ${name}" is not on the allow-list of data-only globals (nothing was executed)`);
    return (make as () => PyGlobal | TorchDtype)();
  };
  const expectDict = (value: PyValue, what: string): PyDict => {
    if (!(value instanceof PyDict)) fail(`${what} needs a dict, got ${value === null ? 'None' : typeof value}`);
    return value as PyDict;
  };
  const expectList = (value: PyValue, what: string): PyValue[] => {
    if (!Array.isArray(value) || Object.isFrozen(value)) fail(`${what} needs a list`);
    return value as PyValue[];
  };
  const setItems = (dict: PyDict, items: PyValue[]): void => {
    if (items.length % 2 !== 0) fail('SETITEMS needs key/value pairs');
    for (let i = 0; i < items.length; i += 2) dict.set(items[i], items[i + 1]);
  };

  const reduce = (callable: PyValue, args: PyValue): PyValue => {
    if (!(callable instanceof PyGlobal)) fail('REDUCE on a value that is not an allow-listed callable');
    const fn = callable as PyGlobal;
    if (!Array.isArray(args)) fail(`REDUCE of "${fn.module} ${fn.name}" needs an argument tuple`);
    const a = args as PyValue[];
    const bad = (): never => fail(`unexpected arguments to "${fn.module} ${fn.name}"`);
    switch (fn.kind) {
      case 'OrderedDict': {
        const dict = new PyDict('OrderedDict');
        if (a.length > 1) bad();
        if (a.length === 1) {
          if (!Array.isArray(a[0])) bad();
          for (const pair of a[0] as PyValue[]) {
            if (!Array.isArray(pair) || pair.length !== 2) bad();
            dict.set((pair as PyValue[])[0], (pair as PyValue[])[1]);
          }
        }
        return dict;
      }
      case 'rebuild_tensor_v2':
      case 'rebuild_tensor_v3':
      case 'rebuild_parameter':
      case 'rebuild_parameter_with_state':
        if (!options.tensorHook) fail(`"${fn.module} ${fn.name}" needs a tensor reader`);
        return options.tensorHook!(fn, tuple([...a]));
      case 'storage':
        return fail(`storage class "${fn.module} ${fn.name}" may only appear in a persistent id`);
      case 'Size':
        if (a.length > 1 || (a.length === 1 && !Array.isArray(a[0]))) bad();
        for (const d of (a[0] as PyValue[] | undefined) ?? []) if (typeof d !== 'number' || !Number.isInteger(d)) bad();
        return tuple([...((a[0] as PyValue[] | undefined) ?? [])]);
      case 'device': {
        if (typeof a[0] !== 'string' || a.length > 2) bad();
        const [type, index] = (a[0] as string).split(':');
        const explicit = a.length === 2 ? a[1] : index === undefined ? null : Number(index);
        if (explicit !== null && (typeof explicit !== 'number' || !Number.isInteger(explicit))) bad();
        return new TorchDevice(type, explicit as number | null);
      }
      case 'codecs_encode': {
        if (typeof a[0] !== 'string' || (a.length === 2 && typeof a[1] !== 'string') || a.length > 2) bad();
        const encoding = ((a[1] as string | undefined) ?? 'utf-8').toLowerCase().replace('_', '-');
        if (encoding === 'latin1' || encoding === 'latin-1' || encoding === 'iso-8859-1') {
          for (const ch of a[0] as string) if (ch.codePointAt(0)! > 0xff) fail('_codecs.encode: text is not latin-1');
          return Buffer.from(a[0] as string, 'latin1');
        }
        if (encoding === 'utf-8' || encoding === 'utf8') return Buffer.from(a[0] as string, 'utf8');
        return fail(`_codecs.encode with unsupported encoding ${JSON.stringify(a[1])}`);
      }
      case 'set':
      case 'frozenset':
        if (a.length > 1 || (a.length === 1 && !Array.isArray(a[0]))) bad();
        return new Set((a[0] as PyValue[] | undefined) ?? []);
      case 'complex':
        if (a.length > 2 || a.some((x) => typeof x !== 'number')) bad();
        return new PyComplex((a[0] as number | undefined) ?? 0, (a[1] as number | undefined) ?? 0);
      case 'bytearray':
        if (a.length === 0) return new Uint8Array(0);
        if (a.length === 1 && Buffer.isBuffer(a[0])) return new Uint8Array(a[0] as Buffer);
        return bad();
    }
  };

  for (;;) {
    opcodePos = pos;
    opcodeName = '';
    const op = readU8();
    opcodeName = OPCODE_NAMES[op] ?? `0x${op.toString(16).padStart(2, '0')}`;
    switch (op) {
      case 0x80: { // PROTO
        const protocol = readU8();
        if (protocol > 5) fail(`unsupported pickle protocol ${protocol}`);
        break;
      }
      case 0x95: // FRAME: the whole pickle is already in memory
        readU64();
        break;
      case 0x2e: { // STOP
        if (marks.length > 0 || stack.length !== 1) fail(`STOP with ${stack.length} values on the stack`);
        return { value: stack[0], end: pos };
      }
      case 0x28: // MARK
        marks.push(stack.length);
        break;
      case 0x30: // POP
        if (marks.length > 0 && stack.length === marks[marks.length - 1]) marks.pop();
        else pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x4e: stack.push(null); break; // NONE
      case 0x88: stack.push(true); break; // NEWTRUE
      case 0x89: stack.push(false); break; // NEWFALSE
      case 0x4b: stack.push(readU8()); break; // BININT1
      case 0x4d: stack.push(readU16()); break; // BININT2
      case 0x4a: stack.push(readI32()); break; // BININT
      case 0x8a: stack.push(decodeLong(readBytes(readU8()))); break; // LONG1
      case 0x8b: { // LONG4
        const n = readI32();
        if (n < 0) fail('negative LONG4 length');
        stack.push(decodeLong(readBytes(n)));
        break;
      }
      case 0x49: { // INT (protocol 0; "01"/"00" are True/False)
        const line = readLine().trim();
        if (line === '01') stack.push(true);
        else if (line === '00') stack.push(false);
        else if (/^[+-]?\d+$/.test(line)) stack.push(normaliseInt(BigInt(line)));
        else fail(`malformed INT ${JSON.stringify(line)}`);
        break;
      }
      case 0x4c: { // LONG (protocol 0)
        const line = readLine().trim().replace(/L$/, '');
        if (!/^[+-]?\d+$/.test(line)) fail(`malformed LONG ${JSON.stringify(line)}`);
        stack.push(normaliseInt(BigInt(line)));
        break;
      }
      case 0x46: { // FLOAT (protocol 0)
        const line = readLine().trim();
        const special: Record<string, number> = { inf: Infinity, '-inf': -Infinity, nan: NaN, '+inf': Infinity };
        const value = line.toLowerCase() in special ? special[line.toLowerCase()] : Number(line);
        if (Number.isNaN(value) && line.toLowerCase() !== 'nan') fail(`malformed FLOAT ${JSON.stringify(line)}`);
        stack.push(value);
        break;
      }
      case 0x47: // BINFLOAT
        need(8);
        stack.push(data.readDoubleBE(pos));
        pos += 8;
        break;
      case 0x58: stack.push(readBytes(readU32()).toString('utf8')); break; // BINUNICODE
      case 0x8c: stack.push(readBytes(readU8()).toString('utf8')); break; // SHORT_BINUNICODE
      case 0x8d: stack.push(readBytes(readU64()).toString('utf8')); break; // BINUNICODE8
      case 0x56: stack.push(decodeRawUnicodeEscape(Buffer.from(readLine(), 'latin1'))); break; // UNICODE
      case 0x53: stack.push(decodeQuotedString(readLine(), fail).toString('utf8')); break; // STRING (Python 2 str)
      case 0x54: { // BINSTRING
        const n = readI32();
        if (n < 0) fail('negative BINSTRING length');
        stack.push(readBytes(n).toString('utf8'));
        break;
      }
      case 0x55: stack.push(readBytes(readU8()).toString('utf8')); break; // SHORT_BINSTRING
      case 0x42: stack.push(Buffer.from(readBytes(readU32()))); break; // BINBYTES
      case 0x43: stack.push(Buffer.from(readBytes(readU8()))); break; // SHORT_BINBYTES
      case 0x8e: stack.push(Buffer.from(readBytes(readU64()))); break; // BINBYTES8
      case 0x96: stack.push(new Uint8Array(readBytes(readU64()))); break; // BYTEARRAY8
      case 0x29: stack.push(tuple([])); break; // EMPTY_TUPLE
      case 0x74: stack.push(tuple(popMark())); break; // TUPLE
      case 0x85: stack.push(tuple([pop()])); break; // TUPLE1
      case 0x86: { // TUPLE2
        const b = pop();
        const a = pop();
        stack.push(tuple([a, b]));
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop();
        const b = pop();
        const a = pop();
        stack.push(tuple([a, b, c]));
        break;
      }
      case 0x5d: stack.push([]); break; // EMPTY_LIST
      case 0x6c: stack.push(popMark()); break; // LIST
      case 0x61: { // APPEND
        const value = pop();
        expectList(top(), 'APPEND').push(value);
        break;
      }
      case 0x65: { // APPENDS
        const items = popMark();
        const list = expectList(top(), 'APPENDS');
        for (const item of items) list.push(item);
        break;
      }
      case 0x7d: stack.push(new PyDict('dict')); break; // EMPTY_DICT
      case 0x64: { // DICT
        const dict = new PyDict('dict');
        setItems(dict, popMark());
        stack.push(dict);
        break;
      }
      case 0x73: { // SETITEM
        const value = pop();
        const key = pop();
        expectDict(top(), 'SETITEM').set(key, value);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        setItems(expectDict(top(), 'SETITEMS'), items);
        break;
      }
      case 0x8f: stack.push(new Set<PyValue>()); break; // EMPTY_SET
      case 0x90: { // ADDITEMS
        const items = popMark();
        const set = top();
        if (!(set instanceof Set)) fail('ADDITEMS needs a set');
        for (const item of items) (set as Set<PyValue>).add(item);
        break;
      }
      case 0x91: stack.push(new Set(popMark())); break; // FROZENSET
      case 0x67: stack.push(memoGet(Number(readLine()))); break; // GET
      case 0x68: stack.push(memoGet(readU8())); break; // BINGET
      case 0x6a: stack.push(memoGet(readU32())); break; // LONG_BINGET
      case 0x70: { // PUT
        const line = readLine();
        if (!/^\d+$/.test(line)) fail(`malformed PUT index ${JSON.stringify(line)}`);
        memoPut(Number(line));
        break;
      }
      case 0x71: memoPut(readU8()); break; // BINPUT
      case 0x72: memoPut(readU32()); break; // LONG_BINPUT (sparse memo: a huge index costs one entry)
      case 0x94: memoPut(memo.size); break; // MEMOIZE
      case 0x63: { // GLOBAL: checked here, before anything that uses it is even parsed
        const module = readLine();
        const name = readLine();
        stack.push(resolveGlobal(module, name));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail('STACK_GLOBAL needs two strings');
        stack.push(resolveGlobal(module as string, name as string));
        break;
      }
      case 0x52: { // REDUCE
        const args = pop();
        const callable = pop();
        stack.push(reduce(callable, args));
        break;
      }
      case 0x62: { // BUILD: only OrderedDict attributes (state_dict()._metadata), as torch's weights_only loader
        const state = pop();
        const target = top();
        if (!(target instanceof PyDict) || target.pythonType !== 'OrderedDict') fail('BUILD (set object state) is only allowed on an OrderedDict');
        if (!(state instanceof PyDict)) fail('BUILD state of an OrderedDict must be a dict');
        (target as PyDict).attributes = state as PyDict;
        break;
      }
      case 0x51: { // BINPERSID
        const pid = pop();
        if (!options.persistentLoad) fail('persistent id without a storage resolver');
        stack.push(options.persistentLoad!(pid));
        break;
      }
      case 0x50: { // PERSID
        const pid = readLine();
        if (!options.persistentLoad) fail('persistent id without a storage resolver');
        stack.push(options.persistentLoad!(pid));
        break;
      }
      case 0x69: { // INST: would instantiate a class; refused even for allow-listed names
        const module = readLine();
        const name = readLine();
        fail(`INST "${module} ${name}" would instantiate an object; only data is allowed`);
        break;
      }
      case 0x6f: // OBJ
      case 0x81: // NEWOBJ
      case 0x92: // NEWOBJ_EX
        fail('object instantiation is not allowed; only data');
        break;
      case 0x82: // EXT1
      case 0x83: // EXT2
      case 0x84: // EXT4
        fail('extension registry codes are not allowed');
        break;
      case 0x97: // NEXT_BUFFER
      case 0x98: // READONLY_BUFFER
        fail('out-of-band buffers are not supported');
        break;
      default:
        fail(`unknown opcode 0x${op.toString(16).padStart(2, '0')}`);
    }
  }
}
