"""The bundled NCSNv2 model: network, loss, sampler, trainer, checkpoints and evaluation (needs torch).

Importing this package imports torch; ``import ncsn_tune`` does not. The names
below are loaded on first use::

    from ncsn_tune.model import NCSNv2, dsm_loss, sample_annealed_langevin, load_model, Trainer
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "NCSNv2": "network",
    "count_parameters": "network",
    "dsm_loss": "loss",
    "dsm_loss_by_scale": "loss",
    "sample_annealed_langevin": "sampling",
    "langevin_step_sizes": "sampling",
    "EMA": "ema",
    "Checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_model": "checkpoint",
    "Trainer": "train",
    "generate": "generate",
    "Diagnostics": "generate",
    "chain_verdict": "generate",
    "sample_checkpoint": "generate",
    "empirical_step_size": "empirical_step",
    "EmpiricalStep": "empirical_step",
    "load_fid_inception": "inception",
    "FastScore": "accel",
    "SpeedSwitches": "accel",
    "held_out_loss": "loss",
    "evaluate_checkpoint": "evaluate",
    "Evaluation": "evaluate",
    "FidSettings": "evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
