/**
 * Tokenizer conformance: a folder holding `tokenizer_cases.json` (shared/fixtures/metrics layout) is run
 * through roundtrip's CLIP BPE and BERT/BLIP WordPiece tokenizers (and `opt_tokenizer_cases.json`, when present, through
 * the OPT tokenizer of BLIP-2); every field must match exactly. The
 * vocabularies come from `vocabDir` (default `<dir>/../../vocab`: `clip/`, `bert-base-uncased/`, `opt/`).
 */
import * as fs from 'fs';
import * as path from 'path';
import { blipCaptionTrainIds, blipCaptionTrainText, blipDecoderInputs, blipItmInputs, loadBertTokenizer, loadClipTokenizer, preCaption } from '../tokenizers';
import { loadOptTokenizer } from '../tokenizers/opt';
import { readJsonFile } from '../json';
import type { CaseResult, TensorResult } from './registry';

export const TOKENIZER_CASES_FILE = 'tokenizer_cases.json';
export const OPT_TOKENIZER_CASES_FILE = 'opt_tokenizer_cases.json';

type Check = [field: string, mine: (text: string) => unknown, expected: (c: any) => unknown];

export function runTokenizerCases(dir: string, vocabDir?: string): CaseResult {
  const started = Date.now();
  const file = path.join(dir, TOKENIZER_CASES_FILE);
  const fixture = readJsonFile(file, { what: 'tokenizer cases', object: true });
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
  const results = compareCases(fixture.cases, checks);
  // OPT (BLIP-2) cases beside them: GPT-2 byte-level BPE with fairseq ids, from <vocab>/opt.
  const optFile = path.join(dir, OPT_TOKENIZER_CASES_FILE);
  if (fs.existsSync(optFile)) {
    const opt = loadOptTokenizer(path.join(vocab, 'opt'));
    const optCases = readJsonFile(optFile, { object: true }).cases;
    const optChecks: Check[] = [
      ['opt.bpe_tokens', (t) => opt.tokenize(t), (c) => c.opt?.bpe_tokens],
      ['opt.ids', (t) => opt.encode(t), (c) => c.opt?.ids],
      ['opt.input_ids', (t) => opt.encodeWithSpecials(t), (c) => c.opt?.input_ids],
      ['opt.decoded', (t) => opt.decode(opt.encodeWithSpecials(t), { skipSpecial: true }), (c) => c.opt?.decoded],
      ['opt.decoded_with_specials', (t) => opt.decode(opt.encodeWithSpecials(t)), (c) => c.opt?.decoded_with_specials],
    ];
    results.push(...compareCases(optCases, optChecks));
  }
  return { dir, name: 'tokenizers', ok: results.every((r) => r.status === 'ok'), results, seconds: (Date.now() - started) / 1000 };
}

/** Each check over every case that has its expected field: exact (JSON) equality. */
function compareCases(cases: any[], checks: Check[]): TensorResult[] {
  return checks.map(([field, mine, expected]) => {
    let bad = 0;
    let numel = 0;
    const failed: number[] = [];
    for (const c of cases) {
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
}
