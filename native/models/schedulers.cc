// Noise schedulers (see schedulers.h). Each step follows diffusers 0.25.1 operation by operation, with the scalar
// coefficients computed in float32 as diffusers does on its float32 0-d tensors, so rollouts match closely.
// Papers: DDPM (Ho et al. 2020), DDIM (Song et al. 2021), PNDM (Liu et al. 2022), EDM/Euler (Karras et al.
// 2022), LMS (k-diffusion), DPM-Solver++ (Lu et al. 2022).
#include "models/schedulers.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <deque>


namespace rt::sd {

namespace {

// numpy.linspace(start, stop, num) in float64: k·((stop-start)/(num-1)) + start, last entry = stop.
std::vector<double> np_linspace(double start, double stop, int64_t num) {
  std::vector<double> y(num);
  if (num == 1) return {start};
  const double step = (stop - start) / static_cast<double>(num - 1);
  for (int64_t k = 0; k < num; ++k) y[k] = static_cast<double>(k) * step + start;
  y[num - 1] = stop;
  return y;
}
// numpy.round: half to even.
double np_round(double x) { return std::nearbyint(x); }

at::Tensor int_tensor(const std::vector<int64_t>& v) { return torch::tensor(v, torch::kInt64); }
at::Tensor float_tensor(const std::vector<float>& v) { return torch::tensor(v, torch::kFloat32); }

struct Config {
  int64_t num_train_timesteps;
  double beta_start, beta_end;
  std::string beta_schedule, timestep_spacing, prediction_type;
  int64_t steps_offset;
  bool set_alpha_to_one, clip_sample;
  double clip_sample_range;
  json trained_betas;
};

Config read_config(const json& c, const std::string& default_spacing) {
  if (!c.is_object()) throw Error("scheduler config: expected a JSON object (scheduler_config.json)");
  Config cfg;
  cfg.num_train_timesteps = opt<int64_t>(c, "num_train_timesteps", 1000);
  cfg.beta_start = opt<double>(c, "beta_start", 0.0001);
  cfg.beta_end = opt<double>(c, "beta_end", 0.02);
  cfg.beta_schedule = opt<std::string>(c, "beta_schedule", "linear");
  cfg.timestep_spacing = opt<std::string>(c, "timestep_spacing", default_spacing);
  cfg.prediction_type = opt<std::string>(c, "prediction_type", "epsilon");
  cfg.steps_offset = opt<int64_t>(c, "steps_offset", 0);
  cfg.set_alpha_to_one = opt<bool>(c, "set_alpha_to_one", true);
  cfg.clip_sample = opt<bool>(c, "clip_sample", true);
  cfg.clip_sample_range = opt<double>(c, "clip_sample_range", 1.0);
  cfg.trained_betas = c.contains("trained_betas") ? c["trained_betas"] : json();
  if (opt<bool>(c, "thresholding", false)) throw Error("scheduler config: 'thresholding' true is not supported");
  if (opt<bool>(c, "rescale_betas_zero_snr", false)) throw Error("scheduler config: 'rescale_betas_zero_snr' true is not supported");
  if (opt<bool>(c, "use_karras_sigmas", false)) throw Error("scheduler config: 'use_karras_sigmas' true is not supported");
  if (cfg.num_train_timesteps < 2) throw Error("scheduler config: 'num_train_timesteps' must be at least 2");
  for (const char* p : {"epsilon", "v_prediction", "sample"})
    if (cfg.prediction_type == p) return cfg;
  throw Error("scheduler config: 'prediction_type' must be epsilon, v_prediction or sample, got '" + cfg.prediction_type + "'");
}

// β schedule and ᾱ (DDPM eq. 4 notation: ᾱ_t = Π(1-β_s)), in float32 as diffusers builds them.
void make_tables(const Config& cfg, at::Tensor& betas, at::Tensor& alphas_cumprod) {
  const int64_t T = cfg.num_train_timesteps;
  if (cfg.trained_betas.is_array()) {
    std::vector<float> b;
    for (auto& v : cfg.trained_betas) b.push_back(v.get<float>());
    if (static_cast<int64_t>(b.size()) != T) throw Error("scheduler config: 'trained_betas' must have num_train_timesteps entries");
    betas = float_tensor(b);
  } else if (cfg.beta_schedule == "linear") {
    betas = at::linspace(cfg.beta_start, cfg.beta_end, T, at::kFloat);
  } else if (cfg.beta_schedule == "scaled_linear") {
    // LDM's schedule: linear in sqrt(β), then squared.
    betas = at::linspace(std::sqrt(cfg.beta_start), std::sqrt(cfg.beta_end), T, at::kFloat).pow(2);
  } else if (cfg.beta_schedule == "squaredcos_cap_v2") {
    // Glide cosine schedule (Nichol & Dhariwal 2021, eq. 17), max β 0.999; computed in float64 like diffusers.
    std::vector<float> b(T);
    auto abar = [](double t) { return std::pow(std::cos((t + 0.008) / 1.008 * M_PI / 2), 2); };
    for (int64_t i = 0; i < T; ++i) b[i] = static_cast<float>(std::min(1 - abar(double(i + 1) / T) / abar(double(i) / T), 0.999));
    betas = float_tensor(b);
  } else {
    throw Error("scheduler config: unsupported 'beta_schedule' '" + cfg.beta_schedule + "' (linear, scaled_linear, squaredcos_cap_v2)");
  }
  alphas_cumprod = at::cumprod(1.0 - betas, 0);
}

// "leading" / "linspace" / "trailing" integer timesteps, descending, as DDPM/DDIM use them.
std::vector<int64_t> integer_timesteps(const Config& cfg, int64_t n) {
  const int64_t T = cfg.num_train_timesteps;
  std::vector<int64_t> ts;
  if (cfg.timestep_spacing == "leading") {
    const int64_t ratio = T / n;
    for (int64_t i = n - 1; i >= 0; --i) ts.push_back(i * ratio + cfg.steps_offset);
  } else if (cfg.timestep_spacing == "linspace") {
    auto l = np_linspace(0, double(T - 1), n);
    for (int64_t i = n - 1; i >= 0; --i) ts.push_back(static_cast<int64_t>(np_round(l[i])));
  } else if (cfg.timestep_spacing == "trailing") {
    const double ratio = double(T) / double(n);
    for (int64_t i = 0; double(T) - i * ratio > 0; ++i) ts.push_back(static_cast<int64_t>(np_round(double(T) - i * ratio)) - 1);
  } else {
    throw Error("scheduler config: 'timestep_spacing' must be leading, linspace or trailing, got '" + cfg.timestep_spacing + "'");
  }
  return ts;
}

void check_steps(int64_t n, int64_t T) {
  if (n < 1 || n > T)
    throw Error("num_inference_steps must be between 1 and num_train_timesteps (" + std::to_string(T) + "), got " + std::to_string(n));
}

// sqrt((1-ᾱ)/ᾱ) over the float32 table (the k-diffusion σ of each training timestep).
std::vector<float> sigma_table(const at::Tensor& ac) {
  at::Tensor s = ((1 - ac) / ac).pow(0.5).contiguous();
  return std::vector<float>(s.data_ptr<float>(), s.data_ptr<float>() + s.numel());
}

// numpy.interp(x, arange(len(fp)), fp) in float64.
double interp(double x, const std::vector<float>& fp) {
  const int64_t n = fp.size();
  if (x <= 0) return fp[0];
  if (x >= n - 1) return fp[n - 1];
  const int64_t j = static_cast<int64_t>(std::floor(x));
  const double slope = (double(fp[j + 1]) - double(fp[j])) / 1.0;
  return slope * (x - double(j)) + double(fp[j]);
}

// ε, x0 and the model output under the configured prediction type, from ᾱ_t.
struct Pred {
  at::Tensor x0, eps;
};
Pred predict(const std::string& type, const at::Tensor& out, const at::Tensor& sample, float a_t, bool need_eps) {
  const float b_t = 1.0f - a_t;
  Pred p;
  if (type == "epsilon") {
    p.x0 = (sample - std::sqrt(b_t) * out) / std::sqrt(a_t);
    if (need_eps) p.eps = out;
  } else if (type == "v_prediction") {
    p.x0 = std::sqrt(a_t) * sample - std::sqrt(b_t) * out;
    if (need_eps) p.eps = std::sqrt(a_t) * out + std::sqrt(b_t) * sample;
  } else {
    p.x0 = out;
    if (need_eps) p.eps = (sample - std::sqrt(a_t) * p.x0) / std::sqrt(b_t);
  }
  return p;
}

// v: [B] -> [B, 1, ...] on x's device and dtype, for per-sample coefficients.
at::Tensor broadcast_like(const at::Tensor& v, const at::Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = v.numel();
  if (x.dim() == 0 || (v.numel() != x.size(0) && v.numel() != 1))
    throw Error("timesteps hold " + std::to_string(v.numel()) + " values for a batch of " + (x.dim() ? std::to_string(x.size(0)) : "0"));
  return v.reshape(shape).to(x.device(), x.scalar_type());
}

at::Tensor draw_noise(const at::Tensor& like, const at::Tensor& given, at::Generator* gen, const char* who) {
  if (given.defined()) {
    if (given.sizes() != like.sizes())
      throw Error(std::string(who) + ": noise is " + shape_str(given.sizes()) + ", expected the sample's shape " + shape_str(like.sizes()));
    return given.to(like.device(), like.scalar_type());
  }
  // Drawn on the CPU from the seeded generator, so a seed gives the same images on every device.
  at::Tensor n = gen ? at::randn(like.sizes(), *gen, at::TensorOptions().dtype(at::kFloat)) : at::randn(like.sizes(), at::kFloat);
  return n.to(like.device(), like.scalar_type());
}

// ---------------------------------------------------------------------------------------------------------
// Timestep-indexed schedulers (ᾱ lookup by integer t).
class AlphaScheduler : public Scheduler {
 protected:
  Config cfg_;
  float final_alpha_cumprod_ = 1.0f;

