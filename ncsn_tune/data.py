"""Finding and reading data sets: one module for every command that reads data.

``load_dataset("cifar10", ...)`` reads the official CIFAR-10 python format,
found in ``--data-root``, else ``$NCSN_TUNE_DATA``, else the cache
(``$NCSN_TUNE_CACHE``, else ``$XDG_CACHE_HOME/ncsn_tune``, else
``~/.cache/ncsn_tune``), downloading the official archive there when it is
missing. ``load_dataset(PATH)`` reads a ``.npy``/``.npz`` array or a folder of
PNG/JPEG images. Values are kept as stored (uint8 stays uint8, ``.npy`` files
are memory-mapped); ``Dataset.scale`` and ``Dataset.offset`` map them to [0, 1].
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
import dataclasses
import functools
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DataError
from .files import file_digest
from .pixel_range import DEFAULT as DEFAULT_PIXEL_RANGE, PixelRange

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
#: md5 of the official batch files (as published with the archive) and the images each holds.
CIFAR10_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR10_BATCH_IMAGES = 10_000
SPLITS = ("train", "test", "all")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: progress(bytes_or_items_done, total_or_None, description)
Progress = Callable[[int, "int | None", str], None]


#: Items read for a data set's fingerprint (evenly spaced, first and last included).
FINGERPRINT_ITEMS = 64


@dataclass(frozen=True)
class DataIdentity:
    """What a data set is, for deciding whether a saved schedule was derived from it.

    ``path`` is absolute (the CIFAR-10 batches folder, the array file or the
    image folder; None for an array held in memory), so the data can be read
    again from any working folder. ``fingerprint`` is a SHA-256 of the shape,
    dtype, pixel scaling and the bytes of up to 64 evenly spaced items: cheap,
    and different for any other data set in practice (a set that differs only
    in items between those is not told apart).
    """

    name: str
    path: str | None
    split: str | None
    num_points: int
    shape: tuple[int, ...]
    dtype: str
    fingerprint: str | None
    pixel_scale: str
    pixel_range: PixelRange = DEFAULT_PIXEL_RANGE

    def same_data(self, other: "DataIdentity | None") -> bool:
        return (
            other is not None
            and self.fingerprint is not None
            and self.fingerprint == other.fingerprint
            and self.pixel_range == other.pixel_range
            and self.num_points == other.num_points
            and tuple(self.shape) == tuple(other.shape)
            and self.split == other.split
        )

    def describe(self) -> str:
        split = f" {self.split} split," if self.split else ""
        where = f" at {self.path}" if self.path else ""
        shape = "x".join(str(s) for s in self.shape)
        return f"{self.name} ({split} {self.num_points:,} points of {shape}){where}".replace("( ", "(")

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(shape=list(self.shape), pixel_range=str(self.pixel_range))
        return data

    @classmethod
    def from_dict(cls, data: dict | None) -> "DataIdentity | None":
        """The identity recorded in a schedule or run (None when there is none); missing fields stay unknown."""
        if not isinstance(data, dict):
            return None
        shape = data.get("shape") or ()
        return cls(
            name=str(data.get("name", "unrecorded data")),
            path=data.get("path"),
            split=data.get("split"),
            num_points=int(data.get("num_points") or 0),
            shape=tuple(int(s) for s in shape),
            dtype=str(data.get("dtype", "")),
            fingerprint=data.get("fingerprint"),
            pixel_scale=str(data.get("pixel_scale", "")),
            pixel_range=PixelRange.parse(data.get("pixel_range") or DEFAULT_PIXEL_RANGE, error=DataError),
        )


@dataclass
class Dataset:
    """Images (or vectors) as stored, and how to map their values to [0, 1].

    ``values`` has shape (N, C, H, W) for images, (N, D) for plain vectors; the
    point x_i in [0, 1]**D is ``values[i] * scale + offset``. ``source`` is the
    absolute path the values were read from (None for an array in memory).
    """

    name: str
    values: np.ndarray
    scale: float
    offset: float
    scale_note: str
    source: str | None
    split: str | None = None
    labels: np.ndarray | None = None
    #: What reading the data changed that the user should know (e.g. images converted to RGB).
    notes: list[str] = field(default_factory=list)
    #: The interval ``values * scale + offset`` maps pixels into.
    pixel_range: PixelRange = DEFAULT_PIXEL_RANGE

    @property
    def num_points(self) -> int:
        return int(self.values.shape[0])

    @property
    def dim(self) -> int:
        return int(np.prod(self.values.shape[1:]))

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(C, H, W) for images, (D,) for vectors."""
        return tuple(int(s) for s in self.values.shape[1:])

    def points(self):
        """The raw values as an (N, D) matrix (a view, or a streamed folder); multiply distances by ``scale``."""
        return self.values.reshape(self.num_points, -1)

    def unit_float32(self, index=slice(None)) -> np.ndarray:
        """The selected points mapped to the pixel range (by default [0, 1]), as float32, in their stored shape."""
        out = np.asarray(self.values[index], dtype=np.float32) * np.float32(self.scale)
        if self.offset:
            out += np.float32(self.offset)
        return out

    def fingerprint(self) -> str:
        """SHA-256 of shape, dtype, scaling and up to :data:`FINGERPRINT_ITEMS` evenly spaced items."""
        digest = hashlib.sha256()
        digest.update(f"{tuple(self.values.shape)}|{np.dtype(self.values.dtype).str}|{self.scale!r}|{self.offset!r}".encode())
        ids = np.unique(np.linspace(0, self.num_points - 1, min(self.num_points, FINGERPRINT_ITEMS)).astype(np.int64))
        digest.update(np.ascontiguousarray(np.asarray(self.values[ids])).tobytes())
        return digest.hexdigest()

    def identity(self) -> DataIdentity:
        """Computed once per Dataset (the values never change; another pixel range is another Dataset)."""
        return self._identity

    @functools.cached_property
    def _identity(self) -> DataIdentity:
        return DataIdentity(self.name, self.source, self.split, self.num_points, self.image_shape, np.dtype(self.values.dtype).str,
                            self.fingerprint(), self.scale_note, self.pixel_range)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "split": self.split,
            "num_points": self.num_points,
            "dim": self.dim,
            "shape": list(self.image_shape),
            "pixel_scale": self.scale_note,
        }


