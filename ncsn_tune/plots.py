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
    verdict = summary.get("verdict")
    if verdict:
        lo, hi = verdict["band"]
        axes[1].axhspan(lo, hi, color="C2", alpha=0.12, lw=0, label="the noise level the model expects")
        if verdict.get("exact_score"):
            axes[1].semilogx(sigmas, verdict["exact_score"], color="0.4", ls=":", lw=1, label="an exact score's chain (same eps, M)")
        axes[1].set_title(("within the band at every judged scale" if verdict["within"] else
                           f"off at {verdict['scales_off']} of {verdict['num_scales']} scales, from sigma {verdict['first_off_sigma']:.3g}"),
                          fontsize=8, color="C2" if verdict["within"] else "C3")
    axes[1].set_xlabel(r"noise scale $\sigma_i$")
    axes[1].set_ylabel(r"$\sigma_i \|s(x,\sigma_i)\| / \sqrt{D}$")
    axes[1].invert_xaxis()
    axes[1].legend(frameon=False, fontsize=8)
    fig.suptitle(f"Annealed Langevin diagnostics (D = {dim}, sampling runs right to left in time)", fontsize=9)
    return fig


def plot_measured_step(result):
    """Technique 4 on a trained model (:class:`~ncsn_tune.model.empirical_step.EmpiricalStep`): s^2/sigma^2 measured at
    every scale for each eps tried (solid), what an exact score's chain reads with the same eps (dotted), the band
    around 1 and the scales judged."""
    from .analysis.noise_level import NOISE_LEVEL_BAND

    fig, ax = plt.subplots(figsize=(6.4, 3.4), constrained_layout=True)
    sigmas = result.sigmas
    lo, hi = NOISE_LEVEL_BAND
    ax.axhspan(lo**2, hi**2, color="C2", alpha=0.12, lw=0, label="the noise level the model expects")
    ax.axhline(1.0, color="0.5", ls="--", lw=0.8)
    best = result.best_step_size
    for k, (eps, measured, exact) in enumerate(zip(result.step_sizes, result.ratios, result.exact_score)):
        label = f"eps = {eps:.3g} ({eps / result.theoretical.step_size:g} x Prop. 3)" + (", closest" if eps == best else "")
        ax.loglog(sigmas, measured, color=f"C{k}", lw=2.0 if eps == best else 1.0, label=label)
        ax.loglog(sigmas, exact, color=f"C{k}", lw=0.8, ls=":")
    ax.axvline(sigmas[result.judged_from], color="0.6", lw=0.6)
    ax.invert_xaxis()
    ax.set_xlabel(r"noise scale $\sigma_i$ (judged from the grey line on; dotted: an exact score's chain)")
    ax.set_ylabel(r"$s^2/\sigma_i^2$ measured, $(\sigma_i\|s\|/\sqrt{D})^2$")
    ax.set_title(f"Technique 4 on the trained model: M = {result.steps_per_scale}, {result.num_chains} chains, seed {result.seed} "
                 f"(an empirical check, {result.seconds:.0f} s)", fontsize=8)
    ax.legend(frameon=False, fontsize=7)
    _style(ax)
    return fig


def _style(ax):
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.tick_params(labelsize=8)


