/**
 * Bounded work: every size a user controls is checked before anything is allocated, against a hard
 * ceiling (documented here and in `--help`) and against an estimate of the memory it needs.
 *
 * Ceilings (`LIMITS`) are far above any published setting (the paper uses K = 10, 50 steps, 512² images)
 * and catch typos such as `--k 100000`. The memory ceiling is 90% of physical memory, or
 * `ROUNDTRIP_MEMORY_LIMIT` (bytes, or with a k/M/G/T suffix). Estimates are deliberately simple
 * upper-bound-ish formulas over the model configs (largest live tensors × a documented factor); they
 * separate "fits" from "will be killed", not 10% from 20%.
 */
import * as os from 'os';
import { RoundtripError, expectInteger } from './errors';
import { CONFIG_DEFAULTS, configInt } from './models/config-defaults';

/** Hard ceilings of user-controlled sizes. */
export const LIMITS = {
  /** Captions / candidates per item (--k). */
  k: 1000,
  /** Beams (--num-beams). */
  beams: 1000,
  /** Images or items per native call (--batch-size, --batch, --sd-batch). */
  batch: 4096,
  /** Denoising steps (--steps). */
  steps: 1000,
  /** Image side in pixels (--height, --width, --size, --sd-size, --blip-size). */
  side: 8192,
  /** Prompts or images named on one command line / in one prompt file. */
  prompts: 1_000_000,
  /** Generated tokens (--max-length). */
  tokens: 512,
  /** Optimizer steps (--max-steps) and epochs × items. */
  trainSteps: 100_000_000,
} as const;

