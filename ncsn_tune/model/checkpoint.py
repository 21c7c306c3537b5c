"""Checkpoints: written atomically, the last few kept, read back with clear errors.

A checkpoint is a dict saved with ``torch.save``: ``format``, ``step``, the
run's ``config`` and ``schedule`` (plain data), ``model``, ``ema``,
``optimizer``, and ``rng`` (every random state needed to continue exactly).
It is written to a temporary file in the run folder, flushed to disk and
renamed, so an interruption leaves the previous checkpoint intact.

Official NCSNv2 checkpoints (a list ``[model, optimizer, epoch, step, ema]``
whose model keys carry DataParallel's ``module.`` prefix) are read by
:func:`load_official_weights`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..errors import NcsnTuneError

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
    with atomic_open(path) as f:
        torch.save({"format": FORMAT, **state}, f)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or the newest checkpoint of a run folder."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise NcsnTuneError(f"{path} holds no checkpoint (checkpoint_<step>.pt); train first or give a checkpoint file")
        return found[-1]
    if not path.exists():
        raise NcsnTuneError(f"checkpoint {path} does not exist")
    return path


def read_torch_file(path: Path, what: str, hint: str = "", map_location="cpu") -> Any:
    """``torch.load`` (tensors and plain containers only); an unreadable file is an :class:`NcsnTuneError`
    saying it is not a readable ``what``, followed by ``hint``."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        first = (str(err).splitlines() or [""])[0][:200]
        raise NcsnTuneError(f"{path} is not a readable {what} ({type(err).__name__}: {first}){hint}") from None


def load_checkpoint(path: Path, map_location="cpu") -> dict[str, Any]:
    """Read one of our checkpoints; a missing, corrupt or foreign file is an :class:`NcsnTuneError`."""
    path = resolve_checkpoint(path)
    state = read_torch_file(path, "checkpoint", map_location=map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        if isinstance(state, (list, tuple)):
            raise NcsnTuneError(f"{path} looks like an official NCSNv2 checkpoint; load it with --init-from")
        raise NcsnTuneError(f"{path} is not an ncsn_tune checkpoint")
    missing = [k for k in ("step", "config", "schedule", "model", "ema") if k not in state]
    if missing:
        raise NcsnTuneError(f"{path} is incomplete: it lacks {', '.join(missing)}")
    state["path"] = str(path)
    return state


def load_official_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(model state, EMA state or None) from an official NCSNv2 checkpoint, ``module.`` prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise NcsnTuneError(f"official checkpoint {path} does not exist")
    states = read_torch_file(path, "checkpoint")
    if not (isinstance(states, (list, tuple)) and states and isinstance(states[0], dict)):
        raise NcsnTuneError(f"{path} is not an official NCSNv2 checkpoint (a list whose first entry is the model state)")

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
        raise NcsnTuneError(
            f"the weights in {where} do not fit this model ({first[0] if first else err}); check --ngf, the image size and the architecture"
        ) from None
