// JointStepHandle: the JS face of the native joint objective and training step (joint.h).
//   createJointStep({blip, unet, vae, text}, bridgeIndex, configJson, {blip?, unet?} AdamW handles)
//   .objective(tensors, optionsJson)            -> Promise<{total, cap?, recImg?, sd?, recTxt?}>  (with graph)
//   .step(tensors[], optionsJson[], stepJson)   -> Promise<Float32Array stats>                    (one call a step)
#include <napi.h>

#include "core/napi_util.h"
#include "core/tensor_handle.h"
#include "train/joint.h"

namespace rt {

std::shared_ptr<Model> model_from_js(const Napi::Value& v, const std::string& what);
std::shared_ptr<train::AdamWState> adamw_from_js(const Napi::Value& v, const std::string& what);
std::shared_ptr<dist::GradSync> grad_sync_from_js(const Napi::Value& v, const std::string& what);

namespace {

train::MicroBatch micro_batch(const TensorMap& t, const json& o, const std::string& where) {
  train::MicroBatch mb;
  auto get = [&](const char* k) { auto it = t.find(k); return it == t.end() ? at::Tensor() : it->second; };
  mb.blip_pixels = get("blip_pixels");
  mb.sd_images = get("sd_images");
  mb.latents = get("latents");
  mb.blip_ids = need(t, "blip_ids", where);
  mb.blip_mask = need(t, "blip_mask", where);
  mb.blip_labels = need(t, "blip_labels", where);
  mb.clip_ids = need(t, "clip_ids", where);
  if (!mb.sd_images.defined() && !mb.latents.defined()) throw Error(where + ": needs 'sd_images' or 'latents'");
  if (mb.blip_ids.dim() != 2 || mb.blip_mask.sizes() != mb.blip_ids.sizes() || mb.blip_labels.sizes() != mb.blip_ids.sizes())
    throw Error(where + ": blip_ids, blip_mask and blip_labels must be [B, T] of one shape, got " + shape_str(mb.blip_ids.sizes()) + ", " +
                shape_str(mb.blip_mask.sizes()) + ", " + shape_str(mb.blip_labels.sizes()));
  const int64_t B = mb.blip_ids.size(0);
  mb.prompt_length = opt<int64_t>(o, "prompt_length", 0);
  mb.caption_lengths = opt<std::vector<int64_t>>(o, "caption_lengths", {});
  if (static_cast<int64_t>(mb.caption_lengths.size()) != B)
    throw Error(where + ": caption_lengths has " + std::to_string(mb.caption_lengths.size()) + " entries for " + std::to_string(B) + " captions");
  mb.seed = static_cast<uint32_t>(opt<int64_t>(o, "seed", 0));
  mb.micro = opt<int64_t>(o, "micro", 0);
  mb.slot_offset = opt<int64_t>(o, "slot_offset", 0);
  mb.slot_stride = opt<int64_t>(o, "slot_stride", 1);
  mb.token_scale = opt<double>(o, "token_scale", 1.0);
  if (mb.slot_offset < 0 || mb.slot_stride < 1 || !(mb.token_scale >= 0))
    throw Error(where + ": slot_offset must be >= 0, slot_stride >= 1 and token_scale >= 0");
  return mb;
}

class JointStepHandle : public Napi::ObjectWrap<JointStepHandle> {
 public:
  static Napi::FunctionReference ctor;
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(env, "JointStepHandle",
                                   {InstanceMethod<&JointStepHandle::Objective>("objective"), InstanceMethod<&JointStepHandle::Step>("step"),
                                    InstanceMethod<&JointStepHandle::ActiveTerms>("activeTerms"),
                                    InstanceMethod<&JointStepHandle::SetGradSync>("setGradSync"),
                                    InstanceMethod<&JointStepHandle::Dispose>("dispose")});
    ctor = Napi::Persistent(f);
    ctor.SuppressDestruct();
    exports.Set("JointStepHandle", f);
  }
  explicit JointStepHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<JointStepHandle>(info) {}
  std::shared_ptr<train::JointObjective> j;
  std::shared_ptr<dist::GradSync> grad_sync;  // data-parallel runs (setGradSync)

 private:
  // Runs `body` holding every model's lock (always in one order, so concurrent calls cannot deadlock).
  template <typename F>
  static auto locked(train::JointObjective& j, F&& body) {
    std::lock_guard<std::mutex> own(j.mutex);
    j.bind();
    struct Unbind {
      train::JointObjective& j;
      ~Unbind() { j.unbind(); }
    } unbind{j};
    std::scoped_lock lock(j.models.blip->mutex, j.models.unet->mutex, j.models.vae->mutex, j.models.text->mutex);
    return body();
  }
  std::shared_ptr<train::JointObjective> get() {
    if (!j) throw Error("joint step: disposed");
    return j;
  }

