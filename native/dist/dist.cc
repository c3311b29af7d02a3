// c10d process group, ordered collectives and the bucketed gradient averager (see dist.h).
#include "dist/dist.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>

#include "core/common.h"

#if defined(RT_DIST_GLOO)
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#endif
#if defined(RT_DIST_NCCL)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace rt::dist {

std::vector<std::string> available_backends() {
  std::vector<std::string> out;
#if defined(RT_DIST_GLOO)
  out.push_back("gloo");
#endif
#if defined(RT_DIST_NCCL)
  out.push_back("nccl");
#endif
  return out;
}

Op parse_op(const std::string& name) {
  if (name == "sum") return Op::Sum;
  if (name == "avg") return Op::Avg;
  if (name == "min") return Op::Min;
  if (name == "max") return Op::Max;
  if (name == "product") return Op::Product;
  throw Error("distributed: reduce op '" + name + "' is not one of sum, avg, min, max, product");
}

std::string tensors_hash(const std::vector<at::Tensor>& tensors) {
  // FNV-1a over 64-bit words (bytes for the tail), shapes and dtypes included.
  uint64_t h = 1469598103934665603ull;
  const uint64_t prime = 1099511628211ull;
  auto mix = [&](uint64_t w) { h = (h ^ w) * prime; };
  for (const auto& t0 : tensors) {
    at::Tensor t = t0.detach().to(at::kCPU).contiguous();
    mix(static_cast<uint64_t>(t.scalar_type()));
    for (int64_t s : t.sizes()) mix(static_cast<uint64_t>(s));
    const auto* p = static_cast<const unsigned char*>(t.data_ptr());
    const size_t n = t.numel() * t.element_size();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      mix(w);
    }
    for (; i < n; ++i) mix(p[i]);
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

#if defined(RT_DIST_GLOO)

// libtorch 2.x runs collectives on a c10d::Backend (ProcessGroup became a dispatcher over backends);
// 1.13's ProcessGroupGloo is itself the ProcessGroup. Both have the same collective methods.
#if TORCH_VERSION_MAJOR >= 2
using BackendT = c10d::Backend;
#else
using BackendT = c10d::ProcessGroup;
#endif

namespace {

struct Group {
  Config config;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<BackendT> pg;
};

std::mutex g_mutex;  // guards g_group
std::shared_ptr<Group> g_group;

// Collective ordering: tickets are taken in JS call order; a collective is issued only on its turn.
std::mutex g_turn_mutex;
std::condition_variable g_turn_cv;
uint64_t g_next_ticket = 0;
uint64_t g_turn = 0;

std::shared_ptr<Group> group(const char* what) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_group) throw Error(std::string("distributed ") + what + ": no process group (call initDistributed() first)");
  return g_group;
}

// Holds the issuing turn of `ticket` for its lifetime; the next ticket may issue once it ends.
struct Turn {
  explicit Turn(uint64_t ticket) : ticket_(ticket) {
    std::unique_lock<std::mutex> lock(g_turn_mutex);
    g_turn_cv.wait(lock, [&] { return g_turn == ticket_; });
  }
  ~Turn() {
    {
      std::lock_guard<std::mutex> lock(g_turn_mutex);
      g_turn = ticket_ + 1;
    }
    g_turn_cv.notify_all();
  }
  uint64_t ticket_;
};

std::string where(const Group& g) {
  return "rank " + std::to_string(g.config.rank) + " of " + std::to_string(g.config.world_size);
}

[[noreturn]] void collective_failed(const Group& g, const char* what, const std::exception& e) {
  throw Error(std::string("distributed ") + what + " failed on " + where(g) + " (another rank exited, or none answered within " +
              std::to_string(static_cast<int>(g.config.timeout_seconds)) + " s): " + message_of(e));
}

