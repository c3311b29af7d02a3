/**
 * What the captioners (BLIP `blip.ts`, BLIP-2 `blip2.ts`) share around generation: the decoding strategies and
 * their options (parsed, validated and defaulted here once, turned into the native generate() options of the
 * shared C++ core, native/models/generation.h), reading the native result, and the batched caption loop.
 * Length limits stay with each family: they count different things (BLIP: start tokens + prompt; BLIP-2: the
 * leading BOS only).
 */
import { OptionNames, RoundtripError, expectInteger, expectNumber, expectOneOf, invalid, optionName } from '../errors';
import { LIMITS, expectBounded } from '../limits';
import { Tensor } from '../runtime/tensor';
import type { CaptionerGeneration } from '../runtime/native-methods';
import { loadImage, preprocessBatch, PreprocessConfig, RgbImage } from '../image';

/** Decoding strategies of `Blip.generate` and `Blip2.generate`. */
export const DECODING_STRATEGIES = ['greedy', 'beam', 'top-p', 'top-k', 'temperature'] as const;
export type DecodingStrategy = (typeof DECODING_STRATEGIES)[number];

/** The strategy when none is given. */
export const DEFAULT_STRATEGY: DecodingStrategy = 'beam';

/** Decoding options both captioners take (lengths are each family's own). */
export interface DecodingOptions {
  /** Default 'beam'. */
  strategy?: DecodingStrategy;
  /** Beams for 'beam'; default: the family's (BLIP 3, BLIP-2 5 as LAVIS captions). */
  numBeams?: number;
  /** Nucleus mass for 'top-p'; default 0.9. */
  topP?: number;
  /**
   * k for 'top-k' (default 50). 'top-p' also applies transformers' default top-k of 50 (as
   * `generate(do_sample=True, top_p=…)` does); pass 0 to disable it.
   */
  topK?: number;
  /** Softmax temperature for the sampling strategies; default 1. */
  temperature?: number;
  /** transformers' repetition penalty (divides positive logits, multiplies negative ones); default 1. */
  repetitionPenalty?: number;
  /** Beam score = sum log p / generated_length ** lengthPenalty; default 1. */
  lengthPenalty?: number;
  /** Beam search stopping rule as in transformers; default false. */
  earlyStopping?: boolean | 'never';
  /** Sequences per image: sampled independently, or the best K beams (K ≤ numBeams). Default 1. */
  numReturnSequences?: number;
  /** Seed of the sampling generator; the same seed gives the same samples. */
  seed?: number;
}

/** Beams of beam search when `numBeams` is not given: BLIP's generate() default 3, BLIP-2's 5. */
export const DEFAULT_BEAMS = { blip: 3, blip2: 5 } as const;

/**
 * Beams a beam search runs: `numBeams`, or the family's default raised to the number of sequences asked for
 * (K captions need K beams), so `numReturnSequences: 5` alone works as `--k 5` does.
 */
export function beamCount(numBeams: number | undefined, numReturnSequences: number | undefined, defaultBeams: number): number {
  return numBeams ?? Math.max(defaultBeams, numReturnSequences ?? 1);
}

/**
 * The native generate() options of the strategy options, validated (lengths excluded: the family adds them).
 * `defaultBeams`: the family's beam count when neither `numBeams` nor more sequences than it are asked for;
 * `names`: how errors name each option (the CLI's flags). Counts are bounded by lib/limits.ts.
 */
