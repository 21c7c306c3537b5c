"""A run's metrics, each step exactly once: ``metrics.jsonl`` and TensorBoard.

A run can stop anywhere between two checkpoints (a kill, a full disk, a crash)
and continue from the last checkpoint, so whatever was logged after that
checkpoint is logged again. :class:`RunLog` therefore starts by cutting the log
back to the step it starts from: ``metrics.jsonl`` is rewritten (atomically)
without the records after it and without a torn last line, and TensorBoard's
events after it are purged (``SummaryWriter(purge_step=...)``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..files import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"


def cut_metrics(path: Path, last_step: int) -> str | None:
    """Keep the records of steps <= ``last_step`` that parse; returns a note when anything was dropped."""
    if not path.exists():
        return None
    kept, dropped_after, torn = [], 0, 0
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            torn += 1
            continue
        if step <= last_step:
            kept.append(line)
        else:
            dropped_after += 1
    if not (dropped_after or torn):
        return None
    atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())
    parts = []
    if dropped_after:
        parts.append(f"{dropped_after} record(s) after step {last_step} (logged after the checkpoint the run continues from)")
    if torn:
        parts.append(f"{torn} unreadable line(s) (a write cut short)")
    return f"{path.name}: dropped {' and '.join(parts)}"


class RunLog:
    """Appends records to metrics.jsonl (flushed after each) and their numbers to TensorBoard, from ``start_step`` on."""

    def __init__(self, run_dir: Path, start_step: int, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.notes = [n for n in [cut_metrics(self.path, start_step)] if n]
        self.file = os.fdopen(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666), "a")
        self.writer = _tensorboard(Path(run_dir), start_step) if tensorboard else None

    def record(self, record: dict, scalars: dict[str, float] | None = None) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for name, value in (scalars or {}).items():
                self.writer.add_scalar(name, value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def _tensorboard(run_dir: Path, start_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step > 0 else None)
