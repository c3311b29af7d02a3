// The joint BLIP ⇄ Stable Diffusion objective (paper Eq. 5) and its training step, native end to end:
//
//   L = λ_cap·L_cap + λ_rec_img·L_rec_img + λ_sd·L_sd + λ_rec_txt·L_rec_txt
//
// JointObjective::forward evaluates the active terms of one micro-batch with their graph (the TypeScript
// `jointObjective` is this call). JointObjective::step runs a whole optimizer step — every micro-batch's forward and
// backward, gradient norms, clipping and AdamW per parameter group — and returns its numbers as one small tensor,
// so the step costs one native call and one host synchronisation.
//
// Random draws follow lib/image/random.ts bit for bit (mulberry32 timesteps, per-item seeded N(0,1) noise from
// deriveSeed), so the step equals the TypeScript loss-term composition on the same seeds.
#pragma once
#include <memory>
#include <optional>

#include "core/model.h"
#include "dist/dist.h"
#include "models/schedulers.h"
#include "train/adamw.h"

namespace rt::train {

// deriveSeed(seed, ...indices) of lib/image/random.ts (splitmix32-style finaliser over 32-bit integers).
uint32_t derive_seed(uint32_t seed, std::initializer_list<uint32_t> indices);
// Rng(seed).int(low, high) of lib/image/random.ts: mulberry32 with rejection sampling.
int64_t mulberry_int(uint32_t seed, int64_t low, int64_t high);

struct JointConfig {
  // λ per term, in LOSS_TERMS order: cap, recImg, sd, recTxt.
  double weights[4] = {1, 1, 1, 1};
  // summed: every term each micro-batch; alternating: {sd, recTxt} on even optimizer steps, {cap, recImg} on odd;
  // alternating-micro (the authors' release): the same split by micro-batch index.
  std::string schedule = "summed";
  double temperature = 1;
  std::string soft_mode = "probs";        // probs: softmax over BLIP's vocabulary, then re-index; logits: the reverse
  std::string soft_framing = "padded";    // padded: caption rows framed to 77 like SD's ids; release: BOS + rows + EOS
  int64_t soft_length = 77;
  std::string rec_txt_mode = "x0";        // x0: DDPM eq. 15; ddpm-step: the release's DDPM step on the clean latents
  bool rec_txt_normalize = true;          // CLIP mean/std on the decoded estimate (the release feeds [-1, 1] pixels)
  double label_smoothing = 0.1;
  // Which model each reconstruction term updates (Appendix I): both, blip or unet.
  std::string rec_img_route = "both", rec_txt_route = "both";
  int64_t clip_start = 49406, clip_end = 49407, clip_pad = 49407;
  bool vision_trainable = false;
  int64_t blip_image_size = 384;
  bool gradient_checkpointing = false;
  bool training_conv_packing = true;  // the UNet's frozen convolutions on packed weights under autograd
  int64_t latent_channels = 4, vae_factor = 8;  // the VAE's posterior channels and spatial factor
  c10::optional<at::ScalarType> autocast;
  json scheduler_config = json::object();
  // Clipping: global (one norm over both models, max_norm clip_max) or per-model (blip_clip / unet_clip; 0 = none).
  std::string clip_mode = "global";
  double clip_max = 1.0, blip_clip = 0, unet_clip = 0;
  static JointConfig from(const json& c);
};

// One micro-batch: tensors as lib/paper/joint/losses.ts CaptionBatch + images, and its host-known sizes.
struct MicroBatch {
  at::Tensor blip_pixels;  // [B, 3, S, S] CLIP mean/std (needed by cap / recImg)
  at::Tensor sd_images;    // [B, 3, H, W] in [-1, 1]
  at::Tensor latents;      // optional: scaled VAE latents of sd_images (a latent cache)
  at::Tensor blip_ids, blip_mask, blip_labels;  // [B, T]
  at::Tensor clip_ids;     // [B, L]
  int64_t prompt_length = 0;
  std::vector<int64_t> caption_lengths;
  uint32_t seed = 0;
  int64_t micro = 0;       // index within the optimizer step (alternating-micro)
  // Data-parallel (lib/train/finetune/distributed.ts): item i draws as global item slot_offset + i·slot_stride, and the
  // token-mean terms (cap, recTxt) are weighted by token_scale = W·n_r/N, so W ranks reproduce one process.
  int64_t slot_offset = 0, slot_stride = 1;
  double token_scale = 1;
};

// Data-parallel step: the averager run between backward and clipping, its collective ticket (taken on the JS
// thread, in call order) and this rank's stop vote.
struct DistStep {
  std::shared_ptr<dist::GradSync> sync;
  uint64_t ticket = 0;
  int world_size = 1;
  bool stop = false;
};

struct JointModels {
  std::shared_ptr<Model> blip, unet, vae, text;
};

class JointObjective {
 public:
  JointObjective(JointModels models, at::Tensor bridge_index, JointConfig config);

