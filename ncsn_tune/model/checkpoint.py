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

import errno
import math
import os
import pickle
import re
import resource
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..analysis.noise_schedule import NoiseSchedule
from ..errors import CheckpointError, RunError, ScheduleError
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


def save_checkpoint(state: dict[str, Any], run_dir: Path, keep: int = 3, note=None) -> Path:
    """Write ``state`` atomically as checkpoint_<step>.pt and delete all but the newest ``keep``. A write that fails
    (a full disk, a file-size limit, an unwritable folder) leaves the previous checkpoint as it was and raises one
    clear error; an old checkpoint that cannot be deleted is reported through ``note(text)`` and the run goes on."""
    from ..files import atomic_open

    path = checkpoint_path(Path(run_dir), int(state["step"]))
    try:
        with atomic_open(path) as f:
            full = {"format": FORMAT, **state}
            torch.save({**full, "checksum": state_digest(full)}, f)
    except (RuntimeError, OSError) as err:  # torch's zip writer reports a failed write as a RuntimeError ("unexpected pos ...")
        raise write_failure(err, path, state) from None
    for old in list_checkpoints(run_dir)[:-keep]:
        try:
            old.unlink(missing_ok=True)
        except OSError as err:
            if note is not None:
                note(f"could not delete the old checkpoint {old.name} ({err.strerror or err}); the run goes on")
    return path


def state_digest(state) -> str:
    """SHA-256 of a checkpoint's contents: every tensor's dtype, shape and bytes and every other value, keys in sorted
    order, so that one flipped bit anywhere in the weights, the optimiser or the settings changes it (torch's zip reader
    checks no checksum of its own)."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()

    def walk(value) -> None:
        if isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=repr):
                if key != "checksum":
                    digest.update(repr(key).encode())
                    walk(value[key])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[" if isinstance(value, list) else b"(")
            for item in value:
                walk(item)
            digest.update(b"]")
        elif torch.is_tensor(value):
            t = value.detach().contiguous().cpu()
            digest.update(f"tensor {t.dtype} {tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, np.ndarray):
            digest.update(f"array {value.dtype.str} {value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        else:
            digest.update(f"{type(value).__name__} {value!r}".encode())

    walk(state)
    return digest.hexdigest()


def _state_bytes(state) -> int:
    """The bytes of the tensors in a checkpoint's state (what its file needs, within a few percent)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_state_bytes(v) for v in state)
    return 0


def _size(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def write_failure(err: BaseException, path: Path, state: dict) -> Exception:
    """Why a checkpoint could not be written, as one error the command line prints on one line."""
    need = _state_bytes(state)
    free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
    kept = "the previous checkpoint is kept"
    if isinstance(err, OSError) and err.errno == errno.ENOSPC or free < need + (1 << 20):
        return OSError(errno.ENOSPC, f"could not write the checkpoint ({_size(free)} free, about {_size(need)} needed); {kept}",
                       str(path))
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if isinstance(err, OSError) and err.errno == errno.EFBIG or limit != resource.RLIM_INFINITY and limit < need + (1 << 20):
        return RunError(f"could not write the checkpoint {path}: the file-size limit (ulimit -f, {_size(limit)}) is below its "
                        f"size (about {_size(need)}); raise the limit and continue the run; {kept}", fields="output")
    if isinstance(err, OSError):
        return err
    first = (str(err).splitlines() or [""])[0]
    return RunError(f"could not write the checkpoint {path} ({first}); {kept}", fields="output")


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
    saying it is not a readable ``what``, followed by ``hint``. Only regular files are opened (a FIFO or a device would
    make the open wait forever)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist{hint}") from None
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise CheckpointError(f"{path} is not a regular file (a FIFO, socket or device), not a {what}{hint}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist{hint}") from None
    except PermissionError:
        raise unreadable_by_permissions(Path(path)) from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a {what}{hint}") from None
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable {what}: {_why_unreadable(err)}{hint}") from None


def unreadable_by_permissions(path: Path) -> CheckpointError:
    """A file this user may not read: not damaged, so nothing is skipped or overwritten."""
    return CheckpointError(f"{path} cannot be read: permission denied (the file is not damaged); make it readable (chmod u+r) and run "
                           "the command again")


def _why_unreadable(err: Exception) -> str:
    """torch.load's failure in one complete clause (its own messages run to paragraphs)."""
    text = str(err)
    if isinstance(err, EOFError) or any(k in text for k in ("central directory", "PytorchStreamReader", "unexpected EOF", "truncated")):
        return "the file is truncated or damaged (an interrupted copy or a full disk)"
    if "Unsupported global" in text or "GLOBAL" in text:
        return "it holds Python objects other than tensors and plain containers, which are not loaded (they could run code)"
    if any(k in text for k in ("invalid load key", "could not find MARK", "Unsupported operand", "Weights only load failed")) or isinstance(
            err, (ValueError, TypeError, KeyError, IndexError, AttributeError, pickle.UnpicklingError, UnicodeDecodeError)):
        return "it is not a file written by torch.save"
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
        if not os.access(candidate, os.R_OK):  # not damaged: never skipped (a resumed run would overwrite it)
            raise unreadable_by_permissions(candidate)
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
        if isinstance(state, (list, tuple)) and len(state) >= 4 and isinstance(state[0], dict):
            raise CheckpointError(f"{path} looks like an official NCSNv2 checkpoint; start a run from its weights instead",
                                  fields="init_from")
        raise CheckpointError(f"{path} is not an ncsn_tune checkpoint")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path} is incomplete: it lacks {', '.join(missing)}")
    if "checksum" in state and state_digest(state) != state["checksum"]:  # files written before 0.3 carry none
        raise CheckpointError(f"{path} is damaged: its contents do not match the checksum written with it (a flipped bit or a "
                              "changed file)")
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
