"""Technique 4 on the trained model: the step size measured with the model's own score, beside Proposition 3's.

Proposition 3 assumes the data is a single Gaussian and the score exact. With a trained model the chain's own noise
level can be measured at every scale: for a chain x = x_0 + noise of standard deviation s, the score the model gives at
scale sigma has norm about s sqrt(D) / sigma**2, so (sigma ||s(x, sigma)|| / sqrt(D))**2 estimates s**2 / sigma**2, the
quantity Proposition 3 predicts. :func:`empirical_step_size` runs short annealed chains (the run's schedule, a small
batch) at a handful of step sizes around Proposition 3's optimum and reads that estimate where Proposition 3 does, at
the end of each scale's M steps (one more network call per scale, outside the loop, through its callback). The eps
whose chain stays closest to the noise level the model expects is the one with the smallest mean of
|log(s**2 / sigma**2)| over the scales after the first few, where even an exact score's chain at Proposition 3's
optimum is still gathering noise from the sampler's uniform start
(:func:`~ncsn_tune.analysis.noise_level.exact_score_ratios`, whose values for the same eps are reported beside).
It is an empirical check with a handful of chains, not a derivation: the numbers carry the noise of the chains and the
model's errors.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..analysis.noise_level import NOISE_LEVEL_BAND, exact_score_ratios
from ..analysis.step_size import StepSize, optimal_step_size
from ..checks import is_whole
from ..errors import NcsnTuneError, ScheduleError
from .checkpoint import Checkpoint, load_checkpoint, load_model

#: Multiples of Proposition 3's optimum that are tried.
FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class EmpiricalStep:
    """Per step size tried: the estimate of s^2/sigma^2 at every scale (largest first) and its mean |log| over the scales
    from ``judged_from`` on."""

    checkpoint: str
    steps_per_scale: int
    num_chains: int
    seed: int
    sigmas: list[float]
    theoretical: StepSize
    step_sizes: list[float]
    ratios: list[list[float]]
    exact_score: list[list[float]]
    judged_from: int
    seconds: float

    @property
    def misses(self) -> list[float]:
        """Mean over the judged scales of |log(s^2/sigma^2)| for each step size: 0 when the chain sits at the expected noise
        level (NaN or infinite: the chain diverged)."""
        return [float(np.mean(np.abs(np.log(np.maximum(np.nan_to_num(r[self.judged_from:], nan=np.inf), 1e-12)))))
                for r in map(np.asarray, self.ratios)]

    @property
    def best_step_size(self) -> float:
        return self.step_sizes[int(np.argmin(self.misses))]

    @property
    def at_edge(self) -> bool:
        """The closest eps is the smallest or largest tried: the best may lie beyond the range."""
        return len(self.step_sizes) > 1 and self.best_step_size in (self.step_sizes[0], self.step_sizes[-1])

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(theoretical=self.theoretical.to_dict(), misses=self.misses, best_step_size=self.best_step_size, at_edge=self.at_edge,
                    empirical=True)
        return data


def empirical_step_size(checkpoint, *, steps_per_scale: int | None = None, factors=FACTORS, num: int = 16, seed: int = 0,
                        device: str = "auto", progress=None) -> EmpiricalStep:
    """For each ``factors`` x Proposition 3's optimum (below sigma_min**2): ``num`` chains of annealed Langevin dynamics
    with the checkpoint's EMA model over its schedule, M = ``steps_per_scale`` (default the run's), from the same
    uniform start (``seed``), and the estimate of s^2/sigma^2 at the end of every scale; beside it, the exact score's
    value. ``progress(done, total, "step sizes")`` after each."""
    import torch

    from .accel import fast_score
    from .sampling import sample_annealed_langevin

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    if not is_whole(num) or num < 1:
        raise NcsnTuneError(f"the number of chains must be at least 1, got {num!r}", fields="num")
    m = int(steps_per_scale or ckpt.steps_per_scale)
    schedule = ckpt.schedule
    best = optimal_step_size(schedule.ratio, m, schedule.sigma_min)
    step_sizes = [best.step_size * f for f in factors if best.step_size * f < schedule.sigma_min**2]
    if not step_sizes:
        raise ScheduleError("no step size to try below sigma_min^2", fields="step_size")
    warm = exact_score_ratios(schedule.sigmas, m, best.step_size, read_after=m) >= NOISE_LEVEL_BAND[0]
    judged_from = min(int(np.argmax(warm)) if warm.any() else 0, schedule.num_scales - 1)
    from ..devices import torch_device
    from .accel import score_batch_size

    dev = torch_device(device)
    most = 4 * score_batch_size(ckpt.image_shape, dev)  # the chains run as one batch of the network
    if num > most:
        raise NcsnTuneError(f"{num:,} chains run as one batch of the network: beyond what this {dev.type.upper()} holds for "
                            f"{'x'.join(map(str, ckpt.image_shape))} images (at most {most:,}; 16 tell the step apart)", fields=("num", "chains"))
    model = load_model(ckpt, device=device)
    dev = next(model.parameters()).device
    shape = (num, model.channels, model.image_size, model.image_size)
    score = fast_score(model, shape)
    sigmas = torch.tensor(schedule.sigmas, dtype=torch.float32, device=dev)
    dim = int(np.prod(shape[1:]))
    t0 = time.perf_counter()
    ratios, exact = [], []
    for k, eps in enumerate(step_sizes):
        generator = torch.Generator(dev).manual_seed(seed)
        x0 = torch.rand(shape, device=dev, generator=generator)
        read = np.zeros(schedule.num_scales)

        def at_scale_end(info, read=read):  # Proposition 3's point: the chain after the scale's M updates
            if not info.get("denoised"):
                s = score(info["x"], sigmas[info["i"]].expand(num)).float().flatten(1).norm(dim=1).mean()
                read[info["i"]] = (info["sigma"] * float(s) / math.sqrt(dim)) ** 2

        with torch.no_grad():
            sample_annealed_langevin(score, x0, sigmas, steps_per_scale=m, step_size=eps, denoise=False, generator=generator,
                                     callback=at_scale_end)
        ratios.append(read.tolist())
        exact.append((exact_score_ratios(schedule.sigmas, m, eps, read_after=m) ** 2).tolist())
        if progress is not None:
            progress(k + 1, len(step_sizes), "step sizes")
    return EmpiricalStep(str(ckpt.path), m, num, seed, schedule.sigmas.tolist(), best, step_sizes, ratios, exact, judged_from,
                         time.perf_counter() - t0)
