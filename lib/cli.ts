import yargs from 'yargs';
import { commands } from './commands';
import { RoundtripError } from './errors';
import { resolveModelPath } from './hub/resolve';

/** Options that name a model: each takes a folder or an alias pulled with `roundtrip weights pull`. */
const MODEL_OPTIONS = ['model', 'blip', 'sd', 'clip', 'dino', 'sbert', 'inception'] as const;

/** Entry point of the `roundtrip` command. */
export async function main(argv: string[]): Promise<void> {
  let parser = yargs(argv)
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
  parser = parser.middleware((argv) => {
    for (const key of MODEL_OPTIONS) {
      const value = argv[key];
      // formula:TAG names the test-only Inception weights, not a folder.
      if (typeof value === 'string' && value !== '' && !value.startsWith('formula:')) argv[key] = resolveModelPath(value);
    }
  });
  await parser.parseAsync();
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`roundtrip: ${message}\n`);
    process.exitCode = 1;
  });
}
