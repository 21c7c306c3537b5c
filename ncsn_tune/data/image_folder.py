"""Folders of PNG/JPEG images: decoded by one process per core into shared memory; a folder of :data:`CACHE_FROM` images or
more is decoded once into a uint8 array in the user's cache and memory-mapped from then on (:func:`cached_folder_array`),
keyed by every file's path, size and modification time; or streamed when asked."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import Dataset, Progress

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def folder_name(folder: str | os.PathLike) -> str:
    """A folder's name as typed, made absolute without resolving links: ``church/`` and ``church`` are church, and so is
    ``.`` typed inside it (whose own name is "")."""
    return Path(os.path.abspath(Path(folder).expanduser())).name


#: A file that marks a folder ncsn-tune wrote, whose images are its outputs, not data: a run (its metrics), an evaluation.
OUTPUT_MARKERS = ("metrics.jsonl", "evaluation.json")


def image_files(folder: Path, left_out: list[Path] | None = None) -> list[Path]:
    """PNG/JPEG files below ``folder``, recursively, in sorted order (one directory read per folder, no stat per file).
    Hidden folders (``.ncsn-tune``, ``.git``) and the folders ncsn-tune writes (:data:`OUTPUT_MARKERS`: a run trained or
    evaluated inside its own data) are not entered; those are appended to ``left_out``."""
    found, pending = [], [str(folder)]
    while pending:
        current = pending.pop()
        with os.scandir(current) as entries:
            entries = list(entries)
        if current != str(folder) and any(e.name in OUTPUT_MARKERS for e in entries):
            if left_out is not None:
                left_out.append(Path(current))
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=True):
                if not entry.name.startswith("."):
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
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
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
            except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
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
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise DataError(f"{path} is not a readable image ({err})") from None
    return modes


#: Folders with at least this many images are decoded once into a cached array (smaller ones decode in a moment).
CACHE_FROM = 1024
#: Images decoded per pass into the cached array (one pool of workers per pass).
CACHE_CHUNK = 16384


def folder_key(files: list[Path]) -> str:
    """SHA-256 of every file's path, size and modification time: another image, or one changed, is another key."""
    import hashlib

    digest = hashlib.sha256()
    for path in files:
        st = path.stat()
        digest.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cached_folder_array(folder: Path, files: list[Path], mode: str, shape: tuple[int, int, int],
                        progress: Progress | None = None) -> tuple[np.ndarray, list[str]]:
    """The images of ``files`` as a read-only memory-mapped uint8 (N, C, H, W) array in the user's cache: decoded once (in
    parallel, :data:`CACHE_CHUNK` at a time, with progress; the disk space checked first, and written atomically), then
    mapped on every later load. Returns the array and notes (what was done, how big)."""
    import shutil

    from ..files import cache_dir, stale_temporaries

    n = len(files)
    need = n * int(np.prod(shape))
    key = folder_key(files)
    folder_cache = cache_dir() / "image_folders"
    target = folder_cache / f"{folder_name(folder)}_{key[:16]}_{mode}_{'x'.join(map(str, shape))}.npy"
    if target.is_file():
        try:
            values = np.load(target, mmap_mode="r")
            if values.shape == (n, *shape) and values.dtype == np.uint8:
                return values, []  # the decoded copy, memory-mapped: nothing to say
        except (OSError, ValueError):
            pass  # a damaged copy is decoded again
    folder_cache.mkdir(parents=True, exist_ok=True)
    stale_temporaries(folder_cache, remove=True)
    free = shutil.disk_usage(folder_cache).free
    if need > 0.95 * free:
        raise DataError(f"decoding {n:,} images of {'x'.join(map(str, shape))} once takes {need / 1e9:,.2f} GB in {folder_cache}, which has "
                        f"{free / 1e9:,.2f} GB free; free space there or set NCSN_TUNE_CACHE to a disk that has it", fields="data")
    tmp = folder_cache / f".{target.name}.{os.getpid()}.decode.tmp"
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, *shape))
        for start in range(0, n, CACHE_CHUNK):
            stop = min(n, start + CACHE_CHUNK)
            part = (lambda done, total, what, start=start: progress(start + done, n, "decoding images once")) if progress else None
            out[start:stop] = decode_images(files[start:stop], mode, shape, progress=part)[0]
        out.flush()
        del out
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return np.load(target, mmap_mode="r"), [f"{n:,} images decoded once into {target} ({need / 1e9:.2f} GB; later loads map it)"]


def load_image_folder(folder: Path, progress: Progress | None = None, stream: bool | None = None, memory_limit: int = 4 << 30) -> Dataset:
    """Every PNG/JPEG below ``folder`` as uint8 (N, C, H, W); all must share one size.

    The images are decoded into memory in one parallel pass (the size of each
    checked on the way) unless they would take more than ``memory_limit`` bytes
    (or ``stream`` is True): then ``values`` is an :class:`ImageFolderArray` that
    decodes them batch by batch when read. A folder of grayscale images gives one
    channel; in a folder with colour images the others are converted to RGB.
    """
    from PIL import Image, UnidentifiedImageError

    left_out: list[Path] = []
    files = image_files(folder, left_out)
    if not files:
        raise DataError(f"{folder} holds no PNG or JPEG images (searched recursively)")
    try:
        with Image.open(files[0]) as img:
            width, height = img.size
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise DataError(f"{files[0]} is not a readable image ({err})") from None
    rgb_shape = (3, height, width)
    said = ([f"left out {', '.join(str(p) for p in left_out[:3])}{' and more' if len(left_out) > 3 else ''}: folders ncsn-tune "
             "wrote (a run or an evaluation inside its data), whose images are outputs, not data"] if left_out else [])

    def dataset(values, how: str = "uint8 / 255", notes=()) -> Dataset:
        return Dataset(folder_name(folder), values, 1.0 / 255.0, 0.0, how, str(folder.resolve()), notes=[*said, *notes])

    if stream is None and len(files) >= CACHE_FROM:  # decoded once into the cache, memory-mapped after
        modes = _scan_headers(files)
        mode = "L" if set(modes) <= {"L", "1"} else "RGB"
        shape = (1, height, width) if mode == "L" else rgb_shape
        try:
            values, notes = cached_folder_array(folder, files, mode, shape, progress)
        except OSError as err:  # no cache to write: decoded when read instead
            values, notes = ImageFolderArray(files, mode, shape), [f"images decoded when read (no cache: {err.strerror or err})"]
        notes += _mode_notes(modes, folder) if mode == "RGB" else []
        return dataset(values, notes=notes)
    if stream is None:
        stream = len(files) * int(np.prod(rgb_shape)) > memory_limit
    if stream:
        modes = _scan_headers(files)
        mode = "L" if set(modes) <= {"L", "1"} else "RGB"
        shape = (1, height, width) if mode == "L" else rgb_shape
        return dataset(ImageFolderArray(files, mode, shape), "uint8 / 255 (streamed from disk)",
                       _mode_notes(modes, folder) if mode == "RGB" else [])
    values, modes = decode_images(files, "RGB", rgb_shape, progress=progress)
    if set(modes) <= {"L", "1"}:  # all grey: one channel (the three decoded ones are equal)
        return dataset(np.ascontiguousarray(values[:, :1]))
    return dataset(values, notes=_mode_notes(modes, folder))
