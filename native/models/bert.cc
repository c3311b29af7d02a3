// BERT (transformers BertModel with pooler; sentence-transformers/all-MiniLM-L6-v2 layout), kind "bert".
// encoder.layer.{i} is nn::BertLayer (nn/bert_layers.h), the layer BLIP's text decoder is built from.
//
// Method "encode": {input_ids [B,T], attention_mask [B,T] (default ones), token_type_ids [B,T] (default
// zeros)} -> last_hidden_state [B,T,H] (padded positions computed, not zeroed), pooler_output [B,H],
// cls [B,H], mean_pooled [B,H] (attention-mask mean, sentence-transformers Pooling) and
// sentence_embedding [B,H] (mean_pooled / max(‖·‖₂, 1e-12): all-MiniLM-L6-v2's encode()).
#include "nn/bert_layers.h"
#include "nn/encoder_util.h"
#include "nn/layers.h"

namespace rt {
namespace {

// BertConfig: the encoder sizes (enc::EncoderSizes, BertConfig's defaults) and the embedding tables.
struct BertConfig : enc::EncoderSizes {
  int64_t vocab = 30522, positions = 512, type_vocab = 2;
};

struct BertEmbeddings : torch::nn::Module {
  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr}, token_type_embeddings{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  explicit BertEmbeddings(const BertConfig& c) {
    word_embeddings = register_module("word_embeddings", torch::nn::Embedding(c.vocab, c.hidden));
    position_embeddings = register_module("position_embeddings", torch::nn::Embedding(c.positions, c.hidden));
    token_type_embeddings = register_module("token_type_embeddings", torch::nn::Embedding(c.type_vocab, c.hidden));
    LayerNorm = register_module("LayerNorm", enc::layer_norm(c.hidden, c.eps));
  }
};

struct BertEncoder : torch::nn::Module {
  torch::nn::ModuleList layer;
  explicit BertEncoder(const BertConfig& c) {
    layer = register_module("layer", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.layers; ++i) layer->push_back(nn::BertLayer(c.hidden, c.intermediate, c.heads, c.eps, c.act));
  }
};

struct BertPooler : torch::nn::Module {
  torch::nn::Linear dense{nullptr};
  explicit BertPooler(int64_t hidden) { dense = register_module("dense", enc::linear(hidden, hidden)); }
};

struct BertModel : Model {
  BertConfig cfg;
  std::shared_ptr<BertEmbeddings> embeddings;
  std::shared_ptr<BertEncoder> encoder;
  std::shared_ptr<BertPooler> pooler;

  explicit BertModel(const json& c) {
    if (!c.is_object()) throw Error("bert: the config must be a JSON object");
    const std::string w = "bert config";
    static_cast<enc::EncoderSizes&>(cfg) = enc::encoder_sizes(c, {}, w);
    cfg.vocab = enc::cfg_positive(c, "vocab_size", 30522, w);
    cfg.positions = enc::cfg_positive(c, "max_position_embeddings", 512, w);
    cfg.type_vocab = enc::cfg_positive(c, "type_vocab_size", 2, w);
    const std::string pet = enc::cfg_string(c, "position_embedding_type", "absolute", w);
    if (pet != "absolute") throw Error(w + ": position_embedding_type '" + pet + "' is not supported (only 'absolute')");
    embeddings = register_module("embeddings", std::make_shared<BertEmbeddings>(cfg));
    encoder = register_module("encoder", std::make_shared<BertEncoder>(cfg));
    pooler = register_module("pooler", std::make_shared<BertPooler>(cfg.hidden));
  }

  bool ignorable_key(const std::string& key) const override {
    // Legacy buffers: always arange / zeros.
    return key == "embeddings.position_ids" || key == "embeddings.token_type_ids";
  }

  at::Tensor ids_input(const TensorMap& in, const char* name, int64_t B, int64_t T, int64_t limit) {
    at::Tensor t = in.at(name).to(device());
    if (t.dim() != 2 || t.size(0) != B || t.size(1) != T)
      throw Error(std::string("bert.encode: ") + name + " must be [" + std::to_string(B) + ", " + std::to_string(T) + "], got " + shape_str(t.sizes()));
    if (at::isFloatingType(t.scalar_type())) throw Error(std::string("bert.encode: ") + name + " must be an integer tensor");
    t = t.to(at::kLong);
    if (limit > 0 && t.numel() && (t.min().item<int64_t>() < 0 || t.max().item<int64_t>() >= limit))
      throw Error(std::string("bert.encode: ") + name + " must lie in [0, " + std::to_string(limit) + ")");
    return t;
  }

  TensorMap encode(const TensorMap& in) {
    at::Tensor ids0 = need(in, "input_ids", "bert.encode");
    if (ids0.dim() != 2) throw Error("bert.encode: input_ids must be [B, T], got " + shape_str(ids0.sizes()));
    const int64_t B = ids0.size(0), T = ids0.size(1);
    if (T > cfg.positions) throw Error("bert.encode: sequence length " + std::to_string(T) + " exceeds max_position_embeddings " + std::to_string(cfg.positions));
    at::Tensor ids = ids_input(in, "input_ids", B, T, cfg.vocab);
    at::Tensor types = in.count("token_type_ids") ? ids_input(in, "token_type_ids", B, T, cfg.type_vocab) : at::zeros({B, T}, ids.options());
    at::Tensor mask = in.count("attention_mask") ? ids_input(in, "attention_mask", B, T, 2) : at::ones({B, T}, ids.options());
    // (word + token_type) + position, then LayerNorm, in the reference's order.
    at::Tensor x = embeddings->word_embeddings(ids) + embeddings->token_type_embeddings(types);
    x = embeddings->LayerNorm(x + embeddings->position_embeddings->weight.narrow(0, 0, T).unsqueeze(0));  // [B, T, H]
    const at::Tensor maskf = mask.to(x.scalar_type());
    at::Tensor additive = ((1.0 - maskf) * nn::mask_min(x.scalar_type())).view({B, 1, 1, T});
    for (auto& l : *encoder->layer) x = l->as<nn::BertLayerImpl>()->forward(x, additive);  // [B, T, H]
    at::Tensor cls = x.select(1, 0);
    at::Tensor pooled = at::tanh(pooler->dense(cls));
    at::Tensor m = maskf.unsqueeze(-1);  // [B, T, 1]
    at::Tensor mean = (x * m).sum(1) / m.sum(1).clamp_min(1e-9);
    at::Tensor sentence = mean / mean.norm(2, -1, true).clamp_min(1e-12);
    return {{"last_hidden_state", x}, {"pooler_output", pooled}, {"cls", cls}, {"mean_pooled", mean}, {"sentence_embedding", sentence}};
  }

  TensorMap call(const std::string& method, const TensorMap& in, const json& options) override {
    (void)options;
    if (method == "encode" || method == "forward") return encode(in);
    if (method == "set_tensors") return enc::set_tensors(*this, in);
    throw Error("bert: unknown method '" + method + "' (known: encode, set_tensors)");
  }
};

const bool registered = register_model("bert", [](const json& config, const json&) { return std::make_shared<BertModel>(config); });

}  // namespace
}  // namespace rt
