// Gradient checkpointing: run a block without keeping its activations and recompute it during backward
// (the reentrant form of torch.utils.checkpoint). Parameters used by the block receive their gradients
// during the recompute; the block must be deterministic (our models run without dropout).
#pragma once
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/torch.h>

#include <functional>

#include "core/autocast.h"

namespace rt::nn {

using BlockFn = std::function<at::Tensor(const std::vector<at::Tensor>&)>;

struct CheckpointBackward : torch::autograd::Node {
  BlockFn fn;
  std::vector<at::Tensor> inputs;  // detached: the only activations kept
  std::vector<bool> needs_grad;
  // The forward's autocast state: backward runs on autograd's thread, where it is not set.
  c10::optional<at::ScalarType> autocast;

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    rt::AutocastScope amp(autocast);
    std::vector<at::Tensor> leaves;
    for (size_t i = 0; i < inputs.size(); ++i)
      leaves.push_back(inputs[i].defined() ? inputs[i].detach().requires_grad_(needs_grad[i]) : at::Tensor());
    at::Tensor out;
    {
      at::AutoGradMode on(true);
      out = fn(leaves);
    }
    if (out.requires_grad()) torch::autograd::backward({out}, {grads[0]});
    torch::autograd::variable_list result;
    for (size_t i = 0; i < leaves.size(); ++i) result.push_back(needs_grad[i] ? leaves[i].grad() : at::Tensor());
    return result;
  }
  std::string name() const override { return "rt::CheckpointBackward"; }
};

// out = fn(inputs), keeping only `inputs` for backward. Without grad mode it is a plain call.
inline at::Tensor checkpoint(const BlockFn& fn, const std::vector<at::Tensor>& inputs) {
  if (!at::GradMode::is_enabled()) return fn(inputs);
  at::Tensor out;
  {
    at::NoGradGuard no_grad;
    out = fn(inputs);
  }
  auto node = std::shared_ptr<CheckpointBackward>(new CheckpointBackward(), torch::autograd::deleteNode);
  node->fn = fn;
  node->autocast = rt::current_autocast();
  for (auto& x : inputs) {
    node->inputs.push_back(x.defined() ? x.detach() : at::Tensor());
    node->needs_grad.push_back(x.defined() && x.requires_grad());
  }
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  // The output always needs a gradient edge: the block's own parameters may be trainable even when no
  // input requires grad.
  torch::autograd::set_history(out, node);
  return out;
}

}  // namespace rt::nn
