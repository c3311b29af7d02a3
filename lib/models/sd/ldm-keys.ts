/**
 * CompVis/LDM single-file checkpoints (`sd-v1-4.ckpt` layout) → diffusers/transformers key names, for any
 * `layers_per_block` and block count (diffusers' own conversion script hard-codes layers_per_block = 2).
 *
 * Prefixes: `model.diffusion_model.` (UNet), `first_stage_model.` (VAE), `cond_stage_model.transformer.`
 * (CLIP text encoder, transformers names after the prefix). LDM-only entries (DDPM schedule buffers, EMA
 * bookkeeping, position_ids) are dropped.
 */
import { RoundtripError } from '../../errors';

export const LDM_UNET_PREFIX = 'model.diffusion_model.';
export const LDM_VAE_PREFIX = 'first_stage_model.';
export const LDM_TEXT_PREFIX = 'cond_stage_model.transformer.';

/** Entries of an LDM checkpoint that have no diffusers counterpart. */
const LDM_ONLY = new Set([
  'betas',
  'alphas_cumprod',
  'alphas_cumprod_prev',
  'sqrt_alphas_cumprod',
  'sqrt_one_minus_alphas_cumprod',
  'log_one_minus_alphas_cumprod',
  'sqrt_recip_alphas_cumprod',
  'sqrt_recipm1_alphas_cumprod',
  'posterior_variance',
  'posterior_log_variance_clipped',
  'posterior_mean_coef1',
  'posterior_mean_coef2',
  'model_ema.decay',
  'model_ema.num_updates',
  `${LDM_TEXT_PREFIX}text_model.embeddings.position_ids`,
]);

/** The parts of the diffusers configs the LDM numbering depends on. */
export interface LdmLayout {
  /** UNet layers_per_block (uniform; LDM numbers blocks by it). */
  unetLayersPerBlock: number;
  /** UNet up_block_types (which up blocks carry attentions). */
  unetUpBlockTypes: string[];
  /** Number of VAE resolution levels (len(block_out_channels)); the decoder's LDM levels are reversed. */
  vaeLevels: number;
}

/** Reads the layout from diffusers unet/vae config objects. */
export function ldmLayoutFromConfigs(unetConfig: Record<string, any>, vaeConfig: Record<string, any>): LdmLayout {
  let lpb = unetConfig.layers_per_block ?? 2;
  if (Array.isArray(lpb)) {
    if (!lpb.every((v) => v === lpb[0])) throw new RoundtripError(`unet config: per-block layers_per_block ${JSON.stringify(lpb)} has no LDM numbering`);
    lpb = lpb[0];
  }
  if (!Number.isInteger(lpb) || lpb < 1) throw new RoundtripError(`unet config: layers_per_block must be a positive integer, got ${JSON.stringify(lpb)}`);
  const upTypes: string[] = unetConfig.up_block_types ?? ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'];
  const vaeLevels = (vaeConfig.block_out_channels ?? [64]).length;
  return { unetLayersPerBlock: lpb, unetUpBlockTypes: upTypes, vaeLevels };
}

const RESNET_INNER: Record<string, string> = {
  'in_layers.0': 'norm1',
  'in_layers.2': 'conv1',
  'emb_layers.1': 'time_emb_proj',
  'out_layers.0': 'norm2',
  'out_layers.3': 'conv2',
  skip_connection: 'conv_shortcut',
};

function resnetInner(rest: string, key: string): string {
  for (const [from, to] of Object.entries(RESNET_INNER)) if (rest.startsWith(from + '.')) return to + rest.slice(from.length);
  throw new RoundtripError(`LDM checkpoint: unknown resnet entry '${key}'`);
}

/** One UNet key without its prefix → the diffusers name. */
export function ldmUnetKey(key: string, layout: LdmLayout): string {
  const n = layout.unetLayersPerBlock;
  let m: RegExpExecArray | null;
  if ((m = /^time_embed\.([02])\.(.+)$/.exec(key))) return `time_embedding.linear_${m[1] === '0' ? 1 : 2}.${m[2]}`;
  if ((m = /^input_blocks\.0\.0\.(.+)$/.exec(key))) return `conv_in.${m[1]}`;
  if ((m = /^out\.([02])\.(.+)$/.exec(key))) return `${m[1] === '0' ? 'conv_norm_out' : 'conv_out'}.${m[2]}`;
  if ((m = /^middle_block\.([012])\.(.+)$/.exec(key))) {
    if (m[1] === '1') return `mid_block.attentions.0.${m[2]}`;
    return `mid_block.resnets.${m[1] === '0' ? 0 : 1}.${resnetInner(m[2], key)}`;
  }
  if ((m = /^input_blocks\.(\d+)\.([01])\.(.+)$/.exec(key))) {
    const k = Number(m[1]);
    // Block k ≥ 1: level i = floor((k-1)/(n+1)), slot j = (k-1) mod (n+1); slot n is the downsampler.
    const i = Math.floor((k - 1) / (n + 1));
    const j = (k - 1) % (n + 1);
    if (j === n) {
      if (m[2] === '0' && m[3].startsWith('op.')) return `down_blocks.${i}.downsamplers.0.conv.${m[3].slice(3)}`;
    } else if (m[2] === '0') {
      return `down_blocks.${i}.resnets.${j}.${resnetInner(m[3], key)}`;
    } else {
      return `down_blocks.${i}.attentions.${j}.${m[3]}`;
    }
    throw new RoundtripError(`LDM checkpoint: unexpected UNet entry '${key}' (layers_per_block ${n})`);
  }
  if ((m = /^output_blocks\.(\d+)\.([012])\.(.+)$/.exec(key))) {
    const k = Number(m[1]);
    const i = Math.floor(k / (n + 1));
    const j = k % (n + 1);
    const hasAttention = layout.unetUpBlockTypes[i] === 'CrossAttnUpBlock2D';
    if (m[2] === '0') return `up_blocks.${i}.resnets.${j}.${resnetInner(m[3], key)}`;
    const upsamplerSlot = hasAttention ? '2' : '1';
    if (m[2] === upsamplerSlot && j === n) return `up_blocks.${i}.upsamplers.0.${m[3]}`;
    if (m[2] === '1' && hasAttention) return `up_blocks.${i}.attentions.${j}.${m[3]}`;
    throw new RoundtripError(`LDM checkpoint: unexpected UNet entry '${key}' (layers_per_block ${n}, up_block_types ${layout.unetUpBlockTypes.join(',')})`);
  }
  throw new RoundtripError(`LDM checkpoint: unknown UNet entry '${key}'`);
}

