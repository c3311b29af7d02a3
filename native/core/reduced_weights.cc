#include "core/reduced_weights.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <atomic>

namespace rt {

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::atomic<int> g_holders{0};
constexpr auto kHook = c10::DispatchKey::DeferredInit;

bool reduced(const at::Tensor& t) {
  return t.defined() && (t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf);
}
// A reduced-precision weight meeting a full-precision input: the case this file handles.
bool mixed(const at::Tensor& x, const at::Tensor& w) {
  return reduced(w) && x.defined() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble);
}
bool wants_grad(const at::Tensor& x, const c10::optional<at::Tensor>& b) {
  return at::GradMode::is_enabled() && (x.requires_grad() || (b && b->defined() && b->requires_grad()));
}

// y = x·Wᵀ + b with W held reduced. Backward up-casts W again rather than saving its fp32 copy; W is frozen
// (hold_frozen_in converts only tensors without grad, setTrainable refuses reduced ones), so it gets no gradient.
struct UpcastLinear : torch::autograd::Function<UpcastLinear> {
  // x: [.., in], w: [out, in] reduced, b: [out] or undefined -> [.., out]
  // b is optional (not an undefined tensor): libtorch 1.13's Function::apply cannot take an undefined input.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b) {
    ctx->saved_data["w"] = w;
    ctx->saved_data["has_b"] = b.has_value();
    return at::linear(x, w.to(x.scalar_type()), b);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor w = ctx->saved_data["w"].toTensor();
    const at::Tensor& gy = grads[0];  // [.., out]
    at::Tensor gx, gb;
    if (ctx->needs_input_grad(0)) gx = at::matmul(gy, w.to(gy.scalar_type()));  // [.., in]
    // The bias is an input (edge 2) only when given.
    if (ctx->saved_data["has_b"].toBool() && ctx->needs_input_grad(2)) gb = gy.reshape({-1, gy.size(-1)}).sum(0);
    return {gx, at::Tensor(), gb};
  }
};

