// AutoencoderKL of Stable Diffusion v1.x (diffusers 0.25.1, models/autoencoders/autoencoder_kl.py, vae.py),
// model kind "vae". Config: the diffusers vae/config.json.
//
// Methods:
//   encode {image[, noise]}, {seed, intermediates} -> {mean, logvar, std, sample, sample_scaled[, intermediate.*]}
//   decode {z}, {scaled (divide by scaling_factor first), intermediates} -> {image[, intermediate.*]}
#include <ATen/CPUGeneratorImpl.h>

#include "core/model.h"
#include "core/reduced_weights.h"
#include "models/sd_blocks.h"

namespace rt::sd {
namespace {

struct VAEConfig {
  int64_t in_channels, out_channels, latent_channels, norm_num_groups, layers_per_block;
  std::vector<int64_t> block_out_channels;
  double scaling_factor;
  bool use_quant_conv, use_post_quant_conv, mid_attention;
  int64_t sample_size = 32;  // image side of one tile in tiled decoding (diffusers: config.sample_size)
};

VAEConfig read_vae_config(const json& c) {
  const std::string where = "vae config.json";
  if (!c.is_object()) throw Error(where + ": expected a JSON object");
  VAEConfig k;
  k.in_channels = opt<int64_t>(c, "in_channels", 3);
  k.out_channels = opt<int64_t>(c, "out_channels", 3);
  k.latent_channels = opt<int64_t>(c, "latent_channels", 4);
  k.norm_num_groups = opt<int64_t>(c, "norm_num_groups", 32);
  k.layers_per_block = opt<int64_t>(c, "layers_per_block", 1);
  k.block_out_channels = int_list(c, "block_out_channels", {64}, where);
  k.scaling_factor = opt<double>(c, "scaling_factor", 0.18215);
  if (c.contains("sample_size") && c["sample_size"].is_array() && !c["sample_size"].empty()) k.sample_size = c["sample_size"][0].get<int64_t>();
  else k.sample_size = opt<int64_t>(c, "sample_size", 32);
  k.use_quant_conv = opt<bool>(c, "use_quant_conv", true);
  k.use_post_quant_conv = opt<bool>(c, "use_post_quant_conv", true);
  k.mid_attention = opt<bool>(c, "mid_block_add_attention", true);
  const size_t n = k.block_out_channels.size();
  auto down = string_list(c, "down_block_types", std::vector<std::string>(n, "DownEncoderBlock2D"), where);
  auto up = string_list(c, "up_block_types", std::vector<std::string>(n, "UpDecoderBlock2D"), where);
  if (down.size() != n || up.size() != n) throw Error(where + ": down_block_types/up_block_types need one entry per block_out_channels entry");
  for (auto& t : down)
    if (t != "DownEncoderBlock2D") throw Error(where + ": down block type '" + t + "' is not supported (DownEncoderBlock2D)");
  for (auto& t : up)
    if (t != "UpDecoderBlock2D") throw Error(where + ": up block type '" + t + "' is not supported (UpDecoderBlock2D)");
  if (opt<std::string>(c, "act_fn", "silu") != "silu") throw Error(where + ": act_fn must be silu");
  return k;
}

constexpr double kEps = 1e-6;  // every VAE GroupNorm

// UNetMidBlock2D without time embedding: resnet, single-head attention, resnet.
struct VAEMidImpl : torch::nn::Module {
  std::vector<ResnetBlock2D> resnets;
  Attention attn{nullptr};
  VAEMidImpl(int64_t c, int64_t groups, bool with_attention) {
    auto rl = register_module("resnets", torch::nn::ModuleList());
    for (int j = 0; j < 2; ++j) {
      resnets.push_back(ResnetBlock2D(c, c, 0, groups, kEps));
      rl->push_back(resnets.back());
    }
    if (with_attention) {
      auto al = register_module("attentions", torch::nn::ModuleList());
      attn = Attention(c, c, 1, c, true, groups, kEps);  // one head of size C: scale C^-0.5
      al->push_back(attn);
    }
  }
  // h: [N, C, H, W] -> same
  at::Tensor forward(at::Tensor h) {
    h = resnets[0]->forward(h, at::Tensor());
    if (attn) h = attn->forward_spatial(h);
    return resnets[1]->forward(h, at::Tensor());
  }
};
TORCH_MODULE(VAEMid);

// DownEncoderBlock2D / UpDecoderBlock2D: resnets then an optional resampler.
struct VAEBlockImpl : torch::nn::Module {
  std::vector<ResnetBlock2D> resnets;
  Downsample2D down{nullptr};
  Upsample2D up{nullptr};
  VAEBlockImpl(int64_t layers, int64_t in, int64_t out, int64_t groups, bool add_down, bool add_up) {
    auto rl = register_module("resnets", torch::nn::ModuleList());
    for (int64_t j = 0; j < layers; ++j) {
      resnets.push_back(ResnetBlock2D(j == 0 ? in : out, out, 0, groups, kEps));
      rl->push_back(resnets.back());
    }
    if (add_down) {
      auto dl = register_module("downsamplers", torch::nn::ModuleList());
      down = Downsample2D(out, 0);  // pad right/bottom, stride-2 conv with padding 0
      dl->push_back(down);
    }
    if (add_up) {
      auto ul = register_module("upsamplers", torch::nn::ModuleList());
      up = Upsample2D(out);
      ul->push_back(up);
    }
  }
  at::Tensor forward(at::Tensor h) {
    for (auto& r : resnets) h = r->forward(h, at::Tensor());
    if (down) h = down->forward(h);
    if (up) h = up->forward(h);
    return h;
  }
};
TORCH_MODULE(VAEBlock);

struct Encoder : torch::nn::Module {
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  std::vector<VAEBlock> blocks;
  VAEMid mid{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
  explicit Encoder(const VAEConfig& k) {
    const auto& boc = k.block_out_channels;
    conv_in = register_module("conv_in", conv2d(k.in_channels, boc[0], 3));
    auto dl = register_module("down_blocks", torch::nn::ModuleList());
    int64_t out = boc[0];
    for (size_t i = 0; i < boc.size(); ++i) {
      const int64_t in = out;
      out = boc[i];
      blocks.push_back(VAEBlock(k.layers_per_block, in, out, k.norm_num_groups, i + 1 < boc.size(), false));
      dl->push_back(blocks.back());
    }
    mid = register_module("mid_block", VAEMid(boc.back(), k.norm_num_groups, k.mid_attention));
    conv_norm_out = register_module("conv_norm_out", group_norm(k.norm_num_groups, boc.back(), kEps));
    conv_out = register_module("conv_out", conv2d(boc.back(), 2 * k.latent_channels, 3));  // double_z: mean | logvar
  }
  // x: [N, Cin, H, W] -> [N, 2·latent, H/f, W/f]
  at::Tensor forward(const at::Tensor& x, TensorMap* inter) {
    at::Tensor h = conv_in(x);
    if (inter) (*inter)["intermediate.encoder.conv_in"] = h;
    for (size_t i = 0; i < blocks.size(); ++i) {
      h = blocks[i]->forward(h);
      if (inter) (*inter)["intermediate.encoder.down_blocks." + std::to_string(i)] = h;
    }
    h = mid->forward(h);
    if (inter) (*inter)["intermediate.encoder.mid_block"] = h;
    h = conv_out(group_norm_silu(conv_norm_out, h));
    if (inter) (*inter)["intermediate.encoder.out"] = h;
    return h;
  }
};

struct Decoder : torch::nn::Module {
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  std::vector<VAEBlock> blocks;
  VAEMid mid{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
  explicit Decoder(const VAEConfig& k) {
    const auto& boc = k.block_out_channels;
    const size_t n = boc.size();
    conv_in = register_module("conv_in", conv2d(k.latent_channels, boc.back(), 3));
    mid = register_module("mid_block", VAEMid(boc.back(), k.norm_num_groups, k.mid_attention));
    auto ul = register_module("up_blocks", torch::nn::ModuleList());
    int64_t out = boc[n - 1];
    for (size_t i = 0; i < n; ++i) {
      const int64_t prev = out;
      out = boc[n - 1 - i];
      blocks.push_back(VAEBlock(k.layers_per_block + 1, prev, out, k.norm_num_groups, false, i + 1 < n));
      ul->push_back(blocks.back());
    }
    conv_norm_out = register_module("conv_norm_out", group_norm(k.norm_num_groups, boc[0], kEps));
    conv_out = register_module("conv_out", conv2d(boc[0], k.out_channels, 3));
  }
  // z: [N, latent, h, w] -> [N, Cout, h·f, w·f]
  at::Tensor forward(const at::Tensor& z, TensorMap* inter) {
    at::Tensor h = conv_in(z);
    if (inter) (*inter)["intermediate.decoder.conv_in"] = h;
    h = mid->forward(h);
    if (inter) (*inter)["intermediate.decoder.mid_block"] = h;
    for (size_t i = 0; i < blocks.size(); ++i) {
      h = blocks[i]->forward(h);
      if (inter) (*inter)["intermediate.decoder.up_blocks." + std::to_string(i)] = h;
    }
    if (!inter) return conv_out(group_norm_silu(conv_norm_out, h));
    h = conv_norm_out(h);
    (*inter)["intermediate.decoder.conv_norm_out"] = h;
    return conv_out(at::silu(h));
  }
};

struct VAE : Model {
  VAEConfig k;
  std::shared_ptr<Encoder> encoder;
  std::shared_ptr<Decoder> decoder;
  torch::nn::Conv2d quant_conv{nullptr}, post_quant_conv{nullptr};

