"""M and the step for the chosen schedule (the rules in :mod:`ncsn_tune.tuning`), the step-size files, and both halves
together (:func:`resolve`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from ..analysis.noise_schedule import NoiseSchedule, ratio_for_num_scales
from ..analysis.samplers import Sampler, SamplerStep, annealed_chain_ratio, sampler_step
from ..analysis.step_size import StepSize, optimal_step_size, step_size_of_snr, validate_step_size
from ..config import STEP_SIZE_FILE, workdir as default_workdir
from ..errors import ScheduleError
from ..files import read_mapping, write_mapping
from .advice import MEASUREMENT, PUBLISHED_SNR, chain_ratio_warning, langevin_snr_advice
from .schedule import DEFAULTS, Given, ScheduleChoice, resolve_schedule

@dataclass(frozen=True)
class StepChoice:
    """M and the step, why, the file the step came from, and where M came from (``steps_from``: given, run, saved or
    default). ``step``: a :class:`StepSize` (eps) for annealed Langevin dynamics, a :class:`SamplerStep` (snr) for
    another loop."""

    steps_per_scale: int
    step: StepSize | SamplerStep
    notes: tuple[str, ...]
    file: Path | None = None
    steps_from: str = "given"


@dataclass(frozen=True)
class Tuning:
    """Everything sampling needs: the two halves of the resolver's answer (the schedule's, the step's), and notes added
    by whoever used it."""

    schedule_choice: ScheduleChoice
    step_choice: StepChoice
    extra_notes: tuple[str, ...] = ()
    sampler: Sampler = Sampler()

    schedule = property(lambda self: self.schedule_choice.schedule)
    ratio = property(lambda self: self.schedule_choice.ratio)
    sigma_min = property(lambda self: self.schedule_choice.sigma_min)
    schedule_file = property(lambda self: self.schedule_choice.file)
    steps_per_scale = property(lambda self: self.step_choice.steps_per_scale)
    step = property(lambda self: self.step_choice.step)
    step_file = property(lambda self: self.step_choice.file)
    steps_from = property(lambda self: self.step_choice.steps_from)

    @property
    def step_size(self) -> float:
        """eps: NCSNv2's step_lr (for a predictor-corrector loop the eps its snr maps to, 2 (snr sigma_min)**2)."""
        return self.step.step_size

    @property
    def snr(self) -> float | None:
        return self.step.snr

    @property
    def notes(self) -> tuple[str, ...]:
        return self.schedule_choice.notes + self.step_choice.notes + self.extra_notes

    def with_notes(self, notes) -> "Tuning":
        return dataclasses.replace(self, extra_notes=self.extra_notes + tuple(notes))


@dataclass(frozen=True)
class SavedStepSize:
    """A step-size file: the step, the schedule (ends and L) it was made for, if one, and the sampler (NCSNv2's annealed
    Langevin dynamics unless the file names another; then ``snr`` is the step and ``step`` holds its eps map)."""

    step: StepSize
    schedule: dict | None
    path: Path
    sampler: Sampler = Sampler()
    snr: float | None = None

    def fits(self, choice: ScheduleChoice, sampler: Sampler = Sampler()) -> bool:
        if self.sampler != sampler:
            return False
        step = self.step
        if not (math.isclose(step.ratio, choice.ratio, rel_tol=1e-12) and math.isclose(step.sigma_min, choice.sigma_min, rel_tol=1e-12)):
            return False
        if self.schedule is None or choice.schedule is None:
            return True
        s = choice.schedule
        return (int(self.schedule.get("num_scales", -1)) == s.num_scales
                and math.isclose(float(self.schedule.get("sigma_max", -1)), s.sigma_max, rel_tol=1e-12))


def save_step_size(step: StepSize | SamplerStep, path: Path, schedule: NoiseSchedule | None = None, schedule_file: Path | None = None) -> Path:
    """Write a step-size file recording the schedule it was made for (and, for another tool's sampler, which)."""
    if isinstance(step, SamplerStep):
        data = {**step.to_dict(), "ratio": ratio_for_num_scales(step.sigma_max, step.sigma_min, step.num_scales)}
    else:
        data = step.to_dict()  # with its snr
    if schedule is not None:
        data["schedule"] = {"sigma_max": schedule.sigma_max, "sigma_min": schedule.sigma_min, "num_scales": schedule.num_scales}
    if schedule_file is not None:
        data["schedule_file"] = str(Path(schedule_file).resolve())
    return write_mapping(Path(path), data)


