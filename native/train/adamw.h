// AdamW state of one parameter group (PyTorch's torch.optim.AdamW update, non-foreach path) and global-norm
// gradient clipping, shared by the JS optimizer handle (native/core/optim.cc) and the native training step
// (native/train/joint.cc), so both update parameters with the same code.
#pragma once
#include <mutex>
#include <vector>

#include "core/common.h"

namespace rt::train {

struct AdamWState {
  std::vector<at::Tensor> params, exp_avg, exp_avg_sq;
  double lr = 1e-4, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
  int64_t step = 0;
  std::mutex mutex;

  // One update of every parameter that has a gradient (PyTorch skips those without). Caller holds `mutex`.
  void update() {
    at::NoGradGuard no_grad;
    step++;
    const double bc1 = 1 - std::pow(beta1, step), bc2 = 1 - std::pow(beta2, step);
    for (size_t i = 0; i < params.size(); ++i) {
      at::Tensor& p = params[i];
      const at::Tensor& g = p.grad();
      if (!g.defined()) continue;
      if (!exp_avg[i].defined()) {
        exp_avg[i] = at::zeros_like(p, at::MemoryFormat::Preserve);
        exp_avg_sq[i] = at::zeros_like(p, at::MemoryFormat::Preserve);
      }
      p.mul_(1 - lr * weight_decay);                               // decoupled weight decay
      exp_avg[i].lerp_(g, 1 - beta1);                              // m = b1·m + (1−b1)·g
      exp_avg_sq[i].mul_(beta2).addcmul_(g, g, 1 - beta2);         // v = b2·v + (1−b2)·g²
      at::Tensor denom = (exp_avg_sq[i].sqrt() / std::sqrt(bc2)).add_(eps);
      p.addcdiv_(exp_avg[i], denom, -lr / bc1);
    }
  }
  void zero_grad() {
    for (auto& p : params) p.mutable_grad() = at::Tensor();  // set_to_none, as PyTorch 2 defaults
  }
};

// L2 norm of the gradients of `params` as a 0-d float tensor on `device` (missing gradients count as zero).
inline at::Tensor grad_norm(const std::vector<at::Tensor>& params, const at::Device& device) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> norms;
  for (auto& p : params)
    if (p.grad().defined()) norms.push_back(p.grad().detach().norm(2).to(device, at::kFloat));
  if (norms.empty()) return at::zeros({}, at::TensorOptions().device(device).dtype(at::kFloat));
  return at::stack(norms).norm(2);
}

// Scales the gradients so their joint norm `total` is at most `max_norm` (torch.nn.utils.clip_grad_norm_).
inline void clip_grads(const std::vector<at::Tensor>& params, const at::Tensor& total, double max_norm) {
  at::NoGradGuard no_grad;
  at::Tensor coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
  for (auto& p : params)
    if (p.grad().defined()) p.mutable_grad().mul_(coef.to(p.grad().device()));
}

}  // namespace rt::train