 public:
  AlphaScheduler(const json& c, const std::string& default_spacing) : cfg_(read_config(c, default_spacing)) {
    make_tables(cfg_, betas, alphas_cumprod);
    num_train_timesteps = cfg_.num_train_timesteps;
    prediction_type = cfg_.prediction_type;
    // DDIM/PNDM: ᾱ used past the last step; 1 or ᾱ_0 (SD sets set_alpha_to_one false).
    final_alpha_cumprod_ = cfg_.set_alpha_to_one ? 1.0f : abar(0);
  }
  int64_t timestep_at(int64_t i) const { return timesteps[i].item<int64_t>(); }
  int64_t stride() const { return num_train_timesteps / num_inference_steps; }
  void check_index(int64_t i, const char* who) const {
    if (num_inference_steps == 0) throw Error(std::string(who) + ": call set_timesteps first");
    if (i < 0 || i >= timesteps.size(0))
      throw Error(std::string(who) + ": step index " + std::to_string(i) + " is outside the schedule of " + std::to_string(timesteps.size(0)) + " steps");
  }
};

// DDPM (Ho et al. 2020). Step = posterior mean, eq. (7), with x0 from eq. (15), plus sqrt(variance)·z.
class DDPM : public AlphaScheduler {
  std::string variance_type_;

