"""Simulations that check the theory: Proposition 3 by Monte Carlo, and the paper's Figure 2 experiment.

Both run annealed Langevin dynamics with an exact score, in NumPy (vectorised
over chains and dimensions).

Proposition 3 (``simulate_proposition3``): the data is one point at 0, so
p_sigma = N(0, sigma**2 I) and the score is -x / sigma**2. Every coordinate
of every chain then evolves independently, x <- (1 - a) x + sqrt(2 alpha) z
with a = eps / sigma_min**2, and the measured s**2/sigma**2 is the mean of
x**2 / sigma**2 over chains and coordinates, with standard error
ratio * sqrt(2 / (chains * D)).

- ``mode="per-scale"`` starts every scale from N(0, sigma_{i-1}**2 I), the
  proposition's own assumption, so every scale should measure Proposition 3's
  ratio.
- ``mode="annealed"`` runs the chains through all scales without reset, as a
  sampler does; the prediction is then Proposition 3's update compounded
  (r_i = (1-a)**(2M) (ratio**2 r_{i-1} - 2/(2-a)) + 2/(2-a)), which equals the
  proposition's formula only at the first scale.

Figure 2 (``gmm_experiment``): a mixture of point masses (or isotropic
Gaussians of std ``tau``) with unequal weights; the score of the noised
mixture is exact. Sampling from a uniform start with sigma_max far below the
distance between the modes leaves each chain in the basin it started in, so
the modes' shares follow the basins, not the weights; with Technique 1's
sigma_max the shares match the weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import special

from ..checks import is_whole
from ..errors import ScheduleError
from ..defaults import SIGMA_MIN, TARGET_OVERLAP
from .step_size import (
    StepSize,
    optimal_step_size,
    validate_step_size,
    validate_steps_per_scale,
    variance_ratio,
)

#: The most random numbers a simulation draws: about 13 minutes at the ~60 million per second NumPy reaches on one core.
MAX_DRAWS = 5 * 10**10
#: Steps of one scale between progress reports when a scale is long.
PROGRESS_STEPS = 1000


def check_simulation_size(draws: int, what: str, fields: tuple[str, ...], rate: float = 6e7) -> None:
    """Refuse, with the estimate, a simulation beyond :data:`MAX_DRAWS` before it starts."""
    if draws > MAX_DRAWS:
        raise ScheduleError(f"this simulation would draw {draws:.3g} {what}, about {draws / rate / 3600:,.1f} hours at the ~{rate / 1e6:.0f} "
                            f"million per second of one CPU core (ncsn_tune runs up to {MAX_DRAWS:.0e}); use fewer chains, dimensions, "
                            "samples or steps per scale", fields=fields)


@dataclass(frozen=True)
class Proposition3Check:
    """Measured and predicted s**2/sigma**2 per scale (largest scale first)."""

    mode: str
    dim: int
    num_chains: int
    steps_per_scale: int
    step_size: float
    sigmas: list[float]
    predicted: list[float]
    measured: list[float]
    standard_errors: list[float]

    @property
    def predicted_ratio(self) -> float:
        return self.predicted[-1]

    @property
    def measured_ratio(self) -> float:
        return self.measured[-1]

    @property
    def standard_error(self) -> float:
        return self.standard_errors[-1]

    @property
    def max_relative_error(self) -> float:
        return float(np.max(np.abs(np.array(self.measured) / np.array(self.predicted) - 1)))

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(predicted_ratio=self.predicted_ratio, measured_ratio=self.measured_ratio, standard_error=self.standard_error,
                    max_relative_error=self.max_relative_error)
        return data


def compounded_ratios(sigmas: np.ndarray, steps_per_scale: int, step_size: float) -> np.ndarray:
    """s_i**2/sigma_i**2 of annealed chains started at N(0, (sigma_1 ratio)**2): Proposition 3's update, compounded.

    With r_0 = 1 at a virtual scale sigma_0 = sigma_1**2 / sigma_2 (one ratio
    above the first), r_i = q (r_{i-1} sigma_{i-1}**2 / sigma_i**2 - 2/(2-a)) + 2/(2-a), q = (1-a)**(2M).
    """
    a = step_size / sigmas[-1] ** 2
    q = (1 - a) ** (2 * steps_per_scale)
    stationary = 2.0 / (2.0 - a)
    prev_sigma = sigmas[0] ** 2 / sigmas[1] if len(sigmas) > 1 else sigmas[0]
    r, out = 1.0, []
    for s in sigmas:
        r = q * (r * (prev_sigma / s) ** 2 - stationary) + stationary
        out.append(r)
        prev_sigma = s
    return np.array(out)


class _NumpyNormals:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def normal(self, size: int):
        return self.rng.standard_normal(size)

    @staticmethod
    def sum_squares(x) -> float:
        return float(np.dot(x, x))


class _TorchNormals:
    """The same arithmetic on a torch device (float64), for GPUs."""

    def __init__(self, seed: int, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def normal(self, size: int):
        return self.torch.randn(size, generator=self.generator, device=self.device, dtype=self.torch.float64)

    @staticmethod
    def sum_squares(x) -> float:
        return float((x * x).sum())


def _normals(seed: int, device: str):
    """NumPy on ``cpu``; torch elsewhere (``cuda``, ``torch:cpu``); ``auto`` as :func:`ncsn_tune.devices.resolve_device` decides."""
    from ..devices import resolve_device

    resolved = resolve_device(device)
    if resolved == "cpu":
        return _NumpyNormals(seed)
    return _TorchNormals(seed, "cpu" if resolved == "torch:cpu" else resolved)


def simulate_proposition3(
    sigmas,
    steps_per_scale: int,
    step_size: float,
    dim: int = 3072,
    num_chains: int = 256,
    mode: str = "per-scale",
    seed: int = 0,
    chunk: int = 1 << 20,
    device: str = "cpu",
    progress=None,
) -> Proposition3Check:
    """Annealed Langevin with the exact score of N(0, sigma**2 I), against Proposition 3 (see the module).

    ``device``: ``cpu`` (NumPy), ``cuda`` (torch on a GPU), ``auto`` or ``torch:cpu``.
    ``progress(done, total, "scales")`` is called after every scale of every chunk of chains.
    """
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if mode not in ("per-scale", "annealed"):
        raise ScheduleError(f"mode must be per-scale or annealed, got {mode!r}", fields="mode")
    if sigmas.ndim != 1 or len(sigmas) < 2 or not np.all(np.diff(sigmas) < 0) or not sigmas[-1] > 0:
        raise ScheduleError("the simulation needs a descending schedule of at least 2 positive scales", fields="num_scales")
    for name, value in (("dim", dim), ("num_chains", num_chains)):
        if not is_whole(value) or value < 1:
            raise ScheduleError(f"{name} must be a whole number >= 1, got {value!r}", fields=name)
    validate_steps_per_scale(steps_per_scale)
    validate_step_size(step_size, float(sigmas[-1]))
    draws = int(num_chains) * int(dim) * len(sigmas) * (int(steps_per_scale) + (mode == "per-scale"))
    check_simulation_size(draws, "normal numbers", ("num_chains", "dim", "steps_per_scale"))
    rng = _normals(seed, device)
    sigma_min = sigmas[-1]
    a = step_size / sigma_min**2
    n = int(num_chains) * int(dim)
    first_prev = sigmas[0] ** 2 / sigmas[1]
    prev = np.concatenate([[first_prev], sigmas[:-1]])
    ratios = prev / sigmas
    if mode == "per-scale":
        predicted = variance_ratio(step_size, ratios, steps_per_scale, sigma_min)
    else:
        predicted = compounded_ratios(sigmas, steps_per_scale, step_size)
    sums = np.zeros(len(sigmas))
    sizes = [min(chunk, n - s) for s in range(0, n, chunk)]
    total = len(sizes) * len(sigmas)
    for c, size in enumerate(sizes):  # chunks of independent scalar chains bound the memory
        x = rng.normal(size) * first_prev
        for i, sigma in enumerate(sigmas):
            if mode == "per-scale":
                x = rng.normal(size) * prev[i]
            alpha = step_size * sigma**2 / sigma_min**2
            noise = math.sqrt(2 * alpha)
            for k in range(steps_per_scale):
                x = (1.0 - a) * x + noise * rng.normal(size)
                if progress is not None and (k + 1) % PROGRESS_STEPS == 0:  # a long scale reports within it too
                    progress(c * len(sigmas) + i + (k + 1) / steps_per_scale, total, "scales")
            sums[i] += rng.sum_squares(x) / sigma**2
            if progress is not None:
                progress(c * len(sigmas) + i + 1, total, "scales")
    measured = sums / n
    se = measured * math.sqrt(2.0 / n)
    return Proposition3Check(mode, int(dim), int(num_chains), int(steps_per_scale), float(step_size), sigmas.tolist(),
                             np.asarray(predicted, dtype=float).tolist(), measured.tolist(), se.tolist())


@dataclass(frozen=True)
class StepSizeSweep:
    """Measured s^2/sigma^2 at one scale for several eps around Technique 4's optimum, for one M."""

    steps_per_scale: int
    step_sizes: list[float]
    measured: list[float]
    standard_errors: list[float]
    optimum: StepSize

    @property
    def lowest_measured_at(self) -> float:
        """The eps whose measured ratio is lowest (it should be the optimum's neighbourhood)."""
        return self.step_sizes[int(np.argmin(self.measured))]

    def to_dict(self) -> dict:
        return {"steps_per_scale": self.steps_per_scale, "step_sizes": self.step_sizes, "measured_ratio": self.measured,
                "standard_error": self.standard_errors, "optimal_step_size": self.optimum.step_size,
                "optimal_variance_ratio": self.optimum.variance_ratio}


