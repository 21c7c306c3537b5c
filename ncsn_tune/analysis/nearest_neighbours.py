"""Exact nearest neighbours of a few query points among many (memorisation checks of samples).

The same machinery as Technique 1's exact search: float32 matrix products of
centred points select every candidate that could be nearest within a rigorous
rounding-error bound, and the candidates are re-computed in float64 as
sum((q - x_j)**2). Ties go to the smaller index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from ._rows import (
    as_point_matrix,
    float32_error_bound,
    power_of_two_unit,
    sample_centre,
    take,
)
from .distance_backends import NumpyBackend


@dataclass(frozen=True)
class Neighbours:
    """For each query: the index of its nearest point and the distance (times ``scale``)."""

    indices: np.ndarray
    distances: np.ndarray
    pairs_rechecked: int


def nearest_neighbours(queries, points, *, scale: float = 1.0, block_size: int = 4096, progress=None) -> Neighbours:
    """Exact nearest point (Euclidean) of every query; ``queries`` (Q, D) and ``points`` (N, D) of the same D."""
    q = np.asarray(as_point_matrix(queries))
    x = as_point_matrix(points)
    if q.shape[1] != x.shape[1]:
        raise DataError(f"queries have D = {q.shape[1]} but the points have D = {x.shape[1]}")
    if not np.isfinite(np.asarray(q, dtype=np.float64)).all():
        raise DataError("a query holds a NaN or infinite value")
    backend = NumpyBackend()
    n, dim = x.shape
    centre = sample_centre(x)
    blocks = [(s, min(s + block_size, n)) for s in range(0, n, block_size)]
    largest = float(np.abs(np.asarray(q, dtype=np.float64) - centre).max())
    for s, e in blocks:  # one pass for the scale of the coordinates
        largest = max(largest, float(np.abs(np.asarray(x[s:e], dtype=np.float64) - centre).max()))
    unit = power_of_two_unit(largest)
    qv = backend.scaled_difference(q, centre, unit)
    qn = backend.squared_norms(qv)
    radius2 = float(backend.squared_norms64(qv).max())
    best_est = np.full(len(q), np.inf)
    pending = []
    for b, (s, e) in enumerate(blocks):
        xv = backend.scaled_difference(x[s:e], centre, unit)
        radius2 = max(radius2, float(backend.squared_norms64(xv).max()))
        est = backend.estimate(qv, qn, xv, backend.squared_norms(xv))
        best_est = np.minimum(best_est, est.min(axis=1))
        pending.append((s, est))
        if progress is not None:
            progress(b + 1, len(blocks), "nearest neighbours")
    tol = float32_error_bound(dim, radius2 * 4)  # norms of differences are bounded by 2R
    rechecked = 0
    indices = np.zeros(len(q), dtype=np.int64)
    d2 = np.full(len(q), np.inf)
    rows_all, cols_all = [], []
    # A point can be nearest only if est - tol <= min(est) + tol; the extra tol covers rounding the threshold to float32.
    threshold = (best_est + 3 * tol).astype(np.float32)[:, None]
    for s, est in pending:
        r, c = np.nonzero(est <= threshold)
        rows_all.append(r)
        cols_all.append(c + s)
    rows, cols = np.concatenate(rows_all), np.concatenate(cols_all)
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    for start in range(0, len(rows), 512):
        r, c = rows[start : start + 512], cols[start : start + 512]
        diff = (np.asarray(q[r], dtype=np.float64) - np.asarray(take(x, c), dtype=np.float64)) / unit
        exact = np.einsum("ij,ij->i", diff, diff)
        for k in range(len(r)):
            if exact[k] < d2[r[k]]:
                d2[r[k]], indices[r[k]] = exact[k], c[k]
        rechecked += len(r)
    return Neighbours(indices, np.sqrt(d2) * unit * scale, rechecked)
