// N-API glue: exception translation and off-thread work returning Promises.
#pragma once
#include <napi.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>

#include "core/call_context.h"
#include "core/common.h"
#include "core/compute_thread.h"

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

// Work done off the JS thread. `work` runs on the compute thread (core/compute_thread.h), queued when the call is
// made, with the JS grad mode and the configured thread count; the libuv worker only waits for it (and passes on
// its steps). `work` returns a finisher that builds the JS result on the JS thread.
using Finisher = std::function<Napi::Value(Napi::Env)>;

// Settles a call's promise with what its finisher builds on the JS thread (a throw rejects it), then drops it.
inline void resolve_with(Napi::Promise::Deferred& deferred, Finisher& finish, Napi::Env env) {
  try {
    deferred.Resolve(finish ? finish(env) : env.Undefined());
  } catch (const Napi::Error& e) {
    deferred.Reject(e.Value());
  } catch (const std::exception& e) {
    deferred.Reject(Napi::Error::New(env, message_of(e)).Value());
  }
  finish = nullptr;
}

// What a call's work reports to the libuv worker waiting for it: its steps and its end.
struct ComputeCompletion {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::exception_ptr error;
  std::deque<std::pair<int64_t, int64_t>> steps;  // progress not yet passed on

  void add_step(int64_t done_steps, int64_t total) {
    std::lock_guard<std::mutex> lock(mu);
    steps.emplace_back(done_steps, total);
    cv.notify_all();
  }
  void finish(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mu);
    done = true;
    error = e;
    cv.notify_all();
  }
  // Waits until the work is done, handing each step to `step` (on the waiting thread) as it arrives.
  template <typename F>
  void wait(F&& step) {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      cv.wait(lock, [&] { return done || !steps.empty(); });
      while (!steps.empty()) {
        const auto s = steps.front();
        steps.pop_front();
        lock.unlock();
        step(s);
        lock.lock();
      }
      if (done) break;
    }
    if (error) std::rethrow_exception(error);
  }
};

// Queues `work` on the compute thread (after every call made before it); null when calls run on libuv workers.
// The completion outlives `work`: the compute thread holds it until it has reported the end.
inline std::shared_ptr<ComputeCompletion> submit_call(std::function<void(ComputeCompletion&)> work) {
  if (!compute_thread_enabled()) return nullptr;
  auto c = std::make_shared<ComputeCompletion>();
  submit_to_compute_thread([work = std::move(work), raw = c.get()] { work(*raw); }, [c](std::exception_ptr e) { c->finish(e); });
  return c;
}

class Worker : public Napi::AsyncWorker {
 public:
  Worker(Napi::Env env, std::function<Finisher()> work)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), work_(std::move(work)),
        grad_(js_grad_enabled()) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  // Queues the work on the compute thread (in call order), then the libuv wait.
  void Start() {
    completion_ = submit_call([this](ComputeCompletion&) { run(); });
    Queue();
  }

 protected:
  void Execute() override {
    try {
      if (completion_) completion_->wait([](const std::pair<int64_t, int64_t>&) {});
      else run();
    } catch (const std::exception& e) {
      SetError(message_of(e));
    } catch (...) {
      SetError("unknown native error");
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    resolve_with(deferred_, finish_, env);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  void run() {
    apply_threads();
    FlushDenormalScope float_mode;
    at::AutoGradMode grad(grad_);
    finish_ = work_();
  }
  Napi::Promise::Deferred deferred_;
  std::function<Finisher()> work_;
  Finisher finish_;
  bool grad_;
  std::shared_ptr<ComputeCompletion> completion_;
};

inline Napi::Promise run_async(Napi::Env env, std::function<Finisher()> work) {
  auto* w = new Worker(env, std::move(work));
  auto p = w->promise();
  w->Start();
  return p;
}

// A Worker whose work may report steps and be cancelled (core/call_context.h). Steps reach `on_step` on the JS
// thread in order, all of them before the promise settles: node-addon-api's progress queue (a
// Napi::ThreadSafeFunction) completes the work only after draining. An exception thrown by `on_step` stops the
// work at its next step and rejects the promise with it.
class ProgressWorker : public Napi::AsyncProgressQueueWorker<std::pair<int64_t, int64_t>> {
 public:
  ProgressWorker(Napi::Env env, std::function<Finisher()> work, CallContext ctx, Napi::Function on_step)
      : Napi::AsyncProgressQueueWorker<std::pair<int64_t, int64_t>>(env), deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)), ctx_(std::move(ctx)), grad_(js_grad_enabled()) {
    if (!ctx_.cancel) ctx_.cancel = std::make_shared<std::atomic<bool>>(false);
    if (!on_step.IsEmpty() && on_step.IsFunction()) on_step_ = Napi::Persistent(on_step);
  }
  Napi::Promise promise() { return deferred_.Promise(); }
  // Queues the work on the compute thread (in call order), then the libuv wait.
  void Start() {
    completion_ = submit_call([this](ComputeCompletion& c) { run([&c](int64_t done, int64_t total) { c.add_step(done, total); }); });
    Queue();
  }

 protected:
  void Execute(const ExecutionProgress& progress) override {
    try {
      if (completion_) {
        completion_->wait([&progress](const std::pair<int64_t, int64_t>& step) { progress.Send(&step, 1); });
      } else {
        run([&progress](int64_t done, int64_t total) {
          const std::pair<int64_t, int64_t> step{done, total};
          progress.Send(&step, 1);
        });
      }
    } catch (const std::exception& e) {
      SetError(message_of(e));
    } catch (...) {
      SetError("unknown native error");
    }
  }
  void OnProgress(const std::pair<int64_t, int64_t>* steps, size_t count) override {
    if (on_step_.IsEmpty() || !callback_error_.IsEmpty()) return;
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    for (size_t i = 0; i < count && callback_error_.IsEmpty(); ++i) {
      try {
        on_step_.Call({Napi::Number::New(env, static_cast<double>(steps[i].first)), Napi::Number::New(env, static_cast<double>(steps[i].second))});
      } catch (const Napi::Error& e) {
        callback_error_ = Napi::Persistent(e.Value());
        ctx_.cancel->store(true);
      }
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (!callback_error_.IsEmpty()) return deferred_.Reject(callback_error_.Value());
    resolve_with(deferred_, finish_, env);
  }
  void OnError(const Napi::Error& e) override {
    if (!callback_error_.IsEmpty()) return deferred_.Reject(callback_error_.Value());
    deferred_.Reject(e.Value());
  }

 private:
  void run(std::function<void(int64_t, int64_t)> report) {
    apply_threads();
    FlushDenormalScope float_mode;
    at::AutoGradMode grad(grad_);
    CallContext ctx = ctx_;
    if (!on_step_.IsEmpty()) ctx.progress = std::move(report);
    CallContextScope scope(&ctx);
    finish_ = work_();
  }
  Napi::Promise::Deferred deferred_;
  std::function<Finisher()> work_;
  Finisher finish_;
  std::shared_ptr<ComputeCompletion> completion_;
  CallContext ctx_;
  bool grad_;
  Napi::FunctionReference on_step_;
  Napi::ObjectReference callback_error_;  // what on_step threw
};

inline Napi::Promise run_async_with(Napi::Env env, std::function<Finisher()> work, CallContext ctx, Napi::Function on_step) {
  auto* w = new ProgressWorker(env, std::move(work), std::move(ctx), on_step);
  auto p = w->promise();
  w->Start();
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
