/**
 * `roundtrip validate-score [--items N] [--drawings N]`: the paper's §7 check on the built-in world — does
 * the reconstruction score rank captions as CIDEr-D and the world's ground truth do (Kendall τ with a 95 %
 * interval; lib/paper/experiment/validate-score.ts).
 */
import type { CommandModule } from 'yargs';
import { formatInterval } from '../../paper/experiment/stats';
import { validateScore } from '../../paper/experiment/validate-score';

export const command: CommandModule<{}, any> = {
  command: 'validate-score',
  describe: 'Kendall τ of the reconstruction score against CIDEr-D and the world’s attribute accuracy (paper §7), with intervals',
  builder: (y) =>
    y
      .option('out', { type: 'string', default: 'roundtrip-validate-score', describe: 'Report folder' })
      .option('cache', { type: 'string', describe: 'World cache (default <out>/cache)' })
      .option('weights', { type: 'string', describe: 'Folder with world-blip/, world-sd/, world-clip/ (default the package weights/)' })
      .option('vocab', { type: 'string', describe: 'BERT/CLIP vocabularies for a fallback pretraining (default: looked up in --weights)' })
      .option('items', { type: 'number', default: 32, describe: 'World test images (3 captions each)' })
      .option('drawings', { type: 'number', default: 2, describe: 'SD drawings per caption' })
      .option('sd-steps', { type: 'number', default: 10, describe: 'DDIM steps per drawing' })
      .option('guidance', { type: 'number', default: 4, describe: 'Guidance of the drawings' })
      .option('seed', { type: 'number', default: 0, describe: 'Seed of the drawings and the bootstrap' })
      .option('device', { type: 'string', default: 'cpu', describe: 'cpu, cuda or cuda:N' })
      .option('quiet', { type: 'boolean', default: false, describe: 'No progress output' }),
  handler: async (argv) => {
    const r = await validateScore({ out: argv.out, cache: argv.cache, weights: argv.weights, vocab: argv.vocab, items: argv.items, drawings: argv.drawings, sdSteps: argv.sdSteps, guidance: argv.guidance, seed: argv.seed, device: argv.device, quiet: argv.quiet });
    process.stdout.write(`${r.files.markdown}\nKendall τ vs CIDEr-D ${formatInterval(r.tauCider)}; vs attribute accuracy ${formatInterval(r.tauAttributes)}\n`);
  },
};
