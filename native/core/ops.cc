// Module-level functions: tensor creation and the few tensor ops orchestration needs, safetensors,
// runtime settings. Ops are synchronous: each is one small libtorch call.
#include <napi.h>

#include "core/napi_util.h"
#include "core/safetensors.h"
#include "core/tensor_handle.h"
#include "nn/layers.h"

namespace rt {

json model_kinds_json();

namespace {

// tensorFromBuffer(buffer, dtype, shape) -> Tensor (copies the bytes)
Napi::Value TensorFromBuffer(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    if (!info[0].IsTypedArray() && !info[0].IsBuffer() && !info[0].IsArrayBuffer())
      throw Napi::TypeError::New(info.Env(), "tensorFromBuffer: expected a Buffer or typed array");
    const uint8_t* data;
    size_t bytes;
    if (info[0].IsArrayBuffer()) {
      auto ab = info[0].As<Napi::ArrayBuffer>();
      data = static_cast<const uint8_t*>(ab.Data());
      bytes = ab.ByteLength();
    } else {
      auto ta = info[0].As<Napi::TypedArray>();
      data = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
      bytes = ta.ByteLength();
    }
    at::ScalarType dtype = dtype_from_name(arg_string(info, 1, "dtype"));
    std::vector<int64_t> shape = arg_shape(info, 2, "shape");
    int64_t numel = 1;
    for (auto s : shape) numel *= s;
    const size_t want = static_cast<size_t>(numel) * c10::elementSize(dtype);
    if (bytes != want)
      throw Error("tensorFromBuffer: " + dtype_name(dtype) + " " + shape_str(shape) + " needs " + std::to_string(want) +
                  " bytes, the buffer holds " + std::to_string(bytes));
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype));
    if (bytes) std::memcpy(t.data_ptr(), data, bytes);
    return TensorHandle::Wrap(info.Env(), t);
  });
}

at::Tensor T(const Napi::CallbackInfo& info, const Napi::Array& ts, uint32_t i, const std::string& op) {
  if (i >= ts.Length()) throw Error(op + ": expected at least " + std::to_string(i + 1) + " tensor argument(s)");
  return TensorHandle::From(ts.Get(i), op + " argument " + std::to_string(i));
}

std::vector<int64_t> dims_of(const json& a, const char* key) {
  std::vector<int64_t> d;
  if (a.contains(key)) {
    if (a[key].is_array())
      d = a[key].get<std::vector<int64_t>>();
    else
      d.push_back(a[key].get<int64_t>());
  }
  return d;
}

