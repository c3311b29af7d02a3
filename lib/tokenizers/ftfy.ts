/**
 * A port of `ftfy.fix_text` (ftfy 6.3.1, default `TextFixerConfig`) and of Python's `html.unescape`,
 * the text cleaning that openai/CLIP's `simple_tokenizer.basic_clean` runs before BPE.
 *
 * Ported steps, in ftfy's order and with its fixed-point loop: HTML entity unescaping ("auto": off
 * once a line holds a literal `<`), mojibake repair (`fix_encoding`: the badness heuristic, the ten
 * single-byte codecs, `restore_byte_a0`, `replace_lossy_sequences`, `utf-8-variants`,
 * `decode_inconsistent_utf8`, latin-1 -> windows-1252, C1 controls), ligatures, character width,
 * curly quotes, line breaks, surrogates, terminal escapes, control characters and NFC.
 * The character tables are generated from ftfy itself (see scripts/gen-ftfy-tables.py / ftfyTables.ts).
 *
 * Known gaps: Unicode property data comes from the JS engine (ICU), so characters whose
 * category or normalisation changed between Unicode versions may differ from Python 3.11.
 */
import {
  BADNESS_SOURCE,
  CHARMAP_ALLOWED,
  CHARMAP_DECODE,
  CHARMAP_ENCODINGS,
  CONTROL_CHARS,
  FTFY_EXTRA_ENTITIES,
  HTML5_ENTITIES,
  INVALID_CHARREFS,
  INVALID_CODEPOINTS,
  LIGATURES,
  UTF8_DETECTOR_SOURCE,
  WIDTH_MAP,
  WINDOWS_1252_STRICT,
} from './ftfyTables';

/** Python's `str.isspace()` characters, which `re`'s `\s` and `str.strip()/split()` use. */
export const PY_WHITESPACE_CLASS = '\\t\\n\\u000b\\f\\r\\u001c-\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';

const BADNESS_RE = new RegExp(BADNESS_SOURCE, 'u');
const UTF8_DETECTOR_RE = new RegExp(UTF8_DETECTOR_SOURCE, 'gu');
const ASCII_ONLY_RE = /^[\x00-\x7f]*$/;
const C1_CONTROL_RE = /[\x80-\x9f]/g;
const SINGLE_QUOTE_RE = /[\u02bc\u2018-\u201b]/g;
const DOUBLE_QUOTE_RE = /[\u201c-\u201f]/g;
const ANSI_RE = /\x1b\[((?:\d|;)*)([a-zA-Z])/g;
const FTFY_ENTITY_RE = /&#?[0-9A-Za-z]{1,24};/g;
const PY_CHARREF_RE = /&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)/gu;
const LONE_SURROGATE_RE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

// Byte-level regexes run over "binary strings" (one char per byte, code 0..255).
const A_GRAVE_WORD_RE = /\xc3 (?! |quele|quela|quilo|s )/g;
const ALTERED_UTF8_RE =
  /[\xc2\xc3\xc5\xce\xd0\xd9][ ]|[\xe2\xe3][ ][\x80-\x84\x86-\x9f\xa1-\xbf]|[\xe0-\xe3][\x80-\x84\x86-\x9f\xa1-\xbf][ ]|[\xf0][ ][\x80-\xbf][\x80-\xbf]|[\xf0][\x80-\xbf][ ][\x80-\xbf]|[\xf0][\x80-\xbf][\x80-\xbf][ ]/g;
