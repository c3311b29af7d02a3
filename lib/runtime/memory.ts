/**
 * Host memory of the process: RSS and its peak (resettable on Linux), minor page faults, and the native
 * addon's large-block cache (native/core/memory.h), with a way to hand cached blocks back to the system.
 */
import * as fs from 'fs';
import { native } from './native';

export interface MemorySnapshot {
  /** Resident set now, bytes. */
  rss: number;
  /** Peak resident set since process start or the last `resetPeakRss()`, bytes. */
  peakRss: number;
  /** Minor page faults since process start. */
  minorFaults: number;
  /** Native large blocks held by tensors / cached for reuse, bytes. */
  nativeLiveBytes: number;
  nativeCachedBytes: number;
  /** Convolution weights held as oneDNN-packed copies (one per weight, beside the plain one under autograd), bytes. */
  nativePackedWeightBytes: number;
}

function statusKb(field: string): number | undefined {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** RSS, peak RSS (VmHWM where /proc has it, else the process-lifetime maximum), faults, native cache. */
export function memorySnapshot(): MemorySnapshot {
  const usage = process.resourceUsage();
  const stats = native().memoryStats();
  return {
    rss: process.memoryUsage.rss(),
    peakRss: statusKb('VmHWM') ?? usage.maxRSS * 1024,
    minorFaults: usage.minorPageFault,
    nativeLiveBytes: stats.liveBytes,
    nativeCachedBytes: stats.cachedBytes,
    nativePackedWeightBytes: stats.packedWeightBytes,
  };
}

/** Starts a new peak-RSS window (Linux: writes 5 to /proc/self/clear_refs); false where unsupported. */
export function resetPeakRss(): boolean {
  native().resetPeakMemory();
  try {
    fs.writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}

/** Hands the native cache's free blocks (and glibc's free heap top) back to the system. */
export function releaseMemory(): void {
  native().releaseMemory();
}