c10d::ReduceOp reduce_op(Op op) {
  switch (op) {
    case Op::Sum:
    case Op::Avg: return c10d::ReduceOp::SUM;  // Gloo has no AVG: sum, then divide
    case Op::Min: return c10d::ReduceOp::MIN;
    case Op::Max: return c10d::ReduceOp::MAX;
    case Op::Product: return c10d::ReduceOp::PRODUCT;
  }
  return c10d::ReduceOp::SUM;
}

void wait_all(const Group& g, std::vector<c10::intrusive_ptr<c10d::Work>>& works, const char* what) {
  for (auto& w : works) {
    try {
      w->wait();
    } catch (const std::exception& e) {
      collective_failed(g, what, e);
    }
  }
}

// Collectives need dense contiguous tensors: anything else goes through a contiguous copy.
struct Staged {
  std::vector<at::Tensor> user, work;
  explicit Staged(std::vector<at::Tensor> tensors) : user(std::move(tensors)) {
    for (auto& t : user) work.push_back(t.is_contiguous() ? t.detach() : t.detach().contiguous());
  }
  void writeback() {
    for (size_t i = 0; i < user.size(); ++i)
      if (!user[i].is_contiguous()) user[i].detach().copy_(work[i]);
  }
};

}  // namespace

void init(const Config& c) {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_group) throw Error("initDistributed: already initialised (rank " + std::to_string(g_group->config.rank) + " of " + std::to_string(g_group->config.world_size) + ")");
  }
  if (c.world_size < 1) throw Error("initDistributed: world size " + std::to_string(c.world_size) + " is not >= 1");
  if (c.rank < 0 || c.rank >= c.world_size) throw Error("initDistributed: rank " + std::to_string(c.rank) + " is outside [0, " + std::to_string(c.world_size) + ")");
  if (c.master_port < 1 || c.master_port > 65535) throw Error("initDistributed: master port " + std::to_string(c.master_port) + " is not in 1..65535");
  if (c.backend != "gloo" && c.backend != "nccl") throw Error("initDistributed: backend '" + c.backend + "' is not gloo or nccl");
#if !defined(RT_DIST_NCCL)
  if (c.backend == "nccl") throw Error("initDistributed: backend 'nccl' is not in this build (it needs a CUDA libtorch 2.x with ProcessGroupNCCL headers); use 'gloo'");
#endif
  auto g = std::make_shared<Group>();
  g->config = c;
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(c.timeout_seconds * 1000));
  const std::string addr = c.master_addr + ":" + std::to_string(c.master_port);
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(c.master_port);
  so.isServer = c.rank == 0 && !c.agent_store;
  so.numWorkers = static_cast<size_t>(c.world_size);
  so.waitWorkers = true;
  so.timeout = timeout;
  try {
    // Our keys under a prefix of their own, as torch.distributed does (the store may be torchrun's).
    g->store = c10::make_intrusive<c10d::PrefixStore>("roundtrip/", c10::make_intrusive<c10d::TCPStore>(c.master_addr, so));
  } catch (const std::exception& e) {
    const std::string m = message_of(e);
    if (so.isServer && (m.find("in use") != std::string::npos || m.find("EADDRINUSE") != std::string::npos || m.find("bind") != std::string::npos))
      throw Error("distributed: rank 0 cannot listen on " + addr + ": the port is in use (another job?); choose another MASTER_PORT / --master-port (" + m + ")");
    if (so.isServer)
      throw Error("distributed: rank 0 at " + addr + ": not all " + std::to_string(c.world_size) + " ranks joined within " + std::to_string(static_cast<int>(c.timeout_seconds)) + " s (" + m + ")");
    throw Error("distributed: rank " + std::to_string(c.rank) + " could not reach the master at " + addr + " within " + std::to_string(static_cast<int>(c.timeout_seconds)) +
                " s (is rank 0 running there, are MASTER_ADDR/MASTER_PORT right and the port open?): " + m);
  }
  try {
    if (c.backend == "gloo") {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
      const bool loopback = c.master_addr == "localhost" || c.master_addr.rfind("127.", 0) == 0;
      if (ifname && *ifname) opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      else if (loopback) opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      else opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      opts->threads = std::max(1, c.gloo_threads);
      g->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(g->store, c.rank, c.world_size, opts);
    }
#if defined(RT_DIST_NCCL)
    else {
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      g->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(g->store, c.rank, c.world_size, opts);
    }
#endif
  } catch (const std::exception& e) {
    throw Error("distributed: rank " + std::to_string(c.rank) + " could not connect the " + c.backend + " group (" + addr + ", " + std::to_string(static_cast<int>(c.timeout_seconds)) + " s): " + message_of(e));
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  g_group = g;
}

