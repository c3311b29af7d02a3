/**
 * `roundtrip sweep --what k|top-p|top-k|temperature [--values v1,v2,…]`: i2t2i reranking on the built-in world
 * under a range of K or of BLIP's decoding, with the reranked-vs-random gain and its interval per value
 * (lib/paper/experiment/sweep.ts).
 */
import type { CommandModule } from 'yargs';
import { RoundtripError } from '../../errors';
import { SWEEPS, SweepName, runSweep } from '../../paper/experiment/sweep';

export function parseValues(v: unknown): number[] | undefined {
  if (v === undefined) return undefined;
  const parts = (Array.isArray(v) ? v : [v]).flatMap((x) => String(x).split(',')).map((x) => x.trim()).filter(Boolean);
  return parts.map((p) => {
    const n = Number(p);
    if (!Number.isFinite(n)) throw new RoundtripError(`--values: '${p}' is not a number`);
    return n;
  });
}

export const command: CommandModule<{}, any> = {
  command: 'sweep',
  describe: 'i2t2i reranking on the built-in world across K (Figure 9) or BLIP decoding (top-p, top-k, temperature), with a plot',
  builder: (y) =>
    y
      .option('what', { type: 'string', demandOption: true, describe: `The setting to sweep: ${SWEEPS.join(', ')}` })
      .option('values', { type: 'string', describe: 'Comma-separated values (default: the paper’s range)' })
      .option('out', { type: 'string', default: 'roundtrip-sweep', describe: 'Report folder' })
      .option('cache', { type: 'string', describe: 'World cache (default <out>/cache)' })
      .option('weights', { type: 'string', describe: 'Folder with world-blip/, world-sd/, world-clip/ (default the package weights/)' })
      .option('vocab', { type: 'string', describe: 'BERT/CLIP vocabularies for a fallback pretraining (default: looked up in --weights)' })
      .option('k', { type: 'number', default: 5, describe: 'K when K is not swept' })
      .option('items', { type: 'number', default: 32, describe: 'World test images' })
      .option('sd-steps', { type: 'number', default: 10, describe: 'DDIM steps of the reconstructions' })
      .option('guidance', { type: 'number', default: 4, describe: 'Guidance of the reconstructions' })
      .option('repeats', { type: 'number', default: 5, describe: 'Random-baseline picks per item' })
      .option('seed', { type: 'number', default: 0, describe: 'Seed of sampling and the bootstrap' })
      .option('device', { type: 'string', default: 'cpu', describe: 'cpu, cuda or cuda:N' })
      .option('quiet', { type: 'boolean', default: false, describe: 'No progress output' }),
  handler: async (argv) => {
    const r = await runSweep({
      out: argv.out,
      cache: argv.cache,
      weights: argv.weights,
      vocab: argv.vocab,
      what: argv.what as SweepName,
      values: parseValues(argv.values),
      k: argv.k,
      items: argv.items,
      sdSteps: argv.sdSteps,
      guidance: argv.guidance,
      repeats: argv.repeats,
      seed: argv.seed,
      device: argv.device,
      quiet: argv.quiet,
    });
    process.stdout.write(`sweep ${argv.what}: ${r.files.markdown}\n${r.points.map((p) => `${p.value}: random ${p.random.toFixed(4)} reranked ${p.reranked.toFixed(4)}`).join('\n')}\n`);
  },
};
