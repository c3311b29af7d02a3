// Heun (Karras et al. 2022, Algorithm 1: 2nd-order, trapezoidal corrector), diffusers' HeunDiscreteScheduler.
// Each σ interval takes two model calls, so timesteps/σ are interleaved ([t0, t1, t1, t2, t2, ...], order 2):
//   even call: d = (x − x0(σ))/σ, x' = x + d·(σ_next − σ)                     (Euler predictor, line 5–6)
//   odd call:  d' = (x' − x0(σ_next))/σ_next, x_next = x + ½(d + d')·(σ_next − σ) (corrector, line 7–8)
// The last interval (σ_next = 0) is a plain Euler step. Own keys: use_karras_sigmas, clip_sample,
// clip_sample_range; beta_schedule also accepts "exp".
#include "models/schedulers/common.h"

namespace rt::sd::sched {
namespace {

class Heun : public SigmaScheduler {
  bool karras_, clip_sample_;
  double clip_range_;
  // Predictor state (diffusers: prev_derivative, dt, sample); dt_ undefined = first order next.
  at::Tensor prev_derivative_, saved_sample_;
  std::optional<float> dt_;

 public:
  explicit Heun(const json& c)
      : SigmaScheduler(c, "HeunDiscreteScheduler", {"use_karras_sigmas", "clip_sample", "clip_sample_range"},
                       {"linear", "scaled_linear", "squaredcos_cap_v2", "exp"}, {0.00085, 0.012}) {
    karras_ = key<bool>(cfg_, "use_karras_sigmas", false);
    clip_sample_ = key<bool>(cfg_, "clip_sample", false);
    clip_range_ = key<double>(cfg_, "clip_sample_range", 1.0);
    order = 2;
  }
  std::string kind() const override { return "heun"; }

  void compute_timesteps(int64_t n) override {
    std::vector<double> ts, sg;
    spaced_sigmas(n, karras_, ts, sg);
    // Interleave: σ [σ0, σ1, σ1, ..., σ_{n−1}, σ_{n−1}, 0], t [t0, t1, t1, ..., t_{n−1}, t_{n−1}].
    std::vector<float> tf{static_cast<float>(ts[0])}, sf{static_cast<float>(sg[0])};
    for (size_t k = 1; k < ts.size(); ++k) {
      tf.push_back(static_cast<float>(ts[k]));
      tf.push_back(static_cast<float>(ts[k]));
      sf.push_back(static_cast<float>(sg[k]));
      sf.push_back(static_cast<float>(sg[k]));
    }
    finish_schedule(tf, sf);
  }
  void reset_run() override {
    prev_derivative_ = at::Tensor();
    saved_sample_ = at::Tensor();
    dt_.reset();
  }

  StepResult step(const at::Tensor& out, int64_t i, const at::Tensor& sample, const at::Tensor&, at::Generator*) override {
    check_index(i, "Heun step");
    check_order(i, "Heun step");
    const bool first = !dt_.has_value();
    // 1. The interval [σ, σ_next]: this entry and the next (predictor) or the previous and this (corrector).
    const float s = first ? sigma(i) : sigma(i - 1), s_next = first ? sigma(i + 1) : sigma(i);
    const float s_hat = s;  // γ = 0
    // 2. x0 at the σ the model saw (σ̂ for the predictor, σ_next for the corrector), clipped if configured.
    const float s_in = first ? s_hat : s_next;
    StepResult r;
    at::Tensor x0 = x0_from(out, sample, s_in);
    if (clip_sample_) x0 = x0.clamp(-clip_range_, clip_range_);
    r.pred_original_sample = x0;
    if (first) {
      // 3a. Euler predictor; keep d, dt and x for the corrector.
      at::Tensor derivative = (sample - x0) / s_hat;
      const float dt = s_next - s_hat;
      prev_derivative_ = derivative;
      dt_ = dt;
      saved_sample_ = sample;
      r.prev_sample = sample + derivative * dt;
    } else {
      // 3b. Trapezoidal corrector from the saved x.
      at::Tensor derivative = (prev_derivative_ + (sample - x0) / s_next) / 2;
      r.prev_sample = saved_sample_ + derivative * *dt_;
      reset_run();
    }
    return r;
  }
};

}  // namespace

std::unique_ptr<Scheduler> make_heun(const json& c) { return std::make_unique<Heun>(c); }

}  // namespace rt::sd::sched