const LOSSY_UTF8_RE = new RegExp(
  [
    '[\\xc2-\\xdf][\\x1a]',
    '[\\xc2-\\xc3][?]',
    '\\xed[\\xa0-\\xaf][\\x1a?]\\xed[\\xb0-\\xbf][\\x1a?\\x80-\\xbf]',
    '\\xed[\\xa0-\\xaf][\\x1a?\\x80-\\xbf]\\xed[\\xb0-\\xbf][\\x1a?]',
    '[\\xe0-\\xef][\\x1a?][\\x1a\\x80-\\xbf]',
    '[\\xe0-\\xef][\\x1a\\x80-\\xbf][\\x1a?]',
    '[\\xf0-\\xf4][\\x1a?][\\x1a\\x80-\\xbf][\\x1a\\x80-\\xbf]',
    '[\\xf0-\\xf4][\\x1a\\x80-\\xbf][\\x1a?][\\x1a\\x80-\\xbf]',
    '[\\xf0-\\xf4][\\x1a\\x80-\\xbf][\\x1a\\x80-\\xbf][\\x1a?]',
    '\\x1a',
  ].join('|'),
  'g',
);
const UTF8_REPLACEMENT_BYTES = '\xef\xbf\xbd';

/** Per-encoding lookup tables, built once. */
interface Charmap {
  allowed: Set<number>;
  encode: Map<number, number>;
}
const CHARMAPS = new Map<string, Charmap>();
for (const enc of CHARMAP_ENCODINGS) {
  const allowed = new Set<number>();
  for (const ch of CHARMAP_ALLOWED[enc]) allowed.add(ch.charCodeAt(0));
  const table = CHARMAP_DECODE[enc];
  const encode = new Map<number, number>();
  // Python's charmap_build keeps the first byte for a repeated character.
  for (let b = 0; b < 256; b++) if (!encode.has(table.charCodeAt(b))) encode.set(table.charCodeAt(b), b);
  CHARMAPS.set(enc, { allowed, encode });
}
const CONTROL_SET = new Set<number>(CONTROL_CHARS);
const INVALID_CODEPOINT_SET = new Set<number>(INVALID_CODEPOINTS);
const SLOPPY_1252 = CHARMAP_DECODE['sloppy-windows-1252'];
const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** `ftfy.badness.is_bad`: does the text contain a sequence typical of mojibake? */
export function isBad(text: string): boolean {
  return BADNESS_RE.test(text);
}

function possibleEncoding(text: string, encoding: string): boolean {
  const { allowed } = CHARMAPS.get(encoding)!;
  for (let i = 0; i < text.length; i++) if (!allowed.has(text.charCodeAt(i))) return false;
  return true;
}

/** Encodes with a single-byte codec into a binary string; caller checked `possibleEncoding`. */
function encodeBinary(text: string, encoding: string): string {
  const { encode } = CHARMAPS.get(encoding)!;
  let out = '';
  for (let i = 0; i < text.length; i++) {
    const b = encode.get(text.charCodeAt(i));
    if (b === undefined) throw new Error('unencodable');
    out += String.fromCharCode(b);
  }
  return out;
}

