// ViT (transformers ViTModel without pooler: facebook/dino-vitb8 layout), registered as kind "vit".
//
// Method "forward": {pixel_values [B, C, H, W]} -> last_hidden_state [B, 1+h·w, D] (after the final
// `layernorm`), cls [B, D], pos_embed [1, 1+h·w, D] (the position embeddings actually added).
// Options: interpolation "dino" (default) | "hf" — how the trained position grid is resized for other image
// sizes (see interpolate_positions).
//
// The original facebookresearch/dino layout (blocks.{i}.attn.qkv fused, ...) is converted to these names
// in TypeScript (lib/models/vit.ts) and installed with the "set_tensors" method; a file-level rename table
// cannot split the fused qkv rows.
#include "nn/bert_layers.h"
#include "nn/encoder_util.h"
#include "nn/layers.h"

namespace rt {
namespace {

// ViTConfig: the encoder sizes (enc::EncoderSizes, ViTConfig's defaults), the patch grid and qkv_bias.
struct VitConfig : enc::EncoderSizes {
  int64_t image_size = 224, patch = 16, channels = 3;
  bool qkv_bias = true;
};

// `attention`: `attention.{query,key,value}` (nn/bert_layers.h's projections; no mask) + `output.dense`.
struct VitSelfOutput : torch::nn::Module {
  torch::nn::Linear dense{nullptr};
  VitSelfOutput(int64_t in, int64_t out) { dense = register_module("dense", enc::linear(in, out)); }
};

struct VitAttention : torch::nn::Module {
  nn::BertSelfAttention attention{nullptr};
  std::shared_ptr<VitSelfOutput> output;
  explicit VitAttention(const VitConfig& c) {
    attention = register_module("attention", nn::BertSelfAttention(c.hidden, c.hidden, c.heads, c.qkv_bias));
    output = register_module("output", std::make_shared<VitSelfOutput>(c.hidden, c.hidden));
  }
  // x: [B, T, D] -> [B, T, D]
  at::Tensor forward(const at::Tensor& x) {
    auto [k, v] = attention->keys_values(x);
    return output->dense(attention->attend(x, k, v, at::Tensor()));
  }
};

// Pre-LN block: x += attn(LN_before(x)); x += output.dense(intermediate(LN_after(x))), `intermediate` being
// BERT's dense + activation (nn::BertIntermediate).
struct VitLayer : torch::nn::Module {
  std::shared_ptr<VitAttention> attention;
  nn::BertIntermediate intermediate{nullptr};
  std::shared_ptr<VitSelfOutput> output;
  torch::nn::LayerNorm layernorm_before{nullptr}, layernorm_after{nullptr};
  explicit VitLayer(const VitConfig& c) {
    attention = register_module("attention", std::make_shared<VitAttention>(c));
    intermediate = register_module("intermediate", nn::BertIntermediate(c.hidden, c.intermediate, c.act));
    output = register_module("output", std::make_shared<VitSelfOutput>(c.intermediate, c.hidden));
    layernorm_before = register_module("layernorm_before", enc::layer_norm(c.hidden, c.eps));
    layernorm_after = register_module("layernorm_after", enc::layer_norm(c.hidden, c.eps));
  }
  // x: [B, T, D] -> [B, T, D]
  at::Tensor forward(at::Tensor x) {
    x = x + attention->forward(layernorm_before(x));
    return x + output->dense(intermediate(layernorm_after(x)));
  }
};

struct VitPatchEmbeddings : torch::nn::Module {
  torch::nn::Conv2d projection{nullptr};
  VitPatchEmbeddings(int64_t channels, int64_t hidden, int64_t patch) {
    projection = register_module("projection", torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, hidden, patch).stride(patch)));
  }
};

struct VitEmbeddings : torch::nn::Module {
  at::Tensor cls_token, position_embeddings;
  std::shared_ptr<VitPatchEmbeddings> patch_embeddings;
  VitEmbeddings(const VitConfig& c, int64_t grid) {
    cls_token = register_parameter("cls_token", torch::zeros({1, 1, c.hidden}));
    position_embeddings = register_parameter("position_embeddings", torch::zeros({1, grid * grid + 1, c.hidden}));
    patch_embeddings = register_module("patch_embeddings", std::make_shared<VitPatchEmbeddings>(c.channels, c.hidden, c.patch));
  }
};

struct VitEncoder : torch::nn::Module {
  torch::nn::ModuleList layer;
  explicit VitEncoder(const VitConfig& c) {
    layer = register_module("layer", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.layers; ++i) layer->push_back(std::make_shared<VitLayer>(c));
  }
};

struct VitModel : Model {
  VitConfig cfg;
  int64_t grid;
  std::shared_ptr<VitEmbeddings> embeddings;
  std::shared_ptr<VitEncoder> encoder;
  torch::nn::LayerNorm layernorm{nullptr};