 public:
  explicit DDPM(const json& c) : AlphaScheduler(c, "leading") {
    variance_type_ = opt<std::string>(c, "variance_type", "fixed_small");
    if (variance_type_ != "fixed_small" && variance_type_ != "fixed_large")
      throw Error("scheduler config: DDPM 'variance_type' '" + variance_type_ + "' is not supported (fixed_small, fixed_large)");
  }
  std::string kind() const override { return "ddpm"; }
  void set_timesteps(int64_t n) override {
    check_steps(n, num_train_timesteps);
    num_inference_steps = n;
    timesteps = int_tensor(integer_timesteps(cfg_, n));
  }
  // β̃ of eq. (7) over the inference stride: (1-ᾱ_prev)/(1-ᾱ_t)·(1-ᾱ_t/ᾱ_prev), clamped at 1e-20.
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
    // 1. ᾱ_t, ᾱ_{t-1} (1 past the end: DDPM always finishes at a clean sample), β over the stride.
    const float a_t = abar(t), a_prev = prev >= 0 ? abar(prev) : 1.0f;
    const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    const float cur_alpha = a_t / a_prev, cur_beta = 1.0f - cur_alpha;
    // 2. x0 from the model output, eq. (15).
    StepResult r;
    r.pred_original_sample = predict(prediction_type, out, sample, a_t, false).x0;
    if (cfg_.clip_sample) r.pred_original_sample = r.pred_original_sample.clamp(-cfg_.clip_sample_range, cfg_.clip_sample_range);
    // 3. Posterior mean coefficients, eq. (7).
    const float c0 = std::sqrt(a_prev) * cur_beta / b_t;
    const float c1 = std::sqrt(cur_alpha) * b_prev / b_t;
    r.prev_sample = c0 * r.pred_original_sample + c1 * sample;
    // 4. Noise whenever t > 0 (even when the variance is clamped to 1e-20 at the last step).
    r.variance = variance(t);
    if (t > 0) {
      r.noise = draw_noise(sample, noise, gen, "DDPM step");
      r.noise_drawn = true;
      r.prev_sample = r.prev_sample + std::sqrt(static_cast<float>(r.variance)) * r.noise;
    }
    return r;
  }
};

// DDIM (Song et al. 2021), eq. (12): x_prev = sqrt(ᾱ_prev)·x0 + sqrt(1-ᾱ_prev-σ²)·ε + σ·z, σ from eq. (16)·eta.
class DDIM : public AlphaScheduler {
 public:
  double eta = 0.0;
  // eta is a step() argument in diffusers; here an optional config key (default 0, the SD pipeline's value).
  explicit DDIM(const json& c) : AlphaScheduler(c, "leading") { eta = opt<double>(c, "eta", 0.0); }
  std::string kind() const override { return "ddim"; }
  void set_timesteps(int64_t n) override {
    check_steps(n, num_train_timesteps);
    num_inference_steps = n;
    timesteps = int_tensor(integer_timesteps(cfg_, n));
  }
  StepResult step(const at::Tensor& out, int64_t i, const at::Tensor& sample, const at::Tensor& noise, at::Generator* gen) override {
    check_index(i, "DDIM step");
    const int64_t t = timestep_at(i), prev = t - stride();
    // 1-2. ᾱ_t and ᾱ_prev (final_alpha_cumprod past the end).
    const float a_t = abar(t), a_prev = prev >= 0 ? abar(prev) : final_alpha_cumprod_;
    const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    // 3. "predicted x0" of eq. (12).
    Pred p = predict(prediction_type, out, sample, a_t, true);
    StepResult r;
    r.pred_original_sample = p.x0;
    if (cfg_.clip_sample) {
      r.pred_original_sample = p.x0.clamp(-cfg_.clip_sample_range, cfg_.clip_sample_range);
      p.eps = (sample - std::sqrt(a_t) * r.pred_original_sample) / std::sqrt(b_t);
    }
    // 4-5. σ_t(η), eq. (16).
    const float var = (b_prev / b_t) * (1.0f - a_t / a_prev);
    const float std_dev = static_cast<float>(eta) * std::sqrt(var);
    // 6. "direction pointing to x_t" of eq. (12).
    at::Tensor direction = std::sqrt(1.0f - a_prev - std_dev * std_dev) * p.eps;
    // 7. x_{t-1} without noise, eq. (12).
    r.prev_sample = std::sqrt(a_prev) * r.pred_original_sample + direction;
    if (eta > 0) {
      r.noise = draw_noise(sample, noise, gen, "DDIM step");
      r.noise_drawn = true;
      r.prev_sample = r.prev_sample + std_dev * r.noise;
    }
    return r;
  }
};

// PNDM with skip_prk_steps (PLMS): linear multistep on ε with the pseudo-numerical step, eq. (9) of the paper.
class PNDM : public AlphaScheduler {
  std::deque<at::Tensor> ets_;
  at::Tensor cur_sample_;
  int64_t counter_ = 0;