def as_dataset(data, rescale: bool = True) -> Dataset:
    """``data`` itself if it is a :class:`Dataset`, else an array of points (N, ...) as a Dataset held in memory.

    Arrays are read as the loader reads files: (N, H, W, C) or (N, C, H, W)
    images, (N, D) vectors; pixels scaled to [0, 1] by dtype and range unless
    ``rescale`` is False. Torch tensors are accepted (copied to the CPU).
    """
    if isinstance(data, Dataset):
        return data
    if hasattr(data, "detach") and hasattr(data, "cpu"):  # a torch tensor, without importing torch
        data = data.detach().cpu().numpy()
    values = np.asarray(data)
    if values.ndim == 1:
        values = values[:, None]
    return _array_dataset(values, "array", None, "the array", rescale)


# --------------------------------------------------------------------------- CIFAR-10


def cache_dir() -> Path:
    """$NCSN_TUNE_CACHE, else $XDG_CACHE_HOME/ncsn_tune, else ~/.cache/ncsn_tune."""
    if os.environ.get("NCSN_TUNE_CACHE"):
        return Path(os.environ["NCSN_TUNE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ncsn_tune"


def _cifar_files(split: str) -> tuple[str, ...]:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return {"train": CIFAR10_TRAIN_FILES, "test": CIFAR10_TEST_FILES, "all": CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES}[split]


def _cifar_folder_in(root: Path, split: str) -> Path | None:
    """``root`` itself or ``root/cifar-10-batches-py``, whichever holds the split's files."""
    for folder in (root, root / CIFAR10_FOLDER):
        if all((folder / name).is_file() for name in _cifar_files(split)):
            return folder
    return None


def cifar10_search_roots(data_root: str | os.PathLike | None) -> list[tuple[str, Path]]:
    """Where CIFAR-10 is looked for, in order, with the reason for each place."""
    if data_root is not None:
        return [("data root", Path(data_root).expanduser())]
    roots = []
    if os.environ.get("NCSN_TUNE_DATA"):
        roots.append(("$NCSN_TUNE_DATA", Path(os.environ["NCSN_TUNE_DATA"]).expanduser()))
    roots.append(("cache", cache_dir()))
    return roots


def download_cifar10(target: Path, progress: Progress | None = None, url: str | None = None, md5: str | None = None) -> Path:
    """Download and unpack the official archive into ``target``; returns the folder with the batches.

    The archive is written to a temporary file and renamed only after its md5
    matches; unpacking goes to a temporary folder renamed into place, so an
    interruption never leaves a half-written data set behind.
    """
    url = url or CIFAR10_URL
    md5 = md5 or CIFAR10_MD5
    target.mkdir(parents=True, exist_ok=True)
    archive = target / "cifar-10-python.tar.gz"
    if not (archive.is_file() and file_digest(archive, "md5") == md5):
        fd, tmp_name = tempfile.mkstemp(prefix=".cifar-10-python.", suffix=".part", dir=target)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
                total = response.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                done = 0
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total, "downloading CIFAR-10")
            got = file_digest(tmp, "md5")
            if got != md5:
                raise DataError(f"the downloaded CIFAR-10 archive from {url} has md5 {got}, expected {md5}; try again")
            os.replace(tmp, archive)
        finally:
            tmp.unlink(missing_ok=True)
    unpack = Path(tempfile.mkdtemp(prefix=".cifar-10-unpack.", dir=target))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(unpack, filter="data")
        unpacked = unpack / CIFAR10_FOLDER
        if not unpacked.is_dir():
            raise DataError(f"the archive {archive} holds no {CIFAR10_FOLDER}/ folder; delete it and try again")
        final = target / CIFAR10_FOLDER
        if final.exists():
            shutil.rmtree(final)
        os.replace(unpacked, final)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"could not unpack {archive} ({err}); delete it and try again") from None
    finally:
        shutil.rmtree(unpack, ignore_errors=True)
    return target / CIFAR10_FOLDER