  explicit VAE(const json& c) : k(read_vae_config(c)) {
    encoder = register_module("encoder", std::make_shared<Encoder>(k));
    decoder = register_module("decoder", std::make_shared<Decoder>(k));
    if (k.use_quant_conv) quant_conv = register_module("quant_conv", conv2d(2 * k.latent_channels, 2 * k.latent_channels, 1));
    if (k.use_post_quant_conv) post_quant_conv = register_module("post_quant_conv", conv2d(k.latent_channels, k.latent_channels, 1));
  }

  // Pre-0.14 diffusers (and the hub v1-4 VAE) name the mid-block attention query/key/value/proj_attn.
  std::string canonical_key(const std::string& key) const override {
    static const std::pair<const char*, const char*> legacy[] = {
        {".attentions.0.query.", ".attentions.0.to_q."},
        {".attentions.0.key.", ".attentions.0.to_k."},
        {".attentions.0.value.", ".attentions.0.to_v."},
        {".attentions.0.proj_attn.", ".attentions.0.to_out.0."}};
    if (key.find("mid_block.attentions.0.") == std::string::npos) return key;
    for (auto& [from, to] : legacy) {
      auto pos = key.find(from);
      if (pos != std::string::npos) return key.substr(0, pos) + to + key.substr(pos + std::strlen(from));
    }
    return key;
  }