def plot_step_size(ratio: float, sigma_min: float, steps: list[int], mark: float | None = None, title: str | None = None):
    """Proposition 3's s^2/sigma^2 against eps (log axis) for several M, each optimum marked; ``ratio`` is the
    schedule's ratio of adjacent scales. The plotted optima are in ``fig.optima``."""
    import numpy as np

    from .analysis.step_size import optimal_step_size, variance_ratio

    fig, ax = plt.subplots(figsize=(3.5, 2.7), constrained_layout=True)
    eps = np.logspace(math.log10(sigma_min**2) - 4, math.log10(sigma_min**2 * 0.999), 800)
    optima = []
    for m in steps:
        best = optimal_step_size(ratio, m, sigma_min)
        optima.append(best)
        (line,) = ax.semilogx(eps, variance_ratio(eps, ratio, m, sigma_min), lw=1.2, label=f"M = {m}")
        ax.plot(best.step_size, best.variance_ratio, "o", ms=4, color=line.get_color())
    if mark is not None:
        ax.axvline(mark, color="0.3", ls="--", lw=0.8, label=f"given eps = {mark:.3g}")
    top = max(o.variance_ratio for o in optima)
    ax.set_ylim(0.98, max(1.3, top * 1.15))
    ax.axhline(1.0, color="0.6", lw=0.6)
    ax.set_xlabel(r"step size $\epsilon$")
    ax.set_ylabel(r"$s^2/\sigma^2$ (Proposition 3)")
    ax.set_title(title or rf"ratio {ratio:.5g}, $\sigma_{{\min}}$ = {sigma_min:g}", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    _style(ax)
    fig.optima = optima  # the plotted optima, for callers and tests
    return fig


def plot_sampler_step(sampler, schedule, steps: list[int], mark: float | None = None):
    """For another tool's loop (:mod:`ncsn_tune.analysis.samplers`): s^2/sigma^2 at the last level against snr for
    several M, each optimum marked (in ``fig.optima``)."""
    import numpy as np

    from .analysis.samplers import SNR_RANGE, chain_variance, sampler_step

    fig, ax = plt.subplots(figsize=(3.5, 2.7), constrained_layout=True)
    grid = np.logspace(math.log10(SNR_RANGE[0]) + 1, math.log10(SNR_RANGE[1]), 200)
    optima = []
    for m in steps:
        best = sampler_step(sampler, schedule.sigma_max, schedule.sigma_min, schedule.num_scales, m)
        optima.append(best)
        with np.errstate(over="ignore", invalid="ignore"):
            curve = chain_variance(sampler, schedule.sigma_max, schedule.sigma_min, schedule.num_scales, m, grid).final
        (line,) = ax.semilogx(grid, curve, lw=1.2, label=f"M = {m}")
        if best.snr is not None:
            ax.plot(best.snr, best.variance_ratio, "o", ms=4, color=line.get_color())
    if mark is not None:
        ax.axvline(mark, color="0.3", ls="--", lw=0.8, label=f"given snr = {mark:.3g}")
    low = min(o.variance_ratio for o in optima)
    ax.set_ylim(min(0.99, low - 0.01), low + 0.12)
    ax.axhline(1.0, color="0.6", lw=0.6)
    ax.set_xlabel("snr")
    ax.set_ylabel(r"$s^2/\sigma^2$, last level (the loop's chain)", fontsize=8)
    ax.set_title(f"{sampler.describe()}, N = {schedule.num_scales}", fontsize=7)
    ax.legend(fontsize=7, frameon=False)
    _style(ax)
    fig.optima = optima
    return fig


def plot_schedule(schedules: list, step_sizes: list[float] | None = None, labels: list[str] | None = None):
    """Per schedule (one column each): the noise scales against their index (log axis), the Langevin
    step alpha_i = eps sigma_i^2 / sigma_min^2 with that schedule's own eps (``step_sizes``, one per
    schedule), and the overlap of each pair of adjacent scales."""
    import numpy as np

    from .analysis.noise_schedule import overlap

    labels = labels or [f"L = {s.num_scales}" for s in schedules]
    if step_sizes is not None and len(step_sizes) != len(schedules):
        raise ValueError("give one step size per schedule")
    rows = 3 if step_sizes is not None else 2
    fig, axes = plt.subplots(rows, len(schedules), figsize=(3.4 * len(schedules), 1.6 * rows + 0.6), sharex="col",
                             constrained_layout=True, squeeze=False)
    top = max(overlap(s.ratio, s.dim) for s in schedules)
    low = min(overlap(s.ratio, s.dim) for s in schedules)
    for col, (schedule, label) in enumerate(zip(schedules, labels)):
        sig = schedule.sigmas
        i = np.arange(1, len(sig) + 1)
        ax = axes[0][col]
        ax.semilogy(i, sig, lw=1.4)
        ax.set_ylabel(r"$\sigma_i$")
        ax.set_title(f"{label}: ratio {schedule.ratio:.5f}", fontsize=8)
        row = 1
        if step_sizes is not None:
            ax = axes[1][col]
            ax.semilogy(i, step_sizes[col] * (sig / sig[-1]) ** 2, lw=1.2, color="C1")
            ax.set_ylabel(r"$\alpha_i=\epsilon\sigma_i^2/\sigma_{\min}^2$", fontsize=8)
            ax.set_title(f"eps = {step_sizes[col]:.4g}", fontsize=7)
            row = 2
        ax = axes[row][col]
        pair = overlap(sig[:-1] / sig[1:], schedule.dim)
        ax.plot(i[1:], pair, lw=1.2, color="C2")
        ax.set_ylim(low - 0.05, top + 0.05)
        ax.set_ylabel(r"overlap $C(\sigma_{i-1},\sigma_i)$", fontsize=8)
        ax.text(0.98, 0.1, f"{float(pair.mean()):.3f}", transform=ax.transAxes, ha="right", fontsize=8)
        ax.set_xlabel("scale index i")
        for a in axes[:, col]:
            _style(a)
    return fig


def plot_overlap(dim: int, gamma: float | None = None, target_overlap: float | None = None):
    """The overlap C against gamma in ``dim`` dimensions, the chosen gamma marked."""
    import numpy as np

    from .analysis.noise_schedule import overlap

    fig, ax = plt.subplots(figsize=(3.5, 2.6), constrained_layout=True)
    top = 1 + 8 * ((gamma - 1) if gamma else 3 / math.sqrt(2 * dim))
    g = np.linspace(1.0, top, 600)
    ax.plot(g, overlap(g, dim), lw=1.3)
    if gamma is not None:
        ax.plot(gamma, overlap(gamma, dim), "o", ms=5, color="C3", label=rf"$\gamma$ = {gamma:.5g}")
        ax.axvline(gamma, color="C3", lw=0.6, ls=":")
    if target_overlap is not None:
        ax.axhline(target_overlap, color="0.5", lw=0.8, ls="--", label=f"C = {target_overlap:g}")
    ax.set_xlabel(r"ratio of adjacent scales $\gamma$")
    ax.set_ylabel(r"overlap $C$")
    ax.set_title(rf"$\Phi(\sqrt{{2D}}(\gamma-1)+3\gamma)-\Phi(\sqrt{{2D}}(\gamma-1)-3\gamma)$, D = {dim}", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    _style(ax)
    return fig


def plot_proposition3(check, sweeps: list | None = None):
    """Measured against predicted s^2/sigma^2 per scale (+- 2 standard errors); with ``sweeps``
    (:class:`~ncsn_tune.analysis.simulation.StepSizeSweep` per M), the measured ratio against eps beside the formula."""
    import numpy as np

    from .analysis.step_size import variance_ratio

    n = 2 if sweeps else 1
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 2.8), constrained_layout=True, squeeze=False)
    ax = axes[0][0]
    i = np.arange(1, len(check.sigmas) + 1)
    ax.plot(i, check.predicted, lw=1.2, color="0.2", label="predicted")
    se = 2 * np.array(check.standard_errors)
    ax.fill_between(i, np.array(check.measured) - se, np.array(check.measured) + se, color="C0", alpha=0.3, lw=0)
    ax.plot(i, check.measured, ".", ms=2.5, color="C0", label="measured (2 s.e. band)")
    ax.set_xlabel("scale index i")
    ax.set_ylabel(r"$s_i^2/\sigma_i^2$")
    ax.set_title(f"{check.mode}: M = {check.steps_per_scale}, eps = {check.step_size:.3g}, D = {check.dim}, {check.num_chains} chains", fontsize=7)
    ax.legend(fontsize=7, frameon=False)
    _style(ax)
    if sweeps:
        ax = axes[0][1]
        for sweep in sweeps:
            eps, best = sweep.step_sizes, sweep.optimum
            grid = np.logspace(np.log10(min(eps)) - 0.2, np.log10(max(eps)) + 0.2, 300)
            (line,) = ax.semilogx(grid, variance_ratio(grid, best.ratio, sweep.steps_per_scale, best.sigma_min), lw=1.0,
                                  label=f"M = {sweep.steps_per_scale}")
            ax.errorbar(eps, sweep.measured, yerr=2 * np.array(sweep.standard_errors), fmt="o", ms=3, color=line.get_color())
        ax.set_xlabel(r"step size $\epsilon$")
        ax.set_ylabel(r"$s^2/\sigma^2$ at the last scale")
        ax.set_title("formula (lines) and measurement (dots)", fontsize=7)
        ax.legend(fontsize=7, frameon=False)
        _style(ax)
    return fig


