/**
 * CompVis/LDM single-file Stable Diffusion checkpoints (`sd-v1-4.ckpt`, `v1-5-pruned-emaonly.safetensors`, …) as
 * pipelines: the UNet / VAE / CLIP text-encoder configs are inferred from the tensor shapes and the values of
 * CompVis' `v1-inference.yaml` for what shapes cannot say (attention heads, GroupNorm groups, sample sizes,
 * scale factor), as diffusers' `from_single_file` does; the scheduler is the v1 PNDM config of the same yaml.
 * Explicit configs (a folder with unet_config.json / vae_config.json / text_encoder_config.json, or objects)
 * override the inferred ones key by key. `.ckpt` / `.pth` files are converted to a temporary safetensors file first
 * (through the restricted unpickler; nothing is executed).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { RoundtripError } from '../../errors';
import { writeFolderAtomic } from '../../fsutil';
import { readJsonFile } from '../../json';
import { convertToSafetensors } from '../../weights/convert';
import { readSafetensorsHeader } from '../../weights/safetensors';
import { SafetensorsEntry, writeSafetensors } from '../../weights/safetensors-writer';
import { readExactly } from '../../weights/zip';
import { LDM_TEXT_PREFIX, LDM_UNET_PREFIX, LDM_VAE_PREFIX, LdmRenames, ldmLayoutFromConfigs, ldmRenames } from './ldm-keys';

/** File extensions read as single-file checkpoints. */
export const SINGLE_FILE_EXTENSIONS = ['.ckpt', '.safetensors', '.pth', '.pt', '.bin'] as const;

/** Whether `p` is a file (not a folder) with a checkpoint extension. */
export function isSingleFileCheckpoint(p: string): boolean {
  return SINGLE_FILE_EXTENSIONS.some((e) => p.toLowerCase().endsWith(e)) && fs.existsSync(p) && fs.statSync(p).isFile();
}

/** A weight file as safetensors: itself, or a temporary conversion removed by `cleanup()`. */
export async function asSafetensorsFile(file: string): Promise<{ file: string; cleanup: () => void }> {
  if (file.toLowerCase().endsWith('.safetensors')) return { file, cleanup: () => undefined };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'roundtrip-convert-'));
  const cleanup = () => fs.rmSync(dir, { recursive: true, force: true });
  try {
    const out = path.join(dir, path.basename(file).replace(/\.[^.]+$/, '') + '.safetensors');
    await convertToSafetensors(file, out);
    return { file: out, cleanup };
  } catch (err) {
    cleanup();
    throw err;
  }
}

/** Converts every non-safetensors file of a list (e.g. `--weights x.pth`); `cleanup()` removes the temporaries. */
export async function asSafetensorsFiles(files: readonly string[]): Promise<{ files: string[]; cleanup: () => void }> {
  const done: { file: string; cleanup: () => void }[] = [];
  const cleanup = () => done.forEach((d) => d.cleanup());
  try {
    for (const f of files) done.push(await asSafetensorsFile(f));
  } catch (err) {
    cleanup();
    throw err;
  }
  return { files: done.map((d) => d.file), cleanup };
}

export interface SingleFileConfigs {
  unet: Record<string, any>;
  vae: Record<string, any>;
  textEncoder: Record<string, any>;
  scheduler: Record<string, any>;
}

/** Explicit config overrides: objects, or a folder holding unet_config.json / vae_config.json / text_encoder_config.json. */
export type SingleFileConfigOverrides = string | Partial<SingleFileConfigs>;

/** CompVis v1-inference.yaml values (and the PNDM scheduler SD v1 ships with). */
const V1 = {
  numHeads: 8, // unet_config.params.num_heads (diffusers' attention_head_dim for v1)
  groups: 32, // GroupNorm groups hard-coded in the LDM code
  imageSize: 64, // model.params.image_size (latent), 512 px
  scaleFactor: 0.18215,
  scheduler: {
    _class_name: 'PNDMScheduler',
    beta_start: 0.00085,
    beta_end: 0.012,
    beta_schedule: 'scaled_linear',
    num_train_timesteps: 1000,
    set_alpha_to_one: false,
    skip_prk_steps: true,
    steps_offset: 1,
    clip_sample: false,
    prediction_type: 'epsilon',
    timestep_spacing: 'leading',
  },
};

type Shapes = Map<string, readonly number[]>;

