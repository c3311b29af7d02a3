#include "core/tensor_handle.h"

#include <atomic>

#include "core/napi_util.h"

namespace rt {

Napi::FunctionReference TensorHandle::ctor_;
namespace {
std::atomic<int64_t> g_live{0};
// Native memory held by handles, reported to V8 so GC pressure reflects big tensors.
int64_t external_bytes(const at::Tensor& t) {
  return t.defined() && t.device().is_cpu() ? static_cast<int64_t>(t.numel() * t.element_size()) : 0;
}
}  // namespace

int64_t live_tensor_handles() { return g_live.load(); }

void TensorHandle::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function f = DefineClass(
      env, "TensorHandle",
      {
          InstanceAccessor<&TensorHandle::Shape>("shape"),
          InstanceAccessor<&TensorHandle::Dtype>("dtype"),
          InstanceAccessor<&TensorHandle::Device>("device"),
          InstanceAccessor<&TensorHandle::RequiresGrad, &TensorHandle::SetRequiresGrad>("requiresGrad"),
          InstanceAccessor<&TensorHandle::Disposed>("disposed"),
          InstanceAccessor<&TensorHandle::Nbytes>("nbytes"),
          InstanceMethod<&TensorHandle::Dispose>("dispose"),
          InstanceMethod<&TensorHandle::ToBuffer>("toBuffer"),
          InstanceMethod<&TensorHandle::To>("to"),
          InstanceMethod<&TensorHandle::Grad>("grad"),
          InstanceMethod<&TensorHandle::Backward>("backward"),
          InstanceMethod<&TensorHandle::Item>("item"),
      });
  ctor_ = Napi::Persistent(f);
  ctor_.SuppressDestruct();
  exports.Set("TensorHandle", f);
}

TensorHandle::TensorHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorHandle>(info) {}

void TensorHandle::Finalize(Napi::Env env) {
  if (tensor.defined()) {
    Napi::MemoryManagement::AdjustExternalMemory(env, -external_bytes(tensor));
    tensor = at::Tensor();
    --g_live;
  }
}

Napi::Object TensorHandle::Wrap(Napi::Env env, at::Tensor t) {
  Napi::Object o = ctor_.New({});
  auto* h = Napi::ObjectWrap<TensorHandle>::Unwrap(o);
  h->tensor = std::move(t);
  ++g_live;
  // Finalizer (safety net): ObjectWrap's destructor releases `tensor`; tell V8 how big it is.
  Napi::MemoryManagement::AdjustExternalMemory(env, external_bytes(h->tensor));
  return o;
}

bool TensorHandle::Is(const Napi::Value& v) { return v.IsObject() && v.As<Napi::Object>().InstanceOf(ctor_.Value()); }

at::Tensor& TensorHandle::From(const Napi::Value& v, const std::string& what) {
  if (!Is(v)) throw Napi::TypeError::New(v.Env(), what + ": expected a Tensor");
  auto* h = Napi::ObjectWrap<TensorHandle>::Unwrap(v.As<Napi::Object>());
  if (!h->tensor.defined()) throw Napi::Error::New(v.Env(), what + ": the tensor was disposed");
  return h->tensor;
}

Napi::Value TensorHandle::Shape(const Napi::CallbackInfo& info) {
  auto& t = From(Value(), "shape");
  auto a = Napi::Array::New(info.Env(), t.dim());
  for (int64_t i = 0; i < t.dim(); ++i) a.Set(static_cast<uint32_t>(i), Napi::Number::New(info.Env(), static_cast<double>(t.size(i))));
  return a;
}
Napi::Value TensorHandle::Dtype(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), dtype_name(From(Value(), "dtype").scalar_type()));
}
Napi::Value TensorHandle::Device(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), device_name(From(Value(), "device").device()));
}
Napi::Value TensorHandle::RequiresGrad(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), From(Value(), "requiresGrad").requires_grad());
}
void TensorHandle::SetRequiresGrad(const Napi::CallbackInfo& info, const Napi::Value& v) {
  if (!v.IsBoolean()) throw Napi::TypeError::New(info.Env(), "requiresGrad: expected a boolean");
  guarded(info.Env(), [&] { From(Value(), "requiresGrad").set_requires_grad(v.As<Napi::Boolean>().Value()); });
}
Napi::Value TensorHandle::Disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !tensor.defined()); }
Napi::Value TensorHandle::Nbytes(const Napi::CallbackInfo& info) {
  auto& t = From(Value(), "nbytes");
  return Napi::Number::New(info.Env(), static_cast<double>(t.numel() * t.element_size()));
}
Napi::Value TensorHandle::Dispose(const Napi::CallbackInfo& info) {
  if (tensor.defined()) {
    Napi::MemoryManagement::AdjustExternalMemory(info.Env(), -external_bytes(tensor));
    tensor = at::Tensor();
    --g_live;
  }
  return info.Env().Undefined();
}

