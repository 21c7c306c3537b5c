"""CIFAR-10 in the official python format: found (a data root, $NCSN_TUNE_DATA, the cache), downloaded with its md5
checked when allowed, every full-size batch checked against the official file, read without running foreign objects."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..files import cache_dir, file_digest
from .dataset import SPLITS, Dataset, Progress

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
            extract_data(tar, unpack)
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


def extract_data(tar: tarfile.TarFile, folder: Path) -> None:
    """Every member of ``tar`` into ``folder``, refusing what an archive of data has no need of: a path outside
    ``folder`` (absolute, or through ``..``), links, devices. tarfile's own "data" filter does this on Python 3.11.4+
    (3.10.12+); older ones (Debian 12's 3.11.2) take the same check here, files extracted without set-id bits."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(folder, filter="data")
        return
    root = Path(folder).resolve()
    members = tar.getmembers()
    for member in members:
        inside = (root / member.name).resolve()
        if not (member.isfile() or member.isdir()) or os.path.isabs(member.name) or (inside != root and root not in inside.parents):
            raise tarfile.TarError(f"the archive holds {member.name!r}, which is not a plain file or folder inside it")
        member.mode &= 0o755
    tar.extractall(folder, members=members)
