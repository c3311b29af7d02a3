import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { DATA, METRICS, VOCAB } from './support/paths';
import {
  BertTokenizer,
  ClipTokenizer,
  blipCaptionTrainIds,
  blipCaptionTrainText,
  blipDecodeCaption,
  blipDecoderInputs,
  blipItmInputs,
  detectKind,
  flattenRows,
  loadBertTokenizer,
  loadClipTokenizer,
  loadTokenizer,
  preCaption,
} from '../lib/tokenizers';
import { formatTokenizeReport, tokenizeTexts } from '../lib/cli/commands/tokenize';

interface ClipCase {
  cleaned_text: string;
  pre_tokens: string[];
  bpe_tokens: string[];
  ids: number[];
  n_with_sot_eot: number;
  openai_tokenize_77: number[];
  openai_truncate_false_raises: boolean;
  sd_input_ids_77: number[];
  decoded: string;
  hf_fast_sd77: number[];
  hf_fast_matches_openai: boolean;
}
interface BertCase {
  basic_tokens: string[];
  wordpiece_tokens: string[];
  ids: number[];
  input_ids_cls_sep: number[];
  google_default_max200_wordpiece_tokens?: string[];
  hf_fast_tokens: string[];
  hf_fast_input_ids: number[];
}
interface BlipCase {
  decoder_input_ids_max40: number[];
  itm_input_ids_max35: number[];
  itm_attention_mask_max35: number[];
  pre_caption_max_words30: string;
  caption_train_text: string;
  caption_train_decoder_input_ids_max40: number[];
}
interface Case {
  id: number;
  text: string;
  clip: ClipCase;
  bert: BertCase;
  blip: BlipCase;
}
interface Fixture {
  special_ids: {
    clip: { sot: number; eot: number; openai_pad: number; sd_pad: number; vocab_size: number };
    bert: { pad: number; unk: number; cls: number; sep: number; mask: number; vocab_size: number };
    blip: { dec_bos: number; enc: number; eos: number; pad: number; vocab_size_after_additions: number };
  };
  cases: Case[];
}

const fixture: Fixture = JSON.parse(fs.readFileSync(path.join(METRICS, 'tokenizer_cases.json'), 'utf8'));
const cases = fixture.cases;
const CLIP_DIR = path.join(VOCAB, 'clip');
const BERT_DIR = path.join(VOCAB, 'bert-base-uncased');
const label = (c: Case): string => `#${c.id} ${JSON.stringify(c.text.length > 40 ? c.text.slice(0, 40) + '…' : c.text)}`;

/** A temporary folder holding links to (or copies of) chosen vocabulary files. */
function folderWith(files: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-tok-'));
  for (const [name, src] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    fs.copyFileSync(src, path.join(dir, name));
  }
  return dir;
}

