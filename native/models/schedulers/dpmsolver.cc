// DPM-Solver multistep (Lu et al. 2022: DPM-Solver, arXiv 2206.00927; DPM-Solver++, arXiv 2211.01095),
// diffusers' DPMSolverMultistepScheduler. In λ = log(α/σ) with h = λ_t − λ_s:
//   dpmsolver++ (data prediction x0):  1st order x_t = (σ_t/σ_s)·x − α_t(e^{−h} − 1)·D0           (++ eq. 5, = DDIM)
//   dpmsolver   (noise prediction ε):  1st order x_t = (α_t/α_s)·x − σ_t(e^{h} − 1)·D0
//   2nd order (multistep, ++ Algorithm 2): D1 = (m0 − m1)/r0, r0 = h0/h, midpoint ½·D1 or heun (e^{−h}−1)/h + 1 weights
//   3rd order: D1, D2 from three outputs (DPM-Solver eq. of Appendix B / diffusers' third_order_update)
//   SDE variants (sde-dpmsolver++: ++ eq. (9) family) add σ_t·sqrt(1 − e^{−2h})·z (or sqrt(e^{2h} − 1) for ε).
// Own keys: solver_order (1–3), algorithm_type, solver_type, lower_order_final, euler_at_final,
// use_karras_sigmas, use_lu_lambdas, lambda_min_clipped, variance_type (null only), thresholding,
// dynamic_thresholding_ratio, sample_max_value.
#include "models/schedulers/common.h"

namespace rt::sd::sched {
namespace {

class DPMSolver : public SigmaScheduler {
  int64_t solver_order_;
  std::string algorithm_, solver_type_;
  bool lower_order_final_, euler_at_final_, karras_, lu_lambdas_, thresholding_;
  double lambda_min_clipped_, dyn_ratio_, max_value_;
  std::vector<at::Tensor> outputs_;
  int64_t lower_order_nums_ = 0;

 public:
  explicit DPMSolver(const json& c)
      : SigmaScheduler(c, "DPMSolverMultistepScheduler",
                       {"solver_order", "algorithm_type", "solver_type", "lower_order_final", "euler_at_final", "use_karras_sigmas",
                        "use_lu_lambdas", "lambda_min_clipped", "variance_type", "thresholding", "dynamic_thresholding_ratio",
                        "sample_max_value"}) {
    solver_order_ = key<int64_t>(cfg_, "solver_order", 2);
    if (solver_order_ < 1 || solver_order_ > 3) refuse(cfg_, "solver_order", "must be 1, 2 or 3, got " + std::to_string(solver_order_));
    algorithm_ = key<std::string>(cfg_, "algorithm_type", "dpmsolver++");
    if (algorithm_ == "deis") algorithm_ = "dpmsolver++";  // diffusers re-registers DEIS configs as dpmsolver++
    if (algorithm_ != "dpmsolver++" && algorithm_ != "dpmsolver" && algorithm_ != "sde-dpmsolver++" && algorithm_ != "sde-dpmsolver")
      refuse(cfg_, "algorithm_type", "must be dpmsolver++, dpmsolver, sde-dpmsolver++ or sde-dpmsolver (deis reads as dpmsolver++), got '" + algorithm_ + "'");
    solver_type_ = key<std::string>(cfg_, "solver_type", "midpoint");
    if (solver_type_ == "logrho" || solver_type_ == "bh1" || solver_type_ == "bh2") solver_type_ = "midpoint";  // as diffusers
    if (solver_type_ != "midpoint" && solver_type_ != "heun") refuse(cfg_, "solver_type", "must be midpoint or heun, got '" + solver_type_ + "'");
    lower_order_final_ = key<bool>(cfg_, "lower_order_final", true);
    euler_at_final_ = key<bool>(cfg_, "euler_at_final", false);
    karras_ = key<bool>(cfg_, "use_karras_sigmas", false);
    lu_lambdas_ = key<bool>(cfg_, "use_lu_lambdas", false);
    // -Infinity (the default) arrives as null through JSON.
    lambda_min_clipped_ = key<double>(cfg_, "lambda_min_clipped", -INFINITY);
    // learned / learned_range slice the first 3 channels of a 6-channel output (DeepFloyd IF); SD's UNet has none.
    if (cfg_.raw->contains("variance_type") && !(*cfg_.raw)["variance_type"].is_null())
      refuse(cfg_, "variance_type", "must be null for DPM-Solver with a Stable Diffusion UNet (learned variances are not predicted), got " +
                                        (*cfg_.raw)["variance_type"].dump());
    thresholding_ = key<bool>(cfg_, "thresholding", false);
    dyn_ratio_ = key<double>(cfg_, "dynamic_thresholding_ratio", 0.995);
    max_value_ = key<double>(cfg_, "sample_max_value", 1.0);
  }
  std::string kind() const override { return "dpmsolver"; }

