/**
 * Batched text embeddings for the caption metrics: CLIP text embeddings (pooled or projected)
 * and SBERT sentence embeddings (all-MiniLM-L6-v2: mean pooling + L2 normalisation). Each
 * distinct text is encoded once; rows come back as float32 vectors in input order.
 */
import { EvalSplit, gatherRows, ownedItems } from './distributed';
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError, expectInteger } from '../../errors';
import { BertModel } from '../../models/bert';
import { ClipModel, EmbeddingVariant, rows } from '../../models/clip';
import { Tensor, noGrad, scope } from '../../runtime/tensor';
import { BertTokenizer, ClipTokenizer, Tokenizer, loadBertTokenizer, loadClipTokenizer } from '../../tokenizers';
import { jsonPath, readJsonFile } from '../../json';
import { CONFIG_DEFAULTS, configInt } from '../../models/config-defaults';

/** sentence-transformers' max_seq_length of all-MiniLM-L6-v2, used when the folder has no sentence_bert_config.json. */
export const SBERT_DEFAULT_MAX_SEQ_LENGTH = 256;

/** ids/mask rows → int64 tensors [B, T]. */
function idTensor(rowsIn: number[][]): Tensor {
  const b = rowsIn.length;
  const t = rowsIn[0].length;
  const data = new BigInt64Array(b * t);
  for (let i = 0; i < b; i++) {
    const row = rowsIn[i];
    for (let j = 0; j < t; j++) data[i * t + j] = BigInt(row[j]);
  }
  return Tensor.fromTypedArray(data, [b, t]);
}

/** Distinct texts in first-seen order and, per input, its index among them. */
function dedupe(texts: readonly string[]): { unique: string[]; index: Int32Array } {
  const seen = new Map<string, number>();
  const unique: string[] = [];
  const index = new Int32Array(texts.length);
  texts.forEach((t, i) => {
    let k = seen.get(t);
    if (k === undefined) {
      k = unique.length;
      seen.set(t, k);
      unique.push(t);
    }
    index[i] = k;
  });
  return { unique, index };
}

interface EncodeArgs {
  tokenizer: Tokenizer;
  maxLength: number;
  batchSize: number;
  /** Runs the model on one padded batch and returns its [B, D] embeddings. */
  run: (inputIds: Tensor, attentionMask: Tensor) => Promise<Tensor>;
  /** Called with the number of texts truncated to maxLength. */
  onTruncated?: (count: number) => void;
  /** Several processes share the batches (./distributed.ts). */
  split?: EvalSplit;
}

async function encodeAll(texts: readonly string[], args: EncodeArgs): Promise<Float32Array[]> {
  expectInteger('batchSize', args.batchSize, { min: 1 });
  const { unique, index } = dedupe(texts);
  let vectors: Float32Array[] = new Array(unique.length);
  let truncated = 0;
  // Whole batches per rank (batch k on rank k mod W): every batch is padded as one process pads it.
  const owned = ownedItems(unique.length, args.batchSize, args.split);
  await noGrad(async () => {
    for (let start = 0; start < unique.length; start += args.batchSize) {
      if (args.split && Math.floor(start / args.batchSize) % args.split.worldSize !== args.split.rank) continue;
      const batch = unique.slice(start, start + args.batchSize);
      const enc = args.tokenizer.encodeBatch(batch, { padding: 'longest', maxLength: args.maxLength, truncation: true });
      truncated += enc.truncated.filter(Boolean).length;
      await scope(async () => {
        const emb = await args.run(idTensor(enc.inputIds), idTensor(enc.attentionMask));
        // rows() views a JS copy of the batch, so the vectors outlive the tensor
        rows(emb).forEach((r, k) => (vectors[start + k] = r));
      });
    }
  });
  if (args.split) {
    vectors = await gatherRows(unique.length, owned, owned.map((i) => vectors[i]), args.split);
    const t = new Float64Array([truncated]);
    await args.split.sum(t);
    truncated = t[0];
  }
  if (truncated > 0) args.onTruncated?.(truncated);
  return Array.from(index, (k) => vectors[k]);
}

