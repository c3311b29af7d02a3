/**
 * `roundtrip weights pull NAME… [--out DIR] [--revision REV] [--variant fp16] [--token-env VAR]` and
 * `roundtrip weights list`: fetch the paper's models (or any hub repo) into the local models folder
 * and show what is there. The lead nests both under `roundtrip weights`.
 */
import * as path from 'path';
import type { Argv, CommandModule } from 'yargs';
import { expectString, invalid } from '../../errors';
import { formatAmount } from '../../progress';
import { formatModelList, listLocalModels, type LocalModel } from '../../weights/hub/local';
import { MODEL_ALIASES } from '../../weights/hub/aliases';
import { modelDirName } from '../../weights/hub/config';
import { pullModel, resolvePullTarget, type PullOptions, type PullResult } from '../../weights/hub/pull';
import { convertToSafetensors } from '../../weights/convert';

export interface PullCommandOptions extends Omit<PullOptions, 'out'> {
  /** With one NAME: the model's folder. With several: the parent folder of `<DIR>/<alias or owner--name>`. */
  out?: string;
  /** Where the one-line summaries go (default stdout). */
  write?: (line: string) => void;
}

/** One summary line of a pull. */
export function formatPullResult(result: PullResult): string {
  const source = result.repo ? `${result.repo}${result.commit ? `@${result.commit.slice(0, 10)}` : result.revision ? `@${result.revision}` : ''}` : result.url;
  const total = result.files.reduce((sum, f) => sum + f.size, 0);
  const what = result.upToDate
    ? 'already up to date'
    : `fetched ${result.downloaded.length} of ${result.files.length} files (${formatAmount(result.bytesFetched, 'B')})`;
  const lines = [`${result.name}: ${what}; ${result.files.length} files, ${formatAmount(total, 'B')} in ${result.dir} (${source})`];
  if (result.converted) lines.push(`${result.name}: safetensors copy ${path.join(result.dir, result.converted)}`);
  for (const note of result.notes) lines.push(`${result.name}: note: ${note}`);
  return lines.join('\n');
}

/** Pulls every name in turn (stopping at the first failure) and prints a summary per model. */
export async function runPull(names: readonly string[], options: PullCommandOptions = {}): Promise<PullResult[]> {
  if (!Array.isArray(names) || names.length === 0) throw invalid('NAME', `at least one model name (${Object.keys(MODEL_ALIASES).join(', ')} or owner/name)`, names);
  const write = options.write ?? ((line: string) => process.stdout.write(line + '\n'));
  const targets = names.map((name) => resolvePullTarget(name, options.aliases ?? MODEL_ALIASES));
  const results: PullResult[] = [];
  for (const target of targets) {
    const out =
      options.out === undefined ? undefined : targets.length === 1 ? path.resolve(options.out) : path.resolve(options.out, modelDirName(target.name));
    const result = await pullModel(target.name, { convert: convertToSafetensors, ...options, out });
    write(formatPullResult(result));
    results.push(result);
  }
  return results;
}

/** Lists the local models; prints a table (or JSON) and returns the entries. */
export function runList(options: { json?: boolean; env?: NodeJS.ProcessEnv; write?: (text: string) => void } = {}): LocalModel[] {
  const write = options.write ?? ((text: string) => process.stdout.write(text + '\n'));
  const models = listLocalModels({ env: options.env });
  if (options.json) {
    write(JSON.stringify(models.map(({ alias, ...rest }) => ({ ...rest, alias: alias?.name })), null, 2));
  } else {
    write(formatModelList(models, { env: options.env }));
  }
  return models;
}

/** `weights pull NAME…`. */
export const pullCommand: CommandModule<{}, any> = {
  command: 'pull <names..>',
  describe: 'Download models from the Hugging Face hub (resumable, verified) into the local models folder',
  builder: (yargs: Argv<{}>) =>
    yargs
      .positional('names', {
        type: 'string',
        array: true,
        describe: `Aliases (${Object.keys(MODEL_ALIASES).join(', ')}) or Hugging Face repo ids (owner/name)`,
      })
      .option('out', {
        type: 'string',
        describe: 'Folder for the model (several names: a parent folder). Default: $ROUNDTRIP_HOME/models/NAME or ~/.cache/roundtrip/models/NAME',
      })
      .option('revision', { type: 'string', describe: 'Branch, tag or commit (default main)' })
      .option('variant', { type: 'string', describe: 'Weights variant, e.g. fp16 for *.fp16.safetensors (default: none, the full-precision files)' })
      .option('token-env', { type: 'string', describe: 'Environment variable holding the access token (default HF_TOKEN)' })
      .epilogue('The hub is $HF_ENDPOINT (default https://huggingface.co). Set ROUNDTRIP_QUIET=1 to hide progress bars.'),
  handler: async (args) => {
    const argv = args as unknown as { names: unknown[]; out?: string; revision?: string; variant?: string; tokenEnv?: string };
    const names = (argv.names ?? []).map((n, i) => expectString(`NAME #${i + 1}`, typeof n === 'number' ? String(n) : n));
    await runPull(names, { out: argv.out, revision: argv.revision, variant: argv.variant, tokenEnv: argv.tokenEnv });
  },
};

/** `weights list`. */
export const listCommand: CommandModule<{}, any> = {
  command: 'list',
  describe: 'Show the models present locally, their sizes and which commands use them',
  builder: (yargs: Argv<{}>) => yargs.option('json', { type: 'boolean', default: false, describe: 'Print the list as JSON' }),
  handler: async (args) => {
    runList({ json: Boolean((args as { json?: boolean }).json) });
  },
};
