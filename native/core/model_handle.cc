// ModelHandle: the JS face of a native Model. Every heavy method returns a Promise and runs off-thread.
#include <napi.h>

#include <regex>

#include "core/autocast.h"
#include "core/model.h"
#include "core/napi_util.h"
#include "core/tensor_handle.h"

namespace rt {

namespace {
// options.autocast: "bf16" | "fp16" | "off"/absent. CUDA only: CPU bf16 runs 10-14x slower than fp32 here.
c10::optional<at::ScalarType> autocast_dtype(const json& options, const at::Device& device) {
  const std::string mode = opt<std::string>(options, "autocast", "off");
  if (mode == "off" || mode == "fp32") return c10::nullopt;
  if (mode != "bf16" && mode != "fp16") throw Error("option autocast: expected \"bf16\", \"fp16\" or \"off\", got \"" + mode + "\"");
  if (!device.is_cuda())
    throw Error("option autocast \"" + mode + "\" needs a model on CUDA (this one is on " + device_name(device) + "; CPU runs in fp32)");
  return mode == "bf16" ? at::kBFloat16 : at::kHalf;
}
}  // namespace

class ModelHandle : public Napi::ObjectWrap<ModelHandle> {
 public:
  static Napi::FunctionReference ctor;
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(env, "ModelHandle",
                                   {
                                       InstanceAccessor<&ModelHandle::Kind>("kind"),
                                       InstanceAccessor<&ModelHandle::DeviceName>("device"),
                                       InstanceMethod<&ModelHandle::Call>("call"),
                                       InstanceMethod<&ModelHandle::LoadWeights>("loadWeights"),
                                       InstanceMethod<&ModelHandle::Parameters>("parameters"),
                                       InstanceMethod<&ModelHandle::SetTrainable>("setTrainable"),
                                       InstanceMethod<&ModelHandle::Tensors>("tensors"),
                                       InstanceMethod<&ModelHandle::To>("to"),
                                       InstanceMethod<&ModelHandle::Train>("train"),
                                       InstanceMethod<&ModelHandle::SetChannelsLast>("setChannelsLast"),
                                       InstanceMethod<&ModelHandle::Dispose>("dispose"),
                                   });
    ctor = Napi::Persistent(f);
    ctor.SuppressDestruct();
    exports.Set("ModelHandle", f);
  }
  explicit ModelHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ModelHandle>(info) {}

  std::shared_ptr<Model> model;
  std::string kind;

  std::shared_ptr<Model> get(Napi::Env env) {
    if (!model) throw Napi::Error::New(env, "model '" + kind + "' was disposed");
    return model;
  }

