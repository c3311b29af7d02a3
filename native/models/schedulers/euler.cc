// Euler (Karras et al. 2022, Algorithm 2 with s_churn = 0), diffusers' EulerDiscreteScheduler:
//   d = (x − x0)/σ (line 7: dx/dσ of the probability-flow ODE),  x_next = x + d·(σ_next − σ) (line 8).
// Own keys: interpolation_type (linear | log_linear), use_karras_sigmas (+ sigma_min, sigma_max),
// timestep_type (discrete | continuous), rescale_betas_zero_snr.
#include "models/schedulers/common.h"

namespace rt::sd::sched {
namespace {

class Euler : public SigmaScheduler {
  std::string interpolation_, timestep_type_;
  bool karras_;
  double sigma_min_, sigma_max_;  // NaN: from the schedule

 public:
  explicit Euler(const json& c)
      : SigmaScheduler(c, "EulerDiscreteScheduler",
                       {"interpolation_type", "use_karras_sigmas", "sigma_min", "sigma_max", "timestep_type", "rescale_betas_zero_snr"}) {
    interpolation_ = key<std::string>(cfg_, "interpolation_type", "linear");
    if (interpolation_ != "linear" && interpolation_ != "log_linear")
      refuse(cfg_, "interpolation_type", "must be linear or log_linear, got '" + interpolation_ + "'");
    timestep_type_ = key<std::string>(cfg_, "timestep_type", "discrete");
    if (timestep_type_ != "discrete" && timestep_type_ != "continuous")
      refuse(cfg_, "timestep_type", "must be discrete or continuous, got '" + timestep_type_ + "'");
    karras_ = key<bool>(cfg_, "use_karras_sigmas", false);
    sigma_min_ = key<double>(cfg_, "sigma_min", NAN);
    sigma_max_ = key<double>(cfg_, "sigma_max", NAN);
  }
  std::string kind() const override { return "euler"; }

  void compute_timesteps(int64_t n) override {
    // 1. Timesteps of the spacing; 2. σ at them (linear interpolation of the table, or log-linear over its ends).
    std::vector<double> ts = spaced_timesteps(n);
    std::vector<double> sg;
    if (interpolation_ == "linear") {
      for (double t : ts) sg.push_back(interp(t, table_));
    } else {
      // torch.linspace(log σ_max, log σ_min, n + 1).exp() in float32: n + 1 values for n timesteps, as diffusers.
      at::Tensor l = at::linspace(static_cast<double>(std::log(table_.back())), static_cast<double>(std::log(table_.front())), n + 1, at::kFloat).exp();
      for (int64_t k = 0; k < l.size(0); ++k) sg.push_back(l[k].item<float>());
    }
    // 3. Karras spacing of σ (eq. 5), timesteps mapped back through log σ.
    if (karras_) {
      const double smin = std::isnan(sigma_min_) ? sg.back() : sigma_min_, smax = std::isnan(sigma_max_) ? sg.front() : sigma_max_;
      sg = karras_sigmas(smin, smax, n);
      ts.clear();
      for (double s : sg) ts.push_back(sigma_to_t(s, log_table_));
    }
    std::vector<float> sf(sg.begin(), sg.end()), tf;
    // 4. Continuous timesteps for v-prediction models trained on them: t = ¼·log σ (float32).
    if (timestep_type_ == "continuous" && prediction_type == "v_prediction") {
      for (float s : sf) tf.push_back(0.25f * std::log(s));
    } else {
      for (double t : ts) tf.push_back(static_cast<float>(t));
    }
    finish_schedule(tf, sf);
  }

  StepResult step(const at::Tensor& out, int64_t i, const at::Tensor& sample, const at::Tensor&, at::Generator*) override {
    check_index(i, "Euler step");
    // 1. σ̂ = σ·(γ + 1) with γ = 0 (s_churn 0: no noise is added, the draw diffusers makes is discarded).
    const float s = sigma(i);
    StepResult r;
    // 2. x0 from the model output at σ̂.
    r.pred_original_sample = x0_from(out, sample, s);
    // 3. d = (x − x0)/σ̂, Algorithm 2 line 7; 4. x_next = x + d·(σ_next − σ̂), line 8.
    at::Tensor derivative = (sample - r.pred_original_sample) / s;
    const float dt = sigma(i + 1) - s;
    r.prev_sample = sample + derivative * dt;
    return r;
  }
};

}  // namespace

std::unique_ptr<Scheduler> make_euler(const json& c) { return std::make_unique<Euler>(c); }

}  // namespace rt::sd::sched
