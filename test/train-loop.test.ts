/**
 * The one training loop (lib/train/loop.ts) and its two users: pretraining's TypeScript objective
 * (`backpropObjective`) and finetuning's native joint step (`jointStepObjective`). The loop's contract —
 * learning rate per step, accumulation, clipping, the guard, checkpoints and exact resume — holds for any
 * plug-in, and the two plug-ins run the same objective to the same steps.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Blip } from '../lib/models/blip';
import { loadBridge } from '../lib/paper/bridge';
import { JointStep } from '../lib/paper/joint/joint-step';
import { ObjectiveOptions, presetWeights } from '../lib/paper/joint/objective';
import { deriveSeed } from '../lib/image/random';
import { Tensor, disposeAll } from '../lib/runtime/tensor';
import { AdamW } from '../lib/train/optimizer';
import { learningRate, LrScheduleConfig } from '../lib/train/schedule';
import { LoopCheckpoints, LoopRow, LoopSpec, TrainingLoop, backpropObjective, runTrainingLoop } from '../lib/train/loop';
import { jointStepObjective } from '../lib/train/finetune/objective';
import { trainablePatterns } from '../lib/train/finetune/trainer';
import { DATA } from './support/paths';
import { makeTinyBlip, makeTinySd } from './support/tiny-models';
import { JointModels, composed, free, loadJointModels } from './support/joint-models';
import { pixels } from './support/pixels';

jest.setTimeout(300000);

let root: string;
let blipDir: string;
let sdDir: string;
beforeAll(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'train-loop-'));
  blipDir = makeTinyBlip(path.join(root, 'blip'));
  sdDir = makeTinySd(path.join(root, 'sd'), 'DDPMScheduler');
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const schedule: LrScheduleConfig = { name: 'cosine', lr: 0.05, warmupSteps: 2, minLr: 0.005 };

/** BLIP's cross-attention queries, trained on a quadratic with per-(step, micro-batch) targets. */
async function toy(): Promise<{ blip: Blip; params: Record<string, Tensor>; opt: AdamW; loss: (step: number, micro: number) => Promise<Tensor> }> {
  const blip = await Blip.load(blipDir);
  const params = blip.model.tensors(blip.model.setTrainable(trainablePatterns('blip', 'xattn-q')));
  const opt = new AdamW(params, { lr: schedule.lr, weightDecay: 0.01 });
  const loss = async (step: number, micro: number) => {
    let total: Tensor | undefined;
    for (const t of Object.values(params)) {
      const d = t.sub(0.1 * ((step % 3) - micro));
      const term = d.mul(d).sum();
      total = total ? total.add(term) : term;
    }
    return total!;
  };
  return { blip, params, opt, loss };
}

function checkpoints(runDir: string, m: { blip: Blip; params: Record<string, Tensor>; opt: AdamW }, every: number): LoopCheckpoints {
  return {
    runDir,
    every,
    keepLast: 5,
    write: true,
    tensors: () => ({ blip: m.params }),
    optimizers: () => ({ blip: m.opt.exportState() }),
    state: () => ({}),
    restore: async (ck, dir) => {
      await m.blip.model.loadWeights([path.join(dir, 'blip.safetensors')], { partial: true });
      m.opt.importState(ck.optimizers.blip);
    },
  };
}

const weightsOf = (params: Record<string, Tensor>) => Object.values(params).map((t) => Array.from(t.toFloat32Array()));

