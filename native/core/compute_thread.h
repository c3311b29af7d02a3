// The one long-lived thread that runs every native call's work.
//
// Why: libuv hands each call to whichever of its workers is free, and glibc gives every thread that allocates its
// own malloc arena, which keeps the freed small blocks of a call (a joint training step's graph holds ~0.5 GB of
// blocks under 1 MiB) for that thread alone. Calls landing on a new worker grew peak RSS by one more such arena
// (measured: +0.5 GB on a joint step's second call); M_ARENA_MAX cannot help, as node's threads made their arenas
// before the addon loads. One compute thread keeps one arena warm, like PyTorch computing on Python's main thread.
// Work runs one call at a time in submission (JS call) order, so collectives issued in ticket order (dist/dist.h)
// stay in order; each call already uses every intra-op thread.
// ROUNDTRIP_MEMORY_POLICY=off leaves work on the libuv workers, as before (for A/B measurements).
#pragma once
#include <exception>
#include <functional>

namespace rt {

// Whether native calls run on the compute thread (false under ROUNDTRIP_MEMORY_POLICY=off).
bool compute_thread_enabled();

// Queues `task` for the compute thread, after every task submitted before it. `done` runs on the compute thread
// once `task` has returned, with what it threw (or null).
void submit_to_compute_thread(std::function<void()> task, std::function<void(std::exception_ptr)> done);

}  // namespace rt
