/**
 * BERT uncased WordPiece tokenizer: google-research/bert `FullTokenizer(do_lower_case=True)` with
 * `max_input_chars_per_word = 100` (the Hugging Face value BLIP uses), plus BLIP's `[DEC]`/`[ENC]`.
 */
import { expectString, invalid } from '../errors';
import { PY_WHITESPACE_CLASS } from './ftfy';
import {
  BatchEncoding,
  BatchOptions,
  DecodeOptions,
  Tokenizer,
  buildBatch,
  checkIds,
  resolveBatchOptions,
} from './types';

export interface BertOptions {
  /** Words longer than this (in code points) become [UNK]. Default 100 (HF); Google's default is 200. */
  maxInputCharsPerWord?: number;
  /** Append BLIP's `[DEC]` and `[ENC]` when the vocabulary lacks them. Default true. */
  blipTokens?: boolean;
  /** Id used for padding. Default: the id of `padToken`. */
  padId?: number;
  /**
   * The padding token (default `[PAD]`). When the vocabulary lacks it, it is appended as an added special token
   * (id = vocabulary size, before BLIP's `[DEC]`/`[ENC]`), as transformers' tokenizer __init__ adds missing
   * special tokens.
   */
  padToken?: string;
  /** Default maximum sequence length. Default 512. */
  modelMaxLength?: number;
}

export interface BertEncodeOptions {
  /**
   * Keep literal special-token strings such as `[MASK]` as one special token, as Hugging Face
   * tokenizers do (default true; BLIP uses this). False reproduces Google's `FullTokenizer`,
   * which splits `[MASK]` into `[`, `mask`, `]`.
   */
  keepSpecialTokens?: boolean;
}

const CONTROL_RE = /(?![\t\n\r])[\p{Cc}\p{Cf}\ufffd]/gu;
const WHITESPACE_RE = /[\t\n\r\p{Zs}]/gu;
/** The CJK Unified Ideograph blocks Google's `_is_chinese_char` lists. */
const CJK_RE = /[\u{4E00}-\u{9FFF}\u{3400}-\u{4DBF}\u{20000}-\u{2A6DF}\u{2A700}-\u{2B73F}\u{2B740}-\u{2B81F}\u{2B820}-\u{2CEAF}\u{F900}-\u{FAFF}\u{2F800}-\u{2FA1F}]/gu;
const PY_SPLIT_RE = new RegExp(`[${PY_WHITESPACE_CLASS}]+`, 'u');
/** ASCII punctuation ranges Google treats as punctuation, plus every Unicode P* character. */
const PUNCT_SPLIT_RE = /([\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e]|\p{P})/u;
const COMBINING_MARK_RE = /\p{Mn}/gu;
const NON_ASCII_RE = /[^\x00-\x7f]/;
const CACHE_LIMIT = 200_000;

/** Reads a `vocab.txt` body: one token per line, id = line number. */
export function parseVocabTxt(body: string, source: string): string[] {
  const lines = body.split('\n');
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  const tokens = lines.map((l) => (l.endsWith('\r') ? l.slice(0, -1) : l));
  if (tokens.length === 0) throw invalid(source, 'a non-empty WordPiece vocabulary', 'an empty file');
  return tokens;
}

export class BertTokenizer implements Tokenizer {
  readonly kind = 'bert' as const;
  readonly vocabSize: number;
  readonly padId: number;
  readonly modelMaxLength: number;
  readonly unkId: number;
  readonly clsId: number;
  readonly sepId: number;
  readonly maskId: number | undefined;
  /** BLIP's decoder BOS `[DEC]` (undefined when BLIP tokens are off and absent). */
  readonly decId: number | undefined;
  /** BLIP's ITM/retrieval start token `[ENC]`. */
  readonly encId: number | undefined;
  readonly maxInputCharsPerWord: number;
  private readonly vocab = new Map<string, number>();
  private readonly tokens: string[];
  private readonly specialIds = new Set<number>();
  private readonly specialRe: RegExp | null;
  private readonly wordCache = new Map<string, number[]>();

