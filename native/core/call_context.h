// What a long native call (a sampling loop, a training step) may use besides its tensors: per-step progress
// posted to JS, cancellation from an AbortSignal, and peer models it runs (the VAE that decodes the UNet's
// latents). Set for the duration of one call on the worker thread that runs it.
#pragma once
#include <atomic>
#include <functional>
#include <memory>

#include "core/common.h"

namespace rt {

struct Model;

// Thrown inside a call whose caller aborted; the JS side rejects with the signal's AbortError.
struct Cancelled : Error {
  Cancelled() : Error("the operation was aborted") {}
};

struct CallContext {
  std::shared_ptr<std::atomic<bool>> cancel;                  // set from JS (AbortSignal); may be null
  std::function<void(int64_t done, int64_t total)> progress;  // posts to JS in order; may be empty
  std::map<std::string, std::shared_ptr<Model>> models;       // peer models by role ("vae")
};

// Installs `ctx` as the calling thread's context until the scope ends.
class CallContextScope {
 public:
  explicit CallContextScope(const CallContext* ctx);
  ~CallContextScope();
  CallContextScope(const CallContextScope&) = delete;
  CallContextScope& operator=(const CallContextScope&) = delete;

 private:
  const CallContext* prev_;
};

// Throws Cancelled when the caller aborted.
void check_cancelled();
// One unit of work finished: reports (done, total) to JS, then throws Cancelled if the caller aborted, so an
// abort stops the call within one step.
void report_step(int64_t done, int64_t total);
// The peer model given for `role`, or null.
std::shared_ptr<Model> peer_model(const std::string& role);

}  // namespace rt
