import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { bridgeAgreement, bridgeCoverage, buildBridge, loadBridge, mapsExactly, readCaptions, saveBridge } from '../lib/paper/bridge';
import { loadBertTokenizer, loadClipTokenizer } from '../lib/tokenizers';
import { DATA, VOCAB } from './support/paths';

const blip = loadBertTokenizer(path.join(VOCAB, 'bert-base-uncased'));
const clip = loadClipTokenizer(path.join(VOCAB, 'clip'));
const released = path.join(DATA, 'seed-release', 'reindex_clip_to_blip.json');

describe('vocabulary bridge', () => {
  const captions = readCaptions(path.join(DATA, 'coco-karpathy', 'coco_karpathy_val.json'));
  const bridge = buildBridge(captions, blip, clip);

  test('maps the fixed special tokens', () => {
    expect(bridge.clipToBlip[clip.sotId]).toBe(blip.decId);
    expect(bridge.clipToBlip[clip.eotId]).toBe(blip.sepId);
    expect(bridge.clipToBlip).toHaveLength(clip.vocabSize);
    expect(bridge.clipToBlip.every((b) => b >= 0 && b < blip.vocabSize)).toBe(true);
  });

  test('maps common words to the same word', () => {
    for (const word of ['dog', 'a', 'man', 'riding', 'table']) {
      const [c] = clip.encode(word);
      const [b] = blip.encode(word);
      expect(blip.idToToken(bridge.clipToBlip[c])).toBe(blip.idToToken(b));
    }
  });

  test('coverage on the COCO Karpathy val captions is computed and above the paper\'s 60 %', () => {
    const s = bridge.stats!;
    expect(s.captions).toBe(captions.length);
    // Recount independently of buildBridge's own bookkeeping.
    let exact = 0;
    for (const c of captions) if (mapsExactly(bridge.clipToBlip, clip.encode(c), blip.encode(c))) exact++;
    expect(s.exactCaptions).toBe(exact);
    expect(s.coverage).toBeCloseTo(exact / captions.length, 12);
    expect(s.coverage).toBeGreaterThan(0.6);
    expect(bridgeCoverage(bridge, captions.slice(0, 500), blip, clip)).toBeGreaterThan(0.5);
  });

  test('agreement with the authors\' released bridge', () => {
    const rel = loadBridge(released);
    expect(rel.clipToBlip).toHaveLength(clip.vocabSize);
    expect(rel.clipToBlip[clip.sotId]).toBe(blip.decId);
    const a = bridgeAgreement(bridge, rel, blip.unkId);
    expect(bridgeAgreement(rel, rel, blip.unkId).all).toBe(1);
    expect(a.bothMappedCount).toBeGreaterThan(1000);
    expect(a.bothMapped).toBeGreaterThan(0.5);
    expect(a.bothMapped).toBeLessThanOrEqual(1);
  });

  test('the authors\' original reindex.pth (a bare int64 tensor) loads and equals the JSON release', () => {
    const pth = loadBridge(path.join(DATA, 'seed-release', 'reindex.pth'));
    const json = loadBridge(released);
    expect(pth.clipToBlip).toHaveLength(json.clipToBlip.length);
    expect(pth.clipToBlip).toEqual(json.clipToBlip);
    expect(pth.blipVocabSize).toBe(json.blipVocabSize);
  });

  test('save/load round trip, atomically', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-bridge-'));
    const file = path.join(dir, 'bridge.json');
    saveBridge(file, bridge);
    const again = loadBridge(file);
    expect(again.clipToBlip).toEqual(bridge.clipToBlip);
    expect(again.stats).toEqual(bridge.stats);
    expect(fs.readdirSync(dir)).toEqual(['bridge.json']);
    fs.rmSync(dir, { recursive: true });
  });

  test('bad files are named errors', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-bridge-'));
    const bad = path.join(dir, 'bad.json');
    fs.writeFileSync(bad, '{"clipToBlip": [1, -2]}');
    expect(() => loadBridge(bad)).toThrow(/bad\.json.*non-negative integer/);
    expect(() => readCaptions(path.join(dir, 'none.json'))).toThrow(/none\.json/);
    fs.writeFileSync(bad, '{"images": []}');
    expect(() => readCaptions(bad)).toThrow(/no captions found/);
    fs.rmSync(dir, { recursive: true });
  });
});
