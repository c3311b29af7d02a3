/**
 * Evaluation metrics that reproduce the reference implementations' numbers: COCO caption
 * evaluation (PTB tokenisation, BLEU, ROUGE-L, CIDEr-D; METEOR and SPICE via their jars),
 * Word Mover's Distance (gensim semantics, exact EMD), FID statistics / Fréchet distance and
 * the Inception Score (torch-fidelity / pytorch-fid semantics), and caption-file loaders.
 */
export { COCO_PUNCTUATIONS, ptbTokenize, ptbTokenizeMap, ptbTokenizeRaw, removeCocoPunctuation } from './ptb-tokenizer';
export { bleu, bleuFromCounts, bleuStats } from './bleu';
export type { BleuResult, BleuStats } from './bleu';
export { lcsLength, rougeL, rougeLScore } from './rouge';
export { ciderD } from './cider';
export { pySplit } from './ngrams';
export { CAPTION_METRICS, PURE_CAPTION_METRICS, scoreCaptions, scoreTokenizedCaptions } from './caption-eval';
export type { CaptionEvalOptions, CaptionMetric, CaptionScores } from './caption-eval';
export { JAR_CACHE_DIR, meteorScore, resolveJar, spiceScore } from './java-scorers';
export type { MeteorOptions, MeteorResult, SpiceCategoryScores, SpiceOptions, SpiceResult } from './java-scorers';
export { earthMoversDistance } from './emd';
export type { EmdResult } from './emd';
export { NLTK_STOPWORDS_FILE, captionWmd, loadNltkStopwords, loadWordVectors, wmDistance, wmdTokens, wordVector } from './wmd';
export type { CaptionWmdResult, WordVectors } from './wmd';
export { fidStatistics, frechetDistance, loadFidStatistics, productSpectrum, saveFidStatistics, traceSqrtProduct } from './fid';
export type { FidStatistics, FrechetForm, FrechetOptions, FrechetResult } from './fid';
export { inceptionScore } from './inception-score';
export type { InceptionScoreOptions, InceptionScoreResult } from './inception-score';
export {
  checkResultsAgainstAnnotations,
  detectLayout,
  karpathyImageId,
  loadCaptionAnnotations,
  loadCaptionResults,
  parseCaptionAnnotations,
  parseCaptionResults,
} from './annotations';
export type { AnnotationLayout, CaptionAnnotations, ImageId } from './annotations';
