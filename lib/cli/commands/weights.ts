import type { Argv, CommandModule } from 'yargs';
import { convertCommand, inspectCommand } from './weights-files';
import { listCommand, pullCommand } from './weights-hub';

/** `roundtrip weights <pull|list|inspect|convert>`. */
export const command: CommandModule<{}, any> = {
  command: 'weights <command>',
  describe: 'Fetch, list, inspect and convert model weights',
  builder: (yargs: Argv<{}>) => yargs.command(pullCommand).command(listCommand).command(inspectCommand).command(convertCommand).demandCommand(1),
  handler: () => undefined,
};
