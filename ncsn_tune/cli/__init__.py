"""The ``ncsn-tune`` command line: thin commands over the library.

Each command parses its options, calls one library function and renders the
result (tables for people, ``--json`` for scripts). The analysis commands
(:mod:`.analysis`) never import torch; the model commands (:mod:`.model`)
import it when they run.
"""

from . import analysis, interop, model  # noqa: F401  (registers the commands)
from .app import main

__all__ = ["main"]
