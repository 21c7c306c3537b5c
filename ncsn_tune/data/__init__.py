"""Finding and reading data sets: one package for every command that reads data.

``load_dataset("cifar10", ...)`` reads the official CIFAR-10 python format (:mod:`.cifar10`),
found in ``--data-root``, else ``$NCSN_TUNE_DATA``, else the cache (``$NCSN_TUNE_CACHE``, else
``$XDG_CACHE_HOME/ncsn_tune``, else ``~/.cache/ncsn_tune``), downloading the official archive there
when it is missing. ``load_dataset(PATH)`` reads a ``.npy``/``.npz`` array (:mod:`.arrays`) or a
folder of PNG/JPEG images (:mod:`.image_folder`). Values are kept as stored (uint8 stays uint8,
``.npy`` files are memory-mapped); ``Dataset.scale`` and ``Dataset.offset`` map them to the pixel
range (:mod:`.pixel_range`), by default [0, 1].
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ..errors import DataError
from .arrays import load_array
from .cifar10 import _cifar_folder_in, find_cifar10, load_cifar10
from .dataset import SPLITS, DataIdentity, Dataset, Progress, as_dataset, pixel_scale
from .image_folder import folder_name, load_image_folder
from .pixel_range import DEFAULT as DEFAULT_PIXEL_RANGE, PixelRange

__all__ = ["SPLITS", "DataIdentity", "Dataset", "PixelRange", "as_dataset", "data_name", "find_cifar10", "in_pixel_range", "load_array",
           "load_cifar10", "load_dataset", "load_image_folder", "pixel_scale"]


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


def data_name(spec: str | os.PathLike) -> str:
    """The name :func:`load_dataset` gives the training data ``spec`` names, found without reading it: ``cifar10`` for
    CIFAR-10 (by name, or a folder holding its batches), a folder's own name, an array file's stem."""
    if str(spec).lower() in ("cifar10", "cifar-10"):
        return "cifar10"
    path = Path(spec).expanduser()
    if path.is_dir():
        return "cifar10" if _cifar_folder_in(path, "train") is not None else folder_name(path)
    return path.stem


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
