"""Running ``ncsn-tune`` in-process as a user types it, and what a refusal must look like."""

from __future__ import annotations

from click.testing import CliRunner

from ncsn_tune.cli import main


def run(*args, **kwargs):
    """``ncsn-tune ARGS`` (each argument str()-ed), in-process; the click Result."""
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def one_line_error(r, *phrases, alone: bool = False):
    """Exit 2, no traceback, the last line of stderr an ``Error: `` line holding every phrase (``alone``: and the only
    line of stderr)."""
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("Error: ") and "Traceback" not in r.output, r.output
    if alone:
        assert len(lines) == 1, r.stderr
    for phrase in phrases:
        assert phrase in lines[-1], (phrase, lines[-1])
