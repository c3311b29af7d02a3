// BLIP-2 OPT captioner: transformers 4.37.2 Blip2ForConditionalGeneration (vision ViT, Q-Former,
// language projection, OPT decoder) under the published key names (vision_model.*, query_tokens,
// qformer.*, language_projection.*, language_model.model.decoder.*). Numerics follow
// shared/fixtures/reference/blip2-opt/README.md.
//
// Methods (model.call):
//   vision       {pixel_values}                                   -> {last_hidden_state, pooler_output}
//   queries      {pixel_values|image_embeds}                      -> {qformer_last_hidden_state, language_projection}
//   logits       {pixel_values|image_embeds, input_ids, attention_mask?} options {text_only}
//                -> {logits} [B, Q+T, V] (text_only: the last T positions)
//   loss         {... as logits, labels}  options {label_smoothing} -> {loss} (text part, shifted by one)
//   token_probs  {... as logits}          options {temperature}     -> {probs} [B, T, V] (differentiable)
//   generate     {pixel_values|image_embeds, input_ids?, attention_mask?}  options: blip2_generate.cc
#include "models/blip2.h"
#include "models/generation.h"

#include "nn/checkpoint.h"
#include "nn/encoder_util.h"

namespace rt {
namespace blip2 {

using enc::cfg_bool;
using enc::cfg_double;
using enc::cfg_positive;
using enc::cfg_string;

namespace {
// Blip2VisionConfig (4.37.2 defaults: ViT-g/14 at 224, eps 1e-6) in BLIP's vision config struct.
blip::VisionConfig vision_config(const json& c) {
  const std::string w = "vision_config";
  blip::VisionConfig v;
  v.hidden = cfg_positive(c, "hidden_size", 1408, w);
  v.intermediate = cfg_positive(c, "intermediate_size", 6144, w);
  v.layers = cfg_positive(c, "num_hidden_layers", 39, w);
  v.heads = cfg_positive(c, "num_attention_heads", 16, w);
  v.image_size = cfg_positive(c, "image_size", 224, w);
  v.patch_size = cfg_positive(c, "patch_size", 14, w);
  v.eps = cfg_double(c, "layer_norm_eps", 1e-6, w);
  v.act = enc::checked_act(cfg_string(c, "hidden_act", "gelu", w), w);
  v.qkv_bias = cfg_bool(c, "qkv_bias", true, w);
  enc::check_heads(v.hidden, v.heads, w);
  return v;
}
}  // namespace

QFormerConfig QFormerConfig::from(const json& c, int64_t vision_width) {
  const std::string w = "qformer_config";
  QFormerConfig q;
  q.hidden = cfg_positive(c, "hidden_size", 768, w);
  q.layers = cfg_positive(c, "num_hidden_layers", 12, w);
  q.heads = cfg_positive(c, "num_attention_heads", 12, w);
  q.intermediate = cfg_positive(c, "intermediate_size", 3072, w);
  q.cross_attention_frequency = cfg_positive(c, "cross_attention_frequency", 2, w);
  q.eps = cfg_double(c, "layer_norm_eps", 1e-12, w);
  q.act = enc::checked_act(cfg_string(c, "hidden_act", "gelu", w), w);
  // Blip2Config overwrites qformer_config.encoder_hidden_size with the vision width.
  q.encoder_hidden = vision_width;
  const std::string pos = cfg_string(c, "position_embedding_type", "absolute", w);
  if (pos != "absolute")
    throw Error(w + ": position_embedding_type '" + pos + "' is not supported (the BLIP-2 Q-Former uses 'absolute')");
  enc::check_heads(q.hidden, q.heads, w);
  return q;
}

OptConfig OptConfig::from(const json& c) {
  const std::string w = "text_config";
  const std::string type = cfg_string(c, "model_type", "opt", w);
  if (type != "opt")
    throw Error(w + ": model_type '" + type + "' is not supported: roundtrip runs BLIP-2 with an OPT language model only (flan-t5 checkpoints need T5)");
  OptConfig t;
  t.vocab = cfg_positive(c, "vocab_size", 50272, w);
  t.hidden = cfg_positive(c, "hidden_size", 768, w);
  t.layers = cfg_positive(c, "num_hidden_layers", 12, w);
  t.heads = cfg_positive(c, "num_attention_heads", 12, w);
  t.ffn = cfg_positive(c, "ffn_dim", 3072, w);
  t.max_positions = cfg_positive(c, "max_position_embeddings", 2048, w);
  t.bos = enc::cfg_int(c, "bos_token_id", 2, w);
  t.eos = enc::cfg_int(c, "eos_token_id", 2, w);
  t.pad = enc::cfg_int(c, "pad_token_id", 1, w);
  t.pre_ln = cfg_bool(c, "do_layer_norm_before", true, w);
  t.final_layer_norm = t.pre_ln && !cfg_bool(c, "_remove_final_layer_norm", false, w);
  t.bias = cfg_bool(c, "enable_bias", true, w);
  t.ln_affine = cfg_bool(c, "layer_norm_elementwise_affine", true, w);
  t.tied = cfg_bool(c, "tie_word_embeddings", true, w);
  t.act = enc::checked_act(cfg_string(c, "activation_function", "relu", w), w);
  const int64_t proj = enc::cfg_int(c, "word_embed_proj_dim", t.hidden, w);
  if (proj != t.hidden)
    throw Error(w + ": word_embed_proj_dim " + std::to_string(proj) + " != hidden_size " + std::to_string(t.hidden) +
                " (OPT's project_in/project_out) is not supported in BLIP-2: its language projection feeds hidden_size");
  enc::check_heads(t.hidden, t.heads, w);
  for (int64_t id : {t.bos, t.eos, t.pad})
    if (id < 0 || id >= t.vocab) throw Error(w + ": special token id " + std::to_string(id) + " is outside vocab_size " + std::to_string(t.vocab));
  return t;
}

// ---------------------------------------------------------------- Q-Former

QFormerAttentionImpl::QFormerAttentionImpl(int64_t hidden, int64_t kv_width, int64_t heads, double eps) {
  attention = register_module("attention", nn::BertSelfAttention(hidden, kv_width, heads));
  output = register_module("output", nn::BertAddNorm(hidden, hidden, eps));
}

// x: [B, Q, H], src: [B, S, kv_width] -> [B, Q, H]. Query and image masks are all ones: no additive mask.
at::Tensor QFormerAttentionImpl::forward(const at::Tensor& x, const at::Tensor& src) {
  auto [k, v] = attention->keys_values(src);
  return output(attention->attend(x, k, v, at::Tensor()), x);
}

QFormerLayerImpl::QFormerLayerImpl(const QFormerConfig& c, int64_t index) {
  attention = register_module("attention", QFormerAttention(c.hidden, c.hidden, c.heads, c.eps));
  if (index % c.cross_attention_frequency == 0)
    crossattention = register_module("crossattention", QFormerAttention(c.hidden, c.encoder_hidden, c.heads, c.eps));
  intermediate_query = register_module("intermediate_query", nn::BertIntermediate(c.hidden, c.intermediate, c.act));
  output_query = register_module("output_query", nn::BertAddNorm(c.intermediate, c.hidden, c.eps));
}

// x: [B, Q, H], image: [B, N, Hv] -> [B, Q, H]
at::Tensor QFormerLayerImpl::forward(const at::Tensor& x, const at::Tensor& image) {
  at::Tensor h = attention(x, x);
  if (crossattention) h = crossattention(h, image);
  return output_query(intermediate_query(h), h);
}

QFormerEncoderImpl::QFormerEncoderImpl(const QFormerConfig& c) {
  layer = register_module("layer", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.layers; ++i) layer->push_back(QFormerLayer(c, i));
}

QFormerModelImpl::QFormerModelImpl(const QFormerConfig& c) {
  layernorm = register_module("layernorm", enc::layer_norm(c.hidden, c.eps));
  encoder = register_module("encoder", QFormerEncoder(c));
}

// queries: [1, Q, H] (broadcast over the batch), image: [B, N, Hv] -> [B, Q, H]. No position embeddings.
at::Tensor QFormerModelImpl::forward(const at::Tensor& queries, const at::Tensor& image) {
  at::Tensor x = layernorm(queries).expand({image.size(0), -1, -1});
  for (auto& m : *encoder->layer) {
    auto* l = m->as<QFormerLayerImpl>();
    if (checkpointing)
      x = rt::nn::checkpoint([l](const std::vector<at::Tensor>& v) { return l->forward(v[0], v[1]); }, {x, image});
    else
      x = l->forward(x, image);
  }
  return x;
}

// ---------------------------------------------------------------- OPT decoder

void OptCache::reorder(const at::Tensor& rows) {
  for (auto& l : layers) {
    if (l.k.defined()) {
      l.k = l.k.index_select(0, rows);
      l.v = l.v.index_select(0, rows);
    }
  }
}

OptAttentionImpl::OptAttentionImpl(const OptConfig& c) : heads(c.heads) {
  k_proj = register_module("k_proj", enc::linear(c.hidden, c.hidden, c.bias));
  v_proj = register_module("v_proj", enc::linear(c.hidden, c.hidden, c.bias));
  q_proj = register_module("q_proj", enc::linear(c.hidden, c.hidden, c.bias));
  out_proj = register_module("out_proj", enc::linear(c.hidden, c.hidden, c.bias));
}

// x: [R, T, H], mask: [R, 1, T, past+T] additive (0 or finfo.min) -> [R, T, H]
at::Tensor OptAttentionImpl::forward(const at::Tensor& x, const at::Tensor& mask, OptLayerKV& kv, bool keep) {
  const int64_t hd = x.size(2) / heads;
  // OPT scales q before the product (q_proj(x)·hd^-½), so the fused/explicit kernel gets scale 1.
  at::Tensor q = nn::split_heads(q_proj(x) * (1.0 / std::sqrt(static_cast<double>(hd))), heads);
  at::Tensor k = nn::split_heads(k_proj(x), heads), v = nn::split_heads(v_proj(x), heads);
  if (kv.k.defined()) {
    k = at::cat({kv.k, k}, 2);
    v = at::cat({kv.v, v}, 2);
  }
  if (keep) {
    kv.k = k;
    kv.v = v;
  }
  at::Tensor ctx;
  if (q.device().is_cpu()) {
    // The reference path: scores + mask, clamped below at finfo.min (a fully masked row stays finite).
    at::Tensor scores = at::matmul(q, k.transpose(-1, -2));
    const double lo = nn::mask_min(scores.scalar_type());
    if (!at::GradMode::is_enabled() && scores.scalar_type() == at::kFloat) {
      // Inference: mask, clamp and softmax in place (no second scores-sized buffer per step).
      scores.add_(mask).clamp_min_(lo);
      at::_softmax_out(scores, scores, -1, false);
      ctx = at::matmul(scores.to(v.scalar_type()), v);
    } else {
      ctx = at::matmul(at::clamp_min(scores + mask, lo).softmax(-1, at::kFloat).to(v.scalar_type()), v);
    }
  } else {
    ctx = nn::attention(q, k, v, mask, 1.0);
  }
  return out_proj(nn::merge_heads(ctx));
}

namespace {
torch::nn::LayerNorm opt_layer_norm(const OptConfig& c) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden}).eps(1e-5).elementwise_affine(c.ln_affine));
}
}  // namespace