// conv2d with the kernel held reduced; backward: the input gradient as the transposed convolution
// (torch.nn.grad.conv2d_input's formula), the bias gradient as the sum over batch and space.
struct UpcastConv2d : torch::autograd::Function<UpcastConv2d> {
  // x: [N, Cin, H, W], w: [Cout, Cin/groups, kh, kw] reduced -> [N, Cout, H', W']
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                            std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups) {
    ctx->saved_data["w"] = w;
    ctx->saved_data["has_b"] = b.has_value();
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["groups"] = groups;
    return at::conv2d(x, w.to(x.scalar_type()), b, stride, padding, dilation, groups);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor w = ctx->saved_data["w"].toTensor();
    const auto xs = ctx->saved_data["x_sizes"].toIntVector();
    const auto stride = ctx->saved_data["stride"].toIntVector(), padding = ctx->saved_data["padding"].toIntVector(),
               dilation = ctx->saved_data["dilation"].toIntVector();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const at::Tensor& gy = grads[0];
    at::Tensor gx, gb;
    if (ctx->needs_input_grad(0)) {
      std::vector<int64_t> out_pad(2);
      for (int i = 0; i < 2; ++i)
        out_pad[i] = xs[2 + i] - ((gy.size(2 + i) - 1) * stride[i] - 2 * padding[i] + dilation[i] * (w.size(2 + i) - 1) + 1);
      gx = at::conv_transpose2d(gy, w.to(gy.scalar_type()), c10::nullopt, stride, padding, out_pad, groups, dilation);
    }
    if (ctx->saved_data["has_b"].toBool() && ctx->needs_input_grad(2)) gb = gy.sum({0, 2, 3});
    return {gx, at::Tensor(), gb, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// int[2] (libtorch 1.13) or SymInt[2] (2.x) argument.
std::vector<int64_t> int_list(const c10::IValue& v, size_t n) {
  std::vector<int64_t> out;
#if TORCH_VERSION_MAJOR >= 2
  if (!v.isIntList()) {
    for (const auto& s : v.toSymIntVector()) out.push_back(s.expect_int());
  } else
#endif
    out = v.toIntVector();
  if (out.size() == 1 && n > 1) out.assign(n, out[0]);
  return out;
}

// Boxed kernels (one form for libtorch 1.13's int and 2.x's SymInt schemas). Each runs below the hook: ops it
// calls do not come back here. Stack: the op's arguments, replaced by its result.
void linear_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  c10::impl::ExcludeDispatchKeyGuard below(kHook);
  auto args = torch::jit::last(*stack, 3);
  const at::Tensor x = args[0].toTensor(), w = args[1].toTensor();
  if (!mixed(x, w)) return op.callBoxed(stack);
  auto b = args[2].toOptional<at::Tensor>();
  if (b && !b->defined()) b = c10::nullopt;
  at::Tensor y = wants_grad(x, b) ? UpcastLinear::apply(x, w, b) : at::linear(x, w.to(x.scalar_type()), b);
  torch::jit::drop(*stack, 3);
  torch::jit::push(*stack, std::move(y));
}

void conv2d_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  c10::impl::ExcludeDispatchKeyGuard below(kHook);
  auto args = torch::jit::last(*stack, 7);
  const at::Tensor x = args[0].toTensor(), w = args[1].toTensor();
  if (!mixed(x, w)) return op.callBoxed(stack);
  auto b = args[2].toOptional<at::Tensor>();
  if (b && !b->defined()) b = c10::nullopt;
  const auto stride = int_list(args[3], 2), padding = int_list(args[4], 2), dilation = int_list(args[5], 2);
#if TORCH_VERSION_MAJOR >= 2
  const int64_t groups = args[6].isSymInt() ? args[6].toSymInt().expect_int() : args[6].toInt();
#else
  const int64_t groups = args[6].toInt();
#endif
  at::Tensor y = wants_grad(x, b) ? UpcastConv2d::apply(x, w, b, stride, padding, dilation, groups)
                                  : at::conv2d(x, w.to(x.scalar_type()), b, stride, padding, dilation, groups);
  torch::jit::drop(*stack, 7);
  torch::jit::push(*stack, std::move(y));
}

// embedding(weight, indices, ...): rows gathered in the held dtype, then up-cast (no gradient reaches a frozen table).
void embedding_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  c10::impl::ExcludeDispatchKeyGuard below(kHook);
  auto args = torch::jit::last(*stack, 5);
  const at::Tensor w = args[0].toTensor();
  if (!reduced(w) || w.requires_grad()) return op.callBoxed(stack);
  op.callBoxed(stack);
  at::Tensor y = torch::jit::pop(*stack).toTensor().to(at::kFloat);
  torch::jit::push(*stack, std::move(y));
}

// matmul(a, b) with b a reduced [K, N] matrix (soft tokens @ token_embedding.weight, features @ fc.weight.t()):
// the linear above with W = bᵀ, so backward keeps only the reduced matrix.
void matmul_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  c10::impl::ExcludeDispatchKeyGuard below(kHook);
  auto args = torch::jit::last(*stack, 2);
  const at::Tensor a = args[0].toTensor(), b = args[1].toTensor();
  at::Tensor y;
  if (mixed(a, b) && b.dim() == 2)
    y = wants_grad(a, c10::nullopt) ? UpcastLinear::apply(a, b.t(), c10::optional<at::Tensor>()) : at::matmul(a, b.to(a.scalar_type()));
  else if (mixed(b, a))
    y = at::matmul(a.to(b.scalar_type()), b);
  else
    return op.callBoxed(stack);
  torch::jit::drop(*stack, 2);
  torch::jit::push(*stack, std::move(y));
}