  // Active terms of a micro-batch at optimizer step `step`: indices into {cap, recImg, sd, recTxt}.
  std::vector<int> active_terms(int64_t step, int64_t micro) const;
  // total and the active terms ("cap", "recImg", "sd", "recTxt"), with graph. Caller holds the model locks.
  TensorMap forward(const MicroBatch& mb, int64_t step);

  // One optimizer step over the micro-batches. Caller holds the model locks.
  // Returns float32 [14] on the CPU: loss, the 4 terms (mean over micro-batches; NaN where inactive), grad norms
  // total/blip/unet (before clipping), largest |w| before the update, 1 if the update was applied (every number
  // finite) else 0, milliseconds of the forwards, the backwards, and clipping + update, then the ranks' stop votes.
  // With `dist`, gradients and the loss numbers are averaged over the ranks before norms and clipping (one
  // collective round, no extra host sync).
  at::Tensor step(const std::vector<MicroBatch>& batches, int64_t step, double lr, const DistStep* dist = nullptr);

  std::shared_ptr<AdamWState> blip_opt, unet_opt;
  // The models, held strongly only during a call (bind/unbind), so disposing a model in JS frees it.
  JointModels models;
  void bind();
  void unbind() { models = JointModels{}; }
  JointConfig cfg;
  std::mutex mutex;

 private:
  std::weak_ptr<Model> weak_[4];
  at::Tensor bridge_index_;  // [clipVocab] int64 on the device
  std::unique_ptr<sd::Scheduler> ddpm_;  // training schedule (add_noise, ᾱ, the release's step)
  std::unique_ptr<sd::Scheduler> ddpm_all_;  // set to every training timestep (rec_txt_mode ddpm-step)
  at::Device device_;
  at::ScalarType unet_dtype_;
  std::map<std::string, at::Tensor> constants_;  // one-hot rows, resize weights, normalisation, per size/id

  const at::Tensor& constant(const std::string& key, const std::function<at::Tensor()>& make);
  at::Tensor vision_embeds(const at::Tensor& pixels);
  at::Tensor blip_logits(const at::Tensor& embeds, const MicroBatch& mb);
  at::Tensor caption_loss(const at::Tensor& logits, const at::Tensor& labels) const;
  at::Tensor soft_caption(const at::Tensor& logits, const MicroBatch& mb);
  at::Tensor encode_latents(const at::Tensor& images, uint32_t seed);
  at::Tensor item_noise(const at::IntArrayRef shape, uint32_t seed, uint32_t stream);
  // The draw index of batch item i (MicroBatch slots of the micro-batch being evaluated).
  uint32_t slot(int64_t i) const { return static_cast<uint32_t>(slot_offset_ + i * slot_stride_); }
  int64_t slot_offset_ = 0, slot_stride_ = 1;
  struct Denoised {
    at::Tensor loss, prediction, noisy, timesteps, latents;
  };
  Denoised denoise(const at::Tensor& latents, const at::Tensor& ehs, uint32_t seed);
  at::Tensor clean_estimate(const Denoised& d, uint32_t seed);
  at::Tensor sd_to_blip_pixels(const at::Tensor& images);
  at::Tensor resize_axis(const at::Tensor& x, int dim, int64_t in, int64_t out);
  at::Tensor to_4d(const Model& m, at::Tensor x) const;
};

}  // namespace rt::train
