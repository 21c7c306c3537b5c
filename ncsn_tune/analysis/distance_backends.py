"""The array operations the exact farthest-pair search needs, on NumPy (CPU) or torch (GPU).

The algorithm lives in :mod:`.initial_noise_scale` and is written once; a backend
only moves rows to its device and does the arithmetic. The torch backends
import torch when they are created, never at module import. Float32 matrix
products run in IEEE float32 (TF32 is switched off while the search runs), so
the rounding-error bound of :func:`._rows.float32_error_bound` holds.

:class:`IntegerBackend` is exact with no bound at all, for uint8 data (8-bit pixels) on torch: each value v becomes
v - 128 in int8, the dot products of two blocks are int8 matrix products accumulated in int32 over at most
:data:`INT32_SAFE_DEPTH` coordinates at a time (|sum| < 2**31) and summed in int64, and the squared distances
||a||**2 + ||b||**2 - 2 a.b are then exact integers (a shift moves no distance). On a Hopper GPU these products run
at about 950-1,000 TOPS against about 52 TFLOP/s for float32.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np


#: Bytes of blocks kept in host memory by the search (2 GiB).
CPU_BLOCK_CACHE = 2 << 30


class _Float32Blocks:
    """Blocks as float32 (raw - centre) / unit: estimates within a rounding bound, re-checked in float64."""

    exact = False

    def block_values(self, raw, centre: np.ndarray, unit: float):
        """The values a block's products are taken of: float32 (raw - centre) / unit."""
        return self.scaled_difference(raw, centre, unit)

    def block_norms(self, values):
        return self.squared_norms(values)


