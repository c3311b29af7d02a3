/**
 * The package's root folder (package.json, bin/, weights/, build/), from this file's place: lib/paths.ts runs
 * as dist/paths.js, one level below the root. Every module that needs a packaged file starts here.
 */
import * as path from 'path';

export const PACKAGE_ROOT = path.resolve(__dirname, '..');