void destroy() {
  std::shared_ptr<Group> g;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    g.swap(g_group);
  }
  // The group is released here (Gloo joins its threads); a collective still holding it keeps it alive.
}

bool initialized() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return static_cast<bool>(g_group);
}
int rank() { return initialized() ? group("rank")->config.rank : 0; }
int world_size() { return initialized() ? group("worldSize")->config.world_size : 1; }
std::string backend_name() { return initialized() ? group("backend")->config.backend : ""; }

uint64_t issue_ticket() {
  std::lock_guard<std::mutex> lock(g_turn_mutex);
  return g_next_ticket++;
}

void pass_turn(uint64_t ticket) { Turn pass(ticket); }

void all_reduce(std::vector<at::Tensor> tensors, Op op, uint64_t ticket) {
  // The turn is taken first and released once issued: an error anywhere still passes it on.
  std::optional<Turn> turn(std::in_place, ticket);
  std::shared_ptr<Group> g;
  Staged staged(std::move(tensors));
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  {
    g = group("allReduce");
    if (op == Op::Avg)
      for (auto& t : staged.work)
        if (!at::isFloatingType(t.scalar_type())) throw Error("distributed allReduce: 'avg' needs floating-point tensors, got " + dtype_name(t.scalar_type()));
    c10d::AllreduceOptions o;
    o.reduceOp = reduce_op(op);
    try {
      for (auto& t : staged.work) {
        std::vector<at::Tensor> one{t};
        works.push_back(g->pg->allreduce(one, o));
      }
    } catch (const std::exception& e) {
      collective_failed(*g, "allReduce", e);
    }
  }
  turn.reset();
  wait_all(*g, works, "allReduce");
  at::NoGradGuard no_grad;
  if (op == Op::Avg)
    for (auto& t : staged.work) t.div_(g->config.world_size);
  staged.writeback();
}

void broadcast(std::vector<at::Tensor> tensors, int src, uint64_t ticket) {
  std::optional<Turn> turn(std::in_place, ticket);
  std::shared_ptr<Group> g;
  Staged staged(std::move(tensors));
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  {
    g = group("broadcast");
    if (src < 0 || src >= g->config.world_size) throw Error("distributed broadcast: source rank " + std::to_string(src) + " is outside [0, " + std::to_string(g->config.world_size) + ")");
    c10d::BroadcastOptions o;
    o.rootRank = src;
    try {
      for (auto& t : staged.work) {
        std::vector<at::Tensor> one{t};
        works.push_back(g->pg->broadcast(one, o));
      }
    } catch (const std::exception& e) {
      collective_failed(*g, "broadcast", e);
    }
  }
  turn.reset();
  wait_all(*g, works, "broadcast");
  staged.writeback();
}

void barrier(uint64_t ticket, double timeout_seconds) {
  std::shared_ptr<Group> g;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  {
    Turn turn(ticket);
    g = group("barrier");
    c10d::BarrierOptions o;
    if (timeout_seconds > 0) o.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_seconds * 1000));
    try {
      works.push_back(g->pg->barrier(o));
    } catch (const std::exception& e) {
      collective_failed(*g, "barrier", e);
    }
  }
  wait_all(*g, works, "barrier");
}