def load_step_size(path: Path) -> SavedStepSize:
    data = read_mapping(Path(path))
    try:
        sampler = Sampler(**data["sampler"]) if isinstance(data.get("sampler"), dict) else Sampler()
        ratio = data["ratio"] if "ratio" in data else data["gamma"]  # files written before the rename held "gamma"
        m, sigma_min = int(data["steps_per_scale"]), float(data["sigma_min"])
        snr = float(data["snr"]) if not sampler.annealed_langevin else None
        eps = float(data["step_size"]) if sampler.annealed_langevin else step_size_of_snr(snr, sigma_min)
        step = StepSize.given(eps, float(ratio), m, sigma_min) if sampler.annealed_langevin else \
            StepSize(m, eps, float(data["variance_ratio"]), float(ratio), sigma_min, bool(data.get("optimal", True)))
    except (KeyError, TypeError, ValueError) as err:
        raise ScheduleError(f"{path} is not a step-size file ({err!r} missing or malformed); write it again with ncsn-tune step-size") from None
    except ScheduleError as err:
        raise ScheduleError(f"{path} is not a usable step-size file: {err}") from None
    step = dataclasses.replace(step, optimal=bool(data.get("optimal", True)))
    schedule = data.get("schedule") if isinstance(data.get("schedule"), dict) else None
    return SavedStepSize(step, schedule, Path(path), sampler, snr)


def given_step_size(step_size: float | None, snr: float | None, sigma_min: float) -> float | None:
    """The step eps given as eps or as score_sde's/diffusers' snr (eps = 2 (snr sigma_min)^2), not both; None when neither.
    Either must give 0 < eps < sigma_min^2."""
    if snr is None:
        return None if step_size is None else validate_step_size(step_size, sigma_min)
    if step_size is not None:
        raise ScheduleError("give the step as eps or as snr, not both", fields=("step_size", "snr"))
    try:
        return validate_step_size(step_size_of_snr(snr, sigma_min), sigma_min)
    except ScheduleError as err:
        raise ScheduleError(f"snr {snr:g} gives eps = 2 (snr sigma_min)^2 = {2 * (snr * sigma_min) ** 2:g}: {err}", fields="snr") from None


def resolve_steps(given: Given, choice: ScheduleChoice, *, workdir: Path | None = None) -> StepChoice:
    """M and eps for the chosen schedule (the rules in this module's docstring), with notes."""
    folder = Path(workdir) if workdir is not None else default_workdir()
    notes: list[str] = []
    saved, saved_path = None, folder / STEP_SIZE_FILE
    if given.run is None and saved_path.exists():
        saved = load_step_size(saved_path)
        if not saved.fits(choice):
            if given.step_size is None:
                notes.append(f"not using {saved_path}: it was made for " + (f"{saved.sampler.describe()}" if not saved.sampler.annealed_langevin
                             else f"another schedule (ratio {saved.step.ratio:.8g}, sigma_min {saved.step.sigma_min:g})"))
            saved = None
    run = given.run
    same_as_run = run is not None and choice.schedule is not None and choice.schedule.same_scales(run.schedule)

    if given.steps_per_scale is not None:
        m, steps_from = given.steps_per_scale, "given"
    elif run is not None:
        m, steps_from = int(run.steps_per_scale), "run"
    elif saved is not None:
        m, steps_from = saved.step.steps_per_scale, "saved"
        notes.append(f"M = {m} from {saved_path}")
    else:
        m, steps_from = DEFAULTS.steps_per_scale, "default"
        notes.append(f"M = {m} (the paper's CIFAR-10 setting)")

    used_file = None
    eps = given_step_size(given.step_size, given.snr, choice.sigma_min)
    if given.snr is not None:
        notes.append(f"eps = 2 (snr sigma_min)^2 = {eps:.6e} from snr {given.snr:g}")
    if eps is not None:
        step = StepSize.given(eps, choice.ratio, m, choice.sigma_min)
        best = optimal_step_size(choice.ratio, m, choice.sigma_min)
        notes.append(f"eps = {step.step_size:g} as given: s^2/sigma^2 = {step.variance_ratio:.6f} "
                     f"(Technique 4's optimum {best.step_size:.6e} gives {best.variance_ratio:.6f})")
    elif run is not None and same_as_run and m == int(run.steps_per_scale):
        step = StepSize.given(float(run.step_size), choice.ratio, m, choice.sigma_min)
        notes.append(f"the run's M = {m} and eps = {step.step_size:.6e}")
    elif saved is not None and saved.step.steps_per_scale == m:
        step, used_file = saved.step, saved_path
        notes.append(f"step size from {saved_path} (saved by ncsn-tune step-size): eps = {step.step_size:.6e}")
    else:
        step = optimal_step_size(choice.ratio, m, choice.sigma_min)
        why = " (the schedule or M differs from the run's)" if run is not None else ""
        notes.append(f"eps from Technique 4 for M = {m}{why}: {step.step_size:.6e}, s^2/sigma^2 = {step.variance_ratio:.6f}")
    warning = whole_chain_warning(choice.schedule, m, step.step_size)
    return StepChoice(m, step, tuple(notes + ([f"warning: {warning}"] if warning else [])), used_file, steps_from)