OptLayerImpl::OptLayerImpl(const OptConfig& c) : pre_ln(c.pre_ln), act(c.act) {
  self_attn = register_module("self_attn", OptAttention(c));
  self_attn_layer_norm = register_module("self_attn_layer_norm", opt_layer_norm(c));
  fc1 = register_module("fc1", enc::linear(c.hidden, c.ffn, c.bias));
  fc2 = register_module("fc2", enc::linear(c.ffn, c.hidden, c.bias));
  final_layer_norm = register_module("final_layer_norm", opt_layer_norm(c));
}

// x: [R, T, H] -> [R, T, H]. Pre-LN (do_layer_norm_before, every BLIP-2 OPT) or post-LN (OPT-350m).
at::Tensor OptLayerImpl::forward(const at::Tensor& x, const at::Tensor& mask, OptLayerKV& kv, bool keep) {
  at::Tensor h = x + self_attn(pre_ln ? self_attn_layer_norm(x) : x, mask, kv, keep);
  if (!pre_ln) h = self_attn_layer_norm(h);
  at::Tensor out = h + fc2(nn::activation(act, fc1(pre_ln ? final_layer_norm(h) : h)));
  return pre_ln ? out : final_layer_norm(out);
}

OptDecoderImpl::OptDecoderImpl(const OptConfig& c) {
  // padding_idx = pad_token_id, as OPT builds it: the lookup gives that row no gradient (the tied LM head
  // still does).
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(torch::nn::EmbeddingOptions(c.vocab, c.hidden).padding_idx(c.pad)));
  // OPTLearnedPositionalEmbedding: max_position_embeddings + 2 rows, looked up at position + 2.
  embed_positions = register_module("embed_positions", torch::nn::Embedding(c.max_positions + 2, c.hidden));
  if (c.final_layer_norm) final_layer_norm = register_module("final_layer_norm", opt_layer_norm(c));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.layers; ++i) layers->push_back(OptLayer(c));
}

