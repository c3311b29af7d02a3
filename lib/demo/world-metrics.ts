/**
 * Measures against the world's ground truth, which real datasets lack: every test image's scene is
 * known, so a caption can be parsed back to attributes (`parseCaption`) and a generated image read by
 * the attribute detector (`sceneFromImage`), and both scored against the scene (`scoreDescription`).
 *
 * For a reranking run this gives the attribute accuracy of the random baseline (the run's R seeded
 * picks per item, pooled) and of the reranked winner, for each similarity method.
 */
import * as path from 'path';
import { RoundtripError } from '../errors';
import { loadImage } from '../image';
import { readJsonLines } from '../json';
import { RESULTS_FILE } from '../paper/rerank/run';
import { ItemRecord } from '../paper/rerank/types';
import { AttributeAccuracy, DescriptionScore, Scene, attributeAccuracy, parseCaption, sceneFromImage, scoreDescription } from '../world';

/** The attribute accuracies shown in the tables, in order (AttributeAccuracy keys). */
export const ATTRIBUTE_KEYS = ['consistent', 'count', 'color', 'shape', 'size', 'relation', 'background'] as const;
export type AttributeKey = (typeof ATTRIBUTE_KEYS)[number];
export const ATTRIBUTE_LABELS: Readonly<Record<AttributeKey, string>> = {
  consistent: 'fully consistent',
  count: 'object count',
  color: 'colour',
  shape: 'shape',
  size: 'size (when stated)',
  relation: 'relation (two-object scenes)',
  background: 'background (when stated)',
};

/** Attribute accuracy of captions against the scenes they should describe (parsed with the world's grammar). */
export function captionAttributeAccuracy(scenes: readonly Scene[], captions: readonly string[]): AttributeAccuracy {
  if (scenes.length !== captions.length) throw new RoundtripError(`captionAttributeAccuracy: ${scenes.length} scenes but ${captions.length} captions`);
  return attributeAccuracy(scenes.map((scene, i) => scoreDescription(scene, parseCaption(captions[i]))));
}

/** Baseline vs reranked attribute accuracy of one reranking run. */
export interface RerankAttributes {
  direction: 'i2t2i' | 't2i2t';
  /** What was scored: the candidate captions (i2t2i) or the candidate images read by the detector (t2i2t). */
  scored: 'captions' | 'images';
  items: number;
  /** Pooled over the R baseline picks of every item. */
  random: AttributeAccuracy;
  /** Per similarity method: the winners. */
  reranked: Record<string, AttributeAccuracy>;
  /** Every candidate of every item (the expectation of a random pick). */
  allCandidates: AttributeAccuracy;
}

/**
 * Scores every candidate of a reranking run folder against its item's scene and aggregates the
 * baseline picks and the winners. `sceneOf` maps a record to the scene its input shows or describes.
 */
export async function rerankAttributes(runDir: string, sceneOf: (record: ItemRecord) => Scene): Promise<RerankAttributes> {
  const records = readJsonLines<ItemRecord>(path.join(runDir, RESULTS_FILE)).sort((a, b) => a.index - b.index);
  if (records.length === 0) throw new RoundtripError(`${runDir}: no finished items in ${RESULTS_FILE}`);
  const direction = records[0].direction;
  const random: DescriptionScore[] = [];
  const all: DescriptionScore[] = [];
  const winners: Record<string, DescriptionScore[]> = {};
  for (const record of records) {
    const scene = sceneOf(record);
    const scores: DescriptionScore[] = [];
    for (const candidate of record.candidates) {
      // i2t2i candidates are captions; t2i2t candidates are the generated images
      const description = direction === 'i2t2i' ? parseCaption(candidate.text) : sceneFromImage(await loadImage(path.resolve(runDir, candidate.image)));
      scores.push(scoreDescription(scene, description));
    }
    all.push(...scores);
    for (const pick of record.baseline) random.push(scores[pick]);
    for (const [method, winner] of Object.entries(record.winner)) (winners[method] ??= []).push(scores[winner]);
  }
  return {
    direction,
    scored: direction === 'i2t2i' ? 'captions' : 'images',
    items: records.length,
    random: attributeAccuracy(random),
    reranked: Object.fromEntries(Object.entries(winners).map(([m, s]) => [m, attributeAccuracy(s)])),
    allCandidates: attributeAccuracy(all),
  };
}
