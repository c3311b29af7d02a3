// Building blocks shared by the Stable Diffusion UNet (unet.cc) and VAE (vae.cc), following diffusers 0.25.1
// (models/resnet.py, attention_processor.py, attention.py, transformer_2d.py, downsampling.py, upsampling.py).
// Every module is registered under its published diffusers key so named_parameters() equals the checkpoint.
#pragma once
#include <torch/torch.h>

#include "core/autocast.h"
#include "core/common.h"
#include "core/memory.h"
#include "core/safetensors.h"
#include "nn/layers.h"

namespace rt::sd {

inline torch::nn::Conv2d conv2d(int64_t in, int64_t out, int64_t k, int64_t stride = 1, int64_t pad = -1, bool bias = true) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, k).stride(stride).padding(pad < 0 ? (k - 1) / 2 : pad).bias(bias));
}
inline torch::nn::Linear linear(int64_t in, int64_t out, bool bias = true) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}
inline torch::nn::GroupNorm group_norm(int64_t groups, int64_t channels, double eps) {
  if (groups <= 0 || channels % groups != 0)
    throw Error("GroupNorm: " + std::to_string(channels) + " channels are not divisible into " + std::to_string(groups) +
                " groups (norm_num_groups in config.json)");
  return torch::nn::GroupNorm(torch::nn::GroupNormOptions(groups, channels).eps(eps).affine(true));
}

// Inference-time in-place arithmetic: without autograd a block's temporaries are its own, so residual adds, SiLU
// and the GEGLU product reuse their buffers instead of allocating (and page-faulting) new activation-sized ones.
// Out of place whenever a graph is recorded or the dtypes differ (autocast outputs), as the result must not change.
inline bool can_inplace(const at::Tensor& into, const at::Tensor& other) {
  return !at::GradMode::is_enabled() && into.scalar_type() == other.scalar_type() && into.sizes() == other.sizes();
}
// a + b, reusing a's buffer when allowed.
inline at::Tensor add_into(at::Tensor a, const at::Tensor& b) { return can_inplace(a, b) ? a.add_(b) : a + b; }

// GroupNorm then SiLU under autograd, keeping only the norm's input (and its affine weights) for backward: SiLU's
// input, the normalised tensor, is recomputed there instead of being held, which drops one activation-sized tensor
// per pair from a training graph (two per ResnetBlock2D). Backward runs the two ops again under libtorch's own
// autograd, so its gradients are the unfused ones exactly (test/joint-step.test.ts holds the native step to the
// composition within 1e-5 on the losses after an AdamW step, which a hand-written backward missed).
struct GroupNormSiLUFn : torch::autograd::Function<GroupNormSiLUFn> {
  // x: [N, C, *] -> silu(group_norm(x)) [N, C, *]
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, int64_t groups, double eps) {
    ctx->save_for_backward({x, weight, bias});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["eps"] = eps;
    at::Tensor y = at::group_norm(x, groups, weight, bias, eps);
    return at::silu_(y);  // the normalised tensor is ours and not kept: SiLU in place
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const double eps = ctx->saved_data["eps"].toDouble();
    // The two ops again, with libtorch's own autograd over them: their backward formulas, as unfused.
    std::vector<at::Tensor> leaves;
    std::vector<int> slot;
    auto leaf = [&](const at::Tensor& t, int i) {
      at::Tensor d = t.detach();
      if (ctx->needs_input_grad(i)) {
        d.requires_grad_(true);
        leaves.push_back(d);
        slot.push_back(i);
      }
      return d;
    };
    at::AutoGradMode grad_mode(true);
    const at::Tensor x = leaf(saved[0], 0), weight = leaf(saved[1], 1), bias = leaf(saved[2], 2);
    const at::Tensor y = at::silu(at::group_norm(x, groups, weight, bias, eps));
    torch::autograd::variable_list out(5);
    if (leaves.empty()) return out;
    const auto g = torch::autograd::grad({y}, leaves, {grads[0]});
    for (size_t k = 0; k < leaves.size(); ++k) out[slot[k]] = g[k];
    return out;
  }
};

// silu(norm(x)): in place without autograd, the recomputing pair above with it (CUDA autocast keeps the two ops,
// whose casts autocast decides).
inline at::Tensor group_norm_silu(torch::nn::GroupNorm& norm, const at::Tensor& x) {
  if (!at::GradMode::is_enabled()) {
    at::Tensor y = norm(x);
    return at::silu_(y);
  }
  const auto& o = norm->options;
  if (current_autocast() || !o.affine() || x.dim() < 2) return at::silu(norm(x));
  return GroupNormSiLUFn::apply(x, norm->weight, norm->bias, o.num_groups(), o.eps());
}

