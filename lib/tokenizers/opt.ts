/**
 * GPT-2 byte-level BPE with OPT's fairseq id layout (facebook/opt-*, Salesforce/blip2-opt-*): transformers'
 * slow `GPT2Tokenizer(vocab.json, merges.txt, add_bos_token=True)`, exact on
 * shared/fixtures/metrics/opt_tokenizer_cases.json. Ids come from `vocab.json` (OPT's is not "GPT-2 id + 4":
 * see shared/vocab/opt/README.md); BOS = EOS = UNK = `</s>` (2), PAD = `<pad>` (1); encoding puts BOS first
 * and appends nothing.
 */
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError, expectString, invalid } from '../errors';
import { readJsonFile } from '../json';
import { bytesToUnicode, parseMerges } from './clip';
import { BatchEncoding, BatchOptions, DecodeOptions, Tokenizer, resolveBatchOptions } from './types';

export const OPT_VOCAB_FILE = 'vocab.json';
export const OPT_MERGES_FILE = 'merges.txt';

/** GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols, whitespace runs. */
const GPT2_PATTERN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

export interface OptTokenizerOptions {
  bosToken?: string;
  eosToken?: string;
  unkToken?: string;
  padToken?: string;
  /** Default 2048 (OPT's max_position_embeddings). */
  modelMaxLength?: number;
  /** transformers' clean_up_tokenization in decode (4.37 default true). */
  cleanUpSpaces?: boolean;
}

export class OptTokenizer implements Tokenizer {
  readonly kind = 'opt' as const;
  readonly vocabSize: number;
  readonly padId: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly unkId: number;
  readonly modelMaxLength: number;
  private readonly encoder: Map<string, number>;
  private readonly decoder: Map<number, string>;
  private readonly ranks: Map<string, number>;
  private readonly byteEncoder: string[];
  private readonly byteDecoder: Map<string, number>;
  private readonly special: Map<string, number>;
  private readonly specialPattern: RegExp;
  private readonly cleanUpSpaces: boolean;
  private readonly cache = new Map<string, string[]>();

  constructor(vocab: Record<string, number>, merges: readonly (readonly [string, string])[], opts: OptTokenizerOptions = {}) {
    this.encoder = new Map(Object.entries(vocab));
    this.decoder = new Map();
    for (const [tok, id] of this.encoder) {
      if (!Number.isInteger(id) || id < 0) throw invalid(`vocab entry '${tok}'`, 'a non-negative integer id', id);
      this.decoder.set(id, tok);
    }
    this.ranks = new Map(merges.map(([a, b], i) => [`${a} ${b}`, i]));
    this.byteEncoder = bytesToUnicode();
    this.byteDecoder = new Map(this.byteEncoder.map((c, b) => [c, b]));
    const id = (name: string, token: string): number => {
      const v = this.encoder.get(token);
      if (v === undefined) throw new RoundtripError(`OPT tokenizer: the vocabulary has no ${name} token '${token}'`);
      return v;
    };
    const bos = opts.bosToken ?? '</s>';
    const eos = opts.eosToken ?? '</s>';
    const unk = opts.unkToken ?? '</s>';
    const pad = opts.padToken ?? '<pad>';
    this.bosId = id('bos', bos);
    this.eosId = id('eos', eos);
    this.unkId = id('unk', unk);
    this.padId = id('pad', pad);
    this.special = new Map([bos, eos, unk, pad].map((t) => [t, this.encoder.get(t) as number]));
    const escaped = [...this.special.keys()].sort((a, b) => b.length - a.length).map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
    this.specialPattern = new RegExp(`(${escaped.join('|')})`);
    this.vocabSize = Math.max(...this.decoder.keys()) + 1;
    this.modelMaxLength = opts.modelMaxLength ?? 2048;
    this.cleanUpSpaces = opts.cleanUpSpaces ?? true;
  }

