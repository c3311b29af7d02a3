// Shared parts of the schedulers (see models/schedulers.h): the config every diffusers scheduler reads, β/ᾱ
// tables, timestep spacings, σ interpolation, Karras/λ spacings, dynamic thresholding, the two base classes
// (ᾱ-indexed and σ-parameterised) and one factory per scheduler file.
//
// Arithmetic follows diffusers 0.25.1 operation by operation: scalar coefficients in float32 where diffusers
// computes on float32 0-d tensors, float64 where it uses numpy float64.
#pragma once
#include <set>
#include <string>
#include <vector>

#include "models/schedulers.h"

namespace rt::sd::sched {

// The keys every diffusers scheduler config shares, read once.
struct Config {
  std::string class_name;  // diffusers class, for messages
  int64_t num_train_timesteps = 1000;
  double beta_start = 0.0001, beta_end = 0.02;
  std::string beta_schedule = "linear", timestep_spacing, prediction_type = "epsilon";
  int64_t steps_offset = 0;
  bool rescale_betas_zero_snr = false;
  json trained_betas;
  const json* raw = nullptr;  // the whole object, for per-scheduler keys
};

// Validates `c` against the class's own keys (`own`, beyond the shared ones): a key of another diffusers
// scheduler class is ignored as from_config ignores it, anything else is refused by name. Then reads the shared
// keys. `beta_schedules`: the schedules this class accepts ("exp" is Heun's only).
// `beta_defaults`: the class's beta_start / beta_end defaults (Heun's differ: 0.00085, 0.012).
Config read_config(const json& c, const std::string& class_name, const std::set<std::string>& own, const std::string& default_spacing,
                   const std::vector<std::string>& beta_schedules = {"linear", "scaled_linear", "squaredcos_cap_v2"},
                   std::pair<double, double> beta_defaults = {0.0001, 0.02});
// The value of a per-scheduler key with its diffusers default; a JSON null reads as the default (None).
template <typename T>
T key(const Config& cfg, const char* name, T def) {
  auto it = cfg.raw->find(name);
  if (it == cfg.raw->end() || it->is_null()) return def;
  try {
    return it->get<T>();
  } catch (const std::exception&) {
    throw Error("scheduler config (" + cfg.class_name + "): '" + name + "' has the wrong type: " + it->dump());
  }
}
[[noreturn]] void refuse(const Config& cfg, const std::string& key, const std::string& why);

// β schedule (linear, scaled_linear, squaredcos_cap_v2, exp) and ᾱ = cumprod(1 − β) in float32, with
// rescale_betas_zero_snr applied (Lin et al. 2023, Algorithm 1) when set.
void make_tables(const Config& cfg, at::Tensor& betas, at::Tensor& alphas_cumprod);

// numpy.linspace in float64 (last entry exactly `stop`); numpy.round (half to even).
std::vector<double> np_linspace(double start, double stop, int64_t num);
inline double np_round(double x) { return std::nearbyint(x); }
// numpy.arange(start, stop, step) for a negative float step, in float64.
std::vector<double> np_arange_down(double start, double stop, double step);
// numpy.interp(x, arange(len(fp)), fp) in float64.
double interp(double x, const std::vector<float>& fp);

at::Tensor int_tensor(const std::vector<int64_t>& v);
at::Tensor float_tensor(const std::vector<float>& v);
// v: [B] -> [B, 1, ...] on x's device and dtype, for per-sample coefficients.
at::Tensor broadcast_like(const at::Tensor& v, const at::Tensor& x);
// The given noise (shape-checked) or a CPU draw from `gen` (so a seed gives the same images on every device).
at::Tensor draw_noise(const at::Tensor& like, const at::Tensor& given, at::Generator* gen, const char* who);
void check_steps(int64_t n, int64_t T);

// Dynamic thresholding (Saharia et al. 2022, §2.3): s = clamp(quantile(|x0|, ratio), 1, max) per sample, then
// x0 = clamp(x0, −s, s)/s.
at::Tensor threshold_sample(const at::Tensor& x0, double ratio, double max_value);

// Karras et al. 2022, eq. (5): σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, ρ = 7, in float64.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t n);
// diffusers' _sigma_to_t: the fractional training timestep of σ by linear interpolation in log σ over the table.
// `log_sigmas` is float32 as diffusers' numpy array is; the weight is computed in float32 like numpy 1.x does.
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas);

