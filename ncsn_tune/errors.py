"""Errors that carry a message meant for the user.

Every error raised for bad input derives from :class:`NcsnTuneError`. The
message says what is wrong and what to do, in the library's own words
(``sigma_min``, ``steps_per_scale``); ``fields`` names the settings involved,
so that the command line can add which of its options to change. The CLI
prints the message on one line and exits with status 2. Anything else that
escapes is a bug in ncsn_tune and keeps its traceback.
"""

from __future__ import annotations


class NcsnTuneError(Exception):
    """Bad input or a missing resource: the message says what and what to do.

    ``fields``: the names of the settings the message is about (library names
    such as ``sigma_min``), for front ends that map them onto their options.
    """

    def __init__(self, message: str, *, fields: tuple[str, ...] | str = ()) -> None:
        super().__init__(message)
        self.fields = (fields,) if isinstance(fields, str) else tuple(fields)


class DataError(NcsnTuneError):
    """A data set that cannot be found, read or used."""


class ScheduleError(NcsnTuneError):
    """An impossible noise schedule, step size or a bad schedule file."""


class CheckpointError(NcsnTuneError):
    """A checkpoint or run folder that is missing, incomplete, corrupt or does not fit."""


class RunError(NcsnTuneError):
    """A training run that cannot start or continue (a busy folder, a full disk, a diverged loss)."""


class Interrupted(BaseException):
    """Work stopped at once by a signal (a second Ctrl-C or SIGTERM); the exit status is 128 + ``signum``.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` swallows it; files being
    written when it arrives are left as they were (every write is atomic).
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
