// The joint objective and its one-call training step (see joint.h). Each term follows lib/paper/joint/losses.ts
// operation by operation, so the native step and the TypeScript loss-term API give the same numbers.
#include "train/joint.h"

#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <cmath>

#include "core/autocast.h"
#include "core/reduced_weights.h"
#include "models/blip2.h"

namespace rt::train {

uint32_t derive_seed(uint32_t seed, std::initializer_list<uint32_t> indices) {
  uint32_t h = seed;
  for (uint32_t index : indices) {
    h = h ^ ((index + 0x9e3779b9u) * 0x85ebca6bu);
    h = (h ^ (h >> 16)) * 0x7feb352du;
    h = (h ^ (h >> 15)) * 0x846ca68bu;
    h = h ^ (h >> 16);
  }
  return h;
}

namespace {
struct Mulberry32 {
  uint32_t state;
  uint32_t next() {
    state += 0x6d2b79f5u;
    uint32_t t = state;
    t = (t ^ (t >> 15)) * (t | 1u);
    t ^= t + (t ^ (t >> 7)) * (t | 61u);
    return t ^ (t >> 14);
  }
};
}  // namespace

int64_t mulberry_int(uint32_t seed, int64_t low, int64_t high) {
  Mulberry32 rng{seed};
  const uint64_t span = static_cast<uint64_t>(high - low);
  const uint64_t limit = (uint64_t{1} << 32) - ((uint64_t{1} << 32) % span);  // rejection removes modulo bias
  uint64_t x = rng.next();
  while (x >= limit) x = rng.next();
  return low + static_cast<int64_t>(x % span);
}

namespace {
const char* const kTermNames[4] = {"cap", "recImg", "sd", "recTxt"};
constexpr int kCap = 0, kRecImg = 1, kSd = 2, kRecTxt = 3;
// CLIP's image normalisation (BLIP uses the same constants).
constexpr double kClipMean[3] = {0.48145466, 0.4578275, 0.40821073};
constexpr double kClipStd[3] = {0.26862954, 0.26130258, 0.27577711};

void one_of(const std::string& key, const std::string& v, std::initializer_list<const char*> allowed) {
  std::string list;
  for (const char* a : allowed) {
    if (v == a) return;
    list += std::string(list.empty() ? "" : ", ") + a;
  }
  throw Error("joint step: option '" + key + "' must be one of " + list + ", got '" + v + "'");
}
}  // namespace

JointConfig JointConfig::from(const json& c) {
  JointConfig k;
  if (c.contains("weights")) {
    for (int i = 0; i < 4; ++i) k.weights[i] = opt<double>(c["weights"], kTermNames[i], 0.0);
  }
  k.schedule = opt<std::string>(c, "schedule", k.schedule);
  one_of("schedule", k.schedule, {"summed", "alternating", "alternating-micro"});
  k.temperature = opt<double>(c, "temperature", k.temperature);
  if (!(k.temperature > 0)) throw Error("joint step: option 'temperature' must be > 0");
  k.soft_mode = opt<std::string>(c, "soft_mode", k.soft_mode);
  one_of("soft_mode", k.soft_mode, {"probs", "logits"});
  k.soft_framing = opt<std::string>(c, "soft_framing", k.soft_framing);
  one_of("soft_framing", k.soft_framing, {"padded", "release"});
  k.soft_length = opt<int64_t>(c, "soft_length", k.soft_length);
  if (k.soft_length < 3) throw Error("joint step: option 'soft_length' must be at least 3");
  k.rec_txt_mode = opt<std::string>(c, "rec_txt_mode", k.rec_txt_mode);
  one_of("rec_txt_mode", k.rec_txt_mode, {"x0", "ddpm-step"});
  k.rec_txt_normalize = opt<bool>(c, "rec_txt_normalize", k.rec_txt_normalize);
  k.label_smoothing = opt<double>(c, "label_smoothing", k.label_smoothing);
  k.rec_img_route = opt<std::string>(c, "rec_img_route", k.rec_img_route);
  one_of("rec_img_route", k.rec_img_route, {"both", "blip", "unet"});
  k.rec_txt_route = opt<std::string>(c, "rec_txt_route", k.rec_txt_route);
  one_of("rec_txt_route", k.rec_txt_route, {"both", "blip", "unet"});
  k.clip_start = opt<int64_t>(c, "clip_start", k.clip_start);
  k.clip_end = opt<int64_t>(c, "clip_end", k.clip_end);
  k.clip_pad = opt<int64_t>(c, "clip_pad", k.clip_pad);
  k.vision_trainable = opt<bool>(c, "vision_trainable", false);
  k.blip_image_size = opt<int64_t>(c, "blip_image_size", k.blip_image_size);
  k.gradient_checkpointing = opt<bool>(c, "gradient_checkpointing", false);
  k.training_conv_packing = opt<bool>(c, "training_conv_packing", true);
  // a checkpointed block recomputes its forward in backward, after a route has given the weights back their grad
  if (k.gradient_checkpointing && (k.rec_img_route != "both" || k.rec_txt_route != "both"))
    throw Error("joint step: rec_img_route / rec_txt_route other than 'both' cannot be combined with gradient checkpointing");
  k.latent_channels = opt<int64_t>(c, "latent_channels", k.latent_channels);
  k.vae_factor = opt<int64_t>(c, "vae_factor", k.vae_factor);
  if (k.latent_channels < 1 || k.vae_factor < 1) throw Error("joint step: latent_channels and vae_factor must be positive");
  const std::string amp = opt<std::string>(c, "autocast", "off");
  one_of("autocast", amp, {"off", "fp32", "bf16", "fp16"});
  if (amp == "bf16") k.autocast = at::kBFloat16;
  if (amp == "fp16") k.autocast = at::kHalf;
  if (c.contains("scheduler_config") && c["scheduler_config"].is_object()) k.scheduler_config = c["scheduler_config"];
  k.clip_mode = opt<std::string>(c, "clip_mode", k.clip_mode);
  one_of("clip_mode", k.clip_mode, {"global", "per-model"});
  k.clip_max = opt<double>(c, "clip", k.clip_max);
  k.blip_clip = opt<double>(c, "blip_clip", k.clip_max);
  k.unet_clip = opt<double>(c, "unet_clip", k.clip_max);
  return k;
}

JointObjective::JointObjective(JointModels m, at::Tensor bridge_index, JointConfig config)
    : models(std::move(m)), cfg(std::move(config)), device_(models.unet->device()) {
  for (auto* p : {&models.blip, &models.unet, &models.vae, &models.text})
    if (!*p) throw Error("joint step: needs the blip, unet, vae and text-encoder models");
  weak_[0] = models.blip;
  weak_[1] = models.unet;
  weak_[2] = models.vae;
  weak_[3] = models.text;
  for (auto& p : models.unet->parameters()) {
    unet_dtype_ = compute_dtype(p);
    break;
  }
  ddpm_ = sd::make_scheduler("ddpm", cfg.scheduler_config);
  if (cfg.rec_txt_mode == "ddpm-step") {
    ddpm_all_ = sd::make_scheduler("ddpm", cfg.scheduler_config);
    ddpm_all_->set_timesteps(ddpm_all_->num_train_timesteps);
  }
  if (cfg.rec_txt_mode == "x0" && ddpm_->prediction_type != "epsilon" && cfg.weights[kRecTxt] > 0)
    throw Error("joint step: rec_txt_mode 'x0' needs an epsilon-prediction scheduler, this one predicts '" + ddpm_->prediction_type + "'");
  if (bridge_index.dim() != 1) throw Error("joint step: the bridge index must be 1-D [clipVocab], got " + shape_str(bridge_index.sizes()));
  bridge_index_ = bridge_index.to(device_, at::kLong);
  for (const int64_t id : {cfg.clip_start, cfg.clip_end, cfg.clip_pad})
    if (id < 0 || id >= bridge_index_.size(0))
      throw Error("joint step: CLIP special id " + std::to_string(id) + " is outside the bridge's " + std::to_string(bridge_index_.size(0)) + " ids");
  unbind();
}

void JointObjective::bind() {
  std::shared_ptr<Model> m[4];
  for (int i = 0; i < 4; ++i)
    if (!(m[i] = weak_[i].lock())) throw Error("joint step: a model it uses was disposed");
  models = JointModels{m[0], m[1], m[2], m[3]};
}

std::vector<int> JointObjective::active_terms(int64_t step, int64_t micro) const {
  std::vector<int> terms;
  for (int t = 0; t < 4; ++t) {
    if (!(cfg.weights[t] > 0)) continue;
    if (cfg.schedule != "summed") {
      const int64_t parity = (cfg.schedule == "alternating" ? step : micro) % 2;
      const bool sd_side = t == kSd || t == kRecTxt;
      if ((parity == 0) != sd_side) continue;
    }
    terms.push_back(t);
  }
  return terms;
}

const at::Tensor& JointObjective::constant(const std::string& key, const std::function<at::Tensor()>& make) {
  auto it = constants_.find(key);
  if (it == constants_.end()) it = constants_.emplace(key, make()).first;
  return it->second;
}

at::Tensor JointObjective::to_4d(const Model& m, at::Tensor x) const {
  return m.channels_last && x.dim() == 4 ? x.contiguous(at::MemoryFormat::ChannelsLast) : x;
}

json JointCallOptions(const JointConfig& cfg) {
  return json{{"gradient_checkpointing", cfg.gradient_checkpointing}, {"training_conv_packing", cfg.training_conv_packing}};
}

// BLIP's vision tower; without a graph unless it trains (its embeddings are shared by cap and recImg).
at::Tensor JointObjective::vision_embeds(const at::Tensor& pixels) {
  auto run = [&] { return models.blip->call("vision", {{"pixel_values", pixels}}, JointCallOptions(cfg)).at("last_hidden_state"); };
  if (cfg.vision_trainable) return run();
  at::NoGradGuard no_grad;
  return run();
}

// x: image embeddings [B, N, D] -> teacher-forced decoder logits [B, T, V]. The captioner is BLIP or BLIP-2 OPT (its
// kind read from the model): BLIP-2 runs Q-Former, projection and OPT and keeps the text positions of its
// [B, Q+T, V] logits, so for either captioner row t predicts text token t+1.
at::Tensor JointObjective::blip_logits(const at::Tensor& embeds, const MicroBatch& mb) {
  json o = JointCallOptions(cfg);
  if (dynamic_cast<blip2::Blip2Model*>(models.blip.get())) o["text_only"] = true;
  return models.blip->call("logits", {{"image_embeds", embeds}, {"input_ids", mb.blip_ids}, {"attention_mask", mb.blip_mask}}, o).at("logits");
}

// L_cap from logits [B, T, V]: CE(logits[:, :-1], labels[:, 1:]), -100 ignored, label smoothing (blip.cc "loss").
at::Tensor JointObjective::caption_loss(const at::Tensor& logits, const at::Tensor& labels_in) const {
  const at::Tensor labels = labels_in.to(logits.device(), at::kLong);
  const int64_t T = logits.size(1), V = logits.size(2);
  at::Tensor shifted = logits.narrow(1, 0, T - 1).reshape({-1, V}).to(at::kFloat);
  at::Tensor targets = labels.narrow(1, 1, T - 1).reshape({-1});
  namespace F = torch::nn::functional;
  return F::cross_entropy(shifted, targets, F::CrossEntropyFuncOptions().ignore_index(-100).label_smoothing(cfg.label_smoothing));
}

// The soft caption P [B, L, clipVocab] from BLIP's logits [B, T, V] (losses.ts softCaption).
//   padded:  one-hot start, the caption-token rows (re-indexed), an end row, pad rows up to soft_length.
//   release: one-hot BOS, every row from the first caption prediction on, one-hot EOS (no padding).
at::Tensor JointObjective::soft_caption(const at::Tensor& logits, const MicroBatch& mb) {
  const int64_t B = logits.size(0), T = logits.size(1), vocab = bridge_index_.size(0);
  const int64_t first = mb.prompt_length - 1;  // row t predicts token t+1: caption token j sits at prompt_length + j
  if (first < 0 || first >= T) throw Error("joint step: prompt_length " + std::to_string(mb.prompt_length) + " does not fit " + std::to_string(T) + " BLIP tokens");
  auto one_hot = [&](int64_t id) -> const at::Tensor& {
    return constant("onehot:" + std::to_string(id), [&] {
      return at::zeros({1, 1, vocab}, at::TensorOptions().dtype(at::kFloat)).index_fill_(2, at::full({1}, id, at::kLong), 1.0).to(device_);
    });
  };
  auto rows_to_clip = [&](const at::Tensor& rows) {  // [B, n, V] logits -> [B, n, clipVocab] distributions
    if (cfg.soft_mode == "probs") return (rows / cfg.temperature).softmax(-1, at::kFloat).index_select(2, bridge_index_);
    return rows.index_select(2, bridge_index_).div(cfg.temperature).softmax(-1);
  };
  if (cfg.soft_framing == "release") {
    at::Tensor body = rows_to_clip(logits.narrow(1, first, T - first));
    return at::cat({one_hot(cfg.clip_start).expand({B, 1, vocab}), body, one_hot(cfg.clip_end).expand({B, 1, vocab})}, 1);
  }
  const int64_t length = cfg.soft_length;
  int64_t longest = 1;
  for (int64_t n : mb.caption_lengths) longest = std::max(longest, n);
  const int64_t rows = std::min(length - 2, longest);
  const int64_t take = std::min(rows, T - first);
  at::Tensor body = rows_to_clip(logits.narrow(1, first, take));
  // Rows past a caption's end become end (then pad) rows, as SD's id path has them.
  std::vector<float> keep(B * take), pad(B * take), end(B * take);
  bool all_full = false;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = std::min(mb.caption_lengths[b], take);
    all_full = all_full || mb.caption_lengths[b] >= take;
    for (int64_t j = 0; j < take; ++j) {
      keep[b * take + j] = j < n ? 1.f : 0.f;
      pad[b * take + j] = j > n ? 1.f : 0.f;
      end[b * take + j] = (j >= n && !(j > n)) ? 1.f : 0.f;
    }
  }
  auto mask = [&](std::vector<float>& v) { return at::from_blob(v.data(), {B, take, 1}, at::kFloat).clone().to(device_); };
  const at::Tensor& end_row = one_hot(cfg.clip_end);
  const at::Tensor& pad_row = one_hot(cfg.clip_pad);
  at::Tensor framed = body.mul(mask(keep)).add(end_row.mul(mask(end))).add(pad_row.mul(mask(pad)));
  std::vector<at::Tensor> parts{at::zeros({B, 1, vocab}, framed.options()).add(one_hot(cfg.clip_start)), framed};
  const int64_t rest = length - 1 - take;  // >= 1 since take <= length - 2
  if (rest > 0) {
    at::Tensor tail = at::zeros({B, rest, vocab}, framed.options()).add(pad_row);
    if (all_full && cfg.clip_pad != cfg.clip_end) {
      // The first tail row is the end row for rows whose caption filled the body.
      std::vector<float> full(B * rest, 0.f);
      for (int64_t b = 0; b < B; ++b) full[b * rest] = mb.caption_lengths[b] >= take ? 1.f : 0.f;
      tail = tail.add(end_row.sub(pad_row).mul(at::from_blob(full.data(), {B, rest, 1}, at::kFloat).clone().to(device_)));
    }
    parts.push_back(tail);
  }
  return at::cat(parts, 1);
}

