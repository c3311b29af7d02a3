/**
 * AutoencoderKL (SD v1.x) in the native core, model kind "vae". Config: diffusers vae/config.json.
 * Accepts both the current (`to_q`…) and the legacy (`query`…) mid-block attention names.
 */
import { CONFIG_DEFAULTS, configInt } from '../config-defaults';
import { expectBoolean } from '../../errors';
import { NativeModel } from '../../runtime/model';
import { Tensor } from '../../runtime/tensor';

export interface LatentDistribution {
  mean: Tensor;
  logvar: Tensor;
  std: Tensor;
  /** mean + std·noise (unscaled). */
  sample: Tensor;
  /** sample · scaling_factor: what the UNet sees. */
  sampleScaled: Tensor;
  intermediates: Record<string, Tensor>;
}

/** Memory options of the decode (diffusers' enable_vae_slicing / enable_vae_tiling). */
export interface DecodeOptions {
  /** Decodes one image at a time: the workspace of one image, the same pixels as the batched decode. */
  slicing?: boolean;
  /**
   * Above one tile (config sample_size pixels), decodes overlapping tiles and cross-fades them, as diffusers'
   * tiled_decode: bounded memory for large images, an approximation of the whole decode at those sizes; latents
   * that fit one tile decode exactly as without tiling.
   */
  tiling?: boolean;
}

export class VAE {
  /** Latent scaling (config `scaling_factor`, default 0.18215). */
  readonly scalingFactor: number;

  get latentChannels(): number {
    return configInt(this.config, ['latent_channels'], CONFIG_DEFAULTS.vae.latentChannels, 'vae config');
  }

  constructor(readonly model: NativeModel<'vae'>, readonly config: Record<string, unknown>) {
    this.scalingFactor = typeof config.scaling_factor === 'number' ? config.scaling_factor : 0.18215;
  }

  static async create(config: Record<string, unknown>, opts: { device?: string } = {}): Promise<VAE> {
    return new VAE(await NativeModel.create('vae', config, opts), config);
  }

  /** Encodes images in [-1, 1]; the posterior sample uses `noise` if given, else N(0,1) from `seed`. */
  async encode(image: Tensor, opts: { noise?: Tensor; seed?: number; intermediates?: boolean } = {}): Promise<LatentDistribution> {
    const out = await this.model.call('encode', { image, noise: opts.noise }, { seed: opts.seed ?? 0, intermediates: !!opts.intermediates });
    const intermediates: Record<string, Tensor> = {};
    for (const [k, v] of Object.entries(out)) if (k.startsWith('intermediate.')) intermediates[k] = v;
    out.mean_scaled?.dispose();
    return { mean: out.mean, logvar: out.logvar, std: out.std, sample: out.sample, sampleScaled: out.sample_scaled, intermediates };
  }

  /** The native decode options for `opts` (checked). */
  decodeOptions(opts: DecodeOptions = {}): Record<string, unknown> {
    return { slicing: expectBoolean('slicing', opts.slicing ?? false), tiling: expectBoolean('tiling', opts.tiling ?? false) };
  }

  /** Decodes latents; `scaled` latents (UNet space) are divided by the scaling factor first. */
  async decode(
    z: Tensor,
    opts: { scaled?: boolean; intermediates?: boolean } & DecodeOptions = {},
  ): Promise<{ image: Tensor; intermediates: Record<string, Tensor> }> {
    const out = await this.model.call('decode', { z }, { scaled: !!opts.scaled, intermediates: !!opts.intermediates, ...this.decodeOptions(opts) });
    const intermediates: Record<string, Tensor> = {};
    for (const [k, v] of Object.entries(out)) if (k.startsWith('intermediate.')) intermediates[k] = v;
    return { image: out.image, intermediates };
  }

  dispose(): void {
    this.model.dispose();
  }
}