describe('CLIP BPE (vocab.json + merges.txt)', () => {
  const clip = loadClipTokenizer(CLIP_DIR);

  it('has the special ids and sizes of the fixture', () => {
    const s = fixture.special_ids.clip;
    expect(clip.sotId).toBe(s.sot);
    expect(clip.eotId).toBe(s.eot);
    expect(clip.vocabSize).toBe(s.vocab_size);
    expect(clip.padId).toBe(s.sd_pad);
    expect(clip.modelMaxLength).toBe(77);
  });

  describe.each(cases.map((c) => [label(c), c] as const))('%s', (_name, c) => {
    const e = c.clip;
    it('cleaned_text, pre_tokens, bpe_tokens, ids', () => {
      expect(clip.clean(c.text)).toBe(e.cleaned_text);
      expect(clip.preTokenize(c.text)).toEqual(e.pre_tokens);
      expect(clip.tokenize(c.text)).toEqual(e.bpe_tokens);
      expect(clip.encode(c.text)).toEqual(e.ids);
      expect(clip.encodeWithSpecials(c.text).length).toBe(e.n_with_sot_eot);
    });
    it('openai_tokenize_77, sd_input_ids_77, truncation flags', () => {
      const openai = clip.openai77(c.text);
      expect(openai.ids).toEqual(e.openai_tokenize_77);
      expect(openai.truncated).toBe(e.openai_truncate_false_raises);
      const sd = clip.sd77(c.text);
      expect(sd.ids).toEqual(e.sd_input_ids_77);
      expect(sd.truncated).toBe(e.openai_truncate_false_raises);
      expect(sd.fullLength).toBe(e.n_with_sot_eot);
      if (e.openai_truncate_false_raises) expect(() => clip.openai77(c.text, false)).toThrow(/too long for context length 77/);
      else expect(clip.openai77(c.text, false).ids).toEqual(e.openai_tokenize_77);
      // The HF fast tokenizer skips ftfy; where it agrees with openai its ids are the SD ids too.
      if (e.hf_fast_matches_openai) expect(sd.ids).toEqual(e.hf_fast_sd77);
    });
    it('decoded', () => {
      expect(clip.decode(e.ids)).toBe(e.decoded);
    });
  });

  it('batch encoding pads with the pad id to 77 and reports truncation', () => {
    const texts = cases.map((c) => c.text);
    const batch = clip.encodeBatch(texts);
    cases.forEach((c, i) => {
      expect(batch.inputIds[i]).toEqual(c.clip.sd_input_ids_77);
      expect(batch.truncated[i]).toBe(c.clip.openai_truncate_false_raises);
      const real = Math.min(c.clip.n_with_sot_eot, 77);
      expect(batch.attentionMask[i]).toEqual([...Array(real).fill(1), ...Array(77 - real).fill(0)]);
    });
    expect(flattenRows(batch.inputIds).length).toBe(77 * texts.length);
    const ragged = clip.encodeBatch(['a photo of a cat', 'dog'], { padding: false });
    expect(ragged.inputIds.map((r) => r.length)).toEqual([7, 3]);
    expect(() => flattenRows(ragged.inputIds)).toThrow(/row 1: expected 7 ids/);
    const longest = clip.encodeBatch(['a photo of a cat', 'dog'], { padding: 'longest' });
    expect(longest.inputIds[1]).toEqual([clip.sotId, ...clip.encode('dog'), clip.eotId, clip.padId, clip.padId, clip.padId, clip.padId]);
    const long = cases.find((c) => c.clip.openai_truncate_false_raises)!;
    expect(() => clip.encodeBatch([long.text], { truncation: false })).toThrow(/text 0: expected at most 77 tokens/);
  });

  it('decode can skip the start/end tokens and rejects bad ids', () => {
    const c = cases[0];
    expect(clip.decode(clip.encodeWithSpecials(c.text), { skipSpecial: true })).toBe(c.clip.decoded);
    expect(clip.decode(clip.encodeWithSpecials(c.text))).toBe('<|startoftext|>' + c.clip.decoded + '<|endoftext|>');
    expect(() => clip.decode([49408])).toThrow(/ids\[0\]: expected an integer in \[0, 49407\]/);
    expect(() => clip.decode([1.5])).toThrow(/ids\[0\]/);
  });
});

describe('CLIP BPE from the other file layouts', () => {
  const reference = loadClipTokenizer(CLIP_DIR);

  it('openai gzip (bpe_simple_vocab_16e6.txt.gz) gives the same ids and id table', () => {
    const dir = folderWith({ 'bpe_simple_vocab_16e6.txt.gz': path.join(CLIP_DIR, 'bpe_simple_vocab_16e6.txt.gz') });
    const gz = loadClipTokenizer(dir);
    expect(gz.vocabSize).toBe(reference.vocabSize);
    for (const id of [0, 255, 256, 511, 512, 1000, 49405, 49406, 49407]) expect(gz.idToToken(id)).toBe(reference.idToToken(id));
    for (const c of cases) expect(gz.encode(c.text)).toEqual(c.clip.ids);
    expect(detectKind(dir)).toBe('clip');
  });

  it('HF tokenizer.json (BPE model) gives the same ids', () => {
    const vocab = JSON.parse(fs.readFileSync(path.join(CLIP_DIR, 'vocab.json'), 'utf8'));
    const merges = fs.readFileSync(path.join(CLIP_DIR, 'merges.txt'), 'utf8').split('\n').slice(1).filter((l) => l !== '');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-tok-'));
    // Newer files store merges as pairs; both forms must load.
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify({ model: { type: 'BPE', vocab, merges: merges.map((m) => m.split(' ')) } }));
    const tok = loadTokenizer(dir);
    expect(tok.kind).toBe('clip');
    for (const c of cases) expect(tok.encode(c.text)).toEqual(c.clip.ids);
  });

  it('diffusers layout (tokenizer/ subfolder) with an SD 2.x pad token and model_max_length', () => {
    const dir = folderWith({
      'tokenizer/vocab.json': path.join(CLIP_DIR, 'vocab.json'),
      'tokenizer/merges.txt': path.join(CLIP_DIR, 'merges.txt'),
    });
    fs.writeFileSync(path.join(dir, 'tokenizer', 'special_tokens_map.json'), JSON.stringify({ pad_token: '!' }));
    fs.writeFileSync(path.join(dir, 'tokenizer', 'tokenizer_config.json'), JSON.stringify({ model_max_length: 77, pad_token: { content: '<|endoftext|>' } }));
    const tok = loadTokenizer(dir) as ClipTokenizer;
    expect(tok.kind).toBe('clip');
    expect(tok.padId).toBe(0);
    const c = cases[0];
    expect(tok.sd77(c.text).ids).toEqual(c.clip.openai_tokenize_77);
  });
});

