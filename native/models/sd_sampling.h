// Classifier-free guided sampling of Stable Diffusion (StableDiffusionPipeline.__call__ after the text encoder),
// run natively over any ε-model (the UNet) and a scheduler.
#pragma once
#include <functional>

#include "core/common.h"
#include "models/schedulers.h"

namespace rt::sd {

// eps(x: [B, C, h, w], t: 0-d timestep tensor, ehs: [B, M, D]) -> [B, C, h, w]
using EpsModel = std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>;

// Inputs: latents [B, C, h, w] (N(0,1); scaled by init_noise_sigma here), cond_embeds [B, M, D],
//   uncond_embeds [B, M, D] (needed when guidance > 1), variance_noise [steps, B, C, h, w] (optional replay),
//   init_latents [B, C, h, w] (img2img: the encoded init image, noised with `latents` to the start timestep).
// Options: scheduler (kind; default from scheduler_config._class_name), scheduler_config (object), steps,
//   guidance (7.5), seed (for noise the scheduler draws), record (per-step tensors), strength (img2img, 0.8:
//   the run starts at index (steps − ⌊steps·strength⌋)·order, as StableDiffusionImg2ImgPipeline).
// Outputs: latents (final), timesteps; with record: latents_steps [steps+1, ...], noise_pred_uncond,
//   noise_pred_text, noise_pred [steps, ...], variance_noise (what DDPM used).
TensorMap guided_sample(const EpsModel& eps, const TensorMap& in, const json& options, const at::Device& device, at::ScalarType dtype);

// One guided ε: cat([x, x]) through the model with cat([uncond, cond]), then ε_u + g(ε_c − ε_u).
at::Tensor guided_eps(const EpsModel& eps, const at::Tensor& x, const at::Tensor& t, const at::Tensor& uncond, const at::Tensor& cond,
                      double guidance, at::Tensor* eps_u_out = nullptr, at::Tensor* eps_c_out = nullptr);

}  // namespace rt::sd
