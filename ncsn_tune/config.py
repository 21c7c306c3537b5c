"""Every command's defaults, in one place: typed dataclasses with the paper's values.

Each configuration loads from and saves to YAML (:func:`load_config`,
:func:`save_config`); unknown keys and values of the wrong type are errors.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import NcsnTuneError

#: Where the commands keep what one step hands to the next (``$NCSN_TUNE_WORKDIR`` overrides).
DEFAULT_WORKDIR = ".ncsn-tune"
SCHEDULE_FILE = "schedule.json"
STEP_SIZE_FILE = "step_size.json"


def workdir() -> Path:
    return Path(os.environ.get("NCSN_TUNE_WORKDIR") or DEFAULT_WORKDIR)


@dataclass
class AnalysisConfig:
    """Defaults of ``sigmas`` and ``step-size`` (Song & Ermon 2020)."""

    #: The smallest scale, sigma_L (the paper's 0.01).
    sigma_min: float = 0.01
    #: The overlap C that adjacent scales should reach (Technique 2: ~0.5).
    target_overlap: float = 0.5
    #: M, Langevin steps per noise scale (the CIFAR-10 config's n_steps_each = 5).
    steps_per_scale: int = 5
    #: The split Technique 1 reads (the paper uses the training set).
    split: str = "train"
    #: Exact sigma_max: "pruned" (triangle-inequality pruning) or "blocked" (every pair).
    distance_method: str = "pruned"
    #: Where sigma_max is computed: cpu, cuda, cuda:N or auto (a GPU when torch sees one).
    device: str = "auto"


C = TypeVar("C")


def config_from_dict(cls: type[C], data: dict[str, Any], where: str = "configuration") -> C:
    """Build ``cls`` from a mapping, checking names and types against the dataclass."""
    if not isinstance(data, dict):
        raise NcsnTuneError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise NcsnTuneError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    values = {}
    defaults = cls()
    for name, value in data.items():
        default = getattr(defaults, name)
        kind = type(default)
        if default is None or value is None or isinstance(value, kind):
            values[name] = value
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            values[name] = float(value)
        elif kind is tuple and isinstance(value, list):
            values[name] = tuple(value)
        else:
            raise NcsnTuneError(f"{where}: {name} must be {kind.__name__}, got {value!r}")
    return cls(**values)


def load_config(cls: type[C], path: str | os.PathLike) -> C:
    from .files import read_mapping

    return config_from_dict(cls, read_mapping(Path(path)), str(path))


def save_config(config: Any, path: str | os.PathLike) -> Path:
    from .files import write_mapping

    return write_mapping(Path(path), dataclasses.asdict(config))
