/**
 * `roundtrip report DIR… [--out DIR] [--spice] [--inception FILE]`: rebuilds the tables (Table 1 /
 * Table 2), the rank plots and the gallery from saved rerank folders, merging shards.
 */
import * as fs from 'fs';
import type { Argv, CommandModule } from 'yargs';
import { RoundtripError } from '../../errors';
import { fidPreprocess, prefetchBatches } from '../../image';
import { InceptionModel } from '../../models/inception';
import { GALLERY_ITEMS, ImageFeatureFn, Report, ReportOptions, buildReport } from '../../paper/report';
import { Tensor, disposeAll, noGrad } from '../../runtime/tensor';

/** FID/IS features of image files with the Inception network (pool3 and unbiased logits). */
export function inceptionFeatures(model: InceptionModel, batchSize = 16): ImageFeatureFn {
  return async (files) => {
    const pool3: Float32Array[] = [];
    const logits: Float32Array[] = [];
    const recipe = fidPreprocess();
    await noGrad(async () => {
      if (files.length === 0) return;
      for await (const { tensor: batch } of prefetchBatches(files, recipe, { batchSize })) {
        const t = Tensor.fromTypedArray(batch.data as Uint8Array, batch.shape, 'uint8');
        try {
          const f = await model.features(t);
          for (const [src, dst] of [
            [f.pool3, pool3],
            [f.logitsUnbiased, logits],
          ] as const) {
            const d = src.shape[1];
            const data = src.toFloat32Array();
            for (let i = 0; i < src.shape[0]; i++) dst.push(data.slice(i * d, (i + 1) * d));
          }
          disposeAll([f.pool3, f.logitsUnbiased]);
        } finally {
          t.dispose();
        }
      }
    });
    return { pool3, logits };
  };
}

export interface ReportCommandOptions extends ReportOptions {
  /** Inception FID weights (safetensors) for FID/IS. */
  inception?: string;
  device?: string;
}

export function reportOptionsFromArgv(argv: Record<string, any>): ReportCommandOptions {
  return {
    out: argv.out,
    spice: argv.spice,
    spiceJar: argv['spice-jar'],
    java: argv.java,
    inception: argv.inception,
    device: argv.device,
    nocapsDomains: argv['nocaps-domains'] === undefined ? undefined : String(argv['nocaps-domains']),
    galleryItems: argv['gallery-items'],
  };
}

/** Builds the report (loading Inception when asked) and prints where it went. */
export async function runReportCommand(dirs: string[], opts: ReportCommandOptions): Promise<Report> {
  let inception: InceptionModel | undefined;
  try {
    if (opts.inception) {
      if (!fs.existsSync(opts.inception)) throw new RoundtripError(`--inception: ${opts.inception} does not exist`);
      inception = await InceptionModel.load(opts.inception, { device: opts.device ?? 'cpu' });
    }
    const report = await buildReport(dirs, { ...opts, imageFeatures: inception ? inceptionFeatures(inception) : undefined });
    process.stdout.write(`${report.items} item(s); report in ${report.out}: ${[report.files.markdown, report.files.json, report.files.ranksJson, ...report.files.svgs, report.files.gallery].map((f) => f.slice(report.out.length + 1)).join(', ')}\n`);
    return report;
  } finally {
    inception?.dispose();
  }
}

export function reportBuilder(y: Argv<{}>): Argv<{}> {
  return y
    .positional('dirs', { type: 'string', array: true, describe: 'Rerank output folders (shards of one run are merged)' })
    .option('out', { type: 'string', describe: 'Report folder (default <first DIR>/report)' })
    .option('spice', { type: 'boolean', default: false, describe: 'Also compute SPICE (Java + SPICE jar)' })
    .option('spice-jar', { type: 'string', describe: 'SPICE jar (default: $ROUNDTRIP_SPICE_JAR or the jar cache)' })
    .option('java', { type: 'string', describe: 'Java executable for METEOR/SPICE (default $ROUNDTRIP_JAVA or java)' })
    .option('inception', { type: 'string', describe: 'Inception FID weights (safetensors) for FID and IS in Table 2 (default: none, FID/IS left out)' })
    .option('gallery-items', { type: 'number', default: GALLERY_ITEMS, describe: 'Items shown in the gallery' })
    .option('device', { type: 'string', default: 'cpu', describe: 'Device for Inception' })
    .option('nocaps-domains', { type: 'string', describe: 'NoCaps annotation file (images[].domain, e.g. nocaps_val_4500_captions.json): Table 1 per in/near/out-domain (default: none)' }) as Argv<{}>;
}

export const command: CommandModule<{}, any> = {
  command: 'report <dirs..>',
  describe: 'Rebuild rerank tables, rank plots and gallery from saved results (merging shards)',
  builder: (y) => reportBuilder(y),
  handler: async (argv) => {
    const dirs = ((argv.dirs as unknown[]) ?? []).map(String);
    if (dirs.length === 0) throw new RoundtripError('report: give at least one rerank output folder');
    await runReportCommand(dirs, reportOptionsFromArgv(argv));
  },
};