 public:
  explicit PNDM(const json& c) : AlphaScheduler(c, "leading") {
    if (!opt<bool>(c, "skip_prk_steps", false))
      throw Error("scheduler config: PNDM with Runge-Kutta warm-up steps (skip_prk_steps false) is not supported; SD uses PLMS");
  }
  std::string kind() const override { return "pndm"; }
  void set_timesteps(int64_t n) override {
    check_steps(n, num_train_timesteps);
    num_inference_steps = n;
    std::vector<int64_t> asc;  // ascending base schedule
    const int64_t T = num_train_timesteps;
    if (cfg_.timestep_spacing == "leading") {
      for (int64_t i = 0; i < n; ++i) asc.push_back(i * (T / n) + cfg_.steps_offset);
    } else if (cfg_.timestep_spacing == "linspace") {
      for (double v : np_linspace(0, double(T - 1), n)) asc.push_back(static_cast<int64_t>(np_round(v)));
    } else {
      asc = integer_timesteps(cfg_, n);
      std::reverse(asc.begin(), asc.end());
    }
    // PLMS timesteps: N+1 entries, the second repeated (981, 961, 961, 941, ...).
    std::vector<int64_t> plms(asc.begin(), asc.end() - 1);
    if (asc.size() >= 2) plms.push_back(asc[asc.size() - 2]);
    plms.push_back(asc.back());
    std::reverse(plms.begin(), plms.end());
    timesteps = int_tensor(plms);
    ets_.clear();
    cur_sample_ = at::Tensor();
    counter_ = 0;
    expected_step_ = 0;
  }
  StepResult step(const at::Tensor& out, int64_t i, const at::Tensor& sample_in, const at::Tensor&, at::Generator*) override {
    check_index(i, "PNDM step");
    check_order(i, "PNDM step");
    if (i == 0) {  // a new run: drop the history of any earlier one
      ets_.clear();
      cur_sample_ = at::Tensor();
      counter_ = 0;
    }
    int64_t t = timestep_at(i);
    int64_t prev = t - stride();
    at::Tensor sample = sample_in, eps;
    if (counter_ != 1) {
      while (ets_.size() > 3) ets_.pop_front();
      ets_.push_back(out);
    } else {
      // The repeated timestep: redo the first step from its start with the averaged ε (Heun-like warm-up).
      prev = t;
      t = t + stride();
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
      // Adams-Bashforth weights, orders 2-4.
      eps = (3 * ets_[n - 1] - ets_[n - 2]) / 2;
    } else if (n == 3) {
      eps = (23 * ets_[n - 1] - 16 * ets_[n - 2] + 5 * ets_[n - 3]) / 12;
    } else {
      eps = (1.0 / 24) * (55 * ets_[n - 1] - 59 * ets_[n - 2] + 37 * ets_[n - 3] - 9 * ets_[n - 4]);
    }
    StepResult r;
    r.prev_sample = prev_sample(sample, t, prev, eps);
    counter_ += 1;
    return r;
  }
  // Formula (9): x_prev = sqrt(ᾱ_prev/ᾱ_t)·x - (ᾱ_prev-ᾱ_t)·ε / (ᾱ_t·sqrt(1-ᾱ_prev) + sqrt(ᾱ_t(1-ᾱ_t)ᾱ_prev)).
  at::Tensor prev_sample(const at::Tensor& sample, int64_t t, int64_t prev, at::Tensor eps) const {
    const float a_t = abar(t), a_prev = prev >= 0 ? abar(prev) : final_alpha_cumprod_;
    const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    if (prediction_type == "v_prediction") eps = std::sqrt(a_t) * eps + std::sqrt(b_t) * sample;
    else if (prediction_type != "epsilon") throw Error("PNDM supports prediction_type epsilon or v_prediction only");
    const float sample_coeff = std::sqrt(a_prev / a_t);
    const float denom = a_t * std::sqrt(b_prev) + std::sqrt(a_t * b_t * a_prev);
    return sample_coeff * sample - (a_prev - a_t) * eps / denom;
  }
};

// Sigma-parameterised schedulers (Karras et al. 2022): x_t = x0 + σ_t·ε; σ interpolated over the training table.
class SigmaScheduler : public AlphaScheduler {
 protected:
  std::vector<float> table_;  // sqrt((1-ᾱ)/ᾱ) per training timestep
  int64_t step_index_ = 0;

