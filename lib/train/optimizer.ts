/** AdamW over a model's trainable tensors (one native call per step), with global-norm clipping. */
import { RoundtripError } from '../errors';
import { native, NativeOptimizerHandle } from '../runtime/native';
import { Tensor } from '../runtime/tensor';
import type { OptimizerStateData } from './checkpoint';

export interface AdamWOptions {
  lr?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
}


export class AdamW {
  private readonly handle: NativeOptimizerHandle;
  readonly names: string[];
  readonly params: Tensor[];

  /** `params`: name → trainable tensor (e.g. `model.tensors(model.setTrainable([...]))`). */
  constructor(params: Record<string, Tensor>, opts: AdamWOptions = {}) {
    this.names = Object.keys(params);
    this.params = Object.values(params);
    try {
      this.handle = native().createAdamW(this.params.map((p) => p.handle), JSON.stringify(opts));
    } catch (err) {
      throw new RoundtripError(err instanceof Error ? err.message : String(err));
    }
  }

  /** The native optimizer, for native training steps that update with it (lib/paper/joint/joint-step.ts). */
  get nativeHandle(): NativeOptimizerHandle {
    return this.handle;
  }

  step(): Promise<void> {
    return this.handle.step();
  }
  zeroGrad(): void {
    this.handle.zeroGrad();
  }
  setLr(lr: number): void {
    this.handle.setLr(lr);
  }
  /** Clips the gradients' global L2 norm to `maxNorm`; returns the norm before clipping. */
  clipGradNorm(maxNorm: number): number {
    return native().clipGradNorm(this.params.map((p) => p.handle), maxNorm);
  }
  exportState(): OptimizerStateData {
    const s = this.handle.state();
    const wrap = (h: any) => (h ? new Tensor(h) : null);
    return { step: s.step, names: this.names, expAvg: s.expAvg.map(wrap), expAvgSq: s.expAvgSq.map(wrap) };
  }
  importState(s: OptimizerStateData): void {
    if (s.names.join('\n') !== this.names.join('\n')) {
      throw new RoundtripError(`optimizer state is for parameters [${s.names.slice(0, 3).join(', ')}…], this run trains [${this.names.slice(0, 3).join(', ')}…]`);
    }
    try {
      this.handle.loadState(s.step, s.expAvg.map((t) => t?.handle ?? null), s.expAvgSq.map((t) => t?.handle ?? null));
    } catch (err) {
      throw new RoundtripError(err instanceof Error ? err.message : String(err));
    }
  }
}
