/**
 * `roundtrip weights inspect FILE` and `roundtrip weights convert IN OUT [--dtype]`: check and list the
 * tensors of a safetensors or PyTorch checkpoint file, and convert checkpoints to safetensors without Python.
 */
import * as fs from 'fs';
import type { Argv, CommandModule } from 'yargs';
import { RoundtripError, expectString } from '../../errors';
import { readTorchFile, stateDictOf } from '../../weights/torchfile';
import { convertToSafetensors, CAST_DTYPES, CastDtype, ConversionReport } from '../../weights/convert';
import { convertShardedCheckpoint } from '../../weights/files';
import { readSafetensorsHeader } from '../../weights/safetensors';
import { DEFAULT_CLIP_TOKENIZER } from '../../models/sd/pipeline';
import { writeDiffusersFolder } from '../../models/sd/single-file';

/** One listed tensor. */
export interface InspectedTensor {
  name: string;
  dtype: string;
  shape: number[];
  bytes: number;
}

/** What `inspect` reports about a weights file. */
export interface InspectReport {
  file: string;
  /** `safetensors`, `torch-zip` (torch >= 1.6) or `torch-legacy` (pre-1.6). */
  format: 'safetensors' | 'torch-zip' | 'torch-legacy';
  tensors: InspectedTensor[];
  totalTensors: number;
  totalBytes: number;
  /** safetensors `__metadata__`, or for checkpoints the wrapper key the state dict was found under. */
  metadata: Record<string, string>;
  /** Checkpoint entries that are not tensors (dotted names). */
  skipped: string[];
}

/** True when the file starts like a safetensors file: u64 header length, then a JSON object. */
function looksLikeSafetensors(file: string): boolean {
  const fd = fs.openSync(file, 'r');
  try {
    const head = Buffer.alloc(9);
    const n = fs.readSync(fd, head, 0, 9, 0);
    return n === 9 && head[8] === 0x7b && head.readBigUInt64LE(0) < BigInt(fs.fstatSync(fd).size);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Validates a weights file and lists its tensors.
 * @throws RoundtripError naming the file and the fault for a missing, malformed or refused file.
 */
export async function inspectWeightsFile(file: string): Promise<InspectReport> {
  expectString('FILE', file);
  let stat: fs.Stats;
  try {
    stat = fs.statSync(file);
  } catch (err) {
    throw new RoundtripError(`${file}: cannot read weights file: ${(err as Error).message}`);
  }
  if (!stat.isFile()) throw new RoundtripError(`${file}: expected a weights file, got a directory or special file`);
  let tensors: InspectedTensor[];
  let format: InspectReport['format'];
  let metadata: Record<string, string> = {};
  let skipped: string[] = [];
  if (looksLikeSafetensors(file)) {
    const header = readSafetensorsHeader(file);
    format = 'safetensors';
    metadata = { ...header.metadata };
    tensors = header.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: [...t.shape], bytes: t.dataOffsets[1] - t.dataOffsets[0] }));
  } else {
    const checkpoint = await readTorchFile(file);
    format = checkpoint.format === 'zip' ? 'torch-zip' : 'torch-legacy';
    const stateDict = stateDictOf(checkpoint.value, file);
    if (stateDict.wrapper !== null) metadata = { wrapper: stateDict.wrapper };
    skipped = stateDict.skipped;
    tensors = [...stateDict.tensors].map(([name, t]) => ({ name, dtype: t.dtype, shape: [...t.shape], bytes: t.byteLength }));
  }
  const totalBytes = tensors.reduce((sum, t) => sum + t.bytes, 0);
  return { file, format, tensors, totalTensors: tensors.length, totalBytes, metadata, skipped };
}