// Per-item seeded N(0, 1) draws: item i of the batch from deriveSeed(seed, i, stream) (losses.ts), on the CPU
// generator then moved, so they are the same on every device.
at::Tensor JointObjective::item_noise(const at::IntArrayRef shape, uint32_t seed, uint32_t stream) {
  std::vector<at::Tensor> items;
  std::vector<int64_t> one(shape.begin(), shape.end());
  one[0] = 1;
  for (int64_t i = 0; i < shape[0]; ++i) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(derive_seed(seed, {slot(i), stream})));
    items.push_back(at::randn(one, gen).to(device_));
  }
  return at::cat(items, 0);
}

// images: [B, 3, H, W] in [-1, 1] -> scaled posterior sample [B, c, H/f, W/f] (frozen VAE: no graph); the posterior
// noise of item i comes from deriveSeed(seed, i, 1) (losses.ts encodeLatents).
at::Tensor JointObjective::encode_latents(const at::Tensor& images, uint32_t seed) {
  at::NoGradGuard no_grad;
  const int64_t f = cfg.vae_factor;
  if (images.dim() != 4 || images.size(2) % f != 0 || images.size(3) % f != 0)
    throw Error("joint step: SD images must be [B, 3, H, W] with H and W divisible by " + std::to_string(f) + ", got " + shape_str(images.sizes()));
  at::Tensor noise = item_noise({images.size(0), cfg.latent_channels, images.size(2) / f, images.size(3) / f}, seed, 1);
  auto& vae = *models.vae;
  return vae.call("encode", {{"image", to_4d(vae, images.to(device_))}, {"noise", noise}}, json::object()).at("sample_scaled");
}

