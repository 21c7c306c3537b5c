"""The official NCSNv2 YAML (ermongroup/ncsnv2 ``configs/*.yml``), known once: read into :class:`Ncsnv2Yaml` with one
set of rules, and from there what the audit reads (:meth:`Ncsnv2Yaml.tool_config`), what the trainer runs
(:meth:`Ncsnv2Yaml.train_config`), and the keys an export writes (:func:`yaml_sections`). Torch-free.

The rules: every number the techniques use must be a number (a clear error naming the key otherwise); pixels are
in [-1, 1] when ``data.rescaled`` (:func:`~.conventions.ncsnv2_pixel_range`); the sampler is annealed Langevin
dynamics with ``step_lr`` and ``n_steps_each``, and the official FID sweep samples with ``fast_fid.step_lr`` and
``fast_fid.n_steps_each``. The trainer refuses what it does not implement (another normalisation, a
non-geometric schedule, dequantisation, logit or rescaled pixels: it trains on [0, 1] data) rather than ignore
it, and says that it keeps an EMA of the weights even when ``model.ema`` is off.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checks import is_real
from ..config import TrainConfig, config_from_dict
from ..data.pixel_range import PixelRange
from ..errors import NcsnTuneError
from ..files import read_mapping
from ..analysis.samplers import Sampler
from .conventions import centered_for, ncsnv2_pixel_range
from .tool_config import ToolConfig

SECTIONS = ("training", "sampling", "data", "model", "optim")
#: The official configs' data sets: our data name (None: give the data) and the architecture for their image size.
DATASETS = {"CIFAR10": ("cifar10", "ncsnv2"), "CELEBA": (None, "ncsnv2"), "LSUN": (None, "ncsnv2_deeper"), "FFHQ": (None, "ncsnv2_deepest")}


def is_ncsnv2_yaml(data: Any) -> bool:
    """Whether a mapping is an official NCSNv2 config (it has the training, model and optim sections)."""
    return isinstance(data, dict) and {"training", "model", "optim"} <= set(data)


@dataclass(frozen=True)
class Ncsnv2Yaml:
    """An official NCSNv2 config, read and checked."""

    source: str
    sections: dict
    pixel_range: PixelRange
    notes: tuple[str, ...] = field(default_factory=tuple)

    def number(self, path: str, kind: type = float, default=None):
        """The value at ``section.key`` as a number (``kind`` int: a whole one); missing without a default is an error."""
        section, key = path.split(".")
        value = self.sections.get(section, {}).get(key, default)
        if value is None:
            raise NcsnTuneError(f"{self.source} has no {path}; is it the configuration it looks like?", fields="config")
        if not is_real(value) or not math.isfinite(value) or (kind is int and float(value) != int(value)):
            raise NcsnTuneError(f"{self.source}: {path} must be {'a whole number' if kind is int else 'a number'}, got {value!r}",
                                fields="config")
        return kind(value)

    def get(self, path: str, default=None):
        section, key = path.split(".")
        return self.sections.get(section, {}).get(key, default)

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        size = self.get("data.image_size")
        return (self.number("data.channels", int, 3), self.number("data.image_size", int), self.number("data.image_size", int)) if size else None

    def tool_config(self):
        """What the audit reads: the schedule, NCSNv2's sampler and its step, EMA, the pixel range."""
        ema = bool(self.get("model.ema", False))
        return ToolConfig(
            tool="ncsnv2-yaml", source=self.source, sigma_max=self.number("model.sigma_begin"), sigma_min=self.number("model.sigma_end"),
            num_scales=self.number("model.num_classes", int), steps_per_scale=self.number("sampling.n_steps_each", int),
            step_size=self.number("sampling.step_lr"), sampler=Sampler.named("ald"), ema=ema,
            ema_rate=self.number("model.ema_rate", float, 0.999) if ema else None, pixel_range=self.pixel_range,
            image_shape=self.image_shape, geometric=self.get("model.sigma_dist", "geometric") == "geometric", notes=self.notes)

    def train_config(self) -> tuple[TrainConfig, list[str]]:
        """What ``ncsn-tune train --config`` runs, and notes; settings the trainer does not implement are refused."""
        model, dset, optim = (self.sections[k] for k in ("model", "data", "optim"))
        refuse = []
        if model.get("normalization", "InstanceNorm++") != "InstanceNorm++":
            refuse.append(f"normalization {model['normalization']}")
        if str(model.get("nonlinearity", "elu")).lower() != "elu":
            refuse.append(f"nonlinearity {model['nonlinearity']}")
        if model.get("sigma_dist", "geometric") != "geometric":
            refuse.append(f"sigma_dist {model['sigma_dist']}")
        if model.get("spec_norm"):
            refuse.append("spec_norm")
        if optim.get("optimizer", "Adam") != "Adam" or optim.get("amsgrad"):
            refuse.append("an optimizer other than plain Adam")
        for key in ("logit_transform", "uniform_dequantization", "gaussian_dequantization"):
            if dset.get(key):
                refuse.append(key)
        if self.pixel_range != PixelRange.UNIT:
            refuse.append(f"rescaled (pixels in {self.pixel_range.label}; the trainer trains on [0, 1] data, the network maps it itself)")
        if refuse:
            raise NcsnTuneError(f"{self.source} asks for {', '.join(refuse)}, which ncsn_tune does not implement", fields="config")
        name, architecture = DATASETS.get(str(dset.get("dataset", "")).upper(), (None, "auto"))
        number = self.number
        config = TrainConfig(
            data=name or TrainConfig.data, random_flip=bool(dset.get("random_flip", True)),
            sigma_max=number("model.sigma_begin"), sigma_min=number("model.sigma_end"), num_scales=number("model.num_classes", int),
            steps_per_scale=number("sampling.n_steps_each", int), step_size=number("sampling.step_lr"), architecture=architecture,
            ngf=number("model.ngf", int), batch_size=number("training.batch_size", int), steps=number("training.n_iters", int),
            lr=number("optim.lr"), beta1=number("optim.beta1", float, 0.9), adam_eps=number("optim.eps", float, 1e-8),
            weight_decay=number("optim.weight_decay", float, 0.0), ema_rate=number("model.ema_rate", float, 0.999),
            checkpoint_every=number("training.snapshot_freq", int, 5000), sample_every=number("training.snapshot_freq", int, 5000),
        )
        if not config.step_size > 0:
            raise NcsnTuneError(f"{self.source}: sampling.step_lr must be a positive number, got {config.step_size:g}", fields="config")
        notes = [] if model.get("ema", True) else ["model.ema is off in the YAML: the run keeps an EMA of the weights anyway (Technique 5); "
                                                   "sample with --no-ema for the raw weights, as the official code would"]
        return config, notes


