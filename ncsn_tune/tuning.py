"""The one place that decides the tuning: the noise schedule, M (Langevin steps per scale) and eps.

Every command, the trainer and the sampler ask :func:`resolve` (or its two
halves, :func:`resolve_schedule` and :func:`resolve_steps`) with what the user
gave (:class:`Given`), and get back the schedule, M, eps and notes that say
where each came from. No torch here.

Schedule, the first rule that applies:

1. A schedule file that was named. Given data must have its D; a schedule
   derived from other data is used because it was asked for, and the notes say
   so.
2. Numbers: ``sigma_max`` with ``num_scales`` (a geometric schedule), or
   ``sigma_max`` alone (Technique 2's L for the data's or the given D).
3. A run's schedule (sampling from or evaluating a trained model).
4. The work folder's ``schedule.json`` (saved by ``ncsn-tune sigmas``). With
   data given it is used only if it was derived from that same data (same
   fingerprint, number of points, shape and split) or made from numbers for the
   same D, and only if a given ``sigma_min`` or target overlap agrees with it;
   otherwise the schedule is derived from the data and the notes say why the
   saved one was not used. Without data it is used as it is.
5. The data: Techniques 1 and 2.

A ``num_scales`` given without ``sigma_max`` re-spaces whichever schedule was
chosen (same ends, L scales). A bare ``ratio`` (no schedule) serves step-size
questions only.

M: given, else the run's, else the saved step size's (when that was made for
this schedule), else 5 (the paper's CIFAR-10 setting).
eps: given, else the run's (same schedule and M), else the saved step size
(made for this schedule and this M), else Technique 4's optimum.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .analysis.noise_schedule import NoiseSchedule, default_sigma_min, ratio_for_num_scales
from .analysis.samplers import Sampler, SamplerStep, sampler_step
from .analysis.step_size import StepSize, optimal_step_size, step_size_of_snr, validate_ratio, validate_sigma_min, validate_step_size
from .config import SCHEDULE_FILE, STEP_SIZE_FILE, AnalysisConfig, workdir as default_workdir
from .data import DataIdentity, Dataset
from .errors import DataError, ScheduleError
from .files import read_mapping, write_mapping
from .data.pixel_range import PixelRange

DEFAULTS = AnalysisConfig()


@dataclass(frozen=True)
class Given:
    """What the user gave; None means "not given" (the rules above then decide).

    ``run``: a trained run's tuning (anything with ``schedule``,
    ``steps_per_scale`` and ``step_size``, e.g. a loaded checkpoint).
    """

    schedule_file: Path | None = None
    sigma_max: float | None = None
    sigma_min: float | None = None
    num_scales: int | None = None
    dim: int | None = None
    ratio: float | None = None
    target_overlap: float | None = None
    data: Dataset | None = None
    steps_per_scale: int | None = None
    step_size: float | None = None
    snr: float | None = None
    pixel_range: PixelRange | str | None = None
    run: Any = None
    method: str = DEFAULTS.distance_method
    device: str = DEFAULTS.device


@dataclass(frozen=True)
class ScheduleChoice:
    """The schedule (None when only a ratio was given), its ratio and sigma_min, and why."""

    schedule: NoiseSchedule | None
    ratio: float
    sigma_min: float
    notes: tuple[str, ...]
    file: Path | None = None


@dataclass(frozen=True)
class StepChoice:
    """M and the step, and where M came from (``steps_from``: given, run, saved or default)."""

    steps_per_scale: int
    step: StepSize
    notes: tuple[str, ...]
    file: Path | None = None
    steps_from: str = "given"


@dataclass(frozen=True)
class Tuning:
    """Everything sampling needs: the schedule, M, eps (with Proposition 3's s^2/sigma^2) and the notes."""

    schedule: NoiseSchedule | None
    ratio: float
    sigma_min: float
    steps_per_scale: int
    step: StepSize
    notes: tuple[str, ...]
    schedule_file: Path | None = None
    step_file: Path | None = None
    steps_from: str = "given"

    @property
    def step_size(self) -> float:
        return self.step.step_size


# ---------------------------------------------------------------------------------------------- step-size files


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


# ---------------------------------------------------------------------------------------------- schedule


def _derive(given: Given, sigma_min: float, target_overlap: float, progress) -> NoiseSchedule:
    return NoiseSchedule.from_data(given.data, sigma_min=sigma_min, target_overlap=target_overlap, method=given.method,
                                   device=given.device, progress=progress)


def _derived_note(schedule: NoiseSchedule) -> str:
    pair = schedule.source.get("pair")
    how = f"T1 on {schedule.source.get('num_points', '?'):,} points: exact largest distance {schedule.sigma_max:.6f}"
    if pair:
        how += f", pair {tuple(pair)}"
    return f"schedule derived from the data ({how}; T2: L = {schedule.num_scales})"


def _dim(given: Given) -> int | None:
    """D: the data's, else the one given (both given must agree)."""
    if given.data is not None and given.dim is not None and given.dim != given.data.dim:
        raise ScheduleError(f"the dimension D = {given.dim} contradicts the data's D = {given.data.dim}; leave D out", fields="dim")
    return given.data.dim if given.data is not None else given.dim


def _pixels(given: Given) -> PixelRange | None:
    """The pixel range the schedule must be for: the data's, else the run's, else the one given (None: any)."""
    if given.data is not None:
        if given.pixel_range is not None and PixelRange.parse(given.pixel_range, error=ScheduleError) != given.data.pixel_range:
            raise ScheduleError(f"the pixel range {given.pixel_range} contradicts the data's, read in {given.data.pixel_range.label}",
                                fields="pixel_range")
        return given.data.pixel_range
    if given.run is not None:
        return given.run.schedule.pixels
    return PixelRange.parse_optional(given.pixel_range, error=ScheduleError)


def _sigma_min(given: Given) -> float:
    """sigma_min as given, else the paper's 0.01 in the pixel range asked for (0.02 in [-1, 1])."""
    return given.sigma_min if given.sigma_min is not None else default_sigma_min(_pixels(given))


def _check_pixels(schedule: NoiseSchedule, pixels: PixelRange | None, what: str) -> None:
    """A schedule made for another pixel range has every sigma off by the ratio of the widths: refused."""
    if pixels is not None and schedule.pixels != pixels:
        recorded = "was derived" if schedule.pixel_range is not None else "records no pixel range, so it is taken as made"
        raise ScheduleError(f"{what} {recorded} for pixels in {schedule.pixels.label}, but they are in {pixels.label} here: every sigma "
                            f"would be off by a factor {schedule.pixels.factor_to(pixels):g}; use a schedule for {pixels.label} "
                            "(ncsn-tune sigmas --pixel-range), or read the data in the schedule's range",
                            fields=("schedule", "pixel_range"))


def _from_numbers(given: Given, dim: int | None, sigma_min: float, target_overlap: float) -> NoiseSchedule:
    """The schedule of a given sigma_max: L scales when ``num_scales`` is given, else Technique 2's L for D; in the data's
    pixel range, else the one given."""
    pixels = _pixels(given)
    if given.num_scales is not None:
        return NoiseSchedule.from_num_scales(given.sigma_max, dim, given.num_scales, sigma_min=sigma_min, pixel_range=pixels)
    if dim is None:
        raise ScheduleError("sigma_max alone needs the data dimension D for the overlap equation, or the number of scales L",
                            fields=("dim", "num_scales", "data"))
    return NoiseSchedule.from_overlap(given.sigma_max, dim, sigma_min=sigma_min, target_overlap=target_overlap, pixel_range=pixels)


def _saved_mismatch(saved: NoiseSchedule, given: Given, data: Dataset | None) -> str | None:
    """Why the saved schedule does not apply to what was given (None when it does)."""
    if given.sigma_min is not None and not math.isclose(given.sigma_min, saved.sigma_min, rel_tol=1e-12):
        return f"it has sigma_min {saved.sigma_min:g}, not the {given.sigma_min:g} asked for"
    if (given.target_overlap is not None and saved.target_overlap is not None
            and not math.isclose(given.target_overlap, saved.target_overlap, rel_tol=1e-12)):
        return f"it targets the overlap {saved.target_overlap:g}, not the {given.target_overlap:g} asked for"
    pixels = _pixels(given)
    if pixels is not None and saved.pixels != pixels:
        return f"it was derived for pixels in {saved.pixels.label}, and they are in {pixels.label} here"
    if data is None:
        return None
    if saved.data is None:
        if saved.dim is not None and saved.dim != data.dim:
            return f"it was made for D = {saved.dim}, and this data has D = {data.dim}"
        return None
    recorded = DataIdentity.from_dict(saved.data)
    if not recorded.same_data(data.identity()):
        if recorded.path and data.source and Path(recorded.path) == Path(data.source) and recorded.name == data.name:
            return (f"the data at {recorded.path} changed since the schedule was derived from it ({recorded.num_points:,} points "
                    f"then, {data.num_points:,} now; its fingerprint differs)")
        return f"it was derived from other data: {recorded.describe()}"
    return None


def resolve_schedule(given: Given, *, workdir: Path | None = None, progress=None) -> ScheduleChoice:
    """Which schedule applies (the rules in this module's docstring), with notes saying why."""
    folder = Path(workdir) if workdir is not None else default_workdir()
    data, notes = given.data, []
    dim = _dim(given)
    pixels = _pixels(given)
    sigma_min = validate_sigma_min(given.sigma_min) if given.sigma_min is not None else None
    overlap_target = given.target_overlap if given.target_overlap is not None else DEFAULTS.target_overlap
    schedule, used_file = None, None

    if given.ratio is not None:
        if given.schedule_file is not None or given.sigma_max is not None or given.run is not None:
            raise ScheduleError("a bare ratio of adjacent scales stands in for a schedule: give one or the other",
                                fields=("ratio", "schedule", "sigma_max"))
        ratio = validate_ratio(given.ratio)
        sm = _sigma_min(given)
        return ScheduleChoice(None, ratio, sm, (f"ratio {ratio:.8g} as given, sigma_min {sm:g}",))

    if given.schedule_file is not None:
        schedule, used_file = NoiseSchedule.load(given.schedule_file), Path(given.schedule_file)
        notes.append(f"schedule from {used_file}")
        _check_fits(schedule, sigma_min, dim, str(used_file))
        _check_pixels(schedule, pixels, str(used_file))
        if data is not None and schedule.data is not None and not DataIdentity.from_dict(schedule.data).same_data(data.identity()):
            notes.append(f"note: {used_file} was derived from other data ({DataIdentity.from_dict(schedule.data).describe()}); "
                         "used because it was named")
    elif given.sigma_max is not None:
        sm = _sigma_min(given)
        schedule = _from_numbers(given, dim, sm, overlap_target)
        if given.num_scales is not None:
            notes.append(f"schedule from the numbers given (sigma_max {given.sigma_max:g}, sigma_min {sm:g}, L = {given.num_scales})")
        else:
            notes.append(f"schedule from sigma_max {given.sigma_max:g} as given and T2 for D = {dim}: L = {schedule.num_scales}")
    elif given.run is not None:
        schedule = given.run.schedule
        _check_fits(schedule, sigma_min, dim, "the run's schedule")
        _check_pixels(schedule, pixels, "the run's schedule")
        notes.append(f"the run's schedule ({schedule.describe()})")
    else:
        saved_path = folder / SCHEDULE_FILE
        if saved_path.exists():
            saved = NoiseSchedule.load(saved_path)
            why_not = _saved_mismatch(saved, given, data)
            if why_not is None:
                if data is not None and saved.dim is None:
                    saved = dataclasses.replace(saved, dim=data.dim)
                if data is None:
                    _check_fits(saved, sigma_min, dim, str(saved_path))
                schedule, used_file = saved, saved_path
                notes.append(f"schedule from {saved_path} (saved by ncsn-tune sigmas; {saved.describe()})")
            elif data is None:
                raise ScheduleError(f"the saved schedule {saved_path} does not fit: {why_not}", fields=("sigma_min", "target_overlap"))
            else:
                notes.append(f"not using the saved schedule {saved_path}: {why_not}")
        if schedule is None:
            if data is None:
                raise ScheduleError(
                    f"no noise schedule was given and the work folder has none ({saved_path}): give data, a schedule file, or "
                    "sigma_max with the number of scales", fields=("data", "schedule", "sigma_max"))
            schedule = _derive(given, _sigma_min(given), overlap_target, progress)
            notes.append(_derived_note(schedule))

    if given.num_scales is not None and given.sigma_max is None and schedule.num_scales != given.num_scales:
        schedule = schedule.with_num_scales(given.num_scales)
        notes.append(f"re-spaced to L = {given.num_scales} scales between the same ends")
    if dim is not None and schedule.dim is None:
        schedule = dataclasses.replace(schedule, dim=dim)
    return ScheduleChoice(schedule, schedule.ratio, schedule.sigma_min, tuple(notes), used_file)


def _check_fits(schedule: NoiseSchedule, sigma_min: float | None, dim: int | None, what: str) -> None:
    if sigma_min is not None and not math.isclose(sigma_min, schedule.sigma_min, rel_tol=1e-12):
        raise ScheduleError(f"sigma_min {sigma_min:g} contradicts {what}, whose sigma_min is {schedule.sigma_min:g}; leave it out",
                            fields="sigma_min")
    if dim is not None and schedule.dim is not None and schedule.dim != dim:
        raise ScheduleError(f"{what} is for D = {schedule.dim}, but the data has D = {dim}; derive a schedule for this data",
                            fields=("schedule", "data"))


# ---------------------------------------------------------------------------------------------- M and eps


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
        step = StepSize.given(validate_step_size(eps, choice.sigma_min), choice.ratio, m, choice.sigma_min)
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
    return StepChoice(m, step, tuple(notes), used_file, steps_from)


def resolve(given: Given, *, workdir: Path | None = None, progress=None) -> Tuning:
    """The schedule, M and eps for what was given (both halves of the rules), with all notes."""
    choice = resolve_schedule(given, workdir=workdir, progress=progress)
    steps = resolve_steps(given, choice, workdir=workdir)
    return Tuning(choice.schedule, choice.ratio, choice.sigma_min, steps.steps_per_scale, steps.step,
                  choice.notes + steps.notes, choice.file, steps.file, steps.steps_from)


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
    step = sampler_step(sampler, schedule.sigma_max, schedule.sigma_min, schedule.num_scales, m, given.snr)
    if given.snr is not None:
        best = sampler_step(sampler, schedule.sigma_max, schedule.sigma_min, schedule.num_scales, m)
        notes.append(f"snr {given.snr:g} as given: s^2/sigma^2 = {step.variance_ratio:.6f} at the last level (the optimum, snr "
                     f"{best.snr:.5f}, gives {best.variance_ratio:.6f})")
    else:
        notes.append(f"snr from Technique 4 for {sampler.describe()}, M = {m}, N = {schedule.num_scales}: {step.snr:.5f}, "
                     f"s^2/sigma^2 = {step.variance_ratio:.6f} at the last level")
    return step, tuple(notes)


# ---------------------------------------------------------------------------------------------- a run's data


@dataclass(frozen=True)
class DataChoice:
    """Which data set to read: ``spec`` and ``data_root`` for :func:`ncsn_tune.data.load_dataset`, and why."""

    spec: str
    data_root: str | None
    notes: tuple[str, ...] = field(default_factory=tuple)


def resolve_data(spec: str | None, data_root: str | None, *, workdir: Path | None = None) -> DataChoice:
    """The data a run reads: the one given, else the data the saved schedule was derived from, else CIFAR-10."""
    if spec is not None:
        return DataChoice(str(spec), data_root)
    saved_path = (Path(workdir) if workdir is not None else default_workdir()) / SCHEDULE_FILE
    if saved_path.exists():
        recorded = DataIdentity.from_dict(NoiseSchedule.load(saved_path).data)
        if recorded is not None and recorded.path and not Path(recorded.path).exists():
            raise DataError(f"the saved schedule {saved_path} was derived from {recorded.describe()}, which is no longer there; give the "
                            "data to train on (it is not swapped for another data set silently)", fields="data")
        if recorded is not None and recorded.path:
            note = f"data from {saved_path}: {recorded.describe()}"
            if recorded.name == "cifar10":
                return DataChoice("cifar10", recorded.path, (note,))
            return DataChoice(recorded.path, None, (note,))
    return DataChoice("cifar10", data_root, ("data: cifar10 (the default)",))


# ---------------------------------------------------------------------------------------------- a training run


@dataclass(frozen=True)
class TrainingPlan:
    """What a training run uses: the resolved configuration (absolute data path, the schedule's numbers, M and
    eps filled in), the training and held-out images, the tuning and the notes."""

    config: Any
    train: Dataset
    test: Dataset | None
    tuning: Tuning
    notes: tuple[str, ...]

    @property
    def schedule(self) -> NoiseSchedule:
        return self.tuning.schedule

    @property
    def step_size(self) -> float:
        return self.tuning.step_size


def load_training_data(spec: str, data_root: str | None, progress=None) -> tuple[Dataset, Dataset | None, list[str]]:
    """The training images and, for CIFAR-10, its test split as held-out images."""
    from .data import load_cifar10, load_dataset
    from .errors import DataError

    train = load_dataset(spec, data_root, "train", progress=progress)
    if train.values.ndim != 4:
        raise DataError(f"{train.name} holds vectors of shape {train.image_shape}; training needs images (N, C, H, W)", fields="data")
    if train.name != "cifar10":
        return train, None, [f"{train.name} has no held-out split: the held-out loss is not computed during training"]
    try:
        return train, load_cifar10(train.source, "test", download=False), []
    except DataError:
        return train, None, [f"the CIFAR-10 test batch is not in {train.source}: the held-out loss is not computed"]


def plan_training(config, *, run=None, changed: set[str] = frozenset(), workdir: Path | None = None, progress=None) -> TrainingPlan:
    """Resolve a training run: its data (:func:`resolve_data`), schedule, M and eps (:func:`resolve`).

    ``run``: the checkpoint a resumed run continues; its schedule is kept (a configuration whose
    schedule numbers differ from it is refused) and it must be the same data; its M and eps stay unless
    ``changed`` names them.
    """
    config.validate()
    from .devices import resolve_device

    device = resolve_device(config.device)  # a device that cannot be honoured is refused now, not after the data is read
    data = resolve_data(config.data, config.data_root, workdir=workdir)
    train, test, notes = load_training_data(data.spec, data.data_root, progress)
    check_batch_fits(config, train.image_shape, device)
    if config.batch_size > train.num_points:
        notes.append(f"the batch of {config.batch_size:,} is larger than the {train.num_points:,} training images: every batch holds "
                     "some images more than once")
    notes = list(data.notes) + notes
    if run is not None:
        recorded = DataIdentity.from_dict(getattr(run, "data", None))
        same = (recorded.same_data(train.identity()) if recorded is not None and recorded.fingerprint else
                recorded is None or not recorded.path or Path(recorded.path).resolve() == Path(train.source or "").resolve())
        if not same:
            raise ScheduleError(f"the run was trained on {recorded.describe()}, not on {train.identity().describe()}; a run continues "
                                "on its own data (give the data it was trained on, or leave --data out)", fields=("data", "data_root"))
        for name in ("sigma_max", "sigma_min", "num_scales"):
            value = getattr(config, name)
            if value is not None and not math.isclose(value, getattr(run.schedule, name), rel_tol=1e-12):
                raise ScheduleError(f"the run was trained with {name} = {getattr(run.schedule, name):g}; the schedule cannot change "
                                    f"when a run continues (asked for {value:g})", fields=name)
        given = Given(data=train, steps_per_scale=config.steps_per_scale if "steps_per_scale" in changed else None,
                      step_size=config.step_size if "step_size" in changed else None, run=run, device=config.device)
    else:
        given = Given(schedule_file=Path(config.schedule) if config.schedule else None, sigma_max=config.sigma_max,
                      sigma_min=config.sigma_min, num_scales=config.num_scales, target_overlap=config.target_overlap, data=train,
                      steps_per_scale=config.steps_per_scale, step_size=config.step_size, device=config.device)
    tuning = resolve(given, workdir=workdir, progress=progress)
    schedule = tuning.schedule
    where = {"data": "cifar10", "data_root": train.source} if train.name == "cifar10" else {"data": train.source, "data_root": None}
    resolved = dataclasses.replace(config, **where, schedule=None, sigma_max=schedule.sigma_max, sigma_min=schedule.sigma_min,
                                   num_scales=schedule.num_scales, target_overlap=schedule.target_overlap,
                                   steps_per_scale=tuning.steps_per_scale, step_size=tuning.step_size)
    return TrainingPlan(resolved, train, test, tuning, tuple(notes) + tuning.notes)


#: Activation memory of one CIFAR-10 image (3x32x32) in an NCSNv2 training step at ngf 128, fp32: the official code's
#: 8.6-9.1 GB peak at batch 128, less its weights and Adam state. Halved below, so that the check only refuses batches
#: that cannot fit by a wide margin.
ACTIVATION_BYTES_PER_IMAGE = 65e6


def training_memory(batch_size: int, ngf: int, image_shape: tuple[int, ...]) -> float:
    """A lower bound of a training step's activation memory in bytes: it grows with the batch, the width and the pixels."""
    pixels = math.prod(image_shape[-2:]) if len(image_shape) >= 2 else 1024
    return 0.5 * ACTIVATION_BYTES_PER_IMAGE * batch_size * (ngf / 128) * (pixels / 1024)


def device_memory(device: str) -> float | None:
    """The memory a training step can use: the GPU's, or this machine's RAM (None when unknown)."""
    if device.startswith("cuda"):
        import torch

        return float(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    try:
        return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_batch_fits(config, image_shape: tuple[int, ...], device: str) -> None:
    """Refuse, before any work, a batch whose activations alone exceed the device's memory (a lower bound)."""
    processes = max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))  # under torchrun each GPU takes its share of the batch
    need, have = training_memory(math.ceil(config.batch_size / processes), config.ngf, image_shape), device_memory(device)
    if have is not None and need > have:
        where = "this GPU's" if device.startswith("cuda") else "this machine's"
        raise ScheduleError(f"a training batch of {config.batch_size:,} images of {'x'.join(map(str, image_shape))} at ngf {config.ngf} "
                            f"needs at least {need / 2**30:,.0f} GiB of activations, more than {where} {have / 2**30:,.0f} GiB; choose a "
                            "smaller batch size", fields="batch_size")


def derive_schedule(given: Given, *, progress=None) -> NoiseSchedule:
    """What ``ncsn-tune sigmas`` computes, always afresh: Technique 1 on the data (unless sigma_max is given),
    then Technique 2's L (unless num_scales is given)."""
    data, dim = given.data, _dim(given)
    sigma_min = _sigma_min(given)
    target = given.target_overlap if given.target_overlap is not None else DEFAULTS.target_overlap
    if given.sigma_max is None:
        if data is None:
            raise ScheduleError("give data (Technique 1 computes sigma_max from it), or sigma_max as a number with the dimension D",
                                fields=("data", "sigma_max", "dim"))
        return NoiseSchedule.from_data(data, sigma_min=sigma_min, target_overlap=target, num_scales=given.num_scales,
                                       method=given.method, device=given.device, progress=progress)
    return _from_numbers(given, dim, sigma_min, target)