 public:
  explicit SigmaScheduler(const json& c) : AlphaScheduler(c, "linspace") { table_ = sigma_table(alphas_cumprod); }
  float sigma(int64_t i) const { return sigmas.data_ptr<float>()[i]; }
  // Float timesteps, descending; `f32_interp`: Euler interpolates at float32-rounded timesteps, LMS at float64.
  void make_sigma_schedule(int64_t n, bool f32_interp) {
    check_steps(n, num_train_timesteps);
    num_inference_steps = n;
    const int64_t T = num_train_timesteps;
    std::vector<double> ts;
    if (cfg_.timestep_spacing == "linspace") {
      auto l = np_linspace(0, double(T - 1), n);
      ts.assign(l.rbegin(), l.rend());
    } else if (cfg_.timestep_spacing == "leading") {
      for (int64_t i = n - 1; i >= 0; --i) ts.push_back(double(i * (T / n) + cfg_.steps_offset));
    } else if (cfg_.timestep_spacing == "trailing") {
      const double ratio = double(T) / double(n);
      for (int64_t i = 0; double(T) - i * ratio > 0; ++i) ts.push_back(np_round(double(T) - i * ratio) - 1);
    } else {
      throw Error("scheduler config: 'timestep_spacing' must be leading, linspace or trailing, got '" + cfg_.timestep_spacing + "'");
    }
    std::vector<float> tf, sg;
    for (double t : ts) {
      tf.push_back(static_cast<float>(t));
      sg.push_back(static_cast<float>(interp(f32_interp ? double(static_cast<float>(t)) : t, table_)));
    }
    sg.push_back(0.0f);
    timesteps = float_tensor(tf);
    sigmas = float_tensor(sg);
    float mx = *std::max_element(sg.begin(), sg.end());
    // linspace/trailing start at pure noise of scale σ_max; leading includes the +1 of the variance-preserving x.
    init_noise_sigma = (cfg_.timestep_spacing == "linspace" || cfg_.timestep_spacing == "trailing") ? mx : std::sqrt(mx * mx + 1.0f);
    step_index_ = 0;
    expected_step_ = 0;
  }
  at::Tensor scale_model_input(const at::Tensor& sample, int64_t i) override {
    check_index(i, "scale_model_input");
    const float s = sigma(i);
    // c_in of the EDM preconditioning: the UNet was trained on variance-preserving inputs.
    return sample / std::sqrt(s * s + 1.0f);
  }
  at::Tensor x0_from(const at::Tensor& out, const at::Tensor& sample, float s) const {
    if (prediction_type == "epsilon") return sample - s * out;
    if (prediction_type == "v_prediction") return out * (-s / std::sqrt(s * s + 1.0f)) + sample / (s * s + 1.0f);
    return out;
  }
  // Euler/LMS: x_t = x0 + σ_t·n, σ looked up in the current schedule.
  at::Tensor add_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& ts) const override {
    at::Tensor t = ts.to(at::kCPU).to(at::kDouble).reshape({-1});
    std::vector<float> v;
    for (int64_t j = 0; j < t.size(0); ++j) v.push_back(sigma(index_of_timestep(t[j].item<double>())));
    at::Tensor s = broadcast_like(float_tensor(v), x0);
    return x0 + noise * s;
  }
  int64_t index_of_timestep(double t) const {
    at::Tensor ts = timesteps.to(at::kDouble);
    auto acc = ts.accessor<double, 1>();
    for (int64_t i = 0; i < acc.size(0); ++i)
      if (static_cast<float>(acc[i]) == static_cast<float>(t)) return i;
    throw Error("add_noise: timestep " + std::to_string(t) + " is not in the current " + kind() + " schedule");
  }
};

// Euler (Karras et al. 2022, Algorithm 2 with s_churn 0): x_next = x + (x - x0)/σ · (σ_next - σ).
class Euler : public SigmaScheduler {
 public:
  explicit Euler(const json& c) : SigmaScheduler(c) {}
  std::string kind() const override { return "euler"; }
  void set_timesteps(int64_t n) override { make_sigma_schedule(n, true); }
  StepResult step(const at::Tensor& out, int64_t i, const at::Tensor& sample, const at::Tensor&, at::Generator*) override {
    check_index(i, "Euler step");
    const float s = sigma(i);  // σ̂ = σ·(γ+1) with γ = 0
    StepResult r;
    r.pred_original_sample = x0_from(out, sample, s);
    at::Tensor derivative = (sample - r.pred_original_sample) / s;  // dx/dσ, Algorithm 2 line 7
    const float dt = sigma(i + 1) - s;
    r.prev_sample = sample + derivative * dt;
    return r;
  }
};