function shapeOf(shapes: Shapes, file: string, key: string): readonly number[] {
  const s = shapes.get(key);
  if (!s) throw new RoundtripError(`${file}: not a Stable Diffusion v1 single-file checkpoint (no '${key}')`);
  return s;
}

/** Indices n for which some key starts with `${prefix}${n}.`. */
function indices(shapes: Shapes, prefix: string): number[] {
  const out = new Set<number>();
  for (const k of shapes.keys()) {
    if (!k.startsWith(prefix)) continue;
    const m = /^(\d+)\./.exec(k.slice(prefix.length));
    if (m) out.add(Number(m[1]));
  }
  return [...out].sort((a, b) => a - b);
}

/** diffusers/transformers configs inferred from an LDM state dict's shapes plus v1-inference.yaml values. */
export function inferSingleFileConfigs(shapes: Shapes, file = 'checkpoint'): SingleFileConfigs {
  const U = LDM_UNET_PREFIX;
  const convIn = shapeOf(shapes, file, `${U}input_blocks.0.0.weight`);
  const ch = convIn[0];
  // LDM numbering: level i holds input_blocks (n+1)i+1 … (n+1)i+n and, except the last, a downsampler at (n+1)(i+1).
  const ops = indices(shapes, `${U}input_blocks.`).filter((k) => shapes.has(`${U}input_blocks.${k}.0.op.weight`));
  const inputBlocks = indices(shapes, `${U}input_blocks.`);
  const n = ops.length ? ops[0] - 1 : inputBlocks.length - 1;
  const levels = Math.round(inputBlocks.length / (n + 1));
  if (n < 1 || levels * (n + 1) !== inputBlocks.length) throw new RoundtripError(`${file}: cannot read the UNet block layout from its input_blocks`);
  const blockOut: number[] = [];
  const down: string[] = [];
  for (let i = 0; i < levels; i++) {
    const k = (n + 1) * i + 1;
    blockOut.push(shapeOf(shapes, file, `${U}input_blocks.${k}.0.out_layers.3.weight`)[0]);
    down.push(shapes.has(`${U}input_blocks.${k}.1.proj_in.weight`) ? 'CrossAttnDownBlock2D' : 'DownBlock2D');
  }
  const up = [...down].reverse().map((t) => (t === 'CrossAttnDownBlock2D' ? 'CrossAttnUpBlock2D' : 'UpBlock2D'));
  const xattnK = [...shapes.entries()].find(([k]) => k.startsWith(U) && k.endsWith('.attn2.to_k.weight'));
  if (!xattnK) throw new RoundtripError(`${file}: no cross-attention (attn2.to_k) in the UNet: not an SD v1 text-to-image checkpoint`);
  const projIn = [...shapes.entries()].find(([k]) => k.startsWith(U) && k.endsWith('.proj_in.weight'))!;
  const unet: Record<string, any> = {
    _class_name: 'UNet2DConditionModel',
    act_fn: 'silu',
    attention_head_dim: V1.numHeads,
    block_out_channels: blockOut,
    center_input_sample: false,
    cross_attention_dim: xattnK[1][1],
    down_block_types: down,
    downsample_padding: 1,
    flip_sin_to_cos: true,
    freq_shift: 0,
    in_channels: convIn[1],
    layers_per_block: n,
    mid_block_scale_factor: 1,
    norm_eps: 1e-5,
    norm_num_groups: V1.groups,
    out_channels: shapeOf(shapes, file, `${U}out.2.weight`)[0],
    sample_size: V1.imageSize,
    up_block_types: up,
    // SD 2.x checkpoints hold Linear projections ([C, C]); v1 keeps 1×1 convs.
    use_linear_projection: projIn[1].length === 2,
  };
  if (blockOut[0] !== ch) throw new RoundtripError(`${file}: UNet conv_in has ${ch} channels but the first block ${blockOut[0]}`);

  const V = LDM_VAE_PREFIX;
  const vaeLevels = indices(shapes, `${V}encoder.down.`);
  const vaeOut = vaeLevels.map((i) => shapeOf(shapes, file, `${V}encoder.down.${i}.block.0.conv2.weight`)[0]);
  const vaeLayers = indices(shapes, `${V}encoder.down.0.block.`).length;
  const vae: Record<string, any> = {
    _class_name: 'AutoencoderKL',
    act_fn: 'silu',
    block_out_channels: vaeOut,
    down_block_types: vaeOut.map(() => 'DownEncoderBlock2D'),
    in_channels: shapeOf(shapes, file, `${V}encoder.conv_in.weight`)[1],
    latent_channels: shapeOf(shapes, file, `${V}quant_conv.weight`)[0] / 2,
    layers_per_block: vaeLayers,
    norm_num_groups: V1.groups,
    out_channels: shapeOf(shapes, file, `${V}decoder.conv_out.weight`)[0],
    sample_size: V1.imageSize * 2 ** (vaeOut.length - 1),
    scaling_factor: V1.scaleFactor,
    up_block_types: vaeOut.map(() => 'UpDecoderBlock2D'),
  };

  const T = LDM_TEXT_PREFIX + 'text_model.';
  const tok = shapeOf(shapes, file, `${T}embeddings.token_embedding.weight`);
  const hidden = tok[1];
  const textEncoder: Record<string, any> = {
    architectures: ['CLIPTextModel'],
    model_type: 'clip_text_model',
    hidden_act: 'quick_gelu',
    hidden_size: hidden,
    intermediate_size: shapeOf(shapes, file, `${T}encoder.layers.0.mlp.fc1.weight`)[0],
    layer_norm_eps: 1e-5,
    max_position_embeddings: shapeOf(shapes, file, `${T}embeddings.position_embedding.weight`)[0],
    // ViT-L/14's text tower (FrozenCLIPEmbedder): 64-wide heads.
    num_attention_heads: Math.max(1, Math.round(hidden / 64)),
    num_hidden_layers: indices(shapes, `${T}encoder.layers.`).length,
    vocab_size: tok[0],
    bos_token_id: 0,
    eos_token_id: 2,
    pad_token_id: 1,
    projection_dim: hidden,
  };
  return { unet, vae, textEncoder, scheduler: { ...V1.scheduler } };
}