  // z: [B, latent_channels, h, w] (unscaled) -> image [B, out_channels, 8h, 8w]
  at::Tensor decode_one(at::Tensor z, TensorMap* inter) {
    if (post_quant_conv) z = post_quant_conv(z);
    if (inter) (*inter)["intermediate.post_quant_conv"] = z;
    return decoder->forward(z, inter);
  }

  // diffusers AutoencoderKL.tiled_decode: latent tiles of sample_size / 2^(levels-1) with 25% overlap, each
  // decoded alone; neighbours cross-faded linearly over the overlap (first rows, then columns), each tile cut to
  // (1 - 0.25) · sample_size. Latents no larger than one tile decode whole, exactly as without tiling.
  // z: [B, C, h, w] -> [B, out_channels, 8h, 8w]
  at::Tensor decode_tiled(const at::Tensor& z) {
    const int64_t tile_latent = k.sample_size / (int64_t(1) << (k.block_out_channels.size() - 1));
    if (z.size(2) <= tile_latent && z.size(3) <= tile_latent) return decode_one(z, nullptr);
    const int64_t overlap = static_cast<int64_t>(tile_latent * (1 - 0.25));
    const int64_t blend_extent = static_cast<int64_t>(k.sample_size * 0.25);
    const int64_t row_limit = k.sample_size - blend_extent;
    std::vector<std::vector<at::Tensor>> rows;
    for (int64_t i = 0; i < z.size(2); i += overlap) {
      std::vector<at::Tensor> row;
      for (int64_t j = 0; j < z.size(3); j += overlap)
        row.push_back(decode_one(z.slice(2, i, std::min(i + tile_latent, z.size(2))).slice(3, j, std::min(j + tile_latent, z.size(3))).contiguous(), nullptr));
      rows.push_back(std::move(row));
    }
    // b[..., y, :] = a[..., -e + y, :]·(1 − y/e) + b[..., y, :]·(y/e), in place as diffusers' blend_v / blend_h.
    auto blend = [](const at::Tensor& a, at::Tensor& b, int64_t extent, int64_t dim) {
      const int64_t e = std::min({a.size(dim), b.size(dim), extent});
      for (int64_t y = 0; y < e; ++y) {
        const double f = static_cast<double>(y) / e;
        b.select(dim, y).copy_(a.select(dim, a.size(dim) - e + y) * (1 - f) + b.select(dim, y) * f);
      }
    };
    std::vector<at::Tensor> out_rows;
    for (size_t i = 0; i < rows.size(); ++i) {
      std::vector<at::Tensor> out_row;
      for (size_t j = 0; j < rows[i].size(); ++j) {
        at::Tensor& tile = rows[i][j];
        if (i > 0) blend(rows[i - 1][j], tile, blend_extent, 2);
        if (j > 0) blend(rows[i][j - 1], tile, blend_extent, 3);
        out_row.push_back(tile.slice(2, 0, row_limit).slice(3, 0, row_limit));
      }
      out_rows.push_back(at::cat(out_row, 3));
    }
    return at::cat(out_rows, 2);
  }

