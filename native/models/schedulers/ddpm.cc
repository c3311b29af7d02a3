// DDPM (Ho et al. 2020), diffusers' DDPMScheduler: the posterior mean of eq. (7) with x0 from eq. (15), plus
// sqrt(variance)·z. Own keys: variance_type, clip_sample, clip_sample_range, thresholding,
// dynamic_thresholding_ratio, sample_max_value, rescale_betas_zero_snr.
#include "models/schedulers/common.h"

namespace rt::sd::sched {
namespace {

class DDPM : public AlphaScheduler {
  std::string variance_type_;
  bool clip_sample_, thresholding_;
  double clip_range_, dyn_ratio_, max_value_;

 public:
  explicit DDPM(const json& c)
      : AlphaScheduler(c, "DDPMScheduler",
                       {"variance_type", "clip_sample", "clip_sample_range", "thresholding", "dynamic_thresholding_ratio", "sample_max_value",
                        "rescale_betas_zero_snr"},
                       "leading") {
    variance_type_ = key<std::string>(cfg_, "variance_type", "fixed_small");
    // learned / learned_range need a model that also predicts the variance (2·C output channels; SD's UNet does
    // not); fixed_large_log gives NaN noise scales in diffusers 0.25.1 (it takes sqrt of log β).
    if (variance_type_ != "fixed_small" && variance_type_ != "fixed_small_log" && variance_type_ != "fixed_large")
      refuse(cfg_, "variance_type", "'" + variance_type_ + "' is not supported (fixed_small, fixed_small_log, fixed_large)");
    clip_sample_ = key<bool>(cfg_, "clip_sample", true);
    clip_range_ = key<double>(cfg_, "clip_sample_range", 1.0);
    thresholding_ = key<bool>(cfg_, "thresholding", false);
    dyn_ratio_ = key<double>(cfg_, "dynamic_thresholding_ratio", 0.995);
    max_value_ = key<double>(cfg_, "sample_max_value", 1.0);
  }
  std::string kind() const override { return "ddpm"; }
  void compute_timesteps(int64_t n) override { timesteps = int_tensor(integer_timesteps(n)); }

  // β̃ of eq. (7) over the inference stride: (1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev), clamped at 1e-20 (fixed_small), or
  // β_t (fixed_large).
  float variance(int64_t t) const {
    const int64_t prev = t - stride();
    const float a_t = abar(t), a_prev = prev >= 0 ? abar(prev) : 1.0f;
    const float beta_t = 1.0f - a_t / a_prev;
    if (variance_type_ == "fixed_large") return beta_t;
    return std::max((1.0f - a_prev) / (1.0f - a_t) * beta_t, 1e-20f);
  }

  StepResult step(const at::Tensor& out, int64_t i, const at::Tensor& sample, const at::Tensor& noise, at::Generator* gen) override {
    check_index(i, "DDPM step");
    const int64_t t = timestep_at(i), prev = t - stride();
    // 1. ᾱ_t, ᾱ_{t-1} (1 past the end: DDPM always finishes at a clean sample), α and β over the stride.
    const float a_t = abar(t), a_prev = prev >= 0 ? abar(prev) : 1.0f;
    const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    const float cur_alpha = a_t / a_prev, cur_beta = 1.0f - cur_alpha;
    // 2. x0 from the model output, eq. (15); 3. dynamic thresholding or clipping of x0.
    StepResult r;
    r.pred_original_sample = predict(prediction_type, out, sample, a_t, false).x0;
    if (thresholding_) r.pred_original_sample = threshold_sample(r.pred_original_sample, dyn_ratio_, max_value_);
    else if (clip_sample_) r.pred_original_sample = r.pred_original_sample.clamp(-clip_range_, clip_range_);
    // 4. Posterior mean coefficients of x0 and x_t, eq. (7).
    const float c0 = std::sqrt(a_prev) * cur_beta / b_t;
    const float c1 = std::sqrt(cur_alpha) * b_prev / b_t;
    r.prev_sample = c0 * r.pred_original_sample + c1 * sample;
    // 5. Noise whenever t > 0 (even when the variance is clamped to 1e-20 at the last step).
    r.variance = variance(t);
    if (t > 0) {
      r.noise = draw_noise(sample, noise, gen, "DDPM step");
      r.noise_drawn = true;
      // fixed_small_log: exp(½·log v) rather than v^½ (the same value up to rounding, as diffusers computes it).
      const float scale = variance_type_ == "fixed_small_log" ? std::exp(0.5f * std::log(static_cast<float>(r.variance)))
                                                              : std::sqrt(static_cast<float>(r.variance));
      r.prev_sample = r.prev_sample + scale * r.noise;
    }
    return r;
  }
};

}  // namespace

std::unique_ptr<Scheduler> make_ddpm(const json& c) { return std::make_unique<DDPM>(c); }

}  // namespace rt::sd::sched