// Copies the data into a new Buffer: contiguous, CPU, little-endian (the host order here).
Napi::Value TensorHandle::ToBuffer(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    at::Tensor t = From(Value(), "toBuffer").detach().to(at::kCPU).contiguous();
    const size_t n = static_cast<size_t>(t.numel() * t.element_size());
    auto buf = Napi::Buffer<uint8_t>::New(info.Env(), n);
    if (n) std::memcpy(buf.Data(), t.data_ptr(), n);
    return buf;
  });
}

// to(device?, dtype?) -> new handle (shares storage when nothing changes, like torch).
Napi::Value TensorHandle::To(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    at::Tensor t = From(Value(), "to");
    if (info.Length() > 0 && !info[0].IsUndefined() && !info[0].IsNull()) t = t.to(parse_device(arg_string(info, 0, "device")));
    if (info.Length() > 1 && !info[1].IsUndefined() && !info[1].IsNull()) t = t.to(dtype_from_name(arg_string(info, 1, "dtype")));
    return Wrap(info.Env(), t);
  });
}

Napi::Value TensorHandle::Grad(const Napi::CallbackInfo& info) {
  at::Tensor g = From(Value(), "grad").grad();
  if (!g.defined()) return info.Env().Null();
  return Wrap(info.Env(), g);
}

// backward(gradient?) -> Promise<void>; runs off the JS thread.
Napi::Value TensorHandle::Backward(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    at::Tensor t = From(Value(), "backward");
    at::Tensor g;
    if (info.Length() > 0 && !info[0].IsUndefined() && !info[0].IsNull()) g = From(info[0], "backward(gradient)");
    if (!t.requires_grad()) throw Error("backward: the tensor does not require grad (no trainable input reached it)");
    if (!g.defined() && t.numel() != 1) throw Error("backward: a gradient argument is needed for a non-scalar tensor of shape " + shape_str(t.sizes()));
    return run_async(info.Env(), [t, g]() -> Finisher {
      t.backward(g);
      return nullptr;
    });
  });
}

Napi::Value TensorHandle::Item(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    at::Tensor t = From(Value(), "item");
    if (t.numel() != 1) throw Error("item: expected a tensor with one element, got shape " + shape_str(t.sizes()));
    return Napi::Number::New(info.Env(), t.item<double>());
  });
}

TensorMap tensor_map_from_js(const Napi::Value& v, const std::string& what) {
  TensorMap m;
  if (v.IsUndefined() || v.IsNull()) return m;
  if (!v.IsObject()) throw Napi::TypeError::New(v.Env(), what + ": expected an object of tensors");
  auto o = v.As<Napi::Object>();
  auto keys = o.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    std::string k = keys.Get(i).As<Napi::String>().Utf8Value();
    Napi::Value x = o.Get(k);
    if (x.IsUndefined() || x.IsNull()) continue;
    m[k] = TensorHandle::From(x, what + "." + k);
  }
  return m;
}

Napi::Object tensor_map_to_js(Napi::Env env, const TensorMap& m) {
  auto o = Napi::Object::New(env);
  for (auto& [k, t] : m)
    if (t.defined()) o.Set(k, TensorHandle::Wrap(env, t));
  return o;
}

}  // namespace rt
