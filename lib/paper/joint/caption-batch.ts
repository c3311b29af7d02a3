/**
 * Packing a caption batch for the joint step, shared by both captioners: the captioner's rows ([B, T] ids, mask,
 * labels with -100 where no loss is taken) and the texts' CLIP ids, as native tensors.
 */
import { Tensor } from '../../runtime/tensor';
import type { ClipTokenizer } from '../../tokenizers/clip';
import type { CaptionBatch, ClipPadding } from './losses';

/**
 * CLIP ids of texts, [B, L] row-major: 'max' pads to the model's 77 like SD's prompts; 'longest' (the release)
 * keeps ids up to <|endoftext|>, padded to the longest caption of the batch.
 */
export function clipIdRows(clip: ClipTokenizer, padding: ClipPadding): (texts: string[]) => { ids: BigInt64Array; length: number } {
  return (texts) => {
    const fixed = texts.map((t) => clip.encodeFixed(t).ids);
    const L = padding === 'max' ? clip.modelMaxLength : Math.max(...fixed.map((ids) => ids.indexOf(clip.eotId) + 1));
    const out = new BigInt64Array(texts.length * L);
    fixed.forEach((ids, b) => ids.slice(0, L).forEach((id, j) => (out[b * L + j] = BigInt(id))));
    return { ids: out, length: L };
  };
}

/** The captioner's packed rows. */
export interface CaptionerRows {
  ids: BigInt64Array;
  mask: BigInt64Array;
  labels: BigInt64Array;
  /** Row length T (every array holds B × T). */
  length: number;
}

/** The CaptionBatch of texts, their captioner rows and their CLIP ids. */
export function captionBatch(texts: string[], rows: CaptionerRows, promptLength: number, captionLengths: number[], clip: { ids: BigInt64Array; length: number }): CaptionBatch {
  const B = texts.length;
  return {
    size: B,
    texts,
    blipIds: Tensor.fromTypedArray(rows.ids, [B, rows.length]),
    blipMask: Tensor.fromTypedArray(rows.mask, [B, rows.length]),
    blipLabels: Tensor.fromTypedArray(rows.labels, [B, rows.length]),
    promptLength,
    captionLengths,
    clipIds: Tensor.fromTypedArray(clip.ids, [B, clip.length]),
  };
}