// A Conv2d whose forward runs on its weight packed once into oneDNN's blocked layout. libtorch 1.13 reorders a
// plain weight into that layout inside every oneDNN convolution: for SD v1.4's UNet 2.2 GB of convolution weights
// are read, written to fresh buffers and dropped on every forward (for a 1280-channel 3×3 at 8×8, the reorder is 3/4
// of the convolution's time). The packed copy is kept while the weight keeps its storage and version (an optimizer
// step or a weight load repacks it). Taken only where libtorch itself would run oneDNN (its use_mkldnn rule for
// float32 CPU input), so the same kernel computes it on the same blocked values: in every shape tested the outputs
// equal libtorch's bit for bit (test/sd-unet.test.ts; the joint-step test's composition check depends on it), except
// for 1×1 inputs, which keep libtorch's path under autograd.
// - Without autograd, a frozen weight that still views its file unwritten then gives its mapped pages back, so the
//   copy replaces rather than doubles its resident memory.
// - With autograd, only for a frozen weight and bias: the forward runs packed, and backward takes libtorch's own
//   input gradient on the plain weight (its convolution_backward, the kernel and summation order of the unpacked
//   path; computing it instead as a convolution of the flipped, transposed weight moved the joint step's
//   losses after an AdamW step by 1e-4). So training holds both the plain and the packed weight (+2.2 GB for
//   SD v1.4) and saves the forward's reorders.
// Outside a PackedConvScope, on another device or another libtorch, the module's own forward runs.
// Whether PackedConv2d may pack: set by the UNet for its whole forward, with or without autograd, and for a
// checkpointed block's recomputation (so both passes run the same kernels).
inline bool& packed_conv_enabled() {
  thread_local bool on = false;
  return on;
}
struct PackedConvScope {
  bool prev;
  explicit PackedConvScope(bool on) : prev(packed_conv_enabled()) { packed_conv_enabled() = on; }
  ~PackedConvScope() { packed_conv_enabled() = prev; }
};
// ROUNDTRIP_PACKED_CONV: "on" (default), "inference" (autograd keeps libtorch's convolution: the packed copy's
// memory back, the forward's reorders again) or "off"; a diagnostic for A/B runs, read once.
enum class PackedConvPolicy { on, inference, off };
inline PackedConvPolicy packed_conv_policy() {
  static const PackedConvPolicy p = [] {
    const std::string v = env_choice("ROUNDTRIP_PACKED_CONV", {"on", "inference", "off"});
    return v == "off" ? PackedConvPolicy::off : v == "inference" ? PackedConvPolicy::inference : PackedConvPolicy::on;
  }();
  return p;
}

#if TORCH_VERSION_MAJOR == 1 && TORCH_VERSION_MINOR == 13 && AT_MKLDNN_ENABLED()
// conv(x) with a frozen weight under autograd: forward on the packed weight, only x gets a gradient.
struct PackedFrozenConvFn : torch::autograd::Function<PackedFrozenConvFn> {
  // x: [N, Cin, H, W] -> [N, Cout, H', W']
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& packed,
                            const at::Tensor& weight, const c10::optional<at::Tensor>& bias, at::IntArrayRef padding,
                            at::IntArrayRef stride, at::IntArrayRef dilation, int64_t groups) {
    ctx->save_for_backward({x, weight});
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    return at::mkldnn_convolution(x, packed, bias, padding, stride, dilation, groups);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    // grads[0]: [N, Cout, H', W'] -> the input's gradient [N, Cin, H, W], as libtorch's convolution computes it
    const auto saved = ctx->get_saved_variables();
    const std::vector<int64_t> padding = ctx->saved_data["padding"].toIntVector(), stride = ctx->saved_data["stride"].toIntVector(),
                               dilation = ctx->saved_data["dilation"].toIntVector(), no_output_padding{0, 0};
    at::Tensor gx = std::get<0>(at::convolution_backward(grads[0], saved[0], saved[1], c10::nullopt, stride, padding, dilation,
                                                         false, no_output_padding, ctx->saved_data["groups"].toInt(), {true, false, false}));
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};
#endif

struct PackedConv2d {
  at::Tensor packed;
  const void* data = nullptr;
  int64_t version = -1;
  int64_t counted = 0;  // bytes of the packed copy, in memory_stats().packed_weight_bytes

