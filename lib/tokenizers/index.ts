/**
 * Tokenizers in pure TypeScript: BERT WordPiece (with BLIP's conventions) and CLIP byte-level BPE
 * (with openai's ftfy-based cleaning), behind one `Tokenizer` interface and a folder loader.
 */
export type { BatchEncoding, BatchOptions, DecodeOptions, Padding, Tokenizer, TokenizerKind } from './types';
export { TOKENIZER_KINDS, flattenRows } from './types';
export { BertTokenizer, parseVocabTxt } from './bert';
export type { BertEncodeOptions, BertOptions } from './bert';
export { ClipTokenizer, END_OF_TEXT, START_OF_TEXT, OPENAI_MERGE_COUNT, bytesToUnicode, cleanClipText, openaiVocab, parseMerges } from './clip';
export type { ClipOptions, FixedLengthIds } from './clip';
export {
  BLIP_DECODER_MAX_LENGTH,
  BLIP_ITM_MAX_LENGTH,
  BLIP_MAX_WORDS,
  BLIP_PROMPT,
  blipCaptionTrainIds,
  blipCaptionTrainText,
  blipDecodeCaption,
  blipDecoderInputs,
  blipItmInputs,
  preCaption,
} from './blip';
export { OptTokenizer, OPT_MERGES_FILE, OPT_VOCAB_FILE, cleanUpTokenization, loadOptTokenizer } from './opt';
export type { OptTokenizerOptions } from './opt';
export { fixText, fixEncoding, htmlUnescape, isBad } from './ftfy';
export {
  BERT_VOCAB_FILE,
  CLIP_MERGES_FILE,
  CLIP_VOCAB_FILE,
  HF_TOKENIZER_FILE,
  OPENAI_BPE_FILE,
  detectKind,
  findTokenizerFolder,
  loadBertTokenizer,
  loadClipTokenizer,
  loadTokenizer,
} from './load';