/** A CLIP model with its tokenizer, ready to embed captions. */
export interface ClipTextEncoder {
  model: ClipModel;
  tokenizer: ClipTokenizer;
  /** Where it came from (reported with the results). */
  source: string;
}

/** Loads a Hugging Face CLIP folder (config.json, model.safetensors, vocab.json + merges.txt). */
export async function loadClipTextEncoder(dir: string, opts: { device?: string } = {}): Promise<ClipTextEncoder> {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new RoundtripError(`--clip: ${dir} is not a folder (expected a Hugging Face CLIP model folder)`);
  const tokenizer = loadClipTokenizer(dir);
  const model = await ClipModel.load(dir, { device: opts.device });
  return { model, tokenizer, source: path.resolve(dir) };
}

/** CLIP text embeddings of `texts` (the pooled output or the projected, normalised text_embeds). */
export async function clipTextEmbeddings(
  enc: ClipTextEncoder,
  texts: readonly string[],
  opts: { variant: EmbeddingVariant; batchSize: number; onTruncated?: (n: number) => void; split?: EvalSplit },
): Promise<Float32Array[]> {
  const cfg = enc.model.config;
  const positions = configInt(cfg?.text_config ? cfg.text_config : cfg, ['max_position_embeddings'], CONFIG_DEFAULTS.clip.maxPositionEmbeddings, 'CLIP text config');
  return encodeAll(texts, {
    tokenizer: enc.tokenizer,
    maxLength: Math.min(positions, enc.tokenizer.modelMaxLength),
    batchSize: opts.batchSize,
    run: (inputIds, attentionMask) => enc.model.encodeText({ inputIds, attentionMask }, { variant: opts.variant }),
    onTruncated: opts.onTruncated,
    split: opts.split,
  });
}

/** A sentence-transformers BERT model with its tokenizer. */
export interface SbertEncoder {
  model: BertModel;
  tokenizer: BertTokenizer;
  /** Tokens per text including [CLS]/[SEP] (sentence-transformers max_seq_length). */
  maxLength: number;
  source: string;
}

/**
 * Loads a sentence-transformers folder (config.json, model.safetensors, vocab.txt; the
 * max_seq_length comes from sentence_bert_config.json when present, else 256 as in
 * all-MiniLM-L6-v2).
 */
export async function loadSbertEncoder(dir: string, opts: { device?: string } = {}): Promise<SbertEncoder> {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new RoundtripError(`--sbert: ${dir} is not a folder (expected a sentence-transformers model folder)`);
  const tokenizer = loadBertTokenizer(dir);
  let maxLength = SBERT_DEFAULT_MAX_SEQ_LENGTH;
  const stConfig = path.join(dir, 'sentence_bert_config.json');
  if (fs.existsSync(stConfig)) {
    const json: { max_seq_length?: unknown } = readJsonFile(stConfig, { what: 'sentence-transformers config', object: true });
    if (json.max_seq_length !== undefined) maxLength = expectInteger(jsonPath(stConfig, 'max_seq_length'), json.max_seq_length, { min: 2 });
  }
  const model = await BertModel.load(dir, { device: opts.device });
  const positions = model.config?.max_position_embeddings;
  if (typeof positions === 'number') maxLength = Math.min(maxLength, positions);
  return { model, tokenizer, maxLength, source: path.resolve(dir) };
}

/** Normalised SBERT sentence embeddings of `texts`. */
export async function sbertEmbeddings(enc: SbertEncoder, texts: readonly string[], opts: { batchSize: number; onTruncated?: (n: number) => void; split?: EvalSplit }): Promise<Float32Array[]> {
  return encodeAll(texts, {
    tokenizer: enc.tokenizer,
    maxLength: enc.maxLength,
    batchSize: opts.batchSize,
    run: (inputIds, attentionMask) => enc.model.sentenceEmbedding(inputIds, attentionMask),
    onTruncated: opts.onTruncated,
    split: opts.split,
  });
}