// addmm(bias, x, wᵀ): libtorch 1.13's torch::nn::Linear on a 2-D input with a bias calls addmm, not linear. With
// beta = alpha = 1 and a 1-D bias it is the linear above; other forms up-cast and run addmm as is.
void addmm_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  c10::impl::ExcludeDispatchKeyGuard below(kHook);
  auto args = torch::jit::last(*stack, 5);
  const at::Tensor self = args[0].toTensor(), m1 = args[1].toTensor(), m2 = args[2].toTensor();
  if (!mixed(m1, m2) || reduced(self)) return op.callBoxed(stack);
  const at::Scalar beta = args[3].toScalar(), alpha = args[4].toScalar();
  at::Tensor y;
  if (self.dim() == 1 && beta.toDouble() == 1.0 && alpha.toDouble() == 1.0 && wants_grad(m1, self))
    y = UpcastLinear::apply(m1, m2.t(), c10::optional<at::Tensor>(self));
  else
    y = at::addmm(self, m1, m2.to(m1.scalar_type()), beta, alpha);
  torch::jit::drop(*stack, 5);
  torch::jit::push(*stack, std::move(y));
}
}  // namespace

TORCH_LIBRARY_IMPL(aten, DeferredInit, m) {
  m.impl("addmm", torch::CppFunction::makeFromBoxedFunction<&addmm_kernel>());
  m.impl("linear", torch::CppFunction::makeFromBoxedFunction<&linear_kernel>());
  m.impl("conv2d", torch::CppFunction::makeFromBoxedFunction<&conv2d_kernel>());
  m.impl("embedding", torch::CppFunction::makeFromBoxedFunction<&embedding_kernel>());
  m.impl("matmul", torch::CppFunction::makeFromBoxedFunction<&matmul_kernel>());
}

void apply_reduced_weight_hook() {
  thread_local bool on = false;
  if (on || g_holders.load() == 0) return;
  c10::impl::tls_set_dispatch_key_included(kHook, true);
  on = true;
}

json hold_frozen_in(Model& model, at::ScalarType dtype) {
  if (dtype != at::kBFloat16 && dtype != at::kHalf) throw Error("frozenDtype: expected bf16 or fp16, got " + dtype_name(dtype));
  if (!model.device().is_cpu())
    throw Error("frozenDtype holds frozen weights reduced on CPU only; this model is on " + device_name(model.device()) +
                " (on CUDA use autocast: precision bf16/fp16)");
  if (model.frozen_dtype && *model.frozen_dtype != dtype)
    throw Error("frozenDtype: this model already holds its frozen weights in " + dtype_name(*model.frozen_dtype));
  at::NoGradGuard no_grad;
  int64_t before = 0, after = 0, tensors = 0;
  std::map<const void*, at::Tensor> converted;  // old data -> new tensor (tied parameters share one conversion)
  for (auto& item : model.named_parameters(true)) {
    at::Tensor& p = item.value();
    if (p.requires_grad() || p.dim() < 2 || p.scalar_type() != at::kFloat || p.numel() == 0) continue;
    const void* old_data = p.data_ptr();
    auto done = converted.find(old_data);
    if (done != converted.end() && done->second.sizes() == p.sizes()) {
      p.set_data(done->second);
      continue;
    }
    at::Tensor low = p.to(dtype, /*non_blocking=*/false, /*copy=*/true).contiguous();
    before += p.nbytes();
    after += low.nbytes();
    ++tensors;
    at::Tensor old = p.data();
    p.set_data(low);
    converted[old_data] = low;
    // The mapped fp32 pages stay resident until the file's last view goes (a trained tensor of the same file
    // keeps the mapping): hand them back now when nothing else reads them.
    if (old.storage().use_count() == 1) release_mapped_pages(old);
  }
  model.tie_weights();
  if (!model.frozen_dtype) ++g_holders;
  model.frozen_dtype = dtype;
  apply_reduced_weight_hook();
  return {{"tensors", tensors}, {"bytesBefore", before}, {"bytesAfter", after}, {"dtype", dtype_name(dtype)}};
}

}  // namespace rt
