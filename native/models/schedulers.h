// Noise schedulers of Stable Diffusion, reproducing diffusers 0.25.1: DDPM, DDIM, PNDM (PRK warm-up and PLMS),
// Euler, Euler ancestral, Heun, LMS and DPM-Solver(++) multistep, configured from a scheduler_config.json object.
// One file per scheduler in native/models/schedulers/; shared tables and helpers in schedulers/common.{h,cc}.
//
// Every scheduler_config.json key of the scheduler's diffusers class is implemented or refused by name; keys of
// other diffusers scheduler classes are ignored as diffusers' from_config ignores them (swapping schedulers on
// one config), and any other key is refused by name.
//
// Steps are addressed by their index in `timesteps` (PNDM and Heun repeat timesteps, so the value alone is
// ambiguous). A run starts at step 0 or at the begin index given to set_timesteps (img2img starts mid-schedule);
// multistep schedulers keep history and must then be stepped in order.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "core/common.h"

namespace rt::sd {

struct StepResult {
  at::Tensor prev_sample;
  at::Tensor pred_original_sample;  // undefined where the scheduler has none (PNDM, DPM-Solver, Heun)
  double variance = 0;              // DDPM only: the variance whose sqrt scales the noise
  bool noise_drawn = false;         // whether noise entered the step (DDPM, DDIM eta>0, Euler ancestral, SDE DPM-Solver)
  at::Tensor noise;                 // the noise used (given or drawn), when noise_drawn
};

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  // The kind name: ddpm, ddim, pndm, euler, euler_ancestral, heun, lms, dpmsolver.
  virtual std::string kind() const = 0;
  // Computes the inference schedule for n steps and resets per-run state; the run's first step is `begin`.
  void set_timesteps(int64_t n, int64_t begin = 0);
  // Divides by sqrt(sigma²+1) for sigma schedulers; identity otherwise.
  virtual at::Tensor scale_model_input(const at::Tensor& sample, int64_t step_index) { return sample; }
  // One denoising step. `noise` (optional) replaces the randomness a step draws; otherwise `gen` is used.
  virtual StepResult step(const at::Tensor& model_output, int64_t step_index, const at::Tensor& sample, const at::Tensor& noise,
                          at::Generator* gen) = 0;
  // Forward diffusion q(x_t | x_0) at the given timesteps ([B], int64 or float; sigma schedulers look them up in
  // the current schedule).
  virtual at::Tensor add_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps) const;
  // v-prediction target sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x0 (Salimans & Ho 2022, eq. 4 of appendix D).
  at::Tensor get_velocity(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps) const;
  // The index the img2img pipeline starts at for `strength` (StableDiffusionImg2ImgPipeline.get_timesteps):
  // t_start = n − min(⌊n·strength⌋, n), times the scheduler's order. Needs set_timesteps(n) first.
  int64_t img2img_begin_index(double strength) const;

  // int64 [N] (DDPM/DDIM/PNDM/DPM) or float32 [N] (Euler/Euler ancestral/Heun/LMS), on the CPU.
  at::Tensor timesteps;
  // float32 [N+1] for sigma schedulers, undefined otherwise.
  at::Tensor sigmas;
  double init_noise_sigma = 1.0;
  // float32 [T] tables.
  at::Tensor betas, alphas_cumprod;
  int64_t num_train_timesteps = 1000;
  int64_t num_inference_steps = 0;  // as requested (the pipeline's n, before Heun's interleaving)
  int64_t order = 1;                // diffusers' scheduler.order: model calls per step (Heun 2)
  int64_t begin_index = 0;
  std::string prediction_type = "epsilon";

 protected:
  virtual void compute_timesteps(int64_t n) = 0;
  // Called when a run starts (the begin step): clears multistep history.
  virtual void reset_run() {}
  // Every step goes through here: the first must be begin_index (or 0, which restarts), then consecutive.
  void check_order(int64_t step_index, const char* who);
  int64_t expected_step_ = 0;
  float abar(int64_t t) const;  // alphas_cumprod[t] as float
};

// Builds a scheduler from a kind name ("ddpm", "ddim", "pndm", "euler", "euler_ancestral", "heun", "lms",
// "dpmsolver" / "dpm++", or a diffusers class name) and a scheduler_config.json object. Throws rt::Error naming
// the unknown kind or the unsupported key.
std::unique_ptr<Scheduler> make_scheduler(const std::string& kind, const json& config);
// The kind named by a config's "_class_name" (e.g. "PNDMScheduler" -> "pndm"); empty if none/unknown.
std::string scheduler_kind_from_class(const std::string& class_name);

}  // namespace rt::sd
