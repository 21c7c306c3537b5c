"""Rows of a point set, read as T1 and the nearest-neighbour search both need them (private to :mod:`ncsn_tune.analysis`):
an (N, D) matrix from whatever was given, rows taken in sorted order (kind to memory maps), float64 copies, a sample
centre, and the float32 error bound that makes a float32 search exact after a float64 check."""

from __future__ import annotations

import math

import numpy as np

from ..errors import DataError

#: Unit roundoff of float32 (round to nearest).
FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def as_point_matrix(points):
    """View ``points`` as an (N, D) matrix without copying: NumPy arrays and memory maps,
    torch tensors, or any object with ``shape``, ``dtype``, ``reshape`` and row indexing
    (such as :class:`ncsn_tune.data.ImageFolderArray`)."""
    x = points
    if not hasattr(x, "shape") or not hasattr(x, "__getitem__"):
        x = np.asarray(x)
    shape = tuple(x.shape)
    if len(shape) == 1:
        x = x.reshape(-1, 1)
    elif len(shape) > 2:
        x = x.reshape(shape[0], -1)
    shape = tuple(x.shape)
    if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
        raise DataError(f"the point set is empty (shape {tuple(points.shape) if hasattr(points, 'shape') else shape}); it needs at least one point")
    kind = str(x.dtype).replace("torch.", "")
    if kind.startswith("complex") or not any(kind.startswith(k) for k in ("float", "int", "uint", "bool", "bfloat")):
        raise DataError(f"points must be real numbers, got values of type {x.dtype}")
    return x


def is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def take(x, ids: np.ndarray):
    """Rows ``ids`` of ``x`` in that order, reading them in sorted order (kind to memory maps)."""
    if is_torch(x):
        import torch

        return x[torch.as_tensor(ids, device=x.device)]
    if len(ids) > 1 and np.any(np.diff(ids) < 0):
        perm = np.argsort(ids, kind="stable")
        rows = np.asarray(x[ids[perm]])
        return rows[np.argsort(perm, kind="stable")]
    if len(ids) and ids[-1] - ids[0] + 1 == len(ids) and not np.any(np.diff(ids) == 0):  # consecutive: one slice
        return np.asarray(x[int(ids[0]) : int(ids[-1]) + 1])
    return np.asarray(x[ids])


def float32_error_bound(dim: int, radius_squared: float) -> float:
    """A bound on |est - d2| for squared distances estimated in float32.

    With centred points c_i of norm <= R rounded to float32 (relative error u =
    2**-24 per coordinate), the float32 dot product has error at most
    gamma_D ||c_i|| ||c_j|| (gamma_D = D u / (1 - D u), any summation order,
    Higham, Accuracy and Stability, 2nd ed., eq. 3.5), hence 2 gamma_D R**2 on
    the squared distance; rounding the coordinates moves a squared distance by
    at most 8 u R**2, and the float32 sum n_i + n_j - 2 g by a few u * 4 R**2.
    The bound returned is (2 gamma_D + 24 u) R**2, widened by 5%.
    """
    u = FLOAT32_UNIT_ROUNDOFF
    if dim * u >= 0.5:
        raise DataError(f"dimension {dim} is too large for float32 error bounds; split the data")
    gamma_d = dim * u / (1.0 - dim * u)
    return 1.05 * (2.0 * gamma_d + 24.0 * u) * radius_squared + 1e-300


def as_float64(rows) -> np.ndarray:
    """Rows read from a NumPy or torch source, as a float64 NumPy array."""
    return rows.detach().cpu().double().numpy() if is_torch(rows) else np.asarray(rows, dtype=np.float64)


def power_of_two_unit(largest: float) -> float:
    """The smallest power of two >= ``largest`` (1 for 0): dividing by it is exact and keeps values in [-1, 1]."""
    return 2.0 ** math.ceil(math.log2(largest)) if largest > 0 else 1.0


def sample_centre(x, max_rows: int = 1024) -> np.ndarray:
    """The float64 mean of up to ``max_rows`` evenly spaced rows."""
    n = x.shape[0]
    ids = np.unique(np.linspace(0, n - 1, min(n, max_rows)).astype(np.int64))
    rows = as_float64(take(x, ids))
    if not np.isfinite(rows).all():
        bad = int(ids[np.flatnonzero(~np.isfinite(rows).all(axis=1))[0]])
        raise DataError(f"point {bad} has a NaN or infinite value; clean the data before computing distances")
    return rows.mean(axis=0)
