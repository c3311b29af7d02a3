#include "core/call_context.h"

namespace rt {

namespace {
thread_local const CallContext* t_ctx = nullptr;
}  // namespace

CallContextScope::CallContextScope(const CallContext* ctx) : prev_(t_ctx) { t_ctx = ctx; }
CallContextScope::~CallContextScope() { t_ctx = prev_; }

void check_cancelled() {
  if (t_ctx && t_ctx->cancel && t_ctx->cancel->load()) throw Cancelled();
}

void report_step(int64_t done, int64_t total) {
  if (!t_ctx) return;
  if (t_ctx->progress) t_ctx->progress(done, total);
  check_cancelled();
}

std::shared_ptr<Model> peer_model(const std::string& role) {
  if (!t_ctx) return nullptr;
  auto it = t_ctx->models.find(role);
  return it == t_ctx->models.end() ? nullptr : it->second;
}

}  // namespace rt
