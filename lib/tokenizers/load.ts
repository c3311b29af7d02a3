/**
 * Loading tokenizers from model folders. Hugging Face BLIP/CLIP folders keep the tokenizer files
 * at the top level, diffusers folders under `tokenizer/`; both are searched.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as zlib from 'zlib';
import { OptionNames, RoundtripError, expectOneOf, expectString, invalid, optionName } from '../errors';
import { BertTokenizer, parseVocabTxt } from './bert';
import { ClipTokenizer, OPENAI_MERGE_COUNT, openaiVocab, parseMerges } from './clip';
import { TOKENIZER_KINDS, Tokenizer, TokenizerKind } from './types';
import { loadOptTokenizer } from './opt';
import { readJsonFile } from '../json';

export const BERT_VOCAB_FILE = 'vocab.txt';
export const CLIP_VOCAB_FILE = 'vocab.json';
export const CLIP_MERGES_FILE = 'merges.txt';
export const OPENAI_BPE_FILE = 'bpe_simple_vocab_16e6.txt.gz';
export const HF_TOKENIZER_FILE = 'tokenizer.json';
const TOKENIZER_FILES = [BERT_VOCAB_FILE, CLIP_VOCAB_FILE, CLIP_MERGES_FILE, OPENAI_BPE_FILE, HF_TOKENIZER_FILE];

/** Settings read from `tokenizer_config.json` / `special_tokens_map.json`. */
interface FolderConfig {
  padToken?: string;
  modelMaxLength?: number;
  configFile?: string;
}

function has(dir: string, file: string): boolean {
  return fs.existsSync(path.join(dir, file));
}

function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new RoundtripError(`cannot read tokenizer file ${file}: ${(err as Error).message}`);
  }
}

const readJson = (file: string): unknown => readJsonFile(file, { what: 'tokenizer file' });

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A special-token entry is a string or an AddedToken object `{content: ...}`. */
function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (isRecord(v) && typeof v.content === 'string') return v.content;
  return undefined;
}

function readFolderConfig(dir: string): FolderConfig {
  const config: FolderConfig = {};
  const cfgFile = path.join(dir, 'tokenizer_config.json');
  if (fs.existsSync(cfgFile)) {
    const cfg = readJson(cfgFile);
    if (!isRecord(cfg)) throw invalid(cfgFile, 'a JSON object', cfg);
    const pad = tokenContent(cfg.pad_token);
    if (pad !== undefined) Object.assign(config, { padToken: pad, configFile: cfgFile });
    // HF writes a huge sentinel (1e30) when a model sets no limit.
    const len = cfg.model_max_length;
    if (typeof len === 'number' && Number.isInteger(len) && len >= 2 && len <= 1_000_000) config.modelMaxLength = len;
  }
  const mapFile = path.join(dir, 'special_tokens_map.json');
  if (fs.existsSync(mapFile)) {
    const map = readJson(mapFile);
    if (!isRecord(map)) throw invalid(mapFile, 'a JSON object', map);
    const pad = tokenContent(map.pad_token);
    if (pad !== undefined) Object.assign(config, { padToken: pad, configFile: mapFile });
  }
  return config;
}

function resolvePadId(lookup: (token: string) => number | undefined, config: FolderConfig): number | undefined {
  if (config.padToken === undefined) return undefined;
  const id = lookup(config.padToken);
  if (id === undefined) throw invalid(`${config.configFile} pad_token`, 'a token of the vocabulary', config.padToken);
  return id;
}

/** The folder holding the tokenizer files: `dir` itself, else `dir/tokenizer`. */
export function findTokenizerFolder(dir: string): string {
  expectString('tokenizer folder', dir);
  if (!fs.existsSync(dir)) throw new RoundtripError(`tokenizer folder ${dir} does not exist`);
  if (!fs.statSync(dir).isDirectory()) throw new RoundtripError(`tokenizer folder ${dir} is not a folder`);
  for (const candidate of [dir, path.join(dir, 'tokenizer')]) {
    if (fs.existsSync(candidate) && TOKENIZER_FILES.some((f) => has(candidate, f))) return candidate;
  }
  throw new RoundtripError(
    `tokenizer folder ${dir}: no tokenizer files found (expected ${BERT_VOCAB_FILE}, ${CLIP_VOCAB_FILE} + ${CLIP_MERGES_FILE}, ` +
      `${OPENAI_BPE_FILE} or ${HF_TOKENIZER_FILE}, in the folder or in its tokenizer/ subfolder)`,
  );
}

function hfModel(dir: string): Record<string, unknown> {
  const file = path.join(dir, HF_TOKENIZER_FILE);
  const json = readJson(file);
  if (!isRecord(json) || !isRecord(json.model)) throw invalid(file, 'an object with a "model" object', json);
  return json;
}