const VAE_ATTENTION: Record<string, string> = { norm: 'group_norm', q: 'to_q', k: 'to_k', v: 'to_v', proj_out: 'to_out.0' };

function vaeBlockInner(rest: string): string {
  return rest.startsWith('nin_shortcut.') ? 'conv_shortcut.' + rest.slice('nin_shortcut.'.length) : rest;
}

/** One VAE key without its prefix → the diffusers name. */
export function ldmVaeKey(key: string, layout: LdmLayout): string {
  let m: RegExpExecArray | null;
  if ((m = /^(encoder|decoder)\.norm_out\.(.+)$/.exec(key))) return `${m[1]}.conv_norm_out.${m[2]}`;
  if ((m = /^(encoder|decoder)\.mid\.block_([12])\.(.+)$/.exec(key))) return `${m[1]}.mid_block.resnets.${Number(m[2]) - 1}.${vaeBlockInner(m[3])}`;
  if ((m = /^(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(.+)$/.exec(key))) return `${m[1]}.mid_block.attentions.0.${VAE_ATTENTION[m[2]]}.${m[3]}`;
  if ((m = /^encoder\.down\.(\d+)\.block\.(\d+)\.(.+)$/.exec(key))) return `encoder.down_blocks.${m[1]}.resnets.${m[2]}.${vaeBlockInner(m[3])}`;
  if ((m = /^encoder\.down\.(\d+)\.downsample\.(.+)$/.exec(key))) return `encoder.down_blocks.${m[1]}.downsamplers.0.${m[2]}`;
  // Decoder levels are numbered from the lowest resolution in diffusers, from the highest in LDM.
  if ((m = /^decoder\.up\.(\d+)\.block\.(\d+)\.(.+)$/.exec(key))) return `decoder.up_blocks.${layout.vaeLevels - 1 - Number(m[1])}.resnets.${m[2]}.${vaeBlockInner(m[3])}`;
  if ((m = /^decoder\.up\.(\d+)\.upsample\.(.+)$/.exec(key))) return `decoder.up_blocks.${layout.vaeLevels - 1 - Number(m[1])}.upsamplers.0.${m[2]}`;
  if (/^(encoder|decoder)\.(conv_in|conv_out)\./.test(key) || /^(quant_conv|post_quant_conv)\./.test(key)) return key;
  throw new RoundtripError(`LDM checkpoint: unknown VAE entry '${key}'`);
}

/** What to pass to NativeModel.loadWeights for one component (renames are keyed by the prefix-stripped name). */
export interface ComponentRenames {
  prefix: string;
  renames: Record<string, string>;
}

export interface LdmRenames {
  unet: ComponentRenames;
  vae: ComponentRenames;
  /** transformers CLIPTextModel names follow the prefix unchanged. */
  textEncoder: ComponentRenames;
  /** LDM-only entries (schedule buffers, EMA bookkeeping, position_ids, EMA copies). */
  dropped: string[];
  /** Entries outside every known prefix. */
  unknown: string[];
}

/** Computes the LDM → diffusers rename maps for the keys of a checkpoint. */
export function ldmRenames(keys: Iterable<string>, layout: LdmLayout): LdmRenames {
  const out: LdmRenames = {
    unet: { prefix: LDM_UNET_PREFIX, renames: {} },
    vae: { prefix: LDM_VAE_PREFIX, renames: {} },
    textEncoder: { prefix: LDM_TEXT_PREFIX, renames: {} },
    dropped: [],
    unknown: [],
  };
  for (const key of keys) {
    if (LDM_ONLY.has(key) || key.startsWith('model_ema.')) out.dropped.push(key);
    else if (key.startsWith(LDM_UNET_PREFIX)) {
      const k = key.slice(LDM_UNET_PREFIX.length);
      out.unet.renames[k] = ldmUnetKey(k, layout);
    } else if (key.startsWith(LDM_VAE_PREFIX)) {
      const k = key.slice(LDM_VAE_PREFIX.length);
      out.vae.renames[k] = ldmVaeKey(k, layout);
    } else if (key.startsWith(LDM_TEXT_PREFIX)) {
      // Same names after the prefix; listed so callers see the whole mapping.
      const k = key.slice(LDM_TEXT_PREFIX.length);
      out.textEncoder.renames[k] = k;
    } else out.unknown.push(key);
  }
  return out;
}