// ε, x0 under the configured prediction type from ᾱ_t (DDPM eq. 15; v: Salimans & Ho 2022).
struct Pred {
  at::Tensor x0, eps;
};
Pred predict(const std::string& type, const at::Tensor& out, const at::Tensor& sample, float a_t, bool need_eps);

// Schedulers indexed by integer training timestep (ᾱ lookup): DDPM, DDIM, PNDM, and the base of the σ ones.
class AlphaScheduler : public Scheduler {
 public:
  AlphaScheduler(const json& c, const std::string& class_name, const std::set<std::string>& own, const std::string& default_spacing,
                 const std::vector<std::string>& beta_schedules = {"linear", "scaled_linear", "squaredcos_cap_v2"},
                 std::pair<double, double> beta_defaults = {0.0001, 0.02});
  int64_t timestep_at(int64_t i) const { return timesteps[i].item<int64_t>(); }
  // T // n: diffusers' previous-timestep stride for DDPM/DDIM/PNDM, whatever the spacing.
  int64_t stride() const { return num_train_timesteps / num_inference_steps; }
  void check_index(int64_t i, const char* who) const;

 protected:
  // The "leading" / "linspace" / "trailing" integer timesteps of DDPM/DDIM, descending.
  std::vector<int64_t> integer_timesteps(int64_t n) const;
  Config cfg_;
};

// σ-parameterised schedulers (Karras et al. 2022): x_t = x0 + σ_t·ε, σ = sqrt((1−ᾱ)/ᾱ) interpolated over the
// training table. Euler, Euler ancestral, Heun, LMS.
class SigmaScheduler : public AlphaScheduler {
 public:
  SigmaScheduler(const json& c, const std::string& class_name, const std::set<std::string>& own,
                 const std::vector<std::string>& beta_schedules = {"linear", "scaled_linear", "squaredcos_cap_v2"},
                 std::pair<double, double> beta_defaults = {0.0001, 0.02});
  float sigma(int64_t i) const { return sigmas.data_ptr<float>()[i]; }
  at::Tensor scale_model_input(const at::Tensor& sample, int64_t i) override;
  // x_t = x0 + σ·n, σ of the first schedule entry holding each timestep.
  at::Tensor add_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& ts) const override;
  // x0 from the model output at σ (epsilon: x − σ·ε; v: EDM's c_skip/c_out; sample: the output).
  at::Tensor x0_from(const at::Tensor& out, const at::Tensor& sample, float s) const;

 protected:
  // The float timesteps of the configured spacing, descending (float32 values, as float64).
  std::vector<double> spaced_timesteps(int64_t n) const;
  // The spaced timesteps and their σ interpolated over the table, descending; with `karras`, Karras σ between
  // the first and last of those (Karras et al. 2022, Eq. 5) and the timesteps mapped back from them
  // (diffusers' _sigma_to_t), as Heun and LMS compute them.
  void spaced_sigmas(int64_t n, bool karras, std::vector<double>& ts, std::vector<double>& sg) const;
  // Stores timesteps/sigmas (σ list without the trailing 0, which is appended) and init_noise_sigma.
  void finish_schedule(const std::vector<float>& ts, std::vector<float> sg);
  std::vector<float> table_;       // σ per training timestep (float32)
  std::vector<float> log_table_;   // log σ (float32)
};

std::unique_ptr<Scheduler> make_ddpm(const json& c);
std::unique_ptr<Scheduler> make_ddim(const json& c);
std::unique_ptr<Scheduler> make_pndm(const json& c);
std::unique_ptr<Scheduler> make_euler(const json& c);
std::unique_ptr<Scheduler> make_euler_ancestral(const json& c);
std::unique_ptr<Scheduler> make_heun(const json& c);
std::unique_ptr<Scheduler> make_lms(const json& c);
std::unique_ptr<Scheduler> make_dpmsolver(const json& c);

}  // namespace rt::sd::sched
