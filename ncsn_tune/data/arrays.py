"""Arrays of images or vectors in .npy (memory-mapped) and .npz files."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import Dataset, _array_dataset

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