/** Bytes the process may plan to use: ROUNDTRIP_MEMORY_LIMIT or 90% of RAM. */
export function memoryCeiling(env: NodeJS.ProcessEnv = process.env): { bytes: number; source: string } {
  const raw = (env.ROUNDTRIP_MEMORY_LIMIT ?? '').trim();
  if (raw) {
    const m = /^(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?$/.exec(raw);
    if (!m) throw new RoundtripError(`ROUNDTRIP_MEMORY_LIMIT: expected bytes or a size like 16G, got ${JSON.stringify(raw)}`);
    const mult = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
    return { bytes: Number(m[1]) * mult, source: 'ROUNDTRIP_MEMORY_LIMIT' };
  }
  return { bytes: 0.9 * os.totalmem(), source: '90% of RAM; set ROUNDTRIP_MEMORY_LIMIT to change' };
}

export function formatGB(bytes: number): string {
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GB` : `${(bytes / 2 ** 20).toFixed(0)} MB`;
}

/** An integer flag within [min, LIMITS ceiling]; the error names the flag and the ceiling. */
export function expectBounded(flag: string, value: unknown, ceiling: number, min = 1): number {
  const v = expectInteger(flag, value, { min });
  if (v > ceiling) throw new RoundtripError(`${flag}: ${v} is over the limit of ${ceiling} (see "When things go wrong" in the README); lower ${flag}`);
  return v;
}

/**
 * Throws when `bytes` (the estimate of a piece of work) is over the memory ceiling. `what` says which work
 * and which flags drive it, `lower` how to bring it down.
 */
export function checkMemory(what: string, bytes: number, lower: string, env: NodeJS.ProcessEnv = process.env): void {
  const ceiling = memoryCeiling(env);
  if (!(bytes <= ceiling.bytes)) {
    throw new RoundtripError(`${what}: needs about ${formatGB(bytes)} of memory, over the ceiling of ${formatGB(ceiling.bytes)} (${ceiling.source}); ${lower}`);
  }
}

const F32 = 4;

/** BLIP config sizes an estimate needs (Hugging Face BlipConfig). */
export function blipSizes(config: any): { image: number; patch: number; vHidden: number; vLayers: number; tHidden: number; tLayers: number; vocab: number } {
  const d = CONFIG_DEFAULTS.blip;
  const v = (key: string, fallback: number) => configInt(config, ['vision_config', key], fallback, 'BLIP config');
  const t = (key: string, fallback: number) => configInt(config, ['text_config', key], fallback, 'BLIP config');
  return {
    image: v('image_size', d.imageSize),
    patch: v('patch_size', d.patchSize),
    vHidden: v('hidden_size', d.visionHidden),
    vLayers: v('num_hidden_layers', d.visionLayers),
    tHidden: t('hidden_size', d.textHidden),
    tLayers: t('num_hidden_layers', d.textLayers),
    vocab: t('vocab_size', d.vocabSize),
  };
}

function isBlip2(config: any): boolean {
  return config?.model_type === 'blip-2' || (Array.isArray(config?.architectures) && config.architectures.some((a: string) => /^Blip2/.test(a)));
}

/**
 * BLIP-2 OPT teacher-forced on `batch` captions (≤ 32 tokens after its queries), activations only, as
 * estimateBlipGenerate counts them: vision tokens (×8 for attention and MLP temporaries), the OPT hidden states of
 * every layer (×8), and the logits (×3: logits, softmax, gradient); 4.37.2 defaults for missing keys.
 */
export function estimateBlip2Activations(config: any, o: { batch: number; imageSize?: number }): number {
  const v = config?.vision_config ?? {};
  const t = config?.text_config ?? {};
  const side = o.imageSize ?? v.image_size ?? 224;
  const tokens = (side / (v.patch_size ?? 14)) ** 2 + 1;
  const vision = o.batch * tokens * (v.hidden_size ?? 1408) * 8 * F32 + o.batch * tokens * tokens * 2 * F32;
  const S = (config?.num_query_tokens ?? 32) + 32;
  const lm = o.batch * S * (t.hidden_size ?? 768) * 8 * (t.num_hidden_layers ?? 12) * F32;
  return vision + lm + o.batch * S * (t.vocab_size ?? 50272) * 3 * F32;
}

/**
 * BLIP generation of `batch` images × `rows` sequences (beams or samples) of `maxLength` tokens: vision
 * activations (×8 for attention and MLP temporaries), the cross-attention keys/values per row and
 * layer, the self-attention cache, and the logits of one step.
 */
export function estimateBlipGenerate(config: any, o: { batch: number; rows: number; maxLength: number; imageSize?: number }): number {
  const s = blipSizes(config);
  const side = o.imageSize ?? s.image;
  const tokens = (side / s.patch) ** 2 + 1;
  const vision = o.batch * tokens * s.vHidden * 8 * F32 + o.batch * tokens * tokens * 2 * F32;
  const rows = o.batch * o.rows;
  const cross = rows * tokens * s.tHidden * 2 * s.tLayers * F32;
  const selfCache = rows * o.maxLength * s.tHidden * 2 * s.tLayers * F32;
  const logits = rows * s.vocab * 3 * F32;
  return vision + cross + selfCache + logits;
}

/**
 * Stable Diffusion sampling of `batch` images at height×width (classifier-free guidance doubles the UNet
 * batch): the largest UNet activations (×12 live maps at the first level, attention scores of the first
 * level) and the VAE decoder's full-resolution maps (×6).
 */
export function estimateSdSample(unetConfig: any, vaeConfig: any, o: { batch: number; height: number; width: number; guidance?: boolean }): number {
  const channels: number[] = unetConfig?.block_out_channels ?? [320, 640, 1280, 1280];
  const vaeChannels: number[] = vaeConfig?.block_out_channels ?? [128, 256, 512, 512];
  const factor = 2 ** (vaeChannels.length - 1);
  const lat = (o.height / factor) * (o.width / factor);
  const b = o.batch * (o.guidance === false ? 1 : 2);
  const unet = b * lat * channels[0] * 12 * F32 + b * 8 * lat * lat * F32;
  const vae = o.batch * o.height * o.width * vaeChannels[0] * 6 * F32 + o.batch * lat * lat * F32;
  return unet + vae;
}

/**
 * One finetuning step of `batch` samples (training keeps activations for backward): the UNet at sdSize
 * (×3 of a sampling estimate, ×1 with gradient checkpointing), the frozen VAE once, and BLIP's
 * vision + decoder at blipSize (×3), plus the 77 × CLIP-vocabulary soft caption (×4 with its gradient).
 */
export function estimateFinetuneStep(blipConfig: any, unetConfig: any, vaeConfig: any, o: { batch: number; sdSize: number; blipSize: number; checkpointing?: boolean }): number {
  const keep = o.checkpointing ? 1 : 3;
  // The VAE is frozen (encoded without a graph): its maps count once; the UNet's are kept for backward.
  const unetOnly = estimateSdSample(unetConfig, { ...vaeConfig, block_out_channels: [0, ...(vaeConfig?.block_out_channels ?? [128, 256, 512, 512]).slice(1)] }, { batch: o.batch, height: o.sdSize, width: o.sdSize, guidance: false });
  const full = estimateSdSample(unetConfig, vaeConfig, { batch: o.batch, height: o.sdSize, width: o.sdSize, guidance: false });
  const sd = unetOnly * keep + (full - unetOnly);
  const blip = (isBlip2(blipConfig) ? estimateBlip2Activations(blipConfig, { batch: o.batch, imageSize: o.blipSize }) : estimateBlipGenerate(blipConfig, { batch: o.batch, rows: 1, maxLength: 77, imageSize: o.blipSize })) * keep;
  const soft = o.batch * 77 * 49408 * 4 * F32;
  return sd + blip + soft;
}
