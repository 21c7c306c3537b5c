"""Technique 4 -- the Langevin step size eps for M steps per scale (Proposition 3).

The step at scale sigma_i is alpha_i = eps * sigma_i**2 / sigma_min**2, with
sigma_min the *smallest* scale (the poster writes sigma_N for it). For data
that is a single point, p_sigma = N(0, sigma**2 I), and Langevin dynamics
started from the previous scale's distribution N(0, gamma**2 sigma_i**2 I)
ends after M steps at N(0, s_i**2 I) with, writing a = eps / sigma_min**2,

    s_i**2 / sigma_i**2 = (1 - a)**(2M) * (gamma**2 - 2 / (2 - a)) + 2 / (2 - a),

independent of i (2 / (2 - a) is the poster's 2a / (1 - (1 - a)**2)).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize

from ..errors import ScheduleError


def variance_ratio(step_size, gamma, steps_per_scale, sigma_min=0.01):
    """Proposition 3: s**2 / sigma**2 after ``steps_per_scale`` Langevin steps at one scale.

    ratio = (1 - a)**(2M) (gamma**2 - 2/(2 - a)) + 2/(2 - a),  a = eps / sigma_min**2.

    Vectorised over every argument (NumPy broadcasting). Meaningful for
    0 < a < 1, i.e. 0 < eps < sigma_min**2.
    """
    a = np.asarray(step_size, dtype=np.float64) / np.asarray(sigma_min, dtype=np.float64) ** 2
    gamma = np.asarray(gamma, dtype=np.float64)
    m = np.asarray(steps_per_scale, dtype=np.float64)
    stationary = 2.0 / (2.0 - a)
    decay = np.exp(2.0 * m * np.log1p(-a))
    result = decay * (gamma**2 - stationary) + stationary
    return float(result) if result.ndim == 0 else result


def _slope(a: float, gamma: float, m: int) -> float:
    """d ratio / d a, with 1 - (1-a)**(2M) taken through expm1 so tiny a keeps its digits."""
    log_q = math.log1p(-a)
    stationary = 2.0 / (2.0 - a)
    return (-math.expm1(2 * m * log_q)) * stationary**2 / 2.0 - 2 * m * math.exp((2 * m - 1) * log_q) * (
        gamma**2 - stationary
    )


@dataclass(frozen=True)
class StepSize:
    """The step size eps that brings Proposition 3's ratio closest to 1 for M steps per scale."""

    steps_per_scale: int
    step_size: float
    variance_ratio: float
    gamma: float
    sigma_min: float

    def to_dict(self) -> dict:
        return asdict(self)


def _validate(gamma: float, steps_per_scale: int, sigma_min: float) -> None:
    if not (math.isfinite(gamma) and gamma > 1.0):
        raise ScheduleError(f"the ratio gamma must be a finite number > 1, got {gamma!r}")
    if isinstance(steps_per_scale, bool) or not isinstance(steps_per_scale, (int, np.integer)) or steps_per_scale < 1:
        raise ScheduleError(f"M (steps per scale) must be a whole number >= 1, got {steps_per_scale!r}")
    if not (math.isfinite(sigma_min) and sigma_min > 0):
        raise ScheduleError(f"sigma_min must be a positive finite number, got {sigma_min!r}")


def optimal_step_size(gamma: float, steps_per_scale: int, sigma_min: float = 0.01) -> StepSize:
    """Technique 4: the eps in (0, sigma_min**2) that minimises Proposition 3's ratio.

    For gamma > 1 the ratio exceeds 1 for every eps (it is a weighted mean of
    gamma**2 > 1 and 2/(2 - a) > 1), so "closest to 1" is its minimum. The
    minimum is found as a root of the analytic derivative in a = eps /
    sigma_min**2: a log grid brackets every sign change from falling to
    rising, Brent's method refines each to machine precision, and the lowest
    of these local minima is returned.
    """
    _validate(gamma, steps_per_scale, sigma_min)
    m = int(steps_per_scale)
    grid = np.logspace(-16, math.log10(1.0 - 1e-12), 4001)
    slopes = np.array([_slope(a, gamma, m) for a in grid])
    turns = np.flatnonzero((slopes[:-1] < 0) & (slopes[1:] >= 0))
    candidates = [
        optimize.brentq(_slope, grid[k], grid[k + 1], args=(gamma, m), xtol=1e-300, rtol=4 * np.finfo(float).eps)
        if slopes[k + 1] != 0
        else grid[k + 1]
        for k in turns
    ]
    ratios = [variance_ratio(a, gamma, m, 1.0) for a in candidates]
    best = int(np.argmin(ratios))
    a = float(candidates[best])
    return StepSize(m, a * sigma_min**2, float(ratios[best]), float(gamma), float(sigma_min))
