#!/usr/bin/env python3
"""Golden scheduler fixtures from diffusers v0.25.1 itself (commit 1909952826ffb0609f5df172ac7948c46422614d).

Runs diffusers' own scheduler classes over small configs covering every scheduler_config.json option roundtrip
implements, and writes test/fixtures/schedulers/{cases.json,tensors.safetensors} (read by test/sd-scheduler-options.test.ts).

Set-up (no PyPI): Debian's python3-torch, python3-numpy, python3-scipy; the diffusers source at that commit, e.g.
    git --git-dir=<diffusers clone>/.git archive 1909952826ff src/diffusers | tar -x -C /tmp/diffusers
and the safetensors / huggingface_hub stand-ins of ../shared/perf/stubs:
    PYTHONPATH=../shared/perf/stubs:/tmp/diffusers/src /usr/bin/python3 scripts/gen-scheduler-fixtures.py

Each case: a scheduler class and config, a step count, an optional img2img `strength` (the run starts at
timesteps[t_start * order] from add_noise(x0, noise, that timestep), exactly as StableDiffusionImg2ImgPipeline does),
and the rollout with the stand-in model
    model_output_i = 0.1 * scale_model_input(sample_i, t_i) + fixed_eps
Noise a step draws (DDPM, DDIM eta > 0, Euler ancestral, SDE DPM-Solver; Euler draws and discards) comes from a
per-case seeded generator and is recorded per step (`<case>.noise`, zeros for a step that drew none), so the
native side replays it.
Tolerance per case: the same rollout in float64 (inputs .double(); the scheduler's float32 tables unchanged);
atol = 20 x max|fp32 - fp64| floored at 1e-6 x max|ref|, rtol 1e-5 (the project's fixture convention).
"""
import json
import os
import struct
import sys
import warnings

warnings.filterwarnings("ignore")
import numpy as np  # noqa: E402
import torch  # noqa: E402
import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)
import diffusers.schedulers.scheduling_ddpm as m_ddpm  # noqa: E402
import diffusers.schedulers.scheduling_ddim as m_ddim  # noqa: E402
import diffusers.schedulers.scheduling_euler_ancestral_discrete as m_ea  # noqa: E402
import diffusers.schedulers.scheduling_euler_discrete as m_euler  # noqa: E402
import diffusers.schedulers.scheduling_dpmsolver_multistep as m_dpm  # noqa: E402

DIFFUSERS_COMMIT = "1909952826ffb0609f5df172ac7948c46422614d"
assert diffusers.__version__ == "0.25.1", diffusers.__version__
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "schedulers")
SHAPE = (2, 2, 3, 3)  # batch 2: thresholding is per sample
A = 0.1

CLASSES = {
    "DDPMScheduler": DDPMScheduler,
    "DDIMScheduler": DDIMScheduler,
    "PNDMScheduler": PNDMScheduler,
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler,
    "HeunDiscreteScheduler": HeunDiscreteScheduler,
    "LMSDiscreteScheduler": LMSDiscreteScheduler,
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
}

# Recorded noise: every randn_tensor a step calls is drawn here (or replayed for the float64 run).
class NoiseTape:
    def __init__(self):
        self.gen = None
        self.replay = None
        self.drawn = []

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        if self.replay is not None:
            n = self.replay[len(self.drawn)]
        else:
            n = torch.randn(shape, generator=self.gen, dtype=torch.float32)
        self.drawn.append(n)
        return n.to(dtype if dtype is not None else torch.float32)


TAPE = NoiseTape()
for mod in (m_ddpm, m_ddim, m_ea, m_euler, m_dpm):
    mod.randn_tensor = TAPE

SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def case(name, cls, config, steps, strength=None, eta=None):
    return {"name": name, "class": cls, "config": config, "steps": steps, "strength": strength, "eta": eta}


