"""Technique 1 -- the initial (largest) noise scale.

sigma_max is chosen as the largest Euclidean distance between two training
points (pixels in [0, 1], images flattened to D = C*H*W values). Computed here
exactly, over the whole set, with the pair that attains it.

Method (``max_pairwise_distance``): the points are centred and cast to float32
once; blocks of squared distances ||c_i||**2 + ||c_j||**2 - 2 c_i.c_j come
from float32 matrix products, never more than ``block_size`` rows against
``block_size`` rows at a time. Float32 only *selects*: a rigorous bound on its
rounding error (``float32_error_bound``) gives a band, and every pair that could
lie within it of the best distance found so far is re-computed in float64 from
the original values as sum((x_i - x_j)**2). The reported value is that float64
sum; pairs that tie are ordered by index, so the pair is the one a float64
brute force that keeps the first maximum finds.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import numpy as np

from ..errors import DataError

#: Unit roundoff of float32 (round to nearest).
FLOAT32_UNIT_ROUNDOFF = 2.0**-24

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class FarthestPair:
    """The largest pairwise distance of a point set and the pair (i < j) that attains it.

    ``pairs_evaluated`` counts the pairs whose distance was computed at all
    (in float32 or float64), out of ``pairs_total`` = N (N - 1) / 2;
    ``pairs_rechecked`` those re-computed in float64.
    """

    distance: float
    pair: tuple[int, int]
    num_points: int
    dim: int
    pairs_evaluated: int
    pairs_total: int
    pairs_rechecked: int
    method: str
    seconds: float

    def to_dict(self) -> dict:
        data = asdict(self)
        data["pair"] = list(self.pair)
        return data


def as_point_matrix(points) -> np.ndarray:
    """View ``points`` as an (N, D) matrix of real numbers, without copying where possible."""
    x = points if isinstance(points, np.ndarray) else np.asarray(points)
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    elif x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"the point set is empty (shape {tuple(np.shape(points))}); it needs at least one point")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
        raise DataError(f"points must be numbers, got an array of dtype {x.dtype}")
    return x


def _check_finite(x: np.ndarray, chunk_rows: int) -> None:
    if not np.issubdtype(x.dtype, np.floating):
        return
    for start in range(0, x.shape[0], chunk_rows):
        block = x[start : start + chunk_rows]
        if not np.isfinite(block).all():
            row = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise DataError(f"point {row} has a NaN or infinite value; clean the data before computing distances")


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


def _lower_float32(value: float) -> np.float32:
    """The largest float32 that is <= value (so a float32 comparison never loses a candidate)."""
    v = np.float32(value)
    if float(v) > value:
        v = np.nextafter(v, np.float32(-np.inf))
    return v


class _Best:
    """The best pair so far by exact squared distance; ties go to the smaller (i, j)."""

    def __init__(self) -> None:
        self.d2 = -math.inf
        self.pair = (0, 0)

    def offer(self, d2: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
        if d2.size == 0:
            return
        top = d2.max()
        hits = np.flatnonzero(d2 == top)
        i = np.minimum(rows[hits], cols[hits])
        j = np.maximum(rows[hits], cols[hits])
        k = np.lexsort((j, i))[0]
        pair = (int(i[k]), int(j[k]))
        if top > self.d2 or (top == self.d2 and pair < self.pair):
            self.d2, self.pair = float(top), pair


def exact_squared_distances(
    x: np.ndarray, rows: np.ndarray, cols: np.ndarray, unit: float = 1.0, chunk: int = 256
) -> np.ndarray:
    """sum(((x_i - x_j) / unit)**2) in float64 for each (rows[k], cols[k]), ``chunk`` pairs at a time.

    ``unit`` is a power of two, so dividing by it is exact; it keeps huge or
    tiny values clear of overflow and underflow.
    """
    out = np.empty(len(rows), dtype=np.float64)
    order = np.argsort(rows, kind="stable")  # sorted rows read memory-mapped data in order
    for start in range(0, len(rows), chunk):
        sel = order[start : start + chunk]
        diff = np.asarray(x[rows[sel]], dtype=np.float64) - np.asarray(x[cols[sel]], dtype=np.float64)
        if unit != 1.0:
            diff /= unit
        out[sel] = np.einsum("ij,ij->i", diff, diff)
    return out


class CentredPoints:
    """Points centred on their mean and divided by ``unit`` (a power of two), in float32.

    Squared norms are kept in float64, and ``tolerance`` bounds the error of a
    float32 squared-distance estimate; all are in units of ``unit**2``.
    """

    def __init__(self, x: np.ndarray, chunk_rows: int = 4096) -> None:
        n, dim = x.shape
        total = np.zeros(dim, dtype=np.float64)
        for start in range(0, n, chunk_rows):
            total += np.asarray(x[start : start + chunk_rows], dtype=np.float64).sum(axis=0)
        self.mean = total / n
        largest = 0.0
        for start in range(0, n, chunk_rows):
            largest = max(largest, float(np.abs(np.asarray(x[start : start + chunk_rows], dtype=np.float64) - self.mean).max()))
        self.unit = 2.0 ** math.ceil(math.log2(largest)) if largest > 0 else 1.0
        self.values = np.empty((n, dim), dtype=np.float32)
        for start in range(0, n, chunk_rows):
            block = np.asarray(x[start : start + chunk_rows], dtype=np.float64) - self.mean
            self.values[start : start + chunk_rows] = block / self.unit
        self.norms2 = np.einsum("ij,ij->i", self.values, self.values, dtype=np.float64)
        self.norms2_f32 = self.norms2.astype(np.float32)
        self.tolerance = float32_error_bound(dim, float(self.norms2.max()))

    def estimate_block(self, rows: np.ndarray | slice, cols: np.ndarray | slice) -> np.ndarray:
        """Float32 estimates of squared distances between two sets of points, shape (len(rows), len(cols))."""
        block = self.values[rows] @ self.values[cols].T
        block *= np.float32(-2.0)
        block += self.norms2_f32[rows][:, None]
        block += self.norms2_f32[cols][None, :]
        return block


def farthest_point_sweeps(
    x: np.ndarray, centred: CentredPoints, best: _Best, starts: Iterable[int], max_sweeps: int = 8
) -> int:
    """Lower bound by repeated farthest-point steps: from s go to the (estimated) farthest point.

    Each step costs one matrix-vector product; the pair it lands on is
    re-computed exactly and offered to ``best``. Returns the pairs evaluated.
    """
    evaluated = 0
    for start in starts:
        current, seen = int(start), set()
        for _ in range(max_sweeps):
            if current in seen:
                break
            seen.add(current)
            est = centred.norms2 + centred.norms2[current] - 2.0 * (centred.values @ centred.values[current]).astype(np.float64)
            est[current] = -np.inf
            evaluated += len(est) - 1
            nxt = int(np.argmax(est))
            pair_rows, pair_cols = np.array([current]), np.array([nxt])
            best.offer(exact_squared_distances(x, pair_rows, pair_cols, centred.unit), pair_rows, pair_cols)
            current = nxt
    return evaluated


def scan_block(
    x: np.ndarray,
    centred: CentredPoints,
    best: _Best,
    rows: np.ndarray,
    cols: np.ndarray,
    diagonal: bool,
) -> tuple[int, int]:
    """Evaluate all pairs rows x cols (only row < col pairs when ``diagonal``) and update ``best``.

    Returns (pairs evaluated, pairs re-checked in float64).
    """
    est = centred.estimate_block(rows, cols)
    evaluated = est.size
    if diagonal:
        est[np.tril_indices(len(rows), 0, len(cols))] = -np.inf
        evaluated = len(rows) * (len(rows) - 1) // 2
    tol = centred.tolerance
    k = int(np.argmax(est))
    if float(est.flat[k]) + tol < best.d2:
        return evaluated, 0
    # Tighten the bound with the block's own best estimate before selecting candidates.
    r, c = np.unravel_index(k, est.shape)
    top_rows, top_cols = rows[[r]], cols[[c]]
    best.offer(exact_squared_distances(x, top_rows, top_cols, centred.unit), top_rows, top_cols)
    r, c = np.nonzero(est >= _lower_float32(best.d2 - tol))
    cand_rows, cand_cols = rows[r], cols[c]
    best.offer(exact_squared_distances(x, cand_rows, cand_cols, centred.unit), cand_rows, cand_cols)
    return evaluated, len(r) + 1


def max_pairwise_distance(
    points,
    *,
    scale: float = 1.0,
    block_size: int = 2048,
    progress: ProgressCallback | None = None,
) -> FarthestPair:
    """Technique 1: the exact largest Euclidean distance between two of the points.

    sigma_max = max_{i<j} ||x_i - x_j||_2 over the rows of ``points`` (N, D)
    (any numeric dtype; higher-rank arrays are flattened per point), times
    ``scale`` (e.g. 1/255 for uint8 pixels). Memory: one float32 copy of the
    centred points plus a ``block_size``**2 float32 block.

    ``progress(pairs_done, pairs_total)`` is called after each row of blocks.
    """
    t0 = time.perf_counter()
    x = as_point_matrix(points)
    n, dim = x.shape
    if not (math.isfinite(scale) and scale > 0):
        raise DataError(f"scale must be a positive finite number, got {scale!r}")
    _check_finite(x, block_size)
    total = n * (n - 1) // 2
    if n == 1:
        return FarthestPair(0.0, (0, 0), 1, dim, 0, 0, 0, "blocked", time.perf_counter() - t0)
    centred = CentredPoints(x)
    best = _Best()
    # A good lower bound first, so that the band below selects few pairs from the start;
    # the sweeps' pairs are scanned again below, so they are not counted twice.
    farthest_point_sweeps(x, centred, best, [int(np.argmax(centred.norms2))], max_sweeps=4)
    evaluated = rechecked = 0
    starts = list(range(0, n, block_size))
    for a, i0 in enumerate(starts):
        rows = np.arange(i0, min(i0 + block_size, n))
        for j0 in starts[a:]:
            cols = np.arange(j0, min(j0 + block_size, n))
            e, r = scan_block(x, centred, best, rows, cols, diagonal=(i0 == j0))
            evaluated += e
            rechecked += r
        if progress is not None:
            progress(evaluated, total)
    distance = math.sqrt(best.d2) * centred.unit * scale
    return FarthestPair(distance, best.pair, n, dim, evaluated, total, rechecked, "blocked", time.perf_counter() - t0)


def brute_force_max_distance(points, *, scale: float = 1.0) -> FarthestPair:
    """The reference: every pair's distance as sum((x_i - x_j)**2) in float64, first maximum kept.

    O(N**2 D) time and O(N D) memory; for tests and small sets.
    """
    t0 = time.perf_counter()
    x = np.asarray(as_point_matrix(points), dtype=np.float64)
    n, dim = x.shape
    best_d2, pair = -1.0, (0, 0)
    for i in range(n - 1):
        diff = x[i + 1 :] - x[i]
        d2 = np.einsum("ij,ij->i", diff, diff)
        k = int(np.argmax(d2))
        if d2[k] > best_d2:
            best_d2, pair = float(d2[k]), (i, i + 1 + k)
    if n == 1:
        best_d2 = 0.0
    total = n * (n - 1) // 2
    return FarthestPair(math.sqrt(best_d2) * scale, pair, n, dim, total, total, total, "brute-force float64", time.perf_counter() - t0)