def sweep_step_sizes(ratio: float, sigma_min: float, steps_per_scale=(1, 3, 5, 10), factors=(0.25, 0.5, 1.0, 2.0, 4.0),
                     dim: int = 3072, num_chains: int = 64, seed: int = 0, device: str = "cpu") -> list[StepSizeSweep]:
    """For each M, the last scale of a two-scale schedule (ratio, 1) x sigma_min simulated at eps = factor x optimum.

    The measured minimum over eps should fall on Technique 4's optimum; eps at
    or above sigma_min**2 are left out (unstable).
    """
    last_two = np.array([ratio * sigma_min, sigma_min])
    sweeps = []
    for m in steps_per_scale:
        best = optimal_step_size(ratio, m, sigma_min)
        grid = [best.step_size * f for f in factors if best.step_size * f < sigma_min**2]
        runs = [simulate_proposition3(last_two, m, e, dim, num_chains, "per-scale", seed, device=device) for e in grid]
        sweeps.append(StepSizeSweep(m, grid, [r.measured_ratio for r in runs], [r.standard_error for r in runs], best))
    return sweeps


# --------------------------------------------------------------------------- Figure 2: a mixture


@dataclass(frozen=True)
class Mixture:
    """Weights w_k, centres mu_k (K, D) and component std tau (0: point masses)."""

    weights: np.ndarray
    centres: np.ndarray
    tau: float = 0.0

    def score(self, x: np.ndarray, sigma: float) -> np.ndarray:
        """The exact score of the mixture noised at scale sigma: sum_k r_k(x) (mu_k - x) / (tau**2 + sigma**2)."""
        var = self.tau**2 + sigma**2
        d2 = ((x[:, None, :] - self.centres[None]) ** 2).sum(-1)
        logits = np.log(self.weights)[None] - d2 / (2 * var)
        resp = np.exp(logits - special.logsumexp(logits, axis=1, keepdims=True))
        return (resp @ self.centres - x) / var

    def log_density(self, x: np.ndarray, sigma: float) -> np.ndarray:
        var = self.tau**2 + sigma**2
        d = self.centres.shape[1]
        d2 = ((x[:, None, :] - self.centres[None]) ** 2).sum(-1)
        return special.logsumexp(np.log(self.weights)[None] - d2 / (2 * var), axis=1) - 0.5 * d * math.log(2 * math.pi * var)

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Index of the nearest centre of each point."""
        return np.argmin(((x[:, None, :] - self.centres[None]) ** 2).sum(-1), axis=1)


def mixture_on_circle(weights=(0.8, 0.2), separation: float = 10.0, dim: int = 2, tau: float = 0.5) -> Mixture:
    """K modes with the given weights (normalised), evenly spaced on a circle of diameter ``separation`` in the
    first two coordinates (on a line when ``dim`` is 1), each an isotropic Gaussian of std ``tau`` (0: points)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) < 2 or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ScheduleError(f"a mixture needs at least two positive weights, got {np.atleast_1d(w).tolist()}", fields="weights")
    if not is_whole(dim) or dim < 1:
        raise ScheduleError(f"the mixture's dimension must be a whole number >= 1, got {dim!r}", fields="dim")
    if not (math.isfinite(separation) and separation > 0):
        raise ScheduleError(f"the distance between the modes must be a positive number, got {separation!r}", fields="separation")
    if not (math.isfinite(tau) and tau >= 0):
        raise ScheduleError(f"the components' standard deviation tau must be a finite number >= 0, got {tau!r}", fields="tau")
    angles = np.linspace(0, 2 * np.pi, len(w), endpoint=False)
    centres = np.zeros((len(w), dim))
    centres[:, 0] = 0.5 * separation * np.cos(angles)
    if dim > 1:
        centres[:, 1] = 0.5 * separation * np.sin(angles)
    return Mixture(w / w.sum(), centres, float(tau))


