// CLIP (transformers CLIPModel / CLIPTextModel / CLIPVisionModel), registered as kind "clip".
//
// A config with text_config + vision_config builds the full CLIPModel (both towers, projections,
// logit_scale); a text config alone (model_type "clip_text_model", Stable Diffusion's text encoder) builds
// just `text_model.*`. Modules are registered under the published key names, so named_parameters() is the
// checkpoint layout. Methods:
//   "text":    {input_ids [B,T] (+ attention_mask)} or {soft_tokens P [B,T,V]} -> last_hidden_state,
//              pooler_output, and with a projection text_embeds_unnormalized / text_embeds
//   "vision":  {pixel_values [B,C,S,S]} -> last_hidden_state (no post-LN), pooler_output,
//              image_embeds_unnormalized / image_embeds
//   "forward": both, plus logit_scale_exp, logits_per_text [Bt,Bi], logits_per_image
#include "core/reduced_weights.h"
#include "nn/encoder_util.h"
#include "nn/layers.h"

namespace rt {
namespace {

struct ClipTowerConfig {
  int64_t hidden = 512, intermediate = 2048, heads = 8, layers = 12;
  double eps = 1e-5;
  std::string act = "quick_gelu";
};

ClipTowerConfig read_tower(const json& c, const ClipTowerConfig& defaults, const std::string& where) {
  ClipTowerConfig t;
  t.hidden = enc::cfg_positive(c, "hidden_size", defaults.hidden, where);
  t.intermediate = enc::cfg_positive(c, "intermediate_size", defaults.intermediate, where);
  t.heads = enc::cfg_positive(c, "num_attention_heads", defaults.heads, where);
  t.layers = enc::cfg_int(c, "num_hidden_layers", defaults.layers, where);
  t.eps = enc::cfg_double(c, "layer_norm_eps", defaults.eps, where);
  t.act = enc::checked_act(enc::cfg_string(c, "hidden_act", defaults.act, where), where);
  enc::check_heads(t.hidden, t.heads, where);
  return t;
}

struct ClipAttention : torch::nn::Module {
  torch::nn::Linear k_proj{nullptr}, v_proj{nullptr}, q_proj{nullptr}, out_proj{nullptr};
  int64_t heads;
  double scale;
  ClipAttention(int64_t hidden, int64_t heads) : heads(heads), scale(1.0 / std::sqrt(double(hidden / heads))) {
    k_proj = register_module("k_proj", enc::linear(hidden, hidden));
    v_proj = register_module("v_proj", enc::linear(hidden, hidden));
    q_proj = register_module("q_proj", enc::linear(hidden, hidden));
    out_proj = register_module("out_proj", enc::linear(hidden, hidden));
  }
  // x: [B, T, H], mask additive [B|1, 1, T, T] or undefined -> [B, T, H]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask) {
    auto q = nn::split_heads(q_proj(x), heads), k = nn::split_heads(k_proj(x), heads), v = nn::split_heads(v_proj(x), heads);
    return out_proj(nn::merge_heads(nn::attention(q, k, v, mask, scale)));
  }
};

struct ClipMlp : torch::nn::Module {
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  std::string act;
  ClipMlp(int64_t hidden, int64_t inter, std::string act) : act(std::move(act)) {
    fc1 = register_module("fc1", enc::linear(hidden, inter));
    fc2 = register_module("fc2", enc::linear(inter, hidden));
  }
  at::Tensor forward(const at::Tensor& x) { return fc2(nn::activation(act, fc1(x))); }
};

// Pre-LN block: x += attn(LN1(x)); x += mlp(LN2(x)).
struct ClipLayer : torch::nn::Module {
  std::shared_ptr<ClipAttention> self_attn;
  torch::nn::LayerNorm layer_norm1{nullptr}, layer_norm2{nullptr};
  std::shared_ptr<ClipMlp> mlp;
  explicit ClipLayer(const ClipTowerConfig& c) {
    self_attn = register_module("self_attn", std::make_shared<ClipAttention>(c.hidden, c.heads));
    layer_norm1 = register_module("layer_norm1", enc::layer_norm(c.hidden, c.eps));
    mlp = register_module("mlp", std::make_shared<ClipMlp>(c.hidden, c.intermediate, c.act));
    layer_norm2 = register_module("layer_norm2", enc::layer_norm(c.hidden, c.eps));
  }
  // x: [B, T, H]
  at::Tensor forward(at::Tensor x, const at::Tensor& mask) {
    x = x + self_attn->forward(layer_norm1(x), mask);
    return x + mlp->forward(layer_norm2(x));
  }
};

struct ClipEncoder : torch::nn::Module {
  torch::nn::ModuleList layers;
  explicit ClipEncoder(const ClipTowerConfig& c) {
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.layers; ++i) layers->push_back(std::make_shared<ClipLayer>(c));
  }
  at::Tensor forward(at::Tensor x, const at::Tensor& mask) {
    for (auto& l : *layers) x = l->as<ClipLayer>()->forward(x, mask);
    return x;
  }
};

