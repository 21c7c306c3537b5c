"""Sampling a trained model: load a checkpoint, choose the schedule, M and eps, run batches, collect diagnostics.

Because the network is conditioned on the noise only through the division by
sigma (Technique 3), any geometric schedule, M and eps can be used at sampling
time without retraining.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..analysis.noise_schedule import NoiseSchedule
from ..analysis.step_size import optimal_step_size
from ..errors import NcsnTuneError
from .checkpoint import load_checkpoint, load_model_weights
from .network import NCSNv2
from .sampling import FastScore, sample_annealed_langevin


@dataclass
class SamplingPlan:
    schedule: NoiseSchedule
    steps_per_scale: int
    step_size: float
    denoise: bool
    notes: list[str] = field(default_factory=list)


def load_model(checkpoint: Path, device: torch.device, use_ema: bool = True) -> tuple[NCSNv2, dict]:
    """The model of a checkpoint (file or run folder), with its EMA weights unless ``use_ema`` is False."""
    state = load_checkpoint(checkpoint)
    config = state["config"]
    channels, size, _ = state["image_shape"]
    model = NCSNv2(channels, size, config["ngf"], config["architecture"], sigmas=state["schedule"]["sigmas"])
    load_model_weights(model, state["model"], state["path"])
    if use_ema:
        params = dict(model.named_parameters())
        missing = [k for k in params if k not in state["ema"]]
        if missing:
            raise NcsnTuneError(f"{state['path']} has no EMA value for {missing[0]}; use --no-ema")
        with torch.no_grad():
            for name, value in state["ema"].items():
                params[name].copy_(value)
    return model.to(device).eval(), state


def plan_sampling(state: dict, schedule: NoiseSchedule | None, num_scales: int | None, steps_per_scale: int | None,
                  step_size: float | None, denoise: bool) -> SamplingPlan:
    """The run's schedule, M and eps unless overridden; a changed schedule or M gets Proposition 3's eps."""
    trained = NoiseSchedule.from_dict(state["schedule"])
    notes = []
    if schedule is not None:
        if schedule.dim != trained.dim:
            raise NcsnTuneError(f"the schedule is for D = {schedule.dim} but the model was trained on D = {trained.dim}")
        notes.append("schedule from --schedule")
    else:
        schedule = trained
        notes.append(f"the run's schedule (L = {trained.num_scales})")
    if num_scales is not None:
        schedule = NoiseSchedule(schedule.sigma_max, schedule.sigma_min, num_scales, schedule.dim, source={"num_scales_given": True})
        notes.append(f"--num-scales {num_scales}")
    changed = schedule.num_scales != trained.num_scales or schedule.sigma_max != trained.sigma_max or schedule.sigma_min != trained.sigma_min
    m = steps_per_scale or state["sampling"]["steps_per_scale"]
    if step_size is None:
        if changed or m != state["sampling"]["steps_per_scale"]:
            best = optimal_step_size(schedule.ratio, m, schedule.sigma_min)
            step_size = best.step_size
            notes.append(f"eps from Proposition 3 for M = {m}: {step_size:.6e} (s^2/sigma^2 = {best.variance_ratio:.6f})")
        else:
            step_size = state["sampling"]["step_size"]
            notes.append(f"the run's M = {m} and eps = {step_size:.6e}")
    else:
        notes.append(f"eps = {step_size:g} as given")
    if not (step_size > 0 and math.isfinite(step_size)):
        raise NcsnTuneError(f"the step size must be a positive number, got {step_size}")
    return SamplingPlan(schedule, m, float(step_size), denoise, notes)


class Diagnostics:
    """Per scale: the mean image norm ||x|| and mean sigma * ||s(x, sigma)|| after that scale's M steps.

    For noise of scale sigma the true score has norm ~ sqrt(D) / sigma, so
    sigma ||s|| / sqrt(D) near 1 says the sampler sees the noise level the
    model expects; far from 1 says the chain has drifted from it.
    """

    def __init__(self, num_scales: int, dim: int) -> None:
        self.dim = dim
        self.image_norm = np.zeros(num_scales)
        self.score_norm_sigma = np.zeros(num_scales)
        self.sigmas = np.zeros(num_scales)
        self.count = np.zeros(num_scales)
        self.denoised_image_norm = []
        self.frames: list[np.ndarray] = []

    def __call__(self, info: dict) -> None:
        x, score, i = info["x"], info["score"], info["i"]
        if info.get("denoised"):
            self.denoised_image_norm.append(float(x.flatten(1).norm(dim=1).mean()))
            return
        n = x.shape[0]
        self.image_norm[i] += float(x.flatten(1).norm(dim=1).sum())
        self.score_norm_sigma[i] += float(score.float().flatten(1).norm(dim=1).sum()) * info["sigma"]
        self.sigmas[i] = info["sigma"]
        self.count[i] += n

    def summary(self) -> dict:
        c = np.maximum(self.count, 1)
        snorm = self.score_norm_sigma / c
        return {
            "sigmas": self.sigmas.tolist(),
            "image_norm": (self.image_norm / c).tolist(),
            "score_norm_times_sigma": snorm.tolist(),
            "score_norm_times_sigma_over_sqrt_dim": (snorm / math.sqrt(self.dim)).tolist(),
            "denoised_image_norm": float(np.mean(self.denoised_image_norm)) if self.denoised_image_norm else None,
        }


def generate(model: NCSNv2, plan: SamplingPlan, num: int, batch_size: int, seed: int, fast: bool = True,
             compile: bool = False, progress=None, diagnostics: Diagnostics | None = None, trace_chain: bool = False) -> torch.Tensor:
    """``num`` samples (float, [0, 1]-ish, on the CPU) in batches of ``batch_size``; the same ``seed`` gives the same samples."""
    device = next(model.parameters()).device
    shape = (model.channels, model.image_size, model.image_size)
    batch_size = max(1, min(batch_size, num))
    sigmas = torch.tensor(plan.schedule.sigmas, dtype=torch.float32, device=device)
    score = FastScore(model, (batch_size, *shape), compile=compile) if fast else model
    generator = torch.Generator(device).manual_seed(seed)
    outputs = []
    batches = math.ceil(num / batch_size)
    for b in range(batches):
        x0 = torch.rand((batch_size, *shape), device=device, generator=generator)

        def callback(info, b=b):
            if diagnostics is not None:
                diagnostics(info)
                every = max(1, plan.schedule.num_scales // 16)  # about 16 frames, the last scale and the denoised image
                if trace_chain and b == 0 and (info.get("denoised") or info["i"] % every == 0 or info["i"] == plan.schedule.num_scales - 1):
                    diagnostics.frames.append(info["x"][0].detach().float().clamp(0, 1).cpu().numpy())
            if progress is not None and not info.get("denoised"):
                progress(b * plan.schedule.num_scales + info["i"] + 1, batches * plan.schedule.num_scales, "scales")

        x = sample_annealed_langevin(score, x0, sigmas, plan.steps_per_scale, plan.step_size, plan.denoise, generator, callback)
        outputs.append(x.detach().float().cpu())
    return torch.cat(outputs)[:num]


def to_uint8(samples: torch.Tensor) -> np.ndarray:
    """(N, H, W, C) uint8, clamped to [0, 1] and rounded."""
    return (samples.clamp(0, 1).mul(255).add(0.5).floor().to(torch.uint8)).permute(0, 2, 3, 1).numpy()