def default_mixture(dim: int = 2, separation: float = 10.0, weights=(0.8, 0.2)) -> Mixture:
    """Two modes with unequal weights at opposite corners: (-s/2, ...) and (+s/2, ...) along every axis / sqrt(dim)."""
    direction = np.ones(dim) / math.sqrt(dim)
    centres = np.stack([-0.5 * separation * direction, 0.5 * separation * direction])
    return Mixture(np.asarray(weights, dtype=float), centres)


def sample_mixture_langevin(mixture: Mixture, sigmas, steps_per_scale: int, step_size: float, x0: np.ndarray, rng) -> np.ndarray:
    """Annealed Langevin dynamics with the mixture's exact score."""
    sigmas = np.asarray(sigmas, dtype=float)
    x = x0.copy()
    for sigma in sigmas:
        alpha = step_size * sigma**2 / sigmas[-1] ** 2
        for _ in range(steps_per_scale):
            x = x + alpha * mixture.score(x, sigma) + math.sqrt(2 * alpha) * rng.standard_normal(x.shape)
    return x


@dataclass(frozen=True)
class ModeCoverage:
    label: str
    sigma_max: float
    num_scales: int
    fractions: list[float]
    weights: list[float]
    total_variation: float
    samples: np.ndarray

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("samples")
        return d


