// Guided sampling loop and the "scheduler" model kind (a scheduler handle for TypeScript; per-step work native).
#include "models/sd_sampling.h"

#include <ATen/CPUGeneratorImpl.h>

#include "core/call_context.h"
#include "core/memory.h"
#include "core/model.h"

namespace rt::sd {

at::Tensor guided_eps(const EpsModel& eps, const at::Tensor& x, const at::Tensor& t, const at::Tensor& uncond, const at::Tensor& cond,
                      double guidance, at::Tensor* eps_u_out, at::Tensor* eps_c_out) {
  if (guidance <= 1.0 || !uncond.defined()) {
    // No guidance: a single conditional pass (the pipeline skips CFG for g <= 1).
    at::Tensor e = eps(x, t, cond);
    if (eps_c_out) *eps_c_out = e;
    if (eps_u_out) *eps_u_out = e;
    return e;
  }
  // Unconditional first, as diffusers concatenates [negative, prompt].
  at::Tensor both = eps(at::cat({x, x}), t, at::cat({uncond, cond}));
  auto parts = both.chunk(2);
  if (eps_u_out) *eps_u_out = parts[0];
  if (eps_c_out) *eps_c_out = parts[1];
  return parts[0] + guidance * (parts[1] - parts[0]);
}

namespace {
void check_embeds(const at::Tensor& e, const at::Tensor& latents, const char* name) {
  if (e.dim() != 3 || e.size(0) != latents.size(0))
    throw Error(std::string("sample: ") + name + " must be [B, seq, dim] with B = " + std::to_string(latents.size(0)) + " (the latents' batch), got " +
                shape_str(e.sizes()));
}
}  // namespace

TensorMap guided_sample(const EpsModel& eps, const TensorMap& in, const json& options, const at::Device& device, at::ScalarType dtype) {
  // Pure generation: no autograd bookkeeping (NoGradGuard rather than InferenceMode, so the returned latents
  // can still feed a differentiable decode).
  at::NoGradGuard no_grad;
  const at::Tensor latents0 = need(in, "latents", "sample").to(device, dtype);
  if (latents0.dim() != 4) throw Error("sample: latents must be [B, C, h, w], got " + shape_str(latents0.sizes()));
  const at::Tensor cond = need(in, "cond_embeds", "sample").to(device, dtype);
  check_embeds(cond, latents0, "cond_embeds");
  const double guidance = opt<double>(options, "guidance", 7.5);
  at::Tensor uncond;
  if (guidance > 1.0) {
    uncond = need(in, "uncond_embeds", "sample (guidance > 1)").to(device, dtype);
    check_embeds(uncond, latents0, "uncond_embeds");
    if (uncond.sizes() != cond.sizes())
      throw Error("sample: uncond_embeds " + shape_str(uncond.sizes()) + " and cond_embeds " + shape_str(cond.sizes()) + " differ in shape");
  }
  const json sched_cfg = options.contains("scheduler_config") ? options["scheduler_config"] : json::object();
  auto sched = make_scheduler(opt<std::string>(options, "scheduler", ""), sched_cfg);
  const int64_t steps = opt<int64_t>(options, "steps", 50);
  sched->set_timesteps(steps);
  // img2img: start at the strength's index (StableDiffusionImg2ImgPipeline.get_timesteps) from noised init latents.
  const bool img2img = in.count("init_latents") > 0;
  if (img2img) sched->set_timesteps(steps, sched->img2img_begin_index(opt<double>(options, "strength", 0.8)));
  const int64_t begin = sched->begin_index;
  const int64_t n = sched->timesteps.size(0);
  at::Tensor replay;
  if (in.count("variance_noise")) {
    replay = in.at("variance_noise");
    if (replay.dim() != 5 || replay.size(0) < n || replay.sizes().slice(1) != latents0.sizes())
      throw Error("sample: variance_noise must be [" + std::to_string(n) + ", " + shape_str(latents0.sizes()).substr(1) + ", got " +
                  shape_str(replay.sizes()));
  }
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(opt<int64_t>(options, "seed", 0)));
  const bool record = opt<bool>(options, "record", false);

