/**
 * The models `roundtrip bench` runs, by size: `tiny` (small random-weight models, seconds), `world` (the built-in
 * weights/world-sd and weights/world-blip) and `sd14` (the published SD v1.4 and BLIP-base configurations with
 * random weights: the real workloads' shapes without a download). Random-weight folders are written once into a
 * cache folder as ordinary diffusers / transformers folders, so load rows time real (mapped) loading.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { expectOneOf } from '../errors';
import { writeFileAtomic, writeFolderAtomic } from '../fsutil';
import { NativeModel } from '../runtime/model';
import type { ModelKind } from '../runtime/native-methods';
import { Blip, blipArchitectureConfig } from '../models/blip';
import { StableDiffusionPipeline } from '../models/sd/pipeline';
import { disposeAll } from '../runtime/tensor';
import { saveTensors } from '../weights/save';
import { readJsonFile } from '../json';
import { PACKAGE_ROOT } from '../paths';

export const BENCH_SIZES = ['tiny', 'world', 'sd14'] as const;
export type BenchSize = (typeof BENCH_SIZES)[number];

const ROOT = PACKAGE_ROOT;
const WORLD_SD = path.join(ROOT, 'weights', 'world-sd');
const WORLD_BLIP = path.join(ROOT, 'weights', 'world-blip');

/** SD v1.4's published component configs (CompVis/stable-diffusion-v1-4, diffusers 0.25.1 defaults). */
const SD14 = {
  unet: {
    act_fn: 'silu', attention_head_dim: 8, block_out_channels: [320, 640, 1280, 1280], center_input_sample: false, cross_attention_dim: 768,
    down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'], downsample_padding: 1,
    flip_sin_to_cos: true, freq_shift: 0, in_channels: 4, layers_per_block: 2, mid_block_scale_factor: 1, norm_eps: 1e-5, norm_num_groups: 32,
    out_channels: 4, sample_size: 64, up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
  },
  vae: {
    act_fn: 'silu', block_out_channels: [128, 256, 512, 512], down_block_types: Array(4).fill('DownEncoderBlock2D'), in_channels: 3,
    latent_channels: 4, layers_per_block: 2, norm_num_groups: 32, out_channels: 3, sample_size: 512, up_block_types: Array(4).fill('UpDecoderBlock2D'),
  },
  text_encoder: {
    vocab_size: 49408, hidden_size: 768, intermediate_size: 3072, num_hidden_layers: 12, num_attention_heads: 12, max_position_embeddings: 77,
    hidden_act: 'quick_gelu', layer_norm_eps: 1e-5, projection_dim: 768, bos_token_id: 0, eos_token_id: 2, pad_token_id: 1,
  },
};

/** Small models of the same architectures (block counts and widths cut down). */
const TINY = {
  unet: {
    act_fn: 'silu', attention_head_dim: 4, block_out_channels: [32, 64], cross_attention_dim: 32, down_block_types: ['CrossAttnDownBlock2D', 'DownBlock2D'],
    in_channels: 4, layers_per_block: 1, norm_num_groups: 8, out_channels: 4, sample_size: 8, up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D'],
  },
  vae: {
    act_fn: 'silu', block_out_channels: [16, 32], down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D'], in_channels: 3, latent_channels: 4,
    layers_per_block: 1, norm_num_groups: 8, out_channels: 3, sample_size: 32, up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D'],
  },
  text_encoder: {
    vocab_size: 49408, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, max_position_embeddings: 77,
    hidden_act: 'quick_gelu', layer_norm_eps: 1e-5, projection_dim: 32, bos_token_id: 0, eos_token_id: 2, pad_token_id: 1,
  },
  blip: {
    vision_config: { hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 64, image_size: 32, patch_size: 8, layer_norm_eps: 1e-5, hidden_act: 'gelu' },
    text_config: {
      vocab_size: 30524, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, max_position_embeddings: 64,
      encoder_hidden_size: 32, layer_norm_eps: 1e-12, hidden_act: 'gelu',
    },
  },
};

const SCHEDULER = {
  _class_name: 'PNDMScheduler', beta_end: 0.012, beta_schedule: 'scaled_linear', beta_start: 0.00085, num_train_timesteps: 1000,
  set_alpha_to_one: false, skip_prk_steps: true, steps_offset: 1, clip_sample: false,
};

/** Where a size's models are, and the inputs its rows use. */
export interface BenchModels {
  size: BenchSize;
  sdDir: string;
  blipDir: string;
  /** Latent side (image side / 8) of the SD rows: 256² images for sd14. */
  latentSize: number;
  /** The loaded pipeline / BLIP, shared by rows (loaded on first use). */
  sd(): Promise<StableDiffusionPipeline>;
  blip(): Promise<Blip>;
  /** Frees the shared models. */
  dispose(): void;
}

