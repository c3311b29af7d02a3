// TensorHandle: a JS object owning one at::Tensor. Released by dispose() or, as a safety net, by GC.
#pragma once
#include <napi.h>

#include "core/common.h"

namespace rt {

class TensorHandle : public Napi::ObjectWrap<TensorHandle> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  static Napi::Object Wrap(Napi::Env env, at::Tensor t);
  // The tensor behind a JS value; throws a named error for anything else or a disposed handle.
  static at::Tensor& From(const Napi::Value& v, const std::string& what);
  static bool Is(const Napi::Value& v);

  explicit TensorHandle(const Napi::CallbackInfo& info);
  void Finalize(Napi::Env env) override;
  at::Tensor tensor;

 private:
  static Napi::FunctionReference ctor_;
  Napi::Value Shape(const Napi::CallbackInfo& info);
  Napi::Value Dtype(const Napi::CallbackInfo& info);
  Napi::Value Device(const Napi::CallbackInfo& info);
  Napi::Value RequiresGrad(const Napi::CallbackInfo& info);
  void SetRequiresGrad(const Napi::CallbackInfo& info, const Napi::Value& v);
  Napi::Value Disposed(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value ToBuffer(const Napi::CallbackInfo& info);
  Napi::Value To(const Napi::CallbackInfo& info);
  Napi::Value Grad(const Napi::CallbackInfo& info);
  Napi::Value Backward(const Napi::CallbackInfo& info);
  Napi::Value Item(const Napi::CallbackInfo& info);
  Napi::Value Nbytes(const Napi::CallbackInfo& info);
};

// JS object {name: TensorHandle} <-> TensorMap.
TensorMap tensor_map_from_js(const Napi::Value& v, const std::string& what);
Napi::Object tensor_map_to_js(Napi::Env env, const TensorMap& m);

// Live handle count, for leak tests.
int64_t live_tensor_handles();

}  // namespace rt