struct ClipTextEmbeddings : torch::nn::Module {
  torch::nn::Embedding token_embedding{nullptr}, position_embedding{nullptr};
  ClipTextEmbeddings(int64_t vocab, int64_t positions, int64_t hidden) {
    token_embedding = register_module("token_embedding", torch::nn::Embedding(vocab, hidden));
    position_embedding = register_module("position_embedding", torch::nn::Embedding(positions, hidden));
  }
};

struct ClipTextTransformer : torch::nn::Module {
  std::shared_ptr<ClipTextEmbeddings> embeddings;
  std::shared_ptr<ClipEncoder> encoder;
  torch::nn::LayerNorm final_layer_norm{nullptr};
  ClipTextTransformer(const ClipTowerConfig& c, int64_t vocab, int64_t positions) {
    embeddings = register_module("embeddings", std::make_shared<ClipTextEmbeddings>(vocab, positions, c.hidden));
    encoder = register_module("encoder", std::make_shared<ClipEncoder>(c));
    final_layer_norm = register_module("final_layer_norm", enc::layer_norm(c.hidden, c.eps));
  }
};

struct ClipVisionEmbeddings : torch::nn::Module {
  at::Tensor class_embedding;
  torch::nn::Conv2d patch_embedding{nullptr};
  torch::nn::Embedding position_embedding{nullptr};
  ClipVisionEmbeddings(int64_t channels, int64_t hidden, int64_t patch, int64_t positions) {
    class_embedding = register_parameter("class_embedding", torch::zeros({hidden}));
    patch_embedding = register_module("patch_embedding",
                                      torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, hidden, patch).stride(patch).bias(false)));
    position_embedding = register_module("position_embedding", torch::nn::Embedding(positions, hidden));
  }
};

struct ClipVisionTransformer : torch::nn::Module {
  std::shared_ptr<ClipVisionEmbeddings> embeddings;
  torch::nn::LayerNorm pre_layrnorm{nullptr}, post_layernorm{nullptr};  // (sic) the published key name
  std::shared_ptr<ClipEncoder> encoder;
  ClipVisionTransformer(const ClipTowerConfig& c, int64_t channels, int64_t patch, int64_t positions) {
    embeddings = register_module("embeddings", std::make_shared<ClipVisionEmbeddings>(channels, c.hidden, patch, positions));
    pre_layrnorm = register_module("pre_layrnorm", enc::layer_norm(c.hidden, c.eps));
    encoder = register_module("encoder", std::make_shared<ClipEncoder>(c));
    post_layernorm = register_module("post_layernorm", enc::layer_norm(c.hidden, c.eps));
  }
};

// The nested text/vision config of a CLIPModel config (older Hub files use *_config_dict).
json sub_config(const json& config, const char* name) {
  if (!config.is_object()) return json();
  auto it = config.find(name);
  if (it != config.end() && it->is_object()) return *it;
  it = config.find(std::string(name) + "_dict");
  if (it != config.end() && it->is_object()) return *it;
  return json();
}

struct ClipModel : Model {
  ClipTowerConfig tcfg, vcfg;
  int64_t vocab = 49408, max_positions = 77, eos_token_id = 49407;
  int64_t image_size = 224, patch = 32, channels = 3, projection_dim = 512;
  bool has_vision = false;
  std::shared_ptr<ClipTextTransformer> text_model;
  std::shared_ptr<ClipVisionTransformer> vision_model;
  torch::nn::Linear visual_projection{nullptr}, text_projection{nullptr};
  at::Tensor logit_scale;