// op(name, tensors[], argsJson) -> Tensor | number
Napi::Value Op(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    FlushDenormalScope float_mode;  // restored before V8 computes again on this thread
    const std::string name = arg_string(info, 0, "op");
    if (!info[1].IsArray()) throw Napi::TypeError::New(info.Env(), name + ": expected an array of tensors");
    Napi::Array ts = info[1].As<Napi::Array>();
    json a = arg_json(info, 2, "op arguments");
    auto t = [&](uint32_t i) { return T(info, ts, i, name); };
    auto binary = [&](auto f) -> at::Tensor {
      if (a.contains("scalar")) return f(t(0), at::scalar_tensor(a["scalar"].get<double>(), t(0).options()));
      return f(t(0), t(1));
    };
    at::Tensor r;
    if (name == "add") r = binary([](const at::Tensor& x, const at::Tensor& y) { return x + y; });
    else if (name == "sub") r = binary([](const at::Tensor& x, const at::Tensor& y) { return x - y; });
    else if (name == "mul") r = binary([](const at::Tensor& x, const at::Tensor& y) { return x * y; });
    else if (name == "div") r = binary([](const at::Tensor& x, const at::Tensor& y) { return x / y; });
    else if (name == "neg") r = -t(0);
    else if (name == "exp") r = t(0).exp();
    else if (name == "log") r = t(0).log();
    else if (name == "sqrt") r = t(0).sqrt();
    else if (name == "abs") r = t(0).abs();
    else if (name == "pow") r = t(0).pow(a.at("exponent").get<double>());
    else if (name == "sum" || name == "mean") {
      auto d = dims_of(a, "dim");
      bool keep = opt<bool>(a, "keepdim", false);
      if (name == "sum") r = d.empty() ? t(0).sum() : t(0).sum(d, keep);
      else r = d.empty() ? t(0).mean() : t(0).mean(d, keep);
    } else if (name == "stack" || name == "cat") {
      std::vector<at::Tensor> v;
      for (uint32_t i = 0; i < ts.Length(); ++i) v.push_back(t(i));
      int64_t dim = opt<int64_t>(a, "dim", 0);
      r = name == "stack" ? at::stack(v, dim) : at::cat(v, dim);
    } else if (name == "reshape") r = t(0).reshape(a.at("shape").get<std::vector<int64_t>>());
    else if (name == "narrow") r = t(0).narrow(a.at("dim").get<int64_t>(), a.at("start").get<int64_t>(), a.at("length").get<int64_t>());
    else if (name == "select") r = t(0).select(a.at("dim").get<int64_t>(), a.at("index").get<int64_t>());
    else if (name == "indexSelect") r = t(0).index_select(a.at("dim").get<int64_t>(), t(1));
    else if (name == "permute") r = t(0).permute(a.at("dims").get<std::vector<int64_t>>());
    else if (name == "argmax") r = t(0).argmax(opt<int64_t>(a, "dim", -1), opt<bool>(a, "keepdim", false));
    else if (name == "softmax") r = t(0).softmax(opt<int64_t>(a, "dim", -1));
    else if (name == "logSoftmax") r = t(0).log_softmax(opt<int64_t>(a, "dim", -1));
    else if (name == "detach") r = t(0).detach();
    else if (name == "clone") r = t(0).clone();
    else if (name == "contiguous") r = t(0).contiguous();
    else if (name == "cast") r = t(0).to(dtype_from_name(a.at("dtype").get<std::string>()));
    else if (name == "zeros") r = at::zeros(a.at("shape").get<std::vector<int64_t>>(), at::TensorOptions().dtype(dtype_from_name(opt<std::string>(a, "dtype", "float32"))).device(parse_device(opt<std::string>(a, "device", "cpu"))));
    else if (name == "full") r = at::full(a.at("shape").get<std::vector<int64_t>>(), a.at("value").get<double>(), at::TensorOptions().dtype(dtype_from_name(opt<std::string>(a, "dtype", "float32"))).device(parse_device(opt<std::string>(a, "device", "cpu"))));
    else if (name == "randn" || name == "rand") {
      // Seeded, device-independent draws: generated on the CPU then moved.
      auto gen = at::make_generator<at::CPUGeneratorImpl>(a.at("seed").get<uint64_t>());
      auto shape = a.at("shape").get<std::vector<int64_t>>();
      r = name == "randn" ? at::randn(shape, gen) : at::rand(shape, gen);
      r = r.to(parse_device(opt<std::string>(a, "device", "cpu")));
    } else if (name == "mse") r = at::mse_loss(t(0), t(1));
    else if (name == "attention") r = nn::attention(t(0), t(1), t(2), at::Tensor(), a.at("scale").get<double>());  // q, k, v: [B, H, T, D]
    else if (name == "cosineDistance") {
      // 1 - cos(x, y) along the last dim (no epsilon tricks beyond torch's own).
      r = 1 - at::cosine_similarity(t(0), t(1), -1);
    } else if (name == "gradNorm") {
      // Global L2 norm of several tensors' gradients (missing grads count as zero).
      double total = 0;
      for (uint32_t i = 0; i < ts.Length(); ++i) {
        auto g = t(i).grad();
        if (g.defined()) total += g.detach().pow(2).sum().item<double>();
      }
      return Napi::Number::New(info.Env(), std::sqrt(total));
    } else if (name == "compare") {
      // Elementwise |x - ref| <= atol + rtol |ref|; returns stats for conformance reports.
      at::Tensor x = t(0).detach().to(at::kCPU).to(at::kDouble), ref = t(1).detach().to(at::kCPU).to(at::kDouble);
      if (x.sizes() != ref.sizes()) throw Error("compare: shape " + shape_str(x.sizes()) + " vs expected " + shape_str(ref.sizes()));
      double atol = opt<double>(a, "atol", 0), rtol = opt<double>(a, "rtol", 0);
      at::Tensor diff = (x - ref).abs();
      at::Tensor bad = diff > (atol + rtol * ref.abs());
      bad = bad | (x.isnan() != ref.isnan());
      json out = {{"maxAbs", x.numel() ? diff.nan_to_num(0).max().item<double>() : 0.0},
                  {"maxRel", x.numel() ? (diff / ref.abs().clamp_min(1e-30)).nan_to_num(0).max().item<double>() : 0.0},
                  {"bad", bad.sum().item<int64_t>()},
                  {"numel", x.numel()}};
      return json_to_js(info.Env(), out);
    } else
      throw Error("unknown tensor op '" + name + "'");
    return TensorHandle::Wrap(info.Env(), r);
  });
}