// QUADPACK's 21-point Gauss-Kronrod rule, which SciPy's quad applies first; for the cubic Lagrange basis of LMS
// it is exact, so quad returns this first estimate.
template <typename F>
double gauss_kronrod_21(F f, double a, double b) {
  static const double xgk[11] = {0.995657163025808080735527280689003, 0.973906528517171720077964012084452, 0.930157491355708226001207180059508,
                                 0.865063366688984510732096688423493, 0.780817726586416897063717578345042, 0.679409568299024406234327365114874,
                                 0.562757134668604683339000099272694, 0.433395394129247190799265943165784, 0.294392862701460198131126603103866,
                                 0.148874338981631210884826001129720, 0.0};
  static const double wgk[11] = {0.011694638867371874278064396062192, 0.032558162307964727478818972459390, 0.054755896574351996031381300244580,
                                 0.075039674810919952767043140916190, 0.093125454583697605535065465083366, 0.109387158802297641899210590325805,
                                 0.123491976262065851077600525806700, 0.134709217311473325928054001771707, 0.142775938577060080797094273138717,
                                 0.147739104901338491374841515972068, 0.149445554002916905664936468389821};
  const double centr = 0.5 * (a + b), hlgth = 0.5 * (b - a);
  double resk = wgk[10] * f(centr);
  for (int j = 1; j <= 5; ++j) {  // Gauss nodes first, as dqk21 orders its sums
    const int jtw = 2 * j - 1;
    const double absc = hlgth * xgk[jtw];
    resk += wgk[jtw] * (f(centr - absc) + f(centr + absc));
  }
  for (int j = 1; j <= 5; ++j) {
    const int jtwm1 = 2 * j - 2;
    const double absc = hlgth * xgk[jtwm1];
    resk += wgk[jtwm1] * (f(centr - absc) + f(centr + absc));
  }
  return resk * hlgth;
}

// Adaptive Simpson refinement is not needed: the integrand is a polynomial of degree < order ≤ 4.
// LMS (k-diffusion's linear multistep): x_next = x + Σ_k c_k·d_{i-k}, c_k = ∫_{σ_i}^{σ_{i+1}} ℓ_k(τ) dτ.
class LMS : public SigmaScheduler {
  std::deque<at::Tensor> derivatives_;

 public:
  int64_t order = 4;
  explicit LMS(const json& c) : SigmaScheduler(c) { order = opt<int64_t>(c, "order", 4); }
  std::string kind() const override { return "lms"; }
  void set_timesteps(int64_t n) override {
    make_sigma_schedule(n, false);
    derivatives_.clear();
  }
  double coefficient(int64_t ord, int64_t t, int64_t cur) const {
    // Lagrange basis ℓ_cur over σ_t, σ_{t-1}, ...; evaluated in float32 like diffusers' tensor arithmetic.
    auto basis = [&](double tau) {
      const float tf = static_cast<float>(tau);
      float prod = 1.0f;
      for (int64_t k = 0; k < ord; ++k) {
        if (k == cur) continue;
        prod = prod * ((tf - sigma(t - k)) / (sigma(t - cur) - sigma(t - k)));
      }
      return static_cast<double>(prod);
    };
    return gauss_kronrod_21(basis, sigma(t), sigma(t + 1));
  }
  StepResult step(const at::Tensor& out, int64_t i, const at::Tensor& sample, const at::Tensor&, at::Generator*) override {
    check_index(i, "LMS step");
    check_order(i, "LMS step");
    if (i == 0) derivatives_.clear();
    const float s = sigma(i);
    StepResult r;
    // 1. x0 and the ODE derivative d = (x - x0)/σ.
    r.pred_original_sample = x0_from(out, sample, s);
    derivatives_.push_back((sample - r.pred_original_sample) / s);
    while (static_cast<int64_t>(derivatives_.size()) > order) derivatives_.pop_front();
    // 2. Coefficients for the available history (order grows 1..4 over the first steps).
    const int64_t ord = std::min(i + 1, order);
    at::Tensor acc;
    for (int64_t k = 0; k < ord; ++k) {
      at::Tensor term = coefficient(ord, i, k) * derivatives_[derivatives_.size() - 1 - k];
      acc = acc.defined() ? acc + term : term;
    }
    r.prev_sample = sample + acc;
    return r;
  }
};

// DPM-Solver++ multistep (Lu et al. 2022, Algorithm 2), order 2, midpoint; data prediction x0 in λ = log(α/σ).
class DPMSolver : public SigmaScheduler {
  std::vector<at::Tensor> outputs_;
  int64_t lower_order_nums_ = 0;
  int64_t solver_order_;
  bool lower_order_final_, euler_at_final_;

