import * as path from 'path';
import type { CommandModule } from 'yargs';
import { CaseResult, runConformanceCase } from '../../conformance';

function fmt(x: number): string {
  return Number.isNaN(x) ? '-' : x === 0 ? '0' : x.toExponential(2);
}

/** One table per case: each output with max abs/rel error, its tolerance and the verdict. */
export function formatCaseResult(r: CaseResult): string {
  const rows = r.results.map((t) => [t.name, t.compare, fmt(t.maxAbs), fmt(t.maxRel), t.compare === 'exact' ? 'exact' : `${fmt(t.atol)}+${fmt(t.rtol)}·|ref|`, t.status === 'ok' ? 'ok' : `${t.status.toUpperCase()}${t.detail ? ' (' + t.detail + ')' : t.bad ? ` (${t.bad}/${t.numel} outside)` : ''}`]);
  const head = ['output', 'compare', 'max abs', 'max rel', 'tolerance', 'result'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd();
  const failed = r.results.filter((t) => t.status !== 'ok').length;
  return [
    `${r.name}  (${r.dir})  ${r.ok ? 'PASS' : 'FAIL'}  ${r.results.length - failed}/${r.results.length} outputs within tolerance, ${r.seconds.toFixed(1)} s`,
    line(head),
    ...rows.map(line),
  ].join('\n');
}

export const command: CommandModule<{}, { dirs: string[]; device: string; json: boolean; vocab?: string }> = {
  command: 'conformance <dirs..>',
  describe: 'Run reference fixture folders through roundtrip and compare every output with its tolerance',
  builder: (y) =>
    y
      .positional('dirs', { type: 'string', array: true, describe: 'fixture folders (with case.json and io.safetensors)' })
      .option('device', { type: 'string', default: 'cpu', describe: 'cpu, cuda or cuda:N' })
      .option('vocab', { type: 'string', describe: 'tokenizer cases: folder with clip/ and bert-base-uncased/ (default <dir>/../../vocab)' })
      .option('json', { type: 'boolean', default: false, describe: 'Print JSON' }) as any,
  handler: async (argv) => {
    const results: CaseResult[] = [];
    for (const dir of argv.dirs) {
      const r = await runConformanceCase(path.resolve(dir), { device: argv.device, vocab: argv.vocab });
      results.push(r);
      if (!argv.json) process.stdout.write(formatCaseResult(r) + '\n\n');
    }
    if (argv.json) process.stdout.write(JSON.stringify(results, null, 2) + '\n');
    const failed = results.filter((r) => !r.ok).length;
    if (!argv.json) process.stdout.write(`${results.length - failed} of ${results.length} case(s) passed\n`);
    if (failed) process.exitCode = 1;
  },
};
