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


@dataclass
class TrainConfig:
    """Everything ``ncsn-tune train`` uses, with the paper's CIFAR-10 settings as defaults.

    The noise settings left as None are derived from the data when training
    starts (Techniques 1, 2 and 4) or read from ``schedule`` / the work folder.
    """

    # data
    data: str = "cifar10"
    data_root: str | None = None
    random_flip: bool = True
    # noise schedule and sampling (None: derived)
    schedule: str | None = None
    sigma_max: float | None = None
    sigma_min: float = 0.01
    num_scales: int | None = None
    target_overlap: float = 0.5
    steps_per_scale: int = 5
    step_size: float | None = None
    # model
    architecture: str = "auto"
    ngf: int = 128
    # optimisation (Adam as in the paper's code)
    batch_size: int = 128
    steps: int = 300000
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    ema_rate: float = 0.999
    seed: int = 0
    # speed switches (each can be turned off for debugging; they only act on a GPU)
    device: str = "auto"
    bf16: bool = True
    channels_last: bool = True
    fused_adam: bool = True
    compile: bool = True
    #: torch.compile mode: on an H100 "default" measured 47.0 it/s after 80 s of compiling, and
    #: "max-autotune-no-cudagraphs" 45.3 it/s after ~6 min of autotuning (benchmarks/train_speed.py).
    compile_mode: str = "default"
    cuda_graphs: bool = True
    #: Deterministic GPU kernels (no cuDNN autotuning, no atomic reductions): bitwise-repeatable runs, somewhat slower.
    deterministic: bool = False
    # logging and checkpoints
    log_every: int = 100
    eval_every: int = 5000
    eval_images: int = 256
    sample_every: int = 5000
    sample_count: int = 64
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3

    def validate(self) -> "TrainConfig":
        positive = ("batch_size", "steps", "ngf", "steps_per_scale", "log_every", "eval_every", "sample_every", "checkpoint_every", "keep_checkpoints", "eval_images", "sample_count")
        for name in positive:
            if getattr(self, name) < 1:
                raise NcsnTuneError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "adam_eps", "sigma_min"):
            if not getattr(self, name) > 0:
                raise NcsnTuneError(f"{name} must be positive, got {getattr(self, name)}")
        if not (0 <= self.ema_rate < 1 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise NcsnTuneError("ema_rate, beta1 and beta2 must lie in [0, 1)")
        return self


OFFICIAL_DATASETS = {"CIFAR10": ("cifar10", "ncsnv2"), "CELEBA": (None, "ncsnv2"), "LSUN": (None, "ncsnv2_deeper"), "FFHQ": (None, "ncsnv2_deepest")}


def train_config_from_official(data: dict[str, Any], where: str = "the official config") -> TrainConfig:
    """Map an official NCSNv2 YAML (training/sampling/data/model/optim sections) onto :class:`TrainConfig`.

    Settings ncsn_tune does not implement (other normalisations, non-geometric
    schedules, amsgrad, dequantisation, logit transforms) are refused rather
    than silently ignored.
    """
    try:
        training, sampling, dset, model, optim = (data[k] for k in ("training", "sampling", "data", "model", "optim"))
    except (KeyError, TypeError):
        raise NcsnTuneError(f"{where} lacks one of the sections training, sampling, data, model, optim") from None
    refuse = []
    if model.get("normalization", "InstanceNorm++") != "InstanceNorm++":
        refuse.append(f"normalization {model['normalization']}")
    if model.get("nonlinearity", "elu").lower() != "elu":
        refuse.append(f"nonlinearity {model['nonlinearity']}")
    if model.get("sigma_dist", "geometric") != "geometric":
        refuse.append(f"sigma_dist {model['sigma_dist']}")
    if model.get("spec_norm"):
        refuse.append("spec_norm")
    if optim.get("optimizer", "Adam") != "Adam" or optim.get("amsgrad"):
        refuse.append("an optimizer other than plain Adam")
    for key in ("logit_transform", "uniform_dequantization", "gaussian_dequantization", "rescaled"):
        if dset.get(key):
            refuse.append(key)
    if refuse:
        raise NcsnTuneError(f"{where} asks for {', '.join(refuse)}, which ncsn_tune does not implement")
    name, architecture = OFFICIAL_DATASETS.get(str(dset.get("dataset", "")).upper(), (None, "auto"))
    return TrainConfig(
        data=name or TrainConfig.data,
        random_flip=bool(dset.get("random_flip", True)),
        sigma_max=float(model["sigma_begin"]),
        sigma_min=float(model["sigma_end"]),
        num_scales=int(model["num_classes"]),
        steps_per_scale=int(sampling["n_steps_each"]),
        step_size=float(sampling["step_lr"]),
        architecture=architecture,
        ngf=int(model["ngf"]),
        batch_size=int(training["batch_size"]),
        steps=int(training["n_iters"]),
        lr=float(optim["lr"]),
        beta1=float(optim.get("beta1", 0.9)),
        adam_eps=float(optim.get("eps", 1e-8)),
        weight_decay=float(optim.get("weight_decay", 0.0)),
        ema_rate=float(model.get("ema_rate", 0.999)),
        checkpoint_every=int(training.get("snapshot_freq", 5000)),
        sample_every=int(training.get("snapshot_freq", 5000)),
    )


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    """A TrainConfig from our YAML, or from an official NCSNv2 YAML (recognised by its sections)."""
    from .files import read_mapping

    data = read_mapping(Path(path))
    if {"training", "model", "optim"} <= set(data):
        return train_config_from_official(data, str(path))
    return config_from_dict(TrainConfig, data, str(path))
