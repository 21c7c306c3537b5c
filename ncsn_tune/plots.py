"""Figures: each function takes results (numbers, dicts) and returns a matplotlib figure."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_sampling_diagnostics(summary: dict, dim: int):
    """Image norm and sigma * ||score|| / sqrt(D) against the noise scale, for one sampling run."""
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.8), constrained_layout=True)
    sigmas = summary["sigmas"]
    axes[0].loglog(sigmas, summary["image_norm"], marker=".", lw=1)
    axes[0].set_xlabel(r"noise scale $\sigma_i$")
    axes[0].set_ylabel(r"mean $\|x\|_2$")
    axes[0].invert_xaxis()
    axes[1].semilogx(sigmas, summary["score_norm_times_sigma_over_sqrt_dim"], marker=".", lw=1)
    axes[1].axhline(1.0, color="0.5", ls="--", lw=0.8, label=r"$\sigma\|s\| = \sqrt{D}$")
    axes[1].set_xlabel(r"noise scale $\sigma_i$")
    axes[1].set_ylabel(r"$\sigma_i \|s(x,\sigma_i)\| / \sqrt{D}$")
    axes[1].invert_xaxis()
    axes[1].legend(frameon=False, fontsize=8)
    fig.suptitle(f"Annealed Langevin diagnostics (D = {dim}, sampling runs right to left in time)", fontsize=9)
    return fig