namespace {
using Clock = std::chrono::steady_clock;

// Total length of the union of [start, end] intervals, and of its part before `cut`.
std::pair<double, double> union_length(std::vector<std::pair<double, double>> iv, double cut) {
  std::sort(iv.begin(), iv.end());
  double total = 0, before = 0, s = 0, e = -1;
  auto close = [&] {
    if (e > s) {
      total += e - s;
      before += std::max(0.0, std::min(e, cut) - s);
    }
  };
  for (auto& [a, b] : iv) {
    if (b < a) continue;
    if (a > e) {
      close();
      s = a;
      e = b;
    } else e = std::max(e, b);
  }
  close();
  return {total, before};
}
}  // namespace

// Everything the gradient-ready hooks touch; they hold it weakly, so a destroyed GradSync turns them into no-ops.
struct GradSync::State {
  std::mutex m;
  GradSync* owner = nullptr;
  bool armed = false;
  std::optional<Turn> turn;  // the step's collective turn, from arm()/finish() until everything is issued
  std::shared_ptr<Group> g;
  int64_t key = 0;
  std::vector<size_t> bucket_of;  // parameter -> bucket
  std::vector<int> fired, expected;  // per parameter: accumulator firings this backward, and how many to wait for
  std::map<int64_t, std::vector<int>> learned;  // graph key -> firings seen
  std::vector<int> pending;  // per bucket: parameters still to fire
  std::vector<char> launched, stale;
  size_t next = 0;  // buckets launch in order: the next one to launch
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;  // kept alive: the hooks live on them
  std::vector<uintptr_t> hook_keys;
  // Timing: [launch, completion] of each bucket all-reduce, seconds since t0 (completion from the work's future).
  std::mutex tm;
  std::vector<std::pair<double, double>> intervals;
  Clock::time_point t0;
  int64_t bytes = 0, in_backward = 0, rereduced = 0;

  double now() const { return std::chrono::duration<double>(Clock::now() - t0).count(); }

  // Starts a step's bookkeeping (m held).
  void begin(uint64_t ticket, int64_t graph_key) {
    turn.emplace(ticket);
    g = group("gradient all-reduce");
    key = graph_key;
    const size_t P = bucket_of.size(), B = owner->buckets_.size();
    fired.assign(P, 0);
    auto it = learned.find(key);
    if (it != learned.end()) expected = it->second;
    else {
      expected.assign(P, 0);
      for (size_t i = 0; i < P; ++i) expected[i] = accumulators[i] ? 1 : 0;
    }
    pending.assign(B, 0);
    for (size_t i = 0; i < P; ++i)
      if (expected[i] > 0) pending[bucket_of[i]]++;
    launched.assign(B, 0);
    stale.assign(B, 0);
    works.assign(B, {});
    next = 0;
    t0 = Clock::now();
    {
      std::lock_guard<std::mutex> lock(tm);
      intervals.clear();
    }
    bytes = in_backward = rereduced = 0;
  }

  // Packs bucket b from the current gradients (zeros for none) and starts its all-reduce (m and the turn held).
  void launch(size_t b) {
    at::NoGradGuard no_grad;
    auto& bk = owner->buckets_[b];
    for (size_t k = 0; k < bk.params.size(); ++k) {
      at::Tensor slot = bk.flat.narrow(0, bk.offsets[k], bk.offsets[k + 1] - bk.offsets[k]);
      const at::Tensor& grad = owner->params_[bk.params[k]].grad();
      if (grad.defined()) slot.view(owner->params_[bk.params[k]].sizes()).copy_(grad);
      else slot.zero_();
    }
    size_t slot;
    {
      std::lock_guard<std::mutex> lock(tm);
      slot = intervals.size();
      intervals.emplace_back(now(), -1.0);
    }
    c10d::AllreduceOptions o;
    std::vector<at::Tensor> one{bk.flat};
    c10::intrusive_ptr<c10d::Work> w;
    try {
      w = g->pg->allreduce(one, o);
    } catch (const std::exception& e) {
      collective_failed(*g, "gradient all-reduce", e);
    }
    try {
      // The completion time, for the in-flight measure (a backend without futures leaves it to finish()).
      std::weak_ptr<State> self = owner->state_;
      w->getFuture()->addCallback([self, slot](c10::ivalue::Future&) {
        if (auto st = self.lock()) {
          std::lock_guard<std::mutex> lock(st->tm);
          if (slot < st->intervals.size() && st->intervals[slot].second < 0) st->intervals[slot].second = st->now();
        }
      });
    } catch (const std::exception&) {
    }
    works[b] = w;
    launched[b] = 1;
    bytes += bk.flat.numel() * bk.flat.element_size();
  }

