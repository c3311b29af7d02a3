// Noise schedulers of Stable Diffusion v1, reproducing diffusers 0.25.1 (DDPM, DDIM, PNDM/PLMS, Euler discrete,
// LMS discrete, DPM-Solver++ multistep), configured from a scheduler_config.json object.
//
// Steps are addressed by their index in `timesteps` (PNDM repeats a timestep, so the value alone is ambiguous);
// multistep schedulers keep history and must be stepped in order after set_timesteps().
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "core/common.h"

namespace rt::sd {

struct StepResult {
  at::Tensor prev_sample;
  at::Tensor pred_original_sample;  // undefined where the scheduler has none (PNDM, DPM-Solver)
  double variance = 0;              // DDPM only: the variance whose sqrt scales the noise
  bool noise_drawn = false;         // DDPM/DDIM(eta>0): whether noise entered the step
  at::Tensor noise;                 // the noise used (given or drawn), when noise_drawn
};

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  // The kind name: ddpm, ddim, pndm, euler, lms, dpmsolver.
  virtual std::string kind() const = 0;
  // Computes the inference schedule for n steps and resets per-run state.
  virtual void set_timesteps(int64_t n) = 0;
  // Divides by sqrt(sigma²+1) for sigma schedulers; identity otherwise.
  virtual at::Tensor scale_model_input(const at::Tensor& sample, int64_t step_index) { return sample; }
  // One denoising step. `noise` (optional) replaces the randomness a step draws; otherwise `gen` is used.
  virtual StepResult step(const at::Tensor& model_output, int64_t step_index, const at::Tensor& sample, const at::Tensor& noise,
                          at::Generator* gen) = 0;
  // Forward diffusion q(x_t | x_0) at the given timesteps ([B], int64 or float).
  virtual at::Tensor add_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps) const;
  // v-prediction target sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x0 (Salimans & Ho 2022, eq. 4 of appendix D).
  at::Tensor get_velocity(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps) const;

  // int64 [N] (DDPM/DDIM/PNDM/DPM) or float32 [N] (Euler/LMS), on the CPU.
  at::Tensor timesteps;
  // float32 [N+1] for sigma schedulers, undefined otherwise.
  at::Tensor sigmas;
  double init_noise_sigma = 1.0;
  // float32 [T] tables.
  at::Tensor betas, alphas_cumprod;
  int64_t num_train_timesteps = 1000;
  int64_t num_inference_steps = 0;
  std::string prediction_type = "epsilon";

 protected:
  // Index of the next step a multistep scheduler expects (history must be built in order).
  int64_t expected_step_ = 0;
  void check_order(int64_t step_index, const char* who);
  float abar(int64_t t) const;  // alphas_cumprod[t] as float
};

// Builds a scheduler from a kind name ("ddpm", "ddim", "pndm", "euler", "lms", "dpmsolver" / "dpm++", or a
// diffusers class name) and a scheduler_config.json object. Throws rt::Error for unknown kinds or bad keys.
std::unique_ptr<Scheduler> make_scheduler(const std::string& kind, const json& config);
// The kind named by a config's "_class_name" (e.g. "PNDMScheduler" -> "pndm"); empty if none/unknown.
std::string scheduler_kind_from_class(const std::string& class_name);

}  // namespace rt::sd