def find_cifar10(
    data_root: str | os.PathLike | None = None,
    split: str = "train",
    download: bool = True,
    progress: Progress | None = None,
) -> Path:
    """The folder holding the CIFAR-10 batches of ``split``, downloading it when allowed."""
    if data_root is not None and not Path(data_root).expanduser().is_dir():
        raise DataError(f"the data root {data_root} does not exist (or is not a folder); give the folder that holds "
                        f"{CIFAR10_FOLDER}/", fields="data_root")
    roots = cifar10_search_roots(data_root)
    for _, root in roots:
        found = _cifar_folder_in(root, split)
        if found is not None:
            return found
    target = roots[0][1]
    places = "; ".join(f"{why}: {root}" for why, root in roots)
    for _, root in roots:  # a folder that holds some of the batches: name the ones missing
        for folder in (root, root / CIFAR10_FOLDER):
            present = [name for name in _cifar_files(split) if (folder / name).is_file()]
            if present:
                missing = [name for name in _cifar_files(split) if name not in present]
                raise DataError(f"{folder} holds {', '.join(present)} but not {', '.join(missing)} of the CIFAR-10 {split} split; "
                                f"put the missing batch files there (all of cifar-10-python.tar.gz, md5 {CIFAR10_MD5}), or give "
                                "the images you have as a .npy array", fields="data_root")
    how = (
        f"download {CIFAR10_URL} (md5 {CIFAR10_MD5}), unpack it so that DIR/{CIFAR10_FOLDER}/data_batch_1 exists, "
        "then give DIR as the data root or set NCSN_TUNE_DATA=DIR"
    )
    if not download:
        raise DataError(f"CIFAR-10 ({split} split) was not found ({places}); {how}", fields="data_root")
    try:
        download_cifar10(target, progress)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise DataError(f"CIFAR-10 was not found ({places}) and could not be downloaded ({reason}); {how}",
                        fields="data_root") from None
    found = _cifar_folder_in(target, split)
    if found is None:
        raise DataError(f"the downloaded CIFAR-10 in {target} lacks files of the {split} split; delete it and try again")
    return found


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts, lists, NumPy arrays) and refuses any other object."""

    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("_codecs", "encode"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayOnlyUnpickler(io.BufferedReader(f), encoding="bytes").load()
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise DataError(f"{path} is not a readable CIFAR-10 batch ({type(err).__name__}: {err}); replace the file") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{path} is not a CIFAR-10 batch: expected uint8 rows of 3072 values, got {data.dtype} {data.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(
    data_root: str | os.PathLike | None = None,
    split: str = "train",
    download: bool = True,
    progress: Progress | None = None,
) -> Dataset:
    """CIFAR-10 as uint8 (N, 3, 32, 32) with labels; ``split`` is train, test or all."""
    folder = find_cifar10(data_root, split, download, progress)
    parts = [_read_cifar_batch(folder / name) for name in _cifar_files(split)]
    values = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if len(values) == 0:
        raise DataError(f"the CIFAR-10 batches in {folder} hold no images")
    notes = check_cifar_batches(folder, {name: len(p[0]) for name, p in zip(_cifar_files(split), parts)})
    return Dataset("cifar10", values, 1.0 / 255.0, 0.0, "uint8 / 255", str(Path(folder).resolve()), split, labels, notes)


def check_cifar_batches(folder: Path, counts: dict[str, int]) -> list[str]:
    """Each batch against the official file: a full-size batch (10,000 images) must have the official md5 (else
    it is damaged or changed, an error); batches of another size are a subset, said in the returned notes."""
    subsets = {}
    for name, count in counts.items():
        if count == CIFAR10_BATCH_IMAGES:
            got = file_digest(Path(folder) / name, "md5")
            if got != CIFAR10_BATCH_MD5[name]:
                raise DataError(f"{Path(folder) / name} differs from the official CIFAR-10 file (md5 {got}, expected "
                                f"{CIFAR10_BATCH_MD5[name]}): it is damaged or was changed; replace it with the official one, or give "
                                "changed data as a .npy array")
        else:
            subsets[name] = count
    if not subsets:
        return []
    sizes = sorted(set(subsets.values()))
    each = f"{sizes[0]:,} images per batch" if len(sizes) == 1 else ", ".join(f"{k}: {v:,}" for k, v in subsets.items())
    return [f"{folder} holds a subset of CIFAR-10 ({each} instead of {CIFAR10_BATCH_IMAGES:,}): results are properties of the subset"]


# --------------------------------------------------------------------------- arrays and folders


def _value_range(values: np.ndarray, chunk_rows: int = 4096) -> tuple[float, float]:
    """Min and max, read in chunks (memory-mapped files stay on disk); NaN/inf is an error."""
    lo, hi = np.inf, -np.inf
    for start in range(0, values.shape[0], chunk_rows):
        block = np.asarray(values[start : start + chunk_rows])
        if np.issubdtype(block.dtype, np.floating) and not np.isfinite(block).all():
            bad = start + int(np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))[0])
            raise DataError(f"item {bad} holds a NaN or infinite value; clean the data first")
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    return lo, hi


def pixel_scale(values: np.ndarray, rescale: bool = True) -> tuple[float, float, str]:
    """(scale, offset, note) that map ``values`` to [0, 1], chosen from the dtype and the range.

    uint8 -> /255, uint16 -> /65535, bool -> as is; floats in [0, 1] as is, in
    [-1, 1] -> (x + 1) / 2, in [0, 255] -> /255; anything else is an error
    unless ``rescale`` is False (values used as they are).
    """
    if not rescale:  # whatever the type: distances in the units the values are stored in
        lo, hi = _value_range(values)
        return 1.0, 0.0, f"as stored (range [{lo:g}, {hi:g}], not rescaled)"
    if values.dtype == np.uint8:
        return 1.0 / 255.0, 0.0, "uint8 / 255"
    if values.dtype == np.uint16:
        return 1.0 / 65535.0, 0.0, "uint16 / 65535"
    if values.dtype == np.bool_:
        return 1.0, 0.0, "bool as 0/1"
    lo, hi = _value_range(values)
    if lo >= 0 and hi <= 1:
        return 1.0, 0.0, "already in [0, 1]"
    if lo >= -1 and hi <= 1:
        return 0.5, 0.5, "[-1, 1] -> (x + 1) / 2"
    if lo >= 0 and hi <= 255:
        return 1.0 / 255.0, 0.0, "[0, 255] / 255"
    raise DataError(
        f"values span [{lo:g}, {hi:g}]: pixels are scaled to [0, 1] from uint8, [0, 1], [-1, 1] or [0, 255] data; "
        "rescale the data, or turn rescaling off to use the values as they are",
        fields="rescale",
    )


def _as_images(values: np.ndarray, name: str) -> np.ndarray:
    """(N, C, H, W) for image arrays (NHWC moved, without copying), (N, D) for vectors."""
    if values.ndim == 2:
        return values
    if values.ndim == 3:
        return values[:, None, :, :]
    if values.ndim == 4:
        last, second = values.shape[-1] in (1, 3, 4), values.shape[1] in (1, 3, 4)
        if last and second:  # e.g. (N, 3, 32, 4): RGB is the likelier reading
            last = values.shape[-1] == 3 or values.shape[1] != 3
            second = not last
        if last:
            return np.moveaxis(values, -1, 1)
        if second:
            return values
        raise DataError(
            f"{name}: cannot tell the channel axis of shape {values.shape}; expected N,H,W,C or N,C,H,W with 1, 3 or 4 channels"
        )
    raise DataError(f"{name}: expected an array of shape N,H,W,C or N,C,H,W (or N,H,W or N,D), got {values.shape}")


def load_array(path: Path, rescale: bool = True) -> Dataset:
    """A ``.npy`` (memory-mapped) or ``.npz`` array of images or vectors. Anything that is not a readable array of real
    numbers (a damaged or truncated file, a zip of something else, pickled objects, a pipe) is a :class:`DataError`."""
    if not path.is_file():
        raise DataError(f"{path} is not a regular file (a folder, a pipe or a device); give a .npy/.npz file")
    try:
        if (path.suffix or path.resolve().suffix) == ".npz" or zipfile.is_zipfile(path):
            with np.load(path, allow_pickle=False) as archive:
                keys = [k for k in archive.keys() if k != "written_by"]
                preferred = [k for k in ("images", "x", "data", "arr_0", "uint8") if k in keys]
                if not keys:
                    raise DataError(f"{path} holds no arrays; save the images into it (numpy.savez(path, images=...))")
                if len(keys) == 1 or preferred:
                    key = keys[0] if len(keys) == 1 else preferred[0]
                else:
                    raise DataError(
                        f"{path} holds several arrays ({', '.join(keys)}); name the images 'images' or save only them"
                    )
                values = archive[key]
        else:
            values = np.load(path, mmap_mode="r", allow_pickle=False)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, NotImplementedError) as err:
        raise DataError(f"{path} is not a readable NumPy array file: {_why_not_an_array(err)}") from None
    if not isinstance(values, np.ndarray):
        raise DataError(f"{path} is not a readable NumPy array file: its member is not an array saved by numpy")
    return _array_dataset(values, path.stem, str(path.resolve()), str(path), rescale)


def _why_not_an_array(err: BaseException) -> str:
    """numpy's and zipfile's failures in one clause."""
    text = str(err)
    if "pickled" in text or "Python objects" in text:
        return "it is not a .npy/.npz file, or it holds Python objects, which are not loaded (they could run code)"
    if isinstance(err, (zipfile.BadZipFile, zlib.error, EOFError)) or "truncated" in text or "zip" in text.lower():
        return "the archive is damaged or truncated (an interrupted copy or a full disk)"
    return f"{type(err).__name__}: {(text.splitlines() or [''])[0]}"


def _array_dataset(values: np.ndarray, name: str, source: str | None, what: str, rescale: bool) -> Dataset:
    """An array of points (from a file or memory) as a Dataset: checked for data and real numbers, laid out as
    images or vectors (:func:`_as_images`) and scaled to [0, 1] (:func:`pixel_scale`)."""
    if values.ndim == 0 or values.shape[0] == 0 or values.size == 0:
        raise DataError(f"{what} holds no data (shape {values.shape})")
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_) or np.issubdtype(values.dtype, np.complexfloating):
        raise DataError(f"{what} holds {values.dtype} values; expected real numbers")
    values = _as_images(values, what)
    scale, offset, note = pixel_scale(values, rescale)
    return Dataset(name, values, scale, offset, note, source)


def image_files(folder: Path) -> list[Path]:
    """PNG/JPEG files below ``folder``, recursively, in sorted order (one directory read per folder, no stat per file)."""
    found, pending = [], [str(folder)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=True):
                    pending.append(entry.path)
                elif entry.is_file(follow_symlinks=True) and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                    found.append(Path(entry.path))
    return sorted(found)


#: Folders with fewer images are decoded in this process: starting workers would cost more than it saves.
PARALLEL_FROM = 1024
#: Images per task sent to a decoding worker.
DECODE_CHUNK = 256


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def decode_workers() -> int:
    """Processes that decode image folders: ``$NCSN_TUNE_DECODE_WORKERS``, else every available core."""
    value = os.environ.get("NCSN_TUNE_DECODE_WORKERS")
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise DataError(f"NCSN_TUNE_DECODE_WORKERS must be a whole number, got {value!r}") from None
    return available_cpus()


def _decode(path: Path, mode: str) -> np.ndarray:
    """One image as uint8 (C, H, W) in ``mode`` (L or RGB)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return _pixels(img, mode)
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"{path} is not a readable image ({err})") from None


