"""Technique 4 -- the Langevin step size eps for M steps per scale (Proposition 3).

The step at scale sigma_i is alpha_i = eps * sigma_i**2 / sigma_min**2, with
sigma_min the *smallest* scale (the poster writes sigma_N for it). For data
that is a single point, p_sigma = N(0, sigma**2 I), and Langevin dynamics
started from the previous scale's distribution N(0, ratio**2 sigma_i**2 I) ends
after M steps at N(0, s_i**2 I) with, writing a = eps / sigma_min**2,

    s_i**2 / sigma_i**2 = (1 - a)**(2M) * (ratio**2 - 2 / (2 - a)) + 2 / (2 - a),

independent of i (2 / (2 - a) is the poster's 2a / (1 - (1 - a)**2)). Here
``ratio`` is the schedule's ratio of adjacent scales, sigma_{i-1} / sigma_i
(the paper's gamma in Proposition 3).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import numpy as np

from ..checks import is_real, is_whole
from ..errors import ScheduleError
from ..defaults import SIGMA_MIN
from .roots import brent_root

#: The largest M accepted: beyond it s^2/sigma^2 - 1 falls below 1e-8 and the run would take
#: more than 10^11 network evaluations for a typical schedule.
MAX_STEPS_PER_SCALE = 10**9


def variance_ratio(step_size, ratio, steps_per_scale, sigma_min=SIGMA_MIN):
    """Proposition 3: s**2 / sigma**2 after ``steps_per_scale`` Langevin steps at one scale.

    s**2/sigma**2 = (1 - a)**(2M) (ratio**2 - 2/(2 - a)) + 2/(2 - a),  a = eps / sigma_min**2.

    Vectorised over every argument (NumPy broadcasting). Meaningful for
    0 < a < 1, i.e. 0 < eps < sigma_min**2.
    """
    a = np.asarray(step_size, dtype=np.float64) / np.asarray(sigma_min, dtype=np.float64) ** 2
    ratio = np.asarray(ratio, dtype=np.float64)
    m = np.asarray(steps_per_scale, dtype=np.float64)
    stationary = 2.0 / (2.0 - a)
    decay = np.exp(2.0 * m * np.log1p(-a))
    result = decay * (ratio**2 - stationary) + stationary
    return float(result) if result.ndim == 0 else result


def _slope(a: float, ratio: float, m: int) -> float:
    """d(s^2/sigma^2) / da, with 1 - (1-a)**(2M) taken through expm1 so tiny a keeps its digits."""
    log_q = math.log1p(-a)
    stationary = 2.0 / (2.0 - a)
    return (-math.expm1(2 * m * log_q)) * stationary**2 / 2.0 - 2 * m * math.exp((2 * m - 1) * log_q) * (
        ratio**2 - stationary
    )


def validate_ratio(ratio: float) -> float:
    if not is_real(ratio) or not (
        math.isfinite(ratio) and ratio > 1.0
    ):
        raise ScheduleError(f"the ratio of adjacent scales must be a finite number > 1, got {ratio!r}", fields="ratio")
    return float(ratio)


def validate_steps_per_scale(steps_per_scale: int) -> int:
    if not is_whole(steps_per_scale) or steps_per_scale < 1:
        raise ScheduleError(f"M (Langevin steps per scale) must be a whole number >= 1, got {steps_per_scale!r}", fields="steps_per_scale")
    if steps_per_scale > MAX_STEPS_PER_SCALE:
        raise ScheduleError(
            f"M = {steps_per_scale:,} Langevin steps per scale is beyond any sampling budget; ncsn_tune accepts M up to "
            f"{MAX_STEPS_PER_SCALE:,} (where s^2/sigma^2 is already within 1e-8 of 1)",
            fields="steps_per_scale",
        )
    return int(steps_per_scale)


def validate_sigma_min(sigma_min: float) -> float:
    if not is_real(sigma_min) or not (
        math.isfinite(sigma_min) and sigma_min > 0
    ):
        raise ScheduleError(f"sigma_min must be a positive finite number, got {sigma_min!r}", fields="sigma_min")
    return float(sigma_min)


def validate_step_size(step_size: float, sigma_min: float) -> float:
    """0 < eps < sigma_min**2: at eps >= sigma_min**2 the Langevin step at the smallest scale overshoots
    (a >= 1) and Proposition 3's variance no longer settles."""
    sigma_min = validate_sigma_min(sigma_min)
    if not is_real(step_size) or not (
        math.isfinite(step_size) and step_size > 0
    ):
        raise ScheduleError(f"the step size eps must be a positive finite number, got {step_size!r}", fields="step_size")
    if step_size >= sigma_min**2:
        raise ScheduleError(
            f"the step size eps = {step_size:g} must be below sigma_min^2 = {sigma_min ** 2:g}: at or above it the Langevin "
            f"step at the smallest scale overshoots and s^2/sigma^2 does not settle",
            fields="step_size",
        )
    return float(step_size)