  // 1. Start from N(0,1)·init_noise_sigma, or (img2img) from the init latents noised to the first timestep.
  check_cancelled();
  at::Tensor latents;
  if (img2img) {
    const at::Tensor init = in.at("init_latents").to(device, dtype);
    if (init.sizes() != latents0.sizes())
      throw Error("sample: init_latents " + shape_str(init.sizes()) + " and latents " + shape_str(latents0.sizes()) + " differ in shape");
    latents = sched->add_noise(init, latents0, sched->timesteps.slice(0, begin, begin + 1).repeat({latents0.size(0)}));
  } else {
    latents = latents0 * sched->init_noise_sigma;
  }
  std::vector<at::Tensor> lat_steps{latents}, x_steps, eu_steps, ec_steps, e_steps, noise_steps;
  for (int64_t i = begin; i < n; ++i) {
    // 2. Scale, guided ε at t (a 0-d tensor broadcast over the batch), scheduler step.
    at::Tensor t = sched->timesteps[i];
    at::Tensor x = sched->scale_model_input(latents, i);
    at::Tensor eu, ec;
    at::Tensor e = guided_eps(eps, x, t, uncond, cond, guidance, &eu, &ec);
    at::Tensor noise = replay.defined() ? replay[i].to(device, dtype) : at::Tensor();
    StepResult r = sched->step(e, i, latents, noise, &gen);
    latents = r.prev_sample;
    if (record) {
      lat_steps.push_back(latents);
      x_steps.push_back(x);
      eu_steps.push_back(eu);
      ec_steps.push_back(ec);
      e_steps.push_back(e);
      if (r.noise_drawn) noise_steps.push_back(r.noise);
    }
    // 3. Progress to JS; an abort stops here, within one step.
    report_step(i - begin + 1, n - begin);
  }
  TensorMap out{{"latents", latents}, {"timesteps", sched->timesteps.clone()}};
  if (record) {
    out["latents_steps"] = at::stack(lat_steps);
    out["model_input"] = at::stack(x_steps);
    out["noise_pred_uncond"] = at::stack(eu_steps);
    out["noise_pred_text"] = at::stack(ec_steps);
    out["noise_pred"] = at::stack(e_steps);
    if (!noise_steps.empty()) out["variance_noise"] = at::stack(noise_steps);
  }
  return out;
}

TensorMap sample_and_decode(const EpsModel& eps, const TensorMap& in, const json& options, const at::Device& device, at::ScalarType dtype) {
  TensorMap out = guided_sample(eps, in, options, device, dtype);
  std::shared_ptr<Model> vae = peer_model("vae");
  if (!vae) return out;
  // The UNet's workspace goes back to the system before the VAE's (larger) one is mapped.
  release_cached_memory();
  at::NoGradGuard no_grad;
  json decode = options.contains("decode") && options["decode"].is_object() ? options["decode"] : json::object();
  decode["scaled"] = true;
  at::Tensor z = out["latents"];
  if (vae->channels_last && z.dim() == 4) z = z.contiguous(at::MemoryFormat::ChannelsLast);
  std::lock_guard<std::mutex> lock(vae->mutex);
  TensorMap image = vae->call("decode", {{"z", z}}, decode);
  out["image"] = image.at("image");
  return out;
}

namespace {

// A scheduler behind a model's call interface, so TypeScript holds a handle and steps stay native (not a model
// kind: the addon's createScheduler('ddim', schedulerConfig) builds it), then set_timesteps / scale_model_input /
// step / add_noise / get_velocity.
struct SchedulerModel : Model {
  std::unique_ptr<Scheduler> sched;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);

  std::string kind;
  json config;

  SchedulerModel(const json& config, const json& options) : kind(opt<std::string>(options, "scheduler", "")), config(config) {
    sched = make_scheduler(kind, config);
  }

