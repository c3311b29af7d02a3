/**
 * `roundtrip score --image I --caption "…"`: the reconstruction distance of a caption for an image
 * (SD draws the caption N times, default 3; mean 1 − cos to the image). The mirror,
 * `roundtrip score --text T --image I`, captions the image with BLIP and compares the caption with
 * the text. `--batch FILE` scores a JSON list of `{image, caption}` or `{text, image}` at once.
 */
import type { CommandModule } from 'yargs';
import { RoundtripError } from '../../errors';
import { CaptionScore, ReconstructionScorer, SCORE_DRAWINGS, ScoreOptions, ScoreRequest, TextScore, parseScoreRequests } from '../../paper/rerank/score';
import { reconstructionFlags, reconstructionOptionsFromArgv } from './rerank';
import { readJsonFile } from '../../json';

export interface ScoreCommandInput extends ScoreOptions {
  image?: string;
  caption?: string;
  text?: string;
  /** JSON file with a list of requests. */
  batch?: string;
}

/** Runs the scores a command line asks for (exported for tests and scripts). */
export async function runScores(input: ScoreCommandInput): Promise<(CaptionScore | TextScore)[]> {
  let mode: 'caption' | 'text';
  let requests: ScoreRequest[];
  if (input.batch) {
    if (input.caption !== undefined || input.text !== undefined) throw new RoundtripError('score: give either --batch FILE or --image with --caption/--text, not both');
    const json: unknown = readJsonFile(input.batch, { what: '--batch requests' });
    ({ mode, requests } = parseScoreRequests(json, `--batch ${input.batch}`));
  } else {
    if (!input.image) throw new RoundtripError('score: --image is required (or --batch FILE)');
    if ((input.caption === undefined) === (input.text === undefined)) throw new RoundtripError('score: give exactly one of --caption (caption → image reconstruction) or --text (image → caption vs text)');
    mode = input.caption !== undefined ? 'caption' : 'text';
    requests = [mode === 'caption' ? { image: input.image, caption: input.caption! } : { text: input.text!, image: input.image }];
  }
  const scorer = await ReconstructionScorer.load(mode, input);
  try {
    const out: (CaptionScore | TextScore)[] = [];
    for (const r of requests) out.push('caption' in r ? await scorer.captionDistance(r.image, r.caption) : await scorer.textDistance(r.text, r.image));
    return out;
  } finally {
    scorer.dispose();
  }
}

export const command: CommandModule<{}, any> = {
  command: 'score',
  describe: 'Reconstruction distance of a caption for an image (or of an image for a text)',
  builder: (y) =>
    reconstructionFlags(y)
      .option('image', { type: 'string', describe: 'Image file (default: none)' })
      .option('caption', { type: 'string', describe: 'Caption to score: SD redraws it, distance to --image (default: none)' })
      .option('text', { type: 'string', describe: 'Mirror: BLIP captions --image, distance to this text (default: none)' })
      .option('batch', { type: 'string', describe: 'JSON list of {image, caption} or {text, image} (default: none)' })
      .option('blip', { type: 'string', describe: 'Captioner folder, BLIP or BLIP-2 OPT (mirror form; default: none)' })
      .option('sd', { type: 'string', describe: 'Stable Diffusion folder (caption form; default: none)' })
      .option('similarity', { type: 'string', describe: 'caption form: clip,dino (default clip); mirror: clip-text,sbert,cider,wmd (default clip-text)' })
      .option('seeds', { type: 'number', default: SCORE_DRAWINGS, describe: 'Drawings per caption (the score is their mean)' })
      .option('cache', { type: 'string', describe: 'Image cache folder (default ./roundtrip-score-cache)' }),
  handler: async (argv) => {
    const results = await runScores({
      ...reconstructionOptionsFromArgv(argv),
      image: argv.image,
      caption: argv.caption,
      text: argv.text,
      batch: argv.batch,
      blip: argv.blip,
      sd: argv.sd,
      seeds: argv.seeds,
    });
    process.stdout.write(JSON.stringify(results.length === 1 && !argv.batch ? results[0] : results, null, 2) + '\n');
  },
};
