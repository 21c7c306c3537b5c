"""Auditing a sampler configuration against the paper's techniques, one finding per technique (torch-free).

For each technique: what the configuration has, what the technique gives (for the user's data, or for a
given diameter and dimension), and a verdict with its consequence in words and numbers:

- T1: sigma_max against the data's diameter (in the configuration's pixel convention). Below it, chains
  cannot travel between training images farther apart than about sigma_max, so modes can be missed; above sqrt(D)
  times the pixel range's width (the largest distance any two images can have) it is impossible for any data.
- T2: the overlap of adjacent scales that its L reaches, against the target; more scales than the
  equation needs cost sampling time, fewer leave gaps the sampler must jump (below 0.01 the levels are disjoint).
- T4: for the sampler it runs, the s^2/sigma^2 its step (eps or snr) and M reach, against the optimum for that M
  (Proposition 3 for annealed Langevin dynamics; the loop's single-Gaussian chain for predictor-corrector
  samplers); "no Langevin steps" for an ODE or a predictor-only sampler.
- T5: EMA sampling on or off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..analysis.noise_schedule import (NoiseSchedule, num_scales_for_ratio, overlap, ratio_for_num_scales, solve_gamma, validate_dim,
                                      validate_overlap_target)
from ..analysis.samplers import sampler_step
from ..defaults import TARGET_OVERLAP
from ..errors import ScheduleError
from ..tuning.advice import MEASURED, MEASUREMENT, chain_ratio_warning, sampling_levels_advice
from ..tuning.steps import recommended_sampler_step
from .tool_configs import ToolConfig

@dataclass(frozen=True)
class Finding:
    technique: str
    verdict: str
    have: str
    paper: str
    consequence: str
    numbers: dict

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Audit:
    config: ToolConfig
    findings: tuple[Finding, ...]
    diameter: float | None
    dim: int | None
    target_overlap: float

    @property
    def notes(self) -> tuple[str, ...]:
        """The configuration's notes, and what the T4 numbers are."""
        modelled = any(f.technique == "T4" and f.verdict not in ("not checked", "no Langevin steps") for f in self.findings)
        return self.config.notes + (("T4's s^2/sigma^2 models the sampler for data that is one Gaussian point: exact for that model, an "
                                     "approximation for real data",) if modelled else ())

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "diameter": self.diameter, "dim": self.dim, "target_overlap": self.target_overlap,
                "findings": [f.to_dict() for f in self.findings], "notes": list(self.notes)}


#: Adjacent levels sharing less than this much mass are disjoint for a sampler: it cannot move from one to the next.
COLLAPSED_OVERLAP = 0.01


def check_t1(c: ToolConfig, diameter: float | None, dim: int | None = None) -> Finding:
    have = f"sigma_max {c.sigma_max:g} (pixels in {c.pixel_range.label})"
    largest = math.sqrt(dim) * c.pixel_range.width if dim else None  # no two images in the pixel range are farther apart
    if largest is not None and c.sigma_max > largest:
        return Finding("T1", "problem", have, f"at most sqrt(D) x {c.pixel_range.width:g} = {largest:.4g} (D = {dim}): the largest "
                       "distance any two images in the pixel range can have", f"sigma_max is {c.sigma_max / largest:.2f} times the largest "
                       f"distance two {dim:,}-value images can have: impossible for any data; the scales above {largest:.4g} add "
                       "sampling time and reach nothing (Technique 1 measures the data's own diameter, smaller still)",
                       {"sigma_max": c.sigma_max, "largest_possible_distance": largest, "diameter": diameter})
    if diameter is None:
        return Finding("T1", "not checked", have, "sigma_max = the largest distance between two training images",
                       "give the data (or its diameter) to check it", {"sigma_max": c.sigma_max})
    paper = f"the data's diameter {diameter:.6f} (exact, pixels in {c.pixel_range.label})"
    numbers = {"sigma_max": c.sigma_max, "diameter": diameter}
    if c.sigma_max >= diameter:
        ratio = ratio_for_num_scales(c.sigma_max, c.sigma_min, c.num_scales)
        extra = max(0, math.ceil(math.log(c.sigma_max / diameter) / math.log(ratio) - 1e-9)) if c.num_scales > 1 else 0
        above = c.sigma_max / diameter - 1
        if above <= 0.5:
            return Finding("T1", "ok", have, paper, f"{above:.1%} above the diameter: every pair of images is within reach", numbers)
        return Finding("T1", "warning", have, paper, f"{above:.0%} above the diameter: the {extra} largest scales (at its ratio) add "
                       f"sampling time without reaching anything sigma_max = {diameter:.4g} would not", {**numbers, "extra_scales": extra})
    below = 1 - c.sigma_max / diameter
    verdict = "warning" if below < 0.1 else "problem"
    return Finding("T1", verdict, have, paper, f"{below:.1%} below the diameter: chains starting at sigma_max cannot travel between "
                   f"training images more than about {c.sigma_max:.4g} apart, so modes of the data can be missed", numbers)