  explicit ClipModel(const json& config) {
    if (!config.is_object()) throw Error("clip: the config must be a JSON object");
    const std::string model_type = enc::cfg_string(config, "model_type", "", "clip config");
    json text = sub_config(config, "text_config");
    json vision = sub_config(config, "vision_config");
    // A bare text config (SD's text_encoder/config.json) carries the fields at the top level.
    if (text.is_null()) {
      if (model_type == "clip" || !vision.is_null())
        throw Error("clip: a CLIPModel config needs 'text_config' (got only 'vision_config')");
      text = config;
    }
    has_vision = !vision.is_null() && model_type != "clip_text_model";
    const std::string tw = "clip text_config";
    tcfg = read_tower(text, ClipTowerConfig{}, tw);
    vocab = enc::cfg_positive(text, "vocab_size", 49408, tw);
    max_positions = enc::cfg_positive(text, "max_position_embeddings", 77, tw);
    eos_token_id = enc::cfg_int(text, "eos_token_id", 49407, tw);
    text_model = register_module("text_model", std::make_shared<ClipTextTransformer>(tcfg, vocab, max_positions));
    if (has_vision) {
      const std::string vw = "clip vision_config";
      vcfg = read_tower(vision, ClipTowerConfig{768, 3072, 12, 12, 1e-5, "quick_gelu"}, vw);
      image_size = enc::cfg_positive(vision, "image_size", 224, vw);
      patch = enc::cfg_positive(vision, "patch_size", 32, vw);
      channels = enc::cfg_positive(vision, "num_channels", 3, vw);
      if (image_size % patch != 0)
        throw Error(vw + ": image_size " + std::to_string(image_size) + " is not a multiple of patch_size " + std::to_string(patch));
      const int64_t grid = image_size / patch;
      vision_model = register_module("vision_model", std::make_shared<ClipVisionTransformer>(vcfg, channels, patch, grid * grid + 1));
      projection_dim = enc::cfg_positive(config, "projection_dim", 512, "clip config");
      visual_projection = register_module("visual_projection", enc::linear(vcfg.hidden, projection_dim, false));
      text_projection = register_module("text_projection", enc::linear(tcfg.hidden, projection_dim, false));
      logit_scale = register_parameter("logit_scale", torch::full({}, enc::cfg_double(config, "logit_scale_init_value", 2.6592, "clip config"), torch::kFloat));
    }
  }

  // transformers 5.x saves a CLIPTextModel's keys without the `text_model.` prefix.
  std::string canonical_key(const std::string& key) const override {
    if (has_vision) return key;
    for (const char* p : {"embeddings.", "encoder.", "final_layer_norm."})
      if (key.rfind(p, 0) == 0) return "text_model." + key;
    return key;
  }

  bool ignorable_key(const std::string& key) const override {
    // Legacy non-persistent buffers (always arange).
    return key == "text_model.embeddings.position_ids" || key == "vision_model.embeddings.position_ids";
  }

  // The causal mask (finfo.min above the diagonal) plus the optional padding mask on keys.
  // -> [B|1, 1, T, T]
  at::Tensor text_mask(int64_t B, int64_t T, const at::Tensor& attention_mask, const at::TensorOptions& o) {
    const double lo = nn::mask_min(o.dtype().toScalarType());
    at::Tensor mask = at::full({T, T}, lo, o).triu(1).view({1, 1, T, T});
    if (attention_mask.defined()) {
      if (attention_mask.dim() != 2 || attention_mask.size(0) != B || attention_mask.size(1) != T)
        throw Error("clip.text: attention_mask must be [" + std::to_string(B) + ", " + std::to_string(T) + "], got " +
                    shape_str(attention_mask.sizes()));
      at::Tensor pad = (1.0 - attention_mask.to(o.dtype())) * lo;  // [B, T]
      mask = mask + pad.view({B, 1, 1, T});
    }
    return mask;
  }

  TensorMap text(const TensorMap& in, const json& options) {
    const at::Device dev = device();
    auto emb = text_model->embeddings;
    at::Tensor x, ids;
    if (in.count("soft_tokens")) {
      // Soft path: probabilities P [B, T, V] @ token_embedding.weight, so gradients reach P. For one-hot
      // P this is bit-identical to the lookup (each sum has one non-zero term).
      at::Tensor P = in.at("soft_tokens").to(dev);
      if (P.dim() != 3 || P.size(2) != vocab)
        throw Error("clip.text: soft_tokens must be [B, T, " + std::to_string(vocab) + "], got " + shape_str(P.sizes()));
      if (!at::isFloatingType(P.scalar_type())) throw Error("clip.text: soft_tokens must be floating point, got " + dtype_name(P.scalar_type()));
      x = at::matmul(P.to(compute_dtype(emb->token_embedding->weight)), emb->token_embedding->weight);
      // Pooling needs ids: the caller's, or the most probable token at each position.
      ids = in.count("input_ids") ? in.at("input_ids").to(dev) : P.detach().argmax(-1);
    } else if (in.count("input_ids")) {
      ids = in.at("input_ids").to(dev);
      if (ids.dim() != 2) throw Error("clip.text: input_ids must be [B, T], got " + shape_str(ids.sizes()));
      if (at::isFloatingType(ids.scalar_type())) throw Error("clip.text: input_ids must be an integer tensor");
      ids = ids.to(at::kLong);
      if (ids.numel() && (ids.min().item<int64_t>() < 0 || ids.max().item<int64_t>() >= vocab))
        throw Error("clip.text: input_ids must lie in [0, " + std::to_string(vocab) + "), got values in [" +
                    std::to_string(ids.min().item<int64_t>()) + ", " + std::to_string(ids.max().item<int64_t>()) + "]");
      x = emb->token_embedding(ids);
    } else {
      throw Error("clip.text: expected input 'input_ids' [B, T] or 'soft_tokens' [B, T, vocab]");
    }
    const int64_t B = x.size(0), T = x.size(1);
    if (T > max_positions)
      throw Error("clip.text: sequence length " + std::to_string(T) + " exceeds max_position_embeddings " + std::to_string(max_positions));
    if (ids.size(0) != B || ids.size(1) != T)
      throw Error("clip.text: input_ids " + shape_str(ids.sizes()) + " do not match soft_tokens " + shape_str(x.sizes()));
    // x: [B, T, H]
    x = x + emb->position_embedding->weight.narrow(0, 0, T).unsqueeze(0);
    at::Tensor am;
    if (in.count("attention_mask")) am = in.at("attention_mask").to(dev);
    at::Tensor h = text_model->encoder->forward(x, text_mask(B, T, am, x.options()));
    h = text_model->final_layer_norm(h);
    // Pooled row: legacy configs (eos_token_id == 2) take argmax(ids) = first position of the highest id;
    // newer ones the first position holding eos_token_id.
    at::Tensor pos = eos_token_id == 2 ? ids.argmax(-1) : ids.eq(eos_token_id).to(at::kInt).argmax(-1);
    at::Tensor pooled = h.index({at::arange(B, ids.options()), pos});  // [B, H]
    TensorMap out{{"last_hidden_state", h}, {"pooler_output", pooled}};
    if (text_projection) {
      at::Tensor e = text_projection(pooled);
      out["text_embeds_unnormalized"] = e;
      out["text_embeds"] = e / e.pow(2).sum(-1, true).sqrt();
    }
    (void)options;
    return out;
  }