  /** GPT-2 BPE of one pre-token (already mapped to the byte alphabet). */
  private bpe(word: string): string[] {
    const hit = this.cache.get(word);
    if (hit) return hit;
    let parts = Array.from(word);
    while (parts.length > 1) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < parts.length - 1; i++) {
        const r = this.ranks.get(`${parts[i]} ${parts[i + 1]}`);
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) break;
      // Merge every occurrence of the best pair, left to right (as GPT-2's bpe() does).
      const a = parts[best];
      const b = parts[best + 1];
      const merged: string[] = [];
      for (let i = 0; i < parts.length; ) {
        if (i < parts.length - 1 && parts[i] === a && parts[i + 1] === b) {
          merged.push(a + b);
          i += 2;
        } else {
          merged.push(parts[i++]);
        }
      }
      parts = merged;
    }
    if (this.cache.size < 50000) this.cache.set(word, parts);
    return parts;
  }

  /** BPE pieces; literal special tokens (`</s>`, `<pad>`) are split out first and kept whole. */
  tokenize(text: string): string[] {
    expectString('text', text);
    const out: string[] = [];
    for (const segment of text.split(this.specialPattern)) {
      if (segment === '') continue;
      if (this.special.has(segment)) {
        out.push(segment);
        continue;
      }
      for (const m of segment.matchAll(GPT2_PATTERN)) {
        const mapped = Array.from(Buffer.from(m[0], 'utf8'), (b) => this.byteEncoder[b]).join('');
        out.push(...this.bpe(mapped));
      }
    }
    return out;
  }

  encode(text: string): number[] {
    return this.tokenize(text).map((t) => this.encoder.get(t) ?? this.unkId);
  }

  /** `tokenizer(text).input_ids`: BOS first, nothing appended. */
  encodeWithSpecials(text: string): number[] {
    return [this.bosId, ...this.encode(text)];
  }

  /** BOS + ids per text, right-padded with PAD (OPT's padding side), truncated to maxLength. */
  encodeBatch(texts: readonly string[], options?: BatchOptions): BatchEncoding {
    const opts = resolveBatchOptions(options, this.modelMaxLength);
    const rows: number[][] = [];
    const truncated: boolean[] = [];
    texts.forEach((t, i) => {
      let row = this.encodeWithSpecials(t);
      const cut = row.length > opts.maxLength;
      if (cut) {
        if (!opts.truncation) throw invalid(`text ${i}`, `at most ${opts.maxLength} tokens including BOS`, `${row.length} tokens`);
        row = row.slice(0, opts.maxLength);
      }
      rows.push(row);
      truncated.push(cut);
    });
    let width = 0;
    if (opts.padding === 'max_length') width = opts.maxLength;
    else if (opts.padding === 'longest') for (const r of rows) width = Math.max(width, r.length);
    const attentionMask = rows.map((row) => {
      const mask = new Array<number>(Math.max(width, row.length)).fill(0).fill(1, 0, row.length);
      while (row.length < width) row.push(this.padId);
      return mask;
    });
    return { inputIds: rows, attentionMask, truncated };
  }

  /** transformers' decode: tokens joined, bytes decoded (invalid UTF-8 replaced), spaces cleaned up. */
  decode(ids: ArrayLike<number>, options: DecodeOptions = {}): string {
    const specialIds = new Set(this.special.values());
    const bytes: number[] = [];
    for (const id of Array.from(ids)) {
      if (options.skipSpecial && specialIds.has(id)) continue;
      const tok = this.decoder.get(id);
      if (tok === undefined) continue;
      for (const ch of tok) {
        const b = this.byteDecoder.get(ch);
        if (b !== undefined) bytes.push(b);
        else bytes.push(...Buffer.from(ch, 'utf8'));
      }
    }
    const text = Buffer.from(bytes).toString('utf8');
    return this.cleanUpSpaces ? cleanUpTokenization(text) : text;
  }

  idToToken(id: number): string | undefined {
    return this.decoder.get(id);
  }

  tokenToId(token: string): number | undefined {
    return this.encoder.get(token);
  }
}

/** transformers' `clean_up_tokenization`. */
export function cleanUpTokenization(text: string): string {
  return text
    .replaceAll(' .', '.')
    .replaceAll(' ?', '?')
    .replaceAll(' !', '!')
    .replaceAll(' ,', ',')
    .replaceAll(" ' ", "'")
    .replaceAll(" n't", "n't")
    .replaceAll(" 'm", "'m")
    .replaceAll(" 's", "'s")
    .replaceAll(" 've", "'ve")
    .replaceAll(" 're", "'re");
}

/** Reads `special_tokens_map.json` / `tokenizer_config.json` entries that change the OPT tokenizer. */
function folderOptions(dir: string): OptTokenizerOptions {
  const opts: OptTokenizerOptions = {};
  const content = (v: unknown): string | undefined => (typeof v === 'string' ? v : v && typeof v === 'object' && typeof (v as any).content === 'string' ? (v as any).content : undefined);
  for (const name of ['special_tokens_map.json', 'tokenizer_config.json']) {
    const file = path.join(dir, name);
    if (!fs.existsSync(file)) continue;
    const c = readJsonFile(file, { object: true });
    opts.bosToken = content(c.bos_token) ?? opts.bosToken;
    opts.eosToken = content(c.eos_token) ?? opts.eosToken;
    opts.unkToken = content(c.unk_token) ?? opts.unkToken;
    opts.padToken = content(c.pad_token) ?? opts.padToken;
    if (typeof c.model_max_length === 'number' && c.model_max_length < 1e9) opts.modelMaxLength = c.model_max_length;
    if (typeof c.clean_up_tokenization_spaces === 'boolean') opts.cleanUpSpaces = c.clean_up_tokenization_spaces;
    if (c.add_bos_token === false) throw new RoundtripError(`${file}: add_bos_token false is not supported (OPT prompts start with </s>)`);
  }
  return opts;
}

/** Loads the OPT tokenizer of a folder holding `vocab.json` + `merges.txt` (a BLIP-2 OPT or OPT folder). */
export function loadOptTokenizer(dir: string): OptTokenizer {
  const vocabFile = path.join(dir, OPT_VOCAB_FILE);
  const mergesFile = path.join(dir, OPT_MERGES_FILE);
  for (const f of [vocabFile, mergesFile]) if (!fs.existsSync(f)) throw new RoundtripError(`${dir}: no ${path.basename(f)} (an OPT tokenizer needs vocab.json and merges.txt)`);
  const vocab = readJsonFile(vocabFile, { object: true }) as Record<string, number>;
  const merges = parseMerges(fs.readFileSync(mergesFile, 'utf8').split('\n'), mergesFile);
  return new OptTokenizer(vocab, merges, folderOptions(dir));
}