describe('BERT WordPiece (Google FullTokenizer semantics)', () => {
  const bert = loadBertTokenizer(BERT_DIR);
  const google200 = new BertTokenizer(fs.readFileSync(path.join(BERT_DIR, 'vocab.txt'), 'utf8').split('\n').slice(0, -1), { maxInputCharsPerWord: 200 });

  it('has the special ids of the fixture, plus [DEC] and [ENC]', () => {
    const s = fixture.special_ids.bert;
    expect([bert.padId, bert.unkId, bert.clsId, bert.sepId, bert.maskId]).toEqual([s.pad, s.unk, s.cls, s.sep, s.mask]);
    const b = fixture.special_ids.blip;
    expect([bert.decId, bert.encId, bert.vocabSize]).toEqual([b.dec_bos, b.enc, b.vocab_size_after_additions]);
  });

  describe.each(cases.map((c) => [label(c), c] as const))('%s', (_name, c) => {
    const e = c.bert;
    it('basic_tokens, wordpiece_tokens, ids, input_ids_cls_sep', () => {
      expect(bert.basicTokenize(c.text)).toEqual(e.basic_tokens);
      expect(bert.tokenize(c.text, { keepSpecialTokens: false })).toEqual(e.wordpiece_tokens);
      expect(bert.encode(c.text, { keepSpecialTokens: false })).toEqual(e.ids);
      expect(bert.encodeWithSpecials(c.text, { keepSpecialTokens: false })).toEqual(e.input_ids_cls_sep);
      if (e.google_default_max200_wordpiece_tokens) {
        expect(google200.tokenize(c.text, { keepSpecialTokens: false })).toEqual(e.google_default_max200_wordpiece_tokens);
      }
    });
    it('HF special-token handling (hf_fast_tokens, hf_fast_input_ids)', () => {
      expect(bert.tokenize(c.text)).toEqual(e.hf_fast_tokens);
      expect(bert.encodeWithSpecials(c.text)).toEqual(e.hf_fast_input_ids);
    });
  });

  it('decode merges ## pieces, skips specials and cleans up spaces like HF', () => {
    const ids = bert.encodeWithSpecials("a man's hat, isn't it? yes . the xxxxxx!");
    expect(bert.decode(ids, { skipSpecial: true })).toBe("a man's hat, isn't it? yes. the xxxxxx!");
    expect(bert.decode(ids)).toBe("[CLS] a man's hat, isn't it? yes. the xxxxxx! [SEP]");
    expect(bert.decode([bert.decId!, 1037, 4937, 102, 0, 0], { skipSpecial: true })).toBe('a cat');
    expect(() => bert.decode([30524])).toThrow(/ids\[0\]: expected an integer in \[0, 30523\]/);
  });

  it('batch encoding: longest and max_length padding, truncation, masks', () => {
    const texts = ['a photo of a cat', 'two dogs'];
    const longest = bert.encodeBatch(texts);
    expect(longest.inputIds).toEqual([
      [101, 1037, 6302, 1997, 1037, 4937, 102],
      [101, ...bert.encode('two dogs'), 102, 0, 0, 0],
    ]);
    expect(longest.attentionMask[1]).toEqual([1, 1, 1, 1, 0, 0, 0]);
    const fixed = bert.encodeBatch(texts, { padding: 'max_length', maxLength: 5 });
    expect(fixed.inputIds[0]).toEqual([101, 1037, 6302, 1997, 102]);
    expect(fixed.truncated).toEqual([true, false]);
    expect(fixed.inputIds[1].length).toBe(5);
    expect(() => bert.encodeBatch(texts, { padding: 'sideways' as never })).toThrow(/padding: expected one of "longest", "max_length"/);
    expect(() => bert.encodeBatch(texts, { maxLength: 1 })).toThrow(/maxLength: expected an integer >= 2/);
    expect(() => bert.encode(42 as unknown as string)).toThrow(/text: expected a string, got number 42/);
  });
});

