/**
 * safetensors reading, backed by the native reader (mmap, zero-copy views where dtype and alignment
 * allow). The whole header is validated before any data is touched; a malformed file is an error that
 * names the file and the fault.
 */
import { RoundtripError } from '../errors';
import { native, SafetensorsHeaderJson } from '../runtime/native';
import { DType, Tensor } from '../runtime/tensor';

export type SafetensorsHeader = SafetensorsHeaderJson;

/** Validates `file` and returns its tensor list and metadata. */
export function readSafetensorsHeader(file: string): SafetensorsHeader {
  try {
    return native().readSafetensorsHeader(file);
  } catch (err) {
    throw new RoundtripError(err instanceof Error ? err.message : String(err));
  }
}

/** Loads tensors (all, or the named ones), optionally cast (floating tensors only) and moved. */
export async function loadSafetensors(
  file: string,
  opts: { names?: string[]; dtype?: DType; device?: string } = {},
): Promise<Record<string, Tensor>> {
  let handles;
  try {
    handles = await native().loadSafetensors(file, opts.names ?? null, JSON.stringify({ dtype: opts.dtype, device: opts.device }));
  } catch (err) {
    throw new RoundtripError(err instanceof Error ? err.message : String(err));
  }
  const out: Record<string, Tensor> = {};
  for (const [k, h] of Object.entries(handles)) out[k] = new Tensor(h);
  return out;
}
