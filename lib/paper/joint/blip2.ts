/**
 * BLIP-2 (OPT) as the captioner of the joint finetuning: its caption side of a training batch, its vocabulary
 * bridge, and its trainable sets.
 *
 * Captions follow LAVIS' `Blip2OPT.forward` (the training code of Salesforce/blip2-opt-*): the text is
 * `prompt + caption` ended by the language model's EOS ("\n", id 50118, in blip2-opt-2.7b; read from
 * `text_config.eos_token_id`), tokenised by the OPT tokenizer with its BOS first, right-padded with PAD, at most
 * `max_txt_len` = 32 tokens; the labels are the ids with BOS, the prompt and the padding set to -100. The loss is
 * transformers 4.37.2's: on the text positions only (the query positions are dropped), shifted by one, without
 * label smoothing. The native step reads the same `CaptionBatch` fields as for BLIP: row t of the text logits
 * predicts token t+1, so caption token j sits at `promptLength + j` for either captioner.
 */
import { RoundtripError, expectInteger, expectString } from '../../errors';
import type { Blip2 } from '../../models/blip2';
import type { OptTokenizer } from '../../tokenizers/opt';
import { BLIP_MAX_WORDS, preCaption } from '../../tokenizers/blip';
import type { CaptionBatch } from './losses';
import { captionBatch } from './caption-batch';

/** LAVIS' `max_txt_len` for BLIP-2 OPT captioning (BOS and EOS included). */
export const BLIP2_MAX_TEXT_TOKENS = 32;

/** The caption side of BLIP-2: the OPT tokenizer with the model's EOS and its text budget. */
export interface Blip2CaptionTokenizer {
  readonly kind: 'blip2';
  readonly opt: OptTokenizer;
  /** `text_config.eos_token_id`: ends every training caption (LAVIS appends "\n"). */
  readonly eosId: number;
  readonly padId: number;
  /** `text_config.vocab_size`: no id at or above it may reach the model. */
  readonly vocabSize: number;
  /** Tokens per caption row, BOS and EOS included: min(32, max_position_embeddings − num_query_tokens). */
  readonly maxTokens: number;
}

/** The caption tokenizer of a loaded BLIP-2 model (its folder's OPT tokenizer unless `opt` is given). */
export function blip2CaptionTokenizer(model: Blip2, opt: OptTokenizer = model.defaultTokenizer()): Blip2CaptionTokenizer {
  const t = model.config?.text_config ?? {};
  const positions = Number(t.max_position_embeddings ?? 2048) - Number(model.config?.num_query_tokens ?? 32);
  return { kind: 'blip2', opt, eosId: model.special.eos, padId: model.special.pad, vocabSize: Number(t.vocab_size ?? 50272), maxTokens: Math.min(BLIP2_MAX_TEXT_TOKENS, positions) };
}

/**
 * Tokenises captions for both sides with BLIP-2 as the captioner: OPT gets `BOS prompt caption EOS` (see the module
 * comment), SD's CLIP tokenizer the cleaned caption without the prompt (as `encodeCaptions` gives it for BLIP).
 */
export function encodeBlip2Captions(
  tok: Blip2CaptionTokenizer,
  clipIds: (texts: string[]) => { ids: BigInt64Array; length: number },
  captions: readonly string[],
  opts: { prompt?: string; maxWords?: number } = {},
): CaptionBatch {
  const maxWords = opts.maxWords ?? BLIP_MAX_WORDS;
  const texts = captions.map((c) => preCaption(c, maxWords));
  // A prompt is joined by one space (a trailing space would be a token of its own in byte-level BPE).
  const prompt = expectString('prompt', opts.prompt ?? '').trimEnd();
  const promptIds = prompt ? tok.opt.encode(prompt) : [];
  const promptLength = 1 + promptIds.length;
  const maxTokens = expectInteger('BLIP-2 text length', tok.maxTokens, { min: 2 });
  if (promptLength + 1 > maxTokens) throw new RoundtripError(`prompt '${prompt}': ${promptIds.length} OPT tokens leave no room for a caption in ${maxTokens} tokens`);
  const rows = texts.map((t, b) => {
    const all = tok.opt.encode(prompt ? `${prompt} ${t}` : t);
    for (let j = 0; j < promptIds.length; j++) {
      if (all[j] !== promptIds[j]) throw new RoundtripError(`prompt '${prompt}': its OPT tokens are not a prefix of caption ${b}'s ('${t}'); end the prompt at a word boundary`);
    }
    const caption = all.slice(promptIds.length, promptIds.length + maxTokens - promptLength - 1);
    const ids = [tok.opt.bosId, ...promptIds, ...caption, tok.eosId];
    ids.forEach((id, j) => {
      if (id >= tok.vocabSize) throw new RoundtripError(`caption ${b} ('${t}'): OPT id ${id} at position ${j} is outside the model's vocabulary of ${tok.vocabSize}`);
    });
    return { ids, captionLength: caption.length };
  });
  const B = rows.length;
  const T = Math.max(...rows.map((r) => r.ids.length));
  const ids = new BigInt64Array(B * T).fill(BigInt(tok.padId));
  const mask = new BigInt64Array(B * T);
  const labels = new BigInt64Array(B * T).fill(-100n);
  rows.forEach((r, b) => {
    r.ids.forEach((id, t) => {
      ids[b * T + t] = BigInt(id);
      mask[b * T + t] = 1n;
      if (t >= promptLength) labels[b * T + t] = BigInt(id);
    });
  });
  return captionBatch(texts, { ids, mask, labels, length: T }, promptLength, rows.map((r) => r.captionLength), clipIds(texts));
}