#: Scales times steps up to which the whole chain's recursion is run for a warning (a fraction of a second).
CHAIN_CHECK_MAX_STEPS = 200_000


def whole_chain_warning(schedule: NoiseSchedule | None, steps_per_scale: int, step_size: float) -> str | None:
    """:func:`~.advice.chain_ratio_warning` for annealed Langevin dynamics through ``schedule`` at M and eps (None without a
    schedule, or for chains too long to check quickly)."""
    if schedule is None or schedule.num_scales * steps_per_scale > CHAIN_CHECK_MAX_STEPS or not step_size < schedule.sigma_min**2:
        return None
    ratio = annealed_chain_ratio(schedule.sigma_max, schedule.sigma_min, schedule.num_scales, steps_per_scale, step_size)
    return chain_ratio_warning({f"M = {steps_per_scale}, eps = {step_size:.4g}": ratio})


def resolve(given: Given, *, workdir: Path | None = None, progress=None) -> Tuning:
    """The schedule, M and eps for what was given (both halves of the rules), with all notes."""
    choice = resolve_schedule(given, workdir=workdir, progress=progress)
    return Tuning(choice, resolve_steps(given, choice, workdir=workdir))


def resolve_sampling(given: Given, sampler: Sampler | None = None, *, workdir: Path | None = None, progress=None) -> Tuning:
    """What a sampler runs with: for annealed Langevin dynamics (``sampler`` None or ald) :func:`resolve`; for a
    predictor-corrector loop the schedule by the same rules, and M and snr by :func:`resolve_sampler_step`."""
    if sampler is None or sampler.annealed_langevin:  # Proposition 3 (score_sde's corrector-only ald loop too)
        return dataclasses.replace(resolve(given, workdir=workdir, progress=progress), sampler=sampler or Sampler())
    choice = resolve_schedule(given, workdir=workdir, progress=progress)
    step, notes = resolve_sampler_step(given, sampler, choice, workdir=workdir)
    steps_from = "given" if given.steps_per_scale is not None else "default"
    return Tuning(choice, StepChoice(step.steps_per_scale, step, tuple(notes), steps_from=steps_from), sampler=sampler)


#: Corrector steps per level for score_sde's and diffusers' samplers when none is given or saved (their defaults:
#: sampling.n_steps_each = 1, correct_steps = 1).
CORRECTOR_STEPS = 1