describe('the loop contract (a TypeScript plug-in)', () => {
  test('the schedule’s learning rate each step, accumulation as the mean of micro-batches, clipping before the update', async () => {
    const a = await toy();
    const b = await toy();
    const run = await runTrainingLoop({ label: 'toy', totalSteps: 4, schedule, microBatches: 2, samplesPerStep: 2, objective: backpropObjective(a.opt, a.loss, { clip: 0.5 }), tensors: a.params });
    // The same steps by hand.
    for (let step = 0; step < 4; step++) {
      expect(run.rows[step].lr).toBe(learningRate(schedule, step, 4));
      b.opt.setLr(learningRate(schedule, step, 4));
      b.opt.zeroGrad();
      let loss = 0;
      for (let k = 0; k < 2; k++) {
        const l = await b.loss(step, k);
        loss += l.item() / 2;
        await l.div(2).backward();
      }
      expect(run.losses[step]).toBe(loss);
      expect(run.rows[step].gradNorm.total).toBe(b.opt.clipGradNorm(0.5));
      await b.opt.step();
    }
    expect(run.rows[0].gradNorm.total).toBeGreaterThan(0.5); // the clipping did something
    expect(weightsOf(a.params)).toEqual(weightsOf(b.params));
    a.blip.dispose();
    b.blip.dispose();
  });

  test('a stopped run resumes from its checkpoint to the same weights and log rows', async () => {
    const straight = await toy();
    const whole = await runTrainingLoop({ label: 'toy', totalSteps: 4, schedule, samplesPerStep: 1, objective: backpropObjective(straight.opt, straight.loss, { clip: 1 }), tensors: straight.params });
    const run = path.join(root, 'resume');
    const first = await toy();
    const stop = { stop: false };
    const spec = (m: typeof first): LoopSpec => ({ label: 'toy', totalSteps: 4, schedule, samplesPerStep: 1, objective: backpropObjective(m.opt, m.loss, { clip: 1 }), tensors: m.params, checkpoints: checkpoints(run, m, 0), stop, hooks: { afterStep: (row) => void (row.step === 2 && (stop.stop = true)) } });
    const loop1 = new TrainingLoop(spec(first));
    loop1.start();
    const part1 = await loop1.run();
    expect(part1).toMatchObject({ steps: 2, interrupted: true });
    await loop1.finalCheckpoint();
    first.blip.dispose();
    stop.stop = false;
    const second = await toy(); // fresh weights: everything comes from the checkpoint
    const loop2 = new TrainingLoop(spec(second));
    await loop2.resume('latest');
    expect(loop2.step).toBe(2);
    const part2 = await loop2.run();
    expect([...part1.losses, ...part2.losses]).toEqual(whole.losses);
    expect(part2.rows.map((r: LoopRow) => r.lr)).toEqual(whole.rows.slice(2).map((r) => r.lr));
    expect(weightsOf(second.params)).toEqual(weightsOf(straight.params));
    straight.blip.dispose();
    second.blip.dispose();
  });

  test('the guard: a non-finite step is not applied; stop names the step, lower-lr rolls back and scales the rate', async () => {
    const m = await toy();
    const before = weightsOf(m.params);
    const nanAt = (at: number, times: { left: number }) => async (step: number, micro: number) => {
      const l = await m.loss(step, micro);
      return step === at && times.left-- > 0 ? l.mul(0).div(0) : l; // 0/0: NaN
    };
    await expect(runTrainingLoop({ label: 'toy', totalSteps: 3, schedule, samplesPerStep: 1, objective: backpropObjective(m.opt, nanAt(0, { left: 1 }), { clip: 1 }), tensors: m.params })).rejects.toThrow(
      /^toy: non-finite or out-of-bounds training state: step 1: the loss is NaN; --nan-policy stop/,
    );
    expect(weightsOf(m.params)).toEqual(before); // refused before backward
    const run = path.join(root, 'guard');
    const loop = new TrainingLoop({
      label: 'toy',
      totalSteps: 4,
      schedule,
      samplesPerStep: 1,
      objective: backpropObjective(m.opt, nanAt(2, { left: 1 }), { clip: 1 }),
      tensors: m.params,
      checkpoints: checkpoints(run, m, 2),
      guard: { policy: 'lower-lr', retries: 1, lrFactor: 0.5 },
    });
    loop.start();
    const r = await loop.run();
    expect(r.rollbacks).toEqual([{ step: 3, to: 2, reason: 'step 3: the loss is NaN', policy: 'lower-lr' }]);
    expect(r.rows.map((x) => x.step)).toEqual([1, 2, 3, 4]);
    expect(r.rows[2].lr).toBe(0.5 * learningRate(schedule, 2, 4));
    expect(r.rows[1].lr).toBe(learningRate(schedule, 1, 4));
    m.blip.dispose();
  });
});