describe('BLIP conventions', () => {
  const bert = loadBertTokenizer(BERT_DIR);

  describe.each(cases.map((c) => [label(c), c] as const))('%s', (_name, c) => {
    const e = c.blip;
    it('decoder_input_ids_max40, itm_input_ids_max35 + mask', () => {
      expect(blipDecoderInputs(bert, [c.text]).inputIds[0]).toEqual(e.decoder_input_ids_max40);
      const itm = blipItmInputs(bert, [c.text]);
      expect(itm.inputIds[0]).toEqual(e.itm_input_ids_max35);
      expect(itm.attentionMask[0]).toEqual(e.itm_attention_mask_max35);
    });
    it('pre_caption_max_words30, caption_train_text, caption_train_decoder_input_ids_max40', () => {
      expect(preCaption(c.text, 30)).toBe(e.pre_caption_max_words30);
      expect(blipCaptionTrainText(c.text)).toBe(e.caption_train_text);
      expect(blipCaptionTrainIds(bert, c.text)).toEqual(e.caption_train_decoder_input_ids_max40);
    });
  });

  it('decoder batch pads to the longest row with 0 and cuts the prompt off decoded captions', () => {
    const batch = blipDecoderInputs(bert, [cases[0].text, cases[1].text]);
    const [a, b] = [cases[0].blip.decoder_input_ids_max40, cases[1].blip.decoder_input_ids_max40];
    const width = Math.max(a.length, b.length);
    expect(batch.inputIds[0]).toEqual([...a, ...Array(width - a.length).fill(0)]);
    expect(batch.inputIds[1]).toEqual([...b, ...Array(width - b.length).fill(0)]);
    const ids = blipCaptionTrainIds(bert, 'A dog runs on the beach.');
    expect(blipDecodeCaption(bert, ids)).toBe('a dog runs on the beach');
  });
});

