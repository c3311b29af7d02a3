#include "core/common.h"

#include "core/reduced_weights.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

namespace rt {

std::string message_of(const std::exception& e) {
  if (auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

namespace {
struct DT {
  const char* st;
  const char* name;
  at::ScalarType type;
  size_t size;
};
const std::vector<DT>& dtypes() {
  static const std::vector<DT> table = {
      {"F64", "float64", at::kDouble, 8},   {"F32", "float32", at::kFloat, 4},  {"F16", "float16", at::kHalf, 2},
      {"BF16", "bfloat16", at::kBFloat16, 2}, {"I64", "int64", at::kLong, 8},   {"I32", "int32", at::kInt, 4},
      {"I16", "int16", at::kShort, 2},      {"I8", "int8", at::kChar, 1},       {"U8", "uint8", at::kByte, 1},
      {"BOOL", "bool", at::kBool, 1},
  };
  return table;
}
}  // namespace

namespace {
// Valid in the format but without a libtorch type in every supported version: headers validate, loading
// them says which libtorch is needed.
struct FormatOnly {
  const char* st;
  size_t size;
};
const FormatOnly kFormatOnly[] = {{"U16", 2}, {"U32", 4}, {"U64", 8}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
}  // namespace

at::ScalarType dtype_from_safetensors(const std::string& name) {
  for (auto& d : dtypes())
    if (name == d.st) return d.type;
  for (auto& d : kFormatOnly)
    if (name == d.st) throw Error("safetensors dtype '" + name + "' has no tensor type in this libtorch (" + std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "); convert it to F16/F32 first");
  throw Error("unsupported safetensors dtype '" + name + "' (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
}
std::string dtype_to_safetensors(at::ScalarType t) {
  for (auto& d : dtypes())
    if (t == d.type) return d.st;
  throw Error(std::string("dtype ") + c10::toString(t) + " has no safetensors name");
}
bool is_safetensors_dtype(const std::string& name) { return safetensors_dtype_size(name) != 0; }
size_t safetensors_dtype_size(const std::string& name) {
  for (auto& d : dtypes())
    if (name == d.st) return d.size;
  for (auto& d : kFormatOnly)
    if (name == d.st) return d.size;
  return 0;
}
at::ScalarType dtype_from_name(const std::string& name) {
  for (auto& d : dtypes())
    if (name == d.name) return d.type;
  throw Error("unknown dtype '" + name +
              "': expected one of float64, float32, float16, bfloat16, int64, int32, int16, int8, uint8, bool");
}
std::string dtype_name(at::ScalarType t) {
  for (auto& d : dtypes())
    if (t == d.type) return d.name;
  return c10::toString(t);
}

at::Device parse_device(const std::string& spec) {
  if (spec == "cpu") return at::Device(at::kCPU);
  if (spec == "cuda" || spec.rfind("cuda:", 0) == 0) {
    int index = 0;
    if (spec.size() > 5) {
      const std::string digits = spec.substr(5);
      if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos)
        throw Error("device: expected \"cpu\", \"cuda\" or \"cuda:N\", got \"" + spec + "\"");
      index = std::stoi(digits);
    }
    if (!torch::cuda::is_available())
      throw Error("device \"" + spec + "\": this roundtrip build has no usable CUDA (libtorch " +
                  std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) +
                  (torch::cuda::device_count() == 0 ? ", no CUDA device or CPU-only build" : "") +
                  "); rebuild with LIBTORCH pointing at a CUDA libtorch, or use --device cpu");
    if (index >= static_cast<int>(torch::cuda::device_count()))
      throw Error("device \"" + spec + "\": only " + std::to_string(torch::cuda::device_count()) + " CUDA device(s) present");
    return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  throw Error("device: expected \"cpu\", \"cuda\" or \"cuda:N\", got \"" + spec + "\"");
}

std::string device_name(const at::Device& d) {
  if (d.is_cpu()) return "cpu";
  return "cuda:" + std::to_string(d.has_index() ? d.index() : 0);
}

namespace {
std::atomic<int> g_threads{0};
std::atomic<bool> g_grad{true};
thread_local int t_applied = -1;
}  // namespace

void set_default_threads(int n) { g_threads = n; }
int default_threads() {
  int n = g_threads.load();
  if (n <= 0) n = std::max(1u, std::thread::hardware_concurrency());
  return n;
}
std::string env_choice(const char* name, const std::vector<std::string>& allowed) {
  const char* e = std::getenv(name);
  if (!e) return allowed.front();
  for (const auto& a : allowed)
    if (a == e) return a;
  std::string choices;
  for (size_t i = 0; i < allowed.size(); ++i)
    choices += (i == 0 ? "" : i + 1 == allowed.size() ? " or " : ", ") + allowed[i];
  throw Error(std::string(name) + ": expected " + choices + ", got '" + e + "'");
}

bool flush_denormal_enabled() {
  static const bool on = env_choice("ROUNDTRIP_FLUSH_DENORMAL", {"on", "off"}) == "on";
  return on;
}

#if defined(__x86_64__) || defined(_M_X64)
namespace {
constexpr unsigned kFtzDaz = 0x8040;  // MXCSR flush-to-zero (bit 15) and denormals-are-zero (bit 6)
}

FlushDenormalScope::FlushDenormalScope() : previous_(_mm_getcsr()) {
  if (!flush_denormal_enabled()) return;
  _mm_setcsr(previous_ | kFtzDaz);
  // Threads libtorch computes on besides this one: this thread's OpenMP team (its threads run nothing but
  // libtorch's parallel regions, so they keep the flags; threads created later copy them from the flagged master)
  // and, once per process, OpenBLAS's workers, which OpenBLAS made when libtorch loaded it. Those are shut down
  // (`blas_thread_shutdown_`, what OpenBLAS's own fork handler calls) and re-created by OpenBLAS on its next
  // threaded product, from a thread inside such a scope, whose flags they copy.
  thread_local bool team_flagged = false;
  if (!team_flagged && !at::in_parallel_region()) {
    team_flagged = true;
    at::parallel_for(0, at::get_num_threads(), 1, [](int64_t, int64_t) { _mm_setcsr(_mm_getcsr() | kFtzDaz); });
    static std::once_flag blas_restart;
    std::call_once(blas_restart, [] {
      using Shutdown = int (*)();
      if (auto shutdown = reinterpret_cast<Shutdown>(dlsym(RTLD_DEFAULT, "blas_thread_shutdown_"))) shutdown();
    });
  }
}

FlushDenormalScope::~FlushDenormalScope() { _mm_setcsr(previous_); }
#endif

void apply_threads() {
  const int n = default_threads();
  if (t_applied != n) {
    at::set_num_threads(n);
    t_applied = n;
  }
  apply_reduced_weight_hook();  // every native worker passes here
}
bool js_grad_enabled() { return g_grad.load(); }
void set_js_grad_enabled(bool on) {
  g_grad = on;
  at::GradMode::set_enabled(on);  // sync ops run on the JS thread
}

const at::Tensor& need(const TensorMap& m, const std::string& name, const std::string& where) {
  auto it = m.find(name);
  if (it == m.end() || !it->second.defined()) throw Error(where + ": missing input tensor '" + name + "'");
  return it->second;
}

std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace rt
