"""Running ``ncsn-tune`` in-process as a user types it, and what a refusal must look like."""

from __future__ import annotations

from click.testing import CliRunner

from ncsn_tune.cli import main


def tiny_train(checkpoint_every: int = 2) -> list:
    """The options of a train run that takes a second on a CPU: a 4-channel network, 4 images a batch, 4 scales."""
    return ["--ngf", 4, "--batch-size", 4, "--num-scales", 4, "--log-every", 1, "--checkpoint-every", checkpoint_every,
            "--sample-every", 1000, "--eval-every", 1000, "--device", "cpu"]


TINY = tiny_train()


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
