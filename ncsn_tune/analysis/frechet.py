"""The Frechet distance between two Gaussians, the quantity FID reports.

    d**2 = ||mu_1 - mu_2||**2 + Tr(S_1 + S_2 - 2 (S_1 S_2)**(1/2)).

FID applies it to the statistics of Inception-v3 features of two image sets
(the network is in ``ncsn_tune.model.inception``, the FID in ``ncsn_tune.model.fid``).
"""

from __future__ import annotations

import numpy as np


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of feature rows."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)**(1/2)) for covariance matrices S1, S2 (symmetric positive semi-definite).

    S1 S2 has the eigenvalues of the symmetric PSD matrix S1**(1/2) S2 S1**(1/2), so the trace is
    the sum of the square roots of that matrix's eigenvalues: two symmetric eigendecompositions,
    real and stable where a general matrix square root of S1 S2 is not (singular covariances,
    fewer images than feature dimensions). Eigenvalues below the round-off level of the largest
    (dimension x machine epsilon x the largest) are taken as 0: the square root would otherwise
    turn round-off of size 1e-16 into terms of size 1e-8 in every null direction.
    """
    def psd_eigenvalues(matrix):
        w, v = np.linalg.eigh((matrix + matrix.T) / 2)
        floor = matrix.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), np.finfo(np.float64).tiny)
        return np.where(w > floor, w, 0.0), v

    w, v = psd_eigenvalues(sigma1)
    root1 = (v * np.sqrt(w)) @ v.T
    m, _ = psd_eigenvalues(root1 @ sigma2 @ root1)
    return float(np.sqrt(m).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)**(1/2)), the trace term by :func:`trace_sqrt_product`."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64)), np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError("means and covariances must have matching shapes")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
