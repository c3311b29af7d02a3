/**
 * Config values the TypeScript side reads from a model's config.json, with the reference libraries' config-class
 * defaults (transformers 4.37.2, diffusers 0.25.1) for keys a file leaves out — the one place they are written
 * down. The C++ models apply the same defaults when they read the config (native/models/*.cc); model classes
 * expose the resolved values (`blip.imageSize`, `unet.crossAttentionDim`, …), and callers use those.
 */
import { expectInteger } from '../errors';

/** Reads `config[keys[0]][keys[1]]…` as a positive integer, or `fallback` when absent; errors name the key. */
export function configInt(config: unknown, keys: readonly string[], fallback: number, what = 'config'): number {
  let v: unknown = config;
  for (const k of keys) v = v && typeof v === 'object' ? (v as Record<string, unknown>)[k] : undefined;
  return v === undefined || v === null ? fallback : expectInteger(`${what} ${keys.join('.')}`, Number(v), { min: 1 });
}

export const CONFIG_DEFAULTS = {
  /** BlipVisionConfig / BlipTextConfig */
  blip: { imageSize: 384, patchSize: 16, visionHidden: 768, visionLayers: 12, textHidden: 768, textLayers: 12, vocabSize: 30524 },
  /** Blip2VisionConfig / Blip2QFormerConfig / OPTConfig / Blip2Config */
  blip2: {
    imageSize: 224,
    patchSize: 14,
    visionHidden: 1408,
    visionIntermediate: 6144,
    visionLayers: 39,
    qformerHidden: 768,
    qformerIntermediate: 3072,
    qformerLayers: 12,
    crossAttentionFrequency: 2,
    textHidden: 768,
    textFfn: 3072,
    textLayers: 12,
    vocabSize: 50272,
    maxPositions: 2048,
    numQueryTokens: 32,
  },
  /** CLIPVisionConfig / CLIPTextConfig */
  clip: { imageSize: 224, maxPositionEmbeddings: 77 },
  /**
   * UNet2DConditionModel. diffusers has no default sample_size (None); 64 is SD v1's, the size roundtrip assumes
   * for a config without one.
   */
  unet: { sampleSize: 64, inChannels: 4, crossAttentionDim: 1280 },
  /** AutoencoderKL */
  vae: { latentChannels: 4 },
} as const;
