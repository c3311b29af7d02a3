/**
 * BLIP's text conventions (salesforce/BLIP 056a169) on top of the BERT tokenizer: `[DEC]` as the
 * decoder BOS, `[ENC]` as the ITM/retrieval start token, `[SEP]` as EOS, 0 as padding, and
 * `pre_caption` cleaning with the `'a picture of '` captioning prompt.
 */
import { expectInteger, expectString, invalid } from '../errors';
import { BertTokenizer } from './bert';
import { PY_WHITESPACE_CLASS } from './ftfy';
import { BatchEncoding, Padding } from './types';

/** BLIP's captioning prompt. */
export const BLIP_PROMPT = 'a picture of ';
/** Decoder input length BLIP's captioner tokenizes with. */
export const BLIP_DECODER_MAX_LENGTH = 40;
/** Text length of BLIP's ITM / retrieval heads. */
export const BLIP_ITM_MAX_LENGTH = 35;
/** `max_words` BLIP's COCO caption datasets pass to `pre_caption`. */
export const BLIP_MAX_WORDS = 30;

const MULTI_WS_RE = new RegExp(`[${PY_WHITESPACE_CLASS}]{2,}`, 'gu');

/**
 * BLIP's `pre_caption(caption, max_words)`: lower-case, `. ! " ( ) * # : ; ~` -> space, runs of 2+
 * whitespace -> one space, strip trailing newlines and spaces, keep the first `maxWords` words.
 */
export function preCaption(caption: string, maxWords = BLIP_MAX_WORDS): string {
  expectString('caption', caption);
  expectInteger('maxWords', maxWords, { min: 1 });
  let text = caption.toLowerCase().replace(/[.!"()*#:;~]/g, ' ');
  text = text.replace(MULTI_WS_RE, ' ');
  text = text.replace(/\n+$/, '').replace(/^ +| +$/g, '');
  const words = text.split(' ');
  return words.length > maxWords ? words.slice(0, maxWords).join(' ') : text;
}

function requireToken(id: number | undefined, name: string): number {
  if (id === undefined) throw invalid('BLIP tokenizer', `a vocabulary with ${name}`, 'a vocabulary without it');
  return id;
}

/** Replaces the leading id of every row (BLIP overwrites [CLS] with [DEC] or [ENC]). */
function withFirstId(batch: BatchEncoding, id: number): BatchEncoding {
  for (const row of batch.inputIds) row[0] = id;
  return batch;
}

/**
 * Captioning decoder input: `tokenizer(texts, padding='longest', truncation=True, max_length=40)`
 * with the leading [CLS] replaced by [DEC].
 */
export function blipDecoderInputs(tokenizer: BertTokenizer, texts: readonly string[], maxLength = BLIP_DECODER_MAX_LENGTH, padding: Padding = 'longest'): BatchEncoding {
  const dec = requireToken(tokenizer.decId, '[DEC]');
  return withFirstId(tokenizer.encodeBatch(texts, { padding, truncation: true, maxLength }), dec);
}

/** ITM / retrieval text input: padding `max_length` 35, truncation, leading id replaced by [ENC]. */
export function blipItmInputs(tokenizer: BertTokenizer, texts: readonly string[], maxLength = BLIP_ITM_MAX_LENGTH): BatchEncoding {
  const enc = requireToken(tokenizer.encId, '[ENC]');
  return withFirstId(tokenizer.encodeBatch(texts, { padding: 'max_length', truncation: true, maxLength }), enc);
}

/** BLIP's captioning training text: the prompt followed by `pre_caption(caption, maxWords)`. */
export function blipCaptionTrainText(caption: string, prompt = BLIP_PROMPT, maxWords = BLIP_MAX_WORDS): string {
  return expectString('prompt', prompt) + preCaption(caption, maxWords);
}

/** One caption's decoder ids for captioning training: `[DEC] a picture of ... [SEP]`, max 40. */
export function blipCaptionTrainIds(tokenizer: BertTokenizer, caption: string, prompt = BLIP_PROMPT, maxWords = BLIP_MAX_WORDS): number[] {
  return blipDecoderInputs(tokenizer, [blipCaptionTrainText(caption, prompt, maxWords)]).inputIds[0];
}

/**
 * A generated caption's text as BLIP returns it: `decode(skip_special_tokens=True)` with the
 * prompt cut off (BLIP slices `caption[len(prompt):]`).
 */
export function blipDecodeCaption(tokenizer: BertTokenizer, ids: ArrayLike<number>, prompt = BLIP_PROMPT): string {
  return tokenizer.decode(ids, { skipSpecial: true }).slice(prompt.length);
}