  void compute_timesteps(int64_t n) override {
    const int64_t T = num_train_timesteps;
    // 1. The last usable timestep: λ clipped at lambda_min_clipped (searchsorted over the ascending flipped λ_t).
    at::Tensor lam = (alphas_cumprod.sqrt().log() - (1 - alphas_cumprod).sqrt().log()).flip(0).contiguous();
    int64_t clipped_idx = 0;
    if (std::isfinite(lambda_min_clipped_)) {
      const float* lp = lam.data_ptr<float>();
      while (clipped_idx < T && static_cast<double>(lp[clipped_idx]) < lambda_min_clipped_) ++clipped_idx;
    }
    const int64_t last = T - clipped_idx;
    // 2. Integer timesteps of the spacing (N+1 points with the last dropped for linspace/leading).
    std::vector<int64_t> ts;
    if (cfg_.timestep_spacing == "linspace") {
      auto l = np_linspace(0, double(last - 1), n + 1);
      for (int64_t i = n; i >= 1; --i) ts.push_back(static_cast<int64_t>(np_round(l[i])));
    } else if (cfg_.timestep_spacing == "leading") {
      const int64_t ratio = last / (n + 1);
      for (int64_t i = n; i >= 1; --i) ts.push_back(i * ratio + cfg_.steps_offset);
    } else {
      for (double v : np_arange_down(double(last), 0, -double(T) / double(n))) ts.push_back(static_cast<int64_t>(np_round(v)) - 1);
    }
    // 3. σ: Karras spacing (eq. 5 of Karras et al.), uniform λ (Lu et al. 2022, "DPM-Solver-v3"/Lu's λ schedule),
    //    or the table at the timesteps plus σ(t = 0) as the final σ; the first two repeat their last σ.
    std::vector<float> sf;
    if (karras_ || lu_lambdas_) {
      std::vector<double> sg;
      if (karras_) {
        sg = karras_sigmas(table_.front(), table_.back(), n);
      } else {
        const double lmin = log_table_.front(), lmax = log_table_.back();
        for (double r : np_linspace(0, 1, n)) sg.push_back(std::exp(lmax + r * (lmin - lmax)));
      }
      ts.clear();
      for (double s : sg) ts.push_back(static_cast<int64_t>(np_round(sigma_to_t(s, log_table_))));
      sf.assign(sg.begin(), sg.end());
      sf.push_back(sf.back());
    } else {
      for (int64_t t : ts) sf.push_back(static_cast<float>(interp(double(t), table_)));
      const float a0 = abar(0);
      sf.push_back(std::sqrt((1.0f - a0) / a0));
    }
    timesteps = int_tensor(ts);
    sigmas = float_tensor(sf);
    init_noise_sigma = 1.0;
  }
  void reset_run() override {
    outputs_.assign(solver_order_, at::Tensor());
    lower_order_nums_ = 0;
  }
  at::Tensor scale_model_input(const at::Tensor& sample, int64_t) override { return sample; }

  // α_t = 1/sqrt(σ² + 1), σ_t = σ·α_t: the VP pair of the k-diffusion σ.
  static void alpha_sigma(float s, float& alpha, float& sig) {
    alpha = 1.0f / std::sqrt(s * s + 1.0f);
    sig = s * alpha;
  }
  static float lambda_of(float a, float s) { return std::log(a) - std::log(s); }

  // The model output as the solver's variable: x0 for the ++ algorithms (thresholded if configured), ε otherwise.
  at::Tensor convert(const at::Tensor& out, const at::Tensor& sample, int64_t i) const {
    float a, s;
    alpha_sigma(sigma(i), a, s);
    if (algorithm_ == "dpmsolver++" || algorithm_ == "sde-dpmsolver++") {
      at::Tensor x0;
      if (prediction_type == "epsilon") x0 = (sample - s * out) / a;
      else if (prediction_type == "sample") x0 = out;
      else x0 = a * sample - s * out;
      return thresholding_ ? threshold_sample(x0, dyn_ratio_, max_value_) : x0;
    }
    at::Tensor eps;
    if (prediction_type == "epsilon") eps = out;
    else if (prediction_type == "sample") eps = (sample - a * out) / s;
    else eps = a * out + s * sample;
    if (thresholding_) {
      at::Tensor x0 = threshold_sample((sample - s * eps) / a, dyn_ratio_, max_value_);
      eps = (sample - a * x0) / s;
    }
    return eps;
  }