function binaryToBytes(bin: string): Uint8Array {
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

/** Strict UTF-8; returns null where Python's decoder would raise. */
function decodeUtf8Strict(bin: string): string | null {
  try {
    return STRICT_UTF8.decode(binaryToBytes(bin));
  } catch {
    return null;
  }
}

/**
 * ftfy's `utf-8-variants` codec: UTF-8 plus Java's `C0 80` for NUL and CESU-8 surrogate pairs
 * (a lone 3-byte surrogate decodes to the surrogate, which fix_surrogates later replaces).
 */
function decodeUtf8Variants(bin: string): string | null {
  const special = /\xc0\x80|\xed[\xa0-\xaf][\x80-\xbf]\xed[\xb0-\xbf][\x80-\xbf]|\xed[\xa0-\xbf][\x80-\xbf]/g;
  let out = '';
  let last = 0;
  for (let m = special.exec(bin); m !== null; m = special.exec(bin)) {
    const plain = decodeUtf8Strict(bin.slice(last, m.index));
    if (plain === null) return null;
    out += plain;
    const s = m[0];
    if (s.length === 2) out += '\x00';
    else if (s.length === 6) {
      const hi = 0xd000 | ((s.charCodeAt(1) & 0x3f) << 6) | (s.charCodeAt(2) & 0x3f);
      const lo = 0xd000 | ((s.charCodeAt(4) & 0x3f) << 6) | (s.charCodeAt(5) & 0x3f);
      out += String.fromCharCode(hi, lo);
    } else out += String.fromCharCode(0xd000 | ((s.charCodeAt(1) & 0x3f) << 6) | (s.charCodeAt(2) & 0x3f));
    last = m.index + s.length;
  }
  const rest = decodeUtf8Strict(bin.slice(last));
  return rest === null ? null : out + rest;
}

function restoreByteA0(bin: string): string {
  return bin.replace(A_GRAVE_WORD_RE, '\xc3\xa0 ').replace(ALTERED_UTF8_RE, (m) => m.replace(/ /g, '\xa0'));
}

/** One step of `ftfy._fix_encoding_one_step_and_explain`. */
function fixEncodingOneStep(text: string): string {
  if (text.length === 0 || ASCII_ONLY_RE.test(text) || !isBad(text)) return text;
  const possible: string[] = [];
  for (const encoding of CHARMAP_ENCODINGS) {
    if (!possibleEncoding(text, encoding)) continue;
    possible.push(encoding);
    let bin = encodeBinary(text, encoding);
    if (encoding !== 'macroman') {
      ALTERED_UTF8_RE.lastIndex = 0;
      if (ALTERED_UTF8_RE.test(bin)) bin = restoreByteA0(bin);
      ALTERED_UTF8_RE.lastIndex = 0;
    }
    if (encoding.startsWith('sloppy')) bin = bin.replace(LOSSY_UTF8_RE, UTF8_REPLACEMENT_BYTES);
    const variants = bin.includes('\xed') || bin.includes('\xc0');
    const fixed = variants ? decodeUtf8Variants(bin) : decodeUtf8Strict(bin);
    if (fixed !== null) return fixed;
  }
  UTF8_DETECTOR_RE.lastIndex = 0;
  if (UTF8_DETECTOR_RE.test(text)) {
    UTF8_DETECTOR_RE.lastIndex = 0;
    const fixed = text.replace(UTF8_DETECTOR_RE, (sub) => (sub.length < text.length && isBad(sub) ? fixEncoding(sub) : sub));
    if (fixed !== text) return fixed;
  }
  UTF8_DETECTOR_RE.lastIndex = 0;
  // ftfy checks for "windows-1252" in a list that only ever holds "sloppy-windows-1252", so any
  // latin-1-encodable text is re-decoded as strict windows-1252 (failing on its 5 undefined bytes).
  if (possible.includes('latin-1')) {
    let fixed = '';
    let ok = true;
    for (let i = 0; i < text.length && ok; i++) {
      const ch = WINDOWS_1252_STRICT[text.charCodeAt(i)];
      if (ch === '') ok = false;
      else fixed += ch;
    }
    if (ok && fixed !== text) return fixed;
  }
  if (/[\x80-\x9f]/.test(text)) return fixC1Controls(text);
  return text;
}

/** `ftfy.fix_encoding`: repeats the one-step fix until the text stops changing. */
export function fixEncoding(text: string): string {
  for (;;) {
    const next = fixEncodingOneStep(text);
    if (next === text) return text;
    text = next;
  }
}

function fixC1Controls(text: string): string {
  return text.replace(C1_CONTROL_RE, (c) => SLOPPY_1252[c.charCodeAt(0)]);
}

function mapCodePoints(text: string, table: Record<number, string>, test: RegExp): string {
  if (!test.test(text)) return text;
  let out = '';
  for (const ch of text) {
    const rep = table[ch.codePointAt(0)!];
    out += rep === undefined ? ch : rep;
  }
  return out;
}
const LIGATURE_TEST = new RegExp('[' + Object.keys(LIGATURES).map((k) => `\\u{${Number(k).toString(16)}}`).join('') + ']', 'u');
const WIDTH_TEST = /[\u3000\uff01-\uffef]/;

function removeControlChars(text: string): string {
  let out = '';
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    if (CONTROL_SET.has(text.charCodeAt(i))) {
      out += text.slice(start, i);
      start = i + 1;
    }
  }
  return start === 0 ? text : out + text.slice(start);
}