  TensorMap vision(const TensorMap& in) {
    if (!has_vision) throw Error("clip.vision: this is a text-only CLIP model (config has no vision_config)");
    at::Tensor px = need(in, "pixel_values", "clip.vision").to(device());
    if (px.dim() != 4 || px.size(1) != channels || px.size(2) != image_size || px.size(3) != image_size)
      throw Error("clip.vision: pixel_values must be [B, " + std::to_string(channels) + ", " + std::to_string(image_size) + ", " +
                  std::to_string(image_size) + "], got " + shape_str(px.sizes()));
    auto emb = vision_model->embeddings;
    px = px.to(compute_dtype(emb->patch_embedding->weight));
    const int64_t B = px.size(0);
    at::Tensor patches = emb->patch_embedding(px).flatten(2).transpose(1, 2);  // [B, N, H]
    at::Tensor cls = emb->class_embedding.view({1, 1, -1}).expand({B, 1, -1});
    at::Tensor x = at::cat({cls, patches}, 1) + emb->position_embedding->weight.unsqueeze(0);  // [B, N+1, H]
    x = vision_model->pre_layrnorm(x);
    at::Tensor h = vision_model->encoder->forward(x, at::Tensor());
    at::Tensor pooled = vision_model->post_layernorm(h.select(1, 0));
    at::Tensor e = visual_projection(pooled);
    return {{"last_hidden_state", h},
            {"pooler_output", pooled},
            {"image_embeds_unnormalized", e},
            {"image_embeds", e / e.pow(2).sum(-1, true).sqrt()}};
  }

  TensorMap call(const std::string& method, const TensorMap& in, const json& options) override {
    if (method == "text") return text(in, options);
    if (method == "vision") return vision(in);
    if (method == "forward") {
      if (!has_vision) throw Error("clip.forward: this is a text-only CLIP model; use method 'text'");
      TensorMap t = text(in, options), v = vision(in);
      TensorMap out;
      for (auto& [k, x] : t) out["text_" + k] = x;
      for (auto& [k, x] : v) out["vision_" + k] = x;
      out["text_embeds"] = t["text_embeds"];
      out["text_embeds_unnormalized"] = t["text_embeds_unnormalized"];
      out["image_embeds"] = v["image_embeds"];
      out["image_embeds_unnormalized"] = v["image_embeds_unnormalized"];
      out.erase("text_text_embeds");
      out.erase("text_text_embeds_unnormalized");
      out.erase("vision_image_embeds");
      out.erase("vision_image_embeds_unnormalized");
      at::Tensor s = logit_scale.exp();
      out["logit_scale_exp"] = s;
      at::Tensor lpt = at::matmul(t["text_embeds"], v["image_embeds"].t()) * s;  // [Bt, Bi]
      out["logits_per_text"] = lpt;
      out["logits_per_image"] = lpt.t();
      return out;
    }
    if (method == "set_tensors") return enc::set_tensors(*this, in);
    throw Error("clip: unknown method '" + method + "' (known: text, vision, forward, set_tensors)");
  }
};

const bool registered = register_model("clip", [](const json& config, const json&) { return std::make_shared<ClipModel>(config); });

}  // namespace
}  // namespace rt
