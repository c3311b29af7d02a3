/**
 * Noise schedulers (native, built by the addon's `createScheduler`, not a model kind; one C++ file each in native/models/schedulers/): DDPM, DDIM,
 * PNDM (PRK warm-up / PLMS), Euler, Euler ancestral, Heun, LMS and DPM-Solver(++) multistep, configured from a
 * diffusers scheduler_config.json (every key of the class implemented or refused by name). Steps are addressed by
 * their index in `timesteps`; a run may begin mid-schedule (img2img `strength`).
 */
import { expectInteger, expectNumber, invalid } from '../../errors';
import { NativeModel } from '../../runtime/model';
import type { MethodOptions } from '../../runtime/native-methods';
import { disposeAll, Tensor } from '../../runtime/tensor';
import { readJsonFile } from '../../json';

/** Scheduler names accepted by the CLI and the pipeline. */
export const SCHEDULER_NAMES = ['ddpm', 'ddim', 'pndm', 'euler', 'euler_ancestral', 'heun', 'lms', 'dpm++'] as const;
export type SchedulerName = (typeof SCHEDULER_NAMES)[number];

const CLASS_TO_NAME: Record<string, SchedulerName> = {
  DDPMScheduler: 'ddpm',
  DDIMScheduler: 'ddim',
  PNDMScheduler: 'pndm',
  EulerDiscreteScheduler: 'euler',
  EulerAncestralDiscreteScheduler: 'euler_ancestral',
  HeunDiscreteScheduler: 'heun',
  LMSDiscreteScheduler: 'lms',
  DPMSolverMultistepScheduler: 'dpm++',
};

/** Resolves a scheduler name, alias ("dpmsolver", "plms") or diffusers class name. */
export function schedulerName(name: string): SchedulerName {
  if (CLASS_TO_NAME[name]) return CLASS_TO_NAME[name];
  const n = name.toLowerCase();
  if (n === 'dpmsolver' || n === 'dpmsolver++' || n === 'dpm') return 'dpm++';
  if (n === 'plms') return 'pndm';
  if (n === 'euler_a' || n === 'euler-ancestral' || n === 'euler-a') return 'euler_ancestral';
  if ((SCHEDULER_NAMES as readonly string[]).includes(n)) return n as SchedulerName;
  throw invalid('scheduler', `one of ${SCHEDULER_NAMES.join(', ')}`, name);
}

export { parsePythonJson } from '../../json';

/** Reads a scheduler_config.json. */
export function readSchedulerConfig(file: string): Record<string, unknown> {
  return readJsonFile(file, { what: 'scheduler config', object: true });
}

export interface Schedule {
  /** int64 [N] (ddpm/ddim/pndm/dpm++) or float32 [N] (euler/lms). PNDM has N+1 entries. */
  timesteps: Tensor;
  /** float32 [len+1] for sigma schedulers. */
  sigmas?: Tensor;
  initNoiseSigma: number;
  alphasCumprod: Tensor;
  betas: Tensor;
  /** The run's first step index (0, or the img2img start of `strength`). */
  beginIndex: number;
  /** Model calls per step of the requested count (diffusers' scheduler.order: Heun 2, others 1). */
  order: number;
}

export interface StepOutput {
  prevSample: Tensor;
  predOriginalSample?: Tensor;
  /** DDPM: the variance whose square root scales the noise. */
  variance: number;
  noiseDrawn: boolean;
  /** The noise used (given or drawn). */
  noise?: Tensor;
}

export class Scheduler {
  private constructor(readonly model: NativeModel<'scheduler'>, readonly name: SchedulerName, readonly config: Record<string, unknown>) {}

  /** Builds a scheduler of `name` from a scheduler_config.json object (its `_class_name` may differ). */
  static async create(name: string, config: Record<string, unknown>): Promise<Scheduler> {
    const resolved = schedulerName(name);
    return new Scheduler(await NativeModel.createScheduler(resolved === 'dpm++' ? 'dpmsolver' : resolved, config), resolved, config);
  }

  /**
   * Computes the schedule for `steps` steps and restarts the run; `seed` seeds noise the steps draw. The run
   * begins at step `begin`, or at img2img's start for `strength` (index (steps − ⌊steps·strength⌋)·order, as
   * diffusers' StableDiffusionImg2ImgPipeline).
   */
  async setTimesteps(steps: number, opts: { seed?: number; begin?: number; strength?: number } = {}): Promise<Schedule> {
    expectInteger('steps', steps, { min: 1 });
    const o: MethodOptions<'scheduler', 'set_timesteps'> = { steps, seed: opts.seed ?? 0 };
    if (opts.strength !== undefined) o.strength = expectNumber('strength', opts.strength, { min: 0, max: 1 });
    else if (opts.begin !== undefined) o.begin = expectInteger('begin', opts.begin, { min: 0 });
    const out = await this.model.call('set_timesteps', {}, o);
    const initNoiseSigma = out.init_noise_sigma.item();
    const beginIndex = Number(out.begin_index.item());
    const order = Number(out.order.item());
    disposeAll([out.init_noise_sigma, out.begin_index, out.order]);
    return { timesteps: out.timesteps, sigmas: out.sigmas, initNoiseSigma, alphasCumprod: out.alphas_cumprod, betas: out.betas, beginIndex, order };
  }

  async scaleModelInput(sample: Tensor, step: number): Promise<Tensor> {
    return (await this.model.call('scale_model_input', { sample }, { step })).sample;
  }

  /** One step; `noise` replays recorded noise instead of drawing it. */
  async step(modelOutput: Tensor, step: number, sample: Tensor, opts: { noise?: Tensor } = {}): Promise<StepOutput> {
    const out = await this.model.call('step', { model_output: modelOutput, sample, noise: opts.noise }, { step });
    const variance = out.variance.item();
    const noiseDrawn = out.noise_drawn.item() !== 0;
    out.variance.dispose();
    out.noise_drawn.dispose();
    return { prevSample: out.prev_sample, predOriginalSample: out.pred_original_sample, variance, noiseDrawn, noise: out.noise };
  }

  /** Forward diffusion at per-sample timesteps ([B]). */
  async addNoise(originalSamples: Tensor, noise: Tensor, timesteps: Tensor): Promise<Tensor> {
    return (await this.model.call('add_noise', { original_samples: originalSamples, noise, timesteps })).noisy_samples;
  }

  /** The v-prediction target √ᾱ·ε − √(1−ᾱ)·x0. */
  async getVelocity(sample: Tensor, noise: Tensor, timesteps: Tensor): Promise<Tensor> {
    return (await this.model.call('get_velocity', { sample, noise, timesteps })).velocity;
  }

  dispose(): void {
    this.model.dispose();
  }
}