  Napi::Value Objective(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      auto j = get();
      TensorMap t = tensor_map_from_js(info[0], "joint.objective inputs");
      json o = arg_json(info, 1, "options");
      train::MicroBatch mb = micro_batch(t, o, "joint.objective");
      const int64_t step = opt<int64_t>(o, "step", 0);
      return run_async(info.Env(), [j, mb, step]() -> Finisher {
        TensorMap out = locked(*j, [&] { return j->forward(mb, step); });
        return [out](Napi::Env env) -> Napi::Value { return tensor_map_to_js(env, out); };
      });
    });
  }

  Napi::Value Step(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      auto j = get();
      if (!info[0].IsArray()) throw Error("joint.step: expected an array of micro-batch tensor maps");
      auto arr = info[0].As<Napi::Array>();
      json per = arg_json(info, 1, "micro-batch options");
      json o = arg_json(info, 2, "step options");
      if (!per.is_array() || per.size() != arr.Length()) throw Error("joint.step: one options object per micro-batch is needed");
      std::vector<train::MicroBatch> batches;
      for (uint32_t i = 0; i < arr.Length(); ++i) {
        const std::string where = "joint.step micro-batch " + std::to_string(i);
        batches.push_back(micro_batch(tensor_map_from_js(arr.Get(i), where), per[i], where));
      }
      const int64_t step = opt<int64_t>(o, "step", 0);
      const double lr = opt<double>(o, "lr", 1e-4);
      // The collective's ticket is taken here, on the JS thread, so every rank issues it in call order.
      std::optional<train::DistStep> dist;
      if (grad_sync) dist = train::DistStep{grad_sync, dist::issue_ticket(), dist::world_size(), opt<bool>(o, "stop", false)};
      return run_async(info.Env(), [j, batches, step, lr, dist]() -> Finisher {
        at::Tensor stats = locked(*j, [&] { return j->step(batches, step, lr, dist ? &*dist : nullptr); });
        return [stats](Napi::Env env) -> Napi::Value {
          auto a = Napi::Float32Array::New(env, stats.numel());
          std::memcpy(a.Data(), stats.data_ptr<float>(), stats.numel() * sizeof(float));
          return a;
        };
      });
    });
  }

  // setGradSync(gradSyncHandle | null): average gradients over the ranks inside step().
  Napi::Value SetGradSync(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      grad_sync = info[0].IsNull() || info[0].IsUndefined() ? nullptr : grad_sync_from_js(info[0], "joint.setGradSync");
      return info.Env().Undefined();
    });
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    j.reset();
    grad_sync.reset();
    return info.Env().Undefined();
  }

  // activeTerms(step, micro) -> ["cap", ...]
  Napi::Value ActiveTerms(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      static const char* names[4] = {"cap", "recImg", "sd", "recTxt"};
      auto terms = get()->active_terms(static_cast<int64_t>(arg_number(info, 0, "step")), static_cast<int64_t>(arg_number(info, 1, "micro")));
      auto a = Napi::Array::New(info.Env(), terms.size());
      for (size_t i = 0; i < terms.size(); ++i) a.Set(i, Napi::String::New(info.Env(), names[terms[i]]));
      return a;
    });
  }
};
Napi::FunctionReference JointStepHandle::ctor;

Napi::Value CreateJointStep(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    if (!info[0].IsObject()) throw Error("createJointStep: expected {blip, unet, vae, text} model handles");
    auto m = info[0].As<Napi::Object>();
    train::JointModels models{model_from_js(m.Get("blip"), "createJointStep blip"), model_from_js(m.Get("unet"), "createJointStep unet"),
                              model_from_js(m.Get("vae"), "createJointStep vae"), model_from_js(m.Get("text"), "createJointStep text")};
    at::Tensor index = TensorHandle::From(info[1], "createJointStep bridge index");
    json config = arg_json(info, 2, "config");
    auto j = std::make_shared<train::JointObjective>(models, index, train::JointConfig::from(config));
    models = train::JointModels{};
    if (info.Length() > 3 && info[3].IsObject()) {
      auto o = info[3].As<Napi::Object>();
      if (o.Has("blip") && !o.Get("blip").IsUndefined()) j->blip_opt = adamw_from_js(o.Get("blip"), "createJointStep optimizers.blip");
      if (o.Has("unet") && !o.Get("unet").IsUndefined()) j->unet_opt = adamw_from_js(o.Get("unet"), "createJointStep optimizers.unet");
    }
    Napi::Object h = JointStepHandle::ctor.New({});
    Napi::ObjectWrap<JointStepHandle>::Unwrap(h)->j = j;
    return h;
  });
}

}  // namespace

void InitJoint(Napi::Env env, Napi::Object exports) {
  JointStepHandle::Init(env, exports);
  exports.Set("createJointStep", Napi::Function::New(env, CreateJointStep));
}

}  // namespace rt
