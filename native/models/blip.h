// BLIP captioner (transformers BlipForConditionalGeneration): module tree under the published key names.
// See blip.cc for the methods and blip_generate.cc for generation.
#pragma once
#include "core/model.h"
#include "nn/bert_layers.h"
#include "nn/layers.h"

namespace rt::blip {

// BlipVisionConfig, with the transformers defaults for missing keys.
struct VisionConfig {
  int64_t hidden = 768, intermediate = 3072, layers = 12, heads = 12, image_size = 384, patch_size = 16;
  double eps = 1e-5;
  std::string act = "gelu";
  bool qkv_bias = true;  // BLIP-2's Blip2VisionConfig.qkv_bias; BLIP always has the bias
  static VisionConfig from(const json& c);
};

// BlipTextConfig, with the transformers defaults for missing keys.
struct TextConfig {
  int64_t vocab = 30524, hidden = 768, intermediate = 3072, layers = 12, heads = 8, max_positions = 512;
  int64_t encoder_hidden = 768, bos = 30522, pad = 0, sep = 102;
  double eps = 1e-12, label_smoothing = 0.0;
  std::string act = "gelu";
  static TextConfig from(const json& c, int64_t vision_width);
};

// ---- vision tower: vision_model.*

struct VisionEmbeddingsImpl : torch::nn::Module {
  at::Tensor class_embedding, position_embedding;
  torch::nn::Conv2d patch_embedding{nullptr};
  int64_t patch;
  explicit VisionEmbeddingsImpl(const VisionConfig& c);
  at::Tensor positions(int64_t gh, int64_t gw);
  at::Tensor forward(const at::Tensor& pixels);
};
TORCH_MODULE(VisionEmbeddings);

struct VisionAttentionImpl : torch::nn::Module {
  torch::nn::Linear qkv{nullptr}, projection{nullptr};
  int64_t heads;
  explicit VisionAttentionImpl(const VisionConfig& c);
  at::Tensor forward(const at::Tensor& x);
};
TORCH_MODULE(VisionAttention);

struct VisionMlpImpl : torch::nn::Module {
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  std::string act;
  explicit VisionMlpImpl(const VisionConfig& c);
  at::Tensor forward(const at::Tensor& x);
};
TORCH_MODULE(VisionMlp);

struct VisionLayerImpl : torch::nn::Module {
  torch::nn::LayerNorm layer_norm1{nullptr}, layer_norm2{nullptr};
  VisionAttention self_attn{nullptr};
  VisionMlp mlp{nullptr};
  explicit VisionLayerImpl(const VisionConfig& c);
  at::Tensor forward(const at::Tensor& x);
};
TORCH_MODULE(VisionLayer);

struct VisionEncoderImpl : torch::nn::Module {
  torch::nn::ModuleList layers{nullptr};
  explicit VisionEncoderImpl(const VisionConfig& c);
};
TORCH_MODULE(VisionEncoder);

struct VisionModelImpl : torch::nn::Module {
  VisionEmbeddings embeddings{nullptr};
  VisionEncoder encoder{nullptr};
  torch::nn::LayerNorm post_layernorm{nullptr};
  explicit VisionModelImpl(const VisionConfig& c);
  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& pixels);
  bool checkpointing = false;  // recompute each layer in backward (set per call)
};
TORCH_MODULE(VisionModel);

// ---- text decoder: text_decoder.*

// Per-layer keys/values: self-attention grows by one column per step; cross-attention is computed once.
struct LayerKV {
  at::Tensor self_k, self_v, cross_k, cross_v;
};
struct DecoderCache {
  std::vector<LayerKV> layers;
  int64_t past = 0;
  // Keeps the self-attention rows `rows` (beam reordering); cross keys are shared within an image.
  void reorder(const at::Tensor& rows);
};

struct TextEmbeddingsImpl : torch::nn::Module {
  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  explicit TextEmbeddingsImpl(const TextConfig& c);
  at::Tensor forward(const at::Tensor& ids, int64_t past);
};
TORCH_MODULE(TextEmbeddings);

// text_decoder.bert.encoder.layer.{i}: nn::BertLayer with crossattention over the image embeddings.
// x: [B, T, H]; self_mask additive [B, 1, T, past+T]; kv holds this layer's cache (appended when `cache`)
// -> [B, T, H]
at::Tensor text_layer_forward(nn::BertLayerImpl& layer, const at::Tensor& x, const at::Tensor& self_mask, LayerKV& kv, bool cache);

struct TextEncoderImpl : torch::nn::Module {
  torch::nn::ModuleList layer{nullptr};
  explicit TextEncoderImpl(const TextConfig& c);
};
TORCH_MODULE(TextEncoder);

struct TextModelImpl : torch::nn::Module {
  TextEmbeddings embeddings{nullptr};
  TextEncoder encoder{nullptr};
  explicit TextModelImpl(const TextConfig& c);
};
TORCH_MODULE(TextModel);

struct PredictionTransformImpl : torch::nn::Module {
  torch::nn::Linear dense{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  std::string act;
  explicit PredictionTransformImpl(const TextConfig& c);
  at::Tensor forward(const at::Tensor& x);
};
TORCH_MODULE(PredictionTransform);

struct PredictionsImpl : torch::nn::Module {
  PredictionTransform transform{nullptr};
  at::Tensor bias;
  explicit PredictionsImpl(const TextConfig& c);
};
TORCH_MODULE(Predictions);

struct ClsImpl : torch::nn::Module {
  Predictions predictions{nullptr};
  explicit ClsImpl(const TextConfig& c);
};
TORCH_MODULE(Cls);

struct TextDecoderImpl : torch::nn::Module {
  TextConfig cfg;
  TextModel bert{nullptr};
  Cls cls{nullptr};
  explicit TextDecoderImpl(const TextConfig& c);
  static at::Tensor self_mask(const at::Tensor& mask2d, int64_t T, at::ScalarType dtype);
  DecoderCache start_cache(const at::Tensor& image_embeds, int64_t repeat);
  at::Tensor hidden(const at::Tensor& ids, const at::Tensor& mask2d, DecoderCache& cache, bool keep);
  at::Tensor logits(const at::Tensor& h);
  bool checkpointing = false;  // teacher forcing only: recompute each layer in backward (set per call)
};
TORCH_MODULE(TextDecoder);

struct BlipModel : Model {
  VisionConfig vcfg;
  TextConfig tcfg;
  VisionModel vision_model{nullptr};
  TextDecoder text_decoder{nullptr};
  explicit BlipModel(const json& config);
  TensorMap call(const std::string& method, const TensorMap& in, const json& options) override;
  std::string canonical_key(const std::string& key) const override;
  bool ignorable_key(const std::string& key) const override;

  at::ScalarType param_dtype() const;
  at::Tensor image_embeds(const TensorMap& in, const std::string& where);
  at::Tensor ids_input(const TensorMap& in, const std::string& name, const std::string& where);
  at::Tensor forward_logits(const TensorMap& in, const std::string& where);
};

// generate(): greedy, beam search and sampling as transformers' generate() does for BLIP (blip_generate.cc).
TensorMap generate(BlipModel& model, const TensorMap& in, const json& options);

}  // namespace rt::blip
