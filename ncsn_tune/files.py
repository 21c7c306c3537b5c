"""Reading and writing the files commands hand to each other (JSON or YAML by suffix).

Writes are atomic: a temporary file in the same folder, flushed and renamed
over the target, so an interrupted write leaves the previous file intact.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
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


#: What marks a file as written by ncsn_tune: a key of its JSON files, a comment of its YAML files, and the
#: metadata of its images, figures and archives. A command may replace its own earlier outputs; any other
#: existing file it replaces only when told to (``force``).
WRITTEN_BY = "ncsn-tune"
MAPPING_SUFFIXES = (".json", ".yaml", ".yml")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: Path):
    """A binary file that appears at ``path`` only when the block ends without an exception.

    Written to a temporary file in the same folder, flushed to disk and renamed
    over ``path``; on any exception (KeyboardInterrupt too) the temporary file
    is removed and ``path`` keeps its previous content. The file gets the
    permissions of any new file (0666 less the user's umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stale_temporaries(path.parent, path.name, remove=True)  # left by a writer of this file that was killed
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def stale_temporaries(folder: Path, name: str = "*", remove: bool = False) -> list[Path]:
    """The temporary files of :func:`atomic_open` in ``folder`` (for the file ``name``, or any) whose writing process is gone:
    their names carry the writer's process id (``.name.PID.XXXX.tmp``), and a file whose writer still runs is never
    touched (another command may be writing it now); one named without a process id was written by an older version.
    With ``remove`` they are deleted."""
    found = []
    for path in Path(folder).glob(f".{name}.*.tmp"):
        parts = path.name.split(".")
        pid = next((int(p) for p in reversed(parts[:-1]) if p.isdigit()), None)  # None: named before writers were named
        if pid is not None and (pid == os.getpid() or _alive(pid)):
            continue
        found.append(path)
        if remove:
            path.unlink(missing_ok=True)
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):  # no such process, or no process could have that id
        return False
    except PermissionError:
        return True  # another user's process: not ours to judge
    return True


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


def written_by_us(path: Path, limit: int = 1 << 26) -> bool:
    """Whether the file carries ncsn_tune's mark (read up to ``limit`` bytes from each end)."""
    marker = WRITTEN_BY.encode()
    if Path(path).suffix.lower() == ".npz":  # compressed members: the mark is an array of its own
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as archive:
                return "written_by" in archive and str(archive["written_by"]).startswith(WRITTEN_BY)
        except (OSError, ValueError, EOFError):
            return False
    try:
        size = Path(path).stat().st_size
        with open(path, "rb") as f:
            head = f.read(limit)
            if marker in head:
                return True
            if size > limit:
                f.seek(max(limit, size - limit))
                return marker in f.read(limit)
    except OSError:
        return False
    return False


def check_output(path: Path, suffixes: tuple[str, ...], *, force: bool = False, what: str = "output") -> Path:
    """Check, before any work, that ``path`` can be written: a suffix from ``suffixes`` (the formats written),
    a parent that is (or can be) a folder, and no existing file of someone else's unless ``force``."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        names = ", ".join(suffixes[:-1]) + f" or {suffixes[-1]}" if len(suffixes) > 1 else suffixes[0]
        raise NcsnTuneError(f"{path}: the {what.replace('_', ' ')} must end in {names} (the suffix chooses the format), got "
                            f"{path.suffix or 'no suffix'!r}", fields=what)
    for parent in [path.parent, *path.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise NcsnTuneError(f"{path}: {parent} is a file, not a folder", fields=what)
            break
    if path.is_dir():
        raise NcsnTuneError(f"{path} is a folder; give a file name", fields=what)
    if path.exists() and not force and not written_by_us(path):
        raise NcsnTuneError(f"{path} exists and was not written by ncsn-tune (it lacks ncsn-tune's mark: another program wrote it, or it "
                            "is damaged); choose another name, or allow replacing it", fields=(what, "force"))
    return path


def plain(value: Any) -> Any:
    """Plain JSON/YAML values: NumPy scalars and arrays, tuples and paths converted; NaN and infinities become None
    (null), which every JSON reader accepts."""
    if isinstance(value, enum.Enum):  # e.g. a PixelRange: its value
        return plain(value.value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # NumPy arrays and scalars, torch tensors
        return plain(value.tolist())
    if hasattr(value, "__fspath__"):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_mapping(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON (.json) or YAML (.yml/.yaml), atomically, with ncsn_tune's mark."""
    from .version import __version__

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MAPPING_SUFFIXES:
        raise NcsnTuneError(f"{path}: a settings file must end in .json, .yaml or .yml, got {suffix or 'no suffix'!r}", fields="output")
    data = plain(data)
    mark = f"{WRITTEN_BY} {__version__}"
    if suffix == ".json":
        text = json.dumps({"_written_by": mark, **data}, indent=2) + "\n"
    else:
        text = f"# written by {mark}\n" + yaml.safe_dump(data, sort_keys=False)
    return atomic_write_bytes(path, text.encode())


def read_mapping(path: Path) -> dict[str, Any]:
    """Read a JSON (.json) or YAML (anything else) mapping; a missing or unreadable file is an :class:`NcsnTuneError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NcsnTuneError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise NcsnTuneError(f"{path} is a folder, not a settings file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise NcsnTuneError(f"{path} cannot be read ({err})") from None
    is_json = path.suffix.lower() == ".json"
    try:
        data = json.loads(text) if is_json else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise NcsnTuneError(f"{path} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise NcsnTuneError(f"{path} is not valid YAML: {problem}{where}") from None
    if not isinstance(data, dict):
        raise NcsnTuneError(f"{path} does not hold a mapping of settings")
    data.pop("_written_by", None)
    return data


def cache_dir() -> Path:
    """$NCSN_TUNE_CACHE, else $XDG_CACHE_HOME/ncsn_tune, else ~/.cache/ncsn_tune."""
    if os.environ.get("NCSN_TUNE_CACHE"):
        return Path(os.environ["NCSN_TUNE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ncsn_tune"
