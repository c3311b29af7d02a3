// JS face of native/dist: distInit/distDestroy/distInfo, ordered collectives on tensor handles
// (Promises; the issuing order is fixed on the JS thread), the gradient averager and tensor hashes.
#include <napi.h>

#include "core/napi_util.h"
#include "core/tensor_handle.h"
#include "dist/dist.h"

namespace rt {

namespace {

std::vector<at::Tensor> handles(const Napi::Value& v, const std::string& what) {
  if (!v.IsArray()) throw Napi::TypeError::New(v.Env(), what + ": expected an array of tensors");
  auto a = v.As<Napi::Array>();
  std::vector<at::Tensor> out;
  for (uint32_t i = 0; i < a.Length(); ++i) out.push_back(TensorHandle::From(a.Get(i), what + "[" + std::to_string(i) + "]"));
  return out;
}

// distInit(optionsJson{rank, worldSize, masterAddr, masterPort, timeoutSeconds, backend, glooThreads}) -> Promise<void>
Napi::Value DistInit(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    json o = arg_json(info, 0, "options");
    dist::Config c;
    c.rank = opt<int>(o, "rank", 0);
    c.world_size = opt<int>(o, "worldSize", 1);
    c.master_addr = opt<std::string>(o, "masterAddr", "127.0.0.1");
    c.master_port = opt<int>(o, "masterPort", 29500);
    c.timeout_seconds = opt<double>(o, "timeoutSeconds", 300);
    c.backend = opt<std::string>(o, "backend", "gloo");
    c.gloo_threads = opt<int>(o, "glooThreads", 2);
    c.agent_store = opt<bool>(o, "agentStore", false);
    return run_async(info.Env(), [c]() -> Finisher {
      dist::init(c);
      return nullptr;
    });
  });
}

Napi::Value DistDestroy(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    dist::destroy();
    return info.Env().Undefined();
  });
}

// distInfo() -> {initialized, rank, worldSize, backend, available: string[]}
Napi::Value DistInfo(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    json j = {{"initialized", dist::initialized()}, {"rank", dist::rank()}, {"worldSize", dist::world_size()},
              {"backend", dist::backend_name()}, {"available", dist::available_backends()}};
    return json_to_js(info.Env(), j);
  });
}

// distAllReduce(tensors, op) -> Promise<void> (in place)
Napi::Value DistAllReduce(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto ts = handles(info[0], "allReduce(tensors)");
    dist::Op op = dist::parse_op(arg_string(info, 1, "op"));
    const uint64_t ticket = dist::issue_ticket();
    return run_async(info.Env(), [ts, op, ticket]() -> Finisher {
      dist::all_reduce(ts, op, ticket);
      return nullptr;
    });
  });
}

// distBroadcast(tensors, src) -> Promise<void> (in place)
Napi::Value DistBroadcast(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto ts = handles(info[0], "broadcast(tensors)");
    const int src = static_cast<int>(arg_number(info, 1, "src"));
    const uint64_t ticket = dist::issue_ticket();
    return run_async(info.Env(), [ts, src, ticket]() -> Finisher {
      dist::broadcast(ts, src, ticket);
      return nullptr;
    });
  });
}

// distBarrier(timeoutSeconds?) -> Promise<void>
Napi::Value DistBarrier(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const double timeout = info[0].IsUndefined() ? 0 : arg_number(info, 0, "timeoutSeconds");
    const uint64_t ticket = dist::issue_ticket();
    return run_async(info.Env(), [ticket, timeout]() -> Finisher {
      dist::barrier(ticket, timeout);
      return nullptr;
    });
  });
}

// tensorsHash(tensors) -> Promise<string> (16 hex digits)
Napi::Value TensorsHash(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto ts = handles(info[0], "tensorsHash(tensors)");
    return run_async(info.Env(), [ts]() -> Finisher {
      auto h = std::make_shared<std::string>(dist::tensors_hash(ts));
      return [h](Napi::Env env) -> Napi::Value { return Napi::String::New(env, *h); };
    });
  });
}

