/** Saving native tensors as safetensors (through the one atomic writer). */
import { DType, Tensor } from '../runtime/tensor';
import { writeSafetensors } from './safetensors-writer';

const SAFETENSORS_DTYPE: Record<DType, string> = {
  float64: 'F64', float32: 'F32', float16: 'F16', bfloat16: 'BF16', int64: 'I64', int32: 'I32', int16: 'I16', int8: 'I8', uint8: 'U8', bool: 'BOOL',
};

/** Writes named tensors atomically; each tensor's bytes are copied out only when the writer reaches it. */
export async function saveTensors(file: string, tensors: Record<string, Tensor>, metadata?: Record<string, string>): Promise<void> {
  const entries = Object.entries(tensors).map(([name, t]) => ({
    name,
    dtype: SAFETENSORS_DTYPE[t.dtype],
    shape: t.shape,
    read: () => t.toBuffer(),
  }));
  await writeSafetensors(file, entries, metadata);
}
