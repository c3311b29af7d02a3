import * as fs from 'fs';
import * as path from 'path';
import '../lib/conformance/clip-text-encoder';
import '../lib/conformance/clip-vit';
import { runConformanceCase, CaseResult } from '../lib/conformance/registry';
import { NativeModel } from '../lib/runtime/model';
import { Tensor, noGrad, disposeAll } from '../lib/runtime/tensor';
import { loadSafetensors } from '../lib/weights/safetensors';
import { ClipModel, cosineDistance, meanCosineDistance, pairedCosineDistances } from '../lib/models/clip';
import { CHECKPOINTS, REFERENCE } from './support/paths';
import { tolerance } from './support/tolerance';

function failures(r: CaseResult): string[] {
  return r.results.filter((x) => x.status !== 'ok').map((x) => `${x.name}: ${x.status} maxAbs=${x.maxAbs} atol=${x.atol} ${x.detail ?? ''}`);
}

describe('CLIP conformance', () => {
  test.each(['clip-text-encoder', 'clip-vit'])('%s: every output within tolerance', async (name) => {
    const r = await runConformanceCase(path.join(REFERENCE, name));
    expect(failures(r)).toEqual([]);
    expect(r.results.length).toBeGreaterThan(0);
    expect(r.ok).toBe(true);
  });
});

describe('CLIP soft-token path', () => {
  test('one-hot soft tokens give exactly the input_ids outputs, and gradients reach P', async () => {
    const dir = path.join(REFERENCE, 'clip-text-encoder');
    const clip = await ClipModel.load(dir);
    const io = await loadSafetensors(path.join(dir, 'io.safetensors'), { names: ['input.input_ids'] });
    try {
      const ids = io['input.input_ids'];
      const [B, T] = ids.shape;
      const vocab = clip.config.vocab_size;
      const idv = ids.toTypedArray() as BigInt64Array;
      const onehot = new Float32Array(B * T * vocab);
      for (let i = 0; i < B * T; i++) onehot[i * vocab + Number(idv[i])] = 1;
      const P = Tensor.fromTypedArray(onehot, [B, T, vocab]);
      const byIds = await noGrad(() => clip.text({ inputIds: ids }));
      P.requiresGrad = true;
      const bySoft = await clip.text({ softTokens: P });
      for (const k of ['last_hidden_state', 'pooler_output']) {
        const c = bySoft[k].compare(byIds[k], 0, 0);
        expect({ k, maxAbs: c.maxAbs }).toEqual({ k, maxAbs: 0 });
      }
      const loss = bySoft.last_hidden_state.sum();
      await loss.backward();
      const g = P.grad();
      expect(g).not.toBeNull();
      expect(g!.shape).toEqual([B, T, vocab]);
      const gd = g!.toFloat32Array();
      expect(gd.some((v) => v !== 0)).toBe(true);
      disposeAll([P, byIds, bySoft, loss, g]);
    } finally {
      disposeAll(io);
      clip.dispose();
    }
  });
});

