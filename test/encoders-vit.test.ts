import * as path from 'path';
import '../lib/conformance/vit-dino';
import '../lib/conformance/vit-dino-384';
import { runConformanceCase, CaseResult } from '../lib/conformance/registry';
import { Tensor, noGrad, disposeAll } from '../lib/runtime/tensor';
import { loadSafetensors } from '../lib/weights/safetensors';
import { VitModel, dinoOriginalToHf, dinoConfigFromTensors } from '../lib/models/vit';
import { readConfig } from '../lib/models/clip';
import { REFERENCE } from './support/paths';

function failures(r: CaseResult): string[] {
  return r.results.filter((x) => x.status !== 'ok').map((x) => `${x.name}: ${x.status} maxAbs=${x.maxAbs} atol=${x.atol} ${x.detail ?? ''}`);
}

describe('ViT/DINO conformance', () => {
  test.each(['vit-dino', 'vit-dino-384'])('%s: every output within tolerance', async (name) => {
    const r = await runConformanceCase(path.join(REFERENCE, name));
    expect(failures(r)).toEqual([]);
    expect(r.results.length).toBeGreaterThan(0);
    expect(r.ok).toBe(true);
  });
});

describe('DINO original layout', () => {
  const dir = path.join(REFERENCE, 'vit-dino-384');

  test('original-layout weights give bit-identical outputs to the HF layout at equal eps', async () => {
    const config = readConfig(dir);
    const hf = await VitModel.load(dir);
    const orig = await VitModel.loadDinoOriginal(path.join(dir, 'model-dino-original.safetensors'), { config, layerNormEps: config.layer_norm_eps });
    const io = await loadSafetensors(path.join(dir, 'io.safetensors'));
    try {
      await noGrad(async () => {
        for (const c of ['sq', 'rect']) {
          for (const interpolation of ['dino', 'hf'] as const) {
            const a = await hf.forward(io[`input.pixel_values.${c}`], { interpolation });
            const b = await orig.forward(io[`input.pixel_values.${c}`], { interpolation });
            expect(a.last_hidden_state.compare(b.last_hidden_state, 0, 0).maxAbs).toBe(0);
            disposeAll([a, b]);
          }
        }
        // The native size uses pos_embed unchanged.
        const px = Tensor.randn([1, 3, config.image_size, config.image_size], 7);
        const n = await hf.forward(px);
        const w = await loadSafetensors(path.join(dir, 'model.safetensors'), { names: ['embeddings.position_embeddings'] });
        expect(n.pos_embed.compare(w['embeddings.position_embeddings'], 0, 0).maxAbs).toBe(0);
        disposeAll([px, n, w]);
      });
    } finally {
      disposeAll(io);
      hf.dispose();
      orig.dispose();
    }
  });

  test('config inference from original tensors and the qkv split', async () => {
    const orig = await loadSafetensors(path.join(dir, 'model-dino-original.safetensors'));
    const hfw = await loadSafetensors(path.join(dir, 'model.safetensors'));
    try {
      const config = readConfig(dir);
      const inferred = dinoConfigFromTensors(orig, config.num_attention_heads);
      for (const k of ['hidden_size', 'patch_size', 'image_size', 'num_hidden_layers', 'intermediate_size', 'num_channels']) expect(inferred[k]).toBe(config[k]);
      const mapped = dinoOriginalToHf(orig);
      expect(Object.keys(mapped).sort()).toEqual(Object.keys(hfw).sort());
      for (const [k, t] of Object.entries(mapped)) expect(t.compare(hfw[k], 0, 0).maxAbs).toBe(0);
      expect(() => dinoOriginalToHf({ 'blocks.0.attn.bogus.weight': orig['norm.weight'] })).toThrow(/unexpected tensor 'blocks.0.attn.bogus.weight'/);
    } finally {
      disposeAll([orig, hfw]);
    }
  });

  test('cls() and bad options', async () => {
    const vit = await VitModel.load(path.join(REFERENCE, 'vit-dino'));
    try {
      const px = Tensor.randn([2, 3, 40, 56], 3);
      const cls = await noGrad(() => vit.cls(px, { interpolation: 'hf' }));
      expect(cls.shape).toEqual([2, vit.config.hidden_size]);
      await expect(vit.cls(px, { interpolation: 'bogus' as any })).rejects.toThrow(/interpolation/);
      await expect(vit.cls(Tensor.zeros([1, 3, 4, 4]))).rejects.toThrow(/smaller than one 8-pixel patch/);
      disposeAll([px, cls]);
    } finally {
      vit.dispose();
    }
  });
});