  /**
   * @param tokens token strings in id order (vocab.txt lines)
   * @param specialTokens token strings HF treats as special (kept whole, skipped by decode)
   */
  constructor(tokens: readonly string[], options: BertOptions = {}, specialTokens: readonly string[] = []) {
    this.tokens = [...tokens];
    this.tokens.forEach((t, i) => {
      if (!this.vocab.has(t)) this.vocab.set(t, i);
    });
    const padToken = options.padToken ?? '[PAD]';
    if (options.padId === undefined && !this.vocab.has(padToken)) {
      this.vocab.set(padToken, this.tokens.length);
      this.tokens.push(padToken);
    }
    if (options.blipTokens ?? true) {
      for (const t of ['[DEC]', '[ENC]']) {
        if (!this.vocab.has(t)) {
          this.vocab.set(t, this.tokens.length);
          this.tokens.push(t);
        }
      }
    }
    const need = (t: string): number => {
      const id = this.vocab.get(t);
      if (id === undefined) throw invalid('WordPiece vocabulary', `a ${t} token`, 'a vocabulary without it');
      return id;
    };
    this.unkId = need('[UNK]');
    this.clsId = need('[CLS]');
    this.sepId = need('[SEP]');
    this.maskId = this.vocab.get('[MASK]');
    this.decId = this.vocab.get('[DEC]');
    this.encId = this.vocab.get('[ENC]');
    this.padId = options.padId ?? need(padToken);
    this.modelMaxLength = options.modelMaxLength ?? 512;
    this.maxInputCharsPerWord = options.maxInputCharsPerWord ?? 100;
    this.vocabSize = this.tokens.length;
    const specials = new Set<string>([padToken, '[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', '[DEC]', '[ENC]', ...specialTokens]);
    const present = [...specials].filter((t) => this.vocab.has(t));
    for (const t of present) this.specialIds.add(this.vocab.get(t)!);
    // Longest first, so that at one position the longest special token wins (HF's trie does this).
    present.sort((a, b) => b.length - a.length);
    this.specialRe = present.length > 0 ? new RegExp(present.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|'), 'g') : null;
  }

  /** Google's `BasicTokenizer.tokenize` (lower-casing, accent stripping, punctuation split). */
  basicTokenize(text: string): string[] {
    expectString('text', text);
    let clean = text.replace(CONTROL_RE, '').replace(WHITESPACE_RE, ' ');
    clean = clean.replace(CJK_RE, ' $& ');
    const out: string[] = [];
    for (const word of clean.split(PY_SPLIT_RE)) {
      if (word === '') continue;
      let token = word.toLowerCase();
      if (NON_ASCII_RE.test(token)) token = token.normalize('NFD').replace(COMBINING_MARK_RE, '');
      if (token === '') continue;
      for (const piece of token.split(PUNCT_SPLIT_RE)) if (piece !== '') out.push(piece);
    }
    return out;
  }

  /** Greedy longest-match-first WordPiece of one basic token, as ids. */
  private wordPieceIds(word: string): number[] {
    const cached = this.wordCache.get(word);
    if (cached !== undefined) return cached;
    // Work on code points: Python slices strings by code point, not UTF-16 unit.
    const chars = NON_ASCII_RE.test(word) ? Array.from(word) : null;
    const n = chars ? chars.length : word.length;
    let ids: number[];
    if (n > this.maxInputCharsPerWord) ids = [this.unkId];
    else {
      ids = [];
      let start = 0;
      while (start < n) {
        let end = n;
        let found = -1;
        while (start < end) {
          let sub = chars ? chars.slice(start, end).join('') : word.slice(start, end);
          if (start > 0) sub = '##' + sub;
          const id = this.vocab.get(sub);
          if (id !== undefined) {
            found = id;
            break;
          }
          end--;
        }
        if (found < 0) {
          ids = [this.unkId];
          break;
        }
        ids.push(found);
        start = end;
      }
    }
    if (this.wordCache.size >= CACHE_LIMIT) this.wordCache.clear();
    this.wordCache.set(word, ids);
    return ids;
  }

  /** Ids without [CLS]/[SEP]. */
  encode(text: string, options: BertEncodeOptions = {}): number[] {
    const ids: number[] = [];
    this.forEachSegment(text, options, (segment, specialId) => {
      if (specialId !== undefined) ids.push(specialId);
      else for (const word of this.basicTokenize(segment)) for (const id of this.wordPieceIds(word)) ids.push(id);
    });
    return ids;
  }

  /** WordPiece token strings (`##` marks continuations). */
  tokenize(text: string, options: BertEncodeOptions = {}): string[] {
    return this.encode(text, options).map((id) => this.tokens[id]);
  }

  /** `[CLS] ... [SEP]`. */
  encodeWithSpecials(text: string, options: BertEncodeOptions = {}): number[] {
    return [this.clsId, ...this.encode(text, options), this.sepId];
  }

  /** HF-style batch: `[CLS] ... [SEP]` rows, truncation to `maxLength`, padding, attention masks. */
  encodeBatch(texts: readonly string[], options?: BatchOptions & BertEncodeOptions): BatchEncoding {
    if (!Array.isArray(texts)) throw invalid('texts', 'an array of strings', texts);
    const opts = resolveBatchOptions(options, this.modelMaxLength);
    const contents = texts.map((t, i) => this.encode(expectString(`texts[${i}]`, t), options));
    return buildBatch(contents, this.clsId, this.sepId, this.padId, opts);
  }

  /**
   * HF `decode`: pieces joined by spaces, `##` continuations merged, then HF's
   * `clean_up_tokenization` (no space before . ? ! , and in contractions).
   */
  decode(ids: ArrayLike<number>, options: DecodeOptions = {}): string {
    checkIds(ids, this.vocabSize);
    const parts: string[] = [];
    for (let i = 0; i < ids.length; i++) {
      if (options.skipSpecial && this.specialIds.has(ids[i])) continue;
      parts.push(this.tokens[ids[i]]);
    }
    const text = parts.join(' ').replace(/ ##/g, '').trim();
    return text
      .replace(/ \./g, '.')
      .replace(/ \?/g, '?')
      .replace(/ !/g, '!')
      .replace(/ ,/g, ',')
      .replace(/ ' /g, "'")
      .replace(/ n't/g, "n't")
      .replace(/ 'm/g, "'m")
      .replace(/ 's/g, "'s")
      .replace(/ 've/g, "'ve")
      .replace(/ 're/g, "'re");
  }

  idToToken(id: number): string | undefined {
    return this.tokens[id];
  }

  tokenToId(token: string): number | undefined {
    return this.vocab.get(token);
  }

  /** Is this id one of the special tokens ([PAD], [CLS], [SEP], [MASK], [UNK], [DEC], [ENC], ...)? */
  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  /** Splits on literal special tokens (HF mode) and calls back with text pieces or special ids. */
  private forEachSegment(text: string, options: BertEncodeOptions, visit: (segment: string, specialId?: number) => void): void {
    expectString('text', text);
    const re = (options.keepSpecialTokens ?? true) ? this.specialRe : null;
    if (re === null) {
      visit(text);
      return;
    }
    re.lastIndex = 0;
    let last = 0;
    for (let m = re.exec(text); m !== null; m = re.exec(text)) {
      if (m.index > last) visit(text.slice(last, m.index));
      visit('', this.vocab.get(m[0]));
      last = m.index + m[0].length;
    }
    if (last < text.length) visit(text.slice(last));
  }
}