  PackedConv2d() = default;
  PackedConv2d(const PackedConv2d&) = delete;
  PackedConv2d& operator=(const PackedConv2d&) = delete;
  ~PackedConv2d() { note_packed_weight_bytes(-counted); }

  // c: the module (its weight, bias and options), x: [N, Cin, H, W] -> [N, Cout, H', W']
  at::Tensor operator()(torch::nn::Conv2d& c, const at::Tensor& x) {
#if TORCH_VERSION_MAJOR == 1 && TORCH_VERSION_MINOR == 13 && AT_MKLDNN_ENABLED()
    const auto& o = c->options;
    const auto* pad = c10::get_if<torch::ExpandingArray<2>>(&o.padding());
    const at::Tensor& w = c->weight;
    const bool grad = at::GradMode::is_enabled();
    // With autograd: a frozen weight and bias only, and not for a 1×1 input whose gradient is wanted (there the
    // packed forward's bits differed from libtorch's own; a 64² image's latents reach 1×1 at the UNet's bottom).
    const bool frozen = !w.requires_grad() && (!c->bias.defined() || !c->bias.requires_grad()) &&
                        !(x.requires_grad() && x.dim() == 4 && x.size(2) * x.size(3) == 1);
    const PackedConvPolicy policy = packed_conv_policy();
    if (pad && packed_conv_enabled() && policy != PackedConvPolicy::off && (!grad || (frozen && policy == PackedConvPolicy::on)) &&
        c10::get_if<torch::enumtype::kZeros>(&o.padding_mode()) && !o.transposed() && at::globalContext().userEnabledMkldnn() &&
        x.dim() == 4 && x.device().is_cpu() && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat &&
        w.device().is_cpu() && x.is_contiguous()) {
      const at::IntArrayRef padding = *pad, stride = o.stride(), dilation = o.dilation();
      const bool strided = stride[0] != 1 || stride[1] != 1, dilated = dilation[0] != 1 || dilation[1] != 1;
      const int64_t kh = w.size(2), kw = w.size(3), n = x.size(0);
      // libtorch 1.13 ConvParams::use_mkldnn for a dense float32 input.
      const bool onednn = (strided || dilated || n >= 16 || kw != 1 || kh != 1 || at::get_num_threads() > 1) &&
                          (o.groups() > 1 || (kw > 3 && kh > 3) || n > 1 || x.numel() > 20480);
      if (onednn) {
        if (!packed.defined() || data != w.data_ptr() || version != static_cast<int64_t>(w._version())) {
          packed = at::Tensor();  // the old copy goes before the new one is made
          note_packed_weight_bytes(-counted);
          packed = at::mkldnn_reorder_conv2d_weight(w.to_mkldnn(), padding, stride, dilation, o.groups());
          data = w.data_ptr();
          version = static_cast<int64_t>(w._version());
          counted = static_cast<int64_t>(w.nbytes());
          note_packed_weight_bytes(counted);
          // Without autograd the packed copy serves every forward: a frozen weight that still views its file
          // unwritten gives its mapped pages back (a training backward reads the plain weight: they fault back in
          // from the page cache once and stay).
          if (!grad && !w.requires_grad()) release_unwritten_mapped_pages(w);
        }
        const c10::optional<at::Tensor> bias = c->bias.defined() ? c10::optional<at::Tensor>(c->bias) : c10::nullopt;
        if (!grad || !x.requires_grad()) {
          at::NoGradGuard no_grad;  // nothing here needs a gradient
          return at::mkldnn_convolution(x, packed, bias, padding, stride, dilation, o.groups());
        }
        return PackedFrozenConvFn::apply(x, packed, w, bias, padding, stride, dilation, o.groups());
      }
    }
#endif
    return c->forward(x);
  }
};

// ResnetBlock2D (resnet_time_scale_shift "default"): the UNet's (with a time embedding) and the VAE's (without).
struct ResnetBlock2DImpl : torch::nn::Module {
  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv_shortcut{nullptr};
  torch::nn::Linear time_emb_proj{nullptr};
  double output_scale_factor;
  PackedConv2d packed_conv1, packed_conv2, packed_shortcut;

