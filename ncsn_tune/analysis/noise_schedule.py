"""Technique 2 -- the noise scales between sigma_max and sigma_min.

Song & Ermon (2020) model the data as a single Gaussian in D dimensions and ask
that adjacent perturbed distributions overlap: with gamma = sigma_{i-1}/sigma_i
the scales form a geometric sequence whose ratio solves

    Phi(sqrt(2D) (gamma - 1) + 3 gamma) - Phi(sqrt(2D) (gamma - 1) - 3 gamma) = C,

C ~= 0.5. Scales are ordered from largest to smallest, sigma_max = sigma_1 >
... > sigma_L = sigma_min, as in the paper and its official code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, special

from ..errors import ScheduleError

#: The overlap of two identical scales (gamma = 1): Phi(3) - Phi(-3).
MAX_OVERLAP = float(special.ndtr(3.0) - special.ndtr(-3.0))


def overlap(gamma, dim):
    """The overlap C that ratio ``gamma`` achieves in ``dim`` dimensions.

    C(gamma) = Phi(sqrt(2D)(gamma-1) + 3 gamma) - Phi(sqrt(2D)(gamma-1) - 3 gamma),

    evaluated as a difference of upper tails when both arguments are positive,
    so that it keeps its relative accuracy far into the tail. Vectorised.
    """
    gamma = np.asarray(gamma, dtype=np.float64)
    centre = math.sqrt(2.0 * dim) * (gamma - 1.0)
    lower, upper = centre - 3.0 * gamma, centre + 3.0 * gamma
    by_cdf = special.ndtr(upper) - special.ndtr(lower)
    by_tail = special.ndtr(-lower) - special.ndtr(-upper)
    result = np.where(lower > 0, by_tail, by_cdf)
    return float(result) if result.ndim == 0 else result


def _validate_overlap_target(target_overlap: float) -> None:
    if not (math.isfinite(target_overlap) and 0.0 < target_overlap < 1.0):
        raise ScheduleError(
            f"the target overlap must lie strictly between 0 and 1, got {target_overlap!r}; "
            "the paper uses 0.5"
        )


def solve_gamma(dim: int, target_overlap: float = 0.5) -> float:
    """The smallest ratio gamma > 1 whose overlap in ``dim`` dimensions equals the target.

    The overlap is Phi(3) - Phi(-3) ~= 0.9973 at gamma = 1. For D >= 5 it falls
    to 0 as gamma grows, so every target below 0.9973 has a root; for D <= 4
    the interval [centre - 3 gamma, centre + 3 gamma] widens faster than its
    centre moves and the overlap never falls below some floor. The root is
    bracketed on a log grid of gamma - 1 and refined with Brent's method to
    machine precision. Raises :class:`ScheduleError` when no root exists.
    """
    _validate_overlap_target(target_overlap)
    if not (isinstance(dim, (int, np.integer)) and dim >= 1):
        raise ScheduleError(f"the data dimension must be a whole number >= 1, got {dim!r}")
    if target_overlap >= MAX_OVERLAP:
        raise ScheduleError(
            f"no ratio gamma > 1 gives an overlap of {target_overlap}: even gamma = 1 gives only "
            f"{MAX_OVERLAP:.6f}; choose a target below that (the paper uses 0.5)"
        )
    excess = np.logspace(-14, 8, 2201)  # gamma - 1
    values = overlap(1.0 + excess, dim) - target_overlap
    below = np.flatnonzero(values <= 0)
    if below.size == 0:
        floor = float(np.min(overlap(1.0 + excess, dim)))
        raise ScheduleError(
            f"in D = {dim} dimensions the overlap never falls to {target_overlap}: its lowest "
            f"value over gamma > 1 is {floor:.6f}; choose a target overlap above that"
        )
    k = int(below[0])
    if values[k] == 0:
        return float(1.0 + excess[k])
    lo = 0.0 if k == 0 else excess[k - 1]
    root = optimize.brentq(
        lambda t: overlap(1.0 + t, dim) - target_overlap, lo, excess[k], xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500
    )
    return float(1.0 + root)


def _validate_range(sigma_max: float, sigma_min: float) -> None:
    for name, value in (("sigma_max", sigma_max), ("sigma_min", sigma_min)):
        if not (isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value) and value > 0):
            raise ScheduleError(f"{name} must be a positive finite number, got {value!r}")
    if sigma_min >= sigma_max:
        raise ScheduleError(
            f"sigma_min ({sigma_min:g}) must be smaller than sigma_max ({sigma_max:g}); "
            "the scales run from sigma_max down to sigma_min"
        )


def num_scales_for_ratio(sigma_max: float, sigma_min: float, gamma: float) -> int:
    """L = ceil(log(sigma_max / sigma_min) / log(gamma)) + 1."""
    _validate_range(sigma_max, sigma_min)
    if not (math.isfinite(gamma) and gamma > 1.0):
        raise ScheduleError(f"the ratio gamma must be a finite number > 1, got {gamma!r}")
    steps = math.log(sigma_max / sigma_min) / math.log(gamma)
    # Guard against steps being a whole number up to rounding (e.g. 2.0000000000000004).
    nearest = round(steps)
    if abs(steps - nearest) <= 1e-12 * max(1.0, steps):
        steps = nearest
    return int(math.ceil(steps)) + 1


def ratio_for_num_scales(sigma_max: float, sigma_min: float, num_scales: int) -> float:
    """The ratio of a geometric schedule of L scales: (sigma_max / sigma_min) ** (1 / (L - 1))."""
    _validate_range(sigma_max, sigma_min)
    if not (isinstance(num_scales, (int, np.integer)) and num_scales >= 2):
        raise ScheduleError(
            f"the number of scales must be a whole number >= 2 when sigma_min < sigma_max, got {num_scales!r}"
        )
    return math.exp(math.log(sigma_max / sigma_min) / (num_scales - 1))


def geometric_sigmas(sigma_max: float, sigma_min: float, num_scales: int) -> np.ndarray:
    """exp(linspace(log sigma_max, log sigma_min, L)): descending, both ends exact."""
    ratio_for_num_scales(sigma_max, sigma_min, num_scales)  # validates
    sigmas = np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_scales))
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return sigmas


@dataclass(frozen=True)
class NoiseSchedule:
    """A geometric noise schedule from ``sigma_max`` down to ``sigma_min`` in ``num_scales`` steps.

    ``dim`` is the data dimension D the overlap refers to; ``target_overlap``
    and ``gamma`` record the equation the schedule was derived from (absent
    when the number of scales was given). ``source`` holds free-form
    provenance (data set, split, number of points, the farthest pair).
    """

    sigma_max: float
    sigma_min: float
    num_scales: int
    dim: int
    target_overlap: float | None = None
    gamma: float | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ratio_for_num_scales(self.sigma_max, self.sigma_min, self.num_scales)
        if not (isinstance(self.dim, (int, np.integer)) and self.dim >= 1):
            raise ScheduleError(f"the data dimension must be a whole number >= 1, got {self.dim!r}")

    @property
    def ratio(self) -> float:
        """The realised ratio sigma_{i-1} / sigma_i (at most gamma when derived from it)."""
        return ratio_for_num_scales(self.sigma_max, self.sigma_min, self.num_scales)

    @property
    def overlap(self) -> float:
        """The overlap C that the realised ratio achieves in ``dim`` dimensions."""
        return overlap(self.ratio, self.dim)

    @property
    def sigmas(self) -> np.ndarray:
        """The scales, descending, ``sigmas[0] == sigma_max`` and ``sigmas[-1] == sigma_min``."""
        return geometric_sigmas(self.sigma_max, self.sigma_min, self.num_scales)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON/YAML, with the derived ratio, overlap and scales for the reader."""
        data = asdict(self)
        data.update(ratio=self.ratio, overlap=self.overlap, sigmas=self.sigmas.tolist())
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NoiseSchedule":
        """Rebuild from :meth:`to_dict`'s output; derived fields are checked, not trusted."""
        if not isinstance(data, dict):
            raise ScheduleError("a schedule must be a mapping with sigma_max, sigma_min, num_scales and dim")
        missing = [k for k in ("sigma_max", "sigma_min", "num_scales", "dim") if k not in data]
        if missing:
            raise ScheduleError(f"the schedule lacks {', '.join(missing)}")
        try:
            sigma_max, sigma_min = float(data["sigma_max"]), float(data["sigma_min"])
            num_scales, dim = data["num_scales"], data["dim"]
            if isinstance(num_scales, float) and num_scales.is_integer():
                num_scales = int(num_scales)
            if isinstance(dim, float) and dim.is_integer():
                dim = int(dim)
            if isinstance(num_scales, bool) or isinstance(dim, bool):
                raise TypeError
        except (TypeError, ValueError):
            raise ScheduleError("sigma_max and sigma_min must be numbers, num_scales and dim whole numbers") from None
        optional = {}
        for key in ("target_overlap", "gamma"):
            value = data.get(key)
            if value is not None:
                try:
                    optional[key] = float(value)
                except (TypeError, ValueError):
                    raise ScheduleError(f"{key} must be a number, got {value!r}") from None
        schedule = cls(
            sigma_max=sigma_max,
            sigma_min=sigma_min,
            num_scales=num_scales,
            dim=dim,
            source=dict(data.get("source") or {}),
            **optional,
        )
        listed = data.get("sigmas")
        if listed is not None:
            listed = np.asarray(listed, dtype=np.float64)
            if listed.shape != (schedule.num_scales,) or not np.allclose(listed, schedule.sigmas, rtol=1e-9, atol=0):
                raise ScheduleError(
                    "the listed sigmas are not the geometric sequence from sigma_max to sigma_min in num_scales "
                    "steps; ncsn_tune only uses geometric schedules"
                )
        return schedule


def schedule_from_overlap(
    sigma_max: float,
    dim: int,
    sigma_min: float = 0.01,
    target_overlap: float = 0.5,
    source: dict[str, Any] | None = None,
) -> NoiseSchedule:
    """Technique 2: gamma from the overlap equation, L = ceil(log(sigma_max/sigma_min)/log gamma) + 1.

    The schedule is then rebuilt geometrically with L scales, so its realised
    ratio is at most gamma and its overlap at least the target.
    """
    _validate_range(sigma_max, sigma_min)
    gamma = solve_gamma(dim, target_overlap)
    num_scales = num_scales_for_ratio(sigma_max, sigma_min, gamma)
    return NoiseSchedule(sigma_max, sigma_min, num_scales, dim, target_overlap, gamma, dict(source or {}))


def schedule_from_num_scales(
    sigma_max: float,
    dim: int,
    num_scales: int,
    sigma_min: float = 0.01,
    source: dict[str, Any] | None = None,
) -> NoiseSchedule:
    """A schedule with a given number of scales; its overlap is reported, not targeted."""
    return NoiseSchedule(sigma_max, sigma_min, num_scales, dim, None, None, dict(source or {}))