Napi::Value ReadSafetensorsHeader(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto f = SafetensorsFile::open(arg_string(info, 0, "file"));
    return json_to_js(info.Env(), f->header_json());
  });
}

// loadSafetensors(file, names?, optionsJson{dtype, device}) -> Promise<{name: Tensor}>
Napi::Value LoadSafetensors(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    std::string path = arg_string(info, 0, "file");
    std::vector<std::string> names;
    bool all = info.Length() < 2 || info[1].IsUndefined() || info[1].IsNull();
    if (!all) {
      if (!info[1].IsArray()) throw Napi::TypeError::New(info.Env(), "loadSafetensors: names must be an array");
      auto a = info[1].As<Napi::Array>();
      for (uint32_t i = 0; i < a.Length(); ++i) names.push_back(a.Get(i).As<Napi::String>().Utf8Value());
    }
    json o = arg_json(info, 2, "options");
    return run_async(info.Env(), [path, names, all, o]() -> Finisher {
      auto f = SafetensorsFile::open(path);
      std::vector<std::string> want = names;
      if (all)
        for (auto& e : f->entries()) want.push_back(e.name);
      TensorMap out;
      std::string dtype = opt<std::string>(o, "dtype", "");
      std::string dev = opt<std::string>(o, "device", "cpu");
      at::Device device = parse_device(dev);
      for (auto& n : want) {
        at::Tensor t = f->tensor(n);
        if (!dtype.empty() && t.is_floating_point()) t = t.to(dtype_from_name(dtype));
        if (!device.is_cpu()) t = t.to(device);
        out[n] = t;
      }
      return [out](Napi::Env env) -> Napi::Value { return tensor_map_to_js(env, out); };
    });
  });
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  json j = {
      {"libtorch", std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                       std::to_string(TORCH_VERSION_PATCH)},
      {"cuda", torch::cuda::is_available()},
      {"cudaDeviceCount", torch::cuda::device_count()},
      {"cudnn", torch::cuda::cudnn_is_available()},
      {"mkldnn", at::hasMKLDNN()},
      {"mkl", at::hasMKL()},
      {"openmp", at::hasOpenMP()},
      {"threads", default_threads()},
      {"interopThreads", at::get_num_interop_threads()},
      {"fusedAttention", TORCH_VERSION_MAJOR >= 2},
      {"config", at::show_config()},
      {"modelKinds", model_kinds_json()},
  };
  return json_to_js(info.Env(), j);
}

}  // namespace

void InitOps(Napi::Env env, Napi::Object exports) {
  exports.Set("tensorFromBuffer", Napi::Function::New(env, TensorFromBuffer));
  exports.Set("op", Napi::Function::New(env, Op));
  exports.Set("readSafetensorsHeader", Napi::Function::New(env, ReadSafetensorsHeader));
  exports.Set("loadSafetensors", Napi::Function::New(env, LoadSafetensors));
  exports.Set("info", Napi::Function::New(env, Info));
  exports.Set("setNumThreads", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                double n = arg_number(info, 0, "threads");
                if (n < 1 || n != static_cast<int>(n)) throw Napi::RangeError::New(info.Env(), "threads: expected an integer >= 1");
                set_default_threads(static_cast<int>(n));
                at::set_num_threads(static_cast<int>(n));
                return info.Env().Undefined();
              }));
  exports.Set("getNumThreads", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                return Napi::Number::New(info.Env(), default_threads());
              }));
  exports.Set("setGradEnabled", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                set_js_grad_enabled(arg_bool(info, 0, "enabled"));
                return info.Env().Undefined();
              }));
  exports.Set("manualSeed", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                torch::manual_seed(static_cast<uint64_t>(arg_number(info, 0, "seed")));
                return info.Env().Undefined();
              }));
  exports.Set("liveTensors", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                return Napi::Number::New(info.Env(), static_cast<double>(live_tensor_handles()));
              }));
}

}  // namespace rt
