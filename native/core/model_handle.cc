// ModelHandle: the JS face of a native Model. Every heavy method returns a Promise and runs off-thread.
#include <napi.h>

#include <regex>

#include "core/autocast.h"
#include "core/device_copy.h"
#include "core/memory.h"
#include "core/model.h"
#include "core/napi_util.h"
#include "core/reduced_weights.h"
#include "core/safetensors.h"
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

// A cancellation flag JS sets (from an AbortSignal) and a running call polls between steps.
class CancelToken : public Napi::ObjectWrap<CancelToken> {
 public:
  static Napi::FunctionReference ctor;
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(env, "CancelToken",
                                   {InstanceMethod<&CancelToken::Cancel>("cancel"), InstanceAccessor<&CancelToken::Cancelled>("cancelled")});
    ctor = Napi::Persistent(f);
    ctor.SuppressDestruct();
    exports.Set("CancelToken", f);
  }
  explicit CancelToken(const Napi::CallbackInfo& info) : Napi::ObjectWrap<CancelToken>(info) {}
  std::shared_ptr<std::atomic<bool>> flag = std::make_shared<std::atomic<bool>>(false);

 private:
  Napi::Value Cancel(const Napi::CallbackInfo& info) {
    flag->store(true);
    return info.Env().Undefined();
  }
  Napi::Value Cancelled(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), flag->load()); }
};
Napi::FunctionReference CancelToken::ctor;

