"""Errors that carry a message meant for the user.

Every error raised for bad input derives from :class:`NcsnTuneError`; the CLI
prints its message on one line and exits with status 2. Anything else that
escapes is a bug in ncsn_tune and keeps its traceback.
"""


class NcsnTuneError(Exception):
    """Bad input or a missing resource: the message says what and what to do."""


class DataError(NcsnTuneError):
    """A data set that cannot be found, read or used."""


class ScheduleError(NcsnTuneError):
    """An impossible noise schedule or a bad schedule file."""
