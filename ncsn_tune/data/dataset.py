"""A data set as the analysis and the trainer see it: its values as stored, how to map them to a pixel range, and its
identity (what decides whether a saved schedule or a run was made from it)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from ..errors import DataError
from .pixel_range import DEFAULT as DEFAULT_PIXEL_RANGE, PixelRange

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
    #: SHA-256 of every byte of the data (:meth:`Dataset.content_digest`), where a decision rests on the data being
    #: the same to the last pixel (continuing a run, reusing FID statistics); None where the fingerprint is enough.
    content_sha256: str | None = None

    def same_data(self, other: "DataIdentity | None") -> bool:
        """The same data: fingerprint, size, shape, split and pixel range agree, and so do the full-content digests
        where both sides have one."""
        return (
            other is not None
            and self.fingerprint is not None
            and self.fingerprint == other.fingerprint
            and self.pixel_range == other.pixel_range
            and self.num_points == other.num_points
            and tuple(self.shape) == tuple(other.shape)
            and self.split == other.split
            and (self.content_sha256 is None or other.content_sha256 is None or self.content_sha256 == other.content_sha256)
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
            content_sha256=data.get("content_sha256"),
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
    _content: str | None = field(default=None, repr=False, compare=False)

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

    def content_digest(self, progress=None) -> str:
        """SHA-256 of shape, dtype, scaling and every byte of the values, read in chunks of about 64 MB (memory-mapped
        arrays stay on disk); computed once per Dataset. About 1 GB/s: a second for CIFAR-10."""
        if self._content is None:
            digest = hashlib.sha256()
            digest.update(f"{tuple(self.values.shape)}|{np.dtype(self.values.dtype).str}|{self.scale!r}|{self.offset!r}".encode())
            row = max(1, int(np.prod(self.values.shape[1:])) * np.dtype(self.values.dtype).itemsize)
            step = max(1, (64 << 20) // row)
            for start in range(0, self.num_points, step):
                digest.update(np.ascontiguousarray(np.asarray(self.values[start:start + step])).tobytes())
                if progress is not None:
                    progress(min(start + step, self.num_points), self.num_points, "checking the data")
            self._content = digest.hexdigest()
        return self._content

    def identity(self, content: bool = False) -> DataIdentity:
        """Computed once per Dataset (the values never change; another pixel range is another Dataset); with ``content``
        the full-content digest too (:meth:`content_digest`)."""
        if content:
            return dataclasses.replace(self._identity, content_sha256=self.content_digest())
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