def check_t2(c: ToolConfig, dim: int | None, target: float) -> Finding:
    ratio = ratio_for_num_scales(c.sigma_max, c.sigma_min, c.num_scales)
    have = f"L = {c.num_scales} scales from {c.sigma_max:g} to {c.sigma_min:g} (ratio {ratio:.6f})"
    if not c.geometric:
        return Finding("T2", "not checked", have, "a geometric schedule whose ratio solves the overlap equation",
                       "the schedule is not geometric", {"num_scales": c.num_scales})
    if dim is None:
        return Finding("T2", "not checked", have, "the ratio that solves the overlap equation for the data's dimension D",
                       "give the data or its dimension D to check it", {"num_scales": c.num_scales, "ratio": ratio})
    reached = float(overlap(ratio, dim))
    try:
        gamma = solve_gamma(dim, target)
        needed = num_scales_for_ratio(c.sigma_max, c.sigma_min, gamma)
    except ScheduleError as err:
        return Finding("T2", "not checked", have, str(err), f"overlap {reached:.6f} in D = {dim}", {"overlap": reached})
    numbers = {"num_scales": c.num_scales, "ratio": ratio, "overlap": reached, "target_overlap": target, "gamma": gamma,
               "equation_num_scales": needed}
    paper = f"overlap {target:g} in D = {dim}: gamma {gamma:.7f}, L = {needed}"
    if reached < COLLAPSED_OVERLAP:
        return Finding("T2", "problem", have, paper, f"adjacent levels overlap by {reached:.2g} in D = {dim:,}: they are disjoint, so a "
                       f"sampler cannot move from one to the next; {needed:,} levels would reach the target {target:g}", numbers)
    if c.num_scales < needed:
        return Finding("T2", "warning", have, paper, f"L {c.num_scales} reaches overlap {reached:.3f}, below the target {target:g}: "
                       f"adjacent noise levels share too little mass for the sampler to move between them; {needed} scales would "
                       f"reach it ({needed - c.num_scales} more)", numbers)
    extra = c.num_scales - needed
    share = extra / c.num_scales
    if c.sampler is not None and c.sampler.predictor != "none":  # a PC sampler: its levels are a sampling choice
        return Finding("T2", "ok", have, paper, f"L {c.num_scales} reaches overlap {reached:.3f} (the equation's L for training is "
                       f"{needed}); {sampling_levels_advice('pc')}", numbers)
    verdict = "ok" if share <= 0.10 else "warning"
    words = (f"L {c.num_scales} reaches overlap {reached:.3f} where {needed} reach {target:g}: "
             + (f"{extra} fewer scales would do for training (the equation's L); {sampling_levels_advice('ald')}" if extra
                else "exactly the equation's L"))
    return Finding("T2", verdict, have, paper, words, numbers)


def pixel_levels(c: ToolConfig, variance_ratio: float) -> tuple[float, float]:
    """The noise the chain ends with at the last level, sigma_min sqrt(s^2/sigma^2), and its excess over sigma_min in
    steps of an 8-bit pixel (the configuration's pixel range over 255)."""
    s = c.sigma_min * math.sqrt(variance_ratio)
    return s, (s - c.sigma_min) / (c.pixel_range.width / 255.0)


