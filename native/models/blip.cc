// BLIP captioner: transformers' BlipForConditionalGeneration (vision ViT + BERT-style text decoder with
// cross-attention), under the published key names (vision_model.*, text_decoder.bert.*,
// text_decoder.cls.predictions.*). Numerics follow shared/fixtures/reference/README.md (BLIP section).
//
// Methods (model.call):
//   vision       {pixel_values}                                   -> {last_hidden_state, pooler_output}
//   positions    {} options {height, width}                       -> {position_embedding} (interpolated)
//   logits       {pixel_values|image_embeds, input_ids, attention_mask?}   -> {logits}
//   loss         {... as logits, labels}  options {label_smoothing} -> {loss}
//   token_probs  {... as logits}          options {temperature}     -> {probs}  (differentiable)
//   generate     {pixel_values|image_embeds, input_ids?, attention_mask?}  options below
//                -> {sequences, sequences_scores (beam), token_logprobs (greedy/sampling)}
#include "core/reduced_weights.h"
#include "nn/checkpoint.h"
#include "models/blip.h"
#include "models/generation.h"

namespace rt {
namespace blip {

VisionConfig VisionConfig::from(const json& c) {
  VisionConfig v;
  v.hidden = opt<int64_t>(c, "hidden_size", 768);
  v.intermediate = opt<int64_t>(c, "intermediate_size", 3072);
  v.layers = opt<int64_t>(c, "num_hidden_layers", 12);
  v.heads = opt<int64_t>(c, "num_attention_heads", 12);
  v.image_size = opt<int64_t>(c, "image_size", 384);
  v.patch_size = opt<int64_t>(c, "patch_size", 16);
  v.eps = opt<double>(c, "layer_norm_eps", 1e-5);
  v.act = opt<std::string>(c, "hidden_act", "gelu");
  return v;
}

TextConfig TextConfig::from(const json& c, int64_t vision_width) {
  TextConfig t;
  t.vocab = opt<int64_t>(c, "vocab_size", 30524);
  t.hidden = opt<int64_t>(c, "hidden_size", 768);
  t.intermediate = opt<int64_t>(c, "intermediate_size", 3072);
  t.layers = opt<int64_t>(c, "num_hidden_layers", 12);
  t.heads = opt<int64_t>(c, "num_attention_heads", 8);
  t.max_positions = opt<int64_t>(c, "max_position_embeddings", 512);
  t.eps = opt<double>(c, "layer_norm_eps", 1e-12);
  t.act = opt<std::string>(c, "hidden_act", "gelu");
  // BlipConfig always overwrites text_config.encoder_hidden_size with the vision width.
  t.encoder_hidden = vision_width;
  t.bos = opt<int64_t>(c, "bos_token_id", 30522);
  t.pad = opt<int64_t>(c, "pad_token_id", 0);
  t.sep = opt<int64_t>(c, "sep_token_id", 102);
  t.label_smoothing = opt<double>(c, "label_smoothing", 0.0);
  return t;
}

// ---------------------------------------------------------------- vision tower

VisionEmbeddingsImpl::VisionEmbeddingsImpl(const VisionConfig& c) : patch(c.patch_size) {
  if (c.image_size % c.patch_size != 0)
    throw Error("vision_config: image_size " + std::to_string(c.image_size) + " is not a multiple of patch_size " + std::to_string(c.patch_size));
  const int64_t grid = c.image_size / c.patch_size;
  class_embedding = register_parameter("class_embedding", torch::zeros({1, 1, c.hidden}));
  patch_embedding = register_module("patch_embedding", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, c.hidden, c.patch_size).stride(c.patch_size)));
  position_embedding = register_parameter("position_embedding", torch::zeros({1, grid * grid + 1, c.hidden}));
}

