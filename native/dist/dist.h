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

// Averages the gradients of a fixed list of parameters across ranks: grads are packed into a few
// flat buckets (allocated once, per device and dtype, at most `bucket_bytes` each), every bucket's
// all-reduce is started as soon as it is packed (Gloo works on one while the next is packed), then
// each is unpacked ÷ world size. A parameter with no gradient on any rank keeps none (AdamW skips
// it, as in one process); one with a gradient on some ranks only gets zeros from the others.
// `extras` (losses, flags) ride along in one small float64 all-reduce and come back summed.
class GradSync {
 public:
  GradSync(std::vector<at::Tensor> params, int64_t bucket_bytes);
  // One step: averages grads, returns the extras summed over ranks.
  std::vector<double> finish(const std::vector<double>& extras, uint64_t ticket);
  // The same inside a native training step, without a host sync: `extras` (a 1-D tensor on the parameters'
  // device) comes back summed, followed by one count per parameter of the ranks that had a gradient. Here a
  // parameter without a local gradient keeps none; the caller checks the counts are all 0 or W.
  at::Tensor finish(const at::Tensor& extras, uint64_t ticket);
  // Last step's wall time in the collective part and the bytes all-reduced (per rank).
  double last_seconds = 0;
  int64_t last_bytes = 0;
  int64_t bucket_count() const { return static_cast<int64_t>(buckets_.size()); }

 private:
  struct Bucket {
    at::Tensor flat;
    std::vector<size_t> params;  // indices into params_
    std::vector<int64_t> offsets;
  };
  // Packs and all-reduces every bucket and `small` (in place), then waits; grads are not touched yet.
  std::shared_ptr<void> reduce(at::Tensor& small, uint64_t ticket);
  // Copies the averaged buckets into the grads; a parameter without one gets it only if give_missing(i).
  void unpack(const std::function<bool(size_t)>& give_missing, int world);
  std::vector<at::Tensor> params_;
  std::vector<Bucket> buckets_;
  std::mutex mutex_;
};

}  // namespace rt::dist
