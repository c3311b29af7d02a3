/**
 * text → image → text reranking (paper §3.2): Stable Diffusion draws K images per input text (one
 * seed per candidate), BLIP captions each with beam search (3 beams, min 5, max 20 tokens), and the
 * image whose caption is closest to the input text wins (CLIP-text or SBERT 1 − cos, −CIDEr-D, WMD).
 *
 * Each candidate also records image-quality scores used by Table 2: `clip_text_image`, 1 − cos of
 * the projected CLIP image and text embeddings (generated image vs input text; needs a full CLIP
 * model), and `clip_real`, the CLIP image distance to the real image paired with the prompt.
 */
import { RoundtripError } from '../../errors';
import { ClipTextEncoder, SbertEncoder, clipTextEmbeddings, loadClipTextEncoder, loadSbertEncoder, sbertEmbeddings } from '../../metrics/eval/text-embeddings';
import { loadImage } from '../../image';
import { WordVectors, captionWmd, loadNltkStopwords, loadWordVectors } from '../../metrics/wmd';
import { cosineDistance } from '../../models/clip';
import { blipCaptionOptions, checkPromptLength } from './i2t2i';
import { CiderSimilarity, ImageEmbedder, SdImageCache, clipImageEmbedder, distancesTo, sdModelHash } from './models';
import { RerankOptions, RerankStats, baselinePicks, processItems, runDirection, ranksOf, relativeTo, sdSeed } from './run';
import { loadDataset } from './data';
import { CandidateRecord, ItemRecord } from './types';

interface TextScorers {
  clip?: ClipTextEncoder;
  clipImage?: ImageEmbedder;
  clipImageProjected?: ImageEmbedder;
  sbert?: SbertEncoder;
  cider?: CiderSimilarity;
  wmd?: { vectors: WordVectors; stopwords: Set<string> };
}

/** Runs (or resumes) text → image → text reranking into `opts.out`. */
export async function rerankT2i2t(opts: RerankOptions): Promise<RerankStats> {
  return runDirection('t2i2t', opts, async ({ run, s, stats, todo, device, blip, sd, owned }) => {
    const scorers: TextScorers = {};
    if (s.models.clip) {
      scorers.clip = await loadClipTextEncoder(s.models.clip, { device });
      owned.push(scorers.clip.model);
      if (scorers.clip.model.hasVision) {
        scorers.clipImage = clipImageEmbedder(scorers.clip.model, s.clipVariant);
        scorers.clipImageProjected = clipImageEmbedder(scorers.clip.model, 'projected');
      }
    }
    if (s.similarity.includes('sbert')) {
      scorers.sbert = await loadSbertEncoder(s.models.sbert!, { device });
      owned.push(scorers.sbert.model);
    }
    // document frequencies over every input text of the dataset, so every shard scores alike
    if (s.similarity.includes('cider')) scorers.cider = new CiderSimilarity(loadDataset(opts).items.map((it) => it.text!));
    if (s.similarity.includes('wmd')) scorers.wmd = { vectors: loadWordVectors(s.models.glove!), stopwords: loadNltkStopwords() };
    const cache = new SdImageCache(sd, sdModelHash(s.models.sd), run.cacheDir, s.sd, opts.sdBatch ?? 4);
    return await processItems(run, stats, todo, opts, cache, async (item) => {
      const text = item.text!;
      const warnings: string[] = [];
      checkPromptLength(sd, text, `item ${item.id}`, (m) => {
        warnings.push(m);
        run.warn(m);
      });
      const seeds = Array.from({ length: s.k }, (_, j) => sdSeed(s.seed, item.index, j));
      const { files, images } = await cache.images(seeds.map(() => text), seeds);
      const captions = (await blip.caption(images, { ...blipCaptionOptions(s.blip, 1), batchSize: s.k })).map((c) => c[0]);
      stats.blipCalls++;
      if (captions.length !== s.k) throw new RoundtripError(`item ${item.id}: BLIP returned ${captions.length} captions, expected ${s.k}`);

      const distance: Record<string, number[]> = {};
      for (const method of s.similarity) {
        if (method === 'clip-text') {
          const v = await clipTextEmbeddings(scorers.clip!, [text, ...captions], { variant: s.clipVariant, batchSize: s.k + 1 });
          distance[method] = distancesTo(v[0], v.slice(1));
        } else if (method === 'sbert') {
          const v = await sbertEmbeddings(scorers.sbert!, [text, ...captions], { batchSize: s.k + 1 });
          distance[method] = distancesTo(v[0], v.slice(1));
        } else if (method === 'cider') {
          distance[method] = scorers.cider!.scores(captions, text).map((x) => -x);
        } else if (method === 'wmd') {
          distance[method] = captions.map((c) => captionWmd(scorers.wmd!.vectors, c, [text], { stopwords: scorers.wmd!.stopwords }).mean);
        }
      }
      const scores: Record<string, number>[] = captions.map(() => ({}));
      if (scorers.clipImageProjected && scorers.clip) {
        const [t] = await clipTextEmbeddings(scorers.clip, [text], { variant: 'projected', batchSize: 1 });
        const v = await scorers.clipImageProjected.embed(images);
        v.forEach((x, j) => (scores[j].clip_text_image = cosineDistance(t, x)));
      }
      if (scorers.clipImage && item.image) {
        const v = await scorers.clipImage.embed([await loadImage(item.image), ...images]);
        distancesTo(v[0], v.slice(1)).forEach((d, j) => (scores[j].clip_real = d));
      }
      const ranks: Record<string, number[]> = {};
      const winner: Record<string, number> = {};
      for (const [m, d] of Object.entries(distance)) {
        ranks[m] = ranksOf(d);
        winner[m] = ranks[m].indexOf(1);
      }
      const candidates: CandidateRecord[] = captions.map((caption, j) => ({
        index: j,
        text: caption,
        image: relativeTo(run.dir, files[j]),
        seed: seeds[j],
        distance: Object.fromEntries(Object.entries(distance).map(([m, d]) => [m, d[j]])),
        rank: Object.fromEntries(Object.entries(ranks).map(([m, r]) => [m, r[j]])),
        scores: scores[j],
      }));
      const record: ItemRecord = {
        direction: 't2i2t',
        index: item.index,
        id: item.id,
        input: { text },
        references: item.references,
        ...(item.image ? { realImage: item.image } : {}),
        candidates,
        winner,
        baseline: baselinePicks(s.seed, item.index, s.k, s.repeats),
        ...(warnings.length ? { warnings } : {}),
        seconds: 0,
      };
      return record;
    });
  });
}
