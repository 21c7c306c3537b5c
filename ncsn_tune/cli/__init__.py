"""The ``ncsn-tune`` command line: thin commands over the library.

Each command parses its options, calls one library function and renders the
result (tables for people, ``--json`` for scripts). The analysis commands
(:mod:`.analysis`) never import torch; the model commands (:mod:`.model`)
import it when they run.

:func:`run` is the console entry: it takes over Ctrl-C and SIGTERM before anything else is imported, so that a
command stopped at any moment, its start-up included, ends with one line and the shell's status (130, 143), never
a traceback or a silent death. ``main`` is the command group (for ``CliRunner`` and ``python -m ncsn_tune``).
"""

from __future__ import annotations

import signal
import sys

__all__ = ["main", "run"]


def _stopped_at_start(signum, frame):
    raise SystemExit(128 + signum)


def run() -> None:
    """``ncsn-tune``: the command group, with signals handled from the first instant."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stopped_at_start)
    try:
        group = _group()
    except SystemExit as stop:
        name = "Interrupted." if stop.code == 130 else f"Stopped by {signal.Signals(int(stop.code) - 128).name} while starting."
        print(name, file=sys.stderr)
        raise
    from ..errors import Interrupted

    def stop(signum, frame):  # SIGTERM: stop the work at hand; what was written stays intact (every write is atomic)
        raise Interrupted(f"{signal.Signals(signum).name}; files written before are intact", signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop)
    group()


def _group():
    from . import analysis, interop, model, plot, simulate  # noqa: F401  (registers the commands)
    from .app import main as group

    return group


def __getattr__(name: str):
    if name == "main":
        return _group()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