describe('loading and errors', () => {
  it('detects the kind of each vocabulary folder', () => {
    expect(loadTokenizer(BERT_DIR).kind).toBe('bert');
    expect(loadTokenizer(CLIP_DIR).kind).toBe('clip');
    expect(loadTokenizer(CLIP_DIR, 'clip').vocabSize).toBe(49408);
  });

  it('loads BERT from a WordPiece tokenizer.json when vocab.txt is absent', () => {
    const tokens = fs.readFileSync(path.join(BERT_DIR, 'vocab.txt'), 'utf8').split('\n').slice(0, -1);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-tok-'));
    const vocab = Object.fromEntries(tokens.map((t, i) => [t, i]));
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify({ model: { type: 'WordPiece', vocab, max_input_chars_per_word: 100 }, added_tokens: [{ id: 103, content: '[MASK]', special: true }] }));
    const tok = loadTokenizer(dir);
    expect(tok.kind).toBe('bert');
    for (const c of cases) expect(tok.encodeWithSpecials(c.text)).toEqual(c.bert.hf_fast_input_ids);
  });

  it('names the folder and the missing file', () => {
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-tok-'));
    expect(() => loadTokenizer(empty)).toThrow(new RegExp(`tokenizer folder ${empty.replace(/[/\\]/g, '.')}: no tokenizer files found`));
    expect(() => loadTokenizer(path.join(empty, 'nope'))).toThrow(/does not exist/);
    const onlyVocab = folderWith({ 'vocab.json': path.join(CLIP_DIR, 'vocab.json') });
    expect(() => loadTokenizer(onlyVocab)).toThrow(/missing merges\.txt/);
    const onlyMerges = folderWith({ 'merges.txt': path.join(CLIP_DIR, 'merges.txt') });
    expect(() => loadClipTokenizer(onlyMerges)).toThrow(/missing vocab\.json/);
    expect(() => loadBertTokenizer(CLIP_DIR)).toThrow(/missing vocab\.txt/);
    expect(() => loadClipTokenizer(BERT_DIR)).toThrow(/missing vocab\.json \+ merges\.txt/);
    const badJson = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-tok-'));
    fs.writeFileSync(path.join(badJson, 'tokenizer.json'), '{not json');
    expect(() => loadTokenizer(badJson)).toThrow(/tokenizer\.json:\d+:\d+: not valid JSON/);
  });

  it('a BERT vocabulary without its pad token gets it appended, as transformers adds missing special tokens', () => {
    const lines = fs.readFileSync(path.join(BERT_DIR, 'vocab.txt'), 'utf8').split('\n').filter((l, i, a) => l !== '[PAD]' && !(i === a.length - 1 && l === ''));
    const noPad = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-tok-'));
    fs.writeFileSync(path.join(noPad, 'vocab.txt'), lines.join('\n') + '\n');
    const bert = loadBertTokenizer(noPad);
    expect(bert.padId).toBe(lines.length);
    expect(bert.decId).toBe(lines.length + 1);
    expect(bert.encodeBatch(['a dog', 'a'], { padding: 'longest' }).inputIds[1].slice(-1)).toEqual([bert.padId]);
    expect(bert.decode([bert.clsId, bert.padId], { skipSpecial: true })).toBe('');
    const customPad = folderWith({ 'vocab.txt': path.join(BERT_DIR, 'vocab.txt') });
    fs.writeFileSync(path.join(customPad, 'special_tokens_map.json'), JSON.stringify({ pad_token: '<nothing>' }));
    const custom = loadBertTokenizer(customPad);
    expect(custom.padId).toBe(fs.readFileSync(path.join(BERT_DIR, 'vocab.txt'), 'utf8').split('\n').filter(Boolean).length);
  });
});

describe('tokenize command core', () => {
  it('reports ids and tokens per text for both kinds', () => {
    const report = tokenizeTexts(CLIP_DIR, [cases[0].text, cases[5].text]);
    expect(report.kind).toBe('clip');
    expect(report.texts[0].ids).toEqual(cases[0].clip.ids);
    expect(report.texts[1].tokens).toEqual(cases[5].clip.bpe_tokens);
    expect(report.texts[0].idsWithSpecials.length).toBe(cases[0].clip.n_with_sot_eot);
    const text = formatTokenizeReport(report);
    expect(text).toContain('clip tokenizer, vocabulary 49408');
    expect(text).toContain(String(cases[0].clip.ids[1]));
    const bertReport = tokenizeTexts(BERT_DIR, [cases[1].text]);
    expect(bertReport.texts[0].tokens).toEqual(cases[1].bert.hf_fast_tokens);
    expect(bertReport.texts[0].idsWithSpecials).toEqual(cases[1].bert.hf_fast_input_ids);
    expect(() => tokenizeTexts(BERT_DIR, [7 as unknown as string])).toThrow(/texts\[0\]: expected a string/);
  });
});

describe('speed on the COCO Karpathy val captions', () => {
  const file = path.join(DATA, 'coco-karpathy', 'coco_karpathy_val.json');
  const data: { caption: string | string[] }[] = JSON.parse(fs.readFileSync(file, 'utf8'));
  const captions = data.flatMap((d) => (Array.isArray(d.caption) ? d.caption : [d.caption]));

  it.each([
    ['clip', () => loadClipTokenizer(CLIP_DIR)],
    ['bert', () => loadBertTokenizer(BERT_DIR)],
  ] as const)('%s tokenizes every caption well under a few seconds', (kind, load) => {
    const tok = load();
    const t0 = process.hrtime.bigint();
    let total = 0;
    for (const c of captions) total += tok.encode(c).length;
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    process.stdout.write(`${kind}: ${captions.length} captions, ${total} tokens in ${ms.toFixed(0)} ms\n`);
    expect(captions.length).toBeGreaterThan(1000);
    expect(ms).toBeLessThan(3000);
  });
});