@dataclass(frozen=True)
class StepSize:
    """A step size eps for M steps per scale and what Proposition 3 says of it.

    ``variance_ratio`` is s^2/sigma^2 at this eps for a schedule of ratio
    ``ratio`` ending at ``sigma_min``; ``optimal`` is True when eps is
    Technique 4's optimum (:func:`optimal_step_size`), False when it was given.
    """

    steps_per_scale: int
    step_size: float
    variance_ratio: float
    ratio: float
    sigma_min: float
    optimal: bool = True

    @property
    def snr(self) -> float:
        """The same step as score_sde's and diffusers' corrector ``snr``: their annealed Langevin step at scale sigma
        is 2 (snr sigma)**2, which equals alpha = eps sigma**2 / sigma_min**2 when snr = sqrt(eps / 2) / sigma_min."""
        return snr_of(self.step_size, self.sigma_min)

    def to_dict(self) -> dict:
        return {**asdict(self), "snr": self.snr}

    def scaled(self, factor: float) -> "StepSize":
        """The same step for a schedule whose sigmas are all multiplied by ``factor`` (another pixel range): alpha =
        eps sigma**2 / sigma_min**2 is a squared distance, so eps scales by factor**2; snr and s^2/sigma^2 do not change."""
        return dataclasses.replace(self, step_size=self.step_size * factor**2, sigma_min=self.sigma_min * factor)

    @classmethod
    def given(cls, step_size: float, ratio: float, steps_per_scale: int, sigma_min: float = SIGMA_MIN) -> "StepSize":
        """A given eps (e.g. a published 6.2e-6), with the s^2/sigma^2 it reaches."""
        ratio = validate_ratio(ratio)
        m = validate_steps_per_scale(steps_per_scale)
        eps = validate_step_size(step_size, sigma_min)
        return cls(m, eps, variance_ratio(eps, ratio, m, sigma_min), ratio, float(sigma_min), optimal=False)


def snr_of(step_size: float, sigma_min: float) -> float:
    """snr = sqrt(eps / 2) / sigma_min: score_sde's and diffusers' knob for the step eps."""
    return math.sqrt(step_size / 2.0) / sigma_min


def step_size_of_snr(snr: float, sigma_min: float) -> float:
    """eps = 2 (snr sigma_min)**2, the inverse of :func:`snr_of`."""
    if not is_real(snr) or not (math.isfinite(snr) and snr > 0):
        raise ScheduleError(f"snr must be a positive finite number, got {snr!r}", fields="snr")
    return 2.0 * (snr * sigma_min) ** 2


def optimal_step_size(ratio: float, steps_per_scale: int, sigma_min: float = SIGMA_MIN) -> StepSize:
    """Technique 4: the eps in (0, sigma_min**2) that minimises Proposition 3's s^2/sigma^2.

    For ratio > 1 the s^2/sigma^2 exceeds 1 for every eps (it is a weighted
    mean of ratio**2 > 1 and 2/(2 - a) > 1), so "closest to 1" is its minimum.
    The minimum is found as a root of the analytic derivative in a = eps /
    sigma_min**2: a log grid brackets every sign change from falling to
    rising, Brent's method refines each to machine precision, and the lowest
    of these local minima is returned.
    """
    ratio = validate_ratio(ratio)
    m = validate_steps_per_scale(steps_per_scale)
    sigma_min = validate_sigma_min(sigma_min)
    grid = np.logspace(math.log10(min(1e-16, 1e-4 / m)), math.log10(1.0 - 1e-12), 4001)
    slopes = np.array([_slope(a, ratio, m) for a in grid])
    turns = np.flatnonzero((slopes[:-1] < 0) & (slopes[1:] >= 0))
    candidates = [
        brent_root(lambda a: _slope(a, ratio, m), grid[k], grid[k + 1], xtol=1e-300, rtol=4 * np.finfo(float).eps)
        if slopes[k + 1] != 0
        else grid[k + 1]
        for k in turns
    ]
    ratios = [variance_ratio(a, ratio, m, 1.0) for a in candidates]
    best = int(np.argmin(ratios))
    a = float(candidates[best])
    return StepSize(m, a * sigma_min**2, float(ratios[best]), ratio, sigma_min)