// x_t = add_noise(x0, ε, t); ε̂ = unet(x_t, t, ehs); MSE(ε̂, ε or v) (losses.ts denoise + unet denoising_loss).
JointObjective::Denoised JointObjective::denoise(const at::Tensor& latents, const at::Tensor& ehs, uint32_t seed) {
  const int64_t B = latents.size(0);
  std::vector<int64_t> ts(B);
  for (int64_t i = 0; i < B; ++i) ts[i] = mulberry_int(derive_seed(seed, {slot(i), 2u}), 0, ddpm_->num_train_timesteps);
  Denoised d;
  d.timesteps = torch::tensor(ts, at::kLong);
  at::Tensor noise = item_noise(latents.sizes(), seed, 3).to(device_, unet_dtype_);
  d.latents = latents;
  d.noisy = ddpm_->add_noise(latents.to(device_, unet_dtype_), noise, d.timesteps);
  auto& unet = *models.unet;
  d.prediction =
      unet.call("forward", {{"sample", to_4d(unet, d.noisy)}, {"timesteps", d.timesteps}, {"encoder_hidden_states", ehs}}, JointCallOptions(cfg))
          .at("sample");
  at::Tensor target;
  if (ddpm_->prediction_type == "epsilon") target = noise;
  else if (ddpm_->prediction_type == "v_prediction") target = ddpm_->get_velocity(d.latents.to(device_, unet_dtype_), noise, d.timesteps);
  else throw Error("joint step: prediction_type '" + ddpm_->prediction_type + "' has no denoising target (epsilon, v_prediction)");
  d.loss = at::mse_loss(d.prediction.to(at::kFloat), target.to(at::kFloat));
  return d;
}