class NumpyBackend(_Float32Blocks):
    """CPU arithmetic with NumPy and its BLAS."""

    name = "cpu"
    on_cpu = True

    def asarray(self, raw) -> np.ndarray:
        return np.asarray(raw)

    def scaled_difference(self, raw, centre: np.ndarray, unit: float) -> np.ndarray:
        """float32 (raw - centre) / unit; the subtraction in float32 when raw is exact in float32."""
        raw = np.asarray(raw)
        if raw.dtype in (np.uint8, np.int8, np.uint16, np.int16, np.bool_, np.float32, np.float16):
            out = raw.astype(np.float32)
            out -= centre.astype(np.float32)
            if unit != 1.0:
                out *= np.float32(1.0 / unit)
            return out
        return ((raw.astype(np.float64) - centre) / unit).astype(np.float32)

    def squared_norms(self, values: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", values, values)

    def squared_norms64(self, values: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", values, values, dtype=np.float64)

    def estimate(self, a: np.ndarray, a_norms: np.ndarray, b: np.ndarray, b_norms: np.ndarray) -> np.ndarray:
        """float32 ||a_i||**2 + ||b_j||**2 - 2 a_i.b_j."""
        block = a @ b.T
        block *= np.float32(-2.0)
        block += a_norms[:, None]
        block += b_norms[None, :]
        return block

    def mask_not_above_diagonal(self, est, offset: int) -> None:
        """Exclude pairs (r, c) with c <= r + offset (the same point, or a pair seen the other way round)."""
        est[np.tril_indices(est.shape[0], offset, est.shape[1])] = -np.inf

    def argmax(self, est) -> tuple[float, int, int]:
        k = int(np.argmax(est))
        r, c = np.unravel_index(k, est.shape)
        return float(est[r, c]), int(r), int(c)

    def at_least(self, est, threshold: np.float32) -> tuple[np.ndarray, np.ndarray]:
        return np.nonzero(est >= threshold)

    def exact_squared_distances(self, raw_a, rows, raw_b, cols, unit: float, chunk: int = 512) -> np.ndarray:
        """sum(((a_r - b_c) / unit)**2) in float64 for each pair (rows[k], cols[k])."""
        out = np.empty(len(rows), dtype=np.float64)
        for start in range(0, len(rows), chunk):
            sl = slice(start, start + chunk)
            diff = np.asarray(raw_a[rows[sl]], dtype=np.float64) - np.asarray(raw_b[cols[sl]], dtype=np.float64)
            if unit != 1.0:
                diff /= unit
            out[sl] = np.einsum("ij,ij->i", diff, diff)
        return out

    def block_cache_budget(self) -> int:
        """Bytes of blocks the search keeps in memory (re-read from the source beyond that)."""
        return CPU_BLOCK_CACHE

    @contextmanager
    def exact_float32(self):
        yield

    def synchronize(self) -> None:
        pass


class TorchBackend(_Float32Blocks):
    """GPU (or CPU) arithmetic with torch; rows are copied to ``device`` block by block."""

    def __init__(self, device: str = "cuda") -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.name = str(self.device)

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def asarray(self, raw):
        t = self.torch
        if isinstance(raw, t.Tensor):
            return raw.to(self.device, non_blocking=True)
        arr = np.asarray(raw)
        if arr.dtype == np.uint16:
            arr = arr.astype(np.int32)
        return t.from_numpy(np.ascontiguousarray(arr)).to(self.device, non_blocking=True)

    def scaled_difference(self, raw, centre: np.ndarray, unit: float):
        t = self.torch
        raw = self.asarray(raw)
        if raw.dtype in (t.uint8, t.int8, t.int16, t.bool, t.float32, t.float16, t.bfloat16):
            out = raw.to(t.float32) - t.as_tensor(centre, dtype=t.float32, device=self.device)
            if unit != 1.0:
                out *= 1.0 / unit
            return out
        return ((raw.to(t.float64) - t.as_tensor(centre, dtype=t.float64, device=self.device)) / unit).to(t.float32)

    def squared_norms(self, values):
        return (values * values).sum(dim=1)

    def squared_norms64(self, values):
        v = values.to(self.torch.float64)
        return (v * v).sum(dim=1).cpu().numpy()

    def estimate(self, a, a_norms, b, b_norms):
        block = a @ b.T
        block.mul_(-2.0)
        block.add_(a_norms[:, None])
        block.add_(b_norms[None, :])
        return block

    def mask_not_above_diagonal(self, est, offset: int) -> None:
        mask = self.torch.ones(est.shape, dtype=self.torch.bool, device=est.device).tril(offset)
        est.masked_fill_(mask, float("-inf"))

    def argmax(self, est):
        k = int(self.torch.argmax(est))
        r, c = divmod(k, est.shape[1])
        return float(est[r, c]), r, c

    def at_least(self, est, threshold):
        idx = self.torch.nonzero(est >= float(threshold)).cpu().numpy()
        return idx[:, 0], idx[:, 1]

    def exact_squared_distances(self, raw_a, rows, raw_b, cols, unit: float, chunk: int = 4096) -> np.ndarray:
        t = self.torch
        out = np.empty(len(rows), dtype=np.float64)
        for start in range(0, len(rows), chunk):
            r = t.as_tensor(rows[start : start + chunk], device=self.device)
            c = t.as_tensor(cols[start : start + chunk], device=self.device)
            diff = raw_a[r].to(t.float64) - raw_b[c].to(t.float64)
            if unit != 1.0:
                diff /= unit
            out[start : start + chunk] = (diff * diff).sum(dim=1).cpu().numpy()
        return out

    def block_cache_budget(self) -> int:
        """On a GPU a quarter of its free memory (the blocks of a 1.28M x 12,288 set, 31 GB with their raw rows, then stay
        there instead of being gathered again for every pair of blocks); on a CPU as NumPy's."""
        if self.device.type != "cuda":
            return CPU_BLOCK_CACHE
        free, _ = self.torch.cuda.mem_get_info(self.device)
        return max(CPU_BLOCK_CACHE, free // 4)

    @contextmanager
    def exact_float32(self):
        """IEEE float32 matrix products (no TF32) for the duration."""
        matmul = self.torch.backends.cuda.matmul
        before = matmul.allow_tf32
        matmul.allow_tf32 = False
        try:
            yield
        finally:
            matmul.allow_tf32 = before

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)


#: Coordinates summed in one int32 accumulation: |a.b| <= k 128**2 < 2**31 for k <= 2**17 - 1; a power of two below.
INT32_SAFE_DEPTH = 1 << 16


class IntegerBackend(TorchBackend):
    """Exact integer arithmetic for uint8 rows (torch, a GPU or ``torch:cpu``): values v - 128 in int8, squared norms and
    squared distances as exact integers (int32 where D 255**2 < 2**31, else int64). ``exact`` tells the search to use no
    rounding bound and no scaling unit."""

    exact = True

    def __init__(self, device: str = "cuda") -> None:
        super().__init__(device)
        self.name = f"{self.device} int8"

    def block_values(self, raw, centre: np.ndarray, unit: float):
        """int8 (v - 128), the row length padded with zeros to a multiple of 8 (the int8 product's alignment; a zero on
        both sides adds nothing)."""
        t = self.torch
        raw = self.asarray(raw)
        values = (raw.to(t.int16) - 128).to(t.int8)
        pad = (-values.shape[1]) % 8
        return t.nn.functional.pad(values, (0, pad)) if pad else values.contiguous()

    def block_norms(self, values):
        t = self.torch
        v = values.to(t.int32)
        return (v * v).sum(dim=1, dtype=t.int64)

    def _accumulator(self, dim: int):
        return self.torch.int32 if dim * 255**2 < 2**31 - 1 else self.torch.int64

    def estimate(self, a, a_norms, b, b_norms):
        """The exact squared distances of every row of ``a`` to every row of ``b`` (int8 products, integer sums)."""
        t = self.torch
        m, n, k = a.shape[0], b.shape[0], a.shape[1]
        if m == 0 or n == 0:
            return t.empty((m, n), dtype=t.int64, device=self.device)
        rows, cols = max(m, 17), n + (-n) % 8  # the int8 product wants more than 16 rows and a multiple of 8 columns
        if rows != m:
            a = t.nn.functional.pad(a, (0, 0, 0, rows - m))
        if cols != n:
            b = t.nn.functional.pad(b, (0, 0, 0, cols - n))
        kind = self._accumulator(k)
        dot = None
        for start in range(0, k, INT32_SAFE_DEPTH):
            part = t._int_mm(a[:, start : start + INT32_SAFE_DEPTH].contiguous(), b[:, start : start + INT32_SAFE_DEPTH].T)
            dot = part.to(kind) if dot is None else dot.add_(part.to(kind))
        dot = dot[:m, :n]
        dot.mul_(-2)
        dot.add_(a_norms.to(kind)[:, None])
        dot.add_(b_norms.to(kind)[None, :])
        return dot

    def mask_not_above_diagonal(self, est, offset: int) -> None:
        mask = self.torch.ones(est.shape, dtype=self.torch.bool, device=est.device).tril(offset)
        est.masked_fill_(mask, -1)  # no squared distance is negative

    def at_least(self, est, threshold):
        idx = self.torch.nonzero(est >= math.floor(float(threshold))).cpu().numpy()
        return idx[:, 0], idx[:, 1]

    @staticmethod
    def suits(dtype) -> bool:
        return str(dtype).replace("torch.", "") == "uint8"


#: T1 sets below this many points stay on the CPU under ``device="auto"``: the pruned search takes a
#: fraction of a second there, less than starting CUDA and moving the data (benchmarks/sigma_max.py).
AUTO_GPU_MIN_POINTS = 20_000


def make_backend(device: str = "cpu", num_points: int | None = None, dtype=None, integer: bool | None = None):
    """The backend for a device name (:func:`ncsn_tune.devices.resolve_device`): NumPy on ``cpu``, torch on
    ``cuda``/``cuda:N`` and on ``torch:cpu`` (the torch code path on the CPU, for tests); ``auto`` takes a GPU
    only for sets of at least :data:`AUTO_GPU_MIN_POINTS` points. On torch, uint8 data (``dtype``) gets the exact
    :class:`IntegerBackend` unless ``integer`` is False (True insists, and needs uint8 data on torch)."""
    from ..devices import resolve_device
    from ..errors import DataError

    worthwhile = num_points is None or num_points >= AUTO_GPU_MIN_POINTS
    resolved = resolve_device(device, gpu_worthwhile=worthwhile)
    uint8 = dtype is not None and IntegerBackend.suits(dtype)
    if integer and (resolved == "cpu" or not uint8):
        raise DataError("the exact integer path needs uint8 data (8-bit pixels) and a torch device (cuda, or torch:cpu); "
                        f"got {'data of type ' + str(dtype) if not uint8 else 'the NumPy CPU path'}")
    if resolved == "cpu":
        return NumpyBackend()
    torch_device = "cpu" if resolved == "torch:cpu" else resolved
    if uint8 and integer is not False:
        return IntegerBackend(torch_device)
    return TorchBackend(torch_device)
