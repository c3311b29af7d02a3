// PNDM (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models"), diffusers' PNDMScheduler:
// a Runge–Kutta warm-up (PRK, 3 steps × 4 model calls at t, t−δ/2, t−δ/2, t−δ) then linear multistep (PLMS,
// Adams–Bashforth on ε), each applied through the pseudo-numerical transfer φ of eq. (9). With skip_prk_steps the
// warm-up is replaced by PLMS's own: a second-order step that redoes the first step with the averaged ε.
// Own keys: skip_prk_steps, set_alpha_to_one.
#include <deque>

#include "models/schedulers/common.h"

namespace rt::sd::sched {
namespace {

class PNDM : public AlphaScheduler {
  bool skip_prk_;
  float final_alpha_cumprod_;
  std::vector<int64_t> prk_timesteps_;
  // Run state (diffusers: ets, counter, cur_sample, cur_model_output).
  std::deque<at::Tensor> ets_;
  at::Tensor cur_sample_, cur_model_output_;
  int64_t counter_ = 0;

 public:
  explicit PNDM(const json& c) : AlphaScheduler(c, "PNDMScheduler", {"skip_prk_steps", "set_alpha_to_one"}, "leading") {
    skip_prk_ = key<bool>(cfg_, "skip_prk_steps", false);
    final_alpha_cumprod_ = key<bool>(cfg_, "set_alpha_to_one", false) ? 1.0f : abar(0);
    if (prediction_type == "sample") refuse(cfg_, "prediction_type", "'sample' is not supported by PNDM (epsilon, v_prediction)");
  }
  std::string kind() const override { return "pndm"; }

  void compute_timesteps(int64_t n) override {
    const int64_t T = num_train_timesteps;
    // 1. The ascending base schedule of the spacing.
    std::vector<int64_t> asc;
    if (cfg_.timestep_spacing == "linspace") {
      for (double v : np_linspace(0, double(T - 1), n)) asc.push_back(static_cast<int64_t>(np_round(v)));
    } else if (cfg_.timestep_spacing == "leading") {
      for (int64_t i = 0; i < n; ++i) asc.push_back(i * (T / n) + cfg_.steps_offset);
    } else {
      asc = integer_timesteps(n);
      std::reverse(asc.begin(), asc.end());
    }
    std::vector<int64_t> all;
    prk_timesteps_.clear();
    if (skip_prk_) {
      // 2a. PLMS: N+1 entries, the second repeated (981, 961, 961, 941, ...).
      std::vector<int64_t> plms(asc.begin(), asc.end() - 1);
      if (asc.size() >= 2) plms.push_back(asc[asc.size() - 2]);
      plms.push_back(asc.back());
      all.assign(plms.rbegin(), plms.rend());
    } else {
      // 2b. PRK over the last 4 base timesteps, each with its half step: t, t+δ/2 pairs, expanded so every RK stage
      //     has its own entry (12 for n ≥ 4), descending; then PLMS over the rest of the base schedule.
      const int64_t pndm_order = 4, half = T / n / 2;
      if (n < pndm_order) throw Error("PNDM with Runge-Kutta warm-up (skip_prk_steps false) needs at least 4 steps, got " + std::to_string(n));
      std::vector<int64_t> base(asc.end() - std::min<int64_t>(pndm_order, asc.size()), asc.end()), pairs;
      for (int64_t t : base) {
        pairs.push_back(t);
        pairs.push_back(t + half);
      }
      std::vector<int64_t> rep;
      for (size_t k = 0; k + 1 < pairs.size(); ++k) {
        rep.push_back(pairs[k]);
        rep.push_back(pairs[k]);
      }
      if (rep.size() >= 2) prk_timesteps_.assign(rep.begin() + 1, rep.end() - 1);
      std::reverse(prk_timesteps_.begin(), prk_timesteps_.end());
      all = prk_timesteps_;
      for (int64_t k = static_cast<int64_t>(asc.size()) - 4; k >= 0; --k) all.push_back(asc[k]);
    }
    timesteps = int_tensor(all);
  }
  void reset_run() override {
    ets_.clear();
    cur_sample_ = at::Tensor();
    cur_model_output_ = at::Tensor();
    counter_ = 0;
  }

