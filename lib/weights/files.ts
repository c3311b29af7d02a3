/**
 * The weight files of a Hugging Face model folder, for every model family: one `<stem>.safetensors`, or
 * the shards that `<stem>.safetensors.index.json` lists (transformers' `save_pretrained` shards large
 * models, e.g. Salesforce/blip2-opt-2.7b). The native loader then copies the shards into the model one
 * tensor at a time, so peak memory stays near the model size. PyTorch `.bin` files (single or sharded via
 * `pytorch_model.bin.index.json`) are named with the conversion command to run.
 */
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError } from '../errors';
import { readJsonFile } from '../json';
import { writeFileAtomic } from '../fsutil';
import { ConvertOptions, convertToSafetensors } from './convert';
import { readSafetensorsHeader } from './safetensors';

export interface ShardIndex {
  /** The index file. */
  file: string;
  /** Shard paths in first-use order. */
  shards: string[];
  /** tensor name -> shard path. */
  weightMap: Record<string, string>;
}

/** Reads and checks a `*.index.json` (`{"weight_map": {tensor: shard file}}`); shards must exist beside it. */
export function readShardIndex(indexFile: string): ShardIndex {
  const json = readJsonFile(indexFile, { object: true, what: 'shard index' });
  const map = json.weight_map;
  if (map === null || typeof map !== 'object' || Array.isArray(map)) throw new RoundtripError(`${indexFile}: expected a "weight_map" object (tensor name -> shard file)`);
  const dir = path.dirname(indexFile);
  const weightMap: Record<string, string> = {};
  const shards: string[] = [];
  for (const [name, shard] of Object.entries(map)) {
    if (typeof shard !== 'string' || shard === '' || path.isAbsolute(shard) || shard.split(/[\\/]/).includes('..')) {
      throw new RoundtripError(`${indexFile}: weight_map["${name}"] must be a shard file name in the same folder, got ${JSON.stringify(shard)}`);
    }
    const full = path.join(dir, shard);
    if (!shards.includes(full)) shards.push(full);
    weightMap[name] = full;
  }
  if (shards.length === 0) throw new RoundtripError(`${indexFile}: the weight_map is empty`);
  for (const s of shards) if (!fs.existsSync(s)) throw new RoundtripError(`${indexFile}: shard ${path.basename(s)} is missing (expected ${s})`);
  return { file: indexFile, shards, weightMap };
}

/**
 * The safetensors files holding a folder's weights: `<stem>.safetensors` or the shards of
 * `<stem>.safetensors.index.json`, for the first stem that has either (default stems: `model`, then
 * diffusers' `diffusion_pytorch_model`).
 * @throws RoundtripError naming the folder, or the conversion to run when only `.bin` weights exist.
 */
export function hfWeightFiles(dir: string, stems: readonly string[] = ['model', 'diffusion_pytorch_model']): string[] {
  for (const stem of stems) {
    const single = path.join(dir, `${stem}.safetensors`);
    if (fs.existsSync(single)) return [single];
    const index = path.join(dir, `${stem}.safetensors.index.json`);
    if (fs.existsSync(index)) return readShardIndex(index).shards;
  }
  const binStems = stems.map((s) => (s === 'model' ? 'pytorch_model' : s));
  for (const stem of binStems) {
    for (const name of [`${stem}.bin.index.json`, `${stem}.bin`]) {
      const file = path.join(dir, name);
      if (fs.existsSync(file)) {
        throw new RoundtripError(`${dir}: only PyTorch weights (${name}) are present; convert them to safetensors first: roundtrip weights convert ${file} ${name.endsWith('.json') ? '<output folder>' : '<output file>.safetensors'}`);
      }
    }
  }
  const wanted = stems.flatMap((s) => [`${s}.safetensors`, `${s}.safetensors.index.json`]).join(', ');
  throw new RoundtripError(`${dir}: no weight file (expected one of ${wanted})`);
}

export interface ShardConversionReport {
  index: string;
  output: string;
  shards: { input: string; output: string; tensors: number; bytes: number }[];
}

/**
 * Converts a sharded PyTorch checkpoint (`pytorch_model.bin.index.json` + its `.bin` shards) into a
 * sharded safetensors one in `outDir`: each shard streamed to `<name>.safetensors` (`pytorch_model` →
 * `model`), then `model.safetensors.index.json` written last (atomically), so an interrupted run leaves no
 * index pointing at missing shards. Shard by shard: memory stays near one tensor.
 */
export async function convertShardedCheckpoint(indexFile: string, outDir: string, options: ConvertOptions = {}): Promise<ShardConversionReport> {
  const index = readShardIndex(indexFile);
  fs.mkdirSync(outDir, { recursive: true });
  const outName = (shard: string): string => path.basename(shard).replace(/^pytorch_model/, 'model').replace(/\.(bin|pt|pth)$/, '') + '.safetensors';
  const shards: ShardConversionReport['shards'] = [];
  const weightMap: Record<string, string> = {};
  let totalSize = 0;
  for (const shard of index.shards) {
    const output = path.join(outDir, outName(shard));
    const report = await convertToSafetensors(shard, output, options);
    const { tensors } = readSafetensorsHeader(output);
    for (const t of tensors) weightMap[t.name] = path.basename(output);
    shards.push({ input: shard, output, tensors: report.tensors, bytes: report.bytes });
    totalSize += report.bytes;
  }
  for (const name of Object.keys(index.weightMap)) {
    if (!(name in weightMap)) throw new RoundtripError(`${indexFile}: "${name}" is listed for ${path.basename(index.weightMap[name])} but that shard does not hold it`);
  }
  const output = path.join(outDir, 'model.safetensors.index.json');
  await writeFileAtomic(output, JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2) + '\n');
  return { index: indexFile, output, shards };
}