 public:
  explicit DPMSolver(const json& c) : SigmaScheduler(c) {
    solver_order_ = opt<int64_t>(c, "solver_order", 2);
    lower_order_final_ = opt<bool>(c, "lower_order_final", true);
    euler_at_final_ = opt<bool>(c, "euler_at_final", false);
    const std::string algo = opt<std::string>(c, "algorithm_type", "dpmsolver++");
    const std::string solver = opt<std::string>(c, "solver_type", "midpoint");
    if (algo != "dpmsolver++") throw Error("scheduler config: DPM-Solver 'algorithm_type' '" + algo + "' is not supported (dpmsolver++)");
    if (solver != "midpoint") throw Error("scheduler config: DPM-Solver 'solver_type' '" + solver + "' is not supported (midpoint)");
    if (solver_order_ < 1 || solver_order_ > 2) throw Error("scheduler config: DPM-Solver 'solver_order' must be 1 or 2");
    // -Infinity (diffusers' default) arrives as null through JSON; only that value is supported.
    auto lm = c.find("lambda_min_clipped");
    if (lm != c.end() && lm->is_number() && std::isfinite(lm->get<double>()))
      throw Error("scheduler config: a finite 'lambda_min_clipped' is not supported");
  }
  std::string kind() const override { return "dpmsolver"; }
  void set_timesteps(int64_t n) override {
    check_steps(n, num_train_timesteps);
    num_inference_steps = n;
    const int64_t T = num_train_timesteps;
    std::vector<int64_t> ts;
    if (cfg_.timestep_spacing == "linspace") {
      // N+1 points, rounded, reversed, the last (0) dropped: 999, 979, ..., 20.
      auto l = np_linspace(0, double(T - 1), n + 1);
      for (int64_t i = n; i >= 1; --i) ts.push_back(static_cast<int64_t>(np_round(l[i])));
    } else if (cfg_.timestep_spacing == "leading") {
      const int64_t ratio = T / (n + 1);
      for (int64_t i = n; i >= 1; --i) ts.push_back(i * ratio + cfg_.steps_offset);
    } else if (cfg_.timestep_spacing == "trailing") {
      const double ratio = double(T) / double(n);
      for (int64_t i = 0; double(T) - i * ratio > 0; ++i) ts.push_back(static_cast<int64_t>(np_round(double(T) - i * ratio)) - 1);
    } else {
      throw Error("scheduler config: 'timestep_spacing' must be leading, linspace or trailing, got '" + cfg_.timestep_spacing + "'");
    }
    std::vector<float> sg;
    for (int64_t t : ts) sg.push_back(static_cast<float>(interp(double(t), table_)));
    // The final σ is σ(t=0) ≈ 0.029, not 0: the solver ends at ᾱ_0 (final_sigmas_type "sigma_min").
    const float a0 = abar(0);
    sg.push_back(std::sqrt((1.0f - a0) / a0));
    timesteps = int_tensor(ts);
    sigmas = float_tensor(sg);
    init_noise_sigma = 1.0;
    outputs_.assign(solver_order_, at::Tensor());
    lower_order_nums_ = 0;
    expected_step_ = 0;
  }
  at::Tensor scale_model_input(const at::Tensor& sample, int64_t) override { return sample; }
  // α_t = 1/sqrt(σ²+1), σ_t = σ·α_t (VP from the k-diffusion σ).
  static void alpha_sigma(float s, float& alpha, float& sig) {
    alpha = 1.0f / std::sqrt(s * s + 1.0f);
    sig = s * alpha;
  }
  StepResult step(const at::Tensor& out, int64_t i, const at::Tensor& sample, const at::Tensor&, at::Generator*) override {
    check_index(i, "DPM-Solver step");
    check_order(i, "DPM-Solver step");
    if (i == 0) {
      outputs_.assign(solver_order_, at::Tensor());
      lower_order_nums_ = 0;
    }
    const int64_t n = timesteps.size(0);
    const bool lower_final = (i == n - 1) && (euler_at_final_ || (lower_order_final_ && n < 15));
    // Convert the model output to the data prediction x0 (DPM-Solver++ works on x0).
    float a_s, s_s;
    alpha_sigma(sigma(i), a_s, s_s);
    at::Tensor x0;
    if (prediction_type == "epsilon") x0 = (sample - s_s * out) / a_s;
    else if (prediction_type == "v_prediction") x0 = a_s * sample - s_s * out;
    else x0 = out;
    for (int64_t k = 0; k + 1 < solver_order_; ++k) outputs_[k] = outputs_[k + 1];
    outputs_.back() = x0;

    float a_t, s_t;
    alpha_sigma(sigma(i + 1), a_t, s_t);
    const float lambda_t = std::log(a_t) - std::log(s_t), lambda_s0 = std::log(a_s) - std::log(s_s);
    const float h = lambda_t - lambda_s0;
    const float coef = a_t * (std::exp(-h) - 1.0f);
    StepResult r;
    if (solver_order_ == 1 || lower_order_nums_ < 1 || lower_final) {
      // First order (DPM-Solver++ 1, = DDIM): x_t = (σ_t/σ_s)·x - α_t(e^{-h}-1)·x0.
      r.prev_sample = (s_t / s_s) * sample - coef * x0;
    } else {
      // (lower_order_second only lowers third-order steps; with order ≤ 2 the step before last stays second order.)
      // Second order multistep, midpoint form: D0 = m0, D1 = (m0 - m1)/r0, r0 = h_0/h.
      float a_s1, s_s1;
      alpha_sigma(sigma(i - 1), a_s1, s_s1);
      const float lambda_s1 = std::log(a_s1) - std::log(s_s1);
      const float h0 = lambda_s0 - lambda_s1;
      const float r0 = h0 / h;
      const at::Tensor& m0 = outputs_[solver_order_ - 1];
      const at::Tensor& m1 = outputs_[solver_order_ - 2];
      at::Tensor D1 = (1.0f / r0) * (m0 - m1);
      r.prev_sample = (s_t / s_s) * sample - coef * m0 - 0.5f * coef * D1;
    }
    if (lower_order_nums_ < solver_order_) lower_order_nums_ += 1;
    return r;
  }
  // α_t·x0 + σ_t·n at scheduled timesteps.
  at::Tensor add_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& ts) const override {
    return broadcast_like(alpha_sigma_for(ts, true), x0) * x0 + broadcast_like(alpha_sigma_for(ts, false), x0) * noise;
  }
  at::Tensor alpha_sigma_for(const at::Tensor& timesteps_in, bool want_alpha) const {
    at::Tensor t = timesteps_in.to(at::kCPU).to(at::kDouble).reshape({-1});
    std::vector<float> v;
    for (int64_t j = 0; j < t.size(0); ++j) {
      float a, s;
      alpha_sigma(sigma(index_of_timestep(t[j].item<double>())), a, s);
      v.push_back(want_alpha ? a : s);
    }
    return float_tensor(v);
  }
};
}  // namespace

