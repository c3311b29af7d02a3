/** OPT tokenizer (GPT-2 byte-level BPE, fairseq ids): exact on shared/fixtures/metrics/opt_tokenizer_cases.json. */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadOptTokenizer, loadTokenizer, detectKind } from '../lib/tokenizers';
import { runTokenizerCases } from '../lib/conformance/tokenizers';
import { METRICS, VOCAB } from './support/paths';

const cases = JSON.parse(fs.readFileSync(path.join(METRICS, 'opt_tokenizer_cases.json'), 'utf8'));
const tok = loadOptTokenizer(path.join(VOCAB, 'opt'));

describe('OPT tokenizer', () => {
  test.each(cases.cases.map((c: any) => [c.id, c]))('case %d', (_id, c: any) => {
    expect(tok.tokenize(c.text)).toEqual(c.opt.bpe_tokens);
    expect(tok.encode(c.text)).toEqual(c.opt.ids);
    expect(tok.encodeWithSpecials(c.text)).toEqual(c.opt.input_ids);
    expect(tok.decode(c.opt.input_ids, { skipSpecial: true })).toBe(c.opt.decoded);
    expect(tok.decode(c.opt.input_ids)).toBe(c.opt.decoded_with_specials);
  });

  test('special ids as the fixture states them', () => {
    const s = cases.special_ids;
    expect([tok.bosId, tok.eosId, tok.unkId, tok.padId]).toEqual([s.bos, s.eos, s.unk, s.pad]);
    expect(tok.vocabSize).toBe(s.vocab_json_entries);
    for (const [text, ids] of Object.entries<number[]>(cases.verified_against.cases)) expect(tok.encode(text)).toEqual(ids);
  });

  test('batches are BOS-first and right-padded with <pad>', () => {
    const b = tok.encodeBatch(['Hello world', 'a']);
    expect(b.inputIds[0][0]).toBe(tok.bosId);
    expect(b.inputIds[1]).toEqual([tok.bosId, ...tok.encode('a'), tok.padId]);
    expect(b.attentionMask[1]).toEqual([1, 1, 0]);
  });

  test('a folder is detected as OPT (not CLIP) from its files', () => {
    expect(detectKind(path.join(VOCAB, 'opt'))).toBe('opt');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'opt-tok-'));
    try {
      for (const f of ['vocab.json', 'merges.txt']) fs.copyFileSync(path.join(VOCAB, 'opt', f), path.join(dir, f));
      fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ tokenizer_class: 'GPT2Tokenizer', add_bos_token: true }));
      expect(loadTokenizer(dir).kind).toBe('opt');
      fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ tokenizer_class: 'GPT2Tokenizer', add_bos_token: false }));
      expect(() => loadTokenizer(dir)).toThrow(/add_bos_token false/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('`roundtrip conformance` on the metrics folder runs the OPT cases too', () => {
    const r = runTokenizerCases(METRICS, VOCAB);
    const opt = r.results.filter((x) => x.name.startsWith('opt.'));
    expect(opt.map((x) => x.name)).toEqual(['opt.bpe_tokens', 'opt.ids', 'opt.input_ids', 'opt.decoded', 'opt.decoded_with_specials']);
    for (const x of opt) expect([x.name, x.status, x.numel]).toEqual([x.name, 'ok', cases.cases.length]);
  });
});
