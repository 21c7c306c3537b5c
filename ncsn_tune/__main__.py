"""``python -m ncsn_tune``: the ``ncsn-tune`` command (also how torchrun starts training processes)."""

from .cli import run

run()
