/**
 * Evaluation as the paper reports it, over the metric and model modules: caption metrics
 * (`evaluateCaptions`: COCO metrics + WMD, CLIP-text and SBERT) and image metrics
 * (`evaluateImages`: FID, Inception Score, paired CLIP / DINO distances, cached FID statistics).
 * The `roundtrip eval` command (lib/cli/commands/eval.ts) is a thin layer over these.
 */
export {
  CAPTION_EVAL_DEFAULTS,
  CAPTION_EVAL_METRICS,
  CLIP_TEXT_KEY,
  DEFAULT_CAPTION_EVAL_METRICS,
  EMBEDDING_VARIANTS,
  SBERT_KEY,
  WMD_KEY,
  evaluateCaptions,
  formatCaptionTable,
  parseCaptionMetrics,
} from './captions';
export type { CaptionAnnotationsInput, CaptionEvalMetric, CaptionEvaluation, CaptionResultsInput, EvaluateCaptionsOptions } from './captions';
export {
  DEFAULT_IMAGE_EVAL_METRICS,
  IMAGE_EVAL_DEFAULTS,
  FID_FEATURE_LAYERS,
  FID_FORMS,
  IMAGE_EVAL_METRICS,
  evaluateImages,
  fidCacheDir,
  formatImageEvaluation,
  loadInception,
  parseImageMetrics,
} from './images';
export type { CacheStatus, EvaluateImagesOptions, FidFeatureLayer, ImageEvalMetric, ImageEvaluation, InceptionSource } from './images';
export { IMAGE_EXTENSIONS, imageSetKey, listImages, pairByName } from './image-sets';
export type { ImageFile } from './image-sets';
export { MT19937, numpyPermutation } from './mt19937';
export { SBERT_DEFAULT_MAX_SEQ_LENGTH, clipTextEmbeddings, loadClipTextEncoder, loadSbertEncoder, sbertEmbeddings } from './text-embeddings';
export type { ClipTextEncoder, SbertEncoder } from './text-embeddings';
