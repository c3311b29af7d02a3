// Moving a loaded model to an accelerator: staged through pinned host memory, copies overlapped with reading.
#pragma once
#include "core/model.h"

namespace rt {

// Moves every parameter and buffer of `model` to `device` (dtypes unchanged). On CPU this is Module::to. On CUDA
// the (mapped, pageable) weights go through two pinned staging buffers: while one buffer's host→device copy runs
// asynchronously on a side stream, the next bytes are read from the file into the other, so disk/page-cache reads
// and DMA overlap instead of alternating; one synchronisation at the end. Written against c10's device-generic
// interfaces (VirtualGuardImpl, Event, StreamGuard, pinned TensorOptions), so CPU-only builds compile it without
// any CUDA symbol; the pinned allocator is only reached on a CUDA device. Tied parameters stay tied.
void move_model_to(Model& model, const at::Device& device);

}  // namespace rt