  explicit VitModel(const json& c) {
    if (!c.is_object()) throw Error("vit: the config must be a JSON object");
    const std::string w = "vit config";
    static_cast<enc::EncoderSizes&>(cfg) = enc::encoder_sizes(c, {}, w);
    cfg.qkv_bias = enc::cfg_bool(c, "qkv_bias", true, w);
    cfg.image_size = enc::cfg_positive(c, "image_size", 224, w);
    cfg.patch = enc::cfg_positive(c, "patch_size", 16, w);
    cfg.channels = enc::cfg_positive(c, "num_channels", 3, w);
    grid = cfg.image_size / cfg.patch;
    if (grid < 1) throw Error(w + ": image_size " + std::to_string(cfg.image_size) + " is smaller than patch_size " + std::to_string(cfg.patch));
    embeddings = register_module("embeddings", std::make_shared<VitEmbeddings>(cfg, grid));
    encoder = register_module("encoder", std::make_shared<VitEncoder>(cfg));
    layernorm = register_module("layernorm", enc::layer_norm(cfg.hidden, cfg.eps));
  }

  bool ignorable_key(const std::string& key) const override {
    // ViTModel checkpoints saved with add_pooling_layer=True carry a pooler this backbone never uses.
    return key.rfind("pooler.", 0) == 0;
  }

  // Position embeddings for an image of H×W pixels -> [1, 1+h·w, D]. The class row is kept; the g×g patch
  // grid is resized by bicubic interpolation unless the patch count matches and H == W (both references'
  // condition). "dino": the original code's scale_factor (h+0.1)/g, so the kernel step is float32(1/scale);
  // "hf": transformers >= 4.45, size=(h, w), step g/h.
  at::Tensor interpolate_positions(int64_t H, int64_t W, const std::string& mode) {
    const at::Tensor& pos = embeddings->position_embeddings;  // [1, g²+1, D]
    const int64_t h = H / cfg.patch, w = W / cfg.patch, N = pos.size(1) - 1, D = pos.size(2);
    if (h * w == N && H == W) return pos;
    const int64_t g = static_cast<int64_t>(std::llround(std::sqrt(double(N))));
    if (g * g != N) throw Error("vit: position_embeddings hold " + std::to_string(N) + " patch rows, not a square grid");
    at::Tensor grid_t = pos.narrow(1, 1, N).reshape({1, g, g, D}).permute({0, 3, 1, 2});  // [1, D, g, g]
    at::Tensor resized;
    if (mode == "dino")
      resized = enc::bicubic_resize(grid_t, h, w, (double(h) + 0.1) / double(g), (double(w) + 0.1) / double(g));
    else
      resized = enc::bicubic_resize(grid_t, h, w, c10::nullopt, c10::nullopt);
    resized = resized.permute({0, 2, 3, 1}).reshape({1, h * w, D});
    return at::cat({pos.narrow(1, 0, 1), resized}, 1);
  }

  TensorMap forward(const TensorMap& in, const json& options) {
    const std::string mode = opt<std::string>(options, "interpolation", "dino");
    if (mode != "dino" && mode != "hf") throw Error("vit: option 'interpolation' must be \"dino\" or \"hf\", got \"" + mode + "\"");
    at::Tensor px = need(in, "pixel_values", "vit.forward").to(device());
    if (px.dim() != 4 || px.size(1) != cfg.channels)
      throw Error("vit.forward: pixel_values must be [B, " + std::to_string(cfg.channels) + ", H, W], got " + shape_str(px.sizes()));
    if (px.size(2) < cfg.patch || px.size(3) < cfg.patch)
      throw Error("vit.forward: the image " + shape_str(px.sizes()) + " is smaller than one " + std::to_string(cfg.patch) + "-pixel patch");
    px = px.to(embeddings->cls_token.scalar_type());
    const int64_t B = px.size(0);
    at::Tensor patches = embeddings->patch_embeddings->projection(px).flatten(2).transpose(1, 2);  // [B, h·w, D]
    at::Tensor pos = interpolate_positions(px.size(2), px.size(3), mode);
    at::Tensor x = at::cat({embeddings->cls_token.expand({B, 1, cfg.hidden}), patches}, 1) + pos;  // [B, 1+h·w, D]
    for (auto& l : *encoder->layer) x = l->as<VitLayer>()->forward(x);
    x = layernorm(x);
    return {{"last_hidden_state", x}, {"cls", x.select(1, 0)}, {"pos_embed", pos}};
  }

  TensorMap call(const std::string& method, const TensorMap& in, const json& options) override {
    if (method == "forward") return forward(in, options);
    if (method == "set_tensors") return enc::set_tensors(*this, in);
    throw Error("vit: unknown method '" + method + "' (known: forward, set_tensors)");
  }
};

const bool registered = register_model("vit", [](const json& config, const json&) { return std::make_shared<VitModel>(config); });

}  // namespace
}  // namespace rt