export function nativeDecodingOptions(opts: DecodingOptions, defaultBeams: number, names?: OptionNames): Record<string, unknown> {
  const n = (key: keyof DecodingOptions) => optionName(names, key);
  const strategy = expectOneOf(n('strategy'), opts.strategy ?? DEFAULT_STRATEGY, DECODING_STRATEGIES);
  const k = expectBounded(n('numReturnSequences'), opts.numReturnSequences ?? 1, LIMITS.k);
  const out: Record<string, unknown> = {
    num_return_sequences: k,
    repetition_penalty: expectNumber(n('repetitionPenalty'), opts.repetitionPenalty ?? 1, { min: 0, exclusiveMin: true }),
    length_penalty: expectNumber(n('lengthPenalty'), opts.lengthPenalty ?? 1),
  };
  if (opts.earlyStopping !== undefined) {
    if (opts.earlyStopping !== true && opts.earlyStopping !== false && opts.earlyStopping !== 'never') throw invalid(n('earlyStopping'), 'true, false or "never"', opts.earlyStopping);
    out.early_stopping = opts.earlyStopping;
  }
  if (opts.seed !== undefined) out.seed = expectInteger(n('seed'), opts.seed, { min: 0, max: Number.MAX_SAFE_INTEGER });
  const temperature = expectNumber(n('temperature'), opts.temperature ?? 1, { min: 0, exclusiveMin: true });
  if (strategy === 'greedy') {
    if (k !== 1) throw invalid(n('numReturnSequences'), '1 for greedy decoding (use beam or a sampling strategy for several)', k);
    Object.assign(out, { num_beams: 1, do_sample: false });
  } else if (strategy === 'beam') {
    const beams = expectBounded(n('numBeams'), beamCount(opts.numBeams, k, defaultBeams), LIMITS.beams);
    if (k > beams) throw invalid(n('numReturnSequences'), `at most ${n('numBeams')} (${beams})`, k);
    Object.assign(out, { num_beams: beams, do_sample: false });
  } else {
    const topK = expectInteger(n('topK'), opts.topK ?? (strategy === 'temperature' ? 0 : 50), { min: 0 });
    const topP = strategy === 'top-p' ? expectNumber(n('topP'), opts.topP ?? 0.9, { min: 0, max: 1, exclusiveMin: true }) : 1;
    Object.assign(out, { num_beams: 1, do_sample: true, temperature, top_k: topK, top_p: topP });
  }
  return out;
}

/** A [N, M] integer tensor as N rows of numbers. */
export function tensorRows(t: Tensor): number[][] {
  const [n, m] = t.shape;
  const data = t.toTypedArray();
  const out: number[][] = [];
  for (let i = 0; i < n; i++) {
    const row = new Array<number>(m);
    for (let j = 0; j < m; j++) row[j] = Number(data[i * m + j]);
    out.push(row);
  }
  return out;
}

/** Per returned row: the beam score (beam search), else the sum of the chosen tokens' log-probabilities. */
export function generationScores(out: CaptionerGeneration): number[] {
  if (out.sequences_scores) return Array.from(out.sequences_scores.toFloat32Array());
  return tensorRows(out.token_logprobs!).map((r) => r.reduce((a, b) => a + b, 0));
}

/**
 * The captioners' batch loop: decodes `images` (paths or RGB images) `batchSize` at a time with `recipe`, runs
 * `generate` on each batch of pixels (its generated tokens, `k` rows per image, image-major) and returns, per
 * image, its `k` captions as `decode` renders them.
 */
export async function captionBatches(
  images: readonly (string | RgbImage)[],
  o: {
    batchSize: number;
    recipe: PreprocessConfig;
    generate: (pixels: Tensor) => Promise<{ tokens: number[][]; numReturnSequences: number }>;
    decode: (ids: number[]) => string;
    onProgress?: (done: number, total: number) => void;
  },
): Promise<string[][]> {
  const captions: string[][] = [];
  for (let start = 0; start < images.length; start += o.batchSize) {
    const chunk = images.slice(start, start + o.batchSize);
    const decoded = await Promise.all(
      chunk.map((img, i) =>
        (typeof img === 'string' ? loadImage(img) : Promise.resolve(img)).catch((err) => {
          throw err instanceof RoundtripError ? err : new RoundtripError(`images[${start + i}]: ${err instanceof Error ? err.message : String(err)}`);
        }),
      ),
    );
    const batch = preprocessBatch(decoded, o.recipe);
    const pixels = Tensor.fromTypedArray(batch.data as Float32Array, batch.shape);
    try {
      const gen = await o.generate(pixels);
      const k = gen.numReturnSequences;
      for (let i = 0; i < chunk.length; i++) captions.push(gen.tokens.slice(i * k, (i + 1) * k).map(o.decode));
    } finally {
      pixels.dispose();
    }
    o.onProgress?.(Math.min(start + o.batchSize, images.length), images.length);
  }
  return captions;
}