  ResnetBlock2DImpl(int64_t in, int64_t out, int64_t temb_channels, int64_t groups, double eps, double output_scale = 1.0)
      : output_scale_factor(output_scale) {
    norm1 = register_module("norm1", group_norm(groups, in, eps));
    conv1 = register_module("conv1", conv2d(in, out, 3));
    if (temb_channels > 0) time_emb_proj = register_module("time_emb_proj", linear(temb_channels, out));
    norm2 = register_module("norm2", group_norm(groups, out, eps));
    conv2 = register_module("conv2", conv2d(out, out, 3));
    // The 1x1 shortcut exists only when the channel count changes.
    if (in != out) conv_shortcut = register_module("conv_shortcut", conv2d(in, out, 1, 1, 0));
  }

  // x: [N, Cin, H, W], temb: [N, T] or undefined -> [N, Cout, H, W]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& temb) {
    at::Tensor h = packed_conv1(conv1, group_norm_silu(norm1, x));
    // SiLU is applied to the embedding before the projection (diffusers' nonlinearity(temb)).
    if (time_emb_proj && temb.defined()) {
      at::Tensor t = time_emb_proj(at::silu(temb)).unsqueeze(-1).unsqueeze(-1);
      h = !at::GradMode::is_enabled() && h.scalar_type() == t.scalar_type() ? h.add_(t) : h + t;
    }
    h = packed_conv2(conv2, group_norm_silu(norm2, h));
    at::Tensor out = add_into(h, conv_shortcut ? packed_shortcut(conv_shortcut, x) : x);  // shortcut + h (addition commutes exactly)
    return output_scale_factor == 1.0 ? out : out / output_scale_factor;
  }
};
TORCH_MODULE(ResnetBlock2D);

// diffusers Attention with the classic AttnProcessor. The UNet's has no q/k/v bias and no group_norm; the VAE's
// mid-block attention has biases, a group_norm, a single head and a residual connection.
struct AttentionImpl : torch::nn::Module {
  torch::nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr}, out_proj{nullptr};
  torch::nn::GroupNorm norm{nullptr};
  int64_t heads;
  double scale;

  AttentionImpl(int64_t query_dim, int64_t context_dim, int64_t heads_, int64_t dim_head, bool qkv_bias, int64_t norm_groups = 0,
                double norm_eps = 1e-6)
      : heads(heads_), scale(1.0 / std::sqrt(static_cast<double>(dim_head))) {
    const int64_t inner = heads * dim_head;
    if (norm_groups > 0) norm = register_module("group_norm", group_norm(norm_groups, query_dim, norm_eps));
    to_q = register_module("to_q", linear(query_dim, inner, qkv_bias));
    to_k = register_module("to_k", linear(context_dim, inner, qkv_bias));
    to_v = register_module("to_v", linear(context_dim, inner, qkv_bias));
    // to_out.1 is Dropout (no weights); only "to_out.0" is published.
    auto to_out = register_module("to_out", std::make_shared<torch::nn::Module>());
    out_proj = to_out->register_module("0", linear(inner, query_dim, true));
  }

  // x: [B, N, Cq], context: [B, M, Cc] (undefined = self-attention) -> [B, N, Cq]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context = {}) {
    const at::Tensor& ctx = context.defined() ? context : x;
    at::Tensor q = rt::nn::split_heads(to_q(x), heads);
    at::Tensor k = rt::nn::split_heads(to_k(ctx), heads);
    at::Tensor v = rt::nn::split_heads(to_v(ctx), heads);
    return out_proj(rt::nn::merge_heads(rt::nn::attention(q, k, v, at::Tensor(), scale)));
  }

  // The VAE's spatial form: x: [B, C, H, W] -> group_norm -> tokens (B, H·W, C) -> attention -> + x.
  at::Tensor forward_spatial(const at::Tensor& x) {
    const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    at::Tensor h = norm ? norm(x.view({B, C, H * W})) : x.view({B, C, H * W});
    h = forward(h.transpose(1, 2));
    return h.transpose(-1, -2).reshape({B, C, H, W}) + x;
  }
};
TORCH_MODULE(Attention);

// ff.net.0 of FeedForward(activation "geglu"): proj to 2·inner, value half times exact-GELU of the gate half.
struct GEGLUImpl : torch::nn::Module {
  torch::nn::Linear proj{nullptr};
  GEGLUImpl(int64_t dim, int64_t inner) { proj = register_module("proj", linear(dim, inner * 2)); }
  // x: [B, N, dim] -> [B, N, inner]
  at::Tensor forward(const at::Tensor& x) {
    auto parts = proj(x).chunk(2, -1);
    at::Tensor gate = rt::nn::gelu(parts[1]);
    return can_inplace(gate, parts[0]) ? gate.mul_(parts[0]) : parts[0] * gate;
  }
};
TORCH_MODULE(GEGLU);