def cases():
    c = []
    # DDPM
    c += [
        case("ddpm_linear_10", "DDPMScheduler", {}, 10),
        case("ddpm_sd_fixed_large_25", "DDPMScheduler", {**SD, "variance_type": "fixed_large", "clip_sample": False}, 25),
        case("ddpm_fixed_small_log", "DDPMScheduler", {**SD, "variance_type": "fixed_small_log"}, 8),
        case("ddpm_thresholding", "DDPMScheduler", {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9}, 10),
        case("ddpm_vpred_trailing_zero_snr", "DDPMScheduler", {**SD, "prediction_type": "v_prediction", "timestep_spacing": "trailing", "rescale_betas_zero_snr": True, "clip_sample": False}, 10),
        case("ddpm_sample_linspace", "DDPMScheduler", {"prediction_type": "sample", "timestep_spacing": "linspace", "clip_sample_range": 2.0}, 7),
        case("ddpm_cosine_offset", "DDPMScheduler", {"beta_schedule": "squaredcos_cap_v2", "steps_offset": 1}, 10),
        case("ddpm_img2img", "DDPMScheduler", {**SD, "clip_sample": False}, 10, strength=0.6),
    ]
    # DDIM
    c += [
        case("ddim_sd_50", "DDIMScheduler", {**SD, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}, 50),
        case("ddim_defaults_10", "DDIMScheduler", {}, 10),
        case("ddim_eta", "DDIMScheduler", {**SD, "clip_sample": False}, 10, eta=0.7),
        case("ddim_thresholding", "DDIMScheduler", {**SD, "thresholding": True, "sample_max_value": 2.0}, 12),
        case("ddim_vpred_zero_snr_trailing", "DDIMScheduler", {**SD, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "clip_sample": False}, 9),
        case("ddim_sample_linspace", "DDIMScheduler", {"prediction_type": "sample", "timestep_spacing": "linspace", "set_alpha_to_one": False}, 6),
        case("ddim_img2img", "DDIMScheduler", {**SD, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}, 20, strength=0.75),
    ]
    # PNDM
    c += [
        case("pndm_plms_sd_20", "PNDMScheduler", {**SD, "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1}, 20),
        case("pndm_prk_10", "PNDMScheduler", {**SD}, 10),
        case("pndm_prk_linear_25", "PNDMScheduler", {"set_alpha_to_one": True}, 25),
        case("pndm_prk_vpred_linspace", "PNDMScheduler", {**SD, "prediction_type": "v_prediction", "timestep_spacing": "linspace"}, 8),
        case("pndm_plms_trailing", "PNDMScheduler", {**SD, "skip_prk_steps": True, "timestep_spacing": "trailing"}, 7),
        case("pndm_plms_img2img", "PNDMScheduler", {**SD, "skip_prk_steps": True, "steps_offset": 1}, 20, strength=0.5),
    ]
    # Euler
    c += [
        case("euler_sd_20", "EulerDiscreteScheduler", {**SD}, 20),
        case("euler_karras_15", "EulerDiscreteScheduler", {**SD, "use_karras_sigmas": True}, 15),
        case("euler_karras_minmax", "EulerDiscreteScheduler", {**SD, "use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0}, 8),
        case("euler_log_linear", "EulerDiscreteScheduler", {**SD, "interpolation_type": "log_linear"}, 9),
        case("euler_leading_offset", "EulerDiscreteScheduler", {**SD, "timestep_spacing": "leading", "steps_offset": 1}, 10),
        case("euler_vpred_trailing_zero_snr", "EulerDiscreteScheduler", {**SD, "prediction_type": "v_prediction", "timestep_spacing": "trailing", "rescale_betas_zero_snr": True}, 10),
        case("euler_vpred_continuous", "EulerDiscreteScheduler", {**SD, "prediction_type": "v_prediction", "timestep_type": "continuous"}, 6),
        case("euler_sample", "EulerDiscreteScheduler", {"prediction_type": "sample"}, 6),
        case("euler_img2img_karras", "EulerDiscreteScheduler", {**SD, "use_karras_sigmas": True}, 20, strength=0.6),
    ]
    # Euler ancestral
    c += [
        case("euler_a_sd_12", "EulerAncestralDiscreteScheduler", {**SD}, 12),
        case("euler_a_leading", "EulerAncestralDiscreteScheduler", {**SD, "timestep_spacing": "leading", "steps_offset": 1}, 8),
        case("euler_a_vpred_zero_snr", "EulerAncestralDiscreteScheduler", {**SD, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, 7),
        case("euler_a_img2img", "EulerAncestralDiscreteScheduler", {**SD}, 10, strength=0.45),
    ]
    # Heun
    c += [
        case("heun_sd_8", "HeunDiscreteScheduler", {**SD}, 8),
        case("heun_karras", "HeunDiscreteScheduler", {**SD, "use_karras_sigmas": True}, 7),
        case("heun_vpred_leading", "HeunDiscreteScheduler", {**SD, "prediction_type": "v_prediction", "timestep_spacing": "leading", "steps_offset": 1}, 6),
        case("heun_sample_clip", "HeunDiscreteScheduler", {"prediction_type": "sample", "clip_sample": True, "clip_sample_range": 0.5}, 5),
        case("heun_exp_trailing", "HeunDiscreteScheduler", {"beta_schedule": "exp", "timestep_spacing": "trailing"}, 6),
        case("heun_img2img", "HeunDiscreteScheduler", {**SD}, 10, strength=0.5),
    ]
    # LMS
    c += [
        case("lms_sd_20", "LMSDiscreteScheduler", {**SD}, 20),
        case("lms_karras", "LMSDiscreteScheduler", {**SD, "use_karras_sigmas": True}, 12),
        case("lms_vpred_leading", "LMSDiscreteScheduler", {**SD, "prediction_type": "v_prediction", "timestep_spacing": "leading", "steps_offset": 1}, 8),
        case("lms_sample_trailing", "LMSDiscreteScheduler", {"prediction_type": "sample", "timestep_spacing": "trailing"}, 6),
        case("lms_img2img", "LMSDiscreteScheduler", {**SD}, 20, strength=0.7),
        case("lms_img2img_karras", "LMSDiscreteScheduler", {**SD, "use_karras_sigmas": True}, 10, strength=0.3),
    ]
    # DPM-Solver multistep
    D = "DPMSolverMultistepScheduler"
    c += [
        case("dpm_o2_sd_20", D, {**SD}, 20),
        case("dpm_o1", D, {**SD, "solver_order": 1}, 8),
        case("dpm_o3_10", D, {**SD, "solver_order": 3}, 10),
        case("dpm_o3_20_no_lower_final", D, {**SD, "solver_order": 3, "lower_order_final": False}, 20),
        case("dpm_o3_heun", D, {**SD, "solver_order": 3, "solver_type": "heun"}, 12),
        case("dpm_o2_heun", D, {**SD, "solver_type": "heun"}, 9),
        case("dpm_euler_at_final", D, {**SD, "euler_at_final": True}, 16),
        case("dpm_karras", D, {**SD, "use_karras_sigmas": True}, 12),
        case("dpm_lu_lambdas", D, {**SD, "use_lu_lambdas": True}, 10),
        case("dpm_thresholding_sample", D, {"prediction_type": "sample", "thresholding": True, "sample_max_value": 1.2}, 8),
        case("dpm_vpred_trailing", D, {**SD, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}, 10),
        case("dpm_leading_offset", D, {**SD, "timestep_spacing": "leading", "steps_offset": 1}, 10),
        case("dpm_noplusplus_o2", D, {**SD, "algorithm_type": "dpmsolver"}, 10),
        case("dpm_noplusplus_o3_heun_vpred", D, {**SD, "algorithm_type": "dpmsolver", "solver_order": 3, "solver_type": "heun", "prediction_type": "v_prediction"}, 10),
        case("dpm_noplusplus_thresholding", D, {**SD, "algorithm_type": "dpmsolver", "thresholding": True, "prediction_type": "sample"}, 7),
        case("dpm_sde_pp_midpoint", D, {**SD, "algorithm_type": "sde-dpmsolver++"}, 10),
        case("dpm_sde_pp_heun", D, {**SD, "algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}, 10),
        case("dpm_sde_midpoint", D, {**SD, "algorithm_type": "sde-dpmsolver"}, 8),
        case("dpm_sde_heun", D, {**SD, "algorithm_type": "sde-dpmsolver", "solver_type": "heun"}, 8),
        case("dpm_lambda_min_clipped", D, {**SD, "lambda_min_clipped": -5.1}, 10),
        case("dpm_deis_alias", D, {**SD, "algorithm_type": "deis", "solver_type": "bh2"}, 10),
        case("dpm_img2img", D, {**SD}, 20, strength=0.6),
        case("dpm_o3_img2img_karras", D, {**SD, "solver_order": 3, "use_karras_sigmas": True}, 12, strength=0.5),
    ]
    return c


def f32(x):
    return float(np.float32(x))


def rollout(sched, spec, x0, noise, eps, dtype, replay=None):
    """One img2img-or-txt2img run; returns (start index, timesteps, sigmas, init_noise_sigma, per-step prev_samples)."""
    TAPE.gen = torch.Generator().manual_seed(1234 + sum(map(ord, spec["name"])))
    TAPE.replay = replay
    TAPE.drawn = []
    steps = spec["steps"]
    sched.set_timesteps(steps)
    timesteps = sched.timesteps
    order = getattr(sched, "order", 1)
    start = 0
    if spec["strength"] is not None:
        # StableDiffusionImg2ImgPipeline.get_timesteps
        init_timestep = min(int(steps * spec["strength"]), steps)
        t_start = max(steps - init_timestep, 0)
        start = t_start * order
        timesteps = sched.timesteps[start:]
        sample = sched.add_noise(x0.to(dtype), noise.to(dtype), timesteps[:1].repeat(x0.shape[0]))
    else:
        sample = noise.to(dtype) * sched.init_noise_sigma
    first = sample.clone()
    outs, step_noise = [], []
    for t in timesteps:
        model_in = sched.scale_model_input(sample, t)
        model_out = A * model_in + eps.to(dtype)
        kwargs = {"eta": spec["eta"]} if spec["eta"] is not None else {}
        before = len(TAPE.drawn)
        sample = sched.step(model_out, t, sample, **kwargs).prev_sample
        outs.append(sample.clone())
        # The noise this step drew (zeros where it drew none, e.g. DDPM at t = 0), aligned with the steps.
        assert len(TAPE.drawn) - before <= 1
        step_noise.append(TAPE.drawn[-1].float() if len(TAPE.drawn) > before else torch.zeros(SHAPE))
    return start, first, torch.stack(outs), list(TAPE.drawn), step_noise


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(SHAPE, generator=g) * 0.8
    noise = torch.randn(SHAPE, generator=g)
    eps = torch.randn(SHAPE, generator=g)
    tensors = {"common.x0": x0, "common.noise": noise, "common.fixed_eps": eps}
    out_cases = []
    for spec in cases():
        cls = CLASSES[spec["class"]]
        sched = cls.from_config(dict(spec["config"]))
        start, first, prevs, drawn, step_noise = rollout(sched, spec, x0, noise, eps, torch.float32)
        sched64 = cls.from_config(dict(spec["config"]))
        _, _, prevs64, _, _ = rollout(sched64, spec, x0, noise, eps, torch.float64, replay=[d.double() for d in drawn])
        diff = (prevs.double() - prevs64).abs().max().item()
        ref_max = prevs.abs().max().item()
        atol = max(20 * diff, 1e-6 * ref_max)
        atol = float(f"{atol:.1g}") if atol > 0 else 1e-7
        if atol < 20 * diff or atol < 1e-6 * ref_max:  # rounding to 1 digit went down: round up instead
            atol = float(f"{atol * 1.5:.1g}")
        name = spec["name"]
        ts = sched.timesteps
        entry = {
            "name": name,
            "class": spec["class"],
            "config": spec["config"],
            "steps": spec["steps"],
            "strength": spec["strength"],
            "eta": spec["eta"],
            "order": getattr(sched, "order", 1),
            "start_index": start,
            "num_rollout_steps": int(prevs.shape[0]),
            "timesteps": [int(t) for t in ts.tolist()] if not ts.is_floating_point() else [f32(t) for t in ts.tolist()],
            "timesteps_dtype": "int64" if not ts.is_floating_point() else "float32",
            "init_noise_sigma": f32(sched.init_noise_sigma),
            "noise_drawn": len(drawn) > 0,
            "atol": atol,
            "rtol": 1e-5,
            "max_abs_fp32_minus_fp64": diff,
        }
        if hasattr(sched, "sigmas") and sched.sigmas is not None and torch.is_tensor(sched.sigmas) and spec["class"] not in ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler"):
            tensors[f"{name}.sigmas"] = sched.sigmas.float()
        tensors[f"{name}.first_sample"] = first
        tensors[f"{name}.prev_samples"] = prevs
        if drawn:
            tensors[f"{name}.noise"] = torch.stack(step_noise)
        out_cases.append(entry)
        print(f"{name}: {prevs.shape[0]} steps from {start}, max|fp32-fp64| {diff:.2e}, atol {atol:g}", file=sys.stderr)
    meta = {
        "what": "diffusers 0.25.1 scheduler rollouts with the stand-in model model_output_i = 0.1 * scale_model_input(sample_i, t_i) + common.fixed_eps",
        "generator": "scripts/gen-scheduler-fixtures.py",
        "diffusers_version": diffusers.__version__,
        "diffusers_commit": DIFFUSERS_COMMIT,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "start": "txt2img: sample_0 = common.noise * init_noise_sigma; img2img (strength set): t_start = steps - min(int(steps*strength), steps), start_index = t_start * order, sample_0 = add_noise(common.x0, common.noise, timesteps[start_index])",
        "stand_in_factor": A,
        "eta": "DDIM's step(eta=...) argument where set",
        "tolerance": "|mine - ref| <= atol + rtol*|ref| per case; atol = 20 x max|fp32 - fp64| (same rollout with float64 inputs) floored at 1e-6 x max|ref|",
        "cases": out_cases,
    }
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    write_safetensors(os.path.join(OUT, "tensors.safetensors"), tensors)


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for k in sorted(tensors):
        t = tensors[k].detach().to(torch.float32).contiguous()
        b = t.numpy().astype("<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


if __name__ == "__main__":
    main()
