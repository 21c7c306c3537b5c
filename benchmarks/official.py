"""Importing the official NCSNv2 code (ermongroup/ncsnv2) for side-by-side measurements, without touching sys.path.

The official code is not part of this project: point ``--official DIR`` at a copy
of its ``models/`` and ``losses/`` folders. Its packages use relative imports,
so each is loaded as a package from its folder with importlib.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path


def import_official(official_dir, module: str):
    """``module`` (e.g. ``models.ncsnv2``) of the official code in ``official_dir``."""
    top = module.split(".")[0]
    if top not in sys.modules:
        folder = Path(official_dir) / top
        init = folder / "__init__.py"
        if not init.is_file():
            raise SystemExit(f"{official_dir} holds no {top}/ package of the official NCSNv2 code")
        spec = importlib.util.spec_from_file_location(top, init, submodule_search_locations=[str(folder)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[top] = package
        spec.loader.exec_module(package)
    return importlib.import_module(module)
