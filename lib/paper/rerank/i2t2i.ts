/**
 * image → text → image reranking (paper §3.1): BLIP writes K candidate captions per image, Stable
 * Diffusion draws one image per caption, and the caption whose reconstruction is closest to the
 * input (1 − cos of CLIP and/or DINO image embeddings) wins. Results go to `results.jsonl`, one
 * line per finished item; a rerun skips finished items and reuses cached images.
 */
import { RoundtripError } from '../../errors';
import { RgbImage, loadImage } from '../../image';
import { bleu } from '../../metrics/bleu';
import { ptbTokenize } from '../../metrics/ptb-tokenizer';
import { Captioner } from '../../models/captioner';
import { BlipCaptionOptions } from '../../models/blip';
import { ClipModel } from '../../models/clip';
import { StableDiffusionPipeline } from '../../models/sd/pipeline';
import { VitModel } from '../../models/vit';
import { ImageEmbedder, SdImageCache, clipImageEmbedder, dinoImageEmbedder, distancesTo, sdModelHash } from './models';
import { RerankOptions, RerankStats, RunFolder, baselinePicks, blipSeed, processItems, runDirection, ranksOf, relativeTo, sdSeed } from './run';
import { BlipSettings, CandidateRecord, ItemRecord } from './types';

/** BLIP caption options from the run's settings. */
export function blipCaptionOptions(s: BlipSettings, k: number, seed?: number): BlipCaptionOptions {
  const o: BlipCaptionOptions = { strategy: s.strategy, numReturnSequences: k, maxLength: s.maxLength, minLength: s.minLength, repetitionPenalty: s.repetitionPenalty };
  if (s.topP !== undefined) o.topP = s.topP;
  if (s.topK !== undefined) o.topK = s.topK;
  if (s.temperature !== undefined) o.temperature = s.temperature;
  if (s.numBeams !== undefined) o.numBeams = s.numBeams;
  if (seed !== undefined) o.seed = seed;
  return o;
}

/** Warns (once per text) when SD's 77-token CLIP window cuts a prompt. */
export function checkPromptLength(sd: StableDiffusionPipeline, text: string, where: string, warn: (m: string) => void): boolean {
  const enc = sd.tokenizer.sd77(text);
  if (enc.truncated) warn(`${where}: the prompt has ${enc.fullLength} CLIP tokens; Stable Diffusion truncates it to 77 (${JSON.stringify(text.length > 60 ? text.slice(0, 57) + '...' : text)})`);
  return enc.truncated;
}

/** Per-caption BLEU-1..4 against the references (PTB-tokenised as cocoeval); {} without references. */
export function captionScores(captions: readonly string[], references: readonly string[]): Record<string, number>[] {
  if (references.length === 0) return captions.map(() => ({}));
  const refs = ptbTokenize([...references]);
  const cands = ptbTokenize([...captions]);
  const b = bleu(cands, cands.map(() => refs), 4);
  return b.perImage.map((v) => ({ Bleu_1: v[0], Bleu_2: v[1], Bleu_3: v[2], Bleu_4: v[3] }));
}

/** Runs (or resumes) image → text → image reranking into `opts.out`. */
export async function rerankI2t2i(opts: RerankOptions): Promise<RerankStats> {
  return runDirection('i2t2i', opts, async ({ run, s, stats, todo, device, blip, sd, owned }) => {
    const embedders: ImageEmbedder[] = [];
    for (const method of s.similarity) {
      if (method === 'clip') {
        const clip = await ClipModel.load(s.models.clip!, { device });
        owned.push(clip);
        embedders.push(clipImageEmbedder(clip, s.clipVariant));
      } else if (method === 'dino') {
        const dino = await VitModel.load(s.models.dino!, { device });
        owned.push(dino);
        embedders.push(dinoImageEmbedder(dino, s.dinoSize));
      }
    }
    const cache = new SdImageCache(sd, sdModelHash(s.models.sd), run.cacheDir, s.sd, opts.sdBatch ?? 4);
    return await processItems(run, stats, todo, opts, cache, (item) => rerankImage(run, item, blip, sd, cache, embedders, stats));
  });
}

async function rerankImage(
  run: RunFolder,
  item: { index: number; id: string; image?: string; references: string[] },
  blip: Captioner,
  sd: StableDiffusionPipeline,
  cache: SdImageCache,
  embedders: ImageEmbedder[],
  stats: RerankStats,
): Promise<ItemRecord> {
  const s = run.settings;
  if (!item.image) throw new RoundtripError(`item ${item.id}: no image`);
  let input: RgbImage;
  try {
    input = await loadImage(item.image);
  } catch (err) {
    throw new RoundtripError(`item ${item.id}: cannot read ${item.image}: ${(err as Error).message}`);
  }
  const captions = (await blip.caption([input], blipCaptionOptions(s.blip, s.k, blipSeed(s.seed, item.index))))[0];
  stats.blipCalls++;
  if (captions.length !== s.k) throw new RoundtripError(`item ${item.id}: BLIP returned ${captions.length} captions, expected ${s.k}`);
  const warnings: string[] = [];
  const warn = (m: string) => {
    warnings.push(m);
    run.warn(m);
  };
  captions.forEach((c, j) => checkPromptLength(sd, c, `item ${item.id} candidate ${j}`, warn));
  const seeds = captions.map((_, j) => sdSeed(s.seed, item.index, j));
  const { files, images } = await cache.images(captions, seeds);
  const distance: Record<string, number[]> = {};
  for (const e of embedders) {
    const vectors = await e.embed([input, ...images]);
    distance[e.name] = distancesTo(vectors[0], vectors.slice(1));
  }
  const ranks: Record<string, number[]> = {};
  const winner: Record<string, number> = {};
  for (const [m, d] of Object.entries(distance)) {
    ranks[m] = ranksOf(d);
    winner[m] = ranks[m].indexOf(1);
  }
  const scores = captionScores(captions.map((c) => (c.trim() === '' ? '' : c)), item.references);
  const candidates: CandidateRecord[] = captions.map((text, j) => ({
    index: j,
    text,
    image: relativeTo(run.dir, files[j]),
    seed: seeds[j],
    distance: Object.fromEntries(Object.entries(distance).map(([m, d]) => [m, d[j]])),
    rank: Object.fromEntries(Object.entries(ranks).map(([m, r]) => [m, r[j]])),
    scores: scores[j],
  }));
  return {
    direction: 'i2t2i',
    index: item.index,
    id: item.id,
    input: { image: item.image },
    references: item.references,
    candidates,
    winner,
    baseline: baselinePicks(s.seed, item.index, s.k, s.repeats),
    ...(warnings.length ? { warnings } : {}),
    seconds: 0,
  };
}
