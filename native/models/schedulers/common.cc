// Shared scheduler parts (see common.h) and the Scheduler base class.
#include "models/schedulers/common.h"

#include <algorithm>
#include <cmath>
#include <map>

namespace rt::sd {
namespace sched {

namespace {
// Every __init__ parameter of the diffusers 0.25.1 scheduler classes (diffusers.*Scheduler, Flax excluded):
// a key outside a class's own set but in here is one from_config drops when a config moves between classes.
const std::set<std::string>& diffusers_keys() {
  static const std::set<std::string> k = {
      "algorithm_type", "alpha_cum_end", "alpha_cum_start", "beta_end", "beta_schedule", "beta_start", "clip_denoised", "clip_sample",
      "clip_sample_range", "correct_steps", "disable_corrector", "dynamic_thresholding_ratio", "eta", "euler_at_final", "gamma_cum_end",
      "gamma_cum_start", "interpolation_type", "lambda_min_clipped", "lower_order_final", "mask_token_id", "masking_schedule",
      "num_train_timesteps", "num_vec_classes", "original_inference_steps", "predict_x0", "prediction_type", "rescale_betas_zero_snr", "rho",
      "s", "s_noise", "sample_max_value", "sampling_eps", "scaler", "set_alpha_to_one", "sigma_data", "sigma_max", "sigma_min",
      "skip_prk_steps", "snr", "solver_order", "solver_p", "solver_type", "steps_offset", "thresholding", "timestep_scaling",
      "timestep_spacing", "timestep_type", "trained_betas", "use_karras_sigmas", "use_lu_lambdas", "variance_type"};
  return k;
}
const std::set<std::string> kShared = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                                       "prediction_type", "timestep_spacing", "steps_offset"};
}  // namespace

void refuse(const Config& cfg, const std::string& key, const std::string& why) {
  throw Error("scheduler config (" + cfg.class_name + "): '" + key + "' " + why);
}

Config read_config(const json& c, const std::string& class_name, const std::set<std::string>& own, const std::string& default_spacing,
                   const std::vector<std::string>& beta_schedules, std::pair<double, double> beta_defaults) {
  if (!c.is_object()) throw Error("scheduler config: expected a JSON object (scheduler_config.json)");
  Config cfg;
  cfg.class_name = class_name;
  cfg.raw = &c;
  for (auto it = c.begin(); it != c.end(); ++it) {
    const std::string& k = it.key();
    if (k.empty() || k[0] == '_') continue;  // _class_name, _diffusers_version: metadata
    if (kShared.count(k) || own.count(k) || k == "rescale_betas_zero_snr") continue;
    if (!diffusers_keys().count(k))
      throw Error("scheduler config (" + class_name + "): unknown key '" + k + "' (not a diffusers 0.25.1 scheduler option)");
  }
  cfg.num_train_timesteps = key<int64_t>(cfg, "num_train_timesteps", 1000);
  cfg.beta_start = key<double>(cfg, "beta_start", beta_defaults.first);
  cfg.beta_end = key<double>(cfg, "beta_end", beta_defaults.second);
  cfg.beta_schedule = key<std::string>(cfg, "beta_schedule", "linear");
  cfg.timestep_spacing = key<std::string>(cfg, "timestep_spacing", default_spacing);
  cfg.prediction_type = key<std::string>(cfg, "prediction_type", "epsilon");
  cfg.steps_offset = key<int64_t>(cfg, "steps_offset", 0);
  cfg.trained_betas = c.contains("trained_betas") ? c["trained_betas"] : json();
  // rescale_betas_zero_snr exists on DDPM/DDIM/Euler/Euler ancestral only: elsewhere true would be dropped by
  // diffusers, which silently changes nothing — refused instead, since a user setting it expects it to apply.
  cfg.rescale_betas_zero_snr = key<bool>(cfg, "rescale_betas_zero_snr", false);
  if (cfg.rescale_betas_zero_snr && !own.count("rescale_betas_zero_snr"))
    refuse(cfg, "rescale_betas_zero_snr", "true is not an option of this scheduler in diffusers 0.25.1");
  if (cfg.num_train_timesteps < 2) refuse(cfg, "num_train_timesteps", "must be at least 2");
  if (std::find(beta_schedules.begin(), beta_schedules.end(), cfg.beta_schedule) == beta_schedules.end() && !cfg.trained_betas.is_array()) {
    std::string list;
    for (auto& s : beta_schedules) list += (list.empty() ? "" : ", ") + s;
    refuse(cfg, "beta_schedule", "'" + cfg.beta_schedule + "' is not supported (" + list + ")");
  }
  if (cfg.timestep_spacing != "leading" && cfg.timestep_spacing != "linspace" && cfg.timestep_spacing != "trailing")
    refuse(cfg, "timestep_spacing", "must be leading, linspace or trailing, got '" + cfg.timestep_spacing + "'");
  if (cfg.prediction_type != "epsilon" && cfg.prediction_type != "v_prediction" && cfg.prediction_type != "sample")
    refuse(cfg, "prediction_type", "must be epsilon, v_prediction or sample, got '" + cfg.prediction_type + "'");
  return cfg;
}

// Glide's cosine (Nichol & Dhariwal 2021, eq. 17) or the exponential ᾱ(t) = e^{−12t}, discretised as
// β_i = min(1 − ᾱ(t_{i+1})/ᾱ(t_i), 0.999) in float64 (diffusers' betas_for_alpha_bar).
static at::Tensor betas_for_alpha_bar(int64_t T, bool exp_form) {
  auto abar = [&](double t) { return exp_form ? std::exp(t * -12.0) : std::pow(std::cos((t + 0.008) / 1.008 * M_PI / 2), 2); };
  std::vector<float> b(T);
  for (int64_t i = 0; i < T; ++i) b[i] = static_cast<float>(std::min(1 - abar(double(i + 1) / T) / abar(double(i) / T), 0.999));
  return float_tensor(b);
}

void make_tables(const Config& cfg, at::Tensor& betas, at::Tensor& alphas_cumprod) {
  const int64_t T = cfg.num_train_timesteps;
  if (cfg.trained_betas.is_array()) {
    std::vector<float> b;
    for (auto& v : cfg.trained_betas) b.push_back(v.get<float>());
    if (static_cast<int64_t>(b.size()) != T) refuse(cfg, "trained_betas", "must have num_train_timesteps (" + std::to_string(T) + ") entries");
    betas = float_tensor(b);
  } else if (cfg.beta_schedule == "linear") {
    betas = at::linspace(cfg.beta_start, cfg.beta_end, T, at::kFloat);
  } else if (cfg.beta_schedule == "scaled_linear") {
    // LDM's schedule: linear in sqrt(β), then squared.
    betas = at::linspace(std::sqrt(cfg.beta_start), std::sqrt(cfg.beta_end), T, at::kFloat).pow(2);
  } else {
    betas = betas_for_alpha_bar(T, cfg.beta_schedule == "exp");
  }
  if (cfg.rescale_betas_zero_snr) {
    // Lin et al. 2023, Algorithm 1: shift and scale sqrt(ᾱ) so that ᾱ_T = 0 while ᾱ_0 is kept, then back to β.
    at::Tensor s = at::cumprod(1.0 - betas, 0).sqrt();
    at::Tensor s0 = s[0].clone(), sT = s[-1].clone();
    s = (s - sT) * (s0 / (s0 - sT));
    at::Tensor ab = s.pow(2);
    at::Tensor alphas = at::cat({ab.slice(0, 0, 1), ab.slice(0, 1) / ab.slice(0, 0, -1)});
    betas = 1 - alphas;
  }
  alphas_cumprod = at::cumprod(1.0 - betas, 0);
}

std::vector<double> np_linspace(double start, double stop, int64_t num) {
  if (num == 1) return {start};
  std::vector<double> y(num);
  const double step = (stop - start) / static_cast<double>(num - 1);
  for (int64_t k = 0; k < num; ++k) y[k] = static_cast<double>(k) * step + start;
  y[num - 1] = stop;
  return y;
}

std::vector<double> np_arange_down(double start, double stop, double step) {
  // numpy: length ceil((stop − start)/step), values start + i·step.
  const int64_t n = static_cast<int64_t>(std::ceil((stop - start) / step));
  std::vector<double> v;
  for (int64_t i = 0; i < n; ++i) v.push_back(start + i * step);
  return v;
}

double interp(double x, const std::vector<float>& fp) {
  const int64_t n = fp.size();
  if (x <= 0) return fp[0];
  if (x >= n - 1) return fp[n - 1];
  const int64_t j = static_cast<int64_t>(std::floor(x));
  const double slope = (double(fp[j + 1]) - double(fp[j])) / 1.0;
  return slope * (x - double(j)) + double(fp[j]);
}

at::Tensor int_tensor(const std::vector<int64_t>& v) { return torch::tensor(v, torch::kInt64); }
at::Tensor float_tensor(const std::vector<float>& v) { return torch::tensor(v, torch::kFloat32); }

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
  at::Tensor n = gen ? at::randn(like.sizes(), *gen, at::TensorOptions().dtype(at::kFloat)) : at::randn(like.sizes(), at::kFloat);
  return n.to(like.device(), like.scalar_type());
}

