// Host memory behaviour of the addon: glibc malloc tuning and a caching allocator for large CPU tensors.
//
// Why: heavy work runs on libuv worker threads. glibc gives each such thread its own arena, whose heaps are at
// most 64 MB, and serves big blocks with mmap and returns them with munmap on free, so every large activation of
// a UNet forward was faulted in afresh on every call (~400k minor faults per SD v1.4 forward; measured in
// ../shared/notes/TOOLCHAIN.md). PyTorch in Python computes on the main thread (main arena, brk) and sees ~0.
// mallopt alone cannot fix threads that already own an arena, so large ATen blocks come from our own cache.
#pragma once
#include <cstddef>
#include <cstdint>

namespace rt {

// Installs both at addon load: mallopt thresholds (small blocks, oneDNN scratch) and the caching CPU allocator
// (ATen blocks >= kLargeBlock). Idempotent. Throws, naming it, on a bad diagnostic variable.
void install_memory_policy();

// Returns every cached (free) large block to the system and restarts the cache budget from the live bytes. Live tensors are untouched.
// Called between phases whose block sizes differ (e.g. after sampling, before the VAE decode) and on demand.
void release_cached_memory();

struct MemoryStats {
  uint64_t live_bytes = 0;    // large blocks held by tensors now
  uint64_t cached_bytes = 0;  // large blocks free in the cache (resident, ready for reuse)
  uint64_t peak_bytes = 0;    // max of live + cached since start (or the last reset)
  uint64_t peak_live_bytes = 0;  // max of live alone over the same window
  uint64_t hits = 0, misses = 0, evictions = 0;
  uint64_t packed_weight_bytes = 0;  // convolution weights held as oneDNN-packed copies (sd::PackedConv2d)
};
MemoryStats memory_stats();
void reset_peak_memory();
// Bookkeeping of packed weight copies: +bytes when one is made, -bytes when it is dropped.
void note_packed_weight_bytes(int64_t delta);

}  // namespace rt
