/**
 * Training checkpoints: only the trained tensors, the optimizer state and the loop state (step, epoch,
 * data order, RNG seeds), so resuming continues exactly. Layout:
 *
 *   <runDir>/checkpoints/step-00000120/
 *     <model>.safetensors        trained tensors under the model's published names (a partial state dict
 *                                that `caption`/`generate`/`rerank` load on top of the base weights)
 *     optimizer.safetensors      AdamW moments, `<model>/<name>/exp_avg|exp_avg_sq`
 *     state.json                 step, epoch, optimizer steps, loop state, config
 *   <runDir>/checkpoints/latest  the name of the newest complete checkpoint
 *
 * A checkpoint is written into a temporary folder, fsynced and renamed into place, then `latest` is
 * replaced atomically: a crash never leaves a half-written checkpoint that looks complete.
 */
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError } from '../errors';
import { describeWriteError, fsyncDirSync, writeFileAtomicSync } from '../fsutil';
import { loadSafetensors } from '../weights/safetensors';
import { saveTensors } from '../weights/save';
import { Tensor, disposeAll } from '../runtime/tensor';
import { readJsonFile } from '../json';

export interface OptimizerStateData {
  step: number;
  /** Per parameter name, in the optimizer's order. */
  names: string[];
  expAvg: (Tensor | null)[];
  expAvgSq: (Tensor | null)[];
}

export interface CheckpointData {
  /** Trained tensors per model ("blip", "unet", ...), under published names. */
  tensors: Record<string, Record<string, Tensor>>;
  /** Optimizer states per model. */
  optimizers: Record<string, OptimizerStateData>;
  /** Loop state: step, epoch, RNG and data-order positions, anything JSON. */
  state: { step: number; [key: string]: unknown };
}

export function checkpointsDir(runDir: string): string {
  return path.join(runDir, 'checkpoints');
}

function stepName(step: number): string {
  return `step-${String(step).padStart(8, '0')}`;
}

/** Writes a checkpoint atomically and keeps the newest `keepLast` (older ones are removed). */
export async function saveCheckpoint(runDir: string, data: CheckpointData, opts: { keepLast?: number } = {}): Promise<string> {
  const root = checkpointsDir(runDir);
  fs.mkdirSync(root, { recursive: true });
  const name = stepName(data.state.step);
  const final = path.join(root, name);
  const tmp = path.join(root, `.${name}.tmp-${process.pid}`);
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp);
  try {
    for (const [model, tensors] of Object.entries(data.tensors)) await saveTensors(path.join(tmp, `${model}.safetensors`), tensors, { format: 'pt', model });
    const moments: Record<string, Tensor> = {};
    const optimizers: Record<string, { step: number; names: string[]; present: boolean[] }> = {};
    for (const [model, o] of Object.entries(data.optimizers)) {
      optimizers[model] = { step: o.step, names: o.names, present: o.expAvg.map((t) => t !== null) };
      o.names.forEach((n, i) => {
        if (o.expAvg[i]) moments[`${model}/${n}/exp_avg`] = o.expAvg[i]!;
        if (o.expAvgSq[i]) moments[`${model}/${n}/exp_avg_sq`] = o.expAvgSq[i]!;
      });
    }
    await saveTensors(path.join(tmp, 'optimizer.safetensors'), moments);
    writeFileAtomicSync(path.join(tmp, 'state.json'), JSON.stringify({ ...data.state, optimizers, models: Object.keys(data.tensors) }, null, 2) + '\n');
    fsyncDirSync(tmp);
    fs.rmSync(final, { recursive: true, force: true });
    fs.renameSync(tmp, final);
    fsyncDirSync(root);
  } catch (err) {
    fs.rmSync(tmp, { recursive: true, force: true });
    const previous = listCheckpoints(runDir).pop();
    throw new RoundtripError(
      `checkpoint ${final}: not written: ${describeWriteError(err)}; ` +
        (previous ? `the previous checkpoint ${path.join(root, previous)} is intact (resume with --resume latest once there is room)` : 'no earlier checkpoint exists'),
    );
  }
  writeFileAtomicSync(path.join(root, 'latest'), name + '\n');
  const keep = opts.keepLast ?? 3;
  const all = listCheckpoints(runDir);
  for (const old of all.slice(0, Math.max(0, all.length - keep))) fs.rmSync(path.join(root, old), { recursive: true, force: true });
  return final;
}

/** Complete checkpoints, oldest first. */
export function listCheckpoints(runDir: string): string[] {
  const root = checkpointsDir(runDir);
  if (!fs.existsSync(root)) return [];
  return fs
    .readdirSync(root)
    .filter((n) => /^step-\d{8}$/.test(n) && fs.existsSync(path.join(root, n, 'state.json')))
    .sort();
}

/** `latest` → the newest complete checkpoint folder of a run; a folder → itself. */
export function resolveCheckpoint(spec: string, runDir: string): string {
  if (spec === 'latest') {
    const root = checkpointsDir(runDir);
    const pointer = path.join(root, 'latest');
    const name = fs.existsSync(pointer) ? fs.readFileSync(pointer, 'utf8').trim() : listCheckpoints(runDir).pop();
    if (!name || !fs.existsSync(path.join(root, name, 'state.json'))) throw new RoundtripError(`--resume latest: no complete checkpoint in ${root}`);
    return path.join(root, name);
  }
  if (!fs.existsSync(path.join(spec, 'state.json'))) throw new RoundtripError(`--resume ${spec}: not a checkpoint folder (no state.json)`);
  return spec;
}

/** Reads a checkpoint folder back. */
export async function loadCheckpoint(dir: string): Promise<CheckpointData> {
  const state = readJsonFile(path.join(dir, 'state.json'), { what: 'checkpoint state', object: true });
  const tensors: CheckpointData['tensors'] = {};
  for (const model of state.models as string[]) tensors[model] = await loadSafetensors(path.join(dir, `${model}.safetensors`));
  const moments = await loadSafetensors(path.join(dir, 'optimizer.safetensors'));
  const optimizers: CheckpointData['optimizers'] = {};
  for (const [model, o] of Object.entries<any>(state.optimizers ?? {})) {
    optimizers[model] = {
      step: o.step,
      names: o.names,
      expAvg: o.names.map((n: string) => moments[`${model}/${n}/exp_avg`] ?? null),
      expAvgSq: o.names.map((n: string) => moments[`${model}/${n}/exp_avg_sq`] ?? null),
    };
  }
  const { optimizers: _o, models: _m, ...rest } = state;
  return { tensors, optimizers, state: rest };
}

export function disposeCheckpoint(data: CheckpointData): void {
  disposeAll(Object.values(data.tensors));
  for (const o of Object.values(data.optimizers)) disposeAll([...o.expAvg, ...o.expAvgSq].filter(Boolean));
}