void check_steps(int64_t n, int64_t T) {
  if (n < 1 || n > T)
    throw Error("num_inference_steps must be between 1 and num_train_timesteps (" + std::to_string(T) + "), got " + std::to_string(n));
}

at::Tensor threshold_sample(const at::Tensor& x0, double ratio, double max_value) {
  // x0: [B, C, H, W] -> per-sample rows [B, C·H·W]; quantile in float32 (upcast from half, as diffusers).
  const auto dtype = x0.scalar_type();
  at::Tensor x = (dtype == at::kFloat || dtype == at::kDouble) ? x0 : x0.to(at::kFloat);
  at::Tensor flat = x.reshape({x.size(0), -1});
  at::Tensor s = at::quantile(flat.abs(), ratio, 1).clamp(1.0, max_value).unsqueeze(1);  // [B, 1]
  at::Tensor out = at::minimum(at::maximum(flat, -s), s) / s;
  return out.reshape(x0.sizes()).to(dtype);
}

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t n) {
  const double rho = 7.0;
  auto ramp = np_linspace(0, 1, n);
  const double min_inv = std::pow(sigma_min, 1 / rho), max_inv = std::pow(sigma_max, 1 / rho);
  std::vector<double> s;
  for (double r : ramp) s.push_back(std::pow(max_inv + r * (min_inv - max_inv), rho));
  return s;
}

