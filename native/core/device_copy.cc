#include "core/device_copy.h"

#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <cstring>
#include <thread>

namespace rt {

namespace {
constexpr int64_t kStagingBytes = 32LL << 20;  // per buffer: large enough for full-speed DMA, small beside the weights

// Two pinned buffers used in turn; a buffer is refilled only after the copy that read it has finished.
class PinnedStager {
 public:
  PinnedStager(const at::Device& device, c10::Stream stream) : stream_(stream) {
    events_.reserve(2);
    for (int i = 0; i < 2; ++i) {
      buffers_[i] = at::empty({kStagingBytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
      events_.emplace_back(device.type());
    }
  }

  // Copies `src` (CPU, contiguous) into `dst` (device, contiguous, same bytes) through the buffers.
  void copy(const at::Tensor& src, const at::Tensor& dst) {
    const auto* from = static_cast<const uint8_t*>(src.data_ptr());
    at::Tensor to = dst.view({-1}).view(at::kByte);  // [nbytes]
    const int64_t total = static_cast<int64_t>(src.nbytes());
    for (int64_t off = 0; off < total; off += kStagingBytes) {
      const int64_t n = std::min(kStagingBytes, total - off);
      c10::Event& ev = events_[slot_];
      // The buffer's previous copy must be done before it is overwritten (the other buffer's may still run).
      if (ev.was_marked_for_recording())
        while (!ev.query()) std::this_thread::yield();
      std::memcpy(buffers_[slot_].data_ptr(), from + off, static_cast<size_t>(n));  // reads (faults in) the file
      {
        c10::StreamGuard on_side(stream_);
        to.narrow(0, off, n).copy_(buffers_[slot_].narrow(0, 0, n), /*non_blocking=*/true);
      }
      ev.record(stream_);
      slot_ ^= 1;
    }
  }

 private:
  c10::Stream stream_;
  at::Tensor buffers_[2];
  std::vector<c10::Event> events_;
  int slot_ = 0;
};
}  // namespace

void move_model_to(Model& model, const at::Device& device) {
  if (!device.is_cuda()) {
    model.to(device);
    model.tie_weights();
    return;
  }
  c10::impl::VirtualGuardImpl impl(device.type());
  const at::Device target = device.has_index() ? device : at::Device(device.type(), impl.getDevice().index());
  c10::DeviceGuard on_device(target);
  const c10::Stream side = impl.getStreamFromGlobalPool(target);
  PinnedStager stager(target, side);
  at::NoGradGuard no_grad;
  std::map<const void*, at::Tensor> moved;  // source data -> device copy (tied tensors share one)
  auto move = [&](at::Tensor& t) {
    if (!t.defined() || !t.device().is_cpu()) return;
    const void* key = t.numel() ? t.data_ptr() : nullptr;
    auto it = key ? moved.find(key) : moved.end();
    if (it != moved.end() && it->second.sizes() == t.sizes() && it->second.scalar_type() == t.scalar_type()) {
      t.set_data(it->second);
      return;
    }
    const at::Tensor src = t.contiguous();
    at::Tensor dst = at::empty(src.sizes(), src.options().device(target));
    // The copies run on the side stream: the allocator must not hand this block out again before they finish.
    impl.recordDataPtrOnStream(dst.storage().data_ptr(), side);
    if (src.nbytes() > 0) stager.copy(src, dst);
    t.set_data(dst);
    if (key) moved[key] = dst;
  };
  try {
    for (auto& p : model.parameters(true)) move(p);
    for (auto& b : model.buffers(true)) move(b);
  } catch (...) {
    impl.synchronizeStream(side);  // no copy may still read a buffer being freed
    throw;
  }
  // One host synchronisation: everything is on the device before the model is used (on any stream).
  impl.synchronizeStream(side);
  model.tie_weights();
}

}  // namespace rt
