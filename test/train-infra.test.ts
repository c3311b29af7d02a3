import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { AdamW } from '../lib/train/optimizer';
import { learningRate } from '../lib/train/schedule';
import { listCheckpoints, loadCheckpoint, resolveCheckpoint, saveCheckpoint, disposeCheckpoint } from '../lib/train/checkpoint';
import { Tensor, disposeAll } from '../lib/runtime/tensor';

/** AdamW as torch.optim.AdamW computes it, in float64, for comparison. */
function referenceAdamW(p: number[], grads: number[][], o: { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number }): number[] {
  const m = p.map(() => 0);
  const v = p.map(() => 0);
  grads.forEach((g, k) => {
    const t = k + 1;
    for (let i = 0; i < p.length; i++) {
      p[i] *= 1 - o.lr * o.weightDecay;
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g[i];
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g[i] * g[i];
      const denom = Math.sqrt(v[i]) / Math.sqrt(1 - o.beta2 ** t) + o.eps;
      p[i] -= (o.lr / (1 - o.beta1 ** t)) * (m[i] / denom);
    }
  });
  return p;
}

describe('AdamW', () => {
  const opts = { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };
  test('matches the PyTorch update rule and skips parameters without gradients', async () => {
    const w = Tensor.fromTypedArray(new Float32Array([1, -2, 3]), [3]);
    w.requiresGrad = true;
    const idle = Tensor.fromTypedArray(new Float32Array([5]), [1]);
    idle.requiresGrad = true;
    const opt = new AdamW({ w, idle }, opts);
    const grads: number[][] = [];
    for (let k = 0; k < 4; k++) {
      opt.zeroGrad();
      const loss = w.mul(w).mul(k + 1).sum(); // grad = 2(k+1)w
      grads.push(Array.from(w.toFloat32Array(), (x) => 2 * (k + 1) * x));
      await loss.backward();
      await opt.step();
      loss.dispose();
    }
    const expected = referenceAdamW([1, -2, 3], grads, opts);
    const got = Array.from(w.toFloat32Array());
    got.forEach((x, i) => expect(x).toBeCloseTo(expected[i], 5));
    expect(idle.toFloat32Array()[0]).toBe(5);
    disposeAll([w, idle]);
  });

  test('clipGradNorm returns the norm and scales gradients to maxNorm', async () => {
    const w = Tensor.fromTypedArray(new Float32Array([3, 4]), [2]);
    w.requiresGrad = true;
    const opt = new AdamW({ w }, opts);
    await w.mul(w).mul(0.5).sum().backward(); // grad = w = [3, 4], norm 5
    expect(opt.clipGradNorm(1)).toBeCloseTo(5, 5);
    const g = Array.from(w.grad()!.toFloat32Array());
    expect(Math.hypot(g[0], g[1])).toBeCloseTo(1, 4);
  });

  test('frozen parameters are refused', () => {
    const w = Tensor.fromTypedArray(new Float32Array([1]), [1]);
    expect(() => new AdamW({ w })).toThrow(/frozen/);
  });
});

describe('learning-rate schedules', () => {
  test('constant, warmup and cosine', () => {
    expect(learningRate({ name: 'constant', lr: 1e-4 }, 7, 10)).toBe(1e-4);
    expect(learningRate({ name: 'constant_with_warmup', lr: 1e-4, warmupSteps: 4 }, 0, 10)).toBeCloseTo(2.5e-5, 12);
    expect(learningRate({ name: 'constant_with_warmup', lr: 1e-4, warmupSteps: 4 }, 5, 10)).toBe(1e-4);
    expect(learningRate({ name: 'cosine', lr: 1e-4, minLr: 0 }, 0, 10)).toBeCloseTo(1e-4, 12);
    expect(learningRate({ name: 'cosine', lr: 1e-4, minLr: 0 }, 5, 10)).toBeCloseTo(5e-5, 12);
    expect(learningRate({ name: 'cosine', lr: 1e-4, minLr: 1e-6 }, 10, 10)).toBeCloseTo(1e-6, 12);
    expect(() => learningRate({ name: 'linear' as any, lr: 1 }, 0, 1)).toThrow(/lr schedule: expected one of/);
  });
});

describe('checkpoints', () => {
  test('save, keep-last-K, latest, load round trip with optimizer state', async () => {
    const run = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-ckpt-'));
    const w = Tensor.fromTypedArray(new Float32Array([1, 2]), [2]);
    w.requiresGrad = true;
    const opt = new AdamW({ 'layer.weight': w }, { lr: 0.01 });
    for (let step = 1; step <= 4; step++) {
      opt.zeroGrad();
      await w.mul(w).sum().backward();
      await opt.step();
      await saveCheckpoint(run, { tensors: { blip: { 'layer.weight': w } }, optimizers: { blip: opt.exportState() }, state: { step, epoch: 0, order: [3, 1, 2] } }, { keepLast: 2 });
    }
    expect(listCheckpoints(run)).toEqual(['step-00000003', 'step-00000004']);
    const dir = resolveCheckpoint('latest', run);
    expect(path.basename(dir)).toBe('step-00000004');
    const ck = await loadCheckpoint(dir);
    expect(ck.state).toEqual({ step: 4, epoch: 0, order: [3, 1, 2] });
    expect(Array.from(ck.tensors.blip['layer.weight'].toFloat32Array())).toEqual(Array.from(w.toFloat32Array()));
    const restored = Tensor.fromTypedArray(new Float32Array([0, 0]), [2]);
    restored.requiresGrad = true;
    const opt2 = new AdamW({ 'layer.weight': restored }, { lr: 0.01 });
    opt2.importState(ck.optimizers.blip);
    expect(opt2.exportState().step).toBe(4);
    expect(Array.from(opt2.exportState().expAvg[0]!.toFloat32Array())).toEqual(Array.from(opt.exportState().expAvg[0]!.toFloat32Array()));
    expect(fs.readdirSync(path.join(run, 'checkpoints')).filter((n) => n.includes('tmp'))).toEqual([]);
    disposeCheckpoint(ck);
    expect(() => resolveCheckpoint(path.join(run, 'nope'), run)).toThrow(/not a checkpoint folder/);
    fs.rmSync(run, { recursive: true, force: true });
  });

  test('a failing write leaves the previous checkpoint and latest intact', async () => {
    const run = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-ckpt-'));
    const w = Tensor.fromTypedArray(new Float32Array([1]), [1]);
    await saveCheckpoint(run, { tensors: { m: { w } }, optimizers: {}, state: { step: 1 } });
    const disposed = Tensor.fromTypedArray(new Float32Array([1]), [1]);
    disposed.dispose();
    await expect(saveCheckpoint(run, { tensors: { m: { w: disposed } }, optimizers: {}, state: { step: 2 } })).rejects.toThrow();
    expect(listCheckpoints(run)).toEqual(['step-00000001']);
    expect(path.basename(resolveCheckpoint('latest', run))).toBe('step-00000001');
    expect(fs.readdirSync(path.join(run, 'checkpoints')).sort()).toEqual(['latest', 'step-00000001']);
    fs.rmSync(run, { recursive: true, force: true });
  });
});