at::Tensor OptDecoderImpl::embed(const at::Tensor& ids) {
  const int64_t vocab = embed_tokens->weight.size(0);
  // Ids on the CPU are checked here; ids on a device were checked where they entered (ids_input) or come from the
  // model's own argmax, so no device sync is spent per call.
  if (ids.numel() > 0 && ids.device().is_cpu()) {
    const auto lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= vocab)
      throw Error("input_ids: token id " + std::to_string(lo < 0 ? lo : hi) + " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  }
  return embed_tokens(ids);
}

OptCache OptDecoderImpl::start_cache() const {
  OptCache c;
  c.layers.resize(layers->size());
  return c;
}

// embeds: [R, T, H] (the new positions), mask2d: [R, past+T] -> [R, T, H] after the final layer norm.
at::Tensor OptDecoderImpl::forward(const at::Tensor& embeds, const at::Tensor& mask2d, OptCache& cache, bool keep) {
  const int64_t R = embeds.size(0), T = embeds.size(1), past = cache.past, S = past + T;
  if (mask2d.dim() != 2 || mask2d.size(0) != R || mask2d.size(1) != S)
    throw Error("attention_mask: expected [" + std::to_string(R) + ", " + std::to_string(S) + "], got " + shape_str(mask2d.sizes()));
  at::Tensor m = mask2d.to(at::kLong);
  // Positions come from the mask: cumsum(mask)·mask − 1 (padding reads row 1 after the offset 2).
  at::Tensor pos = (m.cumsum(1) * m - 1).narrow(1, past, T);
  // A position is at most S − 1 (all ones), so S bounds the table row from the host sizes without a device sync
  // (a left-padded row that would fit with fewer ones is refused too).
  const int64_t max_rows = embed_positions->weight.size(0);
  if (S + 1 >= max_rows)
    throw Error("language_model: " + std::to_string(S) + " positions (query tokens + text) exceed text_config.max_position_embeddings " +
                std::to_string(max_rows - 2));
  at::Tensor h = embeds + embed_positions(pos + 2);
  // Causal × padding mask, finfo.min on blocked keys: [R, 1, T, S].
  auto lopts = m.options();
  at::Tensor causal = at::arange(S, lopts).view({1, S}) <= (at::arange(T, lopts) + past).view({T, 1});  // [T, S]
  at::Tensor allowed = causal.unsqueeze(0) & (m != 0).view({R, 1, S});
  at::Tensor mask = at::zeros({R, 1, T, S}, h.options()).masked_fill_(allowed.logical_not().unsqueeze(1), nn::mask_min(h.scalar_type()));
  size_t i = 0;
  for (auto& mod : *layers) {
    auto* layer = mod->as<OptLayerImpl>();
    OptLayerKV& kv = cache.layers[i++];
    if (checkpointing && !keep) {
      h = rt::nn::checkpoint(
          [layer](const std::vector<at::Tensor>& v) {
            OptLayerKV tmp;
            return layer->forward(v[0], v[1], tmp, false);
          },
          {h, mask});
    } else {
      h = layer->forward(h, mask, kv, keep);
    }
  }
  if (keep) cache.past += T;
  return final_layer_norm ? final_layer_norm(h) : h;
}

OptModelImpl::OptModelImpl(const OptConfig& c) { decoder = register_module("decoder", OptDecoder(c)); }

OptForCausalLMImpl::OptForCausalLMImpl(const OptConfig& c) {
  model = register_module("model", OptModel(c));
  if (!c.tied) {
    auto head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(c.hidden, c.vocab).bias(false)));
    lm_head_weight = head->weight;
  }
}

