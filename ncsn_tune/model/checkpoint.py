"""Checkpoints: written atomically, the last few kept, read back with clear errors.

A checkpoint is a dict saved with ``torch.save``: ``format``, ``step``, the
run's ``config``, ``schedule`` and ``sampling`` (M and eps; plain data),
``image_shape``, ``data`` (the training data's identity), ``model``, ``ema``,
``optimizer``, and ``rng`` (every random state needed to continue exactly).
:func:`load_checkpoint` returns it as a :class:`Checkpoint`.
It is written to a temporary file in the run folder, flushed to disk and
renamed, so an interruption leaves the previous checkpoint intact.

Official NCSNv2 checkpoints (a list ``[model, optimizer, epoch, step, ema]``
whose model keys carry DataParallel's ``module.`` prefix) are read by
:func:`load_official_weights`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..analysis.noise_schedule import NoiseSchedule
from ..errors import CheckpointError, ScheduleError
from .network import NCSNv2

FORMAT = "ncsn_tune.checkpoint/1"
PATTERN = re.compile(r"^checkpoint_(\d+)\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"checkpoint_{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict[str, Any], run_dir: Path, keep: int = 3) -> Path:
    """Write ``state`` atomically as checkpoint_<step>.pt and delete all but the newest ``keep``."""
    from ..files import atomic_open

    path = checkpoint_path(Path(run_dir), int(state["step"]))
    try:
        with atomic_open(path) as f:
            torch.save({"format": FORMAT, **state}, f)
    except RuntimeError as err:  # torch's zip writer reports a failed write (a full disk) as a RuntimeError
        if "write" not in str(err).lower():
            raise
        import errno
        import shutil

        free = shutil.disk_usage(Path(run_dir)).free
        raise OSError(errno.ENOSPC, f"could not write the checkpoint ({free / 1e6:.0f} MB free); the previous checkpoint is kept",
                      str(path)) from None
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or the newest checkpoint of a run folder."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"{path} holds no checkpoint (checkpoint_<step>.pt); train first or give a checkpoint file")
        return found[-1]
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def read_torch_file(path: Path, what: str, hint: str = "", map_location="cpu") -> Any:
    """``torch.load`` (tensors and plain containers only); an unreadable file is an :class:`NcsnTuneError`
    saying it is not a readable ``what``, followed by ``hint``."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist{hint}") from None
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable {what}: {_why_unreadable(err)}{hint}") from None


def _why_unreadable(err: Exception) -> str:
    """torch.load's failure in one complete clause (its own messages run to paragraphs)."""
    text = str(err)
    if isinstance(err, EOFError) or any(k in text for k in ("central directory", "PytorchStreamReader", "unexpected EOF", "truncated")):
        return "the file is truncated or damaged (an interrupted copy or a full disk)"
    if any(k in text for k in ("invalid load key", "could not find MARK", "Unsupported operand")) or isinstance(err, (ValueError, TypeError)):
        return "it is not a file written by torch.save"
    if "Weights only load failed" in text or "weights_only" in text:
        return "it holds Python objects other than tensors and plain containers, which are not loaded (they could run code)"
    first = (text.splitlines() or [""])[0]
    return f"{type(err).__name__}: {first if len(first) <= 160 else first[:first.rfind(' ', 0, 160)] + ' ...'}"


@dataclass
class Checkpoint:
    """One of our checkpoints, read and checked: the run's settings, schedule, sampling settings and states.

    ``schedule``, ``steps_per_scale`` and ``step_size`` are what
    :func:`ncsn_tune.tuning.resolve` takes as a run (``Given(run=checkpoint)``).
    """

    path: Path
    step: int
    config: dict[str, Any]
    schedule: NoiseSchedule
    steps_per_scale: int
    step_size: float
    image_shape: tuple[int, int, int]
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict | None = None
    rng: dict | None = None
    data: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return self.path.parent


_REQUIRED = ("step", "config", "schedule", "sampling", "image_shape", "model", "ema")


def load_checkpoint(path: Path, map_location="cpu") -> Checkpoint:
    """Read one of our checkpoints: a file, or a run folder's newest readable one (an unreadable newer one, e.g.
    truncated by a full disk, is skipped and the notes say so). A missing, corrupt, foreign or incomplete file is
    a :class:`CheckpointError` that names what is wrong."""
    path = Path(path)
    if not path.is_dir():
        return _load_checkpoint_file(resolve_checkpoint(path), map_location)
    candidates = list_checkpoints(path)
    if not candidates:
        resolve_checkpoint(path)  # raises: no checkpoint
    skipped = []
    for candidate in reversed(candidates):
        try:
            ckpt = _load_checkpoint_file(candidate, map_location)
        except CheckpointError as err:
            skipped.append(f"{candidate.name} ({err})")
            continue
        if skipped:
            ckpt.notes.append(f"skipped the unreadable newer checkpoint(s) {'; '.join(skipped)}: using {candidate.name} (step {ckpt.step})")
        return ckpt
    raise CheckpointError(f"{path} holds no readable checkpoint: {'; '.join(skipped)}")