// x̂ for L_rec_txt in the UNet's (scaled) latent space.
at::Tensor JointObjective::clean_estimate(const Denoised& d, uint32_t seed) {
  if (cfg.rec_txt_mode == "x0") {
    // x̂0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t (DDPM eq. 15), differentiable in ε̂.
    at::Tensor a = ddpm_->alphas_cumprod.index_select(0, d.timesteps.reshape({-1}));
    std::vector<int64_t> shape(d.noisy.dim(), 1);
    shape[0] = -1;
    a = a.reshape(shape).to(device_, unet_dtype_);
    return (d.noisy - (1 - a).pow(0.5) * d.prediction) / a.pow(0.5);
  }
  // The release: DDPMScheduler.step(ε̂, t, clean_latents).prev_sample, one item at a time (t differs per item).
  const at::Tensor& all = ddpm_all_->timesteps;
  const int64_t n_all = all.size(0);
  const int64_t* tv = all.data_ptr<int64_t>();
  std::vector<at::Tensor> outs;
  at::Generator unused = at::make_generator<at::CPUGeneratorImpl>(0);
  const int64_t B = d.latents.size(0);
  for (int64_t i = 0; i < B; ++i) {
    const int64_t t = d.timesteps[i].item<int64_t>();  // CPU tensor: no device sync
    int64_t index = -1;
    for (int64_t k = 0; k < n_all && index < 0; ++k)
      if (tv[k] == t) index = k;
    if (index < 0) throw Error("joint step: timestep " + std::to_string(t) + " is not on the DDPM schedule");
    std::vector<int64_t> one(d.latents.sizes().begin(), d.latents.sizes().end());
    one[0] = 1;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(derive_seed(seed, {slot(i), 4u})));
    at::Tensor noise = at::randn(one, gen).to(device_);
    outs.push_back(ddpm_all_->step(d.prediction.narrow(0, i, 1), index, d.latents.narrow(0, i, 1).to(device_, unet_dtype_), noise, &unused).prev_sample);
  }
  return at::cat(outs, 0);
}

