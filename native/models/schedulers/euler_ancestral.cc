// Euler ancestral (k-diffusion's sample_euler_ancestral, η = 1), diffusers' EulerAncestralDiscreteScheduler:
//   σ_up = sqrt(σ_next²(σ² − σ_next²)/σ²),  σ_down = sqrt(σ_next² − σ_up²),
//   x_next = x + (x − x0)/σ · (σ_down − σ) + σ_up·z.
// Own keys: rescale_betas_zero_snr.
#include "models/schedulers/common.h"

namespace rt::sd::sched {
namespace {

class EulerAncestral : public SigmaScheduler {
 public:
  explicit EulerAncestral(const json& c) : SigmaScheduler(c, "EulerAncestralDiscreteScheduler", {"rescale_betas_zero_snr"}) {
    if (prediction_type == "sample") refuse(cfg_, "prediction_type", "'sample' is not implemented by EulerAncestralDiscreteScheduler (epsilon, v_prediction)");
  }
  std::string kind() const override { return "euler_ancestral"; }

  void compute_timesteps(int64_t n) override {
    std::vector<double> ts = spaced_timesteps(n);
    std::vector<float> tf, sf;
    for (double t : ts) {
      tf.push_back(static_cast<float>(t));
      sf.push_back(static_cast<float>(interp(t, table_)));
    }
    finish_schedule(tf, sf);
  }

  StepResult step(const at::Tensor& out, int64_t i, const at::Tensor& sample, const at::Tensor& noise, at::Generator* gen) override {
    check_index(i, "Euler ancestral step");
    const float s = sigma(i), s_to = sigma(i + 1);
    StepResult r;
    // 1. x0 from the model output at σ.
    r.pred_original_sample = x0_from(out, sample, s);
    // 2. Split the move to σ_next into a deterministic part down to σ_down and fresh noise of σ_up.
    const float s_up = std::sqrt(s_to * s_to * (s * s - s_to * s_to) / (s * s));
    const float s_down = std::sqrt(s_to * s_to - s_up * s_up);
    // 3. Euler step to σ_down.
    at::Tensor derivative = (sample - r.pred_original_sample) / s;
    const float dt = s_down - s;
    r.prev_sample = sample + derivative * dt;
    // 4. + σ_up·z (drawn every step, also the last where σ_up = 0).
    r.noise = draw_noise(sample, noise, gen, "Euler ancestral step");
    r.noise_drawn = true;
    r.prev_sample = r.prev_sample + r.noise * s_up;
    return r;
  }
};

}  // namespace

std::unique_ptr<Scheduler> make_euler_ancestral(const json& c) { return std::make_unique<EulerAncestral>(c); }

}  // namespace rt::sd::sched
