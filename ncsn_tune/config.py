"""Every command's defaults, in one place: typed dataclasses with the paper's values.

Each configuration loads from and saves to YAML (:func:`load_config`,
:func:`save_config`); unknown keys and values of the wrong type are errors.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .defaults import SIGMA_MIN, STEPS_PER_SCALE, TARGET_OVERLAP
from .checks import is_real, is_whole
from .errors import NcsnTuneError

#: Where the commands keep what one step hands to the next (``$NCSN_TUNE_WORKDIR`` overrides).
DEFAULT_WORKDIR = ".ncsn-tune"
SCHEDULE_FILE = "schedule.json"
STEP_SIZE_FILE = "step_size.json"
#: torch.compile's modes.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: The NCSNv2 depths (the network lives in ncsn_tune.model.network; the names are here so that no torch is needed to check them).
ARCHITECTURES = ("ncsnv2", "ncsnv2_deeper", "ncsnv2_deepest")


#: Seeds run from 0 to this (torch's and NumPy's generators take 64-bit seeds; signed keeps every consumer happy).
MAX_SEED = 2**63 - 1


def workdir() -> Path:
    """Where one step saves what the next reads: ``$NCSN_TUNE_WORKDIR``, else ``.ncsn-tune`` here."""
    path = Path(os.environ.get("NCSN_TUNE_WORKDIR") or DEFAULT_WORKDIR).expanduser()  # "~/wd" quoted in a shell stays unexpanded
    if path.exists() and not path.is_dir():
        where = "NCSN_TUNE_WORKDIR" if os.environ.get("NCSN_TUNE_WORKDIR") else "the work folder"
        raise NcsnTuneError(f"{where} {path} is a file, not a folder; point NCSN_TUNE_WORKDIR at a folder")
    return path


def setting(default: Any, help: str) -> Any:
    """A dataclass field with its default and a one-line help text (shown by ``ncsn-tune ... -h``)."""
    return dataclasses.field(default=default, metadata={"help": help})


def help_of(cls: type, name: str) -> str:
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


@dataclass
class AnalysisConfig:
    """Defaults of the analysis commands (Song & Ermon 2020)."""

    sigma_min: float = setting(SIGMA_MIN, "The smallest noise scale sigma_L (the paper's 0.01) for pixels in [0, 1].")
    target_overlap: float = setting(TARGET_OVERLAP, "The overlap C that adjacent scales should reach (Technique 2: about 0.5).")
    steps_per_scale: int = setting(STEPS_PER_SCALE, "M, Langevin steps per noise scale (the CIFAR-10 config's n_steps_each = 5).")
    split: str = setting("train", "The split Technique 1 reads (the paper uses the training set).")
    distance_method: str = setting("pruned", "Exact sigma_max: pruned (skips pairs that provably cannot win) or blocked (every pair).")
    device: str = setting("auto", "Where to compute: cpu, cuda, cuda:N or auto (a GPU where it pays off).")


C = TypeVar("C")

_KINDS = {"bool": bool, "int": int, "float": float, "str": str, "tuple": tuple}


def _field_kind(fld: dataclasses.Field) -> tuple[type, bool]:
    """(the value type, whether None is allowed) from a field's annotation such as 'float | None'."""
    parts = [p.strip() for p in str(fld.type).split("|")]
    optional = "None" in parts
    names = [p for p in parts if p != "None"]
    return _KINDS.get(names[0].split("[")[0], str) if names else str, optional


def config_from_dict(cls: type[C], data: dict[str, Any], where: str = "configuration") -> C:
    """Build ``cls`` from a mapping, checking names and types against the dataclass's annotations."""
    if not isinstance(data, dict):
        raise NcsnTuneError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise NcsnTuneError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    values = {}
    for name, value in data.items():
        kind, optional = _field_kind(fields[name])
        if value is None and optional:
            values[name] = None
        elif kind is float and is_real(value):
            values[name] = float(value)
        elif kind is tuple and isinstance(value, (list, tuple)):
            values[name] = tuple(value)
        elif is_whole(value) if kind is int else isinstance(value, kind):
            values[name] = value
        else:
            raise NcsnTuneError(f"{where}: {name} must be {kind.__name__}{' or null' if optional else ''}, got {value!r}",
                                fields=name)
    return cls(**values)


def load_config(cls: type[C], path: str | os.PathLike) -> C:
    from .files import read_mapping

    return config_from_dict(cls, read_mapping(Path(path)), str(path))


def save_config(config: Any, path: str | os.PathLike) -> Path:
    from .files import write_mapping

    return write_mapping(Path(path), dataclasses.asdict(config))


