import yargs from 'yargs';
import { commands } from './commands';
import { RoundtripError } from '../errors';
import { resolveModelPath } from '../weights/hub/resolve';

/** Options that name a model: each takes a folder or an alias pulled with `roundtrip weights pull`. */
const MODEL_OPTIONS = ['model', 'blip', 'sd', 'clip', 'dino', 'sbert', 'inception'] as const;

/**
 * POSIX `--`: everything after it is an operand (a caption or prompt may start with `-`). yargs would
 * keep those words out of the positional arguments, so each one goes to yargs as a placeholder word and
 * is put back into the parsed arguments before the command runs.
 */
export function splitOperands(argv: string[]): { args: string[]; restore: (parsed: Record<string, unknown>) => void } {
  const end = argv.indexOf('--');
  if (end < 0) return { args: argv, restore: () => undefined };
  const operands = argv.slice(end + 1);
  const marks = new Map(operands.map((o, i) => [`\u0000operand${i}\u0000`, o]));
  const put = (v: unknown): unknown => (typeof v === 'string' && marks.has(v) ? marks.get(v) : Array.isArray(v) ? v.map(put) : v);
  return {
    args: [...argv.slice(0, end), ...marks.keys()],
    restore: (parsed) => {
      for (const key of Object.keys(parsed)) parsed[key] = put(parsed[key]);
    },
  };
}

/** Entry point of the `roundtrip` command. */
export async function main(argv: string[]): Promise<void> {
  await createParser(argv).parseAsync();
}

/** The `roundtrip` parser over `argv` (every command, `--` handling, model aliases); `main` runs it. */
export function createParser(argv: string[]) {
  const operands = splitOperands(argv);
  let parser = yargs(operands.args)
    .scriptName('roundtrip')
    .strict()
    .demandCommand(1, 'Give a command; see roundtrip --help.')
    .recommendCommands()
    .help()
    .wrap(Math.min(110, process.stdout.columns ?? 100))
    .fail((msg, err) => {
      throw err ?? new RoundtripError(msg);
    });
  for (const command of commands) parser = parser.command(command);
  parser = parser.middleware((argv) => operands.restore(argv as Record<string, unknown>), true);
  parser = parser.middleware((argv) => {
    for (const key of MODEL_OPTIONS) {
      const value = argv[key];
      // formula:TAG names the test-only Inception weights, not a folder.
      if (typeof value === 'string' && value !== '' && !value.startsWith('formula:')) argv[key] = resolveModelPath(value);
    }
  });
  return parser;
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`roundtrip: ${message}\n`);
    process.exitCode = 1;
  });
}