  StepResult step(const at::Tensor& out, int64_t i, const at::Tensor& sample, const at::Tensor& noise_in, at::Generator* gen) override {
    check_index(i, "DPM-Solver step");
    check_order(i, "DPM-Solver step");
    const int64_t n = timesteps.size(0);
    // 1. Lower the order at the end of short schedules (stability, ++ §5), or always Euler last.
    const bool lower_final = (i == n - 1) && (euler_at_final_ || (lower_order_final_ && n < 15));
    const bool lower_second = (i == n - 2) && lower_order_final_ && n < 15;
    // 2. Convert and push the model output into the history m_{i−2}, m_{i−1}, m_i.
    at::Tensor m = convert(out, sample, i);
    for (int64_t k = 0; k + 1 < solver_order_; ++k) outputs_[k] = outputs_[k + 1];
    outputs_.back() = m;
    // 3. SDE variants draw noise every step.
    const bool sde = algorithm_.rfind("sde-", 0) == 0;
    StepResult r;
    if (sde) {
      r.noise = draw_noise(sample, noise_in, gen, "DPM-Solver step");
      r.noise_drawn = true;
    }
    // 4. The update of the order the history allows.
    if (solver_order_ == 1 || lower_order_nums_ < 1 || lower_final) r.prev_sample = first_order(m, i, sample, r.noise);
    else if (solver_order_ == 2 || lower_order_nums_ < 2 || lower_second) r.prev_sample = second_order(i, sample, r.noise);
    else r.prev_sample = third_order(i, sample);
    if (lower_order_nums_ < solver_order_) lower_order_nums_ += 1;
    return r;
  }

 private:
  at::Tensor first_order(const at::Tensor& m, int64_t i, const at::Tensor& x, const at::Tensor& z) const {
    float a_t, s_t, a_s, s_s;
    alpha_sigma(sigma(i + 1), a_t, s_t);
    alpha_sigma(sigma(i), a_s, s_s);
    const float h = lambda_of(a_t, s_t) - lambda_of(a_s, s_s);
    if (algorithm_ == "dpmsolver++") return (s_t / s_s) * x - (a_t * (std::exp(-h) - 1.0f)) * m;
    if (algorithm_ == "dpmsolver") return (a_t / a_s) * x - (s_t * (std::exp(h) - 1.0f)) * m;
    if (algorithm_ == "sde-dpmsolver++")
      return (s_t / s_s * std::exp(-h)) * x + (a_t * (1 - std::exp(-2.0f * h))) * m + s_t * std::sqrt(1.0f - std::exp(-2 * h)) * z;
    return (a_t / a_s) * x - 2.0f * (s_t * (std::exp(h) - 1.0f)) * m + s_t * std::sqrt(std::exp(2 * h) - 1.0f) * z;
  }

  at::Tensor second_order(int64_t i, const at::Tensor& x, const at::Tensor& z) const {
    float a_t, s_t, a_s0, s_s0, a_s1, s_s1;
    alpha_sigma(sigma(i + 1), a_t, s_t);
    alpha_sigma(sigma(i), a_s0, s_s0);
    alpha_sigma(sigma(i - 1), a_s1, s_s1);
    const float l_t = lambda_of(a_t, s_t), l_s0 = lambda_of(a_s0, s_s0), l_s1 = lambda_of(a_s1, s_s1);
    const at::Tensor& m0 = outputs_[solver_order_ - 1];
    const at::Tensor& m1 = outputs_[solver_order_ - 2];
    const float h = l_t - l_s0, h_0 = l_s0 - l_s1;
    const float r0 = h_0 / h;
    const at::Tensor& D0 = m0;
    at::Tensor D1 = (1.0f / r0) * (m0 - m1);
    const bool mid = solver_type_ == "midpoint";
    if (algorithm_ == "dpmsolver++") {
      if (mid) return (s_t / s_s0) * x - (a_t * (std::exp(-h) - 1.0f)) * D0 - 0.5f * (a_t * (std::exp(-h) - 1.0f)) * D1;
      return (s_t / s_s0) * x - (a_t * (std::exp(-h) - 1.0f)) * D0 + (a_t * ((std::exp(-h) - 1.0f) / h + 1.0f)) * D1;
    }
    if (algorithm_ == "dpmsolver") {
      if (mid) return (a_t / a_s0) * x - (s_t * (std::exp(h) - 1.0f)) * D0 - 0.5f * (s_t * (std::exp(h) - 1.0f)) * D1;
      return (a_t / a_s0) * x - (s_t * (std::exp(h) - 1.0f)) * D0 - (s_t * ((std::exp(h) - 1.0f) / h - 1.0f)) * D1;
    }
    if (algorithm_ == "sde-dpmsolver++") {
      at::Tensor base = (s_t / s_s0 * std::exp(-h)) * x + (a_t * (1 - std::exp(-2.0f * h))) * D0;
      at::Tensor d1 = mid ? 0.5f * (a_t * (1 - std::exp(-2.0f * h))) * D1 : (a_t * ((1.0f - std::exp(-2.0f * h)) / (-2.0f * h) + 1.0f)) * D1;
      return base + d1 + s_t * std::sqrt(1.0f - std::exp(-2 * h)) * z;
    }
    at::Tensor base = (a_t / a_s0) * x - 2.0f * (s_t * (std::exp(h) - 1.0f)) * D0;
    at::Tensor d1 = mid ? (s_t * (std::exp(h) - 1.0f)) * D1 : 2.0f * (s_t * ((std::exp(h) - 1.0f) / h - 1.0f)) * D1;
    return base - d1 + s_t * std::sqrt(std::exp(2 * h) - 1.0f) * z;
  }

