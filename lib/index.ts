/**
 * roundtrip: BLIP and Stable Diffusion checking each other (image → text → image, text → image → text),
 * joint finetuning, and the paper's metrics, over a native libtorch core.
 *
 * Core types are exported by name; each concern is also available as a namespace.
 */
export { Tensor, scope, noGrad, keep, disposeAll, liveTensors } from './runtime/tensor';
export type { DType } from './runtime/tensor';
export { NativeModel } from './runtime/model';
export { RoundtripError } from './errors';
export { Blip } from './models/blip';
export { Blip2 } from './models/blip2';
export { loadCaptioner } from './models/captioner';
export type { Captioner } from './models/captioner';
export { load, detectKind, LOADABLE_KINDS, LOAD_DTYPES } from './models/load';
export type { LoadOptions, LoadableKind, LoadedModels, LoadDtype } from './models/load';
export { StableDiffusionPipeline, UNet, VAE, Scheduler } from './models/sd';
export { ClipModel } from './models/clip';
export { VitModel } from './models/vit';
export { BertModel } from './models/bert';
export { InceptionModel } from './models/inception';
export { loadTokenizer } from './tokenizers';
export { native } from './runtime/native';

export * as tokenizers from './tokenizers';
export * as image from './image';
export * as metrics from './metrics';
export * as evaluation from './metrics/eval';
export * as rerank from './paper/rerank';
export * as report from './paper/report';
export * as finetune from './train/finetune';
export * as train from './train/checkpoint';
export * as bridge from './paper/bridge';
export * as world from './world';
export * as hub from './weights/hub';
export * as conformance from './conformance';
export * as weights from './weights/safetensors';