double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  // numpy 1.x value-based casting: the float64 scalar log σ meets float32 arrays, so dists and w are float32.
  const float ls = static_cast<float>(std::log(std::max(sigma, 1e-10)));
  const int64_t n = log_sigmas.size();
  // low = last index with log_sigmas[i] <= log σ (argmax of the cumulative count; 0 if none), at most n − 2.
  int64_t count = 0, best = 0, low = 0;
  for (int64_t i = 0; i < n; ++i) {
    count += (ls - log_sigmas[i] >= 0.0f) ? 1 : 0;
    if (count > best) {
      best = count;
      low = i;
    }
  }
  low = std::min(low, n - 2);
  const float lo = log_sigmas[low], hi = log_sigmas[low + 1];
  float w = (lo - ls) / (lo - hi);
  w = std::min(std::max(w, 0.0f), 1.0f);
  return double(1.0f - w) * double(low) + double(w) * double(low + 1);
}

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

// ---------------------------------------------------------------------------------------------------------
AlphaScheduler::AlphaScheduler(const json& c, const std::string& class_name, const std::set<std::string>& own,
                               const std::string& default_spacing, const std::vector<std::string>& beta_schedules,
                               std::pair<double, double> beta_defaults)
    : cfg_(read_config(c, class_name, own, default_spacing, beta_schedules, beta_defaults)) {
  make_tables(cfg_, betas, alphas_cumprod);
  num_train_timesteps = cfg_.num_train_timesteps;
  prediction_type = cfg_.prediction_type;
}

void AlphaScheduler::check_index(int64_t i, const char* who) const {
  if (num_inference_steps == 0) throw Error(std::string(who) + ": call set_timesteps first");
  if (i < 0 || i >= timesteps.size(0))
    throw Error(std::string(who) + ": step index " + std::to_string(i) + " is outside the schedule of " + std::to_string(timesteps.size(0)) + " steps");
}

std::vector<int64_t> AlphaScheduler::integer_timesteps(int64_t n) const {
  const int64_t T = num_train_timesteps;
  std::vector<int64_t> ts;
  if (cfg_.timestep_spacing == "leading") {
    const int64_t ratio = T / n;
    for (int64_t i = n - 1; i >= 0; --i) ts.push_back(i * ratio + cfg_.steps_offset);
  } else if (cfg_.timestep_spacing == "linspace") {
    auto l = np_linspace(0, double(T - 1), n);
    for (int64_t i = n - 1; i >= 0; --i) ts.push_back(static_cast<int64_t>(np_round(l[i])));
  } else {
    for (double v : np_arange_down(double(T), 0, -double(T) / double(n))) ts.push_back(static_cast<int64_t>(np_round(v)) - 1);
  }
  return ts;
}