/**
 * GPT-2 BPE with OPT ids (BLIP-2 OPT, OPT): `vocab.json` + `merges.txt` like CLIP, told apart by
 * tokenizer_config.json's GPT2Tokenizer class or, without one, by OPT's `</s>`/`<pad>` tokens.
 */
function isOptFolder(dir: string): boolean {
  if (!has(dir, CLIP_VOCAB_FILE) || !has(dir, CLIP_MERGES_FILE)) return false;
  if (has(dir, 'tokenizer_config.json')) {
    const c = readJson(path.join(dir, 'tokenizer_config.json'));
    if (isRecord(c) && typeof c.tokenizer_class === 'string') return /^GPT2Tokenizer(Fast)?$/.test(c.tokenizer_class);
  }
  const vocab = readJson(path.join(dir, CLIP_VOCAB_FILE));
  return isRecord(vocab) && '</s>' in vocab && '<pad>' in vocab && !('<|startoftext|>' in vocab);
}

/** Detects the tokenizer kind from the files in a (resolved) folder. */
export function detectKind(dir: string): TokenizerKind {
  if (has(dir, BERT_VOCAB_FILE)) return 'bert';
  if (isOptFolder(dir)) return 'opt';
  if (has(dir, CLIP_VOCAB_FILE) || has(dir, CLIP_MERGES_FILE) || has(dir, OPENAI_BPE_FILE)) return 'clip';
  if (has(dir, HF_TOKENIZER_FILE)) {
    const model = hfModel(dir).model as Record<string, unknown>;
    if (model.type === 'WordPiece') return 'bert';
    if (model.type === 'BPE') return 'clip';
    throw invalid(`${path.join(dir, HF_TOKENIZER_FILE)} model.type`, '"WordPiece" (BERT) or "BPE" (CLIP)', model.type);
  }
  throw new RoundtripError(`tokenizer folder ${dir}: no tokenizer files found`);
}

/** Loads a BERT WordPiece tokenizer (with BLIP's [DEC]/[ENC]) from `vocab.txt` or `tokenizer.json`. */
export function loadBertTokenizer(dirArg: string): BertTokenizer {
  const dir = findTokenizerFolder(dirArg);
  const config = readFolderConfig(dir);
  let tokens: string[];
  let specials: string[] = [];
  let maxChars: number | undefined;
  if (has(dir, BERT_VOCAB_FILE)) {
    const file = path.join(dir, BERT_VOCAB_FILE);
    tokens = parseVocabTxt(readText(file), file);
  } else if (has(dir, HF_TOKENIZER_FILE)) {
    const file = path.join(dir, HF_TOKENIZER_FILE);
    const json = hfModel(dir);
    const model = json.model as Record<string, unknown>;
    if (model.type !== 'WordPiece') throw invalid(`${file} model.type`, '"WordPiece" for a BERT tokenizer', model.type);
    if (!isRecord(model.vocab)) throw invalid(`${file} model.vocab`, 'an object token -> id', model.vocab);
    const byId = new Map<number, string>();
    for (const [t, id] of Object.entries(model.vocab)) byId.set(id as number, t);
    if (Array.isArray(json.added_tokens)) {
      for (const a of json.added_tokens) {
        if (isRecord(a) && typeof a.id === 'number' && typeof a.content === 'string') {
          byId.set(a.id, a.content);
          if (a.special === true) specials.push(a.content);
        }
      }
    }
    tokens = [];
    for (let id = 0; id < byId.size; id++) {
      const t = byId.get(id);
      if (t === undefined) throw invalid(`${file} vocabulary`, `ids 0..${byId.size - 1} without gaps`, `a gap at id ${id}`);
      tokens.push(t);
    }
    if (typeof model.max_input_chars_per_word === 'number') maxChars = model.max_input_chars_per_word;
    const normalizer = json.normalizer;
    if (isRecord(normalizer) && normalizer.type === 'BertNormalizer' && normalizer.lowercase === false) {
      throw new RoundtripError(`${file}: only uncased (lower-casing) BERT tokenizers are supported`);
    }
  } else {
    throw new RoundtripError(`tokenizer folder ${dir}: missing ${BERT_VOCAB_FILE} (or a WordPiece ${HF_TOKENIZER_FILE}) for a BERT tokenizer`);
  }
  // A pad token missing from the vocabulary is appended by the tokenizer, as transformers adds missing specials.
  return new BertTokenizer(tokens, { maxInputCharsPerWord: maxChars, modelMaxLength: config.modelMaxLength, padToken: config.padToken }, specials);
}