  // Third order; the SDE variants have no third-order update in diffusers 0.25.1, which then takes this ODE one.
  at::Tensor third_order(int64_t i, const at::Tensor& x) const {
    float a_t, s_t, a_s0, s_s0, a_s1, s_s1, a_s2, s_s2;
    alpha_sigma(sigma(i + 1), a_t, s_t);
    alpha_sigma(sigma(i), a_s0, s_s0);
    alpha_sigma(sigma(i - 1), a_s1, s_s1);
    alpha_sigma(sigma(i - 2), a_s2, s_s2);
    const float l_t = lambda_of(a_t, s_t), l_s0 = lambda_of(a_s0, s_s0), l_s1 = lambda_of(a_s1, s_s1), l_s2 = lambda_of(a_s2, s_s2);
    const at::Tensor &m0 = outputs_[2], &m1 = outputs_[1], &m2 = outputs_[0];
    const float h = l_t - l_s0, h_0 = l_s0 - l_s1, h_1 = l_s1 - l_s2;
    const float r0 = h_0 / h, r1 = h_1 / h;
    const at::Tensor& D0 = m0;
    at::Tensor D1_0 = (1.0f / r0) * (m0 - m1), D1_1 = (1.0f / r1) * (m1 - m2);
    at::Tensor D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1);
    at::Tensor D2 = (1.0f / (r0 + r1)) * (D1_0 - D1_1);
    if (algorithm_ == "dpmsolver++" || algorithm_ == "sde-dpmsolver++")
      return (s_t / s_s0) * x - (a_t * (std::exp(-h) - 1.0f)) * D0 + (a_t * ((std::exp(-h) - 1.0f) / h + 1.0f)) * D1 -
             (a_t * ((std::exp(-h) - 1.0f + h) / (h * h) - 0.5f)) * D2;
    return (a_t / a_s0) * x - (s_t * (std::exp(h) - 1.0f)) * D0 - (s_t * ((std::exp(h) - 1.0f) / h - 1.0f)) * D1 -
           (s_t * ((std::exp(h) - 1.0f - h) / (h * h) - 0.5f)) * D2;
  }

 public:
  // α_t·x0 + σ_t·n; σ of the timestep's schedule entry (the second of repeated ones, the last if absent).
  at::Tensor add_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& ts) const override {
    if (num_inference_steps == 0) throw Error("add_noise: call set_timesteps first (dpmsolver looks σ up in its schedule)");
    at::Tensor t = ts.to(at::kCPU).to(at::kLong).reshape({-1}).contiguous();
    at::Tensor sched = timesteps.contiguous();
    const int64_t* sp = sched.data_ptr<int64_t>();
    std::vector<float> av, sv;
    for (int64_t j = 0; j < t.size(0); ++j) {
      const int64_t tj = t.data_ptr<int64_t>()[j];
      std::vector<int64_t> hits;
      for (int64_t k = 0; k < sched.size(0); ++k)
        if (sp[k] == tj) hits.push_back(k);
      const int64_t idx = hits.empty() ? sched.size(0) - 1 : hits.size() > 1 ? hits[1] : hits[0];
      float a, s;
      alpha_sigma(sigma(idx), a, s);
      av.push_back(a);
      sv.push_back(s);
    }
    return broadcast_like(float_tensor(av), x0) * x0 + broadcast_like(float_tensor(sv), x0) * noise;
  }
};

}  // namespace

std::unique_ptr<Scheduler> make_dpmsolver(const json& c) { return std::make_unique<DPMSolver>(c); }

}  // namespace rt::sd::sched
