"""FID of samples against the statistics of a reference set (by default the run's training images).

    FID = ||mu_s - mu_r||**2 + Tr(S_s + S_r - 2 (S_s S_r)**(1/2))

over Inception-v3 pool features (:mod:`.inception`) of the samples (s) and the
reference images (r). Reference statistics are stored as ``.npz`` with ``mu``
and ``sigma`` (pytorch-fid's format, so files of either tool can be used by the
other) plus what they were computed from, and reused when that matches.
FID is biased upwards for small sample counts: published CIFAR-10 figures use
50,000 samples against the 50,000 training images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis.frechet import frechet_distance, gaussian_statistics
from ..errors import NcsnTuneError
from ..files import atomic_open


@dataclass
class FeatureStatistics:
    mu: np.ndarray
    sigma: np.ndarray
    num_images: int
    source: str  # what the features were computed from
    weights_sha256: str = ""

    def save(self, path: Path) -> None:
        with atomic_open(path) as f:
            np.savez(f, mu=self.mu, sigma=self.sigma, num_images=self.num_images, source=self.source, weights_sha256=self.weights_sha256)

    @classmethod
    def load(cls, path: Path) -> "FeatureStatistics":
        try:
            with np.load(path, allow_pickle=False) as f:
                mu, sigma = np.asarray(f["mu"], dtype=np.float64), np.asarray(f["sigma"], dtype=np.float64)
                num = int(f["num_images"]) if "num_images" in f else 0
                source = str(f["source"]) if "source" in f else str(path)
                sha = str(f["weights_sha256"]) if "weights_sha256" in f else ""
        except Exception as exc:  # noqa: BLE001  (a truncated, bit-flipped or foreign file: zipfile, zlib, numpy and OS errors)
            raise NcsnTuneError(f"{path} is not a readable statistics file with 'mu' and 'sigma' arrays ({type(exc).__name__}: "
                                f"{exc or 'empty or cut short'})", fields="fid_reference") from None
        if mu.shape != (2048,) or sigma.shape != (2048, 2048) or not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise NcsnTuneError(f"{path}: expected finite Inception statistics, mu of shape (2048,) and sigma (2048, 2048); "
                                f"got {mu.shape} and {sigma.shape}")
        return cls(mu, sigma, num, source, sha)


def feature_statistics(features: np.ndarray, source: str, weights_sha256: str = "") -> FeatureStatistics:
    if len(features) < 2:
        raise NcsnTuneError("FID needs at least 2 images on each side (a covariance of one image is undefined)")
    mu, sigma = gaussian_statistics(features)
    return FeatureStatistics(mu, sigma, len(features), source, weights_sha256)


def fid(samples: FeatureStatistics, reference: FeatureStatistics) -> float:
    """The Frechet distance between the two feature Gaussians."""
    return frechet_distance(samples.mu, samples.sigma, reference.mu, reference.sigma)


def cached_reference(path: Path, source: str, num_images: int, weights_sha256: str) -> FeatureStatistics | None:
    """The statistics stored at ``path`` if they were computed from the same images with the same weights."""
    if not path.is_file():
        return None
    try:
        stats = FeatureStatistics.load(path)
    except NcsnTuneError:
        return None  # a damaged cache is recomputed
    if stats.source == source and stats.num_images == num_images and stats.weights_sha256 == weights_sha256:
        return stats
    return None


def bootstrap_fid(features, reference: FeatureStatistics, num: int = 100, seed: int = 0, device=None) -> np.ndarray:
    """FIDs of ``num`` resamples of the sample ``features`` (N, 2048), drawn with replacement, against ``reference``:
    their spread is the sampling noise of the FID of N samples (the reference held fixed).

    For N <= 2048 each uses the N x N Gram form of the trace term: with A the resample's centred features and S_r the
    reference covariance, S_s = A^T A / (N - 1) and Tr((S_s S_r)**(1/2)) = sum of sqrt(eigenvalues of A S_r A^T / (N - 1))
    (S_r**(1/2) S_s S_r**(1/2) and A S_r A^T / (N - 1) share their non-zero eigenvalues), so one N x N symmetric
    eigenproblem per resample; in float64 on ``device`` (default: a GPU when there is one)."""
    import torch

    if num < 1:
        raise NcsnTuneError(f"the number of bootstrap resamples must be at least 1, got {num}", fields="bootstrap")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    f = torch.as_tensor(np.asarray(features, dtype=np.float64), device=device)
    n = f.shape[0]
    if n < 2:
        raise NcsnTuneError("FID needs at least 2 images on each side (a covariance of one image is undefined)")
    mu_r = torch.as_tensor(reference.mu, device=device)
    sigma_r = torch.as_tensor(reference.sigma, device=device)
    trace_r = torch.trace(sigma_r)
    generator = torch.Generator(device).manual_seed(seed)
    out = np.empty(num)
    for k in range(num):
        pick = f[torch.randint(0, n, (n,), device=device, generator=generator)]
        mu = pick.mean(dim=0)
        a = pick - mu
        if n <= f.shape[1]:
            gram = (a @ sigma_r @ a.T) / (n - 1)
            eig = torch.linalg.eigvalsh((gram + gram.T) / 2)
            floor = n * torch.finfo(torch.float64).eps * eig.abs().max()  # round-off, as frechet.trace_sqrt_product drops it
            trace_sqrt = torch.where(eig > floor, eig, torch.zeros_like(eig)).sqrt().sum()
            trace_s = (a * a).sum() / (n - 1)
            out[k] = float((mu - mu_r) @ (mu - mu_r) + trace_s + trace_r - 2 * trace_sqrt)
        else:
            stats = FeatureStatistics(*(v.cpu().numpy() for v in (mu, a.T @ a / (n - 1))), n, "resample")
            out[k] = fid(stats, reference)
    return out