  StepResult step(const at::Tensor& out, int64_t i, const at::Tensor& sample, const at::Tensor&, at::Generator*) override {
    check_index(i, "PNDM step");
    check_order(i, "PNDM step");
    StepResult r;
    if (!skip_prk_ && counter_ < static_cast<int64_t>(prk_timesteps_.size())) r.prev_sample = step_prk(out, timestep_at(i), sample);
    else r.prev_sample = step_plms(out, timestep_at(i), sample);
    counter_ += 1;
    return r;
  }

 private:
  // Runge–Kutta stage `counter % 4` (eq. 13 of the paper): ε' = (e1 + 2e2 + 2e3 + e4)/6 applied from the stage's
  // start sample at its start timestep.
  at::Tensor step_prk(const at::Tensor& out, int64_t t_in, const at::Tensor& sample) {
    const int64_t diff_to_prev = counter_ % 2 ? 0 : num_train_timesteps / num_inference_steps / 2;
    const int64_t prev = t_in - diff_to_prev;
    const int64_t t = prk_timesteps_[counter_ / 4 * 4];
    at::Tensor eps = out;
    const int64_t stage = counter_ % 4;
    if (stage == 0) {
      cur_model_output_ = (1.0 / 6) * out;
      ets_.push_back(out);
      cur_sample_ = sample;
    } else if (stage == 1 || stage == 2) {
      cur_model_output_ = cur_model_output_ + (1.0 / 3) * out;
    } else {
      eps = cur_model_output_ + (1.0 / 6) * out;
      cur_model_output_ = at::Tensor();
    }
    return prev_sample(cur_sample_.defined() ? cur_sample_ : sample, t, prev, eps);
  }

  // Linear multistep (eq. 12): Adams–Bashforth weights of orders 1–4 over the stored ε.
  at::Tensor step_plms(const at::Tensor& out, int64_t t_in, const at::Tensor& sample_in) {
    if (!skip_prk_ && ets_.size() < 3)
      throw Error("PNDM step: PLMS steps need the 12 Runge-Kutta warm-up steps first (skip_prk_steps is false)");
    int64_t t = t_in, prev = t_in - num_train_timesteps / num_inference_steps;
    at::Tensor sample = sample_in, eps;
    if (counter_ != 1) {
      while (ets_.size() > 3) ets_.pop_front();
      ets_.push_back(out);
    } else {
      // The repeated timestep: redo the first step from its start with the averaged ε.
      prev = t_in;
      t = t_in + num_train_timesteps / num_inference_steps;
    }
    const size_t n = ets_.size();
    if (n == 1 && counter_ == 0) {
      eps = out;
      cur_sample_ = sample;
    } else if (n == 1 && counter_ == 1) {
      eps = (out + ets_.back()) / 2;
      sample = cur_sample_;
      cur_sample_ = at::Tensor();
    } else if (n == 2) {
      eps = (3 * ets_[n - 1] - ets_[n - 2]) / 2;
    } else if (n == 3) {
      eps = (23 * ets_[n - 1] - 16 * ets_[n - 2] + 5 * ets_[n - 3]) / 12;
    } else {
      eps = (1.0 / 24) * (55 * ets_[n - 1] - 59 * ets_[n - 2] + 37 * ets_[n - 3] - 9 * ets_[n - 4]);
    }
    return prev_sample(sample, t, prev, eps);
  }

  // The transfer φ of eq. (9): x_prev = sqrt(ᾱ_prev/ᾱ_t)·x − (ᾱ_prev−ᾱ_t)·ε / (ᾱ_t·sqrt(1−ᾱ_prev) + sqrt(ᾱ_t(1−ᾱ_t)ᾱ_prev)).
  at::Tensor prev_sample(const at::Tensor& sample, int64_t t, int64_t prev, at::Tensor eps) const {
    const float a_t = abar(t), a_prev = prev >= 0 ? abar(prev) : final_alpha_cumprod_;
    const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    if (prediction_type == "v_prediction") eps = std::sqrt(a_t) * eps + std::sqrt(b_t) * sample;
    const float sample_coeff = std::sqrt(a_prev / a_t);
    const float denom = a_t * std::sqrt(b_prev) + std::sqrt(a_t * b_t * a_prev);
    return sample_coeff * sample - (a_prev - a_t) * eps / denom;
  }
};

}  // namespace

std::unique_ptr<Scheduler> make_pndm(const json& c) { return std::make_unique<PNDM>(c); }

}  // namespace rt::sd::sched