 private:
  Napi::Value Kind(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), kind); }
  Napi::Value DeviceName(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), device_name(get(info.Env())->device()));
  }

  // call(method, inputs, optionsJson) -> Promise<{name: Tensor}>
  Napi::Value Call(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      auto m = get(info.Env());
      std::string method = arg_string(info, 0, "method");
      TensorMap in = tensor_map_from_js(info[1], kind + "." + method + " inputs");
      json options = arg_json(info, 2, "options");
      auto autocast = autocast_dtype(options, m->device());
      return run_async(info.Env(), [m, method, in, options, autocast]() -> Finisher {
        std::lock_guard<std::mutex> lock(m->mutex);
        AutocastScope amp(autocast);
        TensorMap inputs = in;
        if (m->channels_last)
          for (auto& [k, t] : inputs)
            if (t.dim() == 4) t = t.contiguous(at::MemoryFormat::ChannelsLast);
        TensorMap out = m->call(method, inputs, options);
        return [out](Napi::Env env) -> Napi::Value { return tensor_map_to_js(env, out); };
      });
    });
  }

  // loadWeights(files, optionsJson) -> Promise<report>
  Napi::Value LoadWeights(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      auto m = get(info.Env());
      if (!info[0].IsArray()) throw Napi::TypeError::New(info.Env(), "loadWeights: expected an array of file paths");
      std::vector<std::string> files;
      auto a = info[0].As<Napi::Array>();
      for (uint32_t i = 0; i < a.Length(); ++i) files.push_back(a.Get(i).As<Napi::String>().Utf8Value());
      json options = arg_json(info, 1, "options");
      return run_async(info.Env(), [m, files, options]() -> Finisher {
        std::lock_guard<std::mutex> lock(m->mutex);
        json report = load_weights(*m, files, options);
        return [report](Napi::Env env) { return json_to_js(env, report); };
      });
    });
  }

  // parameters() -> [{name, shape, dtype, requiresGrad, numel}]
  Napi::Value Parameters(const Napi::CallbackInfo& info) {
    auto m = get(info.Env());
    json out = json::array();
    for (auto& p : m->named_parameters(true))
      out.push_back({{"name", p.key()},
                     {"shape", p.value().sizes().vec()},
                     {"dtype", dtype_name(p.value().scalar_type())},
                     {"requiresGrad", p.value().requires_grad()},
                     {"numel", p.value().numel()}});
    return json_to_js(info.Env(), out);
  }

  // setTrainable(patterns: string[]) -> names made trainable. Every other parameter is frozen, so it
  // carries no gradient buffer. Patterns are regular expressions searched in the parameter name.
  Napi::Value SetTrainable(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      auto m = get(info.Env());
      if (!info[0].IsArray()) throw Napi::TypeError::New(info.Env(), "setTrainable: expected an array of patterns");
      std::vector<std::regex> patterns;
      auto a = info[0].As<Napi::Array>();
      for (uint32_t i = 0; i < a.Length(); ++i) {
        std::string s = a.Get(i).As<Napi::String>().Utf8Value();
        try {
          patterns.emplace_back(s);
        } catch (const std::regex_error& e) {
          throw Error("setTrainable: invalid pattern '" + s + "' (" + e.what() + ")");
        }
      }
      json names = json::array();
      for (auto& p : m->named_parameters(true)) {
        bool on = false;
        for (auto& r : patterns) on = on || std::regex_search(p.key(), r);
        p.value().set_requires_grad(on);
        if (!on) p.value().mutable_grad() = at::Tensor();  // drop stale gradient buffers
        if (on) names.push_back(p.key());
      }
      return json_to_js(info.Env(), names);
    });
  }

  // tensors(names?) -> {name: Tensor} sharing storage with the model (for optimizers and export).
  Napi::Value Tensors(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      auto m = get(info.Env());
      std::set<std::string> want;
      const bool all = info.Length() == 0 || info[0].IsUndefined() || info[0].IsNull();
      if (!all) {
        if (!info[0].IsArray()) throw Napi::TypeError::New(info.Env(), "tensors: expected an array of names");
        auto a = info[0].As<Napi::Array>();
        for (uint32_t i = 0; i < a.Length(); ++i) want.insert(a.Get(i).As<Napi::String>().Utf8Value());
      }
      TensorMap out;
      for (auto& p : m->named_parameters(true))
        if (all || want.count(p.key())) out[p.key()] = p.value();
      for (auto& b : m->named_buffers(true))
        if (all || want.count(b.key())) out[b.key()] = b.value();
      for (auto& w : want)
        if (!out.count(w)) throw Error("model '" + kind + "' has no parameter or buffer named '" + w + "'");
      return tensor_map_to_js(info.Env(), out);
    });
  }

  // to(device, dtype?) -> Promise<void>
  Napi::Value To(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      auto m = get(info.Env());
      at::Device device = parse_device(arg_string(info, 0, "device"));
      c10::optional<at::ScalarType> dtype;
      if (info.Length() > 1 && info[1].IsString()) dtype = dtype_from_name(info[1].As<Napi::String>().Utf8Value());
      return run_async(info.Env(), [m, device, dtype]() -> Finisher {
        std::lock_guard<std::mutex> lock(m->mutex);
        if (dtype)
          m->to(device, *dtype);
        else
          m->to(device);
        m->tie_weights();
        return nullptr;
      });
    });
  }

  // setChannelsLast(on): 4-D parameters and buffers change memory format in place (values unchanged).
  Napi::Value SetChannelsLast(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      auto m = get(info.Env());
      const bool on = arg_bool(info, 0, "setChannelsLast(on)");
      std::lock_guard<std::mutex> lock(m->mutex);
      at::NoGradGuard no_grad;
      const auto format = on ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
      for (auto& p : m->parameters(true))
        if (p.dim() == 4) p.set_data(p.data().contiguous(format));
      for (auto& b : m->buffers(true))
        if (b.dim() == 4) b.set_data(b.data().contiguous(format));
      m->channels_last = on;
      return info.Env().Undefined();
    });
  }

  Napi::Value Train(const Napi::CallbackInfo& info) {
    get(info.Env())->train(arg_bool(info, 0, "train(on)"));
    return info.Env().Undefined();
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    model.reset();
    return info.Env().Undefined();
  }
};

Napi::FunctionReference ModelHandle::ctor;

// createModel(kind, configJson, optionsJson) -> Promise<ModelHandle>
Napi::Value CreateModel(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    std::string kind = arg_string(info, 0, "kind");
    json config = arg_json(info, 1, "config");
    json options = arg_json(info, 2, "options");
    return run_async(info.Env(), [kind, config, options]() -> Finisher {
      auto model = create_model(kind, config, options);
      std::string dev = opt<std::string>(options, "device", "cpu");
      if (dev != "cpu") model->to(parse_device(dev));
      model->eval();
      return [model, kind](Napi::Env env) -> Napi::Value {
        Napi::Object o = ModelHandle::ctor.New({});
        auto* h = Napi::ObjectWrap<ModelHandle>::Unwrap(o);
        h->model = model;
        h->kind = kind;
        return o;
      };
    });
  });
}

std::shared_ptr<Model> model_from_js(const Napi::Value& v, const std::string& what) {
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(ModelHandle::ctor.Value())) throw Error(what + ": expected a native model handle");
  auto* h = Napi::ObjectWrap<ModelHandle>::Unwrap(v.As<Napi::Object>());
  if (!h->model) throw Error(what + ": model '" + h->kind + "' was disposed");
  return h->model;
}

void InitModelHandle(Napi::Env env, Napi::Object exports) {
  ModelHandle::Init(env, exports);
  exports.Set("createModel", Napi::Function::New(env, CreateModel));
  exports.Set("modelKinds", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                return json_to_js(info.Env(), model_kinds());
              }));
}

}  // namespace rt