// Bilinear resize along one axis (align_corners=False, no antialias) as losses.ts bilinearResize builds it:
// each output sample mixes its two nearest inputs, weights in float32 — differentiable, any device.
at::Tensor JointObjective::resize_axis(const at::Tensor& x, int dim, int64_t in, int64_t out) {
  if (in == out) return x;
  const std::string key = "resize:" + std::to_string(dim) + ":" + std::to_string(in) + ":" + std::to_string(out);
  const at::Tensor& i0 = constant(key + ":i0", [&] {
    std::vector<int64_t> v(out);
    const double scale = static_cast<double>(in) / out;
    for (int64_t o = 0; o < out; ++o) v[o] = std::min<int64_t>(static_cast<int64_t>(std::floor(std::max(0.0, (o + 0.5) * scale - 0.5))), in - 1);
    return torch::tensor(v, at::kLong).to(device_);
  });
  const at::Tensor& i1 = constant(key + ":i1", [&] { return i0.clamp_max(in - 1).add(1).clamp_max(in - 1); });
  auto weights = [&](bool second) {
    std::vector<float> w(out);
    const double scale = static_cast<double>(in) / out;
    for (int64_t o = 0; o < out; ++o) {
      const double src = std::max(0.0, (o + 0.5) * scale - 0.5);
      const double a = std::min<double>(std::floor(src), in - 1);
      const double l = src - a;
      w[o] = static_cast<float>(second ? l : 1 - l);
    }
    std::vector<int64_t> shape = dim == 2 ? std::vector<int64_t>{1, 1, out, 1} : std::vector<int64_t>{1, 1, 1, out};
    return at::from_blob(w.data(), shape, at::kFloat).clone().to(device_);
  };
  const at::Tensor& w0 = constant(key + ":w0", [&] { return weights(false); });
  const at::Tensor& w1 = constant(key + ":w1", [&] { return weights(true); });
  return x.index_select(dim, i0).mul(w0).add(x.index_select(dim, i1).mul(w1));
}

