/**
 * Training-free reconstruction reranking (paper §3): image → text → image (the best caption is the
 * one that lets the generator recreate the image) and its mirror text → image → text, with resume,
 * an image cache, sharding, and reconstruction scores of single captions.
 */
export * from './types';
export * from './data';
export { readJsonLines } from '../../json';
export { appendJsonLine } from '../../fsutil';
export * from './models';
export * from './run';
export { rerankI2t2i, blipCaptionOptions, captionScores, checkPromptLength } from './i2t2i';
export { rerankT2i2t } from './t2i2t';
export { ReconstructionScorer, parseScoreRequests } from './score';
export type { ScoreOptions, CaptionScore, TextScore, ScoreRequest } from './score';