std::string scheduler_kind_from_class(const std::string& c) {
  static const std::map<std::string, std::string> m = {{"DDPMScheduler", "ddpm"}, {"DDIMScheduler", "ddim"}, {"PNDMScheduler", "pndm"},
                                                       {"EulerDiscreteScheduler", "euler"}, {"LMSDiscreteScheduler", "lms"},
                                                       {"DPMSolverMultistepScheduler", "dpmsolver"}};
  auto it = m.find(c);
  return it == m.end() ? "" : it->second;
}

std::unique_ptr<Scheduler> make_scheduler(const std::string& kind_in, const json& config) {
  std::string kind = kind_in.empty() ? scheduler_kind_from_class(opt<std::string>(config, "_class_name", "")) : kind_in;
  if (!scheduler_kind_from_class(kind).empty()) kind = scheduler_kind_from_class(kind);
  if (kind == "dpm++" || kind == "dpmsolver++" || kind == "dpm") kind = "dpmsolver";
  if (kind == "plms") kind = "pndm";
  if (kind == "ddpm") return std::make_unique<DDPM>(config);
  if (kind == "ddim") return std::make_unique<DDIM>(config);
  if (kind == "pndm") return std::make_unique<PNDM>(config);
  if (kind == "euler") return std::make_unique<Euler>(config);
  if (kind == "lms") return std::make_unique<LMS>(config);
  if (kind == "dpmsolver") return std::make_unique<DPMSolver>(config);
  throw Error("unknown scheduler '" + kind_in + "' (expected ddpm, ddim, pndm, euler, lms or dpm++)");
}

void Scheduler::check_order(int64_t step_index, const char* who) {
  if (step_index == 0) expected_step_ = 0;
  if (step_index != expected_step_)
    throw Error(std::string(who) + ": steps must run in order (expected step " + std::to_string(expected_step_) + ", got " +
                std::to_string(step_index) + "); call set_timesteps to restart");
  expected_step_ = step_index + 1;
}

// ᾱ_t at integer timesteps, as float32 [B] on the CPU.
static at::Tensor abar_at(const at::Tensor& alphas_cumprod, const at::Tensor& ts) {
  at::Tensor t = ts.to(at::kCPU);
  if (at::isFloatingType(t.scalar_type())) {
    if (!at::equal(t, t.round())) throw Error("add_noise: timesteps of DDPM/DDIM/PNDM must be integers");
    t = t.to(at::kLong);
  }
  t = t.reshape({-1});
  const int64_t T = alphas_cumprod.size(0);
  if (t.numel() && (t.min().item<int64_t>() < 0 || t.max().item<int64_t>() >= T))
    throw Error("add_noise: timesteps must lie in 0.." + std::to_string(T - 1));
  return alphas_cumprod.index_select(0, t);
}

// q(x_t|x_0) of DDPM eq. (4): sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·n.
at::Tensor Scheduler::add_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& ts) const {
  at::Tensor a = abar_at(alphas_cumprod, ts);
  return broadcast_like(a.pow(0.5), x0) * x0 + broadcast_like((1 - a).pow(0.5), x0) * noise;
}

at::Tensor Scheduler::get_velocity(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& ts) const {
  at::Tensor a = abar_at(alphas_cumprod, ts);
  return broadcast_like(a.pow(0.5), x0) * noise - broadcast_like((1 - a).pow(0.5), x0) * x0;
}

float Scheduler::abar(int64_t t) const {
  if (t < 0 || t >= alphas_cumprod.size(0))
    throw Error("timestep " + std::to_string(t) + " is outside 0.." + std::to_string(alphas_cumprod.size(0) - 1));
  return alphas_cumprod.data_ptr<float>()[t];
}

}  // namespace rt::sd
