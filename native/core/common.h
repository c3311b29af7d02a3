// Shared helpers of the native core: errors, dtypes, devices, threads, grad mode.
#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace rt {

using json = nlohmann::json;
using TensorMap = std::map<std::string, at::Tensor>;

// A user-facing error: its message is shown as is in the JS Error.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Message of any exception without libtorch's C++ backtrace.
std::string message_of(const std::exception& e);

// Safetensors dtype names ("F32", "BF16", ...) <-> torch dtypes.
at::ScalarType dtype_from_safetensors(const std::string& name);
std::string dtype_to_safetensors(at::ScalarType t);
bool is_safetensors_dtype(const std::string& name);
size_t safetensors_dtype_size(const std::string& name);
// JS-facing names ("float32", "int64", ...) <-> torch dtypes.
at::ScalarType dtype_from_name(const std::string& name);
std::string dtype_name(at::ScalarType t);

// "cpu", "cuda", "cuda:N". CUDA on a CPU-only libtorch is a clear error.
at::Device parse_device(const std::string& spec);
std::string device_name(const at::Device& d);

// Intra-op threads for native work (libtorch sets them per calling thread).
void set_default_threads(int n);
int default_threads();
// A diagnostic ROUNDTRIP_* variable: its value if it is one of `allowed`, the first of them if it is unset;
// any other value throws, naming the variable and the choices.
std::string env_choice(const char* name, const std::vector<std::string>& allowed);
// Applies the configured thread count to the calling (worker) thread.
void apply_threads();
// While alive, denormal floats are flushed to zero (x86 FTZ + DAZ) on this thread; its previous mode is back after,
// so JavaScript's own arithmetic on the same thread never sees it. Every native entry point that computes opens
// one. Why: softmax probabilities and score gradients below 1.2e-38 made BLIP's attention products 20-70× slower
// (a microcode assist per denormal operand). ROUNDTRIP_FLUSH_DENORMAL=off keeps IEEE denormals (diagnostic).
bool flush_denormal_enabled();
class FlushDenormalScope {
 public:
#if defined(__x86_64__) || defined(_M_X64)
  FlushDenormalScope();
  ~FlushDenormalScope();

 private:
  unsigned previous_;
#else
  FlushDenormalScope() {}  // other CPUs: IEEE denormals
#endif
  FlushDenormalScope(const FlushDenormalScope&) = delete;
  FlushDenormalScope& operator=(const FlushDenormalScope&) = delete;
};

// Grad mode as the JS side last set it; captured when a native call starts.
bool js_grad_enabled();
void set_js_grad_enabled(bool on);

// Reads a value from a JSON options object with a default.
template <typename T>
T opt(const json& o, const char* key, T fallback) {
  if (!o.is_object()) return fallback;
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const std::exception&) {
    throw Error(std::string("option '") + key + "': wrong type (" + it->dump() + ")");
  }
}

// Looks up a required input tensor by name.
const at::Tensor& need(const TensorMap& m, const std::string& name, const std::string& where);

// "[2, 3, 4]"
std::string shape_str(at::IntArrayRef s);

}  // namespace rt