class GradSyncHandle : public Napi::ObjectWrap<GradSyncHandle> {
 public:
  static Napi::FunctionReference ctor;
  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(env, "GradSyncHandle", {InstanceMethod<&GradSyncHandle::Finish>("finish"), InstanceMethod<&GradSyncHandle::Stats>("stats")});
    ctor = Napi::Persistent(f);
    ctor.SuppressDestruct();
    exports.Set("GradSyncHandle", f);
  }
  explicit GradSyncHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<GradSyncHandle>(info) {}
  std::shared_ptr<dist::GradSync> s;

 private:
  // finish(extras: number[]) -> Promise<number[]> (extras summed over ranks)
  Napi::Value Finish(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      if (!info[0].IsArray()) throw Napi::TypeError::New(info.Env(), "GradSync.finish(extras): expected an array of numbers");
      auto a = info[0].As<Napi::Array>();
      std::vector<double> extras;
      for (uint32_t i = 0; i < a.Length(); ++i) {
        if (!a.Get(i).IsNumber()) throw Napi::TypeError::New(info.Env(), "GradSync.finish(extras): entry " + std::to_string(i) + " is not a number");
        extras.push_back(a.Get(i).As<Napi::Number>().DoubleValue());
      }
      auto st = s;
      const uint64_t ticket = dist::issue_ticket();
      return run_async(info.Env(), [st, extras, ticket]() -> Finisher {
        auto out = std::make_shared<std::vector<double>>(st->finish(extras, ticket));
        return [out](Napi::Env env) -> Napi::Value {
          auto arr = Napi::Array::New(env, out->size());
          for (size_t i = 0; i < out->size(); ++i) arr.Set(static_cast<uint32_t>(i), Napi::Number::New(env, (*out)[i]));
          return arr;
        };
      });
    });
  }
  // stats() -> {seconds, commSeconds, hiddenSeconds, bytes, buckets, bucketBytes, launchedInBackward, rereduced, overlap}
  // of the last step
  Napi::Value Stats(const Napi::CallbackInfo& info) {
    json j = {{"seconds", s->last_seconds},
              {"commSeconds", s->last_comm_seconds},
              {"hiddenSeconds", s->last_hidden_seconds},
              {"bytes", s->last_bytes},
              {"buckets", s->bucket_count()},
              {"bucketBytes", s->bucket_sizes()},
              {"launchedInBackward", s->last_launched_in_backward},
              {"rereduced", s->last_rereduced},
              {"overlap", s->overlap()}};
    return json_to_js(info.Env(), j);
  }
};
Napi::FunctionReference GradSyncHandle::ctor;

// createGradSync(params, optionsJson{bucketBytes, overlap}) -> GradSyncHandle
Napi::Value CreateGradSync(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    auto params = handles(info[0], "createGradSync(params)");
    json o = arg_json(info, 1, "options");
    auto s = std::make_shared<dist::GradSync>(params, opt<int64_t>(o, "bucketBytes", int64_t(25) << 20), opt<bool>(o, "overlap", true));
    Napi::Object h = GradSyncHandle::ctor.New({});
    Napi::ObjectWrap<GradSyncHandle>::Unwrap(h)->s = s;
    return h;
  });
}

}  // namespace

// The averager behind a JS GradSync handle (the native training step runs it; see train/joint_handle.cc).
std::shared_ptr<dist::GradSync> grad_sync_from_js(const Napi::Value& v, const std::string& what) {
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(GradSyncHandle::ctor.Value())) throw Error(what + ": expected a GradSync handle");
  auto s = Napi::ObjectWrap<GradSyncHandle>::Unwrap(v.As<Napi::Object>())->s;
  if (!s) throw Error(what + ": an empty GradSync handle");
  return s;
}

void InitDist(Napi::Env env, Napi::Object exports) {
  GradSyncHandle::Init(env, exports);
  exports.Set("distInit", Napi::Function::New(env, DistInit));
  exports.Set("distDestroy", Napi::Function::New(env, DistDestroy));
  exports.Set("distInfo", Napi::Function::New(env, DistInfo));
  exports.Set("distAllReduce", Napi::Function::New(env, DistAllReduce));
  exports.Set("distBroadcast", Napi::Function::New(env, DistBroadcast));
  exports.Set("distBarrier", Napi::Function::New(env, DistBarrier));
  exports.Set("tensorsHash", Napi::Function::New(env, TensorsHash));
  exports.Set("createGradSync", Napi::Function::New(env, CreateGradSync));
}

}  // namespace rt
