/**
 * Scoring a description (a parsed caption, or what the detector saw in an image) against the scene
 * it should describe, and aggregating scores into attribute accuracies.
 *
 * Description objects are matched to scene objects by the assignment that agrees on the most
 * attributes (ties: the one under which the relation is right), so "a blue square right of a red
 * circle" matches a scene stored as "red circle left of blue square".
 */
import { INVERSE_RELATION } from './vocabulary';
import { DescribedObject, SceneDescription } from './captions';
import { Scene, WorldObject } from './scene';

/** Right answers out of those counted. */
export interface Tally {
  correct: number;
  total: number;
}

export interface DescriptionScore {
  /** the description has as many objects as the scene */
  count: boolean;
  /** over the scene's objects; an object the description misses counts as wrong */
  color: Tally;
  shape: Tally;
  /** over the matched objects whose size is stated */
  size: Tally;
  /** two-object scenes: whether the stated relation is right (false when wrong or not stated); else undefined */
  relation?: boolean;
  /** one-object scenes whose description states a position: whether it is right */
  position?: boolean;
  /** whether the stated background is right; undefined when not stated */
  background?: boolean;
  /** the count is right, every object's colour and shape is right, no stated attribute is wrong, and a two-object scene's relation is stated and right */
  consistent: boolean;
}

function agreement(object: WorldObject, described: DescribedObject): number {
  return (described.color === object.color ? 1 : 0) + (described.shape === object.shape ? 1 : 0) + (described.size === object.size ? 1 : 0);
}

/** Whether the description's relation, under `assignment` (scene object i → description object), is the scene's. */
function relationHolds(scene: Scene, description: SceneDescription, assignment: number[]): boolean {
  if (scene.relation === undefined || description.relation === undefined || assignment.length < 2) return false;
  const [a, b] = assignment;
  if (a === 0 && b === 1) return description.relation === scene.relation;
  if (a === 1 && b === 0) return description.relation === INVERSE_RELATION[scene.relation];
  return false;
}

/** All injective assignments of scene objects to description objects (-1 = unmatched). */
function assignments(sceneCount: number, describedCount: number): number[][] {
  const result: number[][] = [];
  const current: number[] = [];
  const visit = (i: number): void => {
    if (i === sceneCount) {
      result.push([...current]);
      return;
    }
    for (let d = -1; d < describedCount; d++) {
      if (d >= 0 && current.includes(d)) continue;
      current.push(d);
      visit(i + 1);
      current.pop();
    }
  };
  visit(0);
  return result;
}

/** Scores what `description` says against `scene`. */
export function scoreDescription(scene: Scene, description: SceneDescription): DescriptionScore {
  const described = description.objects;
  let best: number[] = [];
  let bestAgreement = -1;
  let bestRelation = false;
  for (const assignment of assignments(scene.objects.length, described.length)) {
    let total = 0;
    assignment.forEach((d, i) => {
      if (d >= 0) total += agreement(scene.objects[i], described[d]);
    });
    const relation = relationHolds(scene, description, assignment);
    if (total > bestAgreement || (total === bestAgreement && relation && !bestRelation)) {
      best = assignment;
      bestAgreement = total;
      bestRelation = relation;
    }
  }
  const color: Tally = { correct: 0, total: scene.objects.length };
  const shape: Tally = { correct: 0, total: scene.objects.length };
  const size: Tally = { correct: 0, total: 0 };
  best.forEach((d, i) => {
    if (d < 0) return;
    const object = scene.objects[i];
    const said = described[d];
    if (said.color === object.color) color.correct++;
    if (said.shape === object.shape) shape.correct++;
    if (said.size !== undefined) {
      size.total++;
      if (said.size === object.size) size.correct++;
    }
  });
  const score: DescriptionScore = { count: described.length === scene.objects.length, color, shape, size, consistent: false };
  if (scene.relation !== undefined) score.relation = bestRelation;
  if (scene.position !== undefined && description.position !== undefined) score.position = description.position === scene.position;
  if (description.background !== undefined) score.background = description.background === scene.background;
  score.consistent =
    score.count &&
    color.correct === color.total &&
    shape.correct === shape.total &&
    size.correct === size.total &&
    score.relation !== false &&
    score.position !== false &&
    score.background !== false;
  return score;
}

/** Accuracies over many scored descriptions; each is NaN when nothing was counted. */
export interface AttributeAccuracy {
  /** number of descriptions */
  n: number;
  count: number;
  color: number;
  shape: number;
  size: number;
  /** over two-object scenes (a missing relation counts as wrong) */
  relation: number;
  /** over one-object scenes whose description states a position */
  position: number;
  /** over descriptions that state a background */
  background: number;
  /** fraction of fully consistent descriptions */
  consistent: number;
}

/** Aggregates scores into accuracies (object-level for colour/shape/size, scene-level otherwise). */
export function attributeAccuracy(scores: readonly DescriptionScore[]): AttributeAccuracy {
  const sum = { color: [0, 0], shape: [0, 0], size: [0, 0], relation: [0, 0], position: [0, 0], background: [0, 0] };
  let count = 0;
  let consistent = 0;
  const addFlag = (slot: number[], flag: boolean | undefined): void => {
    if (flag === undefined) return;
    slot[1]++;
    if (flag) slot[0]++;
  };
  for (const score of scores) {
    if (score.count) count++;
    if (score.consistent) consistent++;
    for (const key of ['color', 'shape', 'size'] as const) {
      sum[key][0] += score[key].correct;
      sum[key][1] += score[key].total;
    }
    addFlag(sum.relation, score.relation);
    addFlag(sum.position, score.position);
    addFlag(sum.background, score.background);
  }
  const ratio = ([correct, total]: number[]): number => (total === 0 ? NaN : correct / total);
  const n = scores.length;
  return {
    n,
    count: n === 0 ? NaN : count / n,
    color: ratio(sum.color),
    shape: ratio(sum.shape),
    size: ratio(sum.size),
    relation: ratio(sum.relation),
    position: ratio(sum.position),
    background: ratio(sum.background),
    consistent: n === 0 ? NaN : consistent / n,
  };
}
