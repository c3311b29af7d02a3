// N-API glue: exception translation and off-thread work returning Promises.
#pragma once
#include <napi.h>

#include <functional>

#include "core/common.h"

namespace rt {

// Runs `body` on the JS thread, turning any C++ exception into a JS Error with a clean message.
template <typename F>
auto guarded(Napi::Env env, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, message_of(e));
  }
}

// Work done off the JS thread. `work` runs on a libuv worker with the JS grad mode and the configured
// thread count; it returns a finisher that builds the JS result on the JS thread.
using Finisher = std::function<Napi::Value(Napi::Env)>;

class Worker : public Napi::AsyncWorker {
 public:
  Worker(Napi::Env env, std::function<Finisher()> work)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), work_(std::move(work)),
        grad_(js_grad_enabled()) {}
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      apply_threads();
      at::AutoGradMode grad(grad_);
      finish_ = work_();
    } catch (const std::exception& e) {
      SetError(message_of(e));
    } catch (...) {
      SetError("unknown native error");
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    try {
      deferred_.Resolve(finish_ ? finish_(env) : env.Undefined());
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    } catch (const std::exception& e) {
      deferred_.Reject(Napi::Error::New(env, message_of(e)).Value());
    }
    finish_ = nullptr;
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<Finisher()> work_;
  Finisher finish_;
  bool grad_;
};

inline Napi::Promise run_async(Napi::Env env, std::function<Finisher()> work) {
  auto* w = new Worker(env, std::move(work));
  auto p = w->promise();
  w->Queue();
  return p;
}

// Argument helpers: each names the argument and says what arrived.
std::string arg_string(const Napi::CallbackInfo& info, size_t i, const char* name);
double arg_number(const Napi::CallbackInfo& info, size_t i, const char* name);
bool arg_bool(const Napi::CallbackInfo& info, size_t i, const char* name);
json arg_json(const Napi::CallbackInfo& info, size_t i, const char* name);  // a JSON string or undefined
std::vector<int64_t> arg_shape(const Napi::CallbackInfo& info, size_t i, const char* name);
Napi::Value json_to_js(Napi::Env env, const json& j);

}  // namespace rt