describe('both users through the loop', () => {
  const bridge = loadBridge(path.join(DATA, 'seed-release', 'reindex_clip_to_blip.json'));
  const opts: ObjectiveOptions = { weights: presetWeights('joint'), schedule: 'summed', temperature: 1, softMode: 'probs', recTxtMode: 'ddpm-step', labelSmoothing: 0.1, clipStartId: 49406, clipEndId: 49407, clipPadId: 49407 };
  const images = () => ({ blipImages: pixels(2, 64, 31, -1.8, 2.1), sdImages: pixels(2, 64, 32) });
  const seed = (step: number, k: number) => deriveSeed(9, 3, step, k);
  const adam = { lr: 2e-3, weightDecay: 0.01 };
  const jointSchedule: LrScheduleConfig = { name: 'cosine', lr: adam.lr, warmupSteps: 2, minLr: 1e-4 };
  const split = (m: JointModels, prefix: string) => Object.fromEntries(Object.entries(m.params).filter(([n]) => n.startsWith(prefix)));

  /** Finetuning's plug-in: the native step, accumulation and clipping inside one call. */
  function native(m: JointModels): { spec: Omit<LoopSpec, 'totalSteps' | 'label'>; dispose(): void } {
    const step = JointStep.create({ blip: m.blip, sd: m.sd, bridge, visionTrainable: false }, opts, {
      optimizers: { blip: new AdamW(split(m, 'blip:'), adam), unet: new AdamW(split(m, 'unet:'), adam) },
      clipMode: 'global',
      clip: 1,
    });
    const im = images();
    const objective = jointStepObjective(step, async (ctx) => {
      const seeds = Array.from({ length: ctx.microBatches }, (_, k) => seed(ctx.step, k));
      return { batches: seeds.map(() => ({ ...im, captions: m.captions })), seeds, dispose: () => undefined };
    });
    return { spec: { schedule: jointSchedule, microBatches: 2, samplesPerStep: 4, objective, tensors: m.params }, dispose: () => (step.dispose(), disposeAll([im.blipImages, im.sdImages])) };
  }

  /** Pretraining's plug-in on the same objective: the loss-term composition, backward, clipping and AdamW from TypeScript. */
  function backprop(m: JointModels): { spec: Omit<LoopSpec, 'totalSteps' | 'label'>; dispose(): void } {
    const im = images();
    const objective = backpropObjective(new AdamW(m.params, adam), async (step, k) => {
      const { total, terms } = await composed(m, { ...im, captions: m.captions }, opts, step, k, seed(step, k));
      disposeAll(Object.values(terms));
      return total;
    }, { clip: 1 });
    return { spec: { schedule: jointSchedule, microBatches: 2, samplesPerStep: 4, objective, tensors: m.params }, dispose: () => disposeAll([im.blipImages, im.sdImages]) };
  }

  test('the native joint step and the TypeScript composition give the same steps (accumulation 2, clipping, schedule)', async () => {
    const a = await loadJointModels(blipDir, sdDir, ['A dog runs on the grass.', 'two red buses parked near a building'], bridge);
    const b = await loadJointModels(blipDir, sdDir, ['A dog runs on the grass.', 'two red buses parked near a building'], bridge);
    const [na, bb] = [native(a), backprop(b)];
    const afterFirst: Record<string, Tensor>[] = [];
    const keep = (m: JointModels) => (step: number) => void (step === 1 && afterFirst.push(Object.fromEntries(Object.entries(m.params).map(([n, t]) => [n, t.detach().clone()]))));
    const ra = await runTrainingLoop({ label: 'finetune', totalSteps: 2, ...na.spec, hooks: { afterUpdate: keep(a) } });
    const rb = await runTrainingLoop({ label: 'finetune', totalSteps: 2, ...bb.spec, hooks: { afterUpdate: keep(b) } });
    expect(ra.rows.map((r) => r.lr)).toEqual(rb.rows.map((r) => r.lr));
    expect(ra.rows.map((r) => r.lr)).toEqual([adam.lr / 2, adam.lr]); // the warmup
    ra.losses.forEach((l, i) => expect(Math.abs(l - rb.losses[i]) / Math.abs(l)).toBeLessThan(1e-5));
    expect(Math.abs(ra.rows[0].gradNorm.total - rb.rows[0].gradNorm.total) / rb.rows[0].gradNorm.total).toBeLessThan(1e-4);
    // After the first update (later ones start from weights that differ by AdamW's rounding): within 1 % of lr.
    for (const n of Object.keys(a.params)) expect({ n, bad: afterFirst[0][n].compare(afterFirst[1][n], 0.01 * adam.lr, 0).bad }).toEqual({ n, bad: 0 });
    disposeAll(afterFirst.flatMap((x) => Object.values(x)));
    na.dispose();
    bb.dispose();
    free(a);
    free(b);
  });

  test('a non-finite loss stops either plug-in at that step with the same message', async () => {
    const a = await loadJointModels(blipDir, sdDir, ['A dog runs on the grass.', 'two red buses parked near a building'], bridge);
    const p = [native(a), backprop(a)];
    for (const x of p) {
      await expect(runTrainingLoop({ label: 'finetune', totalSteps: 2, ...x.spec, hooks: { afterLoss: (step) => (step === 1 ? NaN : undefined) } })).rejects.toThrow(
        /^finetune: non-finite or out-of-bounds training state: step 2: the loss is NaN; --nan-policy stop; the state was not saved and no verified checkpoint exists yet/,
      );
      x.dispose();
    }
    free(a);
  });
});
