// Addon entry point: registers the tensor handle, the model handle and the module functions.
#include <napi.h>

#include "core/memory.h"
#include "core/model.h"
#include "core/napi_util.h"
#include "core/tensor_handle.h"

namespace rt {
void InitOps(Napi::Env env, Napi::Object exports);
void InitModelHandle(Napi::Env env, Napi::Object exports);
void InitOptim(Napi::Env env, Napi::Object exports);
void InitJoint(Napi::Env env, Napi::Object exports);
void InitDist(Napi::Env env, Napi::Object exports);
json model_kinds_json() { return model_kinds(); }

// memoryStats() -> {liveBytes, cachedBytes, peakBytes, peakLiveBytes, hits, misses, evictions, packedWeightBytes} of the large-block cache.
Napi::Value MemoryStatsJs(const Napi::CallbackInfo& info) {
  const MemoryStats s = memory_stats();
  return json_to_js(info.Env(), {{"liveBytes", s.live_bytes},
                                 {"cachedBytes", s.cached_bytes},
                                 {"peakBytes", s.peak_bytes},
                                 {"peakLiveBytes", s.peak_live_bytes},
                                 {"hits", s.hits},
                                 {"misses", s.misses},
                                 {"evictions", s.evictions},
                                 {"packedWeightBytes", s.packed_weight_bytes}});
}
}  // namespace rt

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // A bad diagnostic variable fails the load, naming it, not a later call.
  try {
    // Before any tensor exists: glibc thresholds and the large-block cache (core/memory.h).
    rt::install_memory_policy();
    rt::flush_denormal_enabled();
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
  // Default intra-op threads: all cores (libtorch 1.13 would use half).
  rt::set_default_threads(0);
  at::set_num_threads(rt::default_threads());
  // Full fp32 in cuDNN convolutions, as the reference numbers assume (PyTorch enables TF32 there).
  at::globalContext().setAllowTF32CuDNN(false);
  at::globalContext().setAllowTF32CuBLAS(false);
  rt::TensorHandle::Init(env, exports);
  rt::InitOps(env, exports);
  rt::InitModelHandle(env, exports);
  rt::InitOptim(env, exports);
  rt::InitJoint(env, exports);
  exports.Set("memoryStats", Napi::Function::New(env, rt::MemoryStatsJs));
  exports.Set("releaseMemory", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                rt::release_cached_memory();
                return info.Env().Undefined();
              }));
  exports.Set("resetPeakMemory", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                rt::reset_peak_memory();
                return info.Env().Undefined();
              }));
  rt::InitDist(env, exports);
  return exports;
}

NODE_API_MODULE(roundtrip, Init)