#: Working memory the mixture experiment may take.
MAX_MIXTURE_BYTES = 4 * 2**30


def gmm_experiment(
    mixture: Mixture,
    small_sigma_max: float = 1.0,
    sigma_min: float = SIGMA_MIN,
    num_samples: int = 1000,
    steps_per_scale: int = 5,
    target_overlap: float = TARGET_OVERLAP,
    seed: int = 0,
) -> list[ModeCoverage]:
    """Sample the mixture with (a) sigma_max = ``small_sigma_max`` and (b) Technique 1's sigma_max.

    Both use Technique 2's number of scales and Technique 4's step size for
    their range, a uniform start over the box around the modes (widened by
    their separation), and report each mode's share against its weight and the
    total variation distance between the two.
    """
    from .initial_noise_scale import max_pairwise_distance
    from .noise_schedule import NoiseSchedule

    if not (math.isfinite(small_sigma_max) and small_sigma_max > sigma_min):
        raise ScheduleError(f"the small sigma_max must be a number above sigma_min = {sigma_min:g}, got {small_sigma_max!r}",
                            fields="small_sigma_max")
    if not is_whole(num_samples) or num_samples < 1:
        raise ScheduleError(f"the number of samples must be a whole number >= 1, got {num_samples!r}", fields="num_samples")
    rng = np.random.default_rng(seed)
    dim = mixture.centres.shape[1]
    modes = len(mixture.weights)
    need = 4 * num_samples * modes * dim * 8  # the score's (samples, modes, D) temporaries
    if need > MAX_MIXTURE_BYTES:
        raise ScheduleError(f"{num_samples:,} samples of a {modes}-mode mixture in {dim} dimensions need about {need / 2**30:,.1f} GiB of "
                            f"working memory (ncsn_tune allows {MAX_MIXTURE_BYTES / 2**30:g} GiB); use fewer samples", fields="num_samples")
    diameter = max_pairwise_distance(mixture.centres).distance
    lo, hi = mixture.centres.min(0) - diameter / 2, mixture.centres.max(0) + diameter / 2
    x0 = lo + (hi - lo) * rng.random((num_samples, dim))
    results = []
    relation = "below" if small_sigma_max < diameter else "not below"
    small_label = f"sigma_max = {small_sigma_max:g}, {relation} the diameter {diameter:.3g}"
    for label, sigma_max in ((small_label, small_sigma_max), ("Technique 1: sigma_max = diameter", diameter)):
        try:
            num_scales = NoiseSchedule.from_overlap(sigma_max, dim, sigma_min=sigma_min, target_overlap=target_overlap).num_scales
        except ScheduleError:  # D <= 4: the overlap equation has no root; a fixed ratio of 1.5 between scales instead
            num_scales = max(2, int(math.ceil(math.log(sigma_max / sigma_min) / math.log(1.5))) + 1)
        check_simulation_size(num_samples * dim * num_scales * steps_per_scale, "normal numbers", ("num_samples", "steps_per_scale"))
        sigmas = np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_scales))
        ratio = sigmas[0] / sigmas[1]
        eps = optimal_step_size(ratio, steps_per_scale, sigma_min).step_size
        x = sample_mixture_langevin(mixture, sigmas, steps_per_scale, eps, x0, rng)
        counts = np.bincount(mixture.assign(x), minlength=len(mixture.weights))
        fractions = counts / counts.sum()
        tv = 0.5 * float(np.abs(fractions - mixture.weights).sum())
        results.append(ModeCoverage(label, float(sigma_max), num_scales, fractions.tolist(), mixture.weights.tolist(), tv, x))
    return results