def plot_gmm(results: list, mixture):
    """The mixture experiment: samples of each run (first two coordinates) and the modes' shares against their weights."""
    import numpy as np

    n = len(results)
    fig, axes = plt.subplots(1, n + 1, figsize=(2.9 * (n + 1), 2.9), constrained_layout=True, squeeze=False)
    c = mixture.centres
    for ax, r in zip(axes[0], results):
        y = r.samples[:, 1] if r.samples.shape[1] > 1 else np.zeros(len(r.samples))
        ax.scatter(r.samples[:, 0], y, s=3, alpha=0.35, lw=0)
        ax.scatter(c[:, 0], c[:, 1] if c.shape[1] > 1 else 0 * c[:, 0], marker="x", color="k", s=30, lw=1)
        ax.set_title(f"{r.label}\n(sigma_max = {r.sigma_max:.3g}, TV = {r.total_variation:.3f})", fontsize=7)
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.set_aspect("equal", adjustable="datalim")
        _style(ax)
    ax = axes[0][n]
    k = np.arange(len(mixture.weights))
    width = 0.8 / (n + 1)
    ax.bar(k - 0.4 + width / 2, mixture.weights, width, color="0.4", label="weights")
    for j, r in enumerate(results):
        ax.bar(k - 0.4 + width * (j + 1.5), r.fractions, width, label=f"sigma_max = {r.sigma_max:.3g}")
    ax.set_xticks(k, [f"mode {m + 1}" for m in k])
    ax.set_ylabel("share of samples")
    ax.legend(fontsize=6, frameon=False)
    _style(ax)
    return fig


