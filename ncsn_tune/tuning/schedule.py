"""The schedule: what was given -> which schedule applies, and why (the rules in :mod:`ncsn_tune.tuning`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis.noise_schedule import NoiseSchedule, default_sigma_min
from ..analysis.step_size import validate_ratio, validate_sigma_min
from ..config import SCHEDULE_FILE, AnalysisConfig, workdir as default_workdir
from ..data import DataIdentity, Dataset
from ..data.pixel_range import PixelRange
from ..errors import NcsnTuneError, ScheduleError

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
    distributed: bool = False  # Technique 1 by every process of the torch.distributed group (torchrun), each on its shard


@dataclass(frozen=True)
class ScheduleChoice:
    """The schedule (None when only a ratio was given), its ratio and sigma_min, why, and the file it came from."""

    schedule: NoiseSchedule | None
    ratio: float
    sigma_min: float
    notes: tuple[str, ...]
    file: Path | None = None


def _derive(given: Given, sigma_min: float, target_overlap: float, progress) -> NoiseSchedule:
    return NoiseSchedule.from_data(given.data, sigma_min=sigma_min, target_overlap=target_overlap, method=given.method,
                                   device=given.device, distributed=given.distributed, progress=progress)


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
                                       method=given.method, device=given.device, distributed=given.distributed,
                                       progress=progress)
    return _from_numbers(given, dim, sigma_min, target)


def keep_derived_schedule(path: Path, schedule: NoiseSchedule, force: bool) -> None:
    """A schedule of numbers does not silently replace one derived from data (the chain's next steps read that file):
    refused unless ``force``, with where else to write it."""
    if force or schedule.data or not path.is_file():
        return
    try:
        old = NoiseSchedule.load(path)
    except NcsnTuneError:  # not a schedule file: check_output's rules decide about it
        return
    if old.data:
        raise ScheduleError(f"{path} holds the schedule derived from {old.data.get('name')} (sigma_max {old.sigma_max:.6g}, L = "
                            f"{old.num_scales}), which step-size and train read next; this one comes from numbers: write it elsewhere "
                            "(--output FILE) or replace that one (--force)", fields=("output", "force"))


def outlier_drops(data: Dataset | None, schedule: NoiseSchedule, ks, *, method: str = DEFAULTS.distance_method,
                  device: str = DEFAULTS.device, progress=None) -> list:
    """sigma_max with the k farthest outliers left out, for each k in ``ks``, for the data the schedule's Technique 1 read
    (:func:`ncsn_tune.analysis.initial_noise_scale.diameter_without_outliers`, reusing the schedule's own result), searched
    by ``method`` on ``device`` as that was."""
    from ..analysis.initial_noise_scale import FarthestPair, diameter_without_outliers

    src = schedule.source
    if data is None or src.get("pair") is None:
        raise ScheduleError("leaving outliers out reads the data Technique 1 measures: give the data (not sigma_max)",
                            fields=("outliers", "data"))
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1 or max(ks) > data.num_points - 2:
        raise ScheduleError(f"outlier counts run from 1 to {data.num_points - 2:,} (the points less two), got {ks}", fields="outliers")
    return diameter_without_outliers(data.points(), ks, scale=data.scale, method=method, device=device,
                                     full=FarthestPair.from_dict(src), progress=progress)
