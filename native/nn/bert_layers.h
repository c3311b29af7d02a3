// BERT-style (post-LN) transformer pieces under the published transformers key names
// (`attention.self.{query,key,value}`, `attention.output.{dense,LayerNorm}`, `intermediate.dense`,
// `output.{dense,LayerNorm}`; a decoder layer adds `crossattention.*`). The one BERT layer of the project:
// BERT/MiniLM (models/bert.cc) and BLIP's text decoder (models/blip.cc) are built from BertLayer; the ViT
// (models/vit.cc) and BLIP-2's Q-Former (models/blip2.cc) reuse its attention projections and feed-forward
// pieces under their own key names.
#pragma once
#include <torch/torch.h>

#include "nn/layers.h"

namespace rt::nn {

// `*.self`: query/key/value projections. Keys/values may come from another width (cross-attention).
struct BertSelfAttentionImpl : torch::nn::Module {
  torch::nn::Linear query{nullptr}, key{nullptr}, value{nullptr};
  int64_t heads;
  // bias: ViT's qkv_bias (BERT always has the bias).
  BertSelfAttentionImpl(int64_t hidden, int64_t kv_width, int64_t num_heads, bool bias = true) : heads(num_heads) {
    if (hidden % num_heads != 0)
      throw std::runtime_error("hidden_size " + std::to_string(hidden) + " is not a multiple of num_attention_heads " + std::to_string(num_heads));
    query = register_module("query", torch::nn::Linear(torch::nn::LinearOptions(hidden, hidden).bias(bias)));
    key = register_module("key", torch::nn::Linear(torch::nn::LinearOptions(kv_width, hidden).bias(bias)));
    value = register_module("value", torch::nn::Linear(torch::nn::LinearOptions(kv_width, hidden).bias(bias)));
  }
  // src: [B, S, kv_width] -> (k, v): [B, heads, S, hd]; computed once per source and cacheable.
  std::pair<at::Tensor, at::Tensor> keys_values(const at::Tensor& src) {
    return {split_heads(key(src), heads), split_heads(value(src), heads)};
  }
  // x: [B, T, H], k/v: [B, heads, S, hd], mask additive, broadcastable to [B, heads, T, S] -> [B, T, H]
  at::Tensor attend(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask) {
    at::Tensor q = split_heads(query(x), heads);
    const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
    return merge_heads(attention(q, k, v, mask, scale));
  }
};
TORCH_MODULE(BertSelfAttention);

// `*.output` of an attention block and of the feed-forward: LN(dense(h) + residual).
struct BertAddNormImpl : torch::nn::Module {
  torch::nn::Linear dense{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  BertAddNormImpl(int64_t in, int64_t hidden, double eps) {
    dense = register_module("dense", torch::nn::Linear(in, hidden));
    LayerNorm = register_module("LayerNorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden}).eps(eps)));
  }
  // h: [B, T, in], residual: [B, T, hidden] -> [B, T, hidden]
  at::Tensor forward(const at::Tensor& h, const at::Tensor& residual) { return LayerNorm(dense(h) + residual); }
};
TORCH_MODULE(BertAddNorm);

// `attention` / `crossattention`: self + output.
struct BertAttentionImpl : torch::nn::Module {
  BertSelfAttention self{nullptr};
  BertAddNorm output{nullptr};
  BertAttentionImpl(int64_t hidden, int64_t kv_width, int64_t heads, double eps) {
    self = register_module("self", BertSelfAttention(hidden, kv_width, heads));
    output = register_module("output", BertAddNorm(hidden, hidden, eps));
  }
  // x: [B, T, H], k/v: [B, heads, S, hd] -> [B, T, H]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask) {
    return output(self->attend(x, k, v, mask), x);
  }
};
TORCH_MODULE(BertAttention);

// `intermediate`: dense + activation.
struct BertIntermediateImpl : torch::nn::Module {
  torch::nn::Linear dense{nullptr};
  std::string act;
  BertIntermediateImpl(int64_t hidden, int64_t inner, std::string activation_name) : act(std::move(activation_name)) {
    dense = register_module("dense", torch::nn::Linear(hidden, inner));
  }
  // x: [B, T, H] -> [B, T, inner]
  at::Tensor forward(const at::Tensor& x) { return activation(act, dense(x)); }
};
TORCH_MODULE(BertIntermediate);

// `encoder.layer.{i}`: attention (+ crossattention in a decoder) -> intermediate -> output, post-LN.
struct BertLayerImpl : torch::nn::Module {
  BertAttention attention{nullptr}, crossattention{nullptr};  // crossattention only when cross_width > 0
  BertIntermediate intermediate{nullptr};
  BertAddNorm output{nullptr};
  // cross_width > 0: a decoder layer attending to a memory of that width (BLIP's is the vision width).
  BertLayerImpl(int64_t hidden, int64_t inner, int64_t heads, double eps, const std::string& act, int64_t cross_width = 0) {
    attention = register_module("attention", BertAttention(hidden, hidden, heads, eps));
    if (cross_width > 0) crossattention = register_module("crossattention", BertAttention(hidden, cross_width, heads, eps));
    intermediate = register_module("intermediate", BertIntermediate(hidden, inner, act));
    output = register_module("output", BertAddNorm(inner, hidden, eps));
  }
  // Encoder layer. x: [B, T, H], mask additive [B, 1, 1, T] -> [B, T, H]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask) {
    auto [k, v] = attention->self->keys_values(x);
    return feed_forward(attention(x, k, v, mask));
  }
  // Decoder layer over given keys/values (a KV cache's, this step's appended). x: [B, T, H],
  // k/v: [B, heads, S, hd], self_mask additive [B, 1, T, S]; cross_k/cross_v: [B, heads, N, hd] over the memory,
  // cross_mask additive or undefined -> [B, T, H]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, const at::Tensor& self_mask, const at::Tensor& cross_k,
                     const at::Tensor& cross_v, const at::Tensor& cross_mask) {
    at::Tensor h = attention(x, k, v, self_mask);
    return feed_forward(crossattention(h, cross_k, cross_v, cross_mask));
  }
  // h: [B, T, H] -> output(intermediate(h), h): [B, T, H]
  at::Tensor feed_forward(const at::Tensor& h) { return output(intermediate(h), h); }
};
TORCH_MODULE(BertLayer);

}  // namespace rt::nn