// Position rows for a gh×gw patch grid: [1, 1 + gh·gw, H]. The trained square grid is resized with
// PyTorch bicubic (align_corners=False, size-based step), as transformers' interpolate_pos_encoding and
// BLIP's interpolate_pos_embed do; the class row is kept.
at::Tensor VisionEmbeddingsImpl::positions(int64_t gh, int64_t gw) {
  const int64_t n = position_embedding.size(1) - 1, dim = position_embedding.size(2);
  if (gh * gw == n && gh == gw) return position_embedding;
  const auto g = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(n))));
  if (g * g != n) throw Error("vision_model.embeddings.position_embedding: " + std::to_string(n) + " patch rows do not form a square grid");
  at::Tensor cls = position_embedding.narrow(1, 0, 1);
  at::Tensor grid = position_embedding.narrow(1, 1, n).reshape({1, g, g, dim}).permute({0, 3, 1, 2});
  grid = at::upsample_bicubic2d(grid, {gh, gw}, /*align_corners=*/false, c10::nullopt, c10::nullopt);
  grid = grid.permute({0, 2, 3, 1}).reshape({1, gh * gw, dim});
  return at::cat({cls, grid}, 1);
}

// pixels: [B, 3, S, S'] -> [B, 1 + N, H]
at::Tensor VisionEmbeddingsImpl::forward(const at::Tensor& pixels) {
  if (pixels.dim() != 4 || pixels.size(1) != 3)
    throw Error("pixel_values: expected [B, 3, H, W], got " + shape_str(pixels.sizes()));
  if (pixels.size(2) < patch || pixels.size(3) < patch)
    throw Error("pixel_values: image " + shape_str(pixels.sizes()) + " is smaller than one patch (" + std::to_string(patch) + ")");
  at::Tensor x = patch_embedding(pixels.to(compute_dtype(class_embedding)));  // [B, H, gh, gw]
  const int64_t gh = x.size(2), gw = x.size(3);
  x = x.flatten(2).transpose(1, 2);
  at::Tensor cls = class_embedding.expand({x.size(0), 1, -1});
  return at::cat({cls, x}, 1) + positions(gh, gw);
}

VisionAttentionImpl::VisionAttentionImpl(const VisionConfig& c) : heads(c.heads) {
  if (c.hidden % c.heads != 0) throw Error("vision_config: hidden_size is not a multiple of num_attention_heads");
  qkv = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(c.hidden, 3 * c.hidden).bias(c.qkv_bias)));
  projection = register_module("projection", torch::nn::Linear(c.hidden, c.hidden));
}

// x: [B, T, H] -> [B, T, H]. qkv rows are q | k | v, head h owning rows h·hd..(h+1)·hd-1 of each third.
at::Tensor VisionAttentionImpl::forward(const at::Tensor& x) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
  at::Tensor mixed = qkv(x).reshape({B, T, 3, heads, C / heads}).permute({2, 0, 3, 1, 4});
  const double scale = 1.0 / std::sqrt(static_cast<double>(C / heads));
  return projection(nn::merge_heads(nn::attention(mixed[0], mixed[1], mixed[2], at::Tensor(), scale)));
}

namespace {
// Inference-time in-place arithmetic (as sd_blocks.h does for the UNet): without autograd a layer's temporaries
// are its own, so residual adds and the activation reuse their buffers instead of allocating (and zeroing) new
// ones. Out of place whenever a graph is recorded or the dtypes differ, as the result must not change.
bool can_inplace(const at::Tensor& into, const at::Tensor& other) {
  return !at::GradMode::is_enabled() && into.scalar_type() == other.scalar_type() && into.sizes() == other.sizes();
}
// a + b, reusing a's buffer when allowed (b + a is the same IEEE sum).
at::Tensor add_into(at::Tensor a, const at::Tensor& b) { return can_inplace(a, b) ? a.add_(b) : a + b; }
// The MLP activation of fc1's output, in place when allowed (same kernel).
at::Tensor activation_tmp(const std::string& act, at::Tensor x) {
  if (at::GradMode::is_enabled()) return nn::activation(act, x);
  if (act == "gelu") return at::gelu_(x);
  if (act == "relu") return at::relu_(x);
  if (act == "silu" || act == "swish") return at::silu_(x);
  return nn::activation(act, x);
}
}  // namespace

