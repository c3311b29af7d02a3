/**
 * Tokenizer conformance: a folder holding `tokenizer_cases.json` (shared/fixtures/metrics layout) is run
 * through roundtrip's CLIP BPE and BERT/BLIP WordPiece tokenizers; every field must match exactly. The
 * vocabularies come from `vocabDir` (default `<dir>/../../vocab`: `clip/` and `bert-base-uncased/`).
 */
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError } from '../errors';
import { blipCaptionTrainIds, blipCaptionTrainText, blipDecoderInputs, blipItmInputs, loadBertTokenizer, loadClipTokenizer, preCaption } from '../tokenizers';
import type { CaseResult, TensorResult } from './registry';

export const TOKENIZER_CASES_FILE = 'tokenizer_cases.json';

type Check = [field: string, mine: (text: string) => unknown, expected: (c: any) => unknown];

export function runTokenizerCases(dir: string, vocabDir?: string): CaseResult {
  const started = Date.now();
  const file = path.join(dir, TOKENIZER_CASES_FILE);
  let fixture: any;
  try {
    fixture = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new RoundtripError(`${file}: ${err instanceof Error ? err.message : String(err)}`);
  }
  const vocab = vocabDir ?? path.resolve(dir, '..', '..', 'vocab');
  const clip = loadClipTokenizer(path.join(vocab, 'clip'));
  const bert = loadBertTokenizer(path.join(vocab, 'bert-base-uncased'));
  const google = { keepSpecialTokens: false };
  const checks: Check[] = [
    ['clip.cleaned_text', (t) => clip.clean(t), (c) => c.clip.cleaned_text],
    ['clip.bpe_tokens', (t) => clip.tokenize(t), (c) => c.clip.bpe_tokens],
    ['clip.ids', (t) => clip.encode(t), (c) => c.clip.ids],
    ['clip.openai_tokenize_77', (t) => clip.openai77(t).ids, (c) => c.clip.openai_tokenize_77],
    ['clip.sd_input_ids_77', (t) => clip.sd77(t).ids, (c) => c.clip.sd_input_ids_77],
    ['clip.decoded', (t) => clip.decode(clip.encode(t)), (c) => c.clip.decoded],
    ['bert.basic_tokens', (t) => bert.basicTokenize(t), (c) => c.bert.basic_tokens],
    ['bert.wordpiece_tokens', (t) => bert.tokenize(t, google), (c) => c.bert.wordpiece_tokens],
    ['bert.ids', (t) => bert.encode(t, google), (c) => c.bert.ids],
    ['bert.input_ids_cls_sep', (t) => bert.encodeWithSpecials(t, google), (c) => c.bert.input_ids_cls_sep],
    ['blip.decoder_input_ids_max40', (t) => blipDecoderInputs(bert, [t]).inputIds[0], (c) => c.blip.decoder_input_ids_max40],
    ['blip.itm_input_ids_max35', (t) => blipItmInputs(bert, [t]).inputIds[0], (c) => c.blip.itm_input_ids_max35],
    ['blip.pre_caption_max_words30', (t) => preCaption(t, 30), (c) => c.blip.pre_caption_max_words30],
    ['blip.caption_train_text', (t) => blipCaptionTrainText(t), (c) => c.blip.caption_train_text],
    ['blip.caption_train_decoder_input_ids_max40', (t) => blipCaptionTrainIds(bert, t), (c) => c.blip.caption_train_decoder_input_ids_max40],
  ];
  const results: TensorResult[] = checks.map(([field, mine, expected]) => {
    let bad = 0;
    let numel = 0;
    const failed: number[] = [];
    for (const c of fixture.cases) {
      const want = expected(c);
      if (want === undefined) continue;
      numel++;
      let got: unknown;
      try {
        got = mine(c.text);
      } catch (err) {
        got = `error: ${(err as Error).message}`;
      }
      if (JSON.stringify(got) !== JSON.stringify(want)) {
        bad++;
        failed.push(c.id);
      }
    }
    return {
      name: field,
      status: bad === 0 ? 'ok' : 'fail',
      compare: 'exact',
      maxAbs: NaN,
      maxRel: NaN,
      atol: 0,
      rtol: 0,
      bad,
      numel,
      detail: bad ? `cases ${failed.slice(0, 8).join(', ')}${failed.length > 8 ? ', …' : ''} differ` : undefined,
    };
  });
  return { dir, name: 'tokenizers', ok: results.every((r) => r.status === 'ok'), results, seconds: (Date.now() - started) / 1000 };
}