def _pixels(img, mode: str) -> np.ndarray:
    """An open Pillow image as uint8 (C, H, W) in ``mode``."""
    arr = np.asarray(img if img.mode == mode else img.convert(mode), dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def _decode_chunk(task) -> tuple:
    """Decode ``paths`` into rows ``start...`` of the (shared-memory or in-process) array ``target``; the image
    size must be ``size``. Returns ("ok", start, count, modes) or ("error", message)."""
    from PIL import Image, UnidentifiedImageError

    target, shape, start, paths, mode, size = task
    shm = None
    if target is None:  # a forked worker: the parent's shared anonymous mapping, inherited
        target = _FORKED_TARGET
    elif isinstance(target, str):  # a spawned worker: attach to the parent's shared memory
        from multiprocessing import shared_memory

        shm = shared_memory.SharedMemory(name=target)
        target = np.ndarray(shape, dtype=np.uint8, buffer=shm.buf)
    modes: Counter = Counter()
    try:
        for k, path in enumerate(paths):
            try:
                with Image.open(path) as img:
                    if img.size != size:
                        return ("error", f"images differ in size: the first is {size[0]}x{size[1]}, {path} is {img.size[0]}x{img.size[1]}; "
                                         "resize them to one size")
                    modes[img.mode] += 1
                    target[start + k] = _pixels(img, mode)
            except (OSError, UnidentifiedImageError) as err:
                return ("error", f"{path} is not a readable image ({err})")
        return ("ok", start, len(paths), modes)
    finally:
        if shm is not None:
            del target
            shm.close()


def decode_images(files: list[Path], mode: str, image_shape: tuple[int, int, int], *, workers: int | None = None,
                  progress: Progress | None = None) -> tuple[np.ndarray, Counter]:
    """The images of ``files`` as uint8 (N, C, H, W) in ``mode`` (L or RGB), with the count of each stored colour
    mode. Decoded in parallel by worker processes writing into shared memory (one per available core) from
    :data:`PARALLEL_FROM` images on; every image must have the size of ``image_shape``."""
    n = len(files)
    shape = (n, *image_shape)
    size = (image_shape[2], image_shape[1])
    workers = min(decode_workers() if workers is None else workers, max(1, n // DECODE_CHUNK))
    chunks = [(start, files[start : start + DECODE_CHUNK]) for start in range(0, n, DECODE_CHUNK)]
    modes: Counter = Counter()

    def collect(result, done):
        if result[0] == "error":
            raise DataError(result[1])
        modes.update(result[3])
        if progress is not None:
            progress(done, n, "reading images")

    if n < PARALLEL_FROM or workers < 2:
        out = np.empty(shape, dtype=np.uint8)
        done = 0
        for start, paths in chunks:
            result = _decode_chunk((out, shape, start, paths, mode, size))
            done += len(paths)
            collect(result, done)
        return out, modes
    import mmap
    import multiprocessing
    import sys

    def run(pool, target):
        done = 0
        for result in pool.imap_unordered(_decode_chunk, [(target, shape, start, paths, mode, size) for start, paths in chunks]):
            done += result[2] if result[0] == "ok" else 0
            collect(result, done)

    # fork is cheap and lets the workers write straight into the result (an anonymous shared mapping they inherit),
    # but it is not safe once torch (and CUDA) may be running in this process: then spawn and named shared memory
    if "torch" not in sys.modules and "fork" in multiprocessing.get_all_start_methods():
        global _FORKED_TARGET
        out = np.frombuffer(mmap.mmap(-1, max(1, int(np.prod(shape)))), dtype=np.uint8)[: int(np.prod(shape))].reshape(shape)
        _FORKED_TARGET = out
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                run(pool, None)
        finally:
            _FORKED_TARGET = None
        return out, modes
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(create=True, size=max(1, int(np.prod(shape))))
    try:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            run(pool, shm.name)
        out = np.ndarray(shape, dtype=np.uint8, buffer=shm.buf).copy()
    finally:
        shm.close()
        shm.unlink()
    return out, modes


#: The array forked decoding workers write into (set only while a pool runs).
_FORKED_TARGET = None


class ImageFolderArray:
    """The images of a folder as a read-only uint8 array (N, C, H, W), decoded when indexed.

    Indexing with an int, a slice or an array of ints decodes just those
    images (in parallel for large batches), so a set larger than memory can be
    streamed in batches. ``reshape(N, -1)`` gives the same rows flattened.
    """

    dtype = np.dtype(np.uint8)

    @property
    def preferred_chunk_rows(self) -> int:
        """Rows to read at a time: enough for every decoding worker to get a task."""
        return max(PARALLEL_FROM, DECODE_CHUNK * decode_workers())

    def __init__(self, files: list[Path], mode: str, shape: tuple[int, int, int], flat: bool = False) -> None:
        self.files, self.mode, self.image_shape, self.flat = files, mode, shape, flat
        self.shape = (len(files), int(np.prod(shape))) if flat else (len(files), *shape)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return len(self.files)

    def reshape(self, *shape) -> "ImageFolderArray":
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape
        if len(shape) == 2 and shape[0] == len(self.files) and shape[1] in (-1, self.shape[-1] if self.flat else int(np.prod(self.image_shape))):
            return ImageFolderArray(self.files, self.mode, self.image_shape, flat=True)
        raise ValueError(f"an image folder reshapes only to (N, -1), not {shape}")

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            image = _decode(self.files[int(index)], self.mode)
            return image.reshape(-1) if self.flat else image
        ids = np.arange(len(self.files))[index]
        out, _ = decode_images([self.files[int(i)] for i in ids], self.mode, self.image_shape)
        return out.reshape(len(ids), -1) if self.flat else out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def _mode_notes(modes: Counter, folder: Path) -> list[str]:
    grey, alpha = sum(modes[m] for m in ("L", "1", "I", "I;16", "F")), sum(modes[m] for m in ("RGBA", "LA", "PA"))
    other = sum(n for m, n in modes.items() if m not in ("RGB", "L", "1", "I", "I;16", "F", "RGBA", "LA", "PA"))
    notes = []
    if grey:
        notes.append(f"{grey:,} grayscale image(s) in {folder} were converted to RGB (the grey value in all three channels)")
    if alpha:
        notes.append(f"{alpha:,} image(s) in {folder} have an alpha channel, which was dropped (converted to RGB)")
    if other:
        notes.append(f"{other:,} image(s) in {folder} in other colour modes ({', '.join(sorted(set(modes) - {'RGB'}))}) were "
                     "converted to RGB")
    return notes


def _scan_headers(files: list[Path]) -> Counter:
    """The colour modes of all images (headers only), checking that each is readable."""
    from PIL import Image, UnidentifiedImageError

    modes: Counter = Counter()
    for path in files:
        try:
            with Image.open(path) as img:
                modes[img.mode] += 1
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(f"{path} is not a readable image ({err})") from None
    return modes


def load_image_folder(folder: Path, progress: Progress | None = None, stream: bool | None = None, memory_limit: int = 4 << 30) -> Dataset:
    """Every PNG/JPEG below ``folder`` as uint8 (N, C, H, W); all must share one size.

    The images are decoded into memory in one parallel pass (the size of each
    checked on the way) unless they would take more than ``memory_limit`` bytes
    (or ``stream`` is True): then ``values`` is an :class:`ImageFolderArray` that
    decodes them batch by batch when read. A folder of grayscale images gives one
    channel; in a folder with colour images the others are converted to RGB.
    """
    from PIL import Image, UnidentifiedImageError

    files = image_files(folder)
    if not files:
        raise DataError(f"{folder} holds no PNG or JPEG images (searched recursively)")
    try:
        with Image.open(files[0]) as img:
            width, height = img.size
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"{files[0]} is not a readable image ({err})") from None
    rgb_shape = (3, height, width)
    if stream is None:
        stream = len(files) * int(np.prod(rgb_shape)) > memory_limit
    if stream:
        modes = _scan_headers(files)
        mode = "L" if set(modes) <= {"L", "1"} else "RGB"
        shape = (1, height, width) if mode == "L" else rgb_shape
        return Dataset(folder.name, ImageFolderArray(files, mode, shape), 1.0 / 255.0, 0.0, "uint8 / 255 (streamed from disk)",
                       str(folder.resolve()), notes=_mode_notes(modes, folder) if mode == "RGB" else [])
    values, modes = decode_images(files, "RGB", rgb_shape, progress=progress)
    if set(modes) <= {"L", "1"}:  # all grey: one channel (the three decoded ones are equal)
        return Dataset(folder.name, np.ascontiguousarray(values[:, :1]), 1.0 / 255.0, 0.0, "uint8 / 255", str(folder.resolve()))
    return Dataset(folder.name, values, 1.0 / 255.0, 0.0, "uint8 / 255", str(folder.resolve()), notes=_mode_notes(modes, folder))


def load_dataset(
    spec: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    split: str = "train",
    download: bool = True,
    rescale: bool = True,
    progress: Progress | None = None,
    stream: bool | None = None,
    pixel_range: PixelRange | str = DEFAULT_PIXEL_RANGE,
) -> Dataset:
    """``cifar10`` (the official python format), a ``.npy``/``.npz`` file, or a folder of images.

    ``stream``: for an image folder, decode images when read instead of all at
    once (default: only when they would not fit in 4 GiB). ``.npy`` files are
    always memory-mapped. ``pixel_range``: the convention points are measured in
    (:class:`~ncsn_tune.pixel_range.PixelRange`, by default the paper's [0, 1]);
    the same images in [-1, 1] are twice as far apart.
    """
    return in_pixel_range(_load(str(spec), data_root, split, download, rescale, progress, stream), pixel_range)


def in_pixel_range(dataset: Dataset, pixel_range: PixelRange | str) -> Dataset:
    """``dataset`` with its values mapped into another pixel range (x' = 2 x - 1 from [0, 1] to [-1, 1])."""
    pixel_range = PixelRange.parse(pixel_range, error=DataError)
    if pixel_range == dataset.pixel_range:
        return dataset
    scale, offset = dataset.pixel_range.affine_to(pixel_range, dataset.scale, dataset.offset)
    return dataclasses.replace(dataset, scale=scale, offset=offset, pixel_range=pixel_range,
                               scale_note=f"{dataset.scale_note}, then to {pixel_range.label}")


def _load(spec: str, data_root, split, download, rescale, progress, stream) -> Dataset:
    if spec.lower() in ("cifar10", "cifar-10"):
        return load_cifar10(data_root, split, download, progress)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(
            f"no data set {spec!r}: give 'cifar10', a .npy/.npz file or a folder of PNG/JPEG images ({path} does not exist)"
        )
    if path.is_dir():
        if _cifar_folder_in(path, split) is not None:
            return load_cifar10(path, split, download=False)
        return load_image_folder(path, progress, stream)
    suffix = path.suffix or path.resolve().suffix  # a link without a suffix: its target's
    if suffix in (".npy", ".npz"):
        return load_array(path, rescale)
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .npy, .npz or a folder of PNG/JPEG images")