def resolve_sampler_step(given: Given, sampler: Sampler, choice: ScheduleChoice, *, workdir: Path | None = None) -> tuple[SamplerStep, tuple[str, ...]]:
    """M and the step for ``sampler`` on the chosen schedule, with notes. Annealed Langevin dynamics asks
    :func:`resolve_steps` (the rules above); another tool's sampler takes M given, else from the saved step-size file
    made for that sampler and schedule, else 1 (score_sde's and diffusers' default), and snr given, else the
    optimum for its loop (:func:`ncsn_tune.analysis.samplers.sampler_step`)."""
    schedule = choice.schedule
    if schedule is None:
        raise ScheduleError("a sampler runs a schedule, not a bare ratio: give a schedule", fields="ratio")
    if sampler.annealed_langevin:
        steps = resolve_steps(given, choice, workdir=workdir)
        snr = None if steps.step.optimal else steps.step.snr
        return sampler_step(sampler, schedule.sigma_max, schedule.sigma_min, schedule.num_scales, steps.steps_per_scale, snr), steps.notes
    if given.step_size is not None:
        raise ScheduleError(f"{sampler.describe()} takes its step as snr (its Langevin step is 2 (snr ||z|| / ||s||)^2, not eps): give "
                            "snr", fields=("step_size", "snr"))
    notes: list[str] = []
    folder = Path(workdir) if workdir is not None else default_workdir()
    saved_path = folder / STEP_SIZE_FILE
    saved = load_step_size(saved_path) if saved_path.exists() else None
    saved = saved if saved is not None and saved.fits(choice, sampler) else None
    if given.steps_per_scale is not None:
        m = given.steps_per_scale
    elif saved is not None:
        m = saved.step.steps_per_scale
        notes.append(f"M = {m} from {saved_path}")
    else:
        m = CORRECTOR_STEPS
        notes.append(f"M = {m} corrector step per level (score_sde's and diffusers' default)")
    if not sampler.langevin_steps:
        step = sampler_step(sampler, schedule.sigma_max, schedule.sigma_min, schedule.num_scales, m)
        return step, tuple(notes + [f"{sampler.describe()} takes no Langevin steps: nothing to tune"])
    if given.snr is not None:
        step = sampler_step(sampler, schedule.sigma_max, schedule.sigma_min, schedule.num_scales, m, given.snr)
        best = sampler_step(sampler, schedule.sigma_max, schedule.sigma_min, schedule.num_scales, m)
        notes.append(f"snr {given.snr:g} as given: s^2/sigma^2 = {step.variance_ratio:.6f} at the last level (the criterion's optimum, "
                     f"snr {best.snr:.5f}, gives {best.variance_ratio:.6f})")
    elif saved is not None and saved.step.steps_per_scale == m:
        step = sampler_step(sampler, schedule.sigma_max, schedule.sigma_min, schedule.num_scales, m, saved.snr)
        notes.append(f"snr {saved.snr:g} from {saved_path} (saved by ncsn-tune step-size)")
    else:
        step, why = recommended_sampler_step(sampler, schedule.sigma_max, schedule.sigma_min, schedule.num_scales, m)
        notes.append(why)
    return step, tuple(notes)


def recommended_sampler_step(sampler: Sampler, sigma_max: float, sigma_min: float, num_scales: int,
                             steps_per_scale: int) -> tuple[SamplerStep, str]:
    """The step ncsn_tune recommends for ``sampler`` and why (:mod:`.advice`): score_sde's published snr for a Langevin
    corrector (measured better than the chain criterion's optimum), else the criterion's optimum (Proposition 3 for
    annealed Langevin dynamics, measured best; the loop's chain for an ``ald`` corrector behind a predictor, not measured)."""
    best = sampler_step(sampler, sigma_max, sigma_min, num_scales, steps_per_scale)
    if sampler.corrector == "langevin":
        step = sampler_step(sampler, sigma_max, sigma_min, num_scales, steps_per_scale, PUBLISHED_SNR)
        return step, (f"{langevin_snr_advice(best.snr, num_scales)}; s^2/sigma^2 = {step.variance_ratio:.6f} at the last level "
                      f"(the criterion's optimum gives {best.variance_ratio:.6f})")
    if sampler.annealed_langevin:
        return best, (f"snr {best.snr:.5f} (eps {best.step_size:.6e}): Proposition 3's optimum for M = {steps_per_scale}, "
                      f"s^2/sigma^2 = {best.variance_ratio:.6f} (measured best of the steps tried, {MEASUREMENT})")
    return best, (f"snr {best.snr:.5f}: the single-Gaussian chain criterion's optimum for {sampler.describe()}, M = {steps_per_scale}, "
                  f"N = {num_scales}, s^2/sigma^2 = {best.variance_ratio:.6f} at the last level (not measured on samples)")


def whole_chain_ratios(choice: ScheduleChoice, best: StepSize, given: StepSize | None) -> tuple[float | None, float | None]:
    """s^2/sigma^2 of annealed Langevin dynamics run through the schedule's whole chain at the optimum and at a given eps
    (None without a schedule, or for an eps at or above sigma_min^2, where the chain does not settle)."""
    s = choice.schedule
    if s is None:
        return None, None
    ratio = lambda step: (annealed_chain_ratio(s.sigma_max, s.sigma_min, s.num_scales, step.steps_per_scale, step.step_size)  # noqa: E731
                          if step is not None and step.step_size < s.sigma_min**2 else None)
    return ratio(best), ratio(given)
