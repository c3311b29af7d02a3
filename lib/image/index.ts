/**
 * Image I/O and preprocessing: decoding like `PIL.Image.open(p).convert('RGB')`, Pillow-exact
 * resampling, per-model preprocessing recipes (BLIP, CLIP, DINO, SD VAE, FID Inception), tensor →
 * PNG with diffusers' rounding, contact sheets, and a concurrent decode pool.
 */
export * from './types';
export * from './random';
export * from './resample';
export * from './transform';
export * from './decode';
export * from './preprocess';
export * from './randaugment';
export * from './encode';
export * from './pool';