function readOverrides(o: SingleFileConfigOverrides | undefined): Partial<SingleFileConfigs> {
  if (o === undefined) return {};
  if (typeof o !== 'string') return o;
  const read = (name: string) => (fs.existsSync(path.join(o, name)) ? readJsonFile(path.join(o, name), { object: true }) : undefined);
  const out: Partial<SingleFileConfigs> = {};
  const unet = read('unet_config.json');
  const vae = read('vae_config.json');
  const text = read('text_encoder_config.json');
  const sched = read('scheduler_config.json');
  if (unet) out.unet = unet;
  if (vae) out.vae = vae;
  if (text) out.textEncoder = text;
  if (sched) out.scheduler = sched;
  if (!unet && !vae && !text && !sched) throw new RoundtripError(`${o}: no unet_config.json, vae_config.json, text_encoder_config.json or scheduler_config.json`);
  return out;
}

/** A single-file checkpoint opened for loading: safetensors file, configs and the per-component renames. */
export interface OpenedSingleFile {
  /** The safetensors file to read (a temporary conversion for .ckpt/.pth). */
  file: string;
  configs: SingleFileConfigs;
  renames: LdmRenames;
  cleanup: () => void;
}

/** Opens an LDM single file: converts it if needed, infers (and overrides) the configs, maps the keys. */
export async function openSingleFile(source: string, overrides?: SingleFileConfigOverrides): Promise<OpenedSingleFile> {
  const st = await asSafetensorsFile(source);
  try {
    const tensors = readSafetensorsHeader(st.file).tensors;
    // Older checkpoints name the CLIP tower without transformers' `text_model.` level.
    const shapes: Shapes = new Map(tensors.map((t) => [t.name.startsWith(LDM_TEXT_PREFIX) && !t.name.startsWith(LDM_TEXT_PREFIX + 'text_model.') ? LDM_TEXT_PREFIX + 'text_model.' + t.name.slice(LDM_TEXT_PREFIX.length) : t.name, t.shape]));
    const inferred = inferSingleFileConfigs(shapes, source);
    const o = readOverrides(overrides);
    const configs: SingleFileConfigs = {
      unet: { ...inferred.unet, ...(o.unet ?? {}) },
      vae: { ...inferred.vae, ...(o.vae ?? {}) },
      textEncoder: { ...inferred.textEncoder, ...(o.textEncoder ?? {}) },
      scheduler: { ...inferred.scheduler, ...(o.scheduler ?? {}) },
    };
    const renames = ldmRenames(tensors.map((t) => t.name), ldmLayoutFromConfigs(configs.unet, configs.vae));
    for (const [k, v] of Object.entries(renames.textEncoder.renames)) if (!v.startsWith('text_model.')) renames.textEncoder.renames[k] = 'text_model.' + v;
    if (renames.unknown.length) throw new RoundtripError(`${source}: ${renames.unknown.length} entries outside the UNet, VAE and text encoder (e.g. '${renames.unknown[0]}')`);
    return { file: st.file, configs, renames, cleanup: st.cleanup };
  } catch (err) {
    st.cleanup();
    throw err;
  }
}

