"""Resolving what a training run uses: configuration, data, schedule and step size (no torch here).

The schedule comes from, in order: ``config.schedule`` (a file), numbers in the
configuration (``sigma_max`` with ``num_scales``), the work folder's
``schedule.json`` that ``ncsn-tune sigmas`` saved (when its dimension fits the
data), or the data itself (Techniques 1 and 2). The step size comes from the
configuration, else the work folder's ``step_size.json`` (when it was made for
this schedule and M), else Technique 4. Every choice is recorded in ``notes``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .analysis.initial_noise_scale import max_pairwise_distance
from .analysis.noise_schedule import NoiseSchedule, schedule_from_num_scales, schedule_from_overlap
from .analysis.step_size import optimal_step_size
from .config import SCHEDULE_FILE, STEP_SIZE_FILE, TrainConfig, workdir
from .data import Dataset, load_dataset
from .errors import NcsnTuneError
from .files import load_schedule, load_step_size


@dataclass
class RunPlan:
    config: TrainConfig
    train: Dataset
    test: Dataset | None
    schedule: NoiseSchedule
    step_size: float
    notes: list[str] = field(default_factory=list)


def load_run_data(config: TrainConfig, progress=None) -> tuple[Dataset, Dataset | None, list[str]]:
    notes = []
    train = load_dataset(config.data, config.data_root, "train", progress=progress)
    if train.values.ndim != 4:
        raise NcsnTuneError(f"{config.data} holds vectors of shape {train.image_shape}; training needs images (N, C, H, W)")
    test = None
    if config.data.lower() in ("cifar10", "cifar-10"):
        test = load_dataset(config.data, config.data_root, "test", progress=progress)
    else:
        notes.append("no test split for this data set: the held-out loss is not computed")
    return train, test, notes


def resolve_schedule(config: TrainConfig, train: Dataset, progress=None) -> tuple[NoiseSchedule, list[str]]:
    dim = train.dim
    if config.schedule:
        schedule = load_schedule(Path(config.schedule))
        note = f"schedule from {config.schedule}"
    elif config.sigma_max is not None and config.num_scales is not None:
        schedule = schedule_from_num_scales(config.sigma_max, dim, config.num_scales, config.sigma_min, {"given": True})
        note = f"schedule from the configuration (sigma_max {config.sigma_max:g}, L = {config.num_scales})"
    else:
        saved = workdir() / SCHEDULE_FILE
        schedule = None
        if config.sigma_max is None and saved.exists():
            candidate = load_schedule(saved)
            if candidate.dim == dim and candidate.sigma_min == config.sigma_min:
                schedule, note = candidate, f"schedule from {saved} (saved by ncsn-tune sigmas)"
        if schedule is None:
            if config.sigma_max is None:
                found = max_pairwise_distance(train.points(), scale=train.scale, device=config.device, progress=progress)
                sigma_max, how = found.distance, f"T1 on {train.num_points} points: exact max distance {found.distance:.6f}, pair {found.pair}"
            else:
                sigma_max, how = config.sigma_max, f"sigma_max {config.sigma_max:g} from the configuration"
            if config.num_scales is not None:
                schedule = schedule_from_num_scales(sigma_max, dim, config.num_scales, config.sigma_min, {"name": train.name})
            else:
                schedule = schedule_from_overlap(sigma_max, dim, config.sigma_min, config.target_overlap, {"name": train.name})
            note = f"schedule derived from the data ({how})"
    if schedule.dim != dim:
        raise NcsnTuneError(f"the schedule is for D = {schedule.dim} but the data has D = {dim}; derive one for this data set")
    return schedule, [note]


def resolve_step_size(config: TrainConfig, schedule: NoiseSchedule) -> tuple[float, list[str]]:
    if config.step_size is not None:
        return config.step_size, [f"step size {config.step_size:g} from the configuration"]
    saved = workdir() / STEP_SIZE_FILE
    if saved.exists():
        step = load_step_size(saved)
        if step.steps_per_scale == config.steps_per_scale and abs(step.gamma - schedule.ratio) <= 1e-12 * schedule.ratio and step.sigma_min == schedule.sigma_min:
            return step.step_size, [f"step size from {saved} (saved by ncsn-tune step-size)"]
    best = optimal_step_size(schedule.ratio, config.steps_per_scale, schedule.sigma_min)
    return best.step_size, [f"step size from Technique 4 for M = {config.steps_per_scale}: s^2/sigma^2 = {best.variance_ratio:.6f}"]


def plan_run(config: TrainConfig, progress=None) -> RunPlan:
    config.validate()
    train, test, notes = load_run_data(config, progress)
    schedule, more = resolve_schedule(config, train, progress)
    step_size, more2 = resolve_step_size(config, schedule)
    resolved = dataclasses.replace(
        config, sigma_max=schedule.sigma_max, sigma_min=schedule.sigma_min, num_scales=schedule.num_scales, step_size=step_size
    )
    return RunPlan(resolved, train, test, schedule, step_size, notes + more + more2)