// Bump when the random folders' layout changes, so stale caches are rebuilt.
const CACHE_VERSION = 1;

async function writeRandomComponent(dir: string, kind: ModelKind, config: object, file: string): Promise<void> {
  const model = await NativeModel.create(kind, config);
  try {
    const tensors = model.tensors();
    try {
      await saveTensors(path.join(dir, file), tensors);
    } finally {
      disposeAll(tensors);
    }
  } finally {
    model.dispose();
  }
  await writeFileAtomic(path.join(dir, 'config.json'), JSON.stringify(config, null, 2) + '\n');
}

/** Writes (once) the random-weight SD and BLIP folders of `size` under `cacheDir`; returns their paths. */
export async function randomModelFolders(size: 'tiny' | 'sd14', cacheDir: string): Promise<{ sdDir: string; blipDir: string }> {
  const root = path.join(cacheDir, `${size}-v${CACHE_VERSION}`);
  const sdDir = path.join(root, 'sd');
  const blipDir = path.join(root, 'blip');
  const cfg = size === 'tiny' ? TINY : SD14;
  const blipConfig = size === 'tiny' ? TINY.blip : blipArchitectureConfig('base');
  fs.mkdirSync(root, { recursive: true });
  if (!fs.existsSync(path.join(sdDir, 'model_index.json'))) {
    await writeFolderAtomic(sdDir, async (dir) => {
      for (const [sub, kind, file] of [
        ['unet', 'unet', 'diffusion_pytorch_model.safetensors'],
        ['vae', 'vae', 'diffusion_pytorch_model.safetensors'],
        ['text_encoder', 'clip', 'model.safetensors'],
      ] as const) {
        fs.mkdirSync(path.join(dir, sub));
        await writeRandomComponent(path.join(dir, sub), kind, cfg[sub], file);
      }
      fs.mkdirSync(path.join(dir, 'scheduler'));
      fs.writeFileSync(path.join(dir, 'scheduler', 'scheduler_config.json'), JSON.stringify(SCHEDULER, null, 2) + '\n');
      // The real CLIP vocabulary (the built-in world-sd model carries it).
      fs.cpSync(path.join(WORLD_SD, 'tokenizer'), path.join(dir, 'tokenizer'), { recursive: true });
      fs.writeFileSync(path.join(dir, 'model_index.json'), JSON.stringify({ _class_name: 'StableDiffusionPipeline' }) + '\n');
    });
  }
  if (!fs.existsSync(path.join(blipDir, 'model.safetensors'))) {
    await writeFolderAtomic(blipDir, async (dir) => {
      await writeRandomComponent(dir, 'blip', blipConfig, 'model.safetensors');
      for (const f of ['vocab.txt', 'tokenizer_config.json', 'special_tokens_map.json', 'preprocessor_config.json']) {
        if (fs.existsSync(path.join(WORLD_BLIP, f))) fs.copyFileSync(path.join(WORLD_BLIP, f), path.join(dir, f));
      }
    });
  }
  return { sdDir, blipDir };
}

/** The default cache of random-weight folders. */
export function defaultBenchCache(): string {
  return path.join(os.tmpdir(), 'roundtrip-bench');
}

/** Resolves (and for random sizes writes once) the models of `size`. */
export async function benchModels(size: BenchSize, opts: { cacheDir?: string } = {}): Promise<BenchModels> {
  expectOneOf('--size', size, BENCH_SIZES);
  const dirs = size === 'world' ? { sdDir: WORLD_SD, blipDir: WORLD_BLIP } : await randomModelFolders(size, opts.cacheDir ?? defaultBenchCache());
  let sd: Promise<StableDiffusionPipeline> | undefined;
  let blip: Promise<Blip> | undefined;
  const unetConfig = readJsonFile(path.join(dirs.sdDir, 'unet', 'config.json'), { what: 'UNet config', object: true });
  return {
    size,
    ...dirs,
    // sd14 at 256² (the workloads); the others at their trained size.
    latentSize: size === 'sd14' ? 32 : Number(unetConfig.sample_size ?? 8),
    sd: () => (sd ??= StableDiffusionPipeline.load(dirs.sdDir)),
    blip: () => (blip ??= Blip.load(dirs.blipDir)),
    dispose: () => {
      void sd?.then((p) => p.dispose());
      void blip?.then((b) => b.dispose());
      sd = blip = undefined;
    },
  };
}
