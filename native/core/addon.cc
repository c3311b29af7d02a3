// Addon entry point: registers the tensor handle, the model handle and the module functions.
#include <napi.h>

#include "core/model.h"
#include "core/tensor_handle.h"

namespace rt {
void InitOps(Napi::Env env, Napi::Object exports);
void InitModelHandle(Napi::Env env, Napi::Object exports);
void InitOptim(Napi::Env env, Napi::Object exports);
void InitJoint(Napi::Env env, Napi::Object exports);
void InitDist(Napi::Env env, Napi::Object exports);
json model_kinds_json() { return model_kinds(); }
}  // namespace rt

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
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
  rt::InitDist(env, exports);
  return exports;
}

NODE_API_MODULE(roundtrip, Init)