describe('CLIP wrapper', () => {
  test('encodeText / encodeImage variants and cosine distances', async () => {
    const dir = path.join(REFERENCE, 'clip-vit');
    const clip = await ClipModel.load(dir);
    const io = await loadSafetensors(path.join(dir, 'io.safetensors'));
    try {
      await noGrad(async () => {
        const t = await clip.encodeText({ inputIds: io['input.input_ids'], attentionMask: io['input.attention_mask'] });
        const i = await clip.encodeImage(io['input.pixel_values']);
        expect(t.compare(io['output.text_embeds'], ...tolerance(dir, 'output.text_embeds')).bad).toBe(0);
        expect(i.compare(io['output.image_embeds'], ...tolerance(dir, 'output.image_embeds')).bad).toBe(0);
        const pooled = await clip.encodeImage(io['input.pixel_values'], { variant: 'pooled' });
        expect(pooled.compare(io['output.vision_pooler_output'], ...tolerance(dir, 'output.vision_pooler_output')).bad).toBe(0);
        // 1 − cos agrees with the reference logits: logits_per_text = cos · exp(logit_scale).
        const lpt = io['output.logits_per_text'].toFloat32Array();
        const scale = io['output.logit_scale_exp'].item();
        const d = pairedCosineDistances(t, i);
        expect(d[0]).toBeCloseTo(1 - lpt[0] / scale, 4);
        expect(d[1]).toBeCloseTo(1 - lpt[3] / scale, 4);
        disposeAll([t, i, pooled]);
      });
    } finally {
      disposeAll(io);
      clip.dispose();
    }
  });

  test('text-only models reject projected embeddings and bad inputs clearly', async () => {
    const clip = await ClipModel.load(path.join(REFERENCE, 'clip-text-encoder'));
    try {
      const ids = Tensor.fromTypedArray(new BigInt64Array([49406n, 49407n]), [1, 2], 'int64');
      await expect(clip.encodeText({ inputIds: ids })).rejects.toThrow(/projected.*text-only/);
      const bad = Tensor.fromTypedArray(new BigInt64Array([49406n, 99999n]), [1, 2], 'int64');
      await expect(clip.encodeText({ inputIds: bad }, { variant: 'pooled' })).rejects.toThrow(/input_ids must lie in \[0, 49408\)/);
      await expect(clip.vision(Tensor.zeros([1, 3, 32, 32]))).rejects.toThrow(/text-only/);
      disposeAll([ids, bad]);
    } finally {
      clip.dispose();
    }
  });

  test('cosine helpers', () => {
    expect(cosineDistance([1, 0], [0, 1])).toBeCloseTo(1, 12);
    expect(cosineDistance([1, 1], [2, 2])).toBeCloseTo(0, 12);
    expect(meanCosineDistance([1, 0], [[1, 0], [-1, 0]])).toBeCloseTo(1, 12);
    expect(() => cosineDistance([0, 0], [1, 0])).toThrow(/all zeros/);
    expect(() => meanCosineDistance([1, 0], [])).toThrow(/at least one reference/);
  });
});

describe('SD text encoder size', () => {
  test('openai/clip-vit-large-patch14 text tower has 123,060,480 parameters', async () => {
    const model = await NativeModel.create('clip', {
      model_type: 'clip_text_model',
      hidden_size: 768,
      intermediate_size: 3072,
      num_attention_heads: 12,
      num_hidden_layers: 12,
      vocab_size: 49408,
      max_position_embeddings: 77,
      eos_token_id: 2,
    });
    try {
      expect(model.parameterCount()).toBe(123060480);
      const ids = Tensor.fromTypedArray(BigInt64Array.from({ length: 77 }, (_, i) => BigInt(i === 0 ? 49406 : i < 6 ? 320 + i : 49407)), [1, 77], 'int64');
      await noGrad(() => model.call('text', { input_ids: ids })).then(disposeAll); // warm-up
      const started = Date.now();
      const out = await noGrad(() => model.call('text', { input_ids: ids }));
      console.log(`CLIP ViT-L/14 text encoder (SD v1), batch 1 x 77 tokens, cpu: ${Date.now() - started} ms`);
      expect(out.last_hidden_state.shape).toEqual([1, 77, 768]);
      disposeAll([ids, out]);
    } finally {
      model.dispose();
    }
  });
});

describe('CLIP text encoder inside an LDM checkpoint', () => {
  test('loads with the cond_stage_model.transformer. prefix and matches sd-ldm outputs', async () => {
    const dir = path.join(CHECKPOINTS, 'sd-ldm');
    const config = JSON.parse(fs.readFileSync(path.join(dir, 'text_encoder_config.json'), 'utf8'));
    const model = await NativeModel.create('clip', config);
    const io = await loadSafetensors(path.join(dir, 'io.safetensors'), { names: ['input.input_ids', 'output.text.last_hidden_state', 'output.text.pooler_output'] });
    try {
      const report = await model.loadWeights([path.join(dir, 'model.safetensors')], { prefix: 'cond_stage_model.transformer.' });
      expect(report.missing).toEqual([]);
      const out = await noGrad(() => model.call('text', { input_ids: io['input.input_ids'] }));
      expect(out.last_hidden_state.compare(io['output.text.last_hidden_state'], ...tolerance(dir, 'output.text.last_hidden_state')).bad).toBe(0);
      expect(out.pooler_output.compare(io['output.text.pooler_output'], ...tolerance(dir, 'output.text.pooler_output')).bad).toBe(0);
      disposeAll(out);
    } finally {
      disposeAll(io);
      model.dispose();
    }
  });
});
