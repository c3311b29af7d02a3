/**
 * The captioner of a model folder: BLIP (`BlipForConditionalGeneration`) or BLIP-2 OPT
 * (`Blip2ForConditionalGeneration`), picked from its config.json. Both caption with the same options
 * (strategy, beams, K candidates, lengths, sampling knobs, prompt); length limits follow each model's
 * transformers rules (BLIP counts the prompt, BLIP-2 4.37.2 does not).
 */
import * as fs from 'fs';
import * as path from 'path';
import { expectString } from '../errors';
import { readJsonFile } from '../json';
import { Blip } from './blip';
import { Blip2, isBlip2Config } from './blip2';

export type Captioner = Blip | Blip2;
export type CaptionerFamily = 'blip' | 'blip2';

/** 'blip2' for a Blip2Config folder, else 'blip' (BLIP folders, original-layout files). */
export function captionerFamily(dir: string): CaptionerFamily {
  const file = path.join(expectString('captioner folder', dir), 'config.json');
  if (!fs.existsSync(file)) return 'blip';
  return isBlip2Config(readJsonFile(file, { object: true })) ? 'blip2' : 'blip';
}

/** Loads the captioner of a folder; `partial` files (finetune exports) are merged over its weights. */
export async function loadCaptioner(dir: string, opts: { device?: string; partial?: string[] } = {}): Promise<Captioner> {
  return captionerFamily(dir) === 'blip2' ? Blip2.load(dir, opts) : Blip.load(dir, opts);
}
