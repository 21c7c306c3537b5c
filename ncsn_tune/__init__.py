"""ncsn_tune: noise scales, step sizes and training for score-based generative models (Song & Ermon 2020).

The analysis API needs only NumPy (importing ``ncsn_tune`` never imports torch,
SciPy, PIL or matplotlib)::

    import ncsn_tune as nt
    data = nt.load_dataset("cifar10", data_root="...")      # or a .npy/.npz path, an image folder, an array
    schedule = nt.NoiseSchedule.from_data(data)             # Technique 1 (exact sigma_max) + Technique 2
    step = schedule.step_size(steps_per_scale=5)            # Technique 4: step.step_size, step.variance_ratio
    pc = nt.sampler_step(nt.Sampler.named("pc"), schedule.sigma_max, schedule.sigma_min, schedule.num_scales, 1)  # score_sde's loop
    schedule.save("schedule.json"); nt.NoiseSchedule.load("schedule.json")

The model (NCSNv2, DSM loss, sampler, trainer) lives in :mod:`ncsn_tune.model`,
which imports torch when it is first used (``nt.model`` or ``import ncsn_tune.model``).
"""

from __future__ import annotations

import importlib

from .version import __version__ as __version__

#: The public names and the modules that hold them. Imported when first used, so that ``import ncsn_tune`` (and the
#: command line's start, during which Ctrl-C must give one line, not a traceback) costs almost nothing.
_EXPORTS = {
    "AnalysisConfig": "config", "TrainConfig": "config", "load_config": "config", "save_config": "config",
    "DataIdentity": "data", "Dataset": "data", "as_dataset": "data", "load_dataset": "data",
    "CheckpointError": "errors", "DataError": "errors", "NcsnTuneError": "errors", "RunError": "errors", "ScheduleError": "errors",
    "PixelRange": "data",
    "Given": "tuning", "Tuning": "tuning", "resolve": "tuning",
    **{name: "analysis" for name in ("FarthestPair", "NoiseSchedule", "Sampler", "SamplerStep", "StepSize", "brute_force_max_distance", "chain_verdict",
                                     "geometric_sigmas", "max_pairwise_distance", "num_scales_for_ratio", "optimal_step_size", "overlap",
                                     "ratio_for_num_scales", "sampler_step", "solve_gamma", "variance_ratio")},
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name == "model":  # imports torch, so only when asked for
        return importlib.import_module(".model", __name__)
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | {"model"})