// Decoded SD images in [-1, 1] -> BLIP pixels: bilinear resize, then CLIP mean/std unless the release's raw input.
at::Tensor JointObjective::sd_to_blip_pixels(const at::Tensor& images) {
  const int64_t size = cfg.blip_image_size;
  at::Tensor resized = resize_axis(resize_axis(images, 2, images.size(2), size), 3, images.size(3), size);
  if (!cfg.rec_txt_normalize) return resized;
  // ((x + 1)/2 − mean)/std = x·(0.5/std) + (0.5 − mean)/std
  const at::Tensor& scale = constant("norm:scale", [&] {
    std::vector<float> v{static_cast<float>(0.5 / kClipStd[0]), static_cast<float>(0.5 / kClipStd[1]), static_cast<float>(0.5 / kClipStd[2])};
    return at::from_blob(v.data(), {1, 3, 1, 1}, at::kFloat).clone().to(device_);
  });
  const at::Tensor& shift = constant("norm:shift", [&] {
    std::vector<float> v(3);
    for (int c = 0; c < 3; ++c) v[c] = static_cast<float>((0.5 - kClipMean[c]) / kClipStd[c]);
    return at::from_blob(v.data(), {1, 3, 1, 1}, at::kFloat).clone().to(device_);
  });
  return resized.mul(scale).add(shift);
}

namespace {
// Keeps a model's trainable weights out of the graph while alive: a reconstruction term routed to the other
// model (Appendix I) still passes gradients through this model's activations, but not into its weights.
struct FreezeWeights {
  std::vector<at::Tensor> frozen;
  explicit FreezeWeights(torch::nn::Module* m) {
    if (!m) return;
    for (auto& p : m->parameters())
      if (p.requires_grad()) {
        p.set_requires_grad(false);
        frozen.push_back(p);
      }
  }
  ~FreezeWeights() {
    for (auto& p : frozen) p.set_requires_grad(true);
  }
};
}  // namespace