/** Files of a CLIP tokenizer folder copied into a diffusers folder's tokenizer/. */
const TOKENIZER_FILES = ['vocab.json', 'merges.txt', 'tokenizer_config.json', 'special_tokens_map.json'];

/**
 * Writes a diffusers StableDiffusionPipeline folder (model_index.json, scheduler/, tokenizer/, text_encoder/,
 * unet/, vae/) from an LDM single file, atomically. Tensors are copied byte for byte under their diffusers names;
 * the VAE attention projections lose LDM's 1×1 conv dims ([C, C, 1, 1] → [C, C], [C, 1, 1] → [C]).
 */
export async function writeDiffusersFolder(
  source: string,
  outDir: string,
  opts: { configs?: SingleFileConfigOverrides; tokenizer: string },
): Promise<{ tensors: number; dropped: string[] }> {
  const opened = await openSingleFile(source, opts.configs);
  try {
    const header = readSafetensorsHeader(opened.file);
    const byName = new Map(header.tensors.map((t) => [t.name, t]));
    const fd = fs.openSync(opened.file, 'r');
    let count = 0;
    try {
      const entriesFor = (prefix: string, renames: Record<string, string>, flatten: boolean): SafetensorsEntry[] =>
        Object.entries(renames).map(([from, to]) => {
          const t = byName.get(prefix + from)!;
          let shape = [...t.shape];
          if (flatten && /\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$/.test(to)) {
            while (shape.length > (to.endsWith('.weight') ? 2 : 1) && shape[shape.length - 1] === 1) shape = shape.slice(0, -1);
          }
          return {
            name: to,
            dtype: t.dtype,
            shape,
            read: () => readExactly(fd, opened.file, header.dataStart + t.dataOffsets[0], t.dataOffsets[1] - t.dataOffsets[0]),
          };
        });
      const { configs, renames } = opened;
      await writeFolderAtomic(outDir, async (dir) => {
        const json = (rel: string, value: unknown) => {
          fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
          fs.writeFileSync(path.join(dir, rel), JSON.stringify(value, null, 2) + '\n');
        };
        json('model_index.json', {
          _class_name: 'StableDiffusionPipeline',
          _diffusers_version: '0.25.1',
          scheduler: ['diffusers', String(configs.scheduler._class_name ?? 'PNDMScheduler')],
          text_encoder: ['transformers', 'CLIPTextModel'],
          tokenizer: ['transformers', 'CLIPTokenizer'],
          unet: ['diffusers', 'UNet2DConditionModel'],
          vae: ['diffusers', 'AutoencoderKL'],
          safety_checker: [null, null],
          feature_extractor: [null, null],
          requires_safety_checker: false,
        });
        json('scheduler/scheduler_config.json', configs.scheduler);
        json('unet/config.json', configs.unet);
        json('vae/config.json', configs.vae);
        json('text_encoder/config.json', configs.textEncoder);
        fs.mkdirSync(path.join(dir, 'tokenizer'));
        for (const f of TOKENIZER_FILES) if (fs.existsSync(path.join(opts.tokenizer, f))) fs.copyFileSync(path.join(opts.tokenizer, f), path.join(dir, 'tokenizer', f));
        const parts: [string, SafetensorsEntry[]][] = [
          ['unet/diffusion_pytorch_model.safetensors', entriesFor(renames.unet.prefix, renames.unet.renames, false)],
          ['vae/diffusion_pytorch_model.safetensors', entriesFor(renames.vae.prefix, renames.vae.renames, true)],
          ['text_encoder/model.safetensors', entriesFor(renames.textEncoder.prefix, renames.textEncoder.renames, false)],
        ];
        for (const [rel, entries] of parts) {
          count += (await writeSafetensors(path.join(dir, rel), entries, { format: 'pt' })).tensors;
        }
      });
    } finally {
      fs.closeSync(fd);
    }
    return { tensors: count, dropped: opened.renames.dropped };
  } finally {
    opened.cleanup();
  }
}