@dataclass
class TrainConfig:
    """Everything ``ncsn-tune train`` uses, with the paper's CIFAR-10 settings as defaults.

    Settings left as None are resolved when training starts (:mod:`ncsn_tune.tuning`):
    the saved schedule and step size when they fit the data, else Techniques 1, 2
    and 4 on the data; the resolved values are what the run folder records.
    """

    # data
    data: str | None = setting(None, "Data set: cifar10, a .npy/.npz file or an image folder [default: the saved schedule's data, else cifar10].")
    data_root: str | None = setting(None, "Folder holding cifar-10-batches-py/ [default: $NCSN_TUNE_DATA, else the cache].")
    random_flip: bool = setting(True, "Random horizontal flips of the training images.")
    # noise schedule and sampling (None: resolved)
    schedule: str | None = setting(None, "Schedule file to train with [default: the saved one if it fits the data, else derived].")
    sigma_max: float | None = setting(None, "The largest scale [default: Technique 1 on the data].")
    sigma_min: float | None = setting(None, "The smallest scale [default: the saved schedule's, else 0.01].")
    num_scales: int | None = setting(None, "Number of scales L [default: Technique 2's].")
    target_overlap: float | None = setting(None, "Overlap C of adjacent scales for Technique 2 [default: 0.5].")
    steps_per_scale: int | None = setting(None, "M, Langevin steps per scale for the sample grids [default: the saved step size's, else 5].")
    step_size: float | None = setting(None, "Langevin step size eps [default: the saved one if it fits, else Technique 4].")
    # model
    architecture: str = setting("auto", "ncsnv2, ncsnv2_deeper, ncsnv2_deepest, or auto (by image size).")
    ngf: int = setting(128, "Base number of feature maps (the CIFAR-10 config's 128).")
    # optimisation (Adam as in the paper's code)
    batch_size: int = setting(128, "Global batch size (split over GPUs under torchrun).")
    steps: int = setting(300000, "Total training steps to reach (a resumed run counts its earlier steps).")
    lr: float = setting(1e-4, "Adam learning rate.")
    beta1: float = setting(0.9, "Adam beta1.")
    beta2: float = setting(0.999, "Adam beta2.")
    adam_eps: float = setting(1e-8, "Adam epsilon.")
    weight_decay: float = setting(0.0, "Adam weight decay.")
    ema_rate: float = setting(0.999, "EMA rate of the weights used for sampling (Technique 5).")
    seed: int = setting(0, "Random seed (batches, flips, noise).")
    # speed switches (each can be turned off for debugging; they only act on a GPU)
    device: str = setting("auto", "cpu, cuda, cuda:N or auto.")
    bf16: bool = setting(True, "bf16 autocast (GPU).")
    channels_last: bool = setting(True, "channels_last memory format (GPU).")
    fused_adam: bool = setting(True, "Fused Adam (GPU).")
    compile: bool | None = setting(None, "torch.compile the network (GPU) [default: when the planned steps repay the compile time].")
    compile_mode: str = setting("default", "torch.compile mode: default (the fastest measured, docs/speed.md), reduce-overhead, max-autotune "
                                                    "or max-autotune-no-cudagraphs.")
    compile_scope: str = setting("model", "What torch.compile compiles: the whole network (model) or each block on its own (blocks).")
    cuda_graphs: bool = setting(True, "Capture the whole training step in one CUDA graph (GPU, one process).")
    deterministic: bool = setting(False, "Deterministic GPU kernels for bitwise-repeatable runs (slower).")
    # logging and checkpoints
    log_every: int = setting(100, "Steps between loss records in metrics.jsonl.")
    eval_every: int = setting(5000, "Steps between held-out loss evaluations.")
    eval_images: int = setting(256, "Held-out images for each evaluation.")
    sample_every: int = setting(5000, "Steps between sample grids.")
    sample_count: int = setting(64, "Images in each sample grid.")
    checkpoint_every: int = setting(5000, "Steps between checkpoints.")
    keep_checkpoints: int = setting(3, "Checkpoints kept (the newest).")

    def validate(self) -> "TrainConfig":
        positive = ("batch_size", "steps", "ngf", "log_every", "eval_every", "sample_every", "checkpoint_every", "keep_checkpoints",
                    "eval_images", "sample_count")
        for name in positive:
            if getattr(self, name) < 1:
                raise NcsnTuneError(f"{name} must be at least 1, got {getattr(self, name)}", fields=name)
        if self.steps_per_scale is not None and self.steps_per_scale < 1:
            raise NcsnTuneError(f"steps_per_scale must be at least 1, got {self.steps_per_scale}", fields="steps_per_scale")
        for name in ("lr", "adam_eps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value < 1e30):
                raise NcsnTuneError(f"{name} must be a positive number below 1e30, got {value}", fields=name)
        if not (math.isfinite(self.weight_decay) and 0 <= self.weight_decay < 1e30):
            raise NcsnTuneError(f"weight_decay must be a number >= 0, got {self.weight_decay}", fields="weight_decay")
        for name in ("ema_rate", "beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise NcsnTuneError(f"{name} must lie in [0, 1), got {getattr(self, name)}", fields=name)
        if not 0 <= self.seed <= MAX_SEED:
            raise NcsnTuneError(f"seed must lie between 0 and 2^63 - 1, got {self.seed}", fields="seed")
        if self.compile_mode not in COMPILE_MODES:
            raise NcsnTuneError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}", fields="compile_mode")
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            raise NcsnTuneError(f"step_size must be a positive number, got {self.step_size}", fields="step_size")
        if self.compile_scope not in ("model", "blocks"):
            raise NcsnTuneError(f"compile_scope must be model or blocks, got {self.compile_scope!r}", fields="compile_scope")
        if self.architecture != "auto" and self.architecture not in ARCHITECTURES:
            raise NcsnTuneError(f"unknown architecture {self.architecture!r}; use auto or one of {', '.join(ARCHITECTURES)}",
                                fields="architecture")
        return self
