/**
 * The paper's models under short names. A name is either one of these aliases or a plain
 * Hugging Face repo id (`owner/name`), which gets the generic file selection.
 */
import type { TreeFile } from './select';

/** Commands that load each kind of model (shown by `roundtrip weights list`). */
export type ModelUse = 'caption' | 'generate' | 'rerank' | 'finetune' | 'eval images' | 'eval captions';

interface AliasBase {
  name: string;
  description: string;
  usedBy: readonly ModelUse[];
}

/** A model stored in a hub repo. */
export interface HubAlias extends AliasBase {
  kind: 'hub';
  repo: string;
  /** Restricts the repo's files to what the pipeline needs (before the generic selection). */
  allow?: (path: string) => boolean;
  /** Folders (relative to the repo root, '' = top level) that must end up with weights. */
  weightDirs: readonly string[];
}

/** A single file behind a plain URL. */
export interface UrlAlias extends AliasBase {
  kind: 'url';
  url: string;
  fileName: string;
  /** Leading hex digits of the file's sha256 (torch.hub convention: `name-<sha256 prefix>.pth`). */
  sha256Prefix?: string;
  /** Name of the safetensors file converted from the download, when a converter is available. */
  convertedName?: string;
}

export type ModelAlias = HubAlias | UrlAlias;

/** Files of CompVis/stable-diffusion-v1-4 that the diffusers-style pipeline reads (no safety checker, no .ckpt). */
const SD_PIPELINE_FILE =
  /^(model_index\.json|scheduler\/scheduler_config\.json|(text_encoder|unet|vae)\/config\.json|tokenizer\/[^/]+|(text_encoder|unet|vae)\/[^/]+\.(safetensors|bin))$/;

export const MODEL_ALIASES: Readonly<Record<string, ModelAlias>> = Object.freeze({
  'blip-base': {
    kind: 'hub',
    name: 'blip-base',
    repo: 'Salesforce/blip-image-captioning-base',
    description: 'BLIP captioner, ViT-B',
    usedBy: ['caption', 'rerank', 'finetune'],
    weightDirs: [''],
  },
  'blip-large': {
    kind: 'hub',
    name: 'blip-large',
    repo: 'Salesforce/blip-image-captioning-large',
    description: 'BLIP captioner, ViT-L',
    usedBy: ['caption', 'rerank', 'finetune'],
    weightDirs: [''],
  },
  'sd-v1-4': {
    kind: 'hub',
    name: 'sd-v1-4',
    repo: 'CompVis/stable-diffusion-v1-4',
    description: 'Stable Diffusion v1.4 (text encoder, UNet, VAE, scheduler, tokenizer)',
    usedBy: ['generate', 'rerank', 'finetune'],
    allow: (p) => SD_PIPELINE_FILE.test(p),
    weightDirs: ['text_encoder', 'unet', 'vae'],
  },
  'clip-vit-l14': {
    kind: 'hub',
    name: 'clip-vit-l14',
    repo: 'openai/clip-vit-large-patch14',
    description: 'CLIP ViT-L/14 (CLIPScore, image similarity)',
    usedBy: ['eval images', 'rerank'],
    weightDirs: [''],
  },
  'clip-vit-b32': {
    kind: 'hub',
    name: 'clip-vit-b32',
    repo: 'openai/clip-vit-base-patch32',
    description: 'CLIP ViT-B/32 (CLIPScore, image similarity)',
    usedBy: ['eval images', 'rerank'],
    weightDirs: [''],
  },
  'dino-vitb8': {
    kind: 'hub',
    name: 'dino-vitb8',
    repo: 'facebook/dino-vitb8',
    description: 'DINO ViT-B/8 (image similarity)',
    usedBy: ['eval images', 'rerank'],
    weightDirs: [''],
  },
  minilm: {
    kind: 'hub',
    name: 'minilm',
    repo: 'sentence-transformers/all-MiniLM-L6-v2',
    description: 'all-MiniLM-L6-v2 sentence embeddings (caption similarity)',
    usedBy: ['eval captions'],
    weightDirs: [''],
  },
  'inception-fid': {
    kind: 'url',
    name: 'inception-fid',
    url: 'https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth',
    fileName: 'weights-inception-2015-12-05-6726825d.pth',
    sha256Prefix: '6726825d',
    convertedName: 'weights-inception-2015-12-05.safetensors',
    description: 'FID Inception-v3 (2015-12-05 TensorFlow weights, torch-fidelity port)',
    usedBy: ['eval images'],
  },
  'blip2-opt-2.7b': {
    kind: 'hub',
    name: 'blip2-opt-2.7b',
    repo: 'Salesforce/blip2-opt-2.7b',
    description: 'BLIP-2 captioner, ViT-g + OPT-2.7b (3.74 B parameters, ~15 GB in fp32; sharded safetensors)',
    usedBy: ['caption', 'rerank'],
    weightDirs: [''],
  },
  'blip2-opt-6.7b': {
    kind: 'hub',
    name: 'blip2-opt-6.7b',
    repo: 'Salesforce/blip2-opt-6.7b',
    description: 'BLIP-2 captioner, ViT-g + OPT-6.7b (7.75 B parameters, ~31 GB in fp32; sharded safetensors)',
    usedBy: ['caption', 'rerank'],
    weightDirs: [''],
  },
});

/**
 * Repos of the paper's model families that roundtrip cannot run, refused by name before any download:
 * the BLIP-2 variants with a Flan-T5 language model (no T5 is built).
 */
export const REFUSED_REPOS: readonly { pattern: RegExp; reason: string }[] = [
  { pattern: /^Salesforce\/blip2-flan-t5-/i, reason: 'BLIP-2 with a Flan-T5 language model is not supported (roundtrip runs BLIP-2 OPT: blip2-opt-2.7b, blip2-opt-6.7b)' },
];

/** A hub repo id: `owner/name` with the characters the hub allows. */
export const REPO_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*\/[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/** The alias that stands for a repo id, if any (so `Salesforce/blip-image-captioning-base` and `blip-base` share a folder). */
export function aliasForRepo(repo: string, aliases: Readonly<Record<string, ModelAlias>> = MODEL_ALIASES): HubAlias | undefined {
  const lower = repo.toLowerCase();
  for (const alias of Object.values(aliases)) if (alias.kind === 'hub' && alias.repo.toLowerCase() === lower) return alias;
  return undefined;
}

export type { TreeFile };
