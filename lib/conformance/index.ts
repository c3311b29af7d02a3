/** Conformance runners of every component, registered on import. */
export * from './registry';
import './bert-minilm';
import './blip-captioning';
import './blip2-opt';
import './clip-text-encoder';
import './clip-vit';
import './inception-fid';
import './sd-one-step';
import './sd-sampling';
import './sd-schedulers';
import './sd-unet';
import './sd-vae';
import './vit-dino';
import './vit-dino-384';