def _load_checkpoint_file(path: Path, map_location="cpu") -> Checkpoint:
    state = read_torch_file(path, "checkpoint", map_location=map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        if isinstance(state, (list, tuple)):
            raise CheckpointError(f"{path} looks like an official NCSNv2 checkpoint; start a run from its weights instead",
                                  fields="init_from")
        raise CheckpointError(f"{path} is not an ncsn_tune checkpoint")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path} is incomplete: it lacks {', '.join(missing)}")
    config, sampling = state["config"], state["sampling"]
    try:
        if not isinstance(config, dict) or not isinstance(sampling, dict):
            raise TypeError("config and sampling must be mappings")
        for key in ("ngf", "architecture"):
            if key not in config:
                raise KeyError(f"config.{key}")
        schedule = NoiseSchedule.from_dict(state["schedule"])
        steps_per_scale, step_size = int(sampling["steps_per_scale"]), float(sampling["step_size"])
        image_shape = tuple(int(s) for s in state["image_shape"])
        if len(image_shape) != 3:
            raise ValueError(f"image_shape {image_shape} is not (C, H, W)")
    except (KeyError, TypeError, ValueError, ScheduleError) as err:
        raise CheckpointError(f"{path} is incomplete or damaged: {err}") from None
    if not (math.isfinite(step_size) and step_size > 0 and steps_per_scale >= 1):
        raise CheckpointError(f"{path} records an impossible sampling setting (M = {steps_per_scale}, eps = {step_size})")
    return Checkpoint(path, int(state["step"]), config, schedule, steps_per_scale, step_size, image_shape, state["model"],
                      state["ema"], state.get("optimizer"), state.get("rng"), state.get("data"))


def non_finite_tensor(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity (None when all are finite)."""
    for name, value in tensors.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def load_model(checkpoint, *, device="cpu", ema: bool = True) -> NCSNv2:
    """The trained network of a checkpoint (a path, a run folder or a :class:`Checkpoint`), in eval mode on
    ``device``, with the EMA weights (Technique 5) unless ``ema`` is False.

    Weights holding NaN or infinite values are refused (they would give images of NaNs).
    """
    from ..devices import torch_device

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    channels, size, _ = ckpt.image_shape
    model = NCSNv2(channels, size, ckpt.config["ngf"], ckpt.config["architecture"], sigmas=ckpt.schedule.sigmas)
    load_model_weights(model, ckpt.model, str(ckpt.path))
    weights = ckpt.model
    if ema:
        params = dict(model.named_parameters())
        missing = [k for k in params if k not in ckpt.ema]
        if missing:
            raise CheckpointError(f"{ckpt.path} has no EMA value for {missing[0]}; use the raw weights instead", fields="ema")
        with torch.no_grad():
            for name, value in ckpt.ema.items():
                if name in params:
                    params[name].copy_(value)
        weights = ckpt.ema
    bad = non_finite_tensor(weights)
    if bad is not None:
        kind = "EMA weights" if ema else "weights"
        raise CheckpointError(f"{ckpt.path}: the {kind} hold NaN or infinite values ({bad}); the run diverged before this "
                              "checkpoint: use an earlier one")
    dev = torch_device(device) if isinstance(device, str) else torch.device(device)
    return model.to(dev).eval()


def load_official_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(model state, EMA state or None) from an official NCSNv2 checkpoint, ``module.`` prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"official checkpoint {path} does not exist")
    states = read_torch_file(path, "checkpoint")
    if not (isinstance(states, (list, tuple)) and states and isinstance(states[0], dict)):
        raise CheckpointError(f"{path} is not an official NCSNv2 checkpoint (a list whose first entry is the model state)")

    def strip(d):
        return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in d.items()}

    ema = strip(states[-1]) if len(states) >= 5 and isinstance(states[-1], dict) else None
    return strip(states[0]), ema


def load_model_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """Load weights, turning shape or name mismatches into one clear error."""
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = [line.strip() for line in str(err).splitlines() if line.strip()][1:2]
        raise CheckpointError(
            f"the weights in {where} do not fit this model ({first[0] if first else err}); check ngf, the image size and the "
            "architecture", fields=("ngf", "architecture")
        ) from None
