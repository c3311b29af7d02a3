/** The common tokenizer interface and batch encoding shared by the BERT and CLIP tokenizers. */
import { expectBoolean, expectInteger, expectOneOf, invalid } from '../errors';

/** Which algorithm a tokenizer implements. */
export const TOKENIZER_KINDS = ['bert', 'clip', 'opt'] as const;
export type TokenizerKind = (typeof TOKENIZER_KINDS)[number];

/** Padding rule of a batch: to the longest row, to `maxLength`, or none (ragged rows). */
export type Padding = 'longest' | 'max_length' | false;

export interface BatchOptions {
  /** Default 'longest'. */
  padding?: Padding;
  /** Maximum length including the special tokens; default: the tokenizer's `modelMaxLength`. */
  maxLength?: number;
  /** Cut rows longer than `maxLength` (default true); when false, such a row is an error. */
  truncation?: boolean;
}

/** The result of encoding several texts at once (rows include the special tokens). */
export interface BatchEncoding {
  inputIds: number[][];
  /** 1 for real tokens, 0 for padding. */
  attentionMask: number[][];
  /** Per row: did truncation drop tokens? (callers warn about it) */
  truncated: boolean[];
}

export interface DecodeOptions {
  /** Leave out special tokens ([CLS], [SEP], [PAD], ..., or CLIP's start/end of text). Default false. */
  skipSpecial?: boolean;
}

/** What every tokenizer offers; `loadTokenizer` returns one of these. */
export interface Tokenizer {
  readonly kind: TokenizerKind;
  /** Number of ids (the embedding table size the model needs). */
  readonly vocabSize: number;
  /** Id used for padding. */
  readonly padId: number;
  /** Default maximum sequence length including special tokens. */
  readonly modelMaxLength: number;
  /** Ids of the text, without special tokens. */
  encode(text: string): number[];
  /** The token strings `encode` maps to ids (WordPiece pieces or BPE tokens). */
  tokenize(text: string): string[];
  /** Ids with the model's start and end tokens around them. */
  encodeWithSpecials(text: string): number[];
  /** Encodes texts with truncation, padding and attention masks. */
  encodeBatch(texts: readonly string[], options?: BatchOptions): BatchEncoding;
  /** Text of the ids. */
  decode(ids: ArrayLike<number>, options?: DecodeOptions): string;
  /** The token string of an id, or undefined. */
  idToToken(id: number): string | undefined;
  /** The id of a token string, or undefined. */
  tokenToId(token: string): number | undefined;
}

/** Checked, defaulted batch options. */
export interface ResolvedBatchOptions {
  padding: Padding;
  maxLength: number;
  truncation: boolean;
}

export function resolveBatchOptions(options: BatchOptions | undefined, modelMaxLength: number): ResolvedBatchOptions {
  const padding = options?.padding ?? 'longest';
  if (padding !== false) expectOneOf('padding', padding, ['longest', 'max_length'] as const);
  const maxLength = expectInteger('maxLength', options?.maxLength ?? modelMaxLength, { min: 2 });
  const truncation = expectBoolean('truncation', options?.truncation ?? true);
  return { padding, maxLength, truncation };
}

/**
 * Wraps content ids as `start ... end`, truncating the content so the row fits `maxLength`
 * (the rule of both HF `truncation=True` and openai's `clip.tokenize(truncate=True)`), then pads.
 */
export function buildBatch(
  contents: readonly number[][],
  startId: number,
  endId: number,
  padId: number,
  opts: ResolvedBatchOptions,
): BatchEncoding {
  const rows: number[][] = [];
  const truncated: boolean[] = [];
  for (let i = 0; i < contents.length; i++) {
    let content = contents[i];
    const cut = content.length + 2 > opts.maxLength;
    if (cut) {
      if (!opts.truncation) throw invalid(`text ${i}`, `at most ${opts.maxLength} tokens including the special tokens`, `${content.length + 2} tokens`);
      content = content.slice(0, opts.maxLength - 2);
    }
    rows.push([startId, ...content, endId]);
    truncated.push(cut);
  }
  let width = 0;
  if (opts.padding === 'max_length') width = opts.maxLength;
  else if (opts.padding === 'longest') for (const r of rows) width = Math.max(width, r.length);
  const attentionMask: number[][] = [];
  for (const row of rows) {
    const mask = new Array<number>(Math.max(width, row.length)).fill(0);
    mask.fill(1, 0, row.length);
    for (let j = row.length; j < width; j++) row.push(padId);
    attentionMask.push(mask);
  }
  return { inputIds: rows, attentionMask, truncated };
}

/** Row-major copy of equally long rows, the layout a model input tensor wants. */
export function flattenRows(rows: readonly number[][]): Int32Array {
  const width = rows.length > 0 ? rows[0].length : 0;
  const out = new Int32Array(rows.length * width);
  rows.forEach((row, i) => {
    if (row.length !== width) throw invalid(`row ${i}`, `${width} ids like row 0 (pad the batch)`, `${row.length} ids`);
    out.set(row, i * width);
  });
  return out;
}

export function checkIds(ids: ArrayLike<number>, vocabSize: number): void {
  for (let i = 0; i < ids.length; i++) expectInteger(`ids[${i}]`, ids[i], { min: 0, max: vocabSize - 1 });
}