  // Launches the ready buckets at the front, in order (m held, armed).
  void advance() {
    while (next < pending.size() && pending[next] == 0) {
      launch(next++);
      in_backward++;
    }
  }

  // Gradient-ready hook of parameter i (autograd's thread).
  void fire(size_t i) {
    std::lock_guard<std::mutex> lock(m);
    if (!armed || !owner) return;
    const size_t b = bucket_of[i];
    if (++fired[i] > expected[i]) {
      // More firings than expected (a recompute): a launched bucket holds a partial gradient.
      if (launched[b]) stale[b] = 1;
      return;
    }
    if (fired[i] == expected[i] && --pending[b] == 0) advance();
  }
};

namespace {
struct ReadyHook : torch::autograd::FunctionPostHook {
  ReadyHook(std::weak_ptr<GradSync::State> s, size_t i) : st(std::move(s)), index(i) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) override {
    if (auto s = st.lock()) s->fire(index);
    return outputs;
  }
  std::weak_ptr<GradSync::State> st;
  size_t index;
};
}  // namespace

GradSync::GradSync(std::vector<at::Tensor> params, int64_t bucket_bytes, bool overlap) : params_(std::move(params)), overlap_(overlap) {
  if (bucket_bytes < 1) throw Error("GradSync: bucket size " + std::to_string(bucket_bytes) + " bytes is not >= 1");
  // Buckets in reverse parameter order (the order backward produces gradients), split by device/dtype and size;
  // the first one small (DDP: 1 MiB) so the first all-reduce starts early. Each flat buffer is allocated once.
  const int64_t first_bytes = std::min<int64_t>(bucket_bytes, int64_t(1) << 20);
  state_ = std::make_shared<State>();
  state_->owner = this;
  state_->bucket_of.assign(params_.size(), 0);
  Bucket cur;
  int64_t cur_bytes = 0;
  auto flush = [&](const at::Tensor& like) {
    if (cur.params.empty()) return;
    cur.flat = at::zeros({cur.offsets.back()}, like.options().requires_grad(false));
    buckets_.push_back(std::move(cur));
    cur = Bucket();
    cur_bytes = 0;
  };
  const at::Tensor* prev = nullptr;
  for (size_t k = params_.size(); k-- > 0;) {
    const size_t i = k;
    const at::Tensor& p = params_[i];
    if (!at::isFloatingType(p.scalar_type())) throw Error("GradSync: parameter " + std::to_string(i) + " is " + dtype_name(p.scalar_type()) + ", not floating point");
    const int64_t bytes = p.numel() * p.element_size();
    const int64_t cap = buckets_.empty() ? first_bytes : bucket_bytes;
    if (prev && (prev->device() != p.device() || prev->scalar_type() != p.scalar_type() || cur_bytes + bytes > cap)) flush(*prev);
    if (cur.offsets.empty()) cur.offsets.push_back(0);
    state_->bucket_of[i] = buckets_.size();
    cur.params.push_back(i);
    cur.offsets.push_back(cur.offsets.back() + p.numel());
    cur_bytes += bytes;
    prev = &p;
  }
  if (prev) flush(*prev);
  state_->accumulators.assign(params_.size(), nullptr);
  state_->hook_keys.assign(params_.size(), 0);
  if (!overlap_) return;
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i];
    if (!p.requires_grad() || !p.is_leaf()) continue;  // never gets a gradient of its own
    auto acc = torch::autograd::impl::grad_accumulator(p);
    if (!acc) continue;
    state_->hook_keys[i] = acc->add_post_hook(std::make_unique<ReadyHook>(state_, i));
    state_->accumulators[i] = std::move(acc);
  }
}

