/** Stable Diffusion v1.x: UNet, VAE, schedulers, pipeline and LDM single-file key mapping. */
export * from './unet';
export * from './vae';
export * from './schedulers';
export * from './pipeline';
export * from './ldm-keys';