// ---------------------------------------------------------------------------------------------------------
SigmaScheduler::SigmaScheduler(const json& c, const std::string& class_name, const std::set<std::string>& own,
                               const std::vector<std::string>& beta_schedules, std::pair<double, double> beta_defaults)
    : AlphaScheduler(c, class_name, own, "linspace", beta_schedules, beta_defaults) {
  // Zero terminal SNR makes σ_T infinite; diffusers (Euler, Euler ancestral) sets ᾱ_T = 2^-24 instead.
  if (cfg_.rescale_betas_zero_snr) alphas_cumprod.select(0, -1).fill_(std::ldexp(1.0, -24));
  at::Tensor s = ((1 - alphas_cumprod) / alphas_cumprod).pow(0.5).contiguous();
  table_.assign(s.data_ptr<float>(), s.data_ptr<float>() + s.numel());
  for (float v : table_) log_table_.push_back(std::log(v));
}

std::vector<double> SigmaScheduler::spaced_timesteps(int64_t n) const {
  const int64_t T = num_train_timesteps;
  std::vector<double> ts;
  if (cfg_.timestep_spacing == "linspace") {
    // np.linspace(..., dtype=float32): computed in float64, stored in float32.
    auto l = np_linspace(0, double(T - 1), n);
    for (auto it = l.rbegin(); it != l.rend(); ++it) ts.push_back(static_cast<float>(*it));
  } else if (cfg_.timestep_spacing == "leading") {
    for (int64_t i = n - 1; i >= 0; --i) ts.push_back(static_cast<float>(double(i * (T / n))) + static_cast<float>(cfg_.steps_offset));
  } else {
    for (double v : np_arange_down(double(T), 0, -double(T) / double(n))) ts.push_back(static_cast<float>(np_round(v)) - 1.0f);
  }
  return ts;
}

void SigmaScheduler::spaced_sigmas(int64_t n, bool karras, std::vector<double>& ts, std::vector<double>& sg) const {
  ts = spaced_timesteps(n);
  sg.clear();
  for (double t : ts) sg.push_back(interp(t, table_));
  if (karras) {
    sg = karras_sigmas(sg.back(), sg.front(), n);
    ts.clear();
    for (double s : sg) ts.push_back(sigma_to_t(s, log_table_));
  }
}

void SigmaScheduler::finish_schedule(const std::vector<float>& ts, std::vector<float> sg) {
  sg.push_back(0.0f);
  timesteps = float_tensor(ts);
  sigmas = float_tensor(sg);
  // float32 tensor arithmetic of diffusers' init_noise_sigma property.
  const float mx = *std::max_element(sg.begin(), sg.end());
  init_noise_sigma = (cfg_.timestep_spacing == "linspace" || cfg_.timestep_spacing == "trailing") ? mx : std::sqrt(mx * mx + 1.0f);
}

at::Tensor SigmaScheduler::scale_model_input(const at::Tensor& sample, int64_t i) {
  check_index(i, "scale_model_input");
  const float s = sigma(i);
  // c_in of the EDM preconditioning: the UNet was trained on variance-preserving inputs.
  return sample / std::sqrt(s * s + 1.0f);
}

at::Tensor SigmaScheduler::x0_from(const at::Tensor& out, const at::Tensor& sample, float s) const {
  if (prediction_type == "epsilon") return sample - s * out;
  if (prediction_type == "v_prediction") return out * (-s / std::sqrt(s * s + 1.0f)) + sample / (s * s + 1.0f);
  return out;
}

at::Tensor SigmaScheduler::add_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& ts) const {
  if (num_inference_steps == 0) throw Error("add_noise: call set_timesteps first (" + kind() + " looks σ up in its schedule)");
  at::Tensor t = ts.to(at::kCPU).to(at::kFloat).reshape({-1}).contiguous();
  at::Tensor sched = timesteps.to(at::kFloat).contiguous();
  const float* sp = sched.data_ptr<float>();
  std::vector<float> v;
  for (int64_t j = 0; j < t.size(0); ++j) {
    const float tj = t.data_ptr<float>()[j];
    int64_t idx = -1;
    for (int64_t i = 0; i < sched.size(0) && idx < 0; ++i)
      if (sp[i] == tj) idx = i;
    if (idx < 0) throw Error("add_noise: timestep " + std::to_string(tj) + " is not in the current " + kind() + " schedule");
    v.push_back(sigma(idx));
  }
  return x0 + noise * broadcast_like(float_tensor(v), x0);
}

}  // namespace sched

// ---------------------------------------------------------------------------------------------------------
// Scheduler base class.