  TensorMap call(const std::string& method, const TensorMap& in, const json& o) override {
    if (method == "sample") {
      // The sampling loop (guided_sample, as the UNet runs it) over the scheduler fixtures' stand-in model
      // ε(x) = a·x + fixed_eps, x being scale_model_input's output: checks the loop against every scheduler.
      const at::Tensor& fixed = need(in, "fixed_eps", "scheduler.sample");
      const double a = opt<double>(o, "a", 0.0);
      EpsModel eps = [&fixed, a](const at::Tensor& x, const at::Tensor&, const at::Tensor&) { return x * a + fixed; };
      TensorMap inputs = in;
      const at::Tensor& latents = need(in, "latents", "scheduler.sample");
      inputs["cond_embeds"] = at::zeros({latents.size(0), 1, 1}, latents.options());
      json opts = o;
      opts["scheduler"] = kind;
      opts["scheduler_config"] = config;
      opts["guidance"] = 1.0;
      return guided_sample(eps, inputs, opts, latents.device(), latents.scalar_type());
    }
    if (method == "set_timesteps") {
      if (!o.contains("steps")) throw Error("scheduler.set_timesteps: option 'steps' is required");
      // The run's first step: `begin`, or the img2img index of `strength`.
      sched->set_timesteps(opt<int64_t>(o, "steps", 50));
      if (o.contains("strength")) sched->set_timesteps(opt<int64_t>(o, "steps", 50), sched->img2img_begin_index(opt<double>(o, "strength", 1.0)));
      else if (o.contains("begin")) sched->set_timesteps(opt<int64_t>(o, "steps", 50), opt<int64_t>(o, "begin", 0));
      gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(opt<int64_t>(o, "seed", 0)));
      TensorMap out{{"timesteps", sched->timesteps.clone()},
                    {"init_noise_sigma", torch::tensor(static_cast<float>(sched->init_noise_sigma))},
                    {"alphas_cumprod", sched->alphas_cumprod.clone()},
                    {"betas", sched->betas.clone()},
                    {"begin_index", torch::tensor(sched->begin_index)},
                    {"order", torch::tensor(sched->order)}};
      if (sched->sigmas.defined()) out["sigmas"] = sched->sigmas.clone();
      return out;
    }
    if (method == "scale_model_input") {
      return {{"sample", sched->scale_model_input(need(in, "sample", "scheduler.scale_model_input"), step_index(o, "scale_model_input"))}};
    }
    if (method == "step") {
      const at::Tensor& mo = need(in, "model_output", "scheduler.step");
      const at::Tensor& sample = need(in, "sample", "scheduler.step");
      if (mo.sizes() != sample.sizes())
        throw Error("scheduler.step: model_output " + shape_str(mo.sizes()) + " and sample " + shape_str(sample.sizes()) + " differ in shape");
      at::Tensor noise = in.count("noise") ? in.at("noise") : at::Tensor();
      StepResult r = sched->step(mo, step_index(o, "step"), sample, noise, &gen);
      TensorMap out{{"prev_sample", r.prev_sample}, {"variance", torch::tensor(static_cast<float>(r.variance))},
                    {"noise_drawn", torch::tensor(r.noise_drawn)}};
      if (r.pred_original_sample.defined()) out["pred_original_sample"] = r.pred_original_sample;
      if (r.noise.defined()) out["noise"] = r.noise;
      return out;
    }
    if (method == "add_noise") {
      return {{"noisy_samples", sched->add_noise(need(in, "original_samples", "scheduler.add_noise"), need(in, "noise", "scheduler.add_noise"),
                                                 need(in, "timesteps", "scheduler.add_noise"))}};
    }
    if (method == "get_velocity") {
      return {{"velocity", sched->get_velocity(need(in, "sample", "scheduler.get_velocity"), need(in, "noise", "scheduler.get_velocity"),
                                               need(in, "timesteps", "scheduler.get_velocity"))}};
    }
    throw Error("scheduler: unknown method '" + method + "' (set_timesteps, scale_model_input, step, add_noise, get_velocity)");
  }

  int64_t step_index(const json& o, const char* who) const {
    if (!o.contains("step")) throw Error(std::string("scheduler.") + who + ": option 'step' (the index into timesteps) is required");
    return opt<int64_t>(o, "step", 0);
  }
};

// Not a model kind: created by the addon's createScheduler (options {scheduler: kind}).
const bool registered = register_component("scheduler", [](const json& c, const json& o) { return std::make_shared<SchedulerModel>(c, o); });

}  // namespace
}  // namespace rt::sd
