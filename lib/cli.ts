import yargs from 'yargs';
import { commands } from './commands';
import { RoundtripError } from './errors';

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
  await parser.parseAsync();
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`roundtrip: ${message}\n`);
    process.exitCode = 1;
  });
}
