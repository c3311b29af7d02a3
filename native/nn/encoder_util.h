// Helpers shared by the encoder models (CLIP, ViT/DINO, BERT, Inception): config reading with documented
// defaults, small layer constructors, an in-place tensor setter and the bicubic position-grid resize.
#pragma once
#include <cmath>
#include <string>

#include "core/common.h"
#include "core/model.h"

namespace rt::enc {

// Reads a number from a config object; a missing or null key gives the documented default.
inline int64_t cfg_int(const json& c, const char* key, int64_t fallback, const std::string& where) {
  if (!c.is_object()) return fallback;
  auto it = c.find(key);
  if (it == c.end() || it->is_null()) return fallback;
  if (!it->is_number_integer() && !(it->is_number() && std::floor(it->get<double>()) == it->get<double>()))
    throw Error(where + ": config key '" + key + "' must be an integer, got " + it->dump());
  const int64_t v = it->is_number_integer() ? it->get<int64_t>() : static_cast<int64_t>(it->get<double>());
  return v;
}

inline int64_t cfg_positive(const json& c, const char* key, int64_t fallback, const std::string& where) {
  const int64_t v = cfg_int(c, key, fallback, where);
  if (v <= 0) throw Error(where + ": config key '" + key + "' must be a positive integer, got " + std::to_string(v));
  return v;
}

inline double cfg_double(const json& c, const char* key, double fallback, const std::string& where) {
  if (!c.is_object()) return fallback;
  auto it = c.find(key);
  if (it == c.end() || it->is_null()) return fallback;
  if (!it->is_number()) throw Error(where + ": config key '" + key + "' must be a number, got " + it->dump());
  return it->get<double>();
}

inline std::string cfg_string(const json& c, const char* key, const std::string& fallback, const std::string& where) {
  if (!c.is_object()) return fallback;
  auto it = c.find(key);
  if (it == c.end() || it->is_null()) return fallback;
  if (!it->is_string()) throw Error(where + ": config key '" + key + "' must be a string, got " + it->dump());
  return it->get<std::string>();
}

inline bool cfg_bool(const json& c, const char* key, bool fallback, const std::string& where) {
  if (!c.is_object()) return fallback;
  auto it = c.find(key);
  if (it == c.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) throw Error(where + ": config key '" + key + "' must be true or false, got " + it->dump());
  return it->get<bool>();
}

// Checks hidden = heads × head_dim, which every attention block here relies on.
inline void check_heads(int64_t hidden, int64_t heads, const std::string& where) {
  if (hidden % heads != 0)
    throw Error(where + ": hidden_size " + std::to_string(hidden) + " is not divisible by num_attention_heads " + std::to_string(heads));
}

// Rejects unknown activations at construction time rather than at the first forward.
inline std::string checked_act(const std::string& name, const std::string& where) {
  if (name == "gelu" || name == "quick_gelu" || name == "relu" || name == "silu" || name == "swish") return name;
  throw Error(where + ": unsupported hidden_act '" + name + "' (supported: gelu, quick_gelu, relu, silu)");
}

// The sizes a BERT-style encoder config holds (transformers' key names), read and checked (known activation,
// heads dividing the width); `defaults` are the model's for missing keys.
struct EncoderSizes {
  int64_t hidden = 768, intermediate = 3072, heads = 12, layers = 12;
  double eps = 1e-12;
  std::string act = "gelu";
};
inline EncoderSizes encoder_sizes(const json& c, const EncoderSizes& defaults, const std::string& where) {
  EncoderSizes s;
  s.hidden = cfg_positive(c, "hidden_size", defaults.hidden, where);
  s.intermediate = cfg_positive(c, "intermediate_size", defaults.intermediate, where);
  s.heads = cfg_positive(c, "num_attention_heads", defaults.heads, where);
  s.layers = cfg_int(c, "num_hidden_layers", defaults.layers, where);
  s.eps = cfg_double(c, "layer_norm_eps", defaults.eps, where);
  s.act = checked_act(cfg_string(c, "hidden_act", defaults.act, where), where);
  check_heads(s.hidden, s.heads, where);
  return s;
}

inline torch::nn::Linear linear(int64_t in, int64_t out, bool bias = true) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

inline torch::nn::LayerNorm layer_norm(int64_t dim, double eps) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}).eps(eps));
}

// Copies named tensors into the model's parameters/buffers in place (no grad, shape-checked). Lets TS
// install weights that come from a formula or a layout conversion without writing a file.
inline TensorMap set_tensors(Model& model, const TensorMap& in) {
  std::map<std::string, at::Tensor> targets;
  for (auto& item : model.named_parameters(true)) targets[item.key()] = item.value();
  for (auto& item : model.named_buffers(true)) targets[item.key()] = item.value();
  at::NoGradGuard no_grad;
  // Validate everything first so a bad entry leaves the model untouched.
  for (auto& [name, t] : in) {
    auto it = targets.find(name);
    if (it == targets.end()) throw Error("set_tensors: the model has no parameter or buffer named '" + name + "'");
    if (it->second.sizes() != t.sizes())
      throw Error("set_tensors: '" + name + "' is " + shape_str(t.sizes()) + ", the model expects " + shape_str(it->second.sizes()));
    if (!at::isFloatingType(t.scalar_type()) && at::isFloatingType(it->second.scalar_type()))
      throw Error("set_tensors: '" + name + "' must be a floating-point tensor, got " + dtype_name(t.scalar_type()));
  }
  for (auto& [name, t] : in) targets[name].copy_(t);
  return {};
}

// Resizes a position grid the way PyTorch's upsample_bicubic2d does (A = -0.75, align_corners=False,
// clamped taps). grid: [1, D, g_h, g_w] -> [1, D, out_h, out_w]. With scale factors given the kernel's
// source step is float32(1/scale) (the original DINO "+0.1" form); without, it is in/out (transformers).
inline at::Tensor bicubic_resize(const at::Tensor& grid, int64_t out_h, int64_t out_w, c10::optional<double> scale_h,
                                 c10::optional<double> scale_w) {
  return at::upsample_bicubic2d(grid, {out_h, out_w}, /*align_corners=*/false, scale_h, scale_w);
}

}  // namespace rt::enc
