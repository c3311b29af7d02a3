/**
 * Finetuning recipes: named presets of the training details, so a run says which one it followed.
 *
 * - `default`: this package's behaviour (Eq. 5 summed every step, one AdamW over both models with weight
 *   decay 0.05 and one global clip of 1.0, BLIP flip without RandAugment, soft captions padded to 77).
 * - `release`: the paper authors' public training code (`../shared/data/seed-release/README.md`):
 *   the per-micro-batch alternation, two optimizer groups (UNet: weight decay 0.01, clip 1.0; BLIP:
 *   weight decay 0, unclipped), BLIP flip + RandAugment(2, 5), SD random crop without flip, the soft
 *   caption framed without padding, CLIP ids padded to the longest in the batch, SD's estimate fed to
 *   BLIP without CLIP mean/std, the DDPM-step estimate, batch 1 × accumulation 8, label smoothing 0.1.
 *
 * Image sizes and the BLIP prompt are the models' (they are not part of a recipe). A config's own keys
 * override its recipe's; the report lists the recipe, its settings and the overrides.
 */
import { expectOneOf } from '../../errors';
import { DEFAULT_CONFIG } from './defaults';

export const RECIPES = ['default', 'release'] as const;
export type RecipeName = (typeof RECIPES)[number];

/** The settings the `default` recipe states (their values are the defaults, defaults.ts), so a report can print them. */
const DEFAULT_RECIPE_KEYS = ['objective', 'schedule', 'trainable', 'lr', 'beta1', 'beta2', 'eps', 'weightDecay', 'clip', 'lrSchedule', 'labelSmoothing', 'softMode', 'temperature', 'recTxtMode', 'sdRandomCrop', 'sdFlip', 'blipFlip', 'blipRandAugment', 'blipMinScale', 'flipSides'] as const;

/**
 * The settings a recipe fixes (FinetuneConfig keys). `default` states the defaults of its keys; `release` also
 * sets the training-step keys of the release.
 */
export function recipeSettings(name: RecipeName): Record<string, unknown> {
  expectOneOf('recipe', name, RECIPES);
  if (name === 'default') {
    const d = DEFAULT_CONFIG as unknown as Record<string, unknown>;
    return JSON.parse(JSON.stringify(Object.fromEntries(DEFAULT_RECIPE_KEYS.map((key) => [key, d[key]]))));
  }
  return {
    objective: 'joint',
    // even micro-batch: L_sd + L_rec_txt; odd: L_cap + L_rec_img
    schedule: 'alternating-micro',
    trainable: { blip: 'xattn-q', unet: 'xattn-q' },
    lr: 1e-4,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    lrSchedule: 'constant',
    clipMode: 'per-model',
    blipWeightDecay: 0,
    blipClip: 0,
    unetWeightDecay: 0.01,
    unetClip: 1.0,
    labelSmoothing: 0.1,
    softMode: 'probs',
    temperature: 1,
    softFraming: 'release',
    clipPadding: 'longest',
    recTxtMode: 'ddpm-step',
    recTxtNormalize: false,
    batchSize: 1,
    gradAccum: 8,
    epochs: 1,
    sdRandomCrop: true,
    sdFlip: false,
    blipFlip: true,
    blipRandAugment: true,
    blipMinScale: 0.5,
    // the release flips without touching captions; on captions that name sides that corrupts them
    flipSides: 'swap',
  };
}

/** A recipe's settings as one line per key, marking the ones a config overrode. */
export function recipeLines(name: RecipeName, config: Record<string, unknown>): string[] {
  const settings = recipeSettings(name);
  return Object.entries(settings).map(([key, value]) => {
    const actual = config[key];
    const same = JSON.stringify(actual) === JSON.stringify(value);
    return `${key}: ${JSON.stringify(actual)}${same ? '' : ` (recipe: ${JSON.stringify(value)})`}`;
  });
}
