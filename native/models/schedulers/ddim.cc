// DDIM (Song et al. 2021), diffusers' DDIMScheduler, eq. (12):
//   x_prev = sqrt(ᾱ_prev)·x0 + sqrt(1 − ᾱ_prev − σ²)·ε + σ·z,  σ = η·sqrt((1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev)) (eq. 16).
// Own keys: clip_sample, clip_sample_range, set_alpha_to_one, thresholding, dynamic_thresholding_ratio,
// sample_max_value, rescale_betas_zero_snr; `eta` (a step() argument in diffusers, default 0 as the SD pipeline)
// is read from the same object.
#include "models/schedulers/common.h"

namespace rt::sd::sched {
namespace {

class DDIM : public AlphaScheduler {
  bool clip_sample_, thresholding_;
  double clip_range_, dyn_ratio_, max_value_, eta_;
  float final_alpha_cumprod_;

 public:
  explicit DDIM(const json& c)
      : AlphaScheduler(c, "DDIMScheduler",
                       {"clip_sample", "clip_sample_range", "set_alpha_to_one", "thresholding", "dynamic_thresholding_ratio", "sample_max_value",
                        "rescale_betas_zero_snr", "eta"},
                       "leading") {
    clip_sample_ = key<bool>(cfg_, "clip_sample", true);
    clip_range_ = key<double>(cfg_, "clip_sample_range", 1.0);
    thresholding_ = key<bool>(cfg_, "thresholding", false);
    dyn_ratio_ = key<double>(cfg_, "dynamic_thresholding_ratio", 0.995);
    max_value_ = key<double>(cfg_, "sample_max_value", 1.0);
    eta_ = key<double>(cfg_, "eta", 0.0);
    if (eta_ < 0) refuse(cfg_, "eta", "must be >= 0");
    // ᾱ used past the last step: 1, or ᾱ_0 (SD sets set_alpha_to_one false).
    final_alpha_cumprod_ = key<bool>(cfg_, "set_alpha_to_one", true) ? 1.0f : abar(0);
  }
  std::string kind() const override { return "ddim"; }
  void compute_timesteps(int64_t n) override { timesteps = int_tensor(integer_timesteps(n)); }

  StepResult step(const at::Tensor& out, int64_t i, const at::Tensor& sample, const at::Tensor& noise, at::Generator* gen) override {
    check_index(i, "DDIM step");
    // 1. The previous timestep t − T//n.
    const int64_t t = timestep_at(i), prev = t - stride();
    // 2. ᾱ_t and ᾱ_prev (final_alpha_cumprod past the end).
    const float a_t = abar(t), a_prev = prev >= 0 ? abar(prev) : final_alpha_cumprod_;
    const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    // 3. "predicted x0" and ε of eq. (12) from the model output.
    Pred p = predict(prediction_type, out, sample, a_t, true);
    StepResult r;
    r.pred_original_sample = p.x0;
    // 4. Dynamic thresholding or clipping of x0 (ε stays the model's: diffusers' use_clipped_model_output is
    //    False in the pipelines).
    if (thresholding_) r.pred_original_sample = threshold_sample(p.x0, dyn_ratio_, max_value_);
    else if (clip_sample_) r.pred_original_sample = p.x0.clamp(-clip_range_, clip_range_);
    // 5. σ_t(η), eq. (16).
    const float var = (b_prev / b_t) * (1.0f - a_t / a_prev);
    const float std_dev = static_cast<float>(eta_) * std::sqrt(var);
    // 6. "direction pointing to x_t" of eq. (12), with the model's ε (use_clipped_model_output False).
    at::Tensor direction = std::sqrt(1.0f - a_prev - std_dev * std_dev) * p.eps;
    // 7. x_{t-1} without noise, eq. (12), then + σ·z when η > 0.
    r.prev_sample = std::sqrt(a_prev) * r.pred_original_sample + direction;
    if (eta_ > 0) {
      r.noise = draw_noise(sample, noise, gen, "DDIM step");
      r.noise_drawn = true;
      r.prev_sample = r.prev_sample + std_dev * r.noise;
    }
    return r;
  }
};

}  // namespace

std::unique_ptr<Scheduler> make_ddim(const json& c) { return std::make_unique<DDIM>(c); }

}  // namespace rt::sd::sched