struct BasicTransformerBlockImpl : torch::nn::Module {
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  Attention attn1{nullptr}, attn2{nullptr};
  GEGLU ff_in{nullptr};
  torch::nn::Linear ff_out{nullptr};
  bool only_cross;

  BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t dim_head, int64_t cross_dim, bool only_cross_attention)
      : only_cross(only_cross_attention) {
    auto ln = [&] { return torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}).eps(1e-5).elementwise_affine(true)); };
    norm1 = register_module("norm1", ln());
    // only_cross_attention: attn1 also attends to the text (SD1 never sets it, but configs may).
    attn1 = register_module("attn1", Attention(dim, only_cross ? cross_dim : dim, heads, dim_head, false));
    norm2 = register_module("norm2", ln());
    attn2 = register_module("attn2", Attention(dim, cross_dim, heads, dim_head, false));
    norm3 = register_module("norm3", ln());
    auto ff = register_module("ff", std::make_shared<torch::nn::Module>());
    auto net = ff->register_module("net", std::make_shared<torch::nn::Module>());
    ff_in = net->register_module("0", GEGLU(dim, dim * 4));
    ff_out = net->register_module("2", linear(dim * 4, dim));  // net.1 is Dropout
  }

  // x: [B, N, dim], ehs: [B, M, cross_dim] -> [B, N, dim]
  at::Tensor forward(at::Tensor x, const at::Tensor& ehs) {
    x = add_into(attn1(norm1(x), only_cross ? ehs : at::Tensor()), x);
    x = add_into(attn2(norm2(x), ehs), x);
    return add_into(ff_out(ff_in(norm3(x))), x);
  }
};
TORCH_MODULE(BasicTransformerBlock);

// Transformer2DModel (continuous input): GroupNorm(eps 1e-6), proj_in (1x1 conv, or Linear with
// use_linear_projection), transformer blocks over H·W tokens in NHWC order, proj_out, + input.
struct Transformer2DImpl : torch::nn::Module {
  torch::nn::GroupNorm norm{nullptr};
  torch::nn::Conv2d proj_in_conv{nullptr}, proj_out_conv{nullptr};
  torch::nn::Linear proj_in_lin{nullptr}, proj_out_lin{nullptr};
  torch::nn::ModuleList transformer_blocks;
  std::vector<BasicTransformerBlock> blocks;
  PackedConv2d packed_in, packed_out;

  Transformer2DImpl(int64_t channels, int64_t heads, int64_t layers, int64_t cross_dim, int64_t groups, bool linear_proj, bool only_cross) {
    if (heads <= 0 || channels % heads != 0)
      throw Error("Transformer2DModel: " + std::to_string(channels) + " channels are not divisible into " + std::to_string(heads) +
                  " attention heads (attention_head_dim / num_attention_heads in config.json)");
    norm = register_module("norm", group_norm(groups, channels, 1e-6));
    if (linear_proj) {
      proj_in_lin = register_module("proj_in", linear(channels, channels));
    } else {
      proj_in_conv = register_module("proj_in", conv2d(channels, channels, 1, 1, 0));
    }
    transformer_blocks = register_module("transformer_blocks", torch::nn::ModuleList());
    for (int64_t i = 0; i < layers; ++i) {
      blocks.push_back(BasicTransformerBlock(channels, heads, channels / heads, cross_dim, only_cross));
      transformer_blocks->push_back(blocks.back());
    }
    if (linear_proj) {
      proj_out_lin = register_module("proj_out", linear(channels, channels));
    } else {
      proj_out_conv = register_module("proj_out", conv2d(channels, channels, 1, 1, 0));
    }
  }

  // x: [B, C, H, W], ehs: [B, M, cross_dim] -> [B, C, H, W]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& ehs) {
    const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    at::Tensor h = norm(x);
    if (proj_in_conv) {
      h = packed_in(proj_in_conv, h).permute({0, 2, 3, 1}).reshape({B, H * W, C});
    } else {
      h = proj_in_lin(h.permute({0, 2, 3, 1}).reshape({B, H * W, C}));
    }
    for (auto& b : blocks) h = b->forward(h, ehs);
    if (proj_out_conv) {
      h = packed_out(proj_out_conv, h.reshape({B, H, W, C}).permute({0, 3, 1, 2}).contiguous());
    } else {
      h = proj_out_lin(h).reshape({B, H, W, C}).permute({0, 3, 1, 2}).contiguous();
    }
    return add_into(h, x);
  }
};
TORCH_MODULE(Transformer2D);

