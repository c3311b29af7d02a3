/**
 * The synthetic captioned world: a deterministic set of captioned images (coloured shapes on simple
 * backgrounds, with sizes, positions and relations) for training small models and demonstrating
 * the whole method where real weights and COCO are out of reach (CI, air-gapped machines).
 *
 * - `generateScene` / `renderScene` / `captionScene`: one scene, its pixels, its five captions.
 * - `parseCaption`: a caption back to its attributes; `sceneFromImage`: an image to its attributes.
 * - `scoreDescription` / `attributeAccuracy`: how well a caption or an image matches its scene.
 * - `writeWorld` / `readWorld`: the world on disk in the COCO Karpathy layout, plus world.json.
 */
export * from './vocabulary';
export * from './scene';
export * from './render';
export * from './captions';
export * from './detect';
export * from './compare';
export * from './write';