GradSync::~GradSync() {
  std::lock_guard<std::mutex> lock(state_->m);
  state_->owner = nullptr;
  state_->armed = false;
  state_->turn.reset();
  for (size_t i = 0; i < state_->accumulators.size(); ++i)
    if (state_->accumulators[i]) state_->accumulators[i]->del_post_hook(state_->hook_keys[i]);
}

std::vector<int64_t> GradSync::bucket_sizes() const {
  std::vector<int64_t> out;
  for (auto& b : buckets_) out.push_back(b.flat.numel() * b.flat.element_size());
  return out;
}

void GradSync::arm(uint64_t ticket, int64_t graph_key) {
  if (!overlap_) return;
  std::lock_guard<std::mutex> lock(state_->m);
  if (state_->armed) throw Error("GradSync: armed twice without finish()");
  state_->begin(ticket, graph_key);
  state_->armed = true;
  try {
    state_->advance();  // buckets with nothing to wait for (learned: no gradient in this graph)
  } catch (...) {
    state_->armed = false;
    state_->turn.reset();
    throw;
  }
}

void GradSync::abandon(uint64_t ticket) {
  std::unique_lock<std::mutex> lock(state_->m);
  if (state_->turn) {
    state_->armed = false;
    state_->turn.reset();
    return;
  }
  lock.unlock();
  pass_turn(ticket);
}

// Launches what is left (all buckets when not armed), re-reduces stale buckets, then `small`; waits; returns
// with the buckets summed (not yet unpacked) and `small` summed in place.
at::Tensor GradSync::finish_impl(at::Tensor small, uint64_t ticket) {
  State& st = *state_;
  std::unique_lock<std::mutex> lock(st.m);
  const bool was_armed = st.armed;
  st.armed = false;
  std::vector<c10::intrusive_ptr<c10d::Work>> rest;
  double t_finish = 0;
  try {
    if (!was_armed) st.begin(ticket, 0);
    t_finish = st.now();
    for (size_t b = st.next; b < buckets_.size(); ++b) st.launch(b);
    st.next = buckets_.size();
    for (size_t b = 0; b < buckets_.size(); ++b) {
      if (!st.stale[b]) continue;
      // The launched all-reduce read a partial gradient: reduce the bucket again once it is done.
      try {
        st.works[b]->wait();
      } catch (const std::exception& e) {
        collective_failed(*st.g, "gradient all-reduce", e);
      }
      st.launch(b);
      st.rereduced++;
    }
    if (was_armed) st.learned[st.key] = st.fired;
    std::vector<at::Tensor> one{small};
    rest.push_back(st.g->pg->allreduce(one, c10d::AllreduceOptions()));
    st.bytes += small.numel() * small.element_size();
  } catch (const std::exception& e) {
    st.turn.reset();
    if (dynamic_cast<const Error*>(&e)) throw;
    collective_failed(*st.g, "gradient all-reduce", e);
  }
  st.turn.reset();
  auto g = st.g;
  for (auto& w : st.works) rest.push_back(w);
  lock.unlock();
  wait_all(*g, rest, "gradient all-reduce");
  const double t_end = st.now();
  {
    std::lock_guard<std::mutex> tl(st.tm);
    for (auto& iv : st.intervals)
      if (iv.second < 0) iv.second = t_end;  // no completion callback: counted to the end
    auto [total, before] = union_length(st.intervals, t_finish);
    last_comm_seconds = total;
    last_hidden_seconds = before;
  }
  last_bytes = st.bytes;
  last_launched_in_backward = st.in_backward;
  last_rereduced = st.rereduced;
  return small;
}

