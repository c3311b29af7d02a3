/**
 * One loader for every model family: `load(source, { kind?, device, dtype })`. `source` is a
 * diffusers/transformers folder, a single-file checkpoint (`.ckpt`, `.safetensors`: Stable Diffusion; the FID
 * Inception `.safetensors` with `kind: 'inception'`), or a pulled alias / repo id (`roundtrip weights pull`).
 * The family comes from the folder's config files when `kind` is left out; each family's config defaults are
 * applied by its native model, in one place (lib/models/config-defaults.ts mirrors them for TypeScript).
 */
import * as fs from 'fs';
import * as path from 'path';
import { RoundtripError, expectOneOf, expectString, invalid } from '../errors';
import { resolveModelPath } from '../weights/hub/resolve';
import { readJsonFile } from '../json';
import { FrozenDtype, checkFrozenDtype } from '../runtime/model';
import { Blip } from './blip';
import { Blip2, isBlip2Config } from './blip2';
import { BertModel } from './bert';
import { ClipModel } from './clip';
import { InceptionModel } from './inception';
import { VitModel } from './vit';
import { StableDiffusionPipeline } from './sd/pipeline';
import { isSingleFileCheckpoint } from './sd/single-file';

export const LOADABLE_KINDS = ['blip', 'blip2', 'sd', 'clip', 'vit', 'bert', 'inception'] as const;
export type LoadableKind = (typeof LOADABLE_KINDS)[number];

/** What `load` returns for each kind. */
export interface LoadedModels {
  blip: Blip;
  blip2: Blip2;
  sd: StableDiffusionPipeline;
  clip: ClipModel;
  vit: VitModel;
  bert: BertModel;
  inception: InceptionModel;
}

export const LOAD_DTYPES = ['fp32', 'bf16', 'fp16'] as const;
export type LoadDtype = (typeof LOAD_DTYPES)[number];

export interface LoadOptions<K extends LoadableKind = LoadableKind> {
  /** The family; default: read from the source (model_index.json → sd, config.json's model_type/architectures). */
  kind?: K;
  /** "cpu" (default), "cuda", "cuda:N". */
  device?: string;
  /**
   * Compute precision: fp32 (default), or CUDA autocast to bf16/fp16 for the families that run under it
   * (BLIP, BLIP-2, Stable Diffusion); refused by name elsewhere and on CPU (see NativeModel.setAutocast).
   */
  dtype?: LoadDtype;
  /**
   * CPU: freeze the model and hold its weights (≥ 2-D) in bf16/fp16, up-cast per op — an approximation that halves
   * their memory (NativeModel.setFrozenDtype; BLIP, CLIP and Stable Diffusion). To train some tensors of such a
   * model, load it in fp32, choose them with setTrainable, then call setFrozenDtype. Default 'fp32'.
   */
  frozenDtype?: FrozenDtype;
}

const AUTOCAST_KINDS: readonly LoadableKind[] = ['blip', 'blip2', 'sd'];

/** The family of a local source, from its files; throws naming what it found when it cannot tell. */
export function detectKind(source: string): LoadableKind {
  if (fs.existsSync(source) && fs.statSync(source).isFile()) {
    if (isSingleFileCheckpoint(source)) return 'sd';
    throw new RoundtripError(`${source}: a single file of unknown family; pass kind (one of ${LOADABLE_KINDS.join(', ')})`);
  }
  if (fs.existsSync(path.join(source, 'model_index.json'))) return 'sd';
  const file = path.join(source, 'config.json');
  if (!fs.existsSync(file)) throw new RoundtripError(`${source}: neither model_index.json (diffusers) nor config.json (transformers); pass kind or a model folder`);
  const config = readJsonFile(file, { what: 'model config', object: true });
  if (isBlip2Config(config)) return 'blip2';
  const type = String(config.model_type ?? '');
  const arch = Array.isArray(config.architectures) ? config.architectures.map(String) : [];
  if (type === 'blip' || arch.some((a: string) => a.startsWith('Blip'))) return 'blip';
  if (type === 'clip' || type === 'clip_text_model' || arch.some((a: string) => a.startsWith('CLIP'))) return 'clip';
  if (type === 'vit' || arch.some((a: string) => a.startsWith('ViT'))) return 'vit';
  if (type === 'bert' || arch.some((a: string) => a.startsWith('Bert'))) return 'bert';
  throw invalid(`${file} model_type`, `one of blip, blip-2, clip, clip_text_model, vit, bert (or pass kind)`, config.model_type);
}

/**
 * Loads a model of any family. `kind` narrows the return type; without it the result is the family read
 * from the source. Aliases and repo ids resolve to their pulled folder (a missing one names the pull to run).
 */
export async function load<K extends LoadableKind>(source: string, opts: LoadOptions<K> & { kind: K }): Promise<LoadedModels[K]>;
export async function load(source: string, opts?: LoadOptions): Promise<LoadedModels[LoadableKind]>;
export async function load(source: string, opts: LoadOptions = {}): Promise<LoadedModels[LoadableKind]> {
  const local = resolveModelPath(expectString('source', source));
  const kind = opts.kind === undefined ? detectKind(local) : expectOneOf('kind', opts.kind, LOADABLE_KINDS);
  const dtype = expectOneOf('dtype', opts.dtype ?? 'fp32', LOAD_DTYPES);
  if (dtype !== 'fp32' && !AUTOCAST_KINDS.includes(kind)) throw invalid('dtype', `fp32 for ${kind} models (autocast exists for ${AUTOCAST_KINDS.join(', ')})`, dtype);
  const device = opts.device ?? 'cpu';
  if (dtype !== 'fp32' && !device.startsWith('cuda')) throw invalid('dtype', `fp32 on ${device} (bf16/fp16 are CUDA autocast; CPU runs in fp32)`, dtype);
  const frozen = checkFrozenDtype(opts.frozenDtype, { device, precision: dtype }, { frozen: 'frozenDtype', device: 'device', precision: 'dtype' });
  const loaded = await loadKind(kind, local, device);
  try {
    if (dtype !== 'fp32') {
      if (loaded instanceof StableDiffusionPipeline) loaded.setAutocast(dtype);
      else if (loaded instanceof Blip || loaded instanceof Blip2) loaded.model.setAutocast(dtype);
    }
    if (frozen !== 'fp32') {
      if (loaded instanceof StableDiffusionPipeline) await loaded.setFrozenDtype(frozen); // its components load frozen
      else {
        // Frozen means every weight: converted tensors cannot train later (see frozenDtype above).
        const model = 'model' in loaded ? loaded.model : loaded.native;
        model.setTrainable([]);
        await model.setFrozenDtype(frozen);
      }
    }
  } catch (err) {
    loaded.dispose();
    throw err;
  }
  return loaded;
}

async function loadKind(kind: LoadableKind, source: string, device: string): Promise<LoadedModels[LoadableKind]> {
  switch (kind) {
    case 'blip':
      return Blip.load(source, { device });
    case 'blip2':
      return Blip2.load(source, { device });
    case 'sd':
      return StableDiffusionPipeline.load(source, { device });
    case 'clip':
      return ClipModel.load(source, { device });
    case 'vit':
      return VitModel.load(source, { device });
    case 'bert':
      return BertModel.load(source, { device });
    case 'inception':
      return InceptionModel.load(source, { device });
  }
}