// h: [..., H] -> [..., V]; lm_head has no bias and is the token embedding unless untied in the config.
at::Tensor OptForCausalLMImpl::logits(const at::Tensor& h) {
  return at::linear(h, lm_head_weight.defined() ? lm_head_weight : model->decoder->embed_tokens->weight);
}

// ---------------------------------------------------------------- the model

Blip2Model::Blip2Model(const json& config) {
  if (!opt<bool>(config, "use_decoder_only_language_model", true))
    throw Error("config: use_decoder_only_language_model false (a T5 language model, e.g. blip2-flan-t5) is not supported: roundtrip runs BLIP-2 OPT only");
  vcfg = vision_config(config.value("vision_config", json::object()));
  qcfg = QFormerConfig::from(config.value("qformer_config", json::object()), vcfg.hidden);
  text_json = config.value("text_config", json::object());
  tcfg = OptConfig::from(text_json);
  num_query = cfg_positive(config, "num_query_tokens", 32, "config");
  vision_model = register_module("vision_model", blip::VisionModel(vcfg));
  query_tokens = register_parameter("query_tokens", torch::zeros({1, num_query, qcfg.hidden}));
  qformer = register_module("qformer", QFormerModel(qcfg));
  language_projection = register_module("language_projection", torch::nn::Linear(qcfg.hidden, tcfg.hidden));
  language_model = register_module("language_model", OptForCausalLM(tcfg));
}