/** Human-readable table of an inspect report. */
export function formatInspectReport(report: InspectReport): string {
  const rows = report.tensors.map((t) => [t.name, t.dtype, `[${t.shape.join(', ')}]`, String(t.bytes)]);
  const header = ['name', 'dtype', 'shape', 'bytes'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 3 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ').trimEnd();
  const out = [`${report.file}: ${report.format}`];
  for (const [k, v] of Object.entries(report.metadata)) out.push(`  ${k}: ${v}`);
  out.push(line(header), ...rows.map(line));
  out.push(`${report.totalTensors} tensors, ${report.totalBytes} bytes`);
  if (report.skipped.length > 0) out.push(`${report.skipped.length} non-tensor entries: ${report.skipped.join(', ')}`);
  return out.join('\n');
}

/** Human-readable summary of a conversion. */
export function formatConversionReport(report: ConversionReport, seconds: number): string {
  const mb = report.bytes / 1e6;
  const lines = [
    `${report.output}: ${report.tensors} tensors, ${report.bytes} bytes of data (${report.fileBytes} bytes in all)` +
      (report.cast > 0 ? `, ${report.cast} cast` : ''),
    `read from ${report.input}${report.wrapper ? ` (state dict under "${report.wrapper}")` : ''} in ${seconds.toFixed(2)} s (${(mb / Math.max(seconds, 1e-9)).toFixed(1)} MB/s)`,
  ];
  if (report.skipped.length > 0) lines.push(`skipped ${report.skipped.length} non-tensor entries: ${report.skipped.join(', ')}`);
  return lines.join('\n');
}

/** `inspect FILE [--json]`. */
export const inspectCommand: CommandModule<{}, any> = {
  command: 'inspect <file>',
  describe: 'Validate a safetensors or PyTorch checkpoint file and list its tensors',
  builder: (yargs: Argv<{}>) =>
    yargs
      .positional('file', { type: 'string', describe: '.safetensors, .pth, .pt, .bin or .ckpt file', demandOption: true })
      .option('json', { type: 'boolean', default: false, describe: 'Print the report as JSON' }),
  handler: async (args) => {
    const argv = args as unknown as { file: string; json: boolean };
    const report = await inspectWeightsFile(argv.file);
    process.stdout.write((argv.json ? JSON.stringify(report, null, 2) : formatInspectReport(report)) + '\n');
  },
};

/** `convert IN OUT [--dtype F32|F16|BF16]`. */
export const convertCommand: CommandModule<{}, any> = {
  command: 'convert <input> <output>',
  describe:
    'Convert a PyTorch checkpoint (.pth/.pt/.bin/.ckpt) to safetensors without executing its pickle; an SD single file (.ckpt/.safetensors) with an OUTPUT not ending in .safetensors becomes a diffusers folder',
  builder: (yargs: Argv<{}>) =>
    yargs
      .positional('input', { type: 'string', describe: 'PyTorch checkpoint, the pytorch_model.bin.index.json of a sharded one, or a CompVis SD single file', demandOption: true })
      .positional('output', { type: 'string', describe: 'safetensors file to write (atomically); a folder for a sharded checkpoint, or the diffusers folder of an SD single file', demandOption: true })
      .option('configs', { type: 'string', describe: 'SD single file → folder: folder with unet_config.json / vae_config.json / text_encoder_config.json overriding the inferred configs (default: configs inferred from the file)' })
      .option('tokenizer', { type: 'string', describe: 'SD single file → folder: CLIP tokenizer folder to copy (default: the package\'s CLIP vocabulary)' })
      .option('dtype', {
        type: 'string',
        coerce: (v: unknown) => (typeof v === 'string' ? v.toUpperCase() : v),
        describe: `Cast floating-point tensors to this dtype: ${CAST_DTYPES.join(', ')} (round to nearest even; default: keep each dtype)`,
      })
      .option('json', { type: 'boolean', default: false, describe: 'Print the report as JSON' }),
  handler: async (args) => {
    const argv = args as unknown as { input: string; output: string; dtype?: CastDtype; json: boolean; configs?: string; tokenizer?: string };
    const started = process.hrtime.bigint();
    if (argv.input.endsWith('.index.json')) {
      // A sharded checkpoint: every shard converted into the output folder, then its safetensors index.
      const report = await convertShardedCheckpoint(argv.input, argv.output, { dtype: argv.dtype });
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const lines = report.shards.map((s) => `${s.input} -> ${s.output} (${s.tensors} tensors)`);
      process.stdout.write((argv.json ? JSON.stringify({ ...report, seconds }, null, 2) : [...lines, `wrote ${report.output} in ${seconds.toFixed(1)} s`].join('\n')) + '\n');
      return;
    }
    if (!argv.output.toLowerCase().endsWith('.safetensors')) {
      if (argv.dtype !== undefined) throw new RoundtripError('--dtype: only when writing a .safetensors file');
      const r = await writeDiffusersFolder(argv.input, argv.output, { configs: argv.configs, tokenizer: argv.tokenizer ?? DEFAULT_CLIP_TOKENIZER });
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      process.stdout.write(argv.json ? JSON.stringify({ ...r, output: argv.output, seconds }, null, 2) + '\n' : `wrote the diffusers folder ${argv.output}: ${r.tensors} tensors (${r.dropped.length} LDM-only entries dropped) in ${seconds.toFixed(2)} s\n`);
      return;
    }
    const report = await convertToSafetensors(argv.input, argv.output, { dtype: argv.dtype });
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    process.stdout.write((argv.json ? JSON.stringify({ ...report, seconds }, null, 2) : formatConversionReport(report, seconds)) + '\n');
  },
};

/** `weights <inspect|convert>`: both commands under one group, for wiring as a single subcommand. */
export const command: CommandModule<{}, any> = {
  command: 'weights <command>',
  describe: 'Inspect weights files and convert PyTorch checkpoints to safetensors',
  builder: (yargs: Argv<{}>) => yargs.command(inspectCommand).command(convertCommand).demandCommand(1),
  handler: () => undefined,
};