class ModelHandle : public Napi::ObjectWrap<ModelHandle> {
 public:
  static Napi::FunctionReference ctor;
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(env, "ModelHandle",
                                   {
                                       InstanceAccessor<&ModelHandle::Kind>("kind"),
                                       InstanceAccessor<&ModelHandle::DeviceName>("device"),
                                       InstanceAccessor<&ModelHandle::LoadReport>("loadReport"),
                                       InstanceMethod<&ModelHandle::Call>("call"),
                                       InstanceMethod<&ModelHandle::LoadWeights>("loadWeights"),
                                       InstanceMethod<&ModelHandle::Parameters>("parameters"),
                                       InstanceMethod<&ModelHandle::SetTrainable>("setTrainable"),
                                       InstanceMethod<&ModelHandle::Tensors>("tensors"),
                                       InstanceMethod<&ModelHandle::To>("to"),
                                       InstanceMethod<&ModelHandle::Train>("train"),
                                       InstanceMethod<&ModelHandle::SetChannelsLast>("setChannelsLast"),
                                       InstanceMethod<&ModelHandle::SetFrozenDtype>("setFrozenDtype"),
                                       InstanceMethod<&ModelHandle::ReleaseWeightPages>("releaseWeightPages"),
                                       InstanceMethod<&ModelHandle::Dispose>("dispose"),
                                   });
    ctor = Napi::Persistent(f);
    ctor.SuppressDestruct();
    exports.Set("ModelHandle", f);
  }
  explicit ModelHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ModelHandle>(info) {}

  std::shared_ptr<Model> model;
  std::string kind;
  json load_report;  // of createModel with options.weights

  std::shared_ptr<Model> get(Napi::Env env) {
    if (!model) throw Napi::Error::New(env, "model '" + kind + "' was disposed");
    return model;
  }

 private:
  Napi::Value Kind(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), kind); }
  Napi::Value LoadReport(const Napi::CallbackInfo& info) {
    return load_report.is_null() ? info.Env().Null() : json_to_js(info.Env(), load_report);
  }
  Napi::Value DeviceName(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), device_name(get(info.Env())->device()));
  }

  // call(method, inputs, optionsJson, control?) -> Promise<{name: Tensor}>
  // control: {onStep?: (done, total) => void, cancel?: CancelToken, models?: {role: ModelHandle}} for long calls
  // (core/call_context.h).
  Napi::Value Call(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      auto m = get(info.Env());
      std::string method = arg_string(info, 0, "method");
      TensorMap in = tensor_map_from_js(info[1], kind + "." + method + " inputs");
      json options = arg_json(info, 2, "options");
      auto autocast = autocast_dtype(options, m->device());
      auto work = [m, method, in, options, autocast]() -> Finisher {
        std::lock_guard<std::mutex> lock(m->mutex);
        AutocastScope amp(autocast);
        TensorMap inputs = in;
        if (m->channels_last)
          for (auto& [k, t] : inputs)
            if (t.dim() == 4) t = t.contiguous(at::MemoryFormat::ChannelsLast);
        TensorMap out = m->call(method, inputs, options);
        return [out](Napi::Env env) -> Napi::Value { return tensor_map_to_js(env, out); };
      };
      if (info.Length() < 4 || info[3].IsUndefined() || info[3].IsNull()) return run_async(info.Env(), work);
      if (!info[3].IsObject()) throw Napi::TypeError::New(info.Env(), kind + "." + method + ": control must be an object");
      Napi::Object control = info[3].As<Napi::Object>();
      CallContext ctx;
      Napi::Function on_step;
      if (control.Has("onStep") && !control.Get("onStep").IsUndefined()) {
        if (!control.Get("onStep").IsFunction()) throw Napi::TypeError::New(info.Env(), kind + "." + method + ": control.onStep must be a function");
        on_step = control.Get("onStep").As<Napi::Function>();
      }
      if (control.Has("cancel") && !control.Get("cancel").IsUndefined()) {
        Napi::Value c = control.Get("cancel");
        if (!c.IsObject() || !c.As<Napi::Object>().InstanceOf(CancelToken::ctor.Value()))
          throw Napi::TypeError::New(info.Env(), kind + "." + method + ": control.cancel must be a CancelToken");
        ctx.cancel = Napi::ObjectWrap<CancelToken>::Unwrap(c.As<Napi::Object>())->flag;
      }
      if (control.Has("models") && control.Get("models").IsObject()) {
        Napi::Object peers = control.Get("models").As<Napi::Object>();
        Napi::Array roles = peers.GetPropertyNames();
        for (uint32_t i = 0; i < roles.Length(); ++i) {
          const std::string role = roles.Get(i).As<Napi::String>().Utf8Value();
          Napi::Value v = peers.Get(role);
          if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(ctor.Value()))
            throw Napi::TypeError::New(info.Env(), kind + "." + method + ": control.models." + role + " must be a model handle");
          ctx.models[role] = Napi::ObjectWrap<ModelHandle>::Unwrap(v.As<Napi::Object>())->get(info.Env());
        }
      }
      return run_async_with(info.Env(), work, std::move(ctx), on_step);
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
        // The tensors the files replaced (a created model's initial values) are freed now; hand their blocks back
        // to the system instead of keeping a model's worth of memory cached.
        release_cached_memory();
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
      // A weight held in bf16/fp16 cannot train (its gradient and AdamW state would be reduced too).
      for (auto& p : m->named_parameters(true)) {
        bool on = false;
        for (auto& r : patterns) on = on || std::regex_search(p.key(), r);
        if (on && p.value().device().is_cpu() && compute_dtype(p.value()) != p.value().scalar_type())
          throw Error("setTrainable: '" + p.key() + "' is held in " + dtype_name(p.value().scalar_type()) +
                      " (frozenDtype); choose the trainable tensors before holding frozen weights reduced");
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
      if (m->frozen_dtype && !device.is_cpu())
        throw Error("model '" + kind + "' holds its frozen weights in " + dtype_name(*m->frozen_dtype) +
                    " (frozenDtype, a CPU option): load it again without frozenDtype to move it to " + device_name(device));
      return run_async(info.Env(), [m, device, dtype]() -> Finisher {
        std::lock_guard<std::mutex> lock(m->mutex);
        if (dtype) {
          m->to(device, *dtype);
          m->tie_weights();
        } else {
          move_model_to(*m, device);  // CUDA: pinned staging, overlapped copies
        }
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

  // setFrozenDtype(dtype: "bfloat16" | "float16") -> Promise<{tensors, bytesBefore, bytesAfter, dtype}>: frozen weights
  // held reduced and up-cast per op (core/reduced_weights.h). CPU only.
  // releaseWeightPages() -> Promise<number>: hands back the resident file pages of the weights that still view their
  // file unwritten (a trained tensor's written pages are its own copies and stay). Touching them again faults
  // the same bytes in from the page cache. For a component a one-shot process is done with, as stable-diffusion.cpp
  // frees its conditioner's weights once the prompts are encoded. Returns the bytes handed back.
  Napi::Value ReleaseWeightPages(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      auto m = get(info.Env());
      return run_async(info.Env(), [m]() -> Finisher {
        std::lock_guard<std::mutex> lock(m->mutex);
        size_t bytes = 0;
        // Page by page in /proc/self/pagemap: only tensors whose resident pages are all still the file's.
        for (const auto& p : m->parameters()) bytes += release_unwritten_mapped_pages(p);
        for (const auto& b : m->buffers()) bytes += release_unwritten_mapped_pages(b);
        return [bytes](Napi::Env env) { return Napi::Number::New(env, static_cast<double>(bytes)); };
      });
    });
  }

  Napi::Value SetFrozenDtype(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      auto m = get(info.Env());
      const at::ScalarType dtype = dtype_from_name(arg_string(info, 0, "dtype"));
      return run_async(info.Env(), [m, dtype]() -> Finisher {
        std::lock_guard<std::mutex> lock(m->mutex);
        json report = hold_frozen_in(*m, dtype);
        release_cached_memory();
        return [report](Napi::Env env) { return json_to_js(env, report); };
      });
    });
  }

  Napi::Value Train(const Napi::CallbackInfo& info) {
    get(info.Env())->train(arg_bool(info, 0, "train(on)"));
    return info.Env().Undefined();
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    model.reset();
    // Blocks the model's calls left in the cache (and weights it copied) go back to the system now.
    release_cached_memory();
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
    // options.weights: files every parameter comes from (create_model_from_files: no random init, mapped on
    // CPU), loaded with options.load, before the model moves to options.device.
    std::vector<std::string> files;
    if (options.contains("weights")) {
      if (!options["weights"].is_array()) throw Error("createModel: options.weights must be an array of file paths");
      for (auto& f : options["weights"]) files.push_back(f.get<std::string>());
    }
    return run_async(info.Env(), [kind, config, options, files]() -> Finisher {
      json report;
      auto model = files.empty() ? create_model(kind, config, options)
                                 : create_model_from_files(kind, config, options, files, options.value("load", json::object()), &report);
      std::string dev = opt<std::string>(options, "device", "cpu");
      if (dev != "cpu") move_model_to(*model, parse_device(dev));  // CUDA: pinned staging, overlapped copies
      model->eval();
      return [model, kind, report](Napi::Env env) -> Napi::Value {
        Napi::Object o = ModelHandle::ctor.New({});
        auto* h = Napi::ObjectWrap<ModelHandle>::Unwrap(o);
        h->model = model;
        h->kind = kind;
        h->load_report = report;
        return o;
      };
    });
  });
}

// createScheduler(kind, configJson) -> Promise<ModelHandle>: a noise scheduler (kind "ddpm", ..., or a diffusers
// class name) from a scheduler_config.json object, called like a model (set_timesteps, step, ...); not a model kind.
Napi::Value CreateScheduler(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    std::string kind = arg_string(info, 0, "kind");
    json config = arg_json(info, 1, "config");
    return run_async(info.Env(), [kind, config]() -> Finisher {
      auto model = create_component("scheduler", config, json{{"scheduler", kind}});
      return [model](Napi::Env env) -> Napi::Value {
        Napi::Object o = ModelHandle::ctor.New({});
        auto* h = Napi::ObjectWrap<ModelHandle>::Unwrap(o);
        h->model = model;
        h->kind = "scheduler";
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
  CancelToken::Init(env, exports);
  exports.Set("createModel", Napi::Function::New(env, CreateModel));
  exports.Set("createScheduler", Napi::Function::New(env, CreateScheduler));
  exports.Set("modelKinds", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                return json_to_js(info.Env(), model_kinds());
              }));
}

}  // namespace rt
