import * as path from 'path';

/** Repository root (the folder holding package.json). */
export const ROOT = path.resolve(__dirname, '..', '..');
/** Read-only ground truth, a sibling of the repository (`../shared`), or ROUNDTRIP_SHARED. */
export const SHARED = process.env.ROUNDTRIP_SHARED ?? path.resolve(ROOT, '..', 'shared');
export const REFERENCE = path.join(SHARED, 'fixtures', 'reference');
export const CHECKPOINTS = path.join(SHARED, 'fixtures', 'checkpoints');
export const METRICS = path.join(SHARED, 'fixtures', 'metrics');
export const VOCAB = path.join(SHARED, 'vocab');
export const DATA = path.join(SHARED, 'data');
