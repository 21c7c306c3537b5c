"""``python -m ncsn_tune.cli``: the ``ncsn-tune`` command."""

from . import main

main()