/** Reads `vocab.json` (token -> id). */
function readVocabJson(file: string): Map<string, number> {
  const json = readJson(file);
  if (!isRecord(json)) throw invalid(file, 'a JSON object token -> id', json);
  const vocab = new Map<string, number>();
  for (const [t, id] of Object.entries(json)) {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) throw invalid(`${file} entry ${JSON.stringify(t)}`, 'a non-negative integer id', id);
    vocab.set(t, id);
  }
  return vocab;
}

/** Loads a CLIP BPE tokenizer from `vocab.json` + `merges.txt`, openai's gzip, or `tokenizer.json`. */
export function loadClipTokenizer(dirArg: string): ClipTokenizer {
  const dir = findTokenizerFolder(dirArg);
  const config = readFolderConfig(dir);
  let vocab: Map<string, number>;
  let merges: [string, string][];
  if (has(dir, CLIP_VOCAB_FILE) || has(dir, CLIP_MERGES_FILE)) {
    for (const f of [CLIP_VOCAB_FILE, CLIP_MERGES_FILE]) {
      if (!has(dir, f)) throw new RoundtripError(`tokenizer folder ${dir}: missing ${f} (the CLIP tokenizer needs ${CLIP_VOCAB_FILE} and ${CLIP_MERGES_FILE})`);
    }
    vocab = readVocabJson(path.join(dir, CLIP_VOCAB_FILE));
    const mergesFile = path.join(dir, CLIP_MERGES_FILE);
    merges = parseMerges(readText(mergesFile).split('\n'), mergesFile);
  } else if (has(dir, OPENAI_BPE_FILE)) {
    const file = path.join(dir, OPENAI_BPE_FILE);
    let text: string;
    try {
      text = zlib.gunzipSync(fs.readFileSync(file)).toString('utf8');
    } catch (err) {
      throw new RoundtripError(`tokenizer file ${file}: expected a gzip merge list, got an error (${(err as Error).message})`);
    }
    // Line 0 is a header; openai uses the next OPENAI_MERGE_COUNT merges only.
    const lines = text.split('\n').slice(1, OPENAI_MERGE_COUNT + 1);
    if (lines.length < OPENAI_MERGE_COUNT) throw invalid(file, `at least ${OPENAI_MERGE_COUNT} merges`, `${lines.length}`);
    merges = parseMerges(lines, file);
    vocab = new Map(openaiVocab(merges).map((t, i) => [t, i] as [string, number]));
  } else if (has(dir, HF_TOKENIZER_FILE)) {
    const file = path.join(dir, HF_TOKENIZER_FILE);
    const json = hfModel(dir);
    const model = json.model as Record<string, unknown>;
    if (model.type !== 'BPE') throw invalid(`${file} model.type`, '"BPE" for a CLIP tokenizer', model.type);
    if (!isRecord(model.vocab) || !Array.isArray(model.merges)) throw invalid(`${file} model`, 'BPE "vocab" and "merges"', model);
    vocab = new Map();
    for (const [t, id] of Object.entries(model.vocab)) vocab.set(t, id as number);
    if (Array.isArray(json.added_tokens)) {
      for (const a of json.added_tokens) if (isRecord(a) && typeof a.id === 'number' && typeof a.content === 'string') vocab.set(a.content, a.id);
    }
    // Older files store merges as "a b" strings, newer ones as [a, b] pairs.
    merges = parseMerges(
      model.merges.map((m: unknown) => (Array.isArray(m) ? m.join(' ') : String(m))),
      `${file} model.merges`,
    );
  } else {
    throw new RoundtripError(`tokenizer folder ${dir}: missing ${CLIP_VOCAB_FILE} + ${CLIP_MERGES_FILE} (or ${OPENAI_BPE_FILE}, or a BPE ${HF_TOKENIZER_FILE}) for a CLIP tokenizer`);
  }
  const padId = resolvePadId((t) => vocab.get(t), config);
  return new ClipTokenizer(vocab, merges, { modelMaxLength: config.modelMaxLength, padId });
}

/**
 * Loads the tokenizer of a model folder (or of its `tokenizer/` subfolder), detecting BERT or
 * CLIP from the files unless `kind` is given.
 */
export function loadTokenizer(dir: string, kind?: TokenizerKind, names?: OptionNames): Tokenizer {
  const resolved = findTokenizerFolder(dir);
  const k = kind === undefined ? detectKind(resolved) : expectOneOf(optionName(names, 'kind'), kind, TOKENIZER_KINDS);
  if (k === 'bert') return loadBertTokenizer(dir);
  if (k === 'clip') return loadClipTokenizer(dir);
  if (k === 'opt') return loadOptTokenizer(resolved);
  throw invalid('tokenizer kind', '"bert", "clip" or "opt"', k);
}