// Downsample2D with a conv ("downsamplers.0.conv"). padding 0 means diffusers' asymmetric pad: right and
// bottom by one zero, then a stride-2 conv (the VAE); padding 1 is a symmetric stride-2 conv (the UNet).
struct Downsample2DImpl : torch::nn::Module {
  torch::nn::Conv2d conv{nullptr};
  int64_t padding;
  PackedConv2d packed;
  Downsample2DImpl(int64_t channels, int64_t pad) : padding(pad) { conv = register_module("conv", conv2d(channels, channels, 3, 2, pad)); }
  // x: [N, C, H, W] -> [N, C, ceil-ish(H/2), ceil-ish(W/2)]
  at::Tensor forward(const at::Tensor& x) {
    if (padding == 0) return packed(conv, at::constant_pad_nd(x, {0, 1, 0, 1}, 0));
    return packed(conv, x);
  }
};
TORCH_MODULE(Downsample2D);

// Upsample2D: nearest ×2 (or to an exact size, when the UNet latent is not a multiple of 2^ups), then 3×3 conv.
struct Upsample2DImpl : torch::nn::Module {
  torch::nn::Conv2d conv{nullptr};
  PackedConv2d packed;
  explicit Upsample2DImpl(int64_t channels) { conv = register_module("conv", conv2d(channels, channels, 3)); }
  // x: [N, C, H, W] -> [N, C, 2H, 2W] or [N, C, size[0], size[1]]
  at::Tensor forward(const at::Tensor& x, c10::optional<std::vector<int64_t>> size = c10::nullopt) {
    at::Tensor up = size ? at::upsample_nearest2d(x, *size) : at::upsample_nearest2d(x, {x.size(2) * 2, x.size(3) * 2});
    return packed(conv, up);
  }
};
TORCH_MODULE(Upsample2D);

// Reads an int-or-list config entry (diffusers accepts either for per-block settings).
inline std::vector<int64_t> per_block_ints(const json& cfg, const char* key, size_t n, int64_t fallback, const std::string& where) {
  std::vector<int64_t> out;
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::vector<int64_t>(n, fallback);
  if (it->is_number_integer()) return std::vector<int64_t>(n, it->get<int64_t>());
  if (it->is_array()) {
    for (auto& v : *it) {
      if (!v.is_number_integer()) throw Error(where + ": '" + key + "' must hold integers, got " + it->dump());
      out.push_back(v.get<int64_t>());
    }
    if (out.size() != n)
      throw Error(where + ": '" + key + "' has " + std::to_string(out.size()) + " entries, expected one per block (" + std::to_string(n) + ")");
    return out;
  }
  throw Error(where + ": '" + key + "' must be an integer or a list of integers, got " + it->dump());
}

// Reads a list of integers of any length (block_out_channels).
inline std::vector<int64_t> int_list(const json& cfg, const char* key, const std::vector<int64_t>& fallback, const std::string& where) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return fallback;
  std::vector<int64_t> out;
  if (it->is_array())
    for (auto& v : *it) {
      if (!v.is_number_integer() || v.get<int64_t>() <= 0) throw Error(where + ": '" + key + "' must hold positive integers, got " + it->dump());
      out.push_back(v.get<int64_t>());
    }
  if (!it->is_array() || out.empty()) throw Error(where + ": '" + key + "' must be a non-empty list of integers, got " + it->dump());
  return out;
}

inline std::vector<std::string> string_list(const json& cfg, const char* key, const std::vector<std::string>& fallback, const std::string& where) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return fallback;
  if (!it->is_array()) throw Error(where + ": '" + key + "' must be a list of strings, got " + it->dump());
  std::vector<std::string> out;
  for (auto& v : *it) {
    if (!v.is_string()) throw Error(where + ": '" + key + "' must be a list of strings, got " + it->dump());
    out.push_back(v.get<std::string>());
  }
  return out;
}

// Moves an input onto the model's device (and float inputs to the parameters' dtype).
inline at::Tensor to_model(const at::Tensor& t, const at::Device& dev, at::ScalarType dtype) {
  if (at::isFloatingType(t.scalar_type())) return t.to(dev, dtype);
  return t.to(dev);
}

}  // namespace rt::sd