/** Python's `html.unescape` (HTML5 named and numeric character references). */
export function htmlUnescape(text: string): string {
  if (!text.includes('&')) return text;
  PY_CHARREF_RE.lastIndex = 0;
  return text.replace(PY_CHARREF_RE, (_m, ref: string) => {
    if (ref[0] === '#') {
      const hex = ref[1] === 'x' || ref[1] === 'X';
      const digits = ref.slice(hex ? 2 : 1).replace(/;$/, '');
      const num = parseInt(digits, hex ? 16 : 10);
      const remapped = INVALID_CHARREFS[num];
      if (remapped !== undefined) return remapped;
      if ((num >= 0xd800 && num <= 0xdfff) || num > 0x10ffff) return '\ufffd';
      if (INVALID_CODEPOINT_SET.has(num)) return '';
      return String.fromCodePoint(num);
    }
    const named = HTML5_ENTITIES[ref];
    if (named !== undefined) return named;
    // The standard's rule: the longest known prefix (entities such as "&copy" need no ';').
    const chars = Array.from(ref);
    for (let x = chars.length - 1; x > 1; x--) {
      const prefix = chars.slice(0, x).join('');
      const value = HTML5_ENTITIES[prefix];
      if (value !== undefined) return value + chars.slice(x).join('');
    }
    return '&' + ref;
  });
}

/** `ftfy.fixes.unescape_html`: only complete `&...;` references, plus upper-cased names. */
function ftfyUnescapeHtml(text: string): string {
  if (!text.includes('&')) return text;
  return text.replace(FTFY_ENTITY_RE, (ent) => {
    const name = ent.slice(1);
    if (name.endsWith(';') && HTML5_ENTITIES[name] !== undefined) return HTML5_ENTITIES[name];
    const extra = FTFY_EXTRA_ENTITIES[ent];
    if (extra !== undefined) return extra;
    if (ent.startsWith('&#')) {
      const unescaped = htmlUnescape(ent);
      return unescaped.includes(';') ? ent : unescaped;
    }
    return ent;
  });
}

function fixSurrogates(text: string): string {
  // JS strings already pair surrogates; only lone halves remain to replace.
  return text.replace(LONE_SURROGATE_RE, '\ufffd');
}

/** `ftfy.fix_and_explain` for one segment, default configuration. */
function fixSegment(text: string, unescapeHtml: boolean): string {
  for (;;) {
    const orig = text;
    if (unescapeHtml) text = ftfyUnescapeHtml(text);
    text = fixEncoding(text);
    text = fixC1Controls(text);
    text = mapCodePoints(text, LIGATURES, LIGATURE_TEST);
    text = mapCodePoints(text, WIDTH_MAP, WIDTH_TEST);
    text = text.replace(DOUBLE_QUOTE_RE, '"').replace(SINGLE_QUOTE_RE, "'");
    text = text.replace(/\r\n/g, '\n').replace(/[\r\u2028\u2029\u0085]/g, '\n');
    text = fixSurrogates(text);
    text = text.replace(ANSI_RE, '');
    text = removeControlChars(text);
    text = text.normalize('NFC');
    if (text === orig) return text;
  }
}

/** ftfy's `max_decode_length`: longer lines are fixed in pieces of this size. */
const MAX_DECODE_LENGTH = 1_000_000;

/** `ftfy.fix_text(text)` with ftfy 6.3.1's defaults: fixes each line in turn. */
export function fixText(text: string): string {
  let out = '';
  let pos = 0;
  let unescapeHtml = true;
  while (pos < text.length) {
    let brk = text.indexOf('\n', pos) + 1;
    if (brk === 0) brk = text.length;
    if (brk - pos > MAX_DECODE_LENGTH) brk = pos + MAX_DECODE_LENGTH;
    const segment = text.slice(pos, brk);
    // "auto": a literal '<' means real HTML, whose entities stay (for this and later lines).
    if (unescapeHtml && segment.includes('<')) unescapeHtml = false;
    out += fixSegment(segment, unescapeHtml);
    pos = brk;
  }
  return out;
}