std::vector<std::string> Blip2Model::tied_keys() const { return {}; }

std::string Blip2Model::canonical_key(const std::string& key) const {
  // A published file may carry the tied LM head; load_weights checks that it equals embed_tokens.
  if (tcfg.tied && key == "language_model.lm_head.weight") return "language_model.model.decoder.embed_tokens.weight";
  return key;
}

bool Blip2Model::ignorable_key(const std::string& key) const {
  // Legacy arange buffers (position_ids) of older Q-Former checkpoints.
  const std::string suffix = ".position_ids";
  return key.size() >= suffix.size() && key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0;
}

at::ScalarType Blip2Model::param_dtype() const {
  for (auto& p : parameters()) return p.scalar_type();
  return at::kFloat;
}

at::Tensor Blip2Model::image_embeds(const TensorMap& in, const std::string& where) {
  auto it = in.find("image_embeds");
  if (it != in.end()) {
    const at::Tensor& e = it->second;
    if (e.dim() != 3 || e.size(2) != vcfg.hidden)
      throw Error(where + ": image_embeds must be [B, N, " + std::to_string(vcfg.hidden) + "], got " + shape_str(e.sizes()));
    return e.to(device(), param_dtype());
  }
  auto pit = in.find("pixel_values");
  if (pit == in.end()) throw Error(where + ": needs input 'pixel_values' or 'image_embeds'");
  return vision_model->forward(pit->second.to(device())).first;
}

std::pair<at::Tensor, at::Tensor> Blip2Model::query_outputs(const at::Tensor& embeds) {
  at::Tensor q = qformer->forward(query_tokens, embeds);
  return {q, language_projection(q)};
}

