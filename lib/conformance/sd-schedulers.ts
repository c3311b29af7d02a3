/**
 * Conformance runner for `sd-schedulers/`: every scheduler run of case.json (schedule, add_noise, and the
 * rollout with the stand-in model `model_output = a·scale_model_input(x, t) + fixed_eps`).
 */
import { RoundtripError } from '../errors';
import { Scheduler, schedulerName } from '../models/sd/schedulers';
import { Tensor, noGrad } from '../runtime/tensor';
import { ConformanceContext, registerConformance } from './registry';

/** The stand-in model's factor `a`, read from case.json → stand_in_model ("model_output_i = a * ..."). */
export function standInFactor(caseJson: any): number {
  const text = String(caseJson.stand_in_model ?? '');
  const m = /=\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*/.exec(text);
  if (!m) throw new RoundtripError(`sd-schedulers case.json: cannot read the stand-in factor from stand_in_model "${text}"`);
  return Number(m[1]);
}

async function runOne(run: string, spec: any, ctx: ConformanceContext, a: number, out: Record<string, Tensor>): Promise<void> {
  const io = ctx.io;
  const sched = await Scheduler.create(schedulerName(spec.class), spec.config);
  try {
    const sch = await sched.setTimesteps(spec.num_inference_steps);
    out[`${run}.timesteps`] = sch.timesteps;
    out[`${run}.init_noise_sigma`] = Tensor.fromTypedArray(new Float32Array([sch.initNoiseSigma]), []);
    if (sch.sigmas) out[`${run}.sigmas`] = sch.sigmas;
    sch.alphasCumprod.dispose();
    sch.betas.dispose();
    const n = sch.timesteps.shape[0];
    const replay = io[`${run}.rollout.variance_noise`];
    let sample = io['common.rollout.initial_noise'].mul(sch.initNoiseSigma);
    out[`${run}.rollout.initial_sample`] = sample;
    const inputs: Tensor[] = [], outputs: Tensor[] = [], prevs: Tensor[] = [], x0s: Tensor[] = [], variances: number[] = [], drawn: number[] = [];
    for (let i = 0; i < n; i++) {
      const modelInput = await sched.scaleModelInput(sample, i);
      const scaled = modelInput.mul(a);
      const modelOutput = scaled.add(io['common.rollout.fixed_eps']);
      scaled.dispose();
      const noise = replay ? replay.select(0, i) : undefined;
      const r = await sched.step(modelOutput, i, sample, { noise });
      noise?.dispose();
      r.noise?.dispose();
      inputs.push(modelInput);
      outputs.push(modelOutput);
      prevs.push(r.prevSample);
      if (r.predOriginalSample) x0s.push(r.predOriginalSample);
      variances.push(r.variance);
      drawn.push(r.noiseDrawn ? 1 : 0);
      sample = r.prevSample;
    }
    out[`${run}.rollout.model_input`] = Tensor.stack(inputs);
    out[`${run}.rollout.model_output`] = Tensor.stack(outputs);
    out[`${run}.rollout.prev_sample`] = Tensor.stack(prevs);
    if (x0s.length === n) out[`${run}.rollout.pred_original_sample`] = Tensor.stack(x0s);
    if (replay) {
      out[`${run}.rollout.variance`] = Tensor.fromTypedArray(Float32Array.from(variances), [n]);
      out[`${run}.rollout.noise_drawn`] = Tensor.fromBuffer(Uint8Array.from(drawn), 'bool', [n]);
    }
    for (const t of [...inputs, ...outputs, ...prevs, ...x0s]) t.dispose();
    const t = io[`${run}.add_noise.timesteps`];
    if (t) {
      out[`${run}.add_noise.noisy_samples`] = await sched.addNoise(io['common.add_noise.original_samples'], io['common.add_noise.noise'], t);
      // An integer input outside the `input.` prefix: echoed so the registry's exact check sees it.
      out[`${run}.add_noise.timesteps`] = t.clone();
    }
  } finally {
    sched.dispose();
  }
}

async function run(ctx: ConformanceContext): Promise<Record<string, Tensor>> {
  const a = standInFactor(ctx.caseJson);
  const runs: Record<string, number> = ctx.caseJson.scheduler_runs ?? {};
  const out: Record<string, Tensor> = {};
  await noGrad(async () => {
    for (const name of Object.keys(runs)) {
      const spec = ctx.config?.schedulers?.[name];
      if (!spec) throw new RoundtripError(`sd-schedulers config.json: no scheduler entry for run '${name}'`);
      await runOne(name, spec, ctx, a, out);
    }
  });
  return out;
}

/** The runner itself (for callers that parse the case files themselves). */
export function getRunner(): (ctx: ConformanceContext) => Promise<Record<string, Tensor>> {
  return run;
}

registerConformance('sd-schedulers', run);
