// CUDA autocast state: set for one native call, and captured/restored where autograd recomputes work on
// another thread (gradient checkpointing). The API moved in libtorch 2.4.
#pragma once
#include <ATen/autocast_mode.h>

#include <c10/util/Optional.h>

namespace rt {

// The calling thread's CUDA autocast dtype, or nullopt when autocast is off.
inline c10::optional<at::ScalarType> current_autocast() {
#if (TORCH_VERSION_MAJOR > 2) || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  if (!at::autocast::is_autocast_enabled(at::kCUDA)) return c10::nullopt;
  return at::autocast::get_autocast_dtype(at::kCUDA);
#else
  if (!at::autocast::is_enabled()) return c10::nullopt;
  return at::autocast::get_autocast_gpu_dtype();
#endif
}

// Enables CUDA autocast to `dtype` (nullopt: leaves the state alone) and restores the previous state.
class AutocastScope {
 public:
  explicit AutocastScope(c10::optional<at::ScalarType> dtype) : on_(dtype.has_value()) {
    if (!on_) return;
    previous_ = current_autocast();
    set(dtype);
  }
  ~AutocastScope() {
    if (!on_) return;
    set(previous_);
    at::autocast::clear_cache();
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  static void set(c10::optional<at::ScalarType> dtype) {
#if (TORCH_VERSION_MAJOR > 2) || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_enabled(at::kCUDA, dtype.has_value());
    if (dtype) at::autocast::set_autocast_dtype(at::kCUDA, *dtype);
#else
    at::autocast::set_enabled(dtype.has_value());
    if (dtype) at::autocast::set_autocast_gpu_dtype(*dtype);
#endif
  }
  bool on_;
  c10::optional<at::ScalarType> previous_;
};

}  // namespace rt
