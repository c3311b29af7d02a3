/**
 * Tiny random-weight models in the real published folder layouts, assembled from the reference fixtures
 * (their configs and weights are the transformers/diffusers ones, at toy sizes). For end-to-end plumbing
 * tests: the numbers they produce are meaningless, the files, loaders and flows are the real ones.
 */
import * as fs from 'fs';
import * as path from 'path';
import { parsePythonJson } from '../../lib/models/sd/schedulers';
import { REFERENCE, VOCAB } from './paths';

function copy(from: string, to: string): void {
  fs.mkdirSync(path.dirname(to), { recursive: true });
  fs.copyFileSync(from, to);
}

/** A Hugging Face BLIP captioning folder (config.json, model.safetensors, vocab.txt, preprocessor_config.json). */
export function makeTinyBlip(dir: string): string {
  const src = path.join(REFERENCE, 'blip-captioning');
  copy(path.join(src, 'config.json'), path.join(dir, 'config.json'));
  copy(path.join(src, 'model.safetensors'), path.join(dir, 'model.safetensors'));
  copy(path.join(VOCAB, 'bert-base-uncased', 'vocab.txt'), path.join(dir, 'vocab.txt'));
  const size = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8')).vision_config.image_size;
  fs.writeFileSync(
    path.join(dir, 'preprocessor_config.json'),
    JSON.stringify({ do_resize: true, size: { height: size, width: size }, resample: 3, do_rescale: true, rescale_factor: 1 / 255, do_normalize: true, image_mean: [0.48145466, 0.4578275, 0.40821073], image_std: [0.26862954, 0.26130258, 0.27577711], do_convert_rgb: true }),
  );
  return dir;
}

/** A Hugging Face BLIP-2 OPT folder (config.json, model.safetensors, preprocessor_config.json, OPT vocab.json + merges.txt). */
export function makeTinyBlip2(dir: string): string {
  const src = path.join(REFERENCE, 'blip2-opt');
  for (const f of ['config.json', 'model.safetensors', 'preprocessor_config.json']) copy(path.join(src, f), path.join(dir, f));
  for (const f of ['vocab.json', 'merges.txt']) copy(path.join(VOCAB, 'opt', f), path.join(dir, f));
  return dir;
}

/** A diffusers Stable Diffusion folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/). */
export function makeTinySd(dir: string, scheduler: 'PNDMScheduler' | 'DDPMScheduler' | 'DDIMScheduler' = 'PNDMScheduler'): string {
  copy(path.join(REFERENCE, 'sd-unet', 'config.json'), path.join(dir, 'unet', 'config.json'));
  copy(path.join(REFERENCE, 'sd-unet', 'model.safetensors'), path.join(dir, 'unet', 'diffusion_pytorch_model.safetensors'));
  copy(path.join(REFERENCE, 'sd-vae', 'config.json'), path.join(dir, 'vae', 'config.json'));
  copy(path.join(REFERENCE, 'sd-vae', 'model.safetensors'), path.join(dir, 'vae', 'diffusion_pytorch_model.safetensors'));
  copy(path.join(REFERENCE, 'clip-text-encoder', 'config.json'), path.join(dir, 'text_encoder', 'config.json'));
  copy(path.join(REFERENCE, 'clip-text-encoder', 'model.safetensors'), path.join(dir, 'text_encoder', 'model.safetensors'));
  copy(path.join(VOCAB, 'clip', 'vocab.json'), path.join(dir, 'tokenizer', 'vocab.json'));
  copy(path.join(VOCAB, 'clip', 'merges.txt'), path.join(dir, 'tokenizer', 'merges.txt'));
  const schedulers = parsePythonJson(fs.readFileSync(path.join(REFERENCE, 'sd-schedulers', 'config.json'), 'utf8')) as any;
  const base = schedulers['source_scheduler_config (CompVis/stable-diffusion-v1-4 scheduler/scheduler_config.json)'];
  fs.mkdirSync(path.join(dir, 'scheduler'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'scheduler', 'scheduler_config.json'), JSON.stringify({ ...base, _class_name: scheduler }, null, 2));
  fs.writeFileSync(
    path.join(dir, 'model_index.json'),
    JSON.stringify({
      _class_name: 'StableDiffusionPipeline',
      _diffusers_version: '0.25.1',
      scheduler: ['diffusers', scheduler],
      text_encoder: ['transformers', 'CLIPTextModel'],
      tokenizer: ['transformers', 'CLIPTokenizer'],
      unet: ['diffusers', 'UNet2DConditionModel'],
      vae: ['diffusers', 'AutoencoderKL'],
    }),
  );
  return dir;
}

/** A Hugging Face CLIPModel folder (config.json, model.safetensors, vocab.json, merges.txt). */
export function makeTinyClip(dir: string): string {
  copy(path.join(REFERENCE, 'clip-vit', 'config.json'), path.join(dir, 'config.json'));
  copy(path.join(REFERENCE, 'clip-vit', 'model.safetensors'), path.join(dir, 'model.safetensors'));
  copy(path.join(VOCAB, 'clip', 'vocab.json'), path.join(dir, 'vocab.json'));
  copy(path.join(VOCAB, 'clip', 'merges.txt'), path.join(dir, 'merges.txt'));
  return dir;
}

/** A Hugging Face ViTModel folder in the facebook/dino-vitb8 layout. */
export function makeTinyDino(dir: string): string {
  copy(path.join(REFERENCE, 'vit-dino', 'config.json'), path.join(dir, 'config.json'));
  copy(path.join(REFERENCE, 'vit-dino', 'model.safetensors'), path.join(dir, 'model.safetensors'));
  return dir;
}

/** A sentence-transformers all-MiniLM-L6-v2-style folder (BertModel config + weights + vocab). */
export function makeTinyMinilm(dir: string): string {
  copy(path.join(REFERENCE, 'bert-minilm', 'config.json'), path.join(dir, 'config.json'));
  copy(path.join(REFERENCE, 'bert-minilm', 'model.safetensors'), path.join(dir, 'model.safetensors'));
  copy(path.join(VOCAB, 'bert-base-uncased', 'vocab.txt'), path.join(dir, 'vocab.txt'));
  return dir;
}