VisionMlpImpl::VisionMlpImpl(const VisionConfig& c) : act(c.act) {
  fc1 = register_module("fc1", torch::nn::Linear(c.hidden, c.intermediate));
  fc2 = register_module("fc2", torch::nn::Linear(c.intermediate, c.hidden));
}
at::Tensor VisionMlpImpl::forward(const at::Tensor& x) { return fc2(activation_tmp(act, fc1(x))); }

VisionLayerImpl::VisionLayerImpl(const VisionConfig& c) {
  layer_norm1 = register_module("layer_norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden}).eps(c.eps)));
  self_attn = register_module("self_attn", VisionAttention(c));
  layer_norm2 = register_module("layer_norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden}).eps(c.eps)));
  mlp = register_module("mlp", VisionMlp(c));
}
// x: [B, T, H] -> [B, T, H] (pre-LN)
at::Tensor VisionLayerImpl::forward(const at::Tensor& x) {
  at::Tensor h = add_into(self_attn(layer_norm1(x)), x);
  return add_into(mlp(layer_norm2(h)), h);
}

VisionEncoderImpl::VisionEncoderImpl(const VisionConfig& c) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.layers; ++i) layers->push_back(VisionLayer(c));
}

VisionModelImpl::VisionModelImpl(const VisionConfig& c) {
  embeddings = register_module("embeddings", VisionEmbeddings(c));
  encoder = register_module("encoder", VisionEncoder(c));
  post_layernorm = register_module("post_layernorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden}).eps(c.eps)));
}
// pixels: [B, 3, S, S] -> (last_hidden_state [B, 1+N, H] with post-LN on every token,
//                          pooler_output [B, H] = post-LN applied a second time to token 0)
std::pair<at::Tensor, at::Tensor> VisionModelImpl::forward(const at::Tensor& pixels) {
  at::Tensor x = embeddings(pixels);
  for (auto& layer : *encoder->layers) {
    auto* l = layer->as<VisionLayerImpl>();
    if (checkpointing)
      x = rt::nn::checkpoint([l](const std::vector<at::Tensor>& v) { return l->forward(v[0]); }, {x});
    else
      x = l->forward(x);
  }
  at::Tensor last = post_layernorm(x);
  return {last, post_layernorm(last.select(1, 0))};
}

// ---------------------------------------------------------------- text decoder

TextEmbeddingsImpl::TextEmbeddingsImpl(const TextConfig& c) {
  word_embeddings = register_module("word_embeddings", torch::nn::Embedding(c.vocab, c.hidden));
  position_embeddings = register_module("position_embeddings", torch::nn::Embedding(c.max_positions, c.hidden));
  LayerNorm = register_module("LayerNorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden}).eps(c.eps)));
}
// ids: [B, T] -> [B, T, H]; positions past .. past+T-1 (no token-type embedding in BLIP).
at::Tensor TextEmbeddingsImpl::forward(const at::Tensor& ids, int64_t past) {
  const int64_t T = ids.size(1), vocab = word_embeddings->weight.size(0), max_pos = position_embeddings->weight.size(0);
  if (past + T > max_pos)
    throw Error("input_ids: " + std::to_string(past + T) + " positions exceed max_position_embeddings " + std::to_string(max_pos));
  if (ids.numel() > 0) {
    const auto lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= vocab)
      throw Error("input_ids: token id " + std::to_string(lo < 0 ? lo : hi) + " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  }
  at::Tensor pos = at::arange(past, past + T, ids.options().dtype(at::kLong));
  return LayerNorm(word_embeddings(ids) + position_embeddings(pos).unsqueeze(0));
}

at::Tensor text_layer_forward(nn::BertLayerImpl& layer, const at::Tensor& x, const at::Tensor& self_mask, LayerKV& kv, bool cache) {
  auto [k, v] = layer.attention->self->keys_values(x);
  if (kv.self_k.defined()) {
    k = at::cat({kv.self_k, k}, 2);
    v = at::cat({kv.self_v, v}, 2);
  }
  if (cache) {
    kv.self_k = k;
    kv.self_v = v;
  }
  // The image mask is all ones, so cross-attention needs no additive mask.
  return layer.forward(x, k, v, self_mask, kv.cross_k, kv.cross_v, at::Tensor());
}

TextEncoderImpl::TextEncoderImpl(const TextConfig& c) {
  layer = register_module("layer", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.layers; ++i) layer->push_back(nn::BertLayer(c.hidden, c.intermediate, c.heads, c.eps, c.act, c.encoder_hidden));
}

TextModelImpl::TextModelImpl(const TextConfig& c) {
  embeddings = register_module("embeddings", TextEmbeddings(c));
  encoder = register_module("encoder", TextEncoder(c));
}

PredictionTransformImpl::PredictionTransformImpl(const TextConfig& c) : act(c.act) {
  dense = register_module("dense", torch::nn::Linear(c.hidden, c.hidden));
  LayerNorm = register_module("LayerNorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden}).eps(c.eps)));
}
at::Tensor PredictionTransformImpl::forward(const at::Tensor& x) { return LayerNorm(nn::activation(act, dense(x))); }

PredictionsImpl::PredictionsImpl(const TextConfig& c) {
  transform = register_module("transform", PredictionTransform(c));
  bias = register_parameter("bias", torch::zeros({c.vocab}));
}
ClsImpl::ClsImpl(const TextConfig& c) { predictions = register_module("predictions", Predictions(c)); }

TextDecoderImpl::TextDecoderImpl(const TextConfig& c) : cfg(c) {
  bert = register_module("bert", TextModel(c));
  cls = register_module("cls", Cls(c));
}

// Additive self-attention mask: causal over the T new tokens (every cached key visible) × the 2-D
// padding mask over all past+T keys, turned into -10000 on blocked keys as BlipTextModel does.
// mask2d: [B, S] (1 = attend), S = past + T -> [B, 1, T, S]
at::Tensor TextDecoderImpl::self_mask(const at::Tensor& mask2d, int64_t T, at::ScalarType dtype) {
  const int64_t B = mask2d.size(0), S = mask2d.size(1), past = S - T;
  auto lopts = mask2d.options().dtype(at::kLong);
  at::Tensor causal = at::arange(S, lopts).view({1, S}) <= (at::arange(T, lopts) + past).view({T, 1});  // [T, S]
  at::Tensor allowed = causal.unsqueeze(0).to(dtype) * mask2d.to(dtype).view({B, 1, S});
  return ((1.0 - allowed) * -10000.0).unsqueeze(1);
}

// Fills every layer's cross-attention keys/values from the image embeddings, repeated `repeat` times
// per image (beams / returned sequences share their image's keys).
DecoderCache TextDecoderImpl::start_cache(const at::Tensor& image_embeds, int64_t repeat) {
  DecoderCache cache;
  for (auto& m : *bert->encoder->layer) {
    auto* layer = m->as<nn::BertLayerImpl>();
    auto [k, v] = layer->crossattention->self->keys_values(image_embeds);
    if (repeat > 1) {
      k = k.repeat_interleave(repeat, 0);
      v = v.repeat_interleave(repeat, 0);
    }
    cache.layers.push_back({at::Tensor(), at::Tensor(), k, v});
  }
  return cache;
}

// ids: [B, T] (new tokens), mask2d: [B, past+T] -> hidden states [B, T, H]; appends to the cache.
at::Tensor TextDecoderImpl::hidden(const at::Tensor& ids, const at::Tensor& mask2d, DecoderCache& cache, bool keep) {
  const int64_t T = ids.size(1);
  at::Tensor x = bert->embeddings->forward(ids, cache.past);
  if (mask2d.size(1) != cache.past + T)
    throw Error("attention_mask: has " + std::to_string(mask2d.size(1)) + " columns, expected " + std::to_string(cache.past + T));
  at::Tensor mask = self_mask(mask2d, T, x.scalar_type());
  size_t i = 0;
  for (auto& m : *bert->encoder->layer) {
    auto* layer = m->as<nn::BertLayerImpl>();
    LayerKV& kv = cache.layers[i++];
    if (checkpointing && !keep) {
      // Inputs: hidden states, mask and this layer's cross keys/values (trainable with xattn-kv).
      x = rt::nn::checkpoint(
          [layer](const std::vector<at::Tensor>& v) {
            LayerKV tmp{at::Tensor(), at::Tensor(), v[2], v[3]};
            return text_layer_forward(*layer, v[0], v[1], tmp, false);
          },
          {x, mask, kv.cross_k, kv.cross_v});
    } else {
      x = text_layer_forward(*layer, x, mask, kv, keep);
    }
  }
  if (keep) cache.past += T;
  return x;
}

// h: [..., H] -> [..., V]; the decoder weight is the word embedding matrix (tied), its bias the
// predictions bias (tied).
at::Tensor TextDecoderImpl::logits(const at::Tensor& h) {
  auto& p = cls->predictions;
  return at::linear(p->transform(h), bert->embeddings->word_embeddings->weight, p->bias);
}

void DecoderCache::reorder(const at::Tensor& rows) {
  for (auto& l : layers) {
    if (l.self_k.defined()) {
      l.self_k = l.self_k.index_select(0, rows);
      l.self_v = l.self_v.index_select(0, rows);
    }
  }
}

// ---------------------------------------------------------------- the model

BlipModel::BlipModel(const json& config) {
  vcfg = VisionConfig::from(config.value("vision_config", json::object()));
  tcfg = TextConfig::from(config.value("text_config", json::object()), vcfg.hidden);
  vision_model = register_module("vision_model", VisionModel(vcfg));
  text_decoder = register_module("text_decoder", TextDecoder(tcfg));
}

std::string BlipModel::canonical_key(const std::string& key) const {
  // Published files may carry the tied LM-head copies; they hold the same numbers as their targets.
  if (key == "text_decoder.cls.predictions.decoder.weight") return "text_decoder.bert.embeddings.word_embeddings.weight";
  if (key == "text_decoder.cls.predictions.decoder.bias") return "text_decoder.cls.predictions.bias";
  return key;
}

bool BlipModel::ignorable_key(const std::string& key) const {
  // Legacy arange buffers (BLIP's med.py saves text_decoder.bert.embeddings.position_ids).
  const std::string suffix = ".position_ids";
  return key.size() >= suffix.size() && key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0;
}

at::Tensor BlipModel::image_embeds(const TensorMap& in, const std::string& where) {
  auto it = in.find("image_embeds");
  if (it != in.end()) {
    const at::Tensor& e = it->second;
    if (e.dim() != 3 || e.size(2) != tcfg.encoder_hidden)
      throw Error(where + ": image_embeds must be [B, N, " + std::to_string(tcfg.encoder_hidden) + "], got " + shape_str(e.sizes()));
    return e.to(device(), param_dtype());
  }
  auto pit = in.find("pixel_values");
  if (pit == in.end()) throw Error(where + ": needs input 'pixel_values' or 'image_embeds'");
  const at::Tensor pixels = pit->second.to(device());
  // A frozen tower on a constant image records no graph: it then runs without grad mode, so its layers reuse their
  // temporaries (in-place residuals, GELU, softmax; the same arithmetic). Pixels that carry a gradient (the joint
  // step's decoded image) or a trainable vision weight keep autograd.
  bool needs_graph = at::GradMode::is_enabled() && pixels.requires_grad();
  for (const auto& p : vision_model->parameters()) {
    if (needs_graph) break;
    needs_graph = at::GradMode::is_enabled() && p.requires_grad();
  }
  if (needs_graph) return vision_model->forward(pixels).first;
  at::NoGradGuard no_grad;
  return vision_model->forward(pixels).first;
}

at::ScalarType BlipModel::param_dtype() const {
  for (auto& p : parameters()) return compute_dtype(p);
  return at::kFloat;
}

at::Tensor BlipModel::ids_input(const TensorMap& in, const std::string& name, const std::string& where) {
  return gen::ids_input(in, name, where, device());
}

// Decoder logits over every position for teacher-forced input_ids: [B, T, V].
at::Tensor BlipModel::forward_logits(const TensorMap& in, const std::string& where) {
  at::Tensor ids = ids_input(in, "input_ids", where);
  at::Tensor embeds = image_embeds(in, where);
  if (embeds.size(0) != ids.size(0))
    throw Error(where + ": " + std::to_string(embeds.size(0)) + " images but " + std::to_string(ids.size(0)) + " rows of input_ids");
  at::Tensor mask = gen::mask_input(in, ids, where);
  DecoderCache cache = text_decoder->start_cache(embeds, 1);
  return text_decoder->logits(text_decoder->hidden(ids, mask, cache, /*keep=*/false));
}

TensorMap BlipModel::call(const std::string& method, const TensorMap& in, const json& options) {
  const std::string where = "blip." + method;
  vision_model->checkpointing = text_decoder->checkpointing = opt<bool>(options, "gradient_checkpointing", false);
  if (method == "vision") {
    auto [last, pooled] = vision_model->forward(need(in, "pixel_values", where).to(device()));
    return {{"last_hidden_state", last}, {"pooler_output", pooled}};
  }
  if (method == "positions") {
    // The vision position rows used for an image of `height`×`width` pixels: [1, 1 + gh·gw, H].
    const int64_t h = opt<int64_t>(options, "height", vcfg.image_size), w = opt<int64_t>(options, "width", vcfg.image_size);
    if (h < vcfg.patch_size || w < vcfg.patch_size) throw Error(where + ": image size " + std::to_string(h) + "x" + std::to_string(w) + " is smaller than one patch");
    return {{"position_embedding", vision_model->embeddings->positions(h / vcfg.patch_size, w / vcfg.patch_size)}};
  }
  if (method == "logits") return {{"logits", forward_logits(in, where)}};
  if (method == "token_probs") {
    const double temperature = opt<double>(options, "temperature", 1.0);
    if (!(temperature > 0)) throw Error(where + ": option temperature must be > 0, got " + std::to_string(temperature));
    return {{"probs", (forward_logits(in, where) / temperature).softmax(-1, at::kFloat)}};
  }
  if (method == "loss") {
    const double smoothing = opt<double>(options, "label_smoothing", tcfg.label_smoothing);
    if (smoothing < 0 || smoothing > 1) throw Error(where + ": option label_smoothing must be in [0, 1], got " + std::to_string(smoothing));
    at::Tensor labels = ids_input(in, "labels", where);
    at::Tensor logits = forward_logits(in, where);
    if (labels.sizes() != logits.sizes().slice(0, 2))
      throw Error(where + ": labels " + shape_str(labels.sizes()) + " do not match input_ids " + shape_str(logits.sizes().slice(0, 2)));
    // Position t predicts token t+1: CE(logits[:, :-1], labels[:, 1:]), mean over non-ignored targets.
    return {{"loss", gen::shifted_caption_loss(logits, labels, smoothing)}};
  }
  if (method == "generate") return generate(*this, in, options);
  throw Error("blip: unknown method '" + method + "' (known: vision, positions, logits, loss, token_probs, generate)");
}

}  // namespace blip

namespace {
const bool registered = register_model("blip", [](const json& config, const json&) -> std::shared_ptr<Model> {
  return std::make_shared<blip::BlipModel>(config);
});
}  // namespace

}  // namespace rt
