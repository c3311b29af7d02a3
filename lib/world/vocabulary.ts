/**
 * The closed vocabulary of the synthetic captioned world: colours (with their exact RGB), shapes,
 * sizes, relations, single-object positions and backgrounds, plus the words captions use for them.
 *
 * Every caption word is a single token in both BERT WordPiece (bert-base-uncased) and CLIP BPE, so
 * the small models trained on this world never see `[UNK]` or split words (test/world.test.ts checks
 * this against the real vocabularies). That is why the checker background is called "checked":
 * "checkered" splits in both tokenizers.
 */

/** Object colours, in palette order (a colour's index is its id in label maps). */
export const COLORS = ['red', 'green', 'blue', 'yellow', 'purple', 'orange', 'white', 'black'] as const;
export type Color = (typeof COLORS)[number];

/**
 * Exact RGB of each colour. Chosen far from each other and far from the grey axis the backgrounds
 * live on (every background pixel is grey in [90, 200]), so that anti-aliased edges, which blend an
 * object colour with grey, never come close to a *different* palette colour.
 */
export const PALETTE: Readonly<Record<Color, readonly [number, number, number]>> = {
  red: [220, 30, 30],
  green: [30, 170, 60],
  blue: [40, 70, 225],
  yellow: [240, 220, 30],
  purple: [150, 40, 200],
  orange: [250, 140, 20],
  white: [250, 250, 250],
  black: [15, 15, 15],
};

export const SHAPES = ['circle', 'square', 'triangle', 'diamond', 'star', 'cross'] as const;
export type Shape = (typeof SHAPES)[number];

export const SIZES = ['small', 'large'] as const;
export type Size = (typeof SIZES)[number];

/** Relation of the first object of a two-object scene to the second ("A left of B"). */
export const RELATIONS = ['left', 'right', 'above', 'below'] as const;
export type Relation = (typeof RELATIONS)[number];

/** Where the single object of a one-object scene sits. */
export const POSITIONS = ['center', 'left', 'right', 'top', 'bottom'] as const;
export type Position = (typeof POSITIONS)[number];

export const BACKGROUNDS = ['plain', 'striped', 'checked', 'noisy'] as const;
export type Background = (typeof BACKGROUNDS)[number];

/** The inverse relation: A left of B ⇔ B right of A. */
export const INVERSE_RELATION: Readonly<Record<Relation, Relation>> = { left: 'right', right: 'left', above: 'below', below: 'above' };

/** Size words; the first is the canonical one, the others are paraphrases. */
export const SIZE_WORDS: Readonly<Record<Size, readonly string[]>> = {
  small: ['small', 'little'],
  large: ['large', 'big'],
};

/** Relation phrases placed between the two object phrases ("a red circle to the left of a blue square"). */
export const RELATION_PHRASES: Readonly<Record<Relation, readonly string[]>> = {
  left: ['to the left of', 'left of', 'on the left of'],
  right: ['to the right of', 'right of', 'on the right of'],
  above: ['above', 'over'],
  below: ['below', 'under', 'beneath'],
};

/** Position phrases placed after a single object phrase ("a red circle on the left"). */
export const POSITION_PHRASES: Readonly<Record<Position, readonly string[]>> = {
  center: ['in the center', 'in the middle'],
  left: ['on the left', 'on the left side'],
  right: ['on the right', 'on the right side'],
  top: ['at the top', 'near the top'],
  bottom: ['at the bottom', 'near the bottom'],
};

/** The word naming each background in "on a striped background". */
export const BACKGROUND_WORDS: Readonly<Record<Background, string>> = {
  plain: 'plain',
  striped: 'striped',
  checked: 'checked',
  noisy: 'noisy',
};

/** Leading phrases of caption templates (besides none). */
export const CAPTION_OPENERS = ['there is', 'a picture of', 'a drawing of', 'an image of'] as const;

/** Every word any caption can contain (for tokenizer checks). */
export function captionWords(): string[] {
  const words = new Set<string>(['a', 'an', 'is', 'on', 'background', 'the', 'of', 'image', 'and']);
  const add = (phrase: string): void => phrase.split(' ').forEach((word) => words.add(word));
  COLORS.forEach(add);
  SHAPES.forEach(add);
  Object.values(SIZE_WORDS).forEach((list) => list.forEach(add));
  Object.values(RELATION_PHRASES).forEach((list) => list.forEach(add));
  Object.values(POSITION_PHRASES).forEach((list) => list.forEach(add));
  Object.values(BACKGROUND_WORDS).forEach(add);
  CAPTION_OPENERS.forEach(add);
  return [...words].sort();
}
