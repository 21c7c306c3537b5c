"""Technique 2 -- the noise scales between sigma_max and sigma_min.

Song & Ermon (2020) model the data as a single Gaussian in D dimensions and ask
that adjacent perturbed distributions overlap: with gamma = sigma_{i-1}/sigma_i
the scales form a geometric sequence whose ratio solves

    Phi(sqrt(2D) (gamma - 1) + 3 gamma) - Phi(sqrt(2D) (gamma - 1) - 3 gamma) = C,

C ~= 0.5. Scales are ordered from largest to smallest, sigma_max = sigma_1 >
... > sigma_L = sigma_min, as in the paper and its official code.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..checks import is_real, is_whole
from ..data.pixel_range import DEFAULT as DEFAULT_PIXEL_RANGE
from ..data.pixel_range import PixelRange
from ..errors import ScheduleError
from ..defaults import SIGMA_MIN, TARGET_OVERLAP
from .roots import brent_root
from .step_size import StepSize, optimal_step_size

_ERFC = np.vectorize(math.erfc, otypes=[np.float64])


def normal_cdf(x):
    """Phi(x) = erfc(-x / sqrt(2)) / 2, the standard normal CDF, accurate to the last digits in both tails
    (erfc of a positive argument keeps its relative accuracy); vectorised."""
    result = 0.5 * _ERFC(-np.asarray(x, dtype=np.float64) / math.sqrt(2.0))
    return float(result) if np.ndim(result) == 0 else result


#: The overlap of two identical scales (gamma = 1): Phi(3) - Phi(-3).
MAX_OVERLAP = normal_cdf(3.0) - normal_cdf(-3.0)


def overlap(gamma, dim):
    """The overlap C that ratio ``gamma`` achieves in ``dim`` dimensions.

    C(gamma) = Phi(sqrt(2D)(gamma-1) + 3 gamma) - Phi(sqrt(2D)(gamma-1) - 3 gamma),

    evaluated as a difference of upper tails when both arguments are positive,
    so that it keeps its relative accuracy far into the tail. Vectorised.
    """
    gamma = np.asarray(gamma, dtype=np.float64)
    centre = math.sqrt(2.0 * dim) * (gamma - 1.0)
    lower, upper = centre - 3.0 * gamma, centre + 3.0 * gamma
    by_cdf = normal_cdf(upper) - normal_cdf(lower)
    by_tail = normal_cdf(-lower) - normal_cdf(-upper)
    result = np.where(lower > 0, by_tail, by_cdf)
    return float(result) if result.ndim == 0 else result


def validate_overlap_target(target_overlap: float) -> None:
    if not is_real(target_overlap) or not (
        math.isfinite(target_overlap) and 0.0 < target_overlap < 1.0
    ):
        raise ScheduleError(
            f"the target overlap must lie strictly between 0 and 1, got {target_overlap!r}; the paper uses 0.5",
            fields="target_overlap",
        )


def validate_dim(dim) -> int:
    if not is_whole(dim) or dim < 1:
        raise ScheduleError(f"the data dimension D must be a whole number >= 1, got {dim!r}", fields="dim")
    return int(dim)


def solve_gamma(dim: int, target_overlap: float = TARGET_OVERLAP) -> float:
    """The smallest ratio gamma > 1 whose overlap in ``dim`` dimensions equals the target.

    The overlap is Phi(3) - Phi(-3) ~= 0.9973 at gamma = 1. For D >= 5 it falls
    to 0 as gamma grows, so every target below 0.9973 has a root; for D <= 4
    the interval [centre - 3 gamma, centre + 3 gamma] widens faster than its
    centre moves and the overlap never falls below some floor. The root is
    bracketed on a log grid of gamma - 1 and refined with Brent's method to
    machine precision. Raises :class:`ScheduleError` when no root exists.
    """
    validate_overlap_target(target_overlap)
    dim = validate_dim(dim)
    if target_overlap >= MAX_OVERLAP:
        raise ScheduleError(
            f"no ratio gamma > 1 gives an overlap of {target_overlap}: even gamma = 1 gives only "
            f"{MAX_OVERLAP:.6f}; choose a target below that (the paper uses 0.5)",
            fields="target_overlap",
        )
    excess = np.logspace(-14, 8, 2201)  # gamma - 1
    values = overlap(1.0 + excess, dim) - target_overlap
    below = np.flatnonzero(values <= 0)
    if below.size == 0:
        floor = float(np.min(overlap(1.0 + excess, dim)))
        raise ScheduleError(
            f"in D = {dim} dimensions the overlap never falls to {target_overlap}: its lowest "
            f"value over gamma > 1 is {floor:.6f}; choose a target overlap above that",
            fields="target_overlap",
        )
    k = int(below[0])
    if values[k] == 0:
        return float(1.0 + excess[k])
    lo = 0.0 if k == 0 else excess[k - 1]
    root = brent_root(lambda t: overlap(1.0 + t, dim) - target_overlap, lo, excess[k], xtol=1e-300, rtol=4 * np.finfo(float).eps)
    return float(1.0 + root)


#: Bounds that keep sigma**2 and the Langevin steps eps sigma**2 / sigma_min**2 finite and non-zero in
#: float32, the precision the network computes in.
SIGMA_RANGE = (1e-18, 1e18)
#: The most scales a schedule may have (the published CIFAR-10 one has 232).
MAX_NUM_SCALES = 1_000_000


def default_sigma_min(pixel_range: PixelRange | str | None = None) -> float:
    """The paper's sigma_min (:data:`~ncsn_tune.defaults.SIGMA_MIN`, 0.01 for pixels in [0, 1]) in the given pixel range:
    the same noise relative to the data, so 0.02 in [-1, 1]."""
    return SIGMA_MIN * DEFAULT_PIXEL_RANGE.factor_to(PixelRange.parse(pixel_range or DEFAULT_PIXEL_RANGE, error=ScheduleError))


def validate_range(sigma_max: float, sigma_min: float) -> tuple[float, float]:
    """sigma_max and sigma_min positive, finite, within :data:`SIGMA_RANGE`, and sigma_min < sigma_max."""
    lo, hi = SIGMA_RANGE
    for name, value in (("sigma_max", sigma_max), ("sigma_min", sigma_min)):
        if not is_real(value) or not (
            math.isfinite(value) and value > 0
        ):
            raise ScheduleError(f"{name} must be a positive finite number, got {value!r}", fields=name)
        if not lo <= value <= hi:
            raise ScheduleError(
                f"{name} = {value:g} lies outside [{lo:g}, {hi:g}]: sigma**2 and the Langevin steps would not be finite "
                "in float32, the precision the network computes in",
                fields=name,
            )
    if sigma_min >= sigma_max:
        raise ScheduleError(
            f"sigma_min ({sigma_min:g}) must be smaller than sigma_max ({sigma_max:g}); "
            "the scales run from sigma_max down to sigma_min",
            fields=("sigma_min", "sigma_max"),
        )
    return float(sigma_max), float(sigma_min)


def validate_num_scales(num_scales) -> int:
    if not is_whole(num_scales) or num_scales < 2:
        raise ScheduleError(
            f"the number of scales L must be a whole number, at least 2 (sigma_max and sigma_min), got {num_scales!r}",
            fields="num_scales"
        )
    if num_scales > MAX_NUM_SCALES:
        raise ScheduleError(
            f"L = {num_scales:,} scales is more than ncsn_tune accepts ({MAX_NUM_SCALES:,}); the published CIFAR-10 schedule "
            "has 232", fields="num_scales"
        )
    return int(num_scales)


def num_scales_for_ratio(sigma_max: float, sigma_min: float, gamma: float) -> int:
    """L = ceil(log(sigma_max / sigma_min) / log(gamma)) + 1: the fewest scales whose ratio is at most gamma."""
    validate_range(sigma_max, sigma_min)
    if not (math.isfinite(gamma) and gamma > 1.0):
        raise ScheduleError(f"the ratio gamma must be a finite number > 1, got {gamma!r}", fields="gamma")
    steps = math.log(sigma_max / sigma_min) / math.log(gamma)
    # Guard against steps being a whole number up to rounding (e.g. 2.0000000000000004).
    nearest = round(steps)
    if abs(steps - nearest) <= 1e-12 * max(1.0, steps):
        steps = nearest
    num_scales = int(math.ceil(steps)) + 1
    if num_scales > MAX_NUM_SCALES:
        raise ScheduleError(
            f"the overlap equation asks for {num_scales:,} scales between {sigma_max:g} and {sigma_min:g}, more than ncsn_tune "
            f"accepts ({MAX_NUM_SCALES:,}); lower the target overlap or narrow the range",
            fields=("target_overlap", "sigma_max", "sigma_min"),
        )
    return num_scales


def ratio_for_num_scales(sigma_max: float, sigma_min: float, num_scales: int) -> float:
    """The ratio of a geometric schedule of L scales: (sigma_max / sigma_min) ** (1 / (L - 1))."""
    validate_range(sigma_max, sigma_min)
    num_scales = validate_num_scales(num_scales)
    return math.exp(math.log(sigma_max / sigma_min) / (num_scales - 1))


def geometric_sigmas(sigma_max: float, sigma_min: float, num_scales: int) -> np.ndarray:
    """exp(linspace(log sigma_max, log sigma_min, L)): descending, both ends exact."""
    ratio_for_num_scales(sigma_max, sigma_min, num_scales)  # validates
    sigmas = np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_scales))
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return sigmas


def _number(data: dict, key: str, kind=float, optional: bool = False):
    value = data.get(key)
    if value is None and optional:
        return None
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not (is_real(value) if kind is float else is_whole(value)):
        raise ScheduleError(f"{key} must be {'a number' if kind is float else 'a whole number'}, got {value!r}")
    return kind(value)


@dataclass(frozen=True)
class NoiseSchedule:
    """A geometric noise schedule from ``sigma_max`` down to ``sigma_min`` in ``num_scales`` scales.

    ``dim`` is the data dimension D the overlap refers to (None when unknown:
    the scales and step sizes do not depend on it). ``target_overlap`` and
    ``gamma`` record the overlap equation the schedule was derived from (None
    when the number of scales was given). ``data`` identifies the data set
    sigma_max was derived from by Technique 1 (name, absolute path, split,
    number of points, shape, fingerprint; None when sigma_max was given as a
    number); ``source`` holds how it was computed (the farthest pair, method,
    time).
    """

    sigma_max: float
    sigma_min: float
    num_scales: int
    dim: int | None = None
    target_overlap: float | None = None
    gamma: float | None = None
    data: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    #: The pixel convention the scales refer to (None: not recorded, taken as the paper's [0, 1]); doubling the
    #: pixel range doubles every distance and every sigma.
    pixel_range: PixelRange | None = None

    def __post_init__(self) -> None:
        validate_range(self.sigma_max, self.sigma_min)
        validate_num_scales(self.num_scales)
        if self.dim is not None:
            validate_dim(self.dim)
        object.__setattr__(self, "pixel_range", PixelRange.parse_optional(self.pixel_range, error=ScheduleError))

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_num_scales(cls, sigma_max: float, dim: int | None, num_scales: int, *, sigma_min: float | None = None,
                        data: dict | None = None, source: dict | None = None, pixel_range: PixelRange | None = None) -> "NoiseSchedule":
        """L given scales from sigma_max to sigma_min (default: the paper's, :func:`default_sigma_min`, in ``pixel_range``);
        the overlap they achieve is reported, not targeted."""
        sigma_min = default_sigma_min(pixel_range) if sigma_min is None else sigma_min
        return cls(float(sigma_max), float(sigma_min), num_scales, dim, None, None, data, dict(source or {}), pixel_range)

    @classmethod
    def from_overlap(cls, sigma_max: float, dim: int, *, sigma_min: float | None = None, target_overlap: float = TARGET_OVERLAP,
                     data: dict | None = None, source: dict | None = None, pixel_range: PixelRange | None = None) -> "NoiseSchedule":
        """Technique 2: gamma from the overlap equation, L = ceil(log(sigma_max/sigma_min)/log gamma) + 1 (sigma_min by
        default the paper's, :func:`default_sigma_min`, in ``pixel_range``).

        The schedule is then rebuilt geometrically with L scales, so its realised
        ratio is at most gamma and its overlap at least the target.
        """
        sigma_min = default_sigma_min(pixel_range) if sigma_min is None else sigma_min
        validate_range(sigma_max, sigma_min)
        gamma = solve_gamma(dim, target_overlap)
        num_scales = num_scales_for_ratio(sigma_max, sigma_min, gamma)
        return cls(float(sigma_max), float(sigma_min), num_scales, dim, float(target_overlap), gamma, data, dict(source or {}),
                   pixel_range)

    @classmethod
    def from_data(cls, dataset, *, sigma_min: float | None = None, target_overlap: float = TARGET_OVERLAP, num_scales: int | None = None,
                  method: str = "pruned", device: str = "auto", distributed: bool = False, progress=None) -> "NoiseSchedule":
        """Techniques 1 and 2 for a data set: sigma_max is its exact diameter, then the overlap equation.

        ``dataset``: a :class:`ncsn_tune.data.Dataset` (``ncsn_tune.load_dataset``) or an
        array of points (N, ...) whose pixels are scaled to [0, 1] as the loader
        would. ``sigma_min``: by default the paper's 0.01 in the data's pixel range
        (:func:`default_sigma_min`). With ``num_scales`` the schedule has that many
        scales instead of the equation's L. ``device``: where T1 runs (cpu, cuda, auto). ``distributed``: every process of
        the torch.distributed group (torchrun) searches its shard of the data
        (:func:`~ncsn_tune.analysis.sharded_diameter.group_max_pairwise_distance`; the group's own devices).
        """
        from ..data import as_dataset
        from .initial_noise_scale import max_pairwise_distance

        dataset = as_dataset(dataset)
        sigma_min = default_sigma_min(dataset.pixel_range) if sigma_min is None else sigma_min
        if distributed:
            from .sharded_diameter import group_max_pairwise_distance

            found = group_max_pairwise_distance(dataset.points(), scale=dataset.scale, method=method)
        else:
            found = max_pairwise_distance(dataset.points(), scale=dataset.scale, method=method, device=device, progress=progress)
        if found.distance == 0:
            what = "it holds one point" if found.num_points == 1 else f"all {found.num_points:,} points coincide"
            raise ScheduleError(
                f"Technique 1 gives no sigma_max for {dataset.name}: {what}, so the largest distance between two points is 0; "
                "use a data set of distinct points, or give sigma_max as a number",
                fields="data",
            )
        identity = dataset.identity().to_dict()
        source = {"technique": "T1: exact largest pairwise distance", **found.to_dict()}
        if num_scales is not None:
            return cls.from_num_scales(found.distance, dataset.dim, num_scales, sigma_min=sigma_min, data=identity, source=source,
                                       pixel_range=dataset.pixel_range)
        return cls.from_overlap(found.distance, dataset.dim, sigma_min=sigma_min, target_overlap=target_overlap,
                                data=identity, source=source, pixel_range=dataset.pixel_range)

    # ------------------------------------------------------------------ what it implies

    @property
    def ratio(self) -> float:
        """The realised ratio sigma_{i-1} / sigma_i (at most gamma when derived from it)."""
        return ratio_for_num_scales(self.sigma_max, self.sigma_min, self.num_scales)

    @property
    def overlap(self) -> float:
        """The overlap C that the realised ratio achieves in ``dim`` dimensions."""
        if self.dim is None:
            raise ScheduleError("the overlap of a schedule depends on the data dimension D, which this schedule does not record",
                                fields="dim")
        return overlap(self.ratio, self.dim)

    @property
    def sigmas(self) -> np.ndarray:
        """The scales, descending, ``sigmas[0] == sigma_max`` and ``sigmas[-1] == sigma_min``."""
        return geometric_sigmas(self.sigma_max, self.sigma_min, self.num_scales)

    def overlap_equation(self, target_overlap: float | None = None) -> tuple[float, int] | None:
        """(gamma, L) that Technique 2's equation gives for this schedule's ends and D, at ``target_overlap``
        (default: the schedule's own target, else :data:`TARGET_OVERLAP`); None when D is unknown or the equation has no root."""
        if self.dim is None:
            return None
        try:
            gamma = solve_gamma(self.dim, target_overlap or self.target_overlap or TARGET_OVERLAP)
            return gamma, num_scales_for_ratio(self.sigma_max, self.sigma_min, gamma)
        except ScheduleError:
            return None

    def step_size(self, steps_per_scale: int = 5) -> StepSize:
        """Technique 4: the optimal eps for M = ``steps_per_scale`` Langevin steps per scale."""
        return optimal_step_size(self.ratio, steps_per_scale, self.sigma_min)

    def with_num_scales(self, num_scales: int) -> "NoiseSchedule":
        """The same ends and data with another number of scales (the overlap equation no longer applies)."""
        return NoiseSchedule(self.sigma_max, self.sigma_min, num_scales, self.dim, None, None, self.data,
                             {**self.source, "num_scales_given": True}, self.pixel_range)

    @property
    def pixels(self) -> PixelRange:
        """The pixel range, the paper's [0, 1] when the schedule does not record one."""
        return self.pixel_range or DEFAULT_PIXEL_RANGE

    def in_pixel_range(self, pixel_range: PixelRange | str) -> "NoiseSchedule":
        """The same schedule for pixels in another range: every sigma, sigma_min included, scales by the ratio of the
        widths (x2 from [0, 1] to [-1, 1]); L, the ratio and the overlap do not change. A schedule that does not record
        its range is taken as [0, 1]."""
        pixel_range = PixelRange.parse(pixel_range, error=ScheduleError)
        if pixel_range == self.pixels:
            return dataclasses.replace(self, pixel_range=pixel_range)
        factor = self.pixels.factor_to(pixel_range)
        return dataclasses.replace(self, sigma_max=self.sigma_max * factor, sigma_min=self.sigma_min * factor, pixel_range=pixel_range,
                                   source={**self.source, "converted_from_pixel_range": str(self.pixels)})

    def same_scales(self, other: "NoiseSchedule", rtol: float = 1e-12) -> bool:
        """True when both schedules have the same sigmas (ends within ``rtol``, same L)."""
        return (self.num_scales == other.num_scales and math.isclose(self.sigma_max, other.sigma_max, rel_tol=rtol)
                and math.isclose(self.sigma_min, other.sigma_min, rel_tol=rtol))

    def describe(self) -> str:
        text = f"sigma_max {self.sigma_max:.6g}, sigma_min {self.sigma_min:g}, L = {self.num_scales}"
        if self.data:
            text += f", derived from {self.data.get('name', 'data')}"
        return text

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON/YAML, with the derived ratio, overlap and scales for the reader."""
        data = asdict(self)
        data.update(ratio=self.ratio, overlap=None if self.dim is None else self.overlap, sigmas=self.sigmas.tolist(),
                    pixel_range=None if self.pixel_range is None else str(self.pixel_range))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NoiseSchedule":
        """Rebuild from :meth:`to_dict`'s output; derived fields are checked, not trusted."""
        if not isinstance(data, dict):
            raise ScheduleError("a schedule must be a mapping with sigma_max, sigma_min and num_scales")
        missing = [k for k in ("sigma_max", "sigma_min", "num_scales") if k not in data]
        if missing:
            raise ScheduleError(f"the schedule lacks {', '.join(missing)}")
        source = data.get("source") or {}
        identity = data.get("data")
        if identity is None and isinstance(source, dict) and ("pair" in source or "num_points" in source):
            # written before schedules recorded their data's identity: derived from data we cannot recognise
            identity = {"name": source.get("name", "unrecorded data"), "fingerprint": None}
        if identity is not None and not isinstance(identity, dict):
            raise ScheduleError(f"the schedule's data must be a mapping, got {identity!r}")
        schedule = cls(
            sigma_max=_number(data, "sigma_max"),
            sigma_min=_number(data, "sigma_min"),
            num_scales=_number(data, "num_scales", int),
            dim=_number(data, "dim", int, optional=True),
            target_overlap=_number(data, "target_overlap", optional=True),
            gamma=_number(data, "gamma", optional=True),
            data=identity,
            source=dict(source) if isinstance(source, dict) else {},
            pixel_range=data.get("pixel_range"),
        )
        listed = data.get("sigmas")
        if listed is not None:
            try:
                listed = np.asarray(listed, dtype=np.float64)
            except (TypeError, ValueError):
                raise ScheduleError("the listed sigmas are not numbers") from None
            if listed.shape != (schedule.num_scales,) or not np.allclose(listed, schedule.sigmas, rtol=1e-9, atol=0):
                raise ScheduleError(
                    "the listed sigmas are not the geometric sequence from sigma_max to sigma_min in num_scales "
                    "steps; ncsn_tune only uses geometric schedules"
                )
        return schedule

    def save(self, path) -> Path:
        """Write the schedule as JSON, or YAML for a .yml/.yaml path (atomically)."""
        from ..files import write_mapping

        return write_mapping(path, self.to_dict())

    @classmethod
    def load(cls, path) -> "NoiseSchedule":
        """Read a schedule file written by :meth:`save` (or by ``ncsn-tune sigmas``)."""
        from ..files import read_mapping

        try:
            return cls.from_dict(read_mapping(path))
        except ScheduleError as err:
            raise ScheduleError(f"{path} is not a usable schedule file: {err}", fields=err.fields) from None

