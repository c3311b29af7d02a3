// BLIP-2 with an OPT language model (transformers 4.37.2 Blip2ForConditionalGeneration): the module tree
// under the published key names. The vision tower is BLIP's (same layout and math, BLIP-2 defaults), the
// Q-Former is built from the BERT-style blocks of nn/bert_layers.h, the OPT decoder lives here.
// See blip2.cc for the methods and blip2_generate.cc for generation (4.37.2 rules).
#pragma once
#include "core/model.h"
#include "models/blip.h"
#include "nn/bert_layers.h"
#include "nn/layers.h"

namespace rt::blip2 {

// Blip2QFormerConfig, with the transformers defaults for missing keys.
struct QFormerConfig {
  int64_t hidden = 768, layers = 12, heads = 12, intermediate = 3072, cross_attention_frequency = 2, encoder_hidden = 1408;
  double eps = 1e-12;
  std::string act = "gelu";
  static QFormerConfig from(const json& c, int64_t vision_width);
};

// OPTConfig, with the transformers defaults for missing keys. LayerNorm eps is nn.LayerNorm's 1e-5 (not in
// the config).
struct OptConfig {
  int64_t vocab = 50272, hidden = 768, layers = 12, heads = 12, ffn = 3072, max_positions = 2048;
  int64_t bos = 2, eos = 2, pad = 1;
  bool pre_ln = true;             // do_layer_norm_before
  bool final_layer_norm = true;   // do_layer_norm_before and not _remove_final_layer_norm
  bool bias = true;               // enable_bias
  bool ln_affine = true;          // layer_norm_elementwise_affine
  bool tied = true;               // tie_word_embeddings
  std::string act = "relu";
  static OptConfig from(const json& c);
};

// ---- Q-Former: qformer.*

// `attention` / `crossattention`: `attention.{query,key,value}` + `output.{dense,LayerNorm}` (post-LN).
struct QFormerAttentionImpl : torch::nn::Module {
  nn::BertSelfAttention attention{nullptr};
  nn::BertAddNorm output{nullptr};
  QFormerAttentionImpl(int64_t hidden, int64_t kv_width, int64_t heads, double eps);
  // x: [B, Q, H], src: [B, S, kv_width] -> [B, Q, H]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& src);
};
TORCH_MODULE(QFormerAttention);

struct QFormerLayerImpl : torch::nn::Module {
  QFormerAttention attention{nullptr}, crossattention{nullptr};  // crossattention only every `frequency` layers
  nn::BertIntermediate intermediate_query{nullptr};
  nn::BertAddNorm output_query{nullptr};
  QFormerLayerImpl(const QFormerConfig& c, int64_t index);
  // x: [B, Q, H], image: [B, N, Hv] -> [B, Q, H]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& image);
};
TORCH_MODULE(QFormerLayer);

struct QFormerEncoderImpl : torch::nn::Module {
  torch::nn::ModuleList layer{nullptr};
  explicit QFormerEncoderImpl(const QFormerConfig& c);
};
TORCH_MODULE(QFormerEncoder);

struct QFormerModelImpl : torch::nn::Module {
  torch::nn::LayerNorm layernorm{nullptr};
  QFormerEncoder encoder{nullptr};
  explicit QFormerModelImpl(const QFormerConfig& c);
  // queries: [1 or B, Q, H], image: [B, N, Hv] -> [B, Q, H]
  at::Tensor forward(const at::Tensor& queries, const at::Tensor& image);
  bool checkpointing = false;
};
TORCH_MODULE(QFormerModel);

// ---- OPT: language_model.*

// Per-layer self-attention keys/values [R, heads, S, hd], grown by one column per generated token.
struct OptLayerKV {
  at::Tensor k, v;
};
struct OptCache {
  std::vector<OptLayerKV> layers;
  int64_t past = 0;
  void reorder(const at::Tensor& rows);
};

struct OptAttentionImpl : torch::nn::Module {
  torch::nn::Linear k_proj{nullptr}, v_proj{nullptr}, q_proj{nullptr}, out_proj{nullptr};
  int64_t heads;
  explicit OptAttentionImpl(const OptConfig& c);
  // x: [R, T, H], mask additive [R, 1, T, past+T] -> [R, T, H]; appends k/v to kv when `keep`.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask, OptLayerKV& kv, bool keep);
};
TORCH_MODULE(OptAttention);

struct OptLayerImpl : torch::nn::Module {
  OptAttention self_attn{nullptr};
  torch::nn::LayerNorm self_attn_layer_norm{nullptr}, final_layer_norm{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  bool pre_ln;
  std::string act;
  explicit OptLayerImpl(const OptConfig& c);
  // x: [R, T, H] -> [R, T, H]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask, OptLayerKV& kv, bool keep);
};
TORCH_MODULE(OptLayer);

struct OptDecoderImpl : torch::nn::Module {
  torch::nn::Embedding embed_tokens{nullptr}, embed_positions{nullptr};
  torch::nn::LayerNorm final_layer_norm{nullptr};  // absent for post-LN OPT (350m) or _remove_final_layer_norm
  torch::nn::ModuleList layers{nullptr};
  explicit OptDecoderImpl(const OptConfig& c);
  // embeds: [R, T, H] (new positions), mask2d: [R, past+T] (1 = attend) -> hidden [R, T, H]
  at::Tensor forward(const at::Tensor& embeds, const at::Tensor& mask2d, OptCache& cache, bool keep);
  // ids: [R, T] -> [R, T, H], ids checked against the vocabulary
  at::Tensor embed(const at::Tensor& ids);
  OptCache start_cache() const;
  bool checkpointing = false;
};
TORCH_MODULE(OptDecoder);

struct OptModelImpl : torch::nn::Module {
  OptDecoder decoder{nullptr};
  explicit OptModelImpl(const OptConfig& c);
};
TORCH_MODULE(OptModel);

// OPTForCausalLM: `model.decoder.*`, and `lm_head.weight` only when tie_word_embeddings is false.
struct OptForCausalLMImpl : torch::nn::Module {
  OptModel model{nullptr};
  at::Tensor lm_head_weight;  // undefined when tied to model.decoder.embed_tokens
  explicit OptForCausalLMImpl(const OptConfig& c);
  // h: [..., H] -> [..., V]
  at::Tensor logits(const at::Tensor& h);
};
TORCH_MODULE(OptForCausalLM);

struct Blip2Model : Model {
  blip::VisionConfig vcfg;
  QFormerConfig qcfg;
  OptConfig tcfg;
  json text_json;  // text_config as given: the language model's generation defaults
  int64_t num_query = 32;
  blip::VisionModel vision_model{nullptr};
  at::Tensor query_tokens;
  QFormerModel qformer{nullptr};
  torch::nn::Linear language_projection{nullptr};
  OptForCausalLM language_model{nullptr};

  explicit Blip2Model(const json& config);
  TensorMap call(const std::string& method, const TensorMap& in, const json& options) override;
  std::vector<std::string> tied_keys() const override;
  bool ignorable_key(const std::string& key) const override;
  std::string canonical_key(const std::string& key) const override;

  at::ScalarType param_dtype() const;
  // Vision memory of the Q-Former: `image_embeds` as given, or the vision tower on `pixel_values`. [B, N, Hv]
  at::Tensor image_embeds(const TensorMap& in, const std::string& where);
  // Q-Former output [B, Q, Hq] and its projection into the LM [B, Q, Ht].
  std::pair<at::Tensor, at::Tensor> query_outputs(const at::Tensor& image_embeds);
  at::Tensor ids_input(const TensorMap& in, const std::string& name, const std::string& where);
  // Logits over queries + text [B, Q+T, V] for teacher-forced input_ids.
  at::Tensor forward_logits(const TensorMap& in, const std::string& where);
};

// generate(): greedy, sampling and beam search as transformers 4.37.2 runs them for BLIP-2 OPT.
TensorMap generate(Blip2Model& model, const TensorMap& in, const json& options);

}  // namespace rt::blip2
