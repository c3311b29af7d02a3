import * as fs from 'fs';
import type { CommandModule } from 'yargs';
import { native } from '../../runtime/native';

/** BLAS libraries mapped into this process (Linux): what matrix products really run on. */
function loadedBlas(): string[] {
  try {
    const maps = fs.readFileSync('/proc/self/maps', 'utf8');
    const libs = new Set<string>();
    for (const line of maps.split('\n')) {
      const file = line.slice(line.indexOf('/'));
      if (line.includes('/') && /lib(open)?blas|libmkl|libblis/.test(file)) libs.add(fs.realpathSync(file));
    }
    return [...libs];
  } catch {
    return [];
  }
}

/** `roundtrip info`: libtorch version, build flags, devices, threads. */
export function runtimeInfo(): Record<string, unknown> {
  const i = native().info();
  const blas = /BLAS_INFO=([^,\s]+)/.exec(i.config)?.[1] ?? (i.mkl ? 'mkl' : 'unknown');
  return {
    libtorch: i.libtorch,
    cuda: i.cuda,
    cudaDevices: i.cudaDeviceCount,
    cudnn: i.cudnn,
    /** BLAS libtorch was built against, and the libraries actually loaded (Debian swaps them via alternatives). */
    blasBuild: blas,
    blasLoaded: loadedBlas(),
    mkldnn: i.mkldnn,
    openmp: i.openmp,
    threads: i.threads,
    interopThreads: i.interopThreads,
    fusedAttention: i.fusedAttention,
    devices: ['cpu', ...Array.from({ length: i.cudaDeviceCount }, (_, k) => `cuda:${k}`)],
    modelKinds: i.modelKinds,
  };
}

export const command: CommandModule<{}, { json: boolean }> = {
  command: 'info',
  describe: 'Show the libtorch build, devices and threads roundtrip runs with',
  builder: (y) => y.option('json', { type: 'boolean', default: false, describe: 'Print JSON' }) as any,
  handler: (argv) => {
    const info = runtimeInfo();
    if (argv.json) {
      process.stdout.write(JSON.stringify(info, null, 2) + '\n');
      return;
    }
    const width = Math.max(...Object.keys(info).map((k) => k.length));
    for (const [k, v] of Object.entries(info)) process.stdout.write(`${k.padEnd(width)}  ${Array.isArray(v) ? v.join(', ') : String(v)}\n`);
  },
};