def read_ncsnv2_yaml(path: Path, data: dict | None = None) -> Ncsnv2Yaml:
    """An official NCSNv2 YAML, its sections checked; its notes say what the techniques cannot see as they are."""
    where = str(path)
    data = read_mapping(Path(path)) if data is None else data
    missing = [k for k in ("model", "sampling", "data") if not isinstance(data.get(k) if isinstance(data, dict) else None, dict)]
    if missing:
        raise NcsnTuneError(f"{where} has no {', '.join(missing)} section (a mapping of settings); is it an NCSNv2 config?", fields="config")
    sections = {k: data.get(k) if isinstance(data.get(k), dict) else {} for k in SECTIONS + ("fast_fid",)}
    dset, sampling, model = sections["data"], sections["sampling"], sections["model"]
    notes = []
    if model.get("sigma_dist", "geometric") != "geometric":
        notes.append(f"sigma_dist is {model.get('sigma_dist')}: Techniques 2 and 4 assume a geometric schedule")
    if dset.get("logit_transform") and not dset.get("rescaled"):
        notes.append("logit_transform is on: distances in logit space are not the pixel distances Technique 1 measures")
    if not sampling.get("denoise", True):
        notes.append("the final denoising step is off (it took the paper's CIFAR-10 FID from 31.75 to 10.87)")
    fast_fid = sections["fast_fid"]
    stale = [f"fast_fid.{k} = {fast_fid[k]} (sampling.{k} = {sampling.get(k)})" for k in ("step_lr", "n_steps_each")
             if k in fast_fid and fast_fid[k] != sampling.get(k)]
    if stale:
        notes.append(f"the official FID sweep (main.py --fast_fid) samples with {', '.join(stale)}")
    return Ncsnv2Yaml(where, sections, ncsnv2_pixel_range(dset), tuple(notes))


def yaml_sections(schedule, step) -> dict:
    """The keys an export writes for merging into an official config: the schedule, the step for ``sampling`` and for
    ``fast_fid`` (the official FID sweep reads those), EMA and ``data.rescaled`` for the schedule's pixel range."""
    sampling = {"n_steps_each": step.steps_per_scale, "step_lr": step.step_size}
    return {"model": {"sigma_dist": "geometric", "sigma_begin": schedule.sigma_max, "sigma_end": schedule.sigma_min,
                      "num_classes": schedule.num_scales, "ema": True, "ema_rate": 0.999},
            "sampling": {**sampling, "denoise": True}, "fast_fid": dict(sampling), "data": {"rescaled": centered_for(schedule.pixels)}}


def read_train_config(path: str | os.PathLike) -> tuple[TrainConfig, list[str]]:
    """A TrainConfig from our YAML, or from an official NCSNv2 YAML (recognised by its sections), and notes."""
    data = read_mapping(Path(path))
    if is_ncsnv2_yaml(data):
        for name in SECTIONS:
            if not isinstance(data.get(name), dict):
                raise NcsnTuneError(f"{path}: the section {name} must be a mapping of settings, got {data.get(name)!r}", fields="config")
        return read_ncsnv2_yaml(Path(path), data).train_config()
    return config_from_dict(TrainConfig, data, str(path)), []


def required_data(path: str | os.PathLike) -> tuple[str, str | None, tuple[int, int, int] | None] | None:
    """For an official NCSNv2 YAML: (its data set's name as the YAML writes it, ncsn_tune's name for it or None when the user
    must give the images, its image shape); None for our own YAML."""
    data = read_mapping(Path(path))
    if not is_ncsnv2_yaml(data):
        return None
    y = read_ncsnv2_yaml(Path(path), data)
    written = str(y.sections["data"].get("dataset", "")).upper()
    return written, DATASETS.get(written, (None, None))[0], y.image_shape


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    """:func:`read_train_config` without its notes."""
    return read_train_config(path)[0]
