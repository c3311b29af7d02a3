/**
 * CLIP byte-level BPE tokenizer, a port of openai/CLIP `clip/simple_tokenizer.py` (d05afc4) and of
 * `clip.tokenize`, with the Stable Diffusion 1.x padding convention as the configurable default.
 */
import { expectBoolean, expectInteger, expectString, invalid, RoundtripError } from '../errors';
import { PY_WHITESPACE_CLASS, fixText, htmlUnescape } from './ftfy';
import {
  BatchEncoding,
  BatchOptions,
  DecodeOptions,
  Tokenizer,
  buildBatch,
  checkIds,
  resolveBatchOptions,
} from './types';

export const START_OF_TEXT = '<|startoftext|>';
export const END_OF_TEXT = '<|endoftext|>';
/** Merges openai's CLIP uses from `bpe_simple_vocab_16e6.txt.gz`: `merges[1 : 49152-256-2+1]`. */
export const OPENAI_MERGE_COUNT = 49152 - 256 - 2;

const WS_RUN_RE = new RegExp(`[${PY_WHITESPACE_CLASS}]+`, 'gu');
const EDGE_WS_RE = new RegExp(`^[${PY_WHITESPACE_CLASS}]+|[${PY_WHITESPACE_CLASS}]+$`, 'gu');
/** openai's pre-tokenizer (`regex` module, IGNORECASE), with Python's `\s`. */
const PRE_TOKEN_RE = new RegExp(
  `<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^${PY_WHITESPACE_CLASS}\\p{L}\\p{N}]+`,
  'giu',
);
const CACHE_LIMIT = 200_000;

/** GPT-2's reversible byte -> printable character map (`bytes_to_unicode`). */
export function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const map = new Array<string>(256);
  for (const b of bs) map[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (map[b] === undefined) map[b] = String.fromCharCode(256 + n++);
  return map;
}

/**
 * openai's id table: the 256 byte characters in `bytes_to_unicode()` dict order (the 188 printable
 * bytes first, then the 68 remapped ones), the same + `</w>`, one id per merge, then the specials.
 */
export function openaiVocab(merges: readonly (readonly [string, string])[]): string[] {
  const map = bytesToUnicode();
  const printable = (b: number): boolean => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const order = [...Array(256).keys()].filter(printable).concat([...Array(256).keys()].filter((b) => !printable(b)));
  const bytes = order.map((b) => map[b]);
  const vocab = [...bytes, ...bytes.map((c) => c + '</w>')];
  for (const [a, b] of merges) vocab.push(a + b);
  vocab.push(START_OF_TEXT, END_OF_TEXT);
  return vocab;
}

/** Parses merge lines (`a b`), skipping a `#version` header and blank lines. */
export function parseMerges(lines: readonly string[], source: string): [string, string][] {
  const merges: [string, string][] = [];
  lines.forEach((raw, i) => {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line === '' || (i === 0 && line.startsWith('#version'))) return;
    const parts = line.split(' ');
    if (parts.length !== 2 || parts[0] === '' || parts[1] === '') throw invalid(`${source} line ${i + 1}`, 'a merge "a b"', line);
    merges.push([parts[0], parts[1]]);
  });
  return merges;
}

/** openai's `basic_clean` + `whitespace_clean` + lower-case: the text BPE sees. */
export function cleanClipText(text: string): string {
  let t = htmlUnescape(htmlUnescape(fixText(text))).replace(EDGE_WS_RE, '');
  t = t.replace(WS_RUN_RE, ' ').replace(EDGE_WS_RE, '');
  return t.toLowerCase();
}

/** Fixed-length encoding result (`clip.tokenize`-style rows). */
export interface FixedLengthIds {
  /** Exactly `contextLength` ids. */
  ids: number[];
  /** Did the text not fit (the caller should warn)? */
  truncated: boolean;
  /** Length of the untruncated `SOT ... EOT` sequence. */
  fullLength: number;
}

export interface ClipOptions {
  /** Padding id of `encodeFixed`/`encodeBatch`; default `<|endoftext|>` (SD 1.x). SD 2.x uses 0. */
  padId?: number;
  /** Default context length; 77. */
  modelMaxLength?: number;
}

