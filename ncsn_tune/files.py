"""Reading and writing the files commands hand to each other (JSON or YAML by suffix).

Writes are atomic: a temporary file in the same folder, flushed and renamed
over the target, so an interrupted write leaves the previous file intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from .errors import NcsnTuneError


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_open(path: Path):
    """A binary file that appears at ``path`` only when the block ends without an exception.

    Written to a temporary file in the same folder, flushed to disk and renamed
    over ``path``; on any exception (KeyboardInterrupt too) the temporary file
    is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


def _plain(value: Any) -> Any:
    """NumPy scalars and tuples to plain Python, for JSON and YAML."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def write_mapping(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as YAML (.yml/.yaml) or JSON (anything else), atomically."""
    data = _plain(data)
    if Path(path).suffix.lower() in (".yml", ".yaml"):
        text = yaml.safe_dump(data, sort_keys=False)
    else:
        text = json.dumps(data, indent=2) + "\n"
    return atomic_write_bytes(Path(path), text.encode())


def read_mapping(path: Path) -> dict[str, Any]:
    """Read a JSON or YAML mapping; a missing or unreadable file is an :class:`NcsnTuneError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NcsnTuneError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise NcsnTuneError(f"{path} cannot be read ({err})") from None
    try:
        if path.suffix.lower() in (".yml", ".yaml"):
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise NcsnTuneError(f"{path} is not valid {'YAML' if path.suffix.lower() in ('.yml', '.yaml') else 'JSON'} ({err})") from None
    if not isinstance(data, dict):
        raise NcsnTuneError(f"{path} does not hold a mapping of settings")
    return data