def plot_eval(loss_by_scale, sigmas, neighbour_distances=None, held_out: bool = True):
    """DSM loss (held-out, or on training images) against the noise scale; with distances, their histogram beside it."""
    import numpy as np

    n = 2 if neighbour_distances is not None else 1
    fig, axes = plt.subplots(1, n, figsize=(3.5 * n, 2.7), constrained_layout=True, squeeze=False)
    ax = axes[0][0]
    ax.loglog(sigmas, loss_by_scale, ".", ms=3)
    ax.set_xlabel(r"noise scale $\sigma_i$")
    ax.set_ylabel("held-out DSM loss" if held_out else "DSM loss on training images")
    ax.set_title(f"mean {float(np.mean(loss_by_scale)):.2f}", fontsize=8)
    _style(ax)
    if neighbour_distances is not None:
        ax = axes[0][1]
        ax.hist(neighbour_distances, bins=20, color="C2")
        ax.set_xlabel("distance to nearest training image")
        ax.set_ylabel("samples")
        _style(ax)
    return fig


def plot_audit(audit, derived=None):
    """One page for an audited configuration: s^2/sigma^2 against eps for its M with its eps and the optimum, and
    its noise scales beside the schedule Techniques 1-2 give for the data (``derived``)."""
    import numpy as np

    from .analysis.noise_schedule import geometric_sigmas, ratio_for_num_scales
    from .analysis.step_size import optimal_step_size, variance_ratio

    c = audit.config
    fig, axes = plt.subplots(1, 2, figsize=(7.4, 2.9), constrained_layout=True)
    ax = axes[0]
    ratio = ratio_for_num_scales(c.sigma_max, c.sigma_min, c.num_scales)
    langevin = c.sampler is not None and c.sampler.langevin_steps and c.steps_per_scale and c.eps
    if langevin and c.sampler.annealed_langevin:
        best = optimal_step_size(ratio, c.steps_per_scale, c.sigma_min)
        grid = np.logspace(np.log10(min(best.step_size, c.eps)) - 1, np.log10(min(c.sigma_min**2 * 0.999, max(best.step_size, c.eps) * 10)), 400)
        ax.semilogx(grid, variance_ratio(grid, ratio, c.steps_per_scale, c.sigma_min), lw=1.2, color="0.3", label=f"M = {c.steps_per_scale}")
        ax.plot(best.step_size, best.variance_ratio, "o", ms=10, mfc="none", mew=1.5, color="C2", label=f"optimum {best.step_size:.3g}")
        if c.eps < c.sigma_min**2:
            ax.plot(c.eps, variance_ratio(c.eps, ratio, c.steps_per_scale, c.sigma_min), "s", ms=5, color="C3", label=f"config {c.eps:.3g}")
        ax.set_xlabel(r"step size $\epsilon$")
        ax.set_ylabel(r"$s^2/\sigma^2$ (Proposition 3)")
        ax.legend(fontsize=7, frameon=False)
    elif langevin:
        from .analysis.samplers import chain_variance, sampler_step

        best = sampler_step(c.sampler, c.sigma_max, c.sigma_min, c.num_scales, c.steps_per_scale)
        snr = c.given_snr
        grid = np.logspace(np.log10(min(best.snr, snr)) - 0.7, np.log10(min(0.7, max(best.snr, snr) * 5)), 120)
        with np.errstate(over="ignore", invalid="ignore"):
            curve = chain_variance(c.sampler, c.sigma_max, c.sigma_min, c.num_scales, c.steps_per_scale, grid).final
            mine = chain_variance(c.sampler, c.sigma_max, c.sigma_min, c.num_scales, c.steps_per_scale, snr).final[0]
        ax.semilogx(grid, curve, lw=1.2, color="0.3", label=f"M = {c.steps_per_scale}, N = {c.num_scales}")
        ax.plot(best.snr, best.variance_ratio, "o", ms=10, mfc="none", mew=1.5, color="C2", label=f"optimum {best.snr:.3g}")
        ax.plot(snr, mine, "s", ms=5, color="C3", label=f"config {snr:.3g}")
        ax.set_ylim(min(curve.min(), mine) - 0.01, min(max(curve.max(), mine) + 0.01, 2.0))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("snr")
        ax.set_ylabel(r"$s^2/\sigma^2$, last level (the loop's chain)", fontsize=8)
        ax.legend(fontsize=7, frameon=False)
    else:
        ax.text(0.5, 0.5, "no Langevin steps", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("T4: the step size", fontsize=8)
    _style(ax)
    ax = axes[1]
    sig = geometric_sigmas(c.sigma_max, c.sigma_min, c.num_scales)
    ax.semilogy(np.arange(1, len(sig) + 1), sig, lw=1.3, label=f"config: L = {c.num_scales}")
    if derived is not None:
        ax.semilogy(np.arange(1, derived.num_scales + 1), derived.sigmas, lw=1.3, ls="--", label=f"T1-T2: L = {derived.num_scales}")
    if audit.diameter is not None:
        ax.axhline(audit.diameter, color="C3", lw=0.8, ls=":", label=f"diameter {audit.diameter:.3g}")
    ax.set_xlabel("scale index i")
    ax.set_ylabel(r"$\sigma_i$")
    ax.set_title("T1-T2: the noise scales", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    _style(ax)
    fig.suptitle(f"{c.tool}: {c.source}", fontsize=8)
    return fig