  TensorMap call(const std::string& method, const TensorMap& in, const json& o) override {
    const auto dev = device();
    const auto dtype = compute_dtype(encoder->conv_in->weight);
    const bool want = opt<bool>(o, "intermediates", false);
    TensorMap out;
    if (method == "encode") {
      const at::Tensor x = to_model(need(in, "image", "vae.encode"), dev, dtype);
      if (x.dim() != 4 || x.size(1) != k.in_channels)
        throw Error("vae.encode: image must be [B, " + std::to_string(k.in_channels) + ", H, W], got " + shape_str(x.sizes()));
      at::Tensor moments = encoder->forward(x, want ? &out : nullptr);
      if (quant_conv) moments = quant_conv(moments);
      if (want) out["intermediate.quant_conv"] = moments;
      // Diagonal Gaussian posterior: logvar clamped to [-30, 20].
      auto parts = moments.chunk(2, 1);
      at::Tensor mean = parts[0], logvar = parts[1].clamp(-30.0, 20.0);
      at::Tensor std = at::exp(0.5 * logvar);
      at::Tensor noise;
      if (in.count("noise")) {
        noise = to_model(in.at("noise"), dev, dtype);
        if (noise.sizes() != mean.sizes())
          throw Error("vae.encode: noise is " + shape_str(noise.sizes()) + ", expected the latent shape " + shape_str(mean.sizes()));
      } else {
        at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(opt<int64_t>(o, "seed", 0)));
        noise = at::randn(mean.sizes(), gen, at::TensorOptions().dtype(at::kFloat)).to(dev, dtype);
      }
      at::Tensor sample = mean + std * noise;
      out["mean"] = mean;
      out["logvar"] = logvar;
      out["std"] = std;
      out["sample"] = sample;
      out["sample_scaled"] = sample * k.scaling_factor;
      out["mean_scaled"] = mean * k.scaling_factor;
      return out;
    }
    if (method == "decode") {
      at::Tensor z = to_model(need(in, "z", "vae.decode"), dev, dtype);
      if (z.dim() != 4 || z.size(1) != k.latent_channels)
        throw Error("vae.decode: z must be [B, " + std::to_string(k.latent_channels) + ", h, w], got " + shape_str(z.sizes()));
      if (opt<bool>(o, "scaled", false)) z = z / k.scaling_factor;
      const bool tiling = opt<bool>(o, "tiling", false);
      if (((opt<bool>(o, "slicing", false) && z.size(0) > 1) || tiling) && !want) {
        // diffusers' enable_vae_slicing: one image at a time, so the workspace is one image's; tiling as
        // enable_vae_tiling (decode_tiled).
        std::vector<at::Tensor> images;
        const bool slice = opt<bool>(o, "slicing", false);
        const int64_t step = slice ? 1 : z.size(0);
        for (int64_t i = 0; i < z.size(0); i += step) {
          at::Tensor zi = z.slice(0, i, i + step);
          images.push_back(tiling ? decode_tiled(zi) : decode_one(zi, nullptr));
        }
        out["image"] = images.size() == 1 ? images[0] : at::cat(images);
        return out;
      }
      out["image"] = decode_one(z, want ? &out : nullptr);
      return out;
    }
    throw Error("vae: unknown method '" + method + "' (encode, decode)");
  }
};

const bool registered = register_model("vae", [](const json& c, const json&) { return std::make_shared<VAE>(c); });

}  // namespace
}  // namespace rt::sd