at::Tensor Blip2Model::ids_input(const TensorMap& in, const std::string& name, const std::string& where) {
  const at::Tensor& host = need(in, name, where);
  // Checked before the move (on the host when the caller's ids are there): OptDecoder::embed skips device ids.
  if (name != "labels" && host.numel() > 0 && !at::isFloatingType(host.scalar_type())) {
    const int64_t vocab = language_model->model->decoder->embed_tokens->weight.size(0);
    const auto lo = host.min().item<int64_t>(), hi = host.max().item<int64_t>();
    if (lo < 0 || hi >= vocab)
      throw Error(where + ": " + name + " token id " + std::to_string(lo < 0 ? lo : hi) + " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  }
  return gen::ids_input(in, name, where, device());
}

// inputs_embeds = [projected queries | embed_tokens(ids)], mask = [ones(Q) | attention_mask] -> [B, Q+T, V]
at::Tensor Blip2Model::forward_logits(const TensorMap& in, const std::string& where) {
  at::Tensor ids = ids_input(in, "input_ids", where);
  at::Tensor embeds = image_embeds(in, where);
  if (embeds.size(0) != ids.size(0))
    throw Error(where + ": " + std::to_string(embeds.size(0)) + " images but " + std::to_string(ids.size(0)) + " rows of input_ids");
  at::Tensor mask = gen::mask_input(in, ids, where).to(at::kLong);
  at::Tensor lang = query_outputs(embeds).second;  // [B, Q, Ht]
  auto& dec = language_model->model->decoder;
  at::Tensor x = at::cat({lang, dec->embed(ids).to(lang.scalar_type())}, 1);
  at::Tensor full_mask = at::cat({at::ones({ids.size(0), lang.size(1)}, mask.options()), mask}, 1);
  OptCache cache = dec->start_cache();
  return language_model->logits(dec->forward(x, full_mask, cache, /*keep=*/false));
}

TensorMap Blip2Model::call(const std::string& method, const TensorMap& in, const json& options) {
  const std::string where = "blip2." + method;
  const bool ckpt = opt<bool>(options, "gradient_checkpointing", false);
  vision_model->checkpointing = qformer->checkpointing = language_model->model->decoder->checkpointing = ckpt;
  if (method == "vision") {
    auto [last, pooled] = vision_model->forward(need(in, "pixel_values", where).to(device()));
    return {{"last_hidden_state", last}, {"pooler_output", pooled}};
  }
  if (method == "queries") {
    auto [q, lang] = query_outputs(image_embeds(in, where));
    return {{"qformer_last_hidden_state", q}, {"language_projection", lang}};
  }
  // The text part of the logits: the last T positions (position Q+t predicts token t+1).
  auto text_logits = [&]() {
    at::Tensor logits = forward_logits(in, where);
    const int64_t T = in.at("input_ids").size(1);
    return logits.narrow(1, logits.size(1) - T, T);
  };
  if (method == "logits") {
    if (opt<bool>(options, "text_only", false)) return {{"logits", text_logits()}};
    return {{"logits", forward_logits(in, where)}};
  }
  if (method == "token_probs") {
    const double temperature = opt<double>(options, "temperature", 1.0);
    if (!(temperature > 0)) throw Error(where + ": option temperature must be > 0, got " + std::to_string(temperature));
    return {{"probs", (text_logits() / temperature).softmax(-1, at::kFloat)}};
  }
  if (method == "loss") {
    // 4.37.2 computes the loss in Blip2ForConditionalGeneration: no label smoothing unless asked for.
    const double smoothing = opt<double>(options, "label_smoothing", 0.0);
    if (smoothing < 0 || smoothing > 1) throw Error(where + ": option label_smoothing must be in [0, 1], got " + std::to_string(smoothing));
    at::Tensor labels = ids_input(in, "labels", where);
    const at::Tensor& ids = need(in, "input_ids", where);
    if (labels.sizes() != ids.sizes())
      throw Error(where + ": labels " + shape_str(labels.sizes()) + " do not match input_ids " + shape_str(ids.sizes()));
    at::Tensor logits = text_logits();
    if (logits.size(1) < 2) throw Error(where + ": input_ids needs at least 2 columns for a shifted loss, got " + shape_str(ids.sizes()));
    return {{"loss", gen::shifted_caption_loss(logits, labels, smoothing)}};
  }
  if (method == "generate") return generate(*this, in, options);
  throw Error("blip2: unknown method '" + method + "' (known: vision, queries, logits, loss, token_probs, generate)");
}

}  // namespace blip2

namespace {
const bool registered = register_model("blip2", [](const json& config, const json&) -> std::shared_ptr<Model> {
  return std::make_shared<blip2::Blip2Model>(config);
});
}  // namespace

}  // namespace rt