def check_t4(c: ToolConfig) -> Finding:
    """Technique 4 for the sampler the configuration runs (:mod:`ncsn_tune.analysis.samplers`), judged as
    :mod:`ncsn_tune.tuning.advice` recommends: Proposition 3 for annealed Langevin dynamics (with the whole chain as a
    safety check), score_sde's published snr for a Langevin corrector; sizes in steps of an 8-bit pixel."""
    if c.sampler is None or not c.sampler.langevin_steps:
        why = c.no_sampler_reason or f"{c.sampler.describe()} runs its predictor only"
        return Finding("T4", "no Langevin steps", why, "M Langevin steps per scale at the optimal step",
                       "Technique 4 tunes Langevin steps, and this sampler takes none", {"sampler": c.sampler.to_dict() if c.sampler else None})
    m, snr = c.steps_per_scale, c.given_snr
    if m is None or snr is None:
        return Finding("T4", "not checked", "no step size in this configuration", "M Langevin steps at the optimal step",
                       "the configuration does not give the corrector's step", {})
    exact = c.sampler.annealed_langevin
    given = f"eps {c.step_size:g}" if c.step_size is not None else f"snr {snr:g}" + (f" (eps = 2 (snr sigma_min)^2 = {c.eps:.4g})" if exact else "")
    have = f"M = {m}, {given}; {c.sampler.describe()}, N = {c.num_scales}"
    best = sampler_step(c.sampler, c.sigma_max, c.sigma_min, c.num_scales, m)
    recommended, why = recommended_sampler_step(c.sampler, c.sigma_max, c.sigma_min, c.num_scales, m)
    what = "s^2/sigma^2" if exact else "s^2/sigma^2 at the last level"
    paper = (f"eps {best.step_size:.4g} (snr {best.snr:.4f}) for M = {m}: {what} = {best.variance_ratio:.7f} (Proposition 3)" if exact else
             f"snr {recommended.snr:.4f} for M = {m} (the chain criterion's optimum {best.snr:.4f} gives {what} = {best.variance_ratio:.7f})")
    numbers = {"sampler": c.sampler.to_dict(), "num_scales": c.num_scales, "steps_per_scale": m, "snr": snr, "step_size": c.eps,
               "optimal_snr": best.snr, "optimal_step_size": best.step_size, "optimal_variance_ratio": best.variance_ratio,
               "recommended_snr": recommended.snr, "criterion": best.criterion, "exact_map": exact}
    if exact and c.eps >= c.sigma_min**2:
        return Finding("T4", "problem", have, paper, f"eps is at or above sigma_min^2 = {c.sigma_min ** 2:g}: the Langevin step at the "
                       "smallest scale overshoots and the variance does not settle", numbers)
    with np.errstate(over="ignore", invalid="ignore"):
        got = sampler_step(c.sampler, c.sigma_max, c.sigma_min, c.num_scales, m, snr)
    numbers.update(variance_ratio=got.variance_ratio, chain_ratio=got.chain_ratio)
    if not math.isfinite(got.variance_ratio) or got.variance_ratio > 1e6:
        return Finding("T4", "problem", have, paper, "the chain's variance does not settle at this step: the samples end far from the "
                       "noise level the model expects", numbers)
    noise, levels = pixel_levels(c, got.variance_ratio)
    best_noise, best_levels = pixel_levels(c, best.variance_ratio)
    numbers.update(final_noise=noise, excess_pixel_levels=levels)
    size = (f"the chain ends with noise of sd {noise:.4g} at sigma_min {c.sigma_min:g} ({levels:+.2f} of one 8-bit pixel level over "
            f"sigma_min; the optimum's {best_levels:+.2f})")
    if exact:
        warning = chain_ratio_warning({"this step": got.chain_ratio})
        factor = c.eps / best.step_size
        close = abs(got.variance_ratio - 1) - abs(best.variance_ratio - 1) <= max(1e-4, 0.02 * abs(best.variance_ratio - 1))
        words = (f"eps {c.eps:.4g} ({factor:.3g} x Proposition 3's optimum) gives {what} = {got.variance_ratio:.7f} against "
                 f"{best.variance_ratio:.7f}: {size}; run through the whole chain {got.chain_ratio:.4f}")
        if warning:
            return Finding("T4", "warning", have, paper, f"{words}; {warning}", numbers)
        return Finding("T4", "ok" if close else "warning", have, paper,
                       words + ("" if close else f"; Proposition 3's eps measured best of the steps tried (x0.5 and x2 gave FID "
                                f"{MEASURED['ald_x0.5'].fid:.1f} and {MEASURED['ald_x2'].fid:.1f} against {MEASURED['ald_x1'].fid:.1f}, "
                                f"{MEASUREMENT})"), numbers)
    visible = abs(levels) >= 0.5
    words = (f"snr {snr:g} gives {what} = {got.variance_ratio:.7f} (the criterion's optimum: {best.variance_ratio:.7f}): {size}"
             + ("" if visible else ", below what 8-bit pixels show") + f". Recommended: {why}")
    return Finding("T4", "warning" if visible else "ok", have, paper, words, numbers)


def check_t5(c: ToolConfig) -> Finding:
    if c.ema is None:
        return Finding("T5", "not checked", "not in this configuration", "sample with an EMA of the weights (rate 0.999)",
                       "EMA lives in the model's weights, not in a scheduler configuration", {})
    if c.ema:
        return Finding("T5", "ok", f"EMA on (rate {c.ema_rate:g})" if c.ema_rate else "EMA on", "EMA of the weights (rate 0.999)",
                       "samples come from the averaged weights", {"ema_rate": c.ema_rate})
    return Finding("T5", "warning", "EMA off", "EMA of the weights (rate 0.999)",
                   "samples come from the last weights, whose noise from the last steps shows in the samples (the paper uses EMA "
                   "for every reported result)", {})


def audit_config(config: ToolConfig, *, diameter: float | None = None, dim: int | None = None, target_overlap: float = TARGET_OVERLAP) -> Audit:
    """The four findings for ``config``; ``diameter`` (Technique 1 on the data, in the configuration's pixel
    convention) and ``dim`` (D = C*H*W, else the configuration's image size) make T1 and T2 checkable."""
    if diameter is not None and not (isinstance(diameter, (int, float)) and math.isfinite(diameter) and diameter > 0):
        raise ScheduleError(f"the data's diameter must be a positive number, got {diameter!r}", fields="diameter")
    if dim is not None:
        validate_dim(dim)
    validate_overlap_target(target_overlap)
    dim = dim or config.dim
    findings = (check_t1(config, diameter, dim), check_t2(config, dim, target_overlap), check_t4(config), check_t5(config))
    return Audit(config, findings, diameter, dim, target_overlap)


def derived_schedule(audit: Audit) -> NoiseSchedule | None:
    """What Techniques 1 and 2 give for the audited data: for the figure beside the configuration's."""
    if audit.diameter is None or audit.dim is None:
        return None
    try:
        return NoiseSchedule.from_overlap(audit.diameter, audit.dim, sigma_min=audit.config.sigma_min, target_overlap=audit.target_overlap)
    except ScheduleError:
        return None
