/**
 * `roundtrip launch --nproc N [--nnodes M --node-rank R --master-addr HOST --master-port P] -- COMMAND…`:
 * runs N processes of a roundtrip command (or any executable) as ranks of one distributed job, like
 * torchrun (see lib/runtime/distributed/launch.ts). Exits with the failing rank's status.
 */
import type { CommandModule } from 'yargs';
import { launch } from '../../runtime/distributed/launch';

export const command: CommandModule<{}, any> = {
  // The CLI turns the words after `--` into operands (lib/cli/index.ts splitOperands): they arrive as `command`.
  command: 'launch [command..]',
  describe: 'Run a command as N data-parallel processes (torchrun-style: RANK, WORLD_SIZE, MASTER_ADDR, …)',
  builder: (y) =>
    y
      .usage('roundtrip launch --nproc N [--nnodes M --node-rank R --master-addr HOST --master-port P] -- <roundtrip command and flags | executable and args>')
      .positional('command', { type: 'string', array: true, describe: 'After --: a roundtrip command and its flags, or an executable and its arguments' })
      .option('nproc', { type: 'number', demandOption: true, describe: 'Processes on this node' })
      .option('nnodes', { type: 'number', default: 1, describe: 'Nodes in the job (run one launcher per node)' })
      .option('node-rank', { type: 'number', default: 0, describe: 'This node\'s index (0 hosts the master)' })
      .option('master-addr', { type: 'string', default: '127.0.0.1', describe: 'Address of node 0, reachable from every node' })
      .option('master-port', { type: 'number', default: 29500, describe: 'Rendezvous port on node 0' })
      .option('threads', { type: 'number', describe: 'Intra-op threads per process (default: cores / nproc)' })
      .option('grace', { type: 'number', default: 10, describe: 'Seconds between SIGTERM and SIGKILL when a rank fails' }),
  handler: async (argv) => {
    const { commands } = await import('./index');
    const subcommands = commands.map((c) => String(c.command).split(' ')[0]);
    const rest = ((argv.command as unknown[]) ?? []).map(String);
    const r = await launch({
      nproc: argv.nproc,
      nnodes: argv.nnodes,
      nodeRank: argv.nodeRank,
      masterAddr: argv.masterAddr,
      masterPort: argv.masterPort,
      threads: argv.threads,
      graceSeconds: argv.grace,
      command: rest,
      subcommands,
    });
    process.exitCode = r.exitCode;
  },
};
