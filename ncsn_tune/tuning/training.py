"""A training run's plan: its data (given, or the saved schedule's), a batch that fits, the schedule, M and eps."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis.noise_schedule import NoiseSchedule
from ..config import SCHEDULE_FILE, workdir as default_workdir
from ..data import DataIdentity, Dataset
from ..errors import DataError, NcsnTuneError, ScheduleError
from .schedule import Given
from .steps import Tuning, resolve
from ..units import duration

@dataclass(frozen=True)
class DataChoice:
    """Which data set to read: ``spec`` and ``data_root`` for :func:`ncsn_tune.data.load_dataset`, and why."""

    spec: str
    data_root: str | None
    notes: tuple[str, ...] = field(default_factory=tuple)


def saved_data_root(spec: str, data_root: str | None, *, workdir: Path | None = None) -> tuple[str | None, tuple[str, ...]]:
    """The CIFAR-10 folder to read ``--data cifar10`` from when no data root is given (nor $NCSN_TUNE_DATA): the one the saved
    schedule was derived from, where it still is, said in a note; else ``data_root`` as it is."""
    if data_root is not None or str(spec).lower() not in ("cifar10", "cifar-10") or os.environ.get("NCSN_TUNE_DATA"):
        return data_root, ()
    saved_path = (Path(workdir) if workdir is not None else default_workdir()) / SCHEDULE_FILE
    if not saved_path.is_file():
        return data_root, ()
    try:
        recorded = DataIdentity.from_dict(NoiseSchedule.load(saved_path).data)
    except NcsnTuneError:
        return data_root, ()
    if recorded is None or recorded.name != "cifar10" or not recorded.path or not Path(recorded.path).exists():
        return data_root, ()
    return recorded.path, (f"CIFAR-10 from {recorded.path}, where {saved_path} was derived from it (no data root given)",)


def resolve_data(spec: str | None, data_root: str | None, *, workdir: Path | None = None) -> DataChoice:
    """The data a run reads: the one given (CIFAR-10 without a data root: where the saved schedule read it,
    :func:`saved_data_root`), else the data the saved schedule was derived from, else CIFAR-10."""
    if spec is not None:
        root, notes = saved_data_root(str(spec), data_root, workdir=workdir)
        return DataChoice(str(spec), root, notes)
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
    from ..data import load_cifar10, load_dataset
    from ..errors import DataError

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
    from ..devices import resolve_device

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
        same = (recorded.same_data(train.identity(content=recorded.content_sha256 is not None))
                if recorded is not None and recorded.fingerprint else
                recorded is None or not recorded.path or Path(recorded.path).resolve() == Path(train.source or "").resolve())
        if not same:
            changed = (" (the same size and fingerprint, but other bytes: some images changed)"
                       if recorded is not None and recorded.fingerprint == train.identity().fingerprint else "")
            raise ScheduleError(f"the run was trained on {recorded.describe()}, not on {train.identity().describe()}{changed}; a run "
                                "continues on its own data (give the data it was trained on, or leave --data out)", fields=("data", "data_root"))
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


#: Floating-point operations of one training step's forward and backward pass per image, NCSNv2 for CIFAR-10 at ngf 128
#: (torch.utils.flop_counter, ANCHORS.md); other sizes scale with ngf^2 and the pixels (an estimate).
TRAIN_FLOP_PER_IMAGE = 59.4e9
#: What a CPU reaches on those convolutions, per core (float32: 183 GFLOP/s measured on 2 cores here, a forward and backward
#: pass of ngf 128 at batch 8 in 2.6 s).
CPU_FLOP_PER_S_PER_CORE = 90e9
#: Training on a CPU longer than this is refused with its estimate; longer than CPU_WARN_S it is said first.
CPU_REFUSE_S, CPU_WARN_S = 24 * 3600.0, 600.0


def cpu_training_seconds(config, image_shape: tuple[int, ...], steps_to_go: int) -> float:
    """An estimate of the seconds ``steps_to_go`` training steps take on this machine's CPU (an approximation: the network's
    operations over a typical CPU rate, :data:`CPU_FLOP_PER_S_PER_CORE` times the available cores)."""
    from ..data.image_folder import available_cpus

    pixels = math.prod(image_shape[1:]) if len(image_shape) == 3 else math.prod(image_shape)
    per_image = TRAIN_FLOP_PER_IMAGE * (config.ngf / 128) ** 2 * pixels / 1024
    return steps_to_go * config.batch_size * per_image / (CPU_FLOP_PER_S_PER_CORE * available_cpus())


def check_cpu_training_time(config, image_shape: tuple[int, ...], device: str, steps_to_go: int, refuse: bool = True) -> str | None:
    """On a CPU: refuse a run that would take more than a day (unless ``refuse`` is False, for a dry run: then said in the
    note), with the estimate and what to change; a note for one that takes more than ten minutes; None on a GPU or for
    short runs."""
    if device != "cpu" or steps_to_go <= 0:
        return None
    seconds = cpu_training_seconds(config, image_shape, steps_to_go)
    if seconds > CPU_REFUSE_S and refuse:
        raise ScheduleError(f"on this machine's CPU, {steps_to_go:,} steps at batch {config.batch_size} and ngf {config.ngf} take about "
                            f"{duration(seconds)} ({duration(seconds / steps_to_go)} a step; an estimate): train on a GPU (--device cuda), "
                            "or make the run smaller (fewer --steps, a smaller --ngf or --batch-size)",
                            fields=("device", "steps", "ngf", "batch_size"))
    if seconds > CPU_WARN_S:
        refused = ": training would be refused (more than a day; train on a GPU or make the run smaller)" if seconds > CPU_REFUSE_S else ""
        return (f"estimate: {steps_to_go:,} steps on this CPU take about {duration(seconds)} ({duration(seconds / steps_to_go)} a "
                f"step){refused}")
    return None