void Scheduler::set_timesteps(int64_t n, int64_t begin) {
  sched::check_steps(n, num_train_timesteps);
  num_inference_steps = n;
  compute_timesteps(n);
  if (begin < 0 || begin >= timesteps.size(0))
    throw Error("set_timesteps: begin index " + std::to_string(begin) + " is outside the schedule of " + std::to_string(timesteps.size(0)) +
                " steps");
  begin_index = begin;
  expected_step_ = begin;
  reset_run();
}

int64_t Scheduler::img2img_begin_index(double strength) const {
  if (!(strength >= 0 && strength <= 1)) throw Error("strength must be in [0, 1], got " + std::to_string(strength));
  if (num_inference_steps == 0) throw Error("img2img_begin_index: call set_timesteps first");
  const int64_t n = num_inference_steps;
  const int64_t init_timestep = std::min(static_cast<int64_t>(double(n) * strength), n);
  const int64_t t_start = std::max<int64_t>(n - init_timestep, 0);
  if (t_start * order >= timesteps.size(0))
    throw Error("strength " + std::to_string(strength) + " leaves none of the " + std::to_string(n) +
                " steps to run (img2img needs strength >= 1/steps)");
  return t_start * order;
}

void Scheduler::check_order(int64_t step_index, const char* who) {
  if (step_index == begin_index || step_index == 0) {
    // The run's first step (or a restart from 0, as the pipelines run): drop the history of any earlier run.
    if (step_index != expected_step_) reset_run();
  } else if (step_index != expected_step_) {
    throw Error(std::string(who) + ": steps must run in order (expected step " + std::to_string(expected_step_) + ", got " +
                std::to_string(step_index) + "); call set_timesteps to restart");
  }
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
  return sched::broadcast_like(a.pow(0.5), x0) * x0 + sched::broadcast_like((1 - a).pow(0.5), x0) * noise;
}

at::Tensor Scheduler::get_velocity(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& ts) const {
  at::Tensor a = abar_at(alphas_cumprod, ts);
  return sched::broadcast_like(a.pow(0.5), x0) * noise - sched::broadcast_like((1 - a).pow(0.5), x0) * x0;
}

float Scheduler::abar(int64_t t) const {
  if (t < 0 || t >= alphas_cumprod.size(0))
    throw Error("timestep " + std::to_string(t) + " is outside 0.." + std::to_string(alphas_cumprod.size(0) - 1));
  return alphas_cumprod.data_ptr<float>()[t];
}

std::string scheduler_kind_from_class(const std::string& c) {
  static const std::map<std::string, std::string> m = {
      {"DDPMScheduler", "ddpm"},   {"DDIMScheduler", "ddim"},           {"PNDMScheduler", "pndm"},
      {"EulerDiscreteScheduler", "euler"}, {"EulerAncestralDiscreteScheduler", "euler_ancestral"},
      {"HeunDiscreteScheduler", "heun"},   {"LMSDiscreteScheduler", "lms"}, {"DPMSolverMultistepScheduler", "dpmsolver"}};
  auto it = m.find(c);
  return it == m.end() ? "" : it->second;
}

std::unique_ptr<Scheduler> make_scheduler(const std::string& kind_in, const json& config) {
  std::string kind = kind_in.empty() ? scheduler_kind_from_class(config.is_object() ? opt<std::string>(config, "_class_name", "") : "") : kind_in;
  if (!scheduler_kind_from_class(kind).empty()) kind = scheduler_kind_from_class(kind);
  if (kind == "dpm++" || kind == "dpmsolver++" || kind == "dpm") kind = "dpmsolver";
  if (kind == "plms") kind = "pndm";
  if (kind == "euler_a" || kind == "euler-ancestral" || kind == "euler_ancestral") kind = "euler_ancestral";
  if (kind == "ddpm") return sched::make_ddpm(config);
  if (kind == "ddim") return sched::make_ddim(config);
  if (kind == "pndm") return sched::make_pndm(config);
  if (kind == "euler") return sched::make_euler(config);
  if (kind == "euler_ancestral") return sched::make_euler_ancestral(config);
  if (kind == "heun") return sched::make_heun(config);
  if (kind == "lms") return sched::make_lms(config);
  if (kind == "dpmsolver") return sched::make_dpmsolver(config);
  throw Error("unknown scheduler '" + kind_in + "' (expected ddpm, ddim, pndm, euler, euler_ancestral, heun, lms or dpm++)");
}

}  // namespace rt::sd
