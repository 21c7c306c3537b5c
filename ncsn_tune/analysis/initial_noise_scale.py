"""Technique 1 -- the initial (largest) noise scale.

sigma_max is chosen as the largest Euclidean distance between two training
points (pixels in [0, 1], images flattened to D = C*H*W values). Computed here
exactly, over the whole set, with the pair that attains it.

Method (``max_pairwise_distance``):

1. One streamed pass gives every point's distance r_p to a centre c (the mean
   of an even sample of rows; any centre is valid for the bound below).
2. The points are taken in order of decreasing r_p, in blocks of
   ``block_size``. Blocks of squared distances ||a||**2 + ||b||**2 - 2 a.b come
   from float32 matrix products of centred rows. Float32 only *selects*: a
   rigorous bound on its rounding error (:func:`float32_error_bound`) gives a
   band, and every pair that could lie within it of the best distance found so
   far is re-computed in float64 from the original values as
   sum((x_i - x_j)**2). The first block, the outermost points, gives a lower
   bound lb that is usually the answer.
3. Pruning (``method="pruned"``) skips only what provably cannot win: by the
   triangle inequality d(p, q) <= r_p + r_q, so a pair with r_p + r_q < lb
   (with r_p rounded up by its error bound) is never computed; whole blocks,
   block rows and block columns are skipped that way. ``method="blocked"``
   computes every pair (the reference brute force, in the same engine).

The reported value is the float64 sum of the winning pair; pairs that tie are
ordered by index, so the pair is the one a float64 brute force that keeps the
first maximum finds. Memory: the source is read ``chunk_rows`` rows at a time
(memory-mapped arrays and image folders stay on disk), the blocks of candidate
points are kept while they fit in ``memory_budget`` bytes (default: the backend's, 2 GiB on a CPU, a quarter of
a GPU's free memory; re-read beyond it),
and two ``block_size``**2 float32 blocks are alive at once.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable

import numpy as np

from ..errors import DataError
from ._rows import (
    FLOAT32_UNIT_ROUNDOFF,
    as_float64,
    as_point_matrix,
    float32_error_bound,
    is_torch,
    power_of_two_unit,
    sample_centre,
    take,
)
from .distance_backends import make_backend

#: progress(done, total, what)
ProgressCallback = Callable[[int, int, str], None]


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

    @classmethod
    def from_dict(cls, data: dict) -> "FarthestPair":
        """What :meth:`to_dict` wrote (a schedule's ``source`` holds it, among other keys)."""
        return cls(**{f.name: data[f.name] for f in fields(cls)} | {"pair": tuple(data["pair"])})


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


def _radii(x, centre: np.ndarray, backend, chunk_rows: int, progress) -> np.ndarray:
    """Upper bounds on ||x_p - centre|| for every point, in float64, read ``chunk_rows`` rows at a time.

    Computed in float32 (relative error at most gamma_D + 3u on the square, so
    each radius is rounded up by that much, plus an absolute 1e-15 of the unit
    for underflow); a chunk that overflows float32 is redone in float64. NaN or
    infinite values are an error naming the point.
    """
    n, dim = x.shape
    u = FLOAT32_UNIT_ROUNDOFF
    gamma_d = dim * u / (1.0 - dim * u)
    rel = 1.01 * (gamma_d + 3.0 * u)
    radii = np.empty(n, dtype=np.float64)
    probe = as_float64(take(x, np.unique(np.linspace(0, n - 1, min(n, 256)).astype(np.int64))))
    sample_spread = float(np.abs(probe - centre).max())
    unit = power_of_two_unit(sample_spread)
    for start in range(0, n, chunk_rows):
        raw = x[start : start + chunk_rows]
        values = backend.scaled_difference(raw, centre, unit)
        sq = backend.squared_norms(values)
        sq = as_float64(sq)
        if not np.isfinite(sq).all():
            raw64 = as_float64(raw).reshape(len(raw), -1)
            finite = np.isfinite(raw64).all(axis=1)
            if not finite.all():
                bad = start + int(np.flatnonzero(~finite)[0])
                raise DataError(f"point {bad} has a NaN or infinite value; clean the data before computing distances")
            diff = (raw64 - centre) / unit
            sq = np.einsum("ij,ij->i", diff, diff)
        radii[start : start + len(sq)] = (np.sqrt(sq) * (1.0 + rel) + 1e-15) * unit
        if progress is not None:
            progress(min(start + chunk_rows, n), n, "reading points")
    return radii


class _Blocks:
    """Blocks of points (global ids in scan order), their raw rows and centred float32 values.

    Blocks are kept in memory while they fit in ``budget`` bytes and re-read
    from the source otherwise.
    """

    def __init__(self, x, backend, order, block_size, centre, unit, budget) -> None:
        self.x, self.backend, self.centre, self.unit = x, backend, centre, unit
        self.ids = [order[s : s + block_size] for s in range(0, len(order), block_size)]
        self.budget, self.used, self.cache = budget, 0, {}

    def get(self, b: int):
        if b in self.cache:
            return self.cache[b]
        raw = self.backend.asarray(take(self.x, self.ids[b]))
        values = self.backend.block_values(raw, self.centre, self.unit)
        entry = (raw, values, self.backend.block_norms(values))
        if is_torch(raw):
            size = values.numel() * values.element_size() + raw.numel() * raw.element_size()
        else:
            size = values.nbytes + raw.nbytes
        if self.used + size <= self.budget:
            self.cache[b] = entry
            self.used += size
        return entry


def _scan_pair(blocks: _Blocks, best: _Best, a: int, b: int, rows_kept: int, cols_kept: int, tol: float) -> tuple[int, int]:
    """All pairs between the first ``rows_kept`` points of block a and the first ``cols_kept`` of block b.

    Float32 estimates select; candidates within ``tol`` of the best are
    re-computed in float64 and offered to ``best``. Returns (pairs evaluated,
    pairs re-checked).
    """
    backend = blocks.backend
    raw_a, val_a, norm_a = blocks.get(a)
    raw_b, val_b, norm_b = blocks.get(b)
    est = backend.estimate(val_a[:rows_kept], norm_a[:rows_kept], val_b[:cols_kept], norm_b[:cols_kept])
    if a == b:
        backend.mask_not_above_diagonal(est, 0)
        evaluated = rows_kept * (rows_kept - 1) // 2
    else:
        evaluated = rows_kept * cols_kept
    if evaluated == 0:
        return 0, 0
    ids_a, ids_b = blocks.ids[a], blocks.ids[b]
    top, r, c = backend.argmax(est)
    if top + tol < best.d2:
        return evaluated, 0
    rows, cols = np.array([r]), np.array([c])
    best.offer(backend.exact_squared_distances(raw_a, rows, raw_b, cols, blocks.unit), ids_a[rows], ids_b[cols])
    rows, cols = backend.at_least(est, best.d2 if backend.exact else _lower_float32(best.d2 - tol))
    best.offer(backend.exact_squared_distances(raw_a, rows, raw_b, cols, blocks.unit), ids_a[rows], ids_b[cols])
    return evaluated, len(rows) + 1


def max_pairwise_distance(
    points,
    *,
    scale: float = 1.0,
    method: str = "pruned",
    device: str = "cpu",
    block_size: int | None = None,
    chunk_rows: int | None = None,
    memory_budget: int | None = None,
    integer: bool | None = None,
    exclude=None,
    progress: ProgressCallback | None = None,
) -> FarthestPair:
    """Technique 1: the exact largest Euclidean distance between two of the points.

    sigma_max = max_{i<j} ||x_i - x_j||_2 over the rows of ``points`` (N, D)
    (any real dtype; higher-rank arrays are flattened per point), times
    ``scale`` (e.g. 1/255 for uint8 pixels).

    ``method``: ``pruned`` (skips pairs the triangle inequality rules out) or
    ``blocked`` (every pair). ``device``: ``cpu`` (NumPy), ``cuda`` (torch) or
    ``auto`` (:func:`ncsn_tune.devices.resolve_device`; a GPU only for large sets). On torch, uint8 points (8-bit
    pixels) take the exact integer path (:class:`~.distance_backends.IntegerBackend`: int8 products, integer sums,
    no rounding at all) unless ``integer`` is False. ``exclude``: indices of points left out (the pair returned is in the
    original numbering). ``progress(done, total, what)`` is called as the source is read and after each row of blocks.
    """
    t0 = time.perf_counter()
    if method not in ("pruned", "blocked"):
        raise DataError(f"unknown method {method!r}; use pruned or blocked")
    if not (isinstance(scale, (int, float, np.floating)) and math.isfinite(scale) and scale > 0):
        raise DataError(f"scale must be a positive finite number, got {scale!r}")
    x = as_point_matrix(points)
    n, dim = (int(s) for s in x.shape)
    if device == "auto" and is_torch(x):
        device = str(x.device)
    backend = make_backend(device, num_points=n, dtype=x.dtype, integer=integer)
    total = n * (n - 1) // 2
    label = f"{method} ({backend.name})"
    on_cpu = backend.on_cpu  # NumPy, or torch on the CPU
    if block_size is None:  # measured: 1024 on 2 CPU cores, larger products keep a GPU busy (int8 ones more so)
        block_size = 1024 if on_cpu else 8192 if backend.exact else 4096
    if chunk_rows is None:  # ~3 MB of float32 per chunk stays in a CPU's cache; sources that decode (image folders) read more
        chunk_rows = max(1, ((3 << 20) if on_cpu else (256 << 20)) // (4 * dim), getattr(x, "preferred_chunk_rows", 1))
    if block_size < 1 or chunk_rows < 1:
        raise DataError(f"block_size and chunk_rows must be at least 1, got {block_size} and {chunk_rows}")
    with backend.exact_float32():
        centre = sample_centre(x)
        radii = _radii(x, centre, backend, chunk_rows, progress)
        if n == 1:
            return FarthestPair(0.0, (0, 0), 1, dim, 0, 0, 0, label, time.perf_counter() - t0)
        largest = float(radii.max())
        if backend.exact:  # integer arithmetic: distances in the data's own units, no rounding to allow for
            unit, tol = 1.0, 0.0
        else:
            unit = power_of_two_unit(largest)
            tol = float32_error_bound(dim, (largest / unit) ** 2)
        pruned = method == "pruned"
        order = np.argsort(-radii, kind="stable") if pruned else np.arange(n)
        if exclude is not None and len(exclude):
            order = order[~np.isin(order, np.asarray(exclude, dtype=np.int64))]
            kept = len(order)
            total = kept * (kept - 1) // 2
            if kept < 2:
                return FarthestPair(0.0, (0, 0), kept, dim, 0, 0, 0, label, time.perf_counter() - t0)
        bound = radii[order] / unit  # radii (rounded up) in units, in scan order
        budget = backend.block_cache_budget() if memory_budget is None else memory_budget
        blocks = _Blocks(x, backend, order, block_size, centre, unit, budget)
        firsts = [bound[k * block_size] for k in range(len(blocks.ids))]
        best = _Best()
        evaluated = rechecked = 0
        for a in range(len(blocks.ids)):
            for b in range(a, len(blocks.ids)):
                rows_kept, cols_kept = len(blocks.ids[a]), len(blocks.ids[b])
                if pruned and best.d2 > 0:
                    lb = math.sqrt(best.d2) * (1.0 - 1e-12)
                    if firsts[a] + firsts[b] < lb:
                        break  # later blocks have smaller radii still
                    seg_a = bound[a * block_size : a * block_size + rows_kept]
                    seg_b = bound[b * block_size : b * block_size + cols_kept]
                    rows_kept = int(np.searchsorted(-seg_a, -(lb - firsts[b]), side="right"))
                    cols_kept = int(np.searchsorted(-seg_b, -(lb - firsts[a]), side="right"))
                e, r = _scan_pair(blocks, best, a, b, rows_kept, cols_kept, tol)
                evaluated += e
                rechecked += r
            if progress is not None:
                progress(a + 1, len(blocks.ids), "blocks of pairs")
            if pruned and best.d2 > 0 and a + 1 < len(blocks.ids) and firsts[a + 1] + firsts[0] < math.sqrt(best.d2) * (1.0 - 1e-12):
                if progress is not None:
                    progress(len(blocks.ids), len(blocks.ids), "blocks of pairs")
                break  # no later point can reach the best pair even with the outermost one
        backend.synchronize()
    distance = math.sqrt(best.d2) * unit * scale
    return FarthestPair(distance, best.pair, n, dim, evaluated, total, rechecked, label, time.perf_counter() - t0)


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


@dataclass(frozen=True)
class OutlierDrop:
    """sigma_max with the ``k`` farthest outliers left out: ``distance`` (exact for what is left), the fraction it is below the
    full set's, and the points left out (in the order they were taken)."""

    k: int
    distance: float
    drop: float
    removed: tuple[int, ...]
    pair: tuple[int, int]

    def to_dict(self) -> dict:
        return {**asdict(self), "removed": list(self.removed), "pair": list(self.pair)}


def diameter_without_outliers(points, ks=(1, 10, 100), *, scale: float = 1.0, method: str = "pruned", device: str = "cpu",
                              full: FarthestPair | None = None, progress: ProgressCallback | None = None) -> list[OutlierDrop]:
    """How much sigma_max (Technique 1) drops when the k farthest outliers are left out, for each k in ``ks``.

    Greedy and exact at every step: the farthest pair of what is left is found exactly (:func:`max_pairwise_distance`),
    and of its two points the one farther from the data's centre is taken out (the outlier of the two); after k steps the
    exact diameter of the rest is reported. A set whose diameter rests on a few stray images drops a lot; one whose
    extremes are many drops little. ``full``: the whole set's result, if computed already."""
    x = as_point_matrix(points)
    n = int(x.shape[0])
    wanted = sorted({int(k) for k in ks if 0 < int(k) < n - 1})
    if not wanted:
        return []
    full = full or max_pairwise_distance(x, scale=scale, method=method, device=device)
    centre = sample_centre(x)
    removed: list[int] = []
    current, out = full, []
    for step in range(1, wanted[-1] + 1):
        i, j = current.pair
        rows = as_float64(take(x, np.array([i, j], dtype=np.int64))) - centre
        removed.append(i if float(rows[0] @ rows[0]) >= float(rows[1] @ rows[1]) else j)
        current = max_pairwise_distance(x, scale=scale, method=method, device=device, exclude=removed)
        if step in wanted:
            out.append(OutlierDrop(step, current.distance, 1.0 - current.distance / full.distance, tuple(removed), current.pair))
        if progress is not None:
            progress(step, wanted[-1], "outliers left out")
    return out