void GradSync::unpack(const std::function<bool(size_t)>& give_missing, int world) {
  at::NoGradGuard no_grad;
  const double inv = 1.0 / world;
  for (auto& b : buckets_) {
    b.flat.mul_(inv);
    for (size_t k = 0; k < b.params.size(); ++k) {
      at::Tensor& p = params_[b.params[k]];
      const bool has = p.grad().defined();
      if (!has && !give_missing(b.params[k])) continue;
      at::Tensor avg = b.flat.narrow(0, b.offsets[k], b.offsets[k + 1] - b.offsets[k]).view(p.sizes());
      if (has) p.mutable_grad().copy_(avg);
      else p.mutable_grad() = avg.clone();
    }
  }
}

std::vector<double> GradSync::finish(const std::vector<double>& extras, uint64_t ticket) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto t0 = Clock::now();
  // Extras, then one presence count per parameter (who has a gradient), in float64 on the first parameter's
  // device (NCCL reduces device memory only).
  at::Tensor small;
  try {
    const at::Device dev = params_.empty() ? at::Device(at::kCPU) : params_[0].device();
    std::vector<double> host(extras);
    for (auto& p : params_) host.push_back(p.grad().defined() ? 1.0 : 0.0);
    small = at::tensor(host, at::TensorOptions().dtype(at::kDouble)).to(dev);
  } catch (...) {
    abandon(ticket);  // later collectives must not wait for this one
    throw;
  }
  finish_impl(small, ticket);
  at::Tensor counts = small.to(at::kCPU);
  const double* c = counts.data_ptr<double>();
  const size_t n = extras.size();
  unpack([&](size_t i) { return c[n + i] > 0; }, group("gradient all-reduce")->config.world_size);
  last_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return std::vector<double>(c, c + n);
}

at::Tensor GradSync::finish(const at::Tensor& extras, uint64_t ticket) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto t0 = Clock::now();
  at::Tensor small;
  try {
    const at::Device dev = params_.empty() ? extras.device() : params_[0].device();
    std::vector<double> counts;
    for (auto& p : params_) counts.push_back(p.grad().defined() ? 1.0 : 0.0);
    small = at::cat({extras.detach().reshape({-1}).to(dev, at::kDouble), at::tensor(counts, at::TensorOptions().dtype(at::kDouble)).to(dev)});
  } catch (...) {
    abandon(ticket);
    throw;
  }
  finish_impl(small, ticket);
  unpack([](size_t) { return false; }, group("gradient all-reduce")->config.world_size);
  last_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return small;
}

#else  // no Gloo headers at build time: refuse by name

namespace {
[[noreturn]] void refuse(const char* what) {
  throw Error(std::string("distributed ") + what +
              ": this build of roundtrip has no c10d support (the Gloo headers were not found when it was compiled; "
              "install libgloo-dev and rebuild: npx cmake-js compile)");
}
}  // namespace
void init(const Config&) { refuse("initDistributed"); }
void destroy() {}
bool initialized() { return false; }
int rank() { return 0; }
int world_size() { return 1; }
std::string backend_name() { return ""; }
uint64_t issue_ticket() { return 0; }
void pass_turn(uint64_t) {}
void all_reduce(std::vector<at::Tensor>, Op, uint64_t) { refuse("allReduce"); }
void broadcast(std::vector<at::Tensor>, int, uint64_t) { refuse("broadcast"); }
void barrier(uint64_t, double) { refuse("barrier"); }
struct GradSync::State {};
GradSync::GradSync(std::vector<at::Tensor>, int64_t, bool) { refuse("GradSync"); }
GradSync::~GradSync() = default;
std::vector<int64_t> GradSync::bucket_sizes() const { return {}; }
void GradSync::arm(uint64_t, int64_t) { refuse("GradSync"); }
void GradSync::abandon(uint64_t) {}
std::vector<double> GradSync::finish(const std::vector<double>&, uint64_t) { refuse("GradSync"); }
at::Tensor GradSync::finish(const at::Tensor&, uint64_t) { refuse("GradSync"); }
at::Tensor GradSync::finish_impl(at::Tensor, uint64_t) { refuse("GradSync"); }
void GradSync::unpack(const std::function<bool(size_t)>&, int) { refuse("GradSync"); }

#endif

}  // namespace rt::dist
