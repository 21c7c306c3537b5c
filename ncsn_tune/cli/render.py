"""How commands talk: text for people, one JSON document for scripts, progress for long work.

With ``--json`` stdout carries exactly one JSON document and everything meant
for people goes to stderr. Tables never cut a number or a path, commands the
user is told to type are never wrapped, and progress shows as a bar on a
terminal and as a line every few seconds on stderr otherwise (a pipe, a log
file, a cluster scheduler).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..checks import is_whole
from ..errors import NcsnTuneError
from ..files import plain

#: Seconds between progress lines when stderr is not a terminal ($NCSN_TUNE_PROGRESS_EVERY overrides).
PROGRESS_EVERY_S = 5.0


def progress_every() -> float:
    """Seconds between progress lines off a terminal: ``$NCSN_TUNE_PROGRESS_EVERY``, else 5."""
    text = os.environ.get("NCSN_TUNE_PROGRESS_EVERY")
    if text is None or not text.strip():
        return PROGRESS_EVERY_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise NcsnTuneError(f"NCSN_TUNE_PROGRESS_EVERY must be a number of seconds >= 0, got {text!r}; fix it or unset it")
    return value


def _console(stream) -> Console:
    tty = stream.isatty()
    # Off a terminal rich would assume 80 columns and cut table cells; there every table gets its own full width.
    return Console(file=stream, highlight=False, soft_wrap=False, width=None if tty else 100_000, emoji=False)


def fmt(value: Any, digits: int = 6) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if is_whole(value):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    return str(value)


class Report:
    """The output of one command."""

    def __init__(self, as_json: bool = False, quiet: bool = False) -> None:
        """``quiet``: print nothing at all (the other ranks of a torchrun job)."""
        self.as_json, self.quiet = as_json, quiet
        self.stdout = _console(sys.stdout)
        self.stderr = _console(sys.stderr)
        if quiet:
            self.stdout.quiet = self.stderr.quiet = True
        self.people = self.stderr if as_json else self.stdout
        self._emitted = False

    # -------------------------------------------------------------- text for people

    def line(self, text: str = "") -> None:
        self.people.print(text, markup=False, soft_wrap=True)

    def notes(self, notes) -> None:
        for note in notes:
            self.line(f"- {note}")

    def command(self, text: str, before: str = "next: ") -> None:
        """A command for the user to type: on one line, never wrapped."""
        self.people.print(f"{before}{text}", markup=False, soft_wrap=True, overflow="ignore", crop=False)

    def table(self, title: str, columns: list[str], rows: list[list[Any]], right: tuple[int, ...] = ()) -> None:
        self.people.print(title, markup=False, soft_wrap=True)
        table = Table()
        for k, name in enumerate(columns):
            table.add_column(name, justify="right" if k in right else "left", overflow="fold")
        for row in rows:
            table.add_row(*[fmt(v) if not isinstance(v, str) else v for v in row])
        self.people.print(table)  # on a terminal cells fold rather than being cut; elsewhere each row is whole

    def warn(self, text: str) -> None:
        self.stderr.print(f"Warning: {text}", markup=False, soft_wrap=True)

    # -------------------------------------------------------------- for scripts

    def result(self, data: dict | list) -> None:
        """The command's result: one JSON document on stdout under --json (nothing otherwise)."""
        if self.as_json and not self.quiet:
            if self._emitted:
                raise RuntimeError("a command emits one JSON document")
            self._emitted = True
            sys.stdout.write(json.dumps(plain(data)) + "\n")
            sys.stdout.flush()

    # -------------------------------------------------------------- long work

    @contextmanager
    def progress(self, enabled: bool = True) -> Iterator[Callable[..., None] | None]:
        """A callback ``progress(done, total, what, detail="")`` for library functions; a bar on a terminal, lines otherwise."""
        if not enabled or self.quiet:
            yield None
            return
        if self.stderr.is_terminal:
            with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                          TimeRemainingColumn(), TextColumn("{task.fields[detail]}"), console=self.stderr, transient=True) as bar:
                tasks: dict[str, Any] = {}

                def update(done: int, total, what: str = "working", detail: str = "") -> None:
                    if what not in tasks:
                        tasks[what] = bar.add_task(what, total=total, detail=detail)
                    bar.update(tasks[what], completed=done, total=total, detail=detail)

                yield update
            return
        yield ProgressLines(self.stderr)


class ProgressLines:
    """Progress as plain lines on stderr: nothing for work shorter than :data:`PROGRESS_EVERY_S` seconds, then
    a line at most that often per task, and a last line when the task completes. A task that counts again after it
    completed (a second phase of the same name: evaluate's loss pass, then its samples' scales) is a new task."""

    def __init__(self, console: Console, every: float | None = None) -> None:
        self.console, self.every, self.start = console, progress_every() if every is None else every, time.monotonic()
        self.last: dict[str, float] = {}
        self.began: dict[str, float] = {}

    def __call__(self, done: int, total, what: str = "working", detail: str = "") -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        previous = self.last.get(what)
        if previous == math.inf:
            if finished:  # this task has printed its last line
                return
            del self.last[what]  # counting again: a new task of the same name
            previous, self.began[what] = None, now
        if finished:
            if previous is None:  # short work: no lines at all
                return
        elif now - (previous if previous is not None else self.began.get(what, self.start)) < self.every:
            return
        self.last[what] = math.inf if finished else now
        share = f" ({100.0 * done / total:.0f}%)" if total else ""
        count = f"{done:,}/{total:,}" if total else f"{done:,}"
        extra = f", {detail}" if detail else ""
        self.console.print(f"{what}: {count}{share}, {now - self.start:.1f} s{extra}", markup=False, soft_wrap=True)