TensorMap JointObjective::forward(const MicroBatch& mb, int64_t step) {
  AutocastScope amp(cfg.autocast);
  slot_offset_ = mb.slot_offset;
  slot_stride_ = mb.slot_stride;
  const std::vector<int> terms = active_terms(step, mb.micro);
  auto has = [&](int t) { return std::find(terms.begin(), terms.end(), t) != terms.end(); };
  TensorMap out;
  const auto call_opts = JointCallOptions(cfg);
  auto& vae = *models.vae;
  auto& text = *models.text;

  // BLIP's vision tower once, and one decoder forward shared by L_cap and the soft caption.
  at::Tensor logits;
  if (has(kCap) || has(kRecImg)) {
    if (!mb.blip_pixels.defined()) throw Error("joint step: the micro-batch has no BLIP pixels (needed by cap / recImg)");
    logits = blip_logits(vision_embeds(mb.blip_pixels), mb);
  }
  at::Tensor latents;
  if (has(kRecImg) || has(kSd) || has(kRecTxt)) {
    latents = mb.latents.defined() ? mb.latents.to(device_, unet_dtype_) : encode_latents(mb.sd_images, mb.seed);
  }
  if (has(kCap)) out["cap"] = mb.token_scale != 1 ? caption_loss(logits, mb.blip_labels) * mb.token_scale : caption_loss(logits, mb.blip_labels);
  if (has(kRecImg)) {
    at::Tensor P = soft_caption(logits, mb);
    if (cfg.rec_img_route == "unet") P = P.detach();  // only the UNet: BLIP's soft caption enters as a constant
    FreezeWeights freeze(cfg.rec_img_route == "blip" ? models.unet.get() : nullptr);
    at::Tensor ehs = text.call("text", {{"soft_tokens", P}}, call_opts).at("last_hidden_state");
    out["recImg"] = denoise(latents, ehs, mb.seed + 1).loss;
  }
  if (has(kSd) || has(kRecTxt)) {
    at::Tensor ehs;
    {
      at::NoGradGuard no_grad;
      ehs = text.call("text", {{"input_ids", mb.clip_ids}}, call_opts).at("last_hidden_state");
    }
    Denoised d = denoise(latents, ehs, mb.seed + 2);
    if (has(kSd)) out["sd"] = d.loss;
    if (has(kRecTxt)) {
      Denoised routed = d;
      if (cfg.rec_txt_route == "blip") routed.prediction = d.prediction.detach();  // only BLIP: SD's estimate is a constant
      FreezeWeights freeze(cfg.rec_txt_route == "unet" ? models.blip.get() : nullptr);
      at::Tensor x0 = clean_estimate(routed, mb.seed + 3);
      at::Tensor decoded = vae.call("decode", {{"z", to_4d(vae, x0)}}, json{{"scaled", true}}).at("image");
      at::Tensor pixels = sd_to_blip_pixels(decoded.to(models.blip->device()));
      out["recTxt"] = caption_loss(blip_logits(models.blip->call("vision", {{"pixel_values", pixels}}, call_opts).at("last_hidden_state"), mb), mb.blip_labels);
      if (mb.token_scale != 1) out["recTxt"] = out["recTxt"] * mb.token_scale;
    }
  }
  at::Tensor total;
  for (int t : terms) {
    at::Tensor weighted = out.at(kTermNames[t]).mul(cfg.weights[t]);
    total = total.defined() ? total.add(weighted) : weighted;
  }
  if (!total.defined()) throw Error("joint step: no active loss term (all weights are zero)");
  out["total"] = total;
  return out;
}

