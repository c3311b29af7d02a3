// UNet2DConditionModel of Stable Diffusion v1.x (diffusers 0.25.1, models/unets/unet_2d_condition.py), model
// kind "unet". Config: the diffusers unet/config.json (missing keys take diffusers' defaults).
//
// Methods:
//   forward        {sample, timesteps, encoder_hidden_states} -> {sample[, intermediate.*]}
//   sample         guided sampling loop (sd_sampling.h) -> {latents, timesteps, ...[, image with a peer VAE]}
//   guided_eps     {sample, timestep, cond_embeds[, uncond_embeds]}, {guidance} -> {eps, eps_uncond, eps_text}
//   denoising_loss {latents, noise, timesteps, encoder_hidden_states}, {scheduler_config} -> {loss, prediction, target, noisy}
//   x0_estimate    {sample, eps, timesteps}, {scheduler_config} -> {x0_hat}
#include <cmath>

#include "core/model.h"
#include "core/reduced_weights.h"
#include "models/schedulers.h"
#include "models/sd_blocks.h"
#include "nn/checkpoint.h"
#include "models/sd_sampling.h"

namespace rt::sd {
namespace {

struct UNetConfig {
  int64_t in_channels, out_channels, layers_per_block_default, norm_num_groups, conv_in_kernel, conv_out_kernel;
  std::vector<int64_t> block_out_channels, layers_per_block, heads, cross_dim, transformer_layers;
  std::vector<std::string> down_types, up_types;
  std::vector<bool> only_cross;
  double norm_eps, freq_shift, mid_block_scale_factor;
  bool flip_sin_to_cos, use_linear_projection;
  int64_t downsample_padding, time_embed_dim;
  std::string mid_block_type;
};

UNetConfig read_unet_config(const json& c) {
  const std::string where = "unet config.json";
  if (!c.is_object()) throw Error(where + ": expected a JSON object");
  UNetConfig k;
  k.in_channels = opt<int64_t>(c, "in_channels", 4);
  k.out_channels = opt<int64_t>(c, "out_channels", 4);
  k.block_out_channels = int_list(c, "block_out_channels", {320, 640, 1280, 1280}, where);
  const size_t n = k.block_out_channels.size();
  if (n == 0) throw Error(where + ": 'block_out_channels' is empty");
  k.down_types = string_list(c, "down_block_types", {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"}, where);
  k.up_types = string_list(c, "up_block_types", {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"}, where);
  if (k.down_types.size() != n || k.up_types.size() != n)
    throw Error(where + ": down_block_types and up_block_types must have one entry per block_out_channels entry (" + std::to_string(n) + ")");
  k.layers_per_block = per_block_ints(c, "layers_per_block", n, 2, where);
  k.norm_num_groups = opt<int64_t>(c, "norm_num_groups", 32);
  k.norm_eps = opt<double>(c, "norm_eps", 1e-5);
  k.cross_dim = per_block_ints(c, "cross_attention_dim", n, 1280, where);
  // SD1 configs name the head count "attention_head_dim" (diffusers: num_attention_heads or attention_head_dim).
  const bool has_heads = c.contains("num_attention_heads") && !c["num_attention_heads"].is_null();
  k.heads = per_block_ints(c, has_heads ? "num_attention_heads" : "attention_head_dim", n, 8, where);
  k.transformer_layers = per_block_ints(c, "transformer_layers_per_block", n, 1, where);
  auto oc = c.find("only_cross_attention");
  k.only_cross.assign(n, false);
  if (oc != c.end() && oc->is_boolean()) k.only_cross.assign(n, oc->get<bool>());
  else if (oc != c.end() && oc->is_array())
    for (size_t i = 0; i < n && i < oc->size(); ++i) k.only_cross[i] = (*oc)[i].get<bool>();
  k.flip_sin_to_cos = opt<bool>(c, "flip_sin_to_cos", true);
  k.freq_shift = opt<double>(c, "freq_shift", 0.0);
  k.downsample_padding = opt<int64_t>(c, "downsample_padding", 1);
  k.use_linear_projection = opt<bool>(c, "use_linear_projection", false);
  k.mid_block_scale_factor = opt<double>(c, "mid_block_scale_factor", 1.0);
  k.conv_in_kernel = opt<int64_t>(c, "conv_in_kernel", 3);
  k.conv_out_kernel = opt<int64_t>(c, "conv_out_kernel", 3);
  k.time_embed_dim = opt<int64_t>(c, "time_embedding_dim", k.block_out_channels[0] * 4);
  k.mid_block_type = opt<std::string>(c, "mid_block_type", "UNetMidBlock2DCrossAttn");
  if (k.mid_block_type != "UNetMidBlock2DCrossAttn")
    throw Error(where + ": mid_block_type '" + k.mid_block_type + "' is not supported (UNetMidBlock2DCrossAttn)");
  // Features of later UNets (SD2.x upcast aside, SDXL, class conditioning) that SD1 never sets.
  for (const char* key : {"class_embed_type", "addition_embed_type", "encoder_hid_dim_type", "time_cond_proj_dim", "num_class_embeds"})
    if (c.contains(key) && !c[key].is_null()) throw Error(where + ": '" + key + "' is set (" + c[key].dump() + "), which this UNet does not support");
  if (opt<std::string>(c, "act_fn", "silu") != "silu") throw Error(where + ": act_fn must be silu");
  if (opt<std::string>(c, "resnet_time_scale_shift", "default") != "default") throw Error(where + ": resnet_time_scale_shift must be default");
  if (opt<std::string>(c, "time_embedding_type", "positional") != "positional") throw Error(where + ": time_embedding_type must be positional");
  if (opt<bool>(c, "center_input_sample", false)) throw Error(where + ": center_input_sample true is not supported");
  for (auto& t : k.down_types)
    if (t != "CrossAttnDownBlock2D" && t != "DownBlock2D") throw Error(where + ": down block type '" + t + "' is not supported");
  for (auto& t : k.up_types)
    if (t != "CrossAttnUpBlock2D" && t != "UpBlock2D") throw Error(where + ": up block type '" + t + "' is not supported");
  return k;
}

// CrossAttnDownBlock2D / DownBlock2D.
// Resnet and transformer calls; with checkpointing their activations are recomputed in backward, where the
// forward's PackedConvScope is gone: the recomputation opens its own, so both passes run the same convolutions.
template <class Block>
at::Tensor run_block(Block b, const at::Tensor& h, const at::Tensor& cond, bool ckpt) {
  if (!ckpt) return b->forward(h, cond);
  const bool packed = packed_conv_enabled();
  return rt::nn::checkpoint([b, packed](const std::vector<at::Tensor>& v) mutable {
    PackedConvScope scope(packed);
    return b->forward(v[0], v[1]);
  }, {h, cond});
}
at::Tensor run_resnet(ResnetBlock2D r, const at::Tensor& h, const at::Tensor& temb, bool ckpt) { return run_block(r, h, temb, ckpt); }
at::Tensor run_transformer(Transformer2D a, const at::Tensor& h, const at::Tensor& ehs, bool ckpt) { return run_block(a, h, ehs, ckpt); }

struct DownBlockImpl : torch::nn::Module {
  std::vector<ResnetBlock2D> resnets;
  std::vector<Transformer2D> attentions;
  Downsample2D down{nullptr};
  DownBlockImpl(const UNetConfig& k, size_t i, int64_t in, int64_t out, bool add_down) {
    const bool cross = k.down_types[i] == "CrossAttnDownBlock2D";
    auto rl = register_module("resnets", torch::nn::ModuleList());
    for (int64_t j = 0; j < k.layers_per_block[i]; ++j) {
      resnets.push_back(ResnetBlock2D(j == 0 ? in : out, out, k.time_embed_dim, k.norm_num_groups, k.norm_eps));
      rl->push_back(resnets.back());
    }
    if (cross) {
      auto al = register_module("attentions", torch::nn::ModuleList());
      for (int64_t j = 0; j < k.layers_per_block[i]; ++j) {
        attentions.push_back(
            Transformer2D(out, k.heads[i], k.transformer_layers[i], k.cross_dim[i], k.norm_num_groups, k.use_linear_projection, k.only_cross[i]));
        al->push_back(attentions.back());
      }
    }
    if (add_down) {
      auto dl = register_module("downsamplers", torch::nn::ModuleList());
      down = Downsample2D(out, k.downsample_padding);
      dl->push_back(down);
    }
  }
  // h: [N, Cin, H, W] -> [N, Cout, H', W']; appends every resnet(+attention) output and the downsampled one.
  at::Tensor forward(at::Tensor h, const at::Tensor& temb, const at::Tensor& ehs, std::vector<at::Tensor>& skips, bool ckpt) {
    for (size_t j = 0; j < resnets.size(); ++j) {
      h = run_resnet(resnets[j], h, temb, ckpt);
      if (!attentions.empty()) h = run_transformer(attentions[j], h, ehs, ckpt);
      skips.push_back(h);
    }
    if (down) {
      h = down->forward(h);
      skips.push_back(h);
    }
    return h;
  }
};
TORCH_MODULE(DownBlock);

// CrossAttnUpBlock2D / UpBlock2D: layers+1 resnets, each on cat([h, skip]).
struct UpBlockImpl : torch::nn::Module {
  std::vector<ResnetBlock2D> resnets;
  std::vector<Transformer2D> attentions;
  Upsample2D up{nullptr};
  UpBlockImpl(const UNetConfig& k, const std::string& type, int64_t layers, int64_t heads, int64_t tlayers, int64_t cross_dim, bool only_cross,
              int64_t in, int64_t out, int64_t prev_out, bool add_up) {
    auto rl = register_module("resnets", torch::nn::ModuleList());
    for (int64_t j = 0; j < layers; ++j) {
      const int64_t skip_ch = j == layers - 1 ? in : out;
      const int64_t res_in = j == 0 ? prev_out : out;
      resnets.push_back(ResnetBlock2D(res_in + skip_ch, out, k.time_embed_dim, k.norm_num_groups, k.norm_eps));
      rl->push_back(resnets.back());
    }
    if (type == "CrossAttnUpBlock2D") {
      auto al = register_module("attentions", torch::nn::ModuleList());
      for (int64_t j = 0; j < layers; ++j) {
        attentions.push_back(Transformer2D(out, heads, tlayers, cross_dim, k.norm_num_groups, k.use_linear_projection, only_cross));
        al->push_back(attentions.back());
      }
    }
    if (add_up) {
      auto ul = register_module("upsamplers", torch::nn::ModuleList());
      up = Upsample2D(out);
      ul->push_back(up);
    }
  }
  // h: [N, Cprev, H, W] -> [N, Cout, size or 2H×2W]; pops one skip per resnet (current first, skip second).
  at::Tensor forward(at::Tensor h, const at::Tensor& temb, const at::Tensor& ehs, std::vector<at::Tensor>& skips,
                     c10::optional<std::vector<int64_t>> size, bool ckpt) {
    for (size_t j = 0; j < resnets.size(); ++j) {
      at::Tensor skip = skips.back();
      skips.pop_back();
      h = run_resnet(resnets[j], at::cat({h, skip}, 1), temb, ckpt);
      if (!attentions.empty()) h = run_transformer(attentions[j], h, ehs, ckpt);
    }
    if (up) h = up->forward(h, size);
    return h;
  }
};
TORCH_MODULE(UpBlock);

// UNetMidBlock2DCrossAttn: resnet, transformer, resnet.
struct MidBlockImpl : torch::nn::Module {
  std::vector<ResnetBlock2D> resnets;
  std::vector<Transformer2D> attentions;
  explicit MidBlockImpl(const UNetConfig& k) {
    const int64_t c = k.block_out_channels.back();
    const size_t last = k.block_out_channels.size() - 1;
    auto rl = register_module("resnets", torch::nn::ModuleList());
    auto al = register_module("attentions", torch::nn::ModuleList());
    for (int j = 0; j < 2; ++j) {
      resnets.push_back(ResnetBlock2D(c, c, k.time_embed_dim, k.norm_num_groups, k.norm_eps, k.mid_block_scale_factor));
      rl->push_back(resnets.back());
    }
    attentions.push_back(Transformer2D(c, k.heads[last], k.transformer_layers[last], k.cross_dim[last], k.norm_num_groups, k.use_linear_projection, false));
    al->push_back(attentions.back());
  }
  at::Tensor forward(at::Tensor h, const at::Tensor& temb, const at::Tensor& ehs, bool ckpt) {
    h = run_resnet(resnets[0], h, temb, ckpt);
    h = run_transformer(attentions[0], h, ehs, ckpt);
    return run_resnet(resnets[1], h, temb, ckpt);
  }
};
TORCH_MODULE(MidBlock);

struct UNet : Model {
  UNetConfig k;
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::Linear linear_1{nullptr}, linear_2{nullptr};
  std::vector<DownBlock> down;
  std::vector<UpBlock> up;
  MidBlock mid{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
  json scheduler_default;

  explicit UNet(const json& c) : k(read_unet_config(c)) {
    const auto& boc = k.block_out_channels;
    const size_t n = boc.size();
    conv_in = register_module("conv_in", conv2d(k.in_channels, boc[0], k.conv_in_kernel));
    auto te = register_module("time_embedding", std::make_shared<torch::nn::Module>());
    linear_1 = te->register_module("linear_1", linear(boc[0], k.time_embed_dim));
    linear_2 = te->register_module("linear_2", linear(k.time_embed_dim, k.time_embed_dim));

    auto dl = register_module("down_blocks", torch::nn::ModuleList());
    int64_t out_ch = boc[0];
    for (size_t i = 0; i < n; ++i) {
      const int64_t in_ch = out_ch;
      out_ch = boc[i];
      down.push_back(DownBlock(k, i, in_ch, out_ch, i + 1 < n));
      dl->push_back(down.back());
    }
    mid = register_module("mid_block", MidBlock(k));

    auto ul = register_module("up_blocks", torch::nn::ModuleList());
    out_ch = boc[n - 1];
    for (size_t i = 0; i < n; ++i) {
      const size_t r = n - 1 - i;  // reversed per-block settings
      const int64_t prev_out = out_ch;
      out_ch = boc[r];
      const int64_t in_ch = boc[i + 1 < n ? n - 2 - i : 0];
      up.push_back(UpBlock(k, k.up_types[i], k.layers_per_block[r] + 1, k.heads[r], k.transformer_layers[r], k.cross_dim[r], k.only_cross[r], in_ch,
                           out_ch, prev_out, i + 1 < n));
      ul->push_back(up.back());
    }
    conv_norm_out = register_module("conv_norm_out", group_norm(k.norm_num_groups, boc[0], k.norm_eps));
    conv_out = register_module("conv_out", conv2d(boc[0], k.out_channels, k.conv_out_kernel));
  }

  // Sinusoidal embedding of Timesteps(flip_sin_to_cos, freq_shift); t: [B] -> [B, boc0], float32 math.
  at::Tensor time_proj(const at::Tensor& t) const {
    const int64_t dim = k.block_out_channels[0], half = dim / 2;
    at::Tensor exponent = at::arange(0, half, t.options().dtype(at::kFloat)) * (-std::log(10000.0));
    exponent = exponent / (static_cast<double>(half) - k.freq_shift);
    at::Tensor arg = t.to(at::kFloat).unsqueeze(1) * exponent.exp().unsqueeze(0);
    at::Tensor emb = k.flip_sin_to_cos ? at::cat({arg.cos(), arg.sin()}, -1) : at::cat({arg.sin(), arg.cos()}, -1);
    if (dim % 2 == 1) emb = at::constant_pad_nd(emb, {0, 1}, 0);
    return emb;
  }

  // sample: [B, Cin, H, W], t: [] or [B], ehs: [B, M, D] -> [B, Cout, H, W]
  at::Tensor forward(const at::Tensor& sample, at::Tensor t, const at::Tensor& ehs, TensorMap* inter = nullptr) {
    const auto dtype = compute_dtype(conv_in->weight);
    const int64_t B = sample.size(0);
    // Convolutions on packed weights: always without autograd, with it (frozen ones only) unless the call says not.
    PackedConvScope packed_convs(!at::GradMode::is_enabled() || training_conv_packing);
    if (sample.dim() != 4 || sample.size(1) != k.in_channels)
      throw Error("unet: sample must be [B, " + std::to_string(k.in_channels) + ", H, W], got " + shape_str(sample.sizes()));
    if (ehs.dim() != 3 || ehs.size(0) != B || ehs.size(2) != k.cross_dim[0])
      throw Error("unet: encoder_hidden_states must be [" + std::to_string(B) + ", seq, " + std::to_string(k.cross_dim[0]) + "], got " +
                  shape_str(ehs.sizes()));
    if (t.dim() == 0) t = t.unsqueeze(0);
    if (t.dim() != 1 || (t.size(0) != 1 && t.size(0) != B))
      throw Error("unet: timesteps must be a scalar or one value per batch element (" + std::to_string(B) + "), got " + shape_str(t.sizes()));
    t = t.to(sample.device()).expand({B});
    at::Tensor tp = time_proj(t).to(dtype);
    at::Tensor emb = linear_2(at::silu(linear_1(tp)));
    if (inter) {
      (*inter)["intermediate.time_proj"] = tp;
      (*inter)["intermediate.time_embedding"] = emb;
    }
    // Upsamplers follow the skip sizes when H or W is not a multiple of 2^num_upsamplers.
    int64_t factor = 1;
    for (auto& u : up)
      if (u->up) factor *= 2;
    const bool exact_sizes = sample.size(2) % factor != 0 || sample.size(3) % factor != 0;

    at::Tensor h = conv_in(sample);
    if (inter) (*inter)["intermediate.conv_in"] = h;
    std::vector<at::Tensor> skips{h};
    for (size_t i = 0; i < down.size(); ++i) {
      h = down[i]->forward(h, emb, ehs, skips, checkpointing);
      if (inter) (*inter)["intermediate.down_blocks." + std::to_string(i)] = h;
    }
    h = mid->forward(h, emb, ehs, checkpointing);
    if (inter) (*inter)["intermediate.mid_block"] = h;
    for (size_t i = 0; i < up.size(); ++i) {
      c10::optional<std::vector<int64_t>> size;
      const size_t used = up[i]->resnets.size();
      if (exact_sizes && up[i]->up && skips.size() > used) {
        const at::Tensor& next_skip = skips[skips.size() - used - 1];
        size = std::vector<int64_t>{next_skip.size(2), next_skip.size(3)};
      }
      h = up[i]->forward(h, emb, ehs, skips, size, checkpointing);
      if (inter) (*inter)["intermediate.up_blocks." + std::to_string(i)] = h;
    }
    if (!inter) return conv_out(group_norm_silu(conv_norm_out, h));
    h = conv_norm_out(h);
    (*inter)["intermediate.conv_norm_out"] = h;
    return conv_out(at::silu(h));
  }

  // Set per call from options.gradient_checkpointing / training_conv_packing (calls on one model are serialised).
  bool checkpointing = false;
  bool training_conv_packing = true;

  TensorMap call(const std::string& method, const TensorMap& in, const json& o) override {
    const auto dev = device();
    const auto dtype = compute_dtype(conv_in->weight);
    checkpointing = opt<bool>(o, "gradient_checkpointing", false);
    training_conv_packing = opt<bool>(o, "training_conv_packing", true);
    if (method == "forward") {
      TensorMap out;
      const bool want = opt<bool>(o, "intermediates", false);
      out["sample"] = forward(to_model(need(in, "sample", "unet.forward"), dev, dtype), need(in, "timesteps", "unet.forward"),
                              to_model(need(in, "encoder_hidden_states", "unet.forward"), dev, dtype), want ? &out : nullptr);
      return out;
    }
    if (method == "sample") {
      EpsModel eps = [this](const at::Tensor& x, const at::Tensor& t, const at::Tensor& ehs) { return forward(x, t, ehs); };
      return sample_and_decode(eps, in, o, dev, dtype);
    }
    if (method == "guided_eps") {
      at::NoGradGuard no_grad;
      EpsModel eps = [this](const at::Tensor& x, const at::Tensor& t, const at::Tensor& ehs) { return forward(x, t, ehs); };
      at::Tensor uncond = in.count("uncond_embeds") ? to_model(in.at("uncond_embeds"), dev, dtype) : at::Tensor();
      at::Tensor eu, ec;
      at::Tensor e = guided_eps(eps, to_model(need(in, "sample", "unet.guided_eps"), dev, dtype), need(in, "timestep", "unet.guided_eps"), uncond,
                                to_model(need(in, "cond_embeds", "unet.guided_eps"), dev, dtype), opt<double>(o, "guidance", 7.5), &eu, &ec);
      return {{"eps", e}, {"eps_uncond", eu}, {"eps_text", ec}};
    }
    if (method == "denoising_loss") return denoising_loss(in, o, dev, dtype);
    if (method == "x0_estimate") {
      // x̂0 = (x_t − sqrt(1−ᾱ_t)·ε̂)/sqrt(ᾱ_t) (DDPM eq. 15), differentiable in ε̂.
      const Scheduler* sched = training_schedule(o);
      const at::Tensor x = to_model(need(in, "sample", "unet.x0_estimate"), dev, dtype);
      const at::Tensor e = to_model(need(in, "eps", "unet.x0_estimate"), dev, dtype);
      at::Tensor a = sched->alphas_cumprod.index_select(0, need(in, "timesteps", "unet.x0_estimate").to(at::kCPU).to(at::kLong).reshape({-1}));
      std::vector<int64_t> shape(x.dim(), 1);
      shape[0] = -1;
      a = a.reshape(shape).to(dev, dtype);
      return {{"x0_hat", (x - (1 - a).pow(0.5) * e) / a.pow(0.5)}};
    }
    throw Error("unet: unknown method '" + method + "' (forward, sample, guided_eps, denoising_loss, x0_estimate)");
  }

  // The DDPM training schedule of options.scheduler_config, built once per distinct config (not per call).
  std::string schedule_key_;
  std::unique_ptr<Scheduler> schedule_;
  const Scheduler* training_schedule(const json& o) {
    const json cfg = o.contains("scheduler_config") ? o["scheduler_config"] : json::object();
    std::string key = cfg.dump();
    if (!schedule_ || key != schedule_key_) {
      schedule_ = make_scheduler("ddpm", cfg);
      schedule_key_ = std::move(key);
    }
    return schedule_.get();
  }

  // Training objective: x_t = add_noise(x0, n, t); MSE(unet(x_t, t, ehs), ε or v).
  TensorMap denoising_loss(const TensorMap& in, const json& o, const at::Device& dev, at::ScalarType dtype) {
    const Scheduler* sched = training_schedule(o);
    const at::Tensor x0 = to_model(need(in, "latents", "unet.denoising_loss"), dev, dtype);
    const at::Tensor noise = to_model(need(in, "noise", "unet.denoising_loss"), dev, dtype);
    const at::Tensor t = need(in, "timesteps", "unet.denoising_loss");
    if (noise.sizes() != x0.sizes()) throw Error("unet.denoising_loss: noise " + shape_str(noise.sizes()) + " differs from latents " + shape_str(x0.sizes()));
    at::Tensor noisy = sched->add_noise(x0, noise, t);
    at::Tensor pred = forward(noisy, t, to_model(need(in, "encoder_hidden_states", "unet.denoising_loss"), dev, dtype));
    at::Tensor target;
    if (sched->prediction_type == "epsilon") target = noise;
    else if (sched->prediction_type == "v_prediction") target = sched->get_velocity(x0, noise, t);
    else throw Error("unet.denoising_loss: prediction_type '" + sched->prediction_type + "' has no denoising target (epsilon, v_prediction)");
    at::Tensor loss = at::mse_loss(pred.to(at::kFloat), target.to(at::kFloat));
    return {{"loss", loss}, {"prediction", pred}, {"target", target}, {"noisy", noisy}};
  }
};

const bool registered = register_model("unet", [](const json& c, const json&) { return std::make_shared<UNet>(c); });

}  // namespace
}  // namespace rt::sd
