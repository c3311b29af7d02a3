import * as fs from 'fs';
import * as path from 'path';
import '../lib/conformance/inception-fid';
import { runConformanceCase } from '../lib/conformance/registry';
import { Tensor, noGrad, disposeAll } from '../lib/runtime/tensor';
import { InceptionModel, fnv1a32, mix32, inceptionFormulaTensor, readInceptionLayout } from '../lib/models/inception';
import { REFERENCE } from './support/paths';

const dir = path.join(REFERENCE, 'inception-fid');
const caseJson = JSON.parse(fs.readFileSync(path.join(dir, 'case.json'), 'utf8'));
const formula = caseJson.weights.formula;
const layoutJson = JSON.parse(fs.readFileSync(path.join(dir, 'real-weights-layout.json'), 'utf8'));

describe('Inception formula weights', () => {
  test('test vector: hash, mixer and first values', () => {
    const tv = formula.test_vector;
    const h = fnv1a32(`${formula.tag}/${tv.key}`);
    expect(h).toBe(parseInt(tv.h, 16));
    const w = inceptionFormulaTensor(formula.tag, tv.key, tv.shape, { convGain: formula.conv_gain, bnBiasMean: formula.bn_bias_mean });
    for (const e of tv.elements) {
      expect(mix32(e.i)).toBe(parseInt(e['mix(i)'], 16));
      const u = mix32((h ^ mix32(e.i)) >>> 0);
      expect(u).toBe(parseInt(e.u_i, 16));
      expect(u / 2147483648 - 1).toBe(e.r_i);
      expect(w[e.i]).toBe(e.w_i_float32);
    }
  });

  test('per_key_check: every tensor of the layout', () => {
    const checks = caseJson.weights.per_key_check;
    const layout = readInceptionLayout(path.join(dir, 'real-weights-layout.json'));
    expect(Object.keys(checks).length).toBe(layout.length);
    for (const { name, shape } of layout) {
      const c = checks[name];
      expect(c).toBeDefined();
      expect(shape).toEqual(c.shape);
      const w = inceptionFormulaTensor(formula.tag, name, shape, { convGain: formula.conv_gain, bnBiasMean: formula.bn_bias_mean });
      expect(Array.from(w.subarray(0, 4))).toEqual(c.first4);
      expect(w[w.length - 1]).toBe(c.last);
      let sum = 0;
      let abs = 0;
      for (let i = 0; i < w.length; i++) {
        const v = w[i];
        sum += v;
        abs += v < 0 ? -v : v;
      }
      // float64 sums of the same float32 values; only the summation order may differ.
      expect(Math.abs(abs - c.abs_sum)).toBeLessThanOrEqual(1e-9 * c.abs_sum);
      expect(Math.abs(sum - c.sum)).toBeLessThanOrEqual(1e-9 * c.abs_sum);
    }
  });
});

describe('Inception network', () => {
  test('layout equals real-weights-layout.json: 472 tensors, 23,850,960 parameters', async () => {
    const m = await InceptionModel.create();
    try {
      const mine = m.layout().map((l) => `${l.name}:${l.shape.join('x')}`).sort();
      const real = layoutJson.keys.map((l: any) => `${l.name}:${l.shape.join('x')}`).sort();
      expect(mine).toEqual(real);
      expect(mine.length).toBe(layoutJson.num_keys);
      expect(m.native.parameterCount()).toBe(layoutJson.num_parameters);
    } finally {
      m.dispose();
    }
  });

  test('inception-fid: every output within tolerance', async () => {
    const r = await runConformanceCase(dir);
    const bad = r.results.filter((x) => x.status !== 'ok').map((x) => `${x.name}: ${x.status} maxAbs=${x.maxAbs} atol=${x.atol} ${x.detail ?? ''}`);
    expect(bad).toEqual([]);
    // The TF1 resize is bit-exact, not just within the loose tolerance the float64 rerun gives it.
    for (const x of r.results.filter((y) => y.name.endsWith('.resized') || y.name.endsWith('.normalized'))) expect(x.maxAbs).toBe(0);
    expect(r.results.length).toBeGreaterThan(0);
    expect(r.ok).toBe(true);
  }, 300000);

  test('features() and input checks', async () => {
    const m = await InceptionModel.fromFormula(formula.tag, { convGain: formula.conv_gain, bnBiasMean: formula.bn_bias_mean });
    try {
      const img = Tensor.fromTypedArray(new Uint8Array(2 * 3 * 40 * 30).map((_, i) => (i * 37) % 256), [2, 3, 40, 30], 'uint8');
      const started = Date.now();
      const f = await noGrad(() => m.features(img));
      const ms = Date.now() - started;
      console.log(`inception features, batch 2 (40x30 -> 299x299), cpu: ${ms} ms`);
      expect(f.pool3.shape).toEqual([2, 2048]);
      const full = Tensor.fromTypedArray(new Uint8Array(3 * 299 * 299).map((_, i) => (i * 91) % 256), [1, 3, 299, 299], 'uint8');
      await noGrad(() => m.features(full)).then(disposeAll); // warm-up
      const t299 = Date.now();
      const f299 = await noGrad(() => m.features(full));
      console.log(`inception features, batch 1 at 299x299, cpu: ${Date.now() - t299} ms`);
      disposeAll([full, f299]);
      expect(f.logitsUnbiased.shape).toEqual([2, 1008]);
      await expect(m.features(Tensor.zeros([1, 3, 8, 8]))).rejects.toThrow(/uint8 Tensor \[B, 3, H, W\]/);
      await expect(m.forward(img, { blocks: ['Mixed_9z'] })).rejects.toThrow(/unknown stage 'Mixed_9z'/);
      disposeAll([img, f]);
    } finally {
      m.dispose();
    }
  });
});
