// Data-parallel collectives on PyTorch's c10d: a process group (TCPStore rendezvous + Gloo on CPU,
// NCCL on CUDA builds of libtorch 2.x) and GradSync, the bucketed gradient averager a training step
// calls after backward. Built only where the Gloo headers were found (RT_DIST_GLOO); elsewhere every
// entry point refuses by name.
#pragma once
#include <torch/torch.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>
#include <functional>

namespace rt::dist {

struct Config {
  int rank = 0;
  int world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // Rendezvous and every collective give up after this long (a dead or unreachable peer).
  double timeout_seconds = 300;
  std::string backend = "gloo";  // "gloo" | "nccl"
  // Gloo's worker threads (each runs one pending collective).
  int gloo_threads = 2;
  // Rank 0 hosts the TCPStore, unless an agent already does (torchrun: TORCHELASTIC_USE_AGENT_STORE).
  bool agent_store = false;
};

// Backends compiled into this build ("gloo", "nccl").
std::vector<std::string> available_backends();

// The process-wide group. init() blocks until every rank has joined (or the timeout passes).
void init(const Config& c);
void destroy();
bool initialized();
int rank();
int world_size();
std::string backend_name();

enum class Op { Sum, Avg, Min, Max, Product };
Op parse_op(const std::string& name);

// Collectives, in place, blocking the calling thread. Every rank must issue the same collectives in
// the same order: `ticket` (from issue_ticket(), taken on the JS thread) fixes that order even when
// calls run on different worker threads.
uint64_t issue_ticket();
// Gives up a ticket's turn without a collective (its call failed before issuing one).
void pass_turn(uint64_t ticket);
void all_reduce(std::vector<at::Tensor> tensors, Op op, uint64_t ticket);
void broadcast(std::vector<at::Tensor> tensors, int src, uint64_t ticket);
// timeout_seconds <= 0: the group's timeout.
void barrier(uint64_t ticket, double timeout_seconds = 0);

// A 64-bit FNV-1a hash of the tensors' bytes, shapes and dtypes (rank agreement checks).
std::string tensors_hash(const std::vector<at::Tensor>& tensors);

// Averages the gradients of a fixed list of parameters across ranks, as PyTorch DDP's c10d::Reducer does:
// the parameters are grouped into flat buckets (allocated once, per device and dtype) in REVERSE order
// (backward produces the last layers' gradients first), the first bucket at most min(1 MiB, `bucket_bytes`)
// and the others at most `bucket_bytes` (DDP's first-bucket and bucket_cap_mb defaults). With `overlap`,
// gradient-ready hooks on the parameters' gradient accumulators pack a bucket as soon as all of its
// parameters are accumulated during the backward pass the caller arm()s (the last micro-batch's: earlier
// micro-batches only accumulate, like DDP's no_sync), and launch its asynchronous all-reduce while backward
// goes on; buckets launch strictly in bucket order, so every rank issues the same collectives in the same
// order. finish() launches what backward left (parameters it did not reach), waits for all, and unpacks
// each bucket ÷ world size. Without overlap (or when not armed) finish() packs and launches every bucket
// after backward. A parameter with no gradient on any rank keeps none (AdamW skips it, as in one process).
// `extras` (losses, flags) ride along in one small float64 all-reduce after the buckets, summed.
//
// A parameter used by several checkpointed blocks gets its gradient accumulated once per recompute: its
// accumulator fires more than once per backward. Each parameter's expected number of firings is learned per
// graph key (the caller's: the active loss terms); a firing after its bucket was launched marks the bucket
// stale, and finish() reduces it again once the launched all-reduce is done (ranks run the same graph, so
// they re-reduce the same buckets). The next step with that key then waits for every firing.
class GradSync {
 public:
  GradSync(std::vector<at::Tensor> params, int64_t bucket_bytes, bool overlap = true);
  ~GradSync();
  // One step without overlap: averages grads, returns the extras summed over ranks.
  std::vector<double> finish(const std::vector<double>& extras, uint64_t ticket);
  // The same inside a native training step, without a host sync: `extras` (a 1-D tensor on the parameters'
  // device) comes back summed, followed by one count per parameter of the ranks that had a gradient. Here a
  // parameter without a local gradient keeps none; the caller checks the counts are all 0 or W.
  at::Tensor finish(const at::Tensor& extras, uint64_t ticket);
  // Overlap: the next backward (until finish) launches buckets as their gradients become ready. Takes the
  // collective turn of `ticket` (held until finish() has issued everything). No-op without overlap.
  void arm(uint64_t ticket, int64_t graph_key);
  // A step failed between arm() (or the ticket's issue) and finish(): gives up the turn so later collectives
  // are not blocked (the other ranks then fail in their all-reduce, naming it).
  void abandon(uint64_t ticket);
  bool overlap() const { return overlap_; }

  // Last step: wall seconds of finish() (after backward: launching what was left, waiting, unpacking) — the
  // communication time backward did not hide; seconds with at least one bucket all-reduce in flight (from its
  // launch to its completion, as the backend reports it), and the part of those that fell before finish();
  // bytes all-reduced (per rank, re-reductions included); buckets launched during backward; stale re-reductions.
  double last_seconds = 0;
  double last_comm_seconds = 0;
  double last_hidden_seconds = 0;
  int64_t last_bytes = 0;
  int64_t last_launched_in_backward = 0;
  int64_t last_rereduced = 0;
  int64_t bucket_count() const { return static_cast<int64_t>(buckets_.size()); }
  std::vector<int64_t> bucket_sizes() const;

  struct State;  // shared with the hooks (dist.cc)

 private:
  struct Bucket {
    at::Tensor flat;
    std::vector<size_t> params;  // indices into params_
    std::vector<int64_t> offsets;
  };
  // Launches what is left, waits; `small` comes back summed, the buckets summed but not yet unpacked.
  at::Tensor finish_impl(at::Tensor small, uint64_t ticket);
  void unpack(const std::function<bool(size_t)>& give_missing, int world);
  std::vector<at::Tensor> params_;
  std::vector<Bucket> buckets_;
  bool overlap_ = true;
  std::shared_ptr<State> state_;
  std::mutex mutex_;
};

}  // namespace rt::dist
