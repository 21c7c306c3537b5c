"""Technique 4 for the sampler that will run: NCSNv2's annealed Langevin dynamics, score_sde's predictor-corrector
loop and diffusers' ScoreSdeVe pipeline, each modelled under Proposition 3's single-Gaussian assumption.

The model. The data is one point at 0, so p_sigma = N(0, sigma**2 I) and the exact score at noise level sigma is
-x / sigma**2. Every update below then maps N(0, v I) to N(0, v' I), with, writing k for step / sigma_net**2 (the
step relative to the noise level the network is evaluated at):

- a Langevin step x + step s + sqrt(2 step) z:       v' = (1 - k)**2 v + 2 step;
- a predictor x + g2 s + sqrt(w) z:                  v' = (1 - g2 / sigma_net**2)**2 v + w.

What each sampler takes for ``step`` and ``g2`` is read from its source:

- ``ald`` -- NCSNv2's ``anneal_Langevin_dynamics`` (ermongroup/ncsnv2 ``models/__init__.py:20-50``): M steps of
  alpha_i = eps sigma_i**2 / sigma_min**2 at each of the L scales. Proposition 3 gives its ratio in closed form
  (:mod:`.step_size`); score_sde's corrector-only ``ald`` loop (``predictor = 'none'``, ``corrector = 'ald'``,
  the ``ve/ncsn*`` configs) is the same sampler with eps = 2 (snr sigma_min)**2.
- ``pc`` -- score_sde's ``get_pc_sampler`` (yang-song/score_sde_pytorch ``sampling.py:355-409``): for t in
  ``torch.linspace(1, eps, N)`` (``sampling.py:401``; eps = 1e-5 for VE, ``run_lib.py:98``) the corrector's M
  steps, then the predictor (``sampling.py:406-407``). The network is evaluated at sigma(t) = sigma_min
  (sigma_max / sigma_min)**t when the model was trained in continuous time, else at the discrete scale of label
  round((1 - t)(N - 1)) (``models/utils.py:163-170``).
  Predictors: ``reverse_diffusion`` (``sampling.py:191``) with g2 = sigma_k**2 - sigma_{k-1}**2 of the discrete
  sigmas at k = floor(t (N - 1)) (``sde_lib.py:246-254``, sigma_{-1} = 0); ``ancestral_sampling``
  (``sampling.py:213-223``), the same drift with noise of variance sigma_{k-1}**2 g2 / sigma_k**2 instead of g2;
  ``euler_maruyama`` (``sampling.py:177``) with g2 = 2 log(sigma_max / sigma_min) sigma(t)**2 / N; ``none``.
  Correctors: ``langevin`` (``sampling.py:254-282``) with step = 2 (snr ||z|| / ||s||)**2, which for the Gaussian
  is 2 snr**2 sigma_net**4 / v in the limit of many dimensions (||z|| / ||s|| -> sigma_net**2 / sqrt(v); the
  batch-mean norms make it exact up to O(1/(chains D))); ``ald`` (``sampling.py:286-319``) with step =
  2 (snr sigma(t))**2; ``none``.
- ``diffusers`` -- ``ScoreSdeVePipeline`` (``pipelines/deprecated/score_sde_ve/pipeline_score_sde_ve.py:85-100``
  in diffusers 0.42): ``ScoreSdeVeScheduler.step_correct`` (the ``langevin`` corrector, ``correct_steps`` times)
  then ``step_pred`` (the ``reverse_diffusion`` predictor) for t in ``linspace(1, sampling_eps, num_inference_steps)``,
  the network at the continuous sigma(t): score_sde's PC loop with a continuous model, N = ``num_inference_steps``.

The criterion. Technique 4 asks for the step that leaves the chain at the noise level the model expects,
s**2 / sigma**2 as close to 1 as possible, after the Langevin steps at a scale.

- ``ald``: Proposition 3 exactly -- each scale starts from the previous scale's marginal N(0, sigma_{i-1}**2 I)
  and the ratio after its M steps is the same at every scale. Optimised over eps, it is the paper's Technique 4
  (:func:`~.step_size.optimal_step_size`), unchanged. Run through the whole chain instead, each scale starts
  from where the last one ended and the excess compounds (:func:`annealed_chain_ratio` reports it).
- samplers with a predictor or an adaptive (``langevin``) corrector: there is no closed form and no scale starts
  fresh -- the predictor carries the chain from one level to the next, the corrector pulls it back toward the
  level. The criterion is the ratio the loop itself reaches: v / sigma_net**2 after the corrector steps at the
  last level (t = eps), from the prior N(0, sigma_max**2 I); it settles within a few levels and then varies
  by less than 1e-3 along the chain. Optimised over snr (a log grid, then zoomed to 1e-7 in log10 snr).

Real data is not a single Gaussian: these numbers are exact for the model and an approximation for images.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import numpy as np

from ..checks import is_whole
from ..errors import ScheduleError
from .noise_schedule import geometric_sigmas, ratio_for_num_scales, validate_range
from .step_size import (
    StepSize,
    optimal_step_size,
    snr_of,
    step_size_of_snr,
    validate_steps_per_scale,
    variance_ratio,
)

SAMPLERS = ("ald", "pc", "diffusers")
PREDICTORS = ("reverse_diffusion", "ancestral_sampling", "euler_maruyama", "none")
CORRECTORS = ("langevin", "ald", "none")
#: The predictors and correctors the bundled model's loop runs (score_sde's names; no Euler-Maruyama there).
MODEL_PREDICTORS = ("reverse_diffusion", "ancestral_sampling", "none")
MODEL_CORRECTORS = CORRECTORS
#: score_sde's end time for VE samplers (run_lib.py:98) and diffusers' ScoreSdeVeScheduler default.
SAMPLING_EPS = 1e-5
#: The snr searched for an optimum: above about 0.7 a Langevin step overshoots the smallest scale.
SNR_RANGE = (1e-4, 0.7)
#: Steps of a loop modelled at most (N (M + 1)): the recursion runs step by step, about 27 us a step for an optimum
#: (five passes over a grid of snr), so this is about two minutes on one CPU core; far beyond any sampler in use.
MAX_EVALUATIONS = 4 * 10**6
#: Seconds per modelled step when an optimum is searched (measured on 2 CPU cores).
SECONDS_PER_STEP = 27e-6


@dataclass(frozen=True)
class Sampler:
    """Which loop runs: ``name`` ald (NCSNv2), pc (score_sde) or diffusers (ScoreSdeVePipeline), its predictor and
    corrector, the end time ``sampling_eps`` of the t grid, and whether the network takes the continuous sigma(t)
    (score_sde's ``training.continuous``)."""

    name: str = "ald"
    predictor: str = "none"
    corrector: str = "ald"
    sampling_eps: float = SAMPLING_EPS
    continuous: bool = True

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ScheduleError(f"unknown sampler {self.name!r}; choose one of {', '.join(SAMPLERS)}", fields="sampler")
        if self.predictor not in PREDICTORS:
            raise ScheduleError(f"unknown predictor {self.predictor!r}; choose one of {', '.join(PREDICTORS)}", fields="predictor")
        if self.corrector not in CORRECTORS:
            raise ScheduleError(f"unknown corrector {self.corrector!r}; choose one of {', '.join(CORRECTORS)}", fields="corrector")
        if self.name == "ald" and (self.predictor, self.corrector) != ("none", "ald"):
            raise ScheduleError("NCSNv2's annealed Langevin dynamics has no predictor and the ald corrector; for others use "
                                "the pc sampler", fields=("sampler", "predictor", "corrector"))
        if self.name == "diffusers" and ((self.predictor, self.corrector) != ("reverse_diffusion", "langevin") or not self.continuous):
            raise ScheduleError("diffusers' ScoreSdeVePipeline runs the reverse_diffusion predictor and the langevin corrector on "
                                "the continuous sigma(t)", fields=("predictor", "corrector"))
        if not (isinstance(self.sampling_eps, (int, float)) and 0 < self.sampling_eps < 1):
            raise ScheduleError(f"sampling_eps must lie in (0, 1), got {self.sampling_eps!r}", fields="sampling_eps")

    @classmethod
    def named(cls, name: str, predictor: str | None = None, corrector: str | None = None, *,
              sampling_eps: float = SAMPLING_EPS, continuous: bool = True) -> "Sampler":
        """``ald``, ``pc`` (score_sde's defaults for VE: reverse_diffusion + langevin) or ``diffusers``, with the
        predictor and corrector given for ``pc``."""
        if name == "pc":
            return cls("pc", predictor or "reverse_diffusion", corrector or "langevin", sampling_eps, continuous)
        if name == "diffusers":
            return cls("diffusers", predictor or "reverse_diffusion", corrector or "langevin", sampling_eps, True)
        return cls(name, predictor or "none", corrector or "ald", sampling_eps, continuous)

    @property
    def annealed_langevin(self) -> bool:
        """Annealed Langevin dynamics (no predictor, the ald corrector): Proposition 3 holds in closed form."""
        return self.predictor == "none" and self.corrector == "ald"

    @property
    def langevin_steps(self) -> bool:
        return self.corrector != "none"

    def describe(self) -> str:
        if self.name == "ald":
            return "NCSNv2's annealed Langevin dynamics"
        if self.name == "diffusers":
            return "diffusers' ScoreSdeVePipeline (langevin corrector, then reverse_diffusion predictor)"
        if self.annealed_langevin:
            return "score_sde's corrector-only ald loop (annealed Langevin dynamics, as NCSNv2's)"
        if self.predictor == "none" and self.corrector == "none":
            return "score_sde's loop with neither a predictor nor a corrector"
        if self.predictor == "none":
            return f"score_sde's corrector-only {self.corrector} loop"
        if self.corrector == "none":
            return f"score_sde's predictor-only {self.predictor} loop"
        return f"score_sde's PC sampler (corrector {self.corrector}, then predictor {self.predictor})"

    def to_dict(self) -> dict:
        return asdict(self)


def time_grid(num_steps: int, sampling_eps: float = SAMPLING_EPS) -> np.ndarray:
    """``torch.linspace(1, sampling_eps, N)`` in float32, value for value: torch fills the first half from the start
    and the second half back from the end (its CPU kernel), and the predictor's index floor(t (N - 1)) depends on
    the last bit."""
    start, end = np.float32(1.0), np.float32(sampling_eps)
    if num_steps == 1:
        return np.array([start], dtype=np.float32)
    step = np.float32((end - start) / np.float32(num_steps - 1))
    i = np.arange(num_steps)
    out = np.where(i < num_steps // 2, start + i.astype(np.float32) * step, end - (num_steps - 1 - i).astype(np.float32) * step)
    return out.astype(np.float32)


def _check_loop(sigma_max: float, sigma_min: float, num_steps: int, steps_per_scale: int) -> tuple[float, float, int, int]:
    sigma_max, sigma_min = validate_range(sigma_max, sigma_min)
    if not is_whole(num_steps) or num_steps < 2:
        raise ScheduleError(f"the number of sampling steps N must be a whole number >= 2, got {num_steps!r}", fields="num_scales")
    m = validate_steps_per_scale(steps_per_scale)
    if int(num_steps) * (m + 1) > MAX_EVALUATIONS:
        steps = int(num_steps) * (m + 1)
        raise ScheduleError(f"N = {num_steps:,} levels with M = {m:,} corrector steps each is {steps:,} steps of the loop to model, "
                            f"about {steps * SECONDS_PER_STEP / 60:,.0f} minutes (ncsn_tune models up to {MAX_EVALUATIONS:,}, far beyond "
                            "any sampler in use); use fewer levels or steps per level", fields=("num_scales", "steps_per_scale"))
    return sigma_max, sigma_min, int(num_steps), m


@dataclass(frozen=True)
class ChainVariance:
    """The variance recursion of a predictor-corrector loop: at each step i, the network's sigma and the ratio
    v / sigma_net**2 after the corrector steps (before the predictor). ``ratios`` has one row per step and one column
    per snr asked for."""

    times: np.ndarray
    network_sigmas: np.ndarray
    ratios: np.ndarray

    @property
    def final(self) -> np.ndarray:
        """The criterion: the ratio after the corrector steps at the last level (t = eps)."""
        return self.ratios[-1]


def chain_variance(sampler: Sampler, sigma_max: float, sigma_min: float, num_steps: int, steps_per_scale: int,
                   snr) -> ChainVariance:
    """The single-Gaussian variance recursion of the loop ``sampler`` runs (this module's docstring), from the
    prior N(0, sigma_max**2 I), vectorised over ``snr`` (a number or an array)."""
    sigma_max, sigma_min, n, m = _check_loop(sigma_max, sigma_min, num_steps, steps_per_scale)
    snr = np.atleast_1d(np.asarray(snr, dtype=np.float64))
    t = time_grid(n, sampler.sampling_eps)
    if sampler.name == "ald":  # NCSNv2's loop: the L scales themselves, the network at sigma_i
        continuous_sigma = geometric_sigmas(sigma_max, sigma_min, n)
        t = np.linspace(1.0, 0.0, n)
    else:
        continuous_sigma = sigma_min * (sigma_max / sigma_min) ** t.astype(np.float64)
    ascending = geometric_sigmas(sigma_max, sigma_min, n)[::-1]  # score_sde's VESDE.discrete_sigmas
    if sampler.continuous or sampler.name == "ald":
        network = continuous_sigma
    else:
        labels = np.round((np.float32(1.0) - t) * np.float32(n - 1)).astype(np.int64)
        network = ascending[::-1][labels]
    index = np.floor(t * np.float32(n - 1)).astype(np.int64)  # the predictor's k = floor(t (N - 1))
    log_range = 2.0 * math.log(sigma_max / sigma_min)
    v = np.full_like(snr, sigma_max**2)
    ratios = np.empty((n, snr.size))
    for i in range(n):
        s2 = network[i] ** 2
        for _ in range(m if sampler.langevin_steps else 0):
            if sampler.corrector == "langevin":
                step = 2.0 * snr**2 * s2**2 / v
            elif sampler.name == "ald":
                step = 2.0 * (snr * sigma_min) ** 2 * continuous_sigma[i] ** 2 / sigma_min**2
            else:
                step = 2.0 * (snr * continuous_sigma[i]) ** 2
            v = (1.0 - step / s2) ** 2 * v + 2.0 * step
        ratios[i] = v / s2
        if sampler.predictor in ("reverse_diffusion", "ancestral_sampling"):
            k = index[i]
            previous = ascending[k - 1] ** 2 if k > 0 else 0.0
            g2 = ascending[k] ** 2 - previous
            noise = g2 if sampler.predictor == "reverse_diffusion" else previous * g2 / ascending[k] ** 2
        elif sampler.predictor == "euler_maruyama":
            g2 = noise = continuous_sigma[i] ** 2 * log_range / n
        else:
            continue
        v = (1.0 - g2 / s2) ** 2 * v + noise
    return ChainVariance(t, network, ratios)


def annealed_chain_ratio(sigma_max: float, sigma_min: float, num_scales: int, steps_per_scale: int, step_size: float) -> float:
    """NCSNv2's loop run through all scales from N(0, sigma_max**2 I), each scale starting where the last ended:
    s**2 / sigma_min**2 at the last scale (Proposition 3 compounded; for comparison, not optimised)."""
    return float(chain_variance(Sampler(), sigma_max, sigma_min, num_scales, steps_per_scale, snr_of(step_size, sigma_min)).final[0])


@dataclass(frozen=True)
class SamplerStep:
    """A step for ``sampler`` and what the model says of it.

    ``snr``: score_sde's and diffusers' knob (None: the sampler takes no Langevin steps); ``step_size``: eps =
    2 (snr sigma_min)**2, NCSNv2's step_lr (exact for ald; for langevin only the step it would take if ||s|| were
    sqrt(D) / sigma). ``variance_ratio``: the criterion (this module's docstring) at this snr; ``chain_ratio`` the
    same sampler run through the whole chain (equal to it except for ald). ``optimal``: the snr is the optimum.
    """

    sampler: Sampler
    num_scales: int
    steps_per_scale: int
    snr: float | None
    variance_ratio: float
    chain_ratio: float
    sigma_max: float
    sigma_min: float
    optimal: bool
    criterion: str

    @property
    def step_size(self) -> float | None:
        return None if self.snr is None else step_size_of_snr(self.snr, self.sigma_min)

    @property
    def exact(self) -> bool:
        """Whether the sampler's step is exactly eps (ald) rather than an snr times a norm ratio (langevin)."""
        return self.sampler.annealed_langevin

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(sampler=self.sampler.to_dict(), step_size=self.step_size, exact_map=self.exact)
        return data

    def scaled(self, factor: float) -> "SamplerStep":
        """The same step for the schedule with every sigma multiplied by ``factor`` (another pixel range): snr and every
        ratio s^2/sigma^2 are unchanged (eps scales by factor**2 through sigma_min)."""
        return dataclasses.replace(self, sigma_max=self.sigma_max * factor, sigma_min=self.sigma_min * factor)


PROPOSITION_3 = "Proposition 3: s^2/sigma^2 after M steps at a scale that starts from the previous scale's marginal (the same at every scale)"
CHAIN = "the loop's own chain from N(0, sigma_max^2 I): s^2/sigma^2 after the corrector steps at the last level"


def sampler_step(sampler: Sampler, sigma_max: float, sigma_min: float, num_scales: int, steps_per_scale: int,
                 snr: float | None = None) -> SamplerStep:
    """The criterion for a given ``snr`` (None: the optimum; the step of a sampler without Langevin steps)."""
    sigma_max, sigma_min, n, m = _check_loop(sigma_max, sigma_min, num_scales, steps_per_scale)
    if snr is not None:
        eps = step_size_of_snr(snr, sigma_min)  # validates snr
    if sampler.annealed_langevin:
        ratio = ratio_for_num_scales(sigma_max, sigma_min, n)
        if snr is None:
            step: StepSize = optimal_step_size(ratio, m, sigma_min)
        else:
            step = StepSize(m, eps, float(variance_ratio(eps, ratio, m, sigma_min)), ratio, sigma_min, optimal=False)
        chain = annealed_chain_ratio(sigma_max, sigma_min, n, m, step.step_size) if step.step_size < sigma_min**2 else math.inf
        return SamplerStep(sampler, n, m, step.snr, step.variance_ratio, chain, sigma_max, sigma_min, snr is None, PROPOSITION_3)
    if not sampler.langevin_steps:
        ratio = float(chain_variance(sampler, sigma_max, sigma_min, n, m, 0.0).final[0])
        return SamplerStep(sampler, n, m, None, ratio, ratio, sigma_max, sigma_min, False, CHAIN)
    optimal = snr is None
    if optimal:
        snr = optimal_snr(sampler, sigma_max, sigma_min, n, m)
    ratio = float(chain_variance(sampler, sigma_max, sigma_min, n, m, snr).final[0])
    return SamplerStep(sampler, n, m, float(snr), ratio, ratio, sigma_max, sigma_min, optimal, CHAIN)


def optimal_snr(sampler: Sampler, sigma_max: float, sigma_min: float, num_scales: int, steps_per_scale: int) -> float:
    """The snr in :data:`SNR_RANGE` whose chain ratio is closest to 1 (a log grid, then three zooms)."""
    lo, hi = (math.log10(v) for v in SNR_RANGE)
    grid = np.logspace(lo, hi, 241)
    for _ in range(5):
        with np.errstate(over="ignore", invalid="ignore"):
            miss = np.abs(chain_variance(sampler, sigma_max, sigma_min, num_scales, steps_per_scale, grid).final - 1.0)
        miss = np.where(np.isfinite(miss), miss, np.inf)
        k = int(np.argmin(miss))
        grid = np.logspace(math.log10(grid[max(k - 1, 0)]), math.log10(grid[min(k + 1, grid.size - 1)]), 41)
    return float(grid[20])


# --------------------------------------------------------------------------- the same loops with particles


@dataclass(frozen=True)
class SamplerCheck:
    """One predictor-corrector loop run with particles against :func:`~.samplers.chain_variance`'s prediction:
    s^2/sigma_net^2 after the corrector steps at the last level."""

    sampler: dict
    num_scales: int
    steps_per_scale: int
    snr: float | None
    dim: int
    num_chains: int
    predicted_ratio: float
    measured_ratio: float
    standard_error: float

    @property
    def z(self) -> float:
        return (self.measured_ratio - self.predicted_ratio) / self.standard_error

    def to_dict(self) -> dict:
        return {**asdict(self), "z": self.z}


def simulate_sampler(sampler, sigma_max: float, sigma_min: float, num_scales: int, steps_per_scale: int, snr: float | None,
                     dim: int = 3072, num_chains: int = 16, seed: int = 0, progress=None) -> SamplerCheck:
    """score_sde's PC loop (or diffusers', or NCSNv2's) with particles: x (chains, D) from N(0, sigma_max**2 I), the exact
    score -x / sigma_net**2, the corrector's step as its source computes it (``langevin``: 2 (snr ||z|| / ||s||)**2
    with the norms averaged over the batch; ``ald``: 2 (snr sigma(t))**2), the predictor's as its source does
    (``reverse_diffusion``: the discrete sigmas at floor(t (N - 1)); ``euler_maruyama``: dt = 1 / N). The measured
    ratio is the mean of x**2 / sigma_net**2 after the corrector steps at the last level; its standard error
    ratio * sqrt(2 / (chains D)) is that of independent coordinates (the batch-shared langevin step adds a common
    term of the same order, so agreement is judged within a few standard errors)."""
    from .simulation import check_simulation_size

    for name, value in (("dim", dim), ("num_chains", num_chains)):
        if not is_whole(value) or value < 1:
            raise ScheduleError(f"{name} must be a whole number >= 1, got {value!r}", fields=name)
    n, m = int(num_scales), validate_steps_per_scale(steps_per_scale)
    check_simulation_size(int(num_chains) * int(dim) * n * (m + 1), "normal numbers", ("num_chains", "dim", "steps_per_scale"))
    rng = np.random.default_rng(seed)
    ascending = np.exp(np.linspace(math.log(sigma_min), math.log(sigma_max), n))
    if sampler.name == "ald":
        t = np.linspace(1.0, 0.0, n)
        sigma_t = geometric_sigmas(sigma_max, sigma_min, n)
    else:
        t = time_grid(n, sampler.sampling_eps)
        sigma_t = sigma_min * (sigma_max / sigma_min) ** t.astype(np.float64)
    if sampler.continuous or sampler.name == "ald":
        net = sigma_t
    else:
        net = ascending[::-1][np.round((np.float32(1.0) - t) * np.float32(n - 1)).astype(np.int64)]
    x = rng.standard_normal((num_chains, dim)) * sigma_max
    measured = math.nan
    for i in range(n):
        score = lambda y: -y / net[i] ** 2  # noqa: E731 -- the exact score of N(0, sigma_net^2 I)
        for _ in range(m if sampler.corrector != "none" else 0):
            z = rng.standard_normal(x.shape)
            if sampler.corrector == "langevin":
                grad = score(x)
                step = 2.0 * (snr * np.linalg.norm(z, axis=1).mean() / np.linalg.norm(grad, axis=1).mean()) ** 2
            elif sampler.name == "ald":
                step = (2.0 * (snr * sigma_min) ** 2) * sigma_t[i] ** 2 / sigma_min**2
            else:
                step = 2.0 * (snr * sigma_t[i]) ** 2
            x = x + step * score(x) + math.sqrt(2.0 * step) * z
        if i == n - 1:
            measured = float(np.mean(x * x) / net[i] ** 2)
        if sampler.predictor in ("reverse_diffusion", "ancestral_sampling"):
            k = int(np.floor(t[i] * np.float32(n - 1)))
            sigma, adjacent = ascending[k], (ascending[k - 1] if k > 0 else 0.0)
            g2 = sigma**2 - adjacent**2
            std = math.sqrt(g2) if sampler.predictor == "reverse_diffusion" else math.sqrt(adjacent**2 * g2 / sigma**2)
            x = x + g2 * score(x) + std * rng.standard_normal(x.shape)
        elif sampler.predictor == "euler_maruyama":
            g2 = sigma_t[i] ** 2 * 2.0 * math.log(sigma_max / sigma_min) / n
            x = x + g2 * score(x) + math.sqrt(g2) * rng.standard_normal(x.shape)
        if progress is not None:
            progress(i + 1, n, "levels")
    predicted = float(chain_variance(sampler, sigma_max, sigma_min, n, m, snr or 0.0).final[0])
    se = float(measured * math.sqrt(2.0 / (num_chains * dim)))
    return SamplerCheck(sampler.to_dict(), n, m, snr, int(dim), int(num_chains), predicted, measured, se)
