"""ncsn_tune: noise scales, step sizes and training for score-based generative models (Song & Ermon 2020).

The analysis API needs only NumPy (importing ``ncsn_tune`` never imports torch,
SciPy, PIL or matplotlib)::

    import ncsn_tune as nt
    data = nt.load_dataset("cifar10", data_root="...")      # or a .npy/.npz path, an image folder, an array
    schedule = nt.NoiseSchedule.from_data(data)             # Technique 1 (exact sigma_max) + Technique 2
    step = schedule.step_size(steps_per_scale=5)            # Technique 4: step.step_size, step.variance_ratio
    pc = schedule.sampler_step(nt.Sampler.named("pc"), 1)   # the same for score_sde's PC loop: pc.snr, pc.variance_ratio
    schedule.save("schedule.json"); nt.NoiseSchedule.load("schedule.json")

The model (NCSNv2, DSM loss, sampler, trainer) lives in :mod:`ncsn_tune.model`,
which imports torch when it is first used (``nt.model`` or ``import ncsn_tune.model``).
"""

from __future__ import annotations

import importlib

from .analysis import (
    FarthestPair,
    NoiseSchedule,
    Sampler,
    SamplerStep,
    StepSize,
    brute_force_max_distance,
    geometric_sigmas,
    max_pairwise_distance,
    num_scales_for_ratio,
    optimal_step_size,
    overlap,
    ratio_for_num_scales,
    sampler_step,
    solve_gamma,
    variance_ratio,
)
from .config import AnalysisConfig, TrainConfig, load_config, save_config
from .data import DataIdentity, Dataset, as_dataset, load_dataset
from .errors import CheckpointError, DataError, NcsnTuneError, RunError, ScheduleError
from .pixel_range import PixelRange
from .tuning import Given, Tuning, resolve

__version__ = "0.2.0"

__all__ = [
    "AnalysisConfig",
    "CheckpointError",
    "DataError",
    "DataIdentity",
    "Dataset",
    "FarthestPair",
    "Given",
    "NcsnTuneError",
    "NoiseSchedule",
    "PixelRange",
    "RunError",
    "Sampler",
    "SamplerStep",
    "ScheduleError",
    "StepSize",
    "TrainConfig",
    "Tuning",
    "as_dataset",
    "brute_force_max_distance",
    "geometric_sigmas",
    "load_config",
    "load_dataset",
    "max_pairwise_distance",
    "num_scales_for_ratio",
    "optimal_step_size",
    "overlap",
    "ratio_for_num_scales",
    "resolve",
    "sampler_step",
    "save_config",
    "solve_gamma",
    "variance_ratio",
]


def __getattr__(name: str):
    if name == "model":  # imports torch, so only when asked for
        return importlib.import_module(".model", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