export class ClipTokenizer implements Tokenizer {
  readonly kind = 'clip' as const;
  readonly vocabSize: number;
  readonly padId: number;
  readonly modelMaxLength: number;
  readonly sotId: number;
  readonly eotId: number;
  private readonly encoder = new Map<string, number>();
  private readonly decoder: string[];
  private readonly ranks = new Map<string, number>();
  private readonly byteEncoder = bytesToUnicode();
  private readonly byteDecoder = new Map<string, number>();
  private readonly cache = new Map<string, string[]>();

  /**
   * @param vocab token -> id (must hold `<|startoftext|>` and `<|endoftext|>`)
   * @param merges merge pairs in rank order
   */
  constructor(vocab: ReadonlyMap<string, number>, merges: readonly (readonly [string, string])[], options: ClipOptions = {}) {
    let maxId = -1;
    for (const [token, id] of vocab) {
      expectInteger(`vocabulary id of ${JSON.stringify(token)}`, id, { min: 0 });
      this.encoder.set(token, id);
      maxId = Math.max(maxId, id);
    }
    this.decoder = new Array<string>(maxId + 1);
    for (const [token, id] of vocab) this.decoder[id] = token;
    merges.forEach(([a, b], rank) => {
      const key = a + ' ' + b;
      if (!this.ranks.has(key)) this.ranks.set(key, rank);
    });
    this.byteEncoder.forEach((c, b) => this.byteDecoder.set(c, b));
    const need = (t: string): number => {
      const id = this.encoder.get(t);
      if (id === undefined) throw invalid('CLIP vocabulary', `a ${t} token`, 'a vocabulary without it');
      return id;
    };
    this.sotId = need(START_OF_TEXT);
    this.eotId = need(END_OF_TEXT);
    this.vocabSize = maxId + 1;
    this.padId = expectInteger('padId', options.padId ?? this.eotId, { min: 0, max: maxId });
    this.modelMaxLength = expectInteger('modelMaxLength', options.modelMaxLength ?? 77, { min: 2 });
    // openai seeds the cache so that literal special strings stay single tokens.
    this.cache.set(START_OF_TEXT, [START_OF_TEXT]);
    this.cache.set(END_OF_TEXT, [END_OF_TEXT]);
  }

  /** The cleaned text (ftfy, double HTML unescape, whitespace collapse, strip, lower-case). */
  clean(text: string): string {
    return cleanClipText(expectString('text', text));
  }

  /** The regex pieces of the cleaned text. */
  preTokenize(text: string): string[] {
    return this.clean(text).match(PRE_TOKEN_RE) ?? [];
  }

