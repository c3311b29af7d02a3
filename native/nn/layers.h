// Building blocks shared by every transformer in the project (BLIP, CLIP, ViT/DINO, BERT, UNet attention).
#pragma once
#include <torch/torch.h>

namespace rt::nn {

// x: [B, T, H*D] -> [B, H, T, D]
inline at::Tensor split_heads(const at::Tensor& x, int64_t heads) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
  return x.view({B, T, heads, C / heads}).permute({0, 2, 1, 3});
}

// x: [B, H, T, D] -> [B, T, H*D]
inline at::Tensor merge_heads(const at::Tensor& x) {
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3);
  return x.permute({0, 2, 1, 3}).reshape({B, T, H * D});
}

// Inference attention larger than this (scores bytes) runs in slices of heads.
constexpr int64_t kAttentionSliceBytes = 128LL << 20;

// softmax(q·kᵀ·scale + mask)·v. q: [B, H, Tq, D], k/v: [B, H, Tk, D], mask additive and broadcastable to
// [B, H, Tq, Tk] (undefined = none). The explicit path is the reference ("eager") computation; on
// libtorch >= 2.1 the fused kernel computes the same function (about 1e-6 apart).
inline at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask, double scale) {
#if (TORCH_VERSION_MAJOR > 2) || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  if (!q.device().is_cpu()) {
    c10::optional<at::Tensor> m;
    if (mask.defined()) m = mask.to(q.scalar_type());
    return at::scaled_dot_product_attention(q, k, v, m, 0.0, false, scale);
  }
#endif
  // The scale is folded into q ([.., Tq, D], smaller than the [.., Tq, Tk] scores whenever Tk > D) instead of a pass
  // over the scores; matmul, not baddbmm with beta=0 (libtorch 1.13 can read an uninitialised buffer there: NaN).
  if (!at::GradMode::is_enabled() && q.scalar_type() == at::kFloat && q.dim() == 4) {
    // Inference over long sequences (the SD UNet at 512²: [2, 8, 4096, 4096] scores = 1 GiB) runs in slices of
    // heads whose scores fit kAttentionSliceBytes, as diffusers' attention slicing: each slice is the same
    // computation, and the peak holds one slice's scores instead of all of them.
    const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), Tk = k.size(2);
    const int64_t per_head = Tq * Tk * static_cast<int64_t>(sizeof(float));
    if (B * H > 1 && B * H * per_head > kAttentionSliceBytes) {
      const int64_t step = std::max<int64_t>(1, kAttentionSliceBytes / per_head);
      at::Tensor out = at::empty({B, H, Tq, v.size(3)}, v.options());
      // mask: broadcastable to [B, H, Tq, Tk]; pick the slice's rows where it has them.
      auto part = [](const at::Tensor& t, int64_t b, int64_t h, int64_t n) {
        if (!t.defined()) return t;
        at::Tensor m = t.dim() == 4 ? t : t.view([&] {
          std::vector<int64_t> s(4 - t.dim(), 1);
          s.insert(s.end(), t.sizes().begin(), t.sizes().end());
          return s;
        }());
        m = m.size(0) == 1 ? m.select(0, 0) : m.select(0, b);
        return m.size(0) == 1 ? m : m.narrow(0, h, n);
      };
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; h += step) {
          const int64_t n = std::min(step, H - h);
          out.select(0, b).narrow(0, h, n).copy_(attention(q.select(0, b).narrow(0, h, n), k.select(0, b).narrow(0, h, n),
                                                           v.select(0, b).narrow(0, h, n), part(mask, b, h, n), scale));
        }
      return out;
    }
  }
  at::Tensor scores = at::matmul(q * scale, k.transpose(-1, -2));
  if (!at::GradMode::is_enabled() && scores.scalar_type() == at::kFloat) {
    // Inference: mask and softmax in place (row-wise max, exp-sum and normalise read each element before writing
    // it), so no second scores-sized buffer is allocated and faulted in per attention.
    if (mask.defined()) scores.add_(mask);
    at::_softmax_out(scores, scores, -1, false);
    return at::matmul(scores.to(v.scalar_type()), v);
  }
  if (mask.defined()) scores = scores + mask;
  // Softmax in float32 even under half precision autocast, as the references upcast.
  return at::matmul(scores.softmax(-1, at::kFloat).to(v.scalar_type()), v);
}

// Exact erf GELU (never the tanh approximation: that is ~1e-3 off the references).
inline at::Tensor gelu(const at::Tensor& x) { return at::gelu(x); }
// CLIP's quick GELU: x·sigmoid(1.702·x).
inline at::Tensor quick_gelu(const at::Tensor& x) { return x * at::sigmoid(1.702 * x); }

// The activation a config names ("gelu", "quick_gelu", "gelu_new" is rejected: not used by our models).
inline at::Tensor activation(const std::string& name, const at::Tensor& x) {
  if (name == "gelu") return rt::nn::gelu(x);
  if (name == "quick_gelu") return rt::nn::quick_gelu(x);
  if (name == "relu") return at::relu(x);
  if (name == "silu" || name == "swish") return at::silu(x);
  throw std::runtime_error("unsupported hidden_act '" + name + "' (supported: gelu, quick_gelu, relu, silu)");
}

// Additive mask value for blocked keys: finfo(dtype).min, as transformers uses.
inline double mask_min(at::ScalarType t) {
  return t == at::kHalf ? -65504.0 : t == at::kBFloat16 ? -3.3895313892515355e38 : t == at::kDouble ? -1.7976931348623157e308 : -3.4028234663852886e38;
}

}  // namespace rt::nn
