// AdamW over a list of parameters, in one native call per step (PyTorch's torch.optim.AdamW update,
// non-foreach path), plus global-norm gradient clipping. State is exportable for exact resume.
#include <napi.h>

#include "core/napi_util.h"
#include "core/tensor_handle.h"
#include "train/adamw.h"

namespace rt {

namespace {

using train::AdamWState;

class OptimizerHandle : public Napi::ObjectWrap<OptimizerHandle> {
 public:
  static Napi::FunctionReference ctor;
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(env, "OptimizerHandle",
                                   {InstanceMethod<&OptimizerHandle::Step>("step"), InstanceMethod<&OptimizerHandle::ZeroGrad>("zeroGrad"),
                                    InstanceMethod<&OptimizerHandle::SetLr>("setLr"), InstanceMethod<&OptimizerHandle::State>("state"),
                                    InstanceMethod<&OptimizerHandle::LoadState>("loadState")});
    ctor = Napi::Persistent(f);
    ctor.SuppressDestruct();
    exports.Set("OptimizerHandle", f);
  }
  explicit OptimizerHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<OptimizerHandle>(info) {}
  std::shared_ptr<AdamWState> s;

 private:
  // step() -> Promise<void>. Parameters without a gradient are skipped, as PyTorch does.
  Napi::Value Step(const Napi::CallbackInfo& info) {
    auto st = s;
    return run_async(info.Env(), [st]() -> Finisher {
      std::lock_guard<std::mutex> lock(st->mutex);
      st->update();
      return nullptr;
    });
  }
  Napi::Value ZeroGrad(const Napi::CallbackInfo& info) {
    std::lock_guard<std::mutex> lock(s->mutex);
    s->zero_grad();
    return info.Env().Undefined();
  }
  Napi::Value SetLr(const Napi::CallbackInfo& info) {
    s->lr = arg_number(info, 0, "lr");
    return info.Env().Undefined();
  }
  // state() -> {step, expAvg: (Tensor|null)[], expAvgSq: (Tensor|null)[]} (clones, safe to save)
  Napi::Value State(const Napi::CallbackInfo& info) {
    std::lock_guard<std::mutex> lock(s->mutex);
    Napi::Env env = info.Env();
    auto o = Napi::Object::New(env);
    o.Set("step", Napi::Number::New(env, static_cast<double>(s->step)));
    auto m = Napi::Array::New(env, s->params.size()), v = Napi::Array::New(env, s->params.size());
    for (size_t i = 0; i < s->params.size(); ++i) {
      m.Set(i, s->exp_avg[i].defined() ? Napi::Value(TensorHandle::Wrap(env, s->exp_avg[i].clone())) : env.Null());
      v.Set(i, s->exp_avg_sq[i].defined() ? Napi::Value(TensorHandle::Wrap(env, s->exp_avg_sq[i].clone())) : env.Null());
    }
    o.Set("expAvg", m);
    o.Set("expAvgSq", v);
    return o;
  }
  // loadState(step, expAvg[], expAvgSq[])
  Napi::Value LoadState(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      std::lock_guard<std::mutex> lock(s->mutex);
      int64_t step = static_cast<int64_t>(arg_number(info, 0, "step"));
      if (!info[1].IsArray() || !info[2].IsArray()) throw Napi::TypeError::New(info.Env(), "loadState: expected arrays of tensors");
      auto m = info[1].As<Napi::Array>(), v = info[2].As<Napi::Array>();
      if (m.Length() != s->params.size() || v.Length() != s->params.size())
        throw Error("optimizer state has " + std::to_string(m.Length()) + " entries, the optimizer has " + std::to_string(s->params.size()) + " parameters");
      for (uint32_t i = 0; i < m.Length(); ++i) {
        if (m.Get(i).IsNull()) {
          s->exp_avg[i] = s->exp_avg_sq[i] = at::Tensor();
          continue;
        }
        at::Tensor a = TensorHandle::From(m.Get(i), "expAvg"), b = TensorHandle::From(v.Get(i), "expAvgSq");
        if (a.sizes() != s->params[i].sizes() || b.sizes() != s->params[i].sizes())
          throw Error("optimizer state entry " + std::to_string(i) + " has shape " + shape_str(a.sizes()) + ", its parameter " + shape_str(s->params[i].sizes()));
        s->exp_avg[i] = a.to(s->params[i].options()).clone();
        s->exp_avg_sq[i] = b.to(s->params[i].options()).clone();
      }
      s->step = step;
      return info.Env().Undefined();
    });
  }
};
Napi::FunctionReference OptimizerHandle::ctor;

std::vector<at::Tensor> tensor_list(const Napi::Value& v, const char* what) {
  if (!v.IsArray()) throw Napi::TypeError::New(v.Env(), std::string(what) + ": expected an array of tensors");
  auto a = v.As<Napi::Array>();
  std::vector<at::Tensor> out;
  for (uint32_t i = 0; i < a.Length(); ++i) out.push_back(TensorHandle::From(a.Get(i), std::string(what) + "[" + std::to_string(i) + "]"));
  return out;
}

// createAdamW(params, optionsJson{lr, beta1, beta2, eps, weightDecay}) -> OptimizerHandle
Napi::Value CreateAdamW(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto st = std::make_shared<AdamWState>();
    st->params = tensor_list(info[0], "createAdamW(params)");
    for (auto& p : st->params)
      if (!p.requires_grad()) throw Error("createAdamW: parameter of shape " + shape_str(p.sizes()) + " is frozen (requiresGrad false)");
    json o = arg_json(info, 1, "options");
    st->lr = opt<double>(o, "lr", 1e-4);
    st->beta1 = opt<double>(o, "beta1", 0.9);
    st->beta2 = opt<double>(o, "beta2", 0.999);
    st->eps = opt<double>(o, "eps", 1e-8);
    st->weight_decay = opt<double>(o, "weightDecay", 0.01);
    st->exp_avg.resize(st->params.size());
    st->exp_avg_sq.resize(st->params.size());
    Napi::Object h = OptimizerHandle::ctor.New({});
    Napi::ObjectWrap<OptimizerHandle>::Unwrap(h)->s = st;
    return h;
  });
}

// clipGradNorm(params, maxNorm) -> total norm before clipping (as torch.nn.utils.clip_grad_norm_)
Napi::Value ClipGradNorm(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto params = tensor_list(info[0], "clipGradNorm(params)");
    const double max_norm = arg_number(info, 1, "maxNorm");
    bool any = false;
    for (auto& p : params) any = any || p.grad().defined();
    if (!any) return Napi::Number::New(info.Env(), 0);
    at::Tensor total = train::grad_norm(params, params.front().device());
    train::clip_grads(params, total, max_norm);
    return Napi::Number::New(info.Env(), total.item<double>());
  });
}

}  // namespace

std::shared_ptr<train::AdamWState> adamw_from_js(const Napi::Value& v, const std::string& what) {
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(OptimizerHandle::ctor.Value()))
    throw Error(what + ": expected an AdamW optimizer handle");
  auto st = Napi::ObjectWrap<OptimizerHandle>::Unwrap(v.As<Napi::Object>())->s;
  if (!st) throw Error(what + ": the optimizer handle is empty");
  return st;
}

void InitOptim(Napi::Env env, Napi::Object exports) {
  OptimizerHandle::Init(env, exports);
  exports.Set("createAdamW", Napi::Function::New(env, CreateAdamW));
  exports.Set("clipGradNorm", Napi::Function::New(env, ClipGradNorm));
}

}  // namespace rt