  /** BPE of one byte-encoded piece: symbols ending in `</w>` at the word end. */
  private bpe(token: string): string[] {
    const cached = this.cache.get(token);
    if (cached !== undefined) return cached;
    let word: string[] = Array.from(token);
    word[word.length - 1] += '</w>';
    while (word.length > 1) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < word.length - 1; i++) {
        const rank = this.ranks.get(word[i] + ' ' + word[i + 1]);
        if (rank !== undefined && rank < bestRank) {
          bestRank = rank;
          best = i;
        }
      }
      if (best < 0) break;
      const first = word[best];
      const second = word[best + 1];
      // Merge every non-overlapping occurrence of the best pair, left to right.
      const merged: string[] = [];
      for (let i = 0; i < word.length; ) {
        if (i < word.length - 1 && word[i] === first && word[i + 1] === second) {
          merged.push(first + second);
          i += 2;
        } else merged.push(word[i++]);
      }
      word = merged;
    }
    if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
    this.cache.set(token, word);
    return word;
  }

  private byteEncode(piece: string): string {
    let out = '';
    for (const b of Buffer.from(piece, 'utf8')) out += this.byteEncoder[b];
    return out;
  }

  /** BPE token strings (`</w>` marks a word end). */
  tokenize(text: string): string[] {
    const out: string[] = [];
    for (const piece of this.preTokenize(text)) for (const t of this.bpe(this.byteEncode(piece))) out.push(t);
    return out;
  }

  /** Ids without start/end tokens (openai `SimpleTokenizer.encode`). */
  encode(text: string): number[] {
    const ids: number[] = [];
    for (const piece of this.preTokenize(text)) {
      for (const t of this.bpe(this.byteEncode(piece))) {
        // A symbol missing from the vocabulary can only come from inconsistent files; HF maps it to unk.
        ids.push(this.encoder.get(t) ?? this.eotId);
      }
    }
    return ids;
  }

  /** `<|startoftext|> ... <|endoftext|>`, untruncated. */
  encodeWithSpecials(text: string): number[] {
    return [this.sotId, ...this.encode(text), this.eotId];
  }

  /**
   * A `contextLength` row: SOT + ids + EOT, padded with `padId`; a longer sequence keeps its first
   * `contextLength` ids with the last set to EOT (`truncate: true`, default) or is an error.
   */
  encodeFixed(text: string, options: { contextLength?: number; padId?: number; truncate?: boolean } = {}): FixedLengthIds {
    const contextLength = expectInteger('contextLength', options.contextLength ?? this.modelMaxLength, { min: 2 });
    const padId = expectInteger('padId', options.padId ?? this.padId, { min: 0, max: this.vocabSize - 1 });
    const truncate = expectBoolean('truncate', options.truncate ?? true);
    const full = this.encodeWithSpecials(text);
    const truncated = full.length > contextLength;
    if (truncated && !truncate) {
      throw new RoundtripError(`Input ${JSON.stringify(text.length > 60 ? text.slice(0, 57) + '...' : text)} is too long for context length ${contextLength}: it has ${full.length} tokens`);
    }
    const ids = full.slice(0, contextLength);
    if (truncated) ids[contextLength - 1] = this.eotId;
    while (ids.length < contextLength) ids.push(padId);
    return { ids, truncated, fullLength: full.length };
  }

  /** Stable Diffusion 1.x text-encoder input: 77 ids padded with this tokenizer's pad id (49407 unless configured). */
  sd77(text: string): FixedLengthIds {
    return this.encodeFixed(text, { contextLength: 77 });
  }

  /** `clip.tokenize(text, context_length=77, truncate)`: padded with 0; throws when too long and `truncate` is false. */
  openai77(text: string, truncate = true): FixedLengthIds {
    return this.encodeFixed(text, { contextLength: 77, padId: 0, truncate });
  }

  /** Batch of `SOT ... EOT` rows padded with `padId` (default: to `modelMaxLength`). */
  encodeBatch(texts: readonly string[], options?: BatchOptions): BatchEncoding {
    if (!Array.isArray(texts)) throw invalid('texts', 'an array of strings', texts);
    const opts = resolveBatchOptions({ padding: 'max_length', ...options }, this.modelMaxLength);
    return buildBatch(texts.map((t) => this.encode(t)), this.sotId, this.eotId, this.padId, opts);
  }

  /** openai `decode`: byte-decode the concatenated tokens, `</w>` -> space. */
  decode(ids: ArrayLike<number>, options: DecodeOptions = {}): string {
    checkIds(ids, this.vocabSize);
    let text = '';
    for (let i = 0; i < ids.length; i++) {
      if (options.skipSpecial && (ids[i] === this.sotId || ids[i] === this.eotId)) continue;
      const token = this.decoder[ids[i]];
      if (token === undefined) throw invalid(`ids[${i}]`, 'an id present in the vocabulary', ids[i]);
      text += token;
    }
    const bytes: number[] = [];
    for (const ch of text) {
      const b = this.byteDecoder.get(ch);
      if (b === undefined) throw invalid('decoded token text', 'byte-level BPE characters only', ch);
      bytes.push(b);
    }
    return Buffer.from(bytes).toString('utf8').replace(/<\/w>/g, ' ');
  }

  idToToken(id: number): string | undefined {
    return this.decoder[id];
  }

  tokenToId(token: string): number | undefined {
    return this.encoder.get(token);
  }
}