at::Tensor JointObjective::step(const std::vector<MicroBatch>& batches, int64_t step, double lr, const DistStep* dist) {
  if (batches.empty()) throw Error("joint step: no micro-batches");
  std::vector<at::Tensor> blip_params = blip_opt ? blip_opt->params : std::vector<at::Tensor>();
  std::vector<at::Tensor> unet_params = unet_opt ? unet_opt->params : std::vector<at::Tensor>();
  for (auto* o : {blip_opt.get(), unet_opt.get()})
    if (o) o->zero_grad();
  const double accum = static_cast<double>(batches.size());
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device_);
  at::Tensor loss_sum = at::zeros({}, f32);
  std::vector<at::Tensor> term_sums(4);
  using clock = std::chrono::steady_clock;
  auto ms_since = [](clock::time_point t) { return std::chrono::duration<float, std::milli>(clock::now() - t).count(); };
  float forward_ms = 0, backward_ms = 0;
  try {
    for (size_t m = 0; m < batches.size(); ++m) {
      const MicroBatch& mb = batches[m];
      auto t0 = clock::now();
      TensorMap r = forward(mb, step);
      forward_ms += ms_since(t0);
      at::Tensor total = r.at("total");
      {
        at::NoGradGuard no_grad;
        loss_sum.add_(total.detach().to(device_, at::kFloat) / accum);
        for (int t = 0; t < 4; ++t) {
          auto it = r.find(kTermNames[t]);
          if (it == r.end()) continue;
          at::Tensor v = it->second.detach().to(device_, at::kFloat) / accum;
          term_sums[t] = term_sums[t].defined() ? term_sums[t] + v : v;
        }
      }
      // Data-parallel with overlap: the last micro-batch's backward launches each gradient bucket's all-reduce as
      // soon as the bucket is complete (earlier micro-batches only accumulate, like DDP's no_sync). The graph key
      // (its active terms) tells GradSync which parameters to wait for.
      if (dist && dist->sync && m + 1 == batches.size()) {
        int64_t key = 0;
        for (int t : active_terms(step, mb.micro)) key |= int64_t(1) << t;
        dist->sync->arm(dist->ticket, key);
      }
      t0 = clock::now();
      (accum > 1 ? total / accum : total).backward();
      backward_ms += ms_since(t0);
    }
  } catch (...) {
    if (dist && dist->sync) dist->sync->abandon(dist->ticket);  // the other ranks then fail in their all-reduce
    throw;
  }
  const auto t_update = clock::now();
  at::NoGradGuard no_grad;
  // Data-parallel: average the gradients and the loss numbers over the ranks (lib/train/finetune/distributed.ts), with the
  // stop votes, in one collective round; the "has a gradient" counts are checked with the stats below.
  at::Tensor stop_votes = at::zeros({}, f32), grads_agree = at::ones({}, f32);
  if (dist && dist->sync) {
    std::vector<at::Tensor> e{loss_sum};
    for (int t = 0; t < 4; ++t) e.push_back(term_sums[t].defined() ? term_sums[t] : at::zeros({}, f32));
    e.push_back(at::full({}, dist->stop ? 1.f : 0.f, f32));
    at::Tensor summed = dist->sync->finish(at::stack(e), dist->ticket).to(device_);
    const double W = dist->world_size;
    loss_sum = (summed[0] / W).to(at::kFloat);
    for (int t = 0; t < 4; ++t)
      if (term_sums[t].defined()) term_sums[t] = (summed[1 + t] / W).to(at::kFloat);
    stop_votes = summed[5].to(at::kFloat);
    at::Tensor counts = summed.narrow(0, 6, summed.numel() - 6);
    grads_agree = counts.numel() ? ((counts == 0) | (counts == W)).all().to(at::kFloat) : grads_agree;
  }
  at::Tensor blip_norm = grad_norm(blip_params, device_), unet_norm = grad_norm(unet_params, device_);
  std::vector<at::Tensor> all = blip_params;
  all.insert(all.end(), unet_params.begin(), unet_params.end());
  at::Tensor total_norm;
  if (cfg.clip_mode == "global") {
    total_norm = grad_norm(all, device_);
    if (cfg.clip_max > 0) clip_grads(all, total_norm, cfg.clip_max);
  } else {
    total_norm = at::stack({blip_norm, unet_norm}).norm(2);
    if (cfg.blip_clip > 0) clip_grads(blip_params, blip_norm, cfg.blip_clip);
    if (cfg.unet_clip > 0) clip_grads(unet_params, unet_norm, cfg.unet_clip);
  }
  // Largest |w| of the trainable tensors before this update: a run whose weights blew up is caught even when its
  // loss still looks finite.
  std::vector<at::Tensor> maxes;
  for (auto& p : all) maxes.push_back(p.detach().abs().max().to(device_, at::kFloat));
  at::Tensor param_max = maxes.empty() ? at::zeros({}, f32) : at::stack(maxes).max();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<at::Tensor> stats{loss_sum};
  for (int t = 0; t < 4; ++t) stats.push_back(term_sums[t].defined() ? term_sums[t] : at::full({}, nan, f32));
  stats.insert(stats.end(), {total_norm, blip_norm, unet_norm, param_max, stop_votes.to(device_), grads_agree.to(device_)});
  // The step's one host synchronisation: every number it reports, and whether the update may be applied.
  at::Tensor host = at::stack(stats).to(at::kCPU);
  const float* v = host.data_ptr<float>();
  if (v[10] != 1) throw Error("joint step: the ranks disagree on which trained tensors have gradients (different schedules or trainable sets?)");
  bool finite = std::isfinite(v[0]) && std::isfinite(v[5]) && std::isfinite(v[8]);
  for (int t = 0; t < 4; ++t) finite = finite && (std::isnan(v[1 + t]) ? !term_sums[t].defined() : std::isfinite(v[1 + t]));
  if (finite) {
    for (auto* o : {blip_opt.get(), unet_opt.get()}) {
      if (!o) continue;
      std::lock_guard<std::mutex> lock(o->mutex);
      o->lr = lr;
      o->update();
    }
  }
  // Host-side wall times (on CUDA the kernels may still run when a phase returns; the sync above closes them).
  return at::cat({host.narrow(0, 0, 9), torch::tensor({finite ? 1.f : 0.f, forward_ms, backward_ms, ms_since(t_update)}), host.narrow(0, 9, 1)});
}

}  // namespace rt::train
