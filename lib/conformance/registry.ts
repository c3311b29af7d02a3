/**
 * Conformance: run a reference fixture folder (format of shared/fixtures/reference/README*.md) through
 * roundtrip's own component and compare every output with the tolerance its case.json gives.
 *
 * Each component registers a runner under the case's `name` (e.g. "vit-dino"); the runner computes
 * outputs under the fixture's own tensor names. Outputs it does not produce count as failures.
 */
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError } from '../errors';
import { loadSafetensors } from '../weights/safetensors';
import { readJsonFile } from '../json';
import { TOKENIZER_CASES_FILE, runTokenizerCases } from './tokenizers';
import { Tensor, disposeAll } from '../runtime/tensor';

export interface ConformanceContext {
  /** The fixture folder. */
  dir: string;
  /** Parsed case.json. */
  caseJson: any;
  /** Parsed config.json, when the folder has one. */
  config: any;
  /** Every tensor of io.safetensors (inputs and expected outputs). */
  io: Record<string, Tensor>;
  device: string;
}

/** Computes outputs named like the fixture's expected tensors. */
export type ConformanceRunner = (ctx: ConformanceContext) => Promise<Record<string, Tensor>>;

const runners = new Map<string, ConformanceRunner>();

export function registerConformance(name: string, runner: ConformanceRunner): void {
  runners.set(name, runner);
}

export function conformanceNames(): string[] {
  return [...runners.keys()].sort();
}

export interface TensorResult {
  name: string;
  status: 'ok' | 'fail' | 'missing';
  compare: 'exact' | 'allclose';
  maxAbs: number;
  maxRel: number;
  atol: number;
  rtol: number;
  bad: number;
  numel: number;
  detail?: string;
}

export interface CaseResult {
  dir: string;
  name: string;
  ok: boolean;
  results: TensorResult[];
  seconds: number;
}

interface TensorSpec {
  dtype: string;
  shape: number[];
  role?: string;
  compare?: string;
  recommended_atol?: number;
  recommended_rtol?: number;
}

const INTEGER_DTYPES = new Set(['I64', 'I32', 'I16', 'I8', 'U8', 'BOOL']);

/** Which tensors of a case are expected outputs, and how each is compared. */
export function expectedOutputs(caseJson: any): { name: string; compare: 'exact' | 'allclose'; atol: number; rtol: number }[] {
  const out = [];
  for (const [name, spec] of Object.entries<TensorSpec>(caseJson.tensors ?? {})) {
    const isInput = spec.role === 'input' || name.startsWith('input.') || name.startsWith('common.');
    if (spec.role === 'output' || spec.recommended_atol !== undefined) {
      const exact = spec.compare === 'exact' || (spec.recommended_atol === undefined && INTEGER_DTYPES.has(spec.dtype));
      out.push({ name, compare: exact ? ('exact' as const) : ('allclose' as const), atol: exact ? 0 : spec.recommended_atol ?? 0, rtol: exact ? 0 : spec.recommended_rtol ?? 1e-4 });
    } else if (!isInput && spec.role === undefined && INTEGER_DTYPES.has(spec.dtype) && !/noise/.test(name)) {
      out.push({ name, compare: 'exact' as const, atol: 0, rtol: 0 });
    }
  }
  return out;
}


/** Runs one fixture folder. */
export async function runConformanceCase(dir: string, opts: { device?: string; vocab?: string } = {}): Promise<CaseResult> {
  const started = Date.now();
  const casePath = path.join(dir, 'case.json');
  if (!fs.existsSync(casePath) && fs.existsSync(path.join(dir, TOKENIZER_CASES_FILE))) return runTokenizerCases(dir, opts.vocab);
  if (!fs.existsSync(casePath)) throw new RoundtripError(`${dir}: not a reference fixture folder (no case.json, no ${TOKENIZER_CASES_FILE})`);
  const caseJson = readJsonFile(casePath);
  const name: string = caseJson.name ?? path.basename(dir);
  const runner = runners.get(name);
  if (!runner) throw new RoundtripError(`${dir}: no conformance runner for case '${name}' (known: ${conformanceNames().join(', ') || 'none'})`);
  const configPath = path.join(dir, 'config.json');
  const config = fs.existsSync(configPath) ? readJsonFile(configPath) : undefined;
  // Inputs and expected tensors live on the run's device, so runners can combine them with outputs.
  const io = await loadSafetensors(path.join(dir, 'io.safetensors'), { device: opts.device });
  let produced: Record<string, Tensor> = {};
  try {
    produced = await runner({ dir, caseJson, config, io, device: opts.device ?? 'cpu' });
    const results: TensorResult[] = [];
    for (const exp of expectedOutputs(caseJson)) {
      const ref = io[exp.name];
      const mine = produced[exp.name];
      const base = { name: exp.name, compare: exp.compare, atol: exp.atol, rtol: exp.rtol };
      if (!mine || !ref) {
        results.push({ ...base, status: 'missing', maxAbs: NaN, maxRel: NaN, bad: 0, numel: 0, detail: !ref ? 'not in io.safetensors' : 'not computed' });
        continue;
      }
      if (mine.shape.join(',') !== ref.shape.join(',')) {
        results.push({ ...base, status: 'fail', maxAbs: NaN, maxRel: NaN, bad: ref.numel, numel: ref.numel, detail: `shape [${mine.shape}] vs expected [${ref.shape}]` });
        continue;
      }
      const c = mine.compare(ref, exp.atol, exp.rtol);
      results.push({ ...base, status: c.bad === 0 ? 'ok' : 'fail', ...c });
    }
    return { dir, name, ok: results.every((r) => r.status === 'ok'), results, seconds: (Date.now() - started) / 1000 };
  } finally {
    disposeAll(produced);
    disposeAll(io);
  }
}
