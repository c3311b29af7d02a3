import * as path from 'path';
import '../lib/conformance/bert-minilm';
import { runConformanceCase } from '../lib/conformance/registry';
import { Tensor, noGrad, disposeAll } from '../lib/runtime/tensor';
import { loadSafetensors } from '../lib/weights/safetensors';
import { BertModel } from '../lib/models/bert';
import { NativeModel } from '../lib/runtime/model';
import { REFERENCE } from './support/paths';
import { tolerance } from './support/tolerance';

describe('BERT/MiniLM', () => {
  const dir = path.join(REFERENCE, 'bert-minilm');

  test('bert-minilm: every output within tolerance', async () => {
    const r = await runConformanceCase(dir);
    expect(r.results.filter((x) => x.status !== 'ok').map((x) => `${x.name}: ${x.status} ${x.maxAbs} ${x.detail ?? ''}`)).toEqual([]);
    expect(r.results.length).toBeGreaterThan(0);
    expect(r.ok).toBe(true);
  });

  test('sentenceEmbedding matches the reference; default token types and mask', async () => {
    const bert = await BertModel.load(dir);
    const io = await loadSafetensors(path.join(dir, 'io.safetensors'));
    try {
      await noGrad(async () => {
        const e = await bert.sentenceEmbedding(io['input.input_ids'], io['input.attention_mask']);
        expect(e.compare(io['output.sentence_embedding'], ...tolerance(dir, 'output.sentence_embedding')).bad).toBe(0);
        // Identical sentences are at distance 0; the helper averages over references.
        const first = e.narrow(0, 0, 1);
        expect(BertModel.distanceToReferences(first, first)).toBeCloseTo(0, 6);
        const d = BertModel.distanceToReferences(first, e);
        expect(d).toBeGreaterThan(0);
        expect(() => BertModel.distanceToReferences(e, e)).toThrow(/one embedding/);
        disposeAll([e, first]);
      });
    } finally {
      disposeAll(io);
      bert.dispose();
    }
  });

  test('bad inputs give clear errors', async () => {
    const bert = await BertModel.load(dir);
    try {
      const ids = Tensor.fromTypedArray(new BigInt64Array([101n, 102n]), [1, 2], 'int64');
      const mask = Tensor.fromTypedArray(new BigInt64Array([1n, 1n, 1n]), [1, 3], 'int64');
      await expect(bert.sentenceEmbedding(ids, mask)).rejects.toThrow(/attention_mask must be \[1, 2\]/);
      const big = Tensor.fromTypedArray(new BigInt64Array([101n, 40000n]), [1, 2], 'int64');
      await expect(bert.sentenceEmbedding(big)).rejects.toThrow(/input_ids must lie in \[0, 30522\)/);
      await expect(NativeModel.create('bert', { hidden_size: 30, num_attention_heads: 4 })).rejects.toThrow(/not divisible/);
      disposeAll([ids, mask, big]);
    } finally {
      bert.dispose();
    }
  });
});
