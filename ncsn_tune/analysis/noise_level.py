"""Whether a sampling chain is at the noise level the model expects, read from its per-scale diagnostics.

A chain x = x_0 + n whose noise n has standard deviation s per coordinate, scored by a model that has learnt scale
sigma, gets a score of norm about s sqrt(D) / sigma**2. So the quantity the sampler's diagnostics record,
sigma ||s(x, sigma)|| / sqrt(D), estimates s / sigma: 1 when the chain holds exactly the noise the model expects.

Two things move it away from 1 without anything being wrong, and :func:`exact_score_ratios` predicts both from the
loop's own numbers (NCSNv2's annealed Langevin dynamics with the exact score of a single data point, Proposition 3's
setting, each scale starting where the last one ended):

- the start: the sampler starts from uniform noise, which lies nearer the data than sigma_max (Technique 1 makes
  sigma_max at least the data's diameter), so the first scales read below 1 while the chain gathers noise;
- the step: eps and M set where the chain settles (Technique 4 chooses eps so that it settles at 1 for M steps).

:func:`chain_verdict` judges the measured values against a band around 1 (:data:`NOISE_LEVEL_BAND`), leaves out the
first scales where an exact score's chain is still gathering noise, tells the scales the step explains from those the
model does, and says what each usually means. NumPy only.
"""

from __future__ import annotations

import math

import numpy as np

from .step_size import optimal_step_size

#: sigma ||s|| / sqrt(D) inside this band: the chain is at the noise level the model expects (s^2/sigma^2 from 0.64 to 1.56).
NOISE_LEVEL_BAND = (0.8, 1.25)
#: From this sigma up the image norm reads the noise too: pixels in [0, 1] (or [-1, 1]) contribute at most sqrt(D) to
#: ||x||, so s lies between sqrt(max(||x||^2 / D - 1, 0)) and ||x|| / sqrt(D), a band narrow beside sigma.
NORM_READABLE_SIGMA = 3.0
#: A final mean image norm above this many sqrt(D): far beyond any image in the pixel range (the chain diverged).
DIVERGED_NORM = 3.0


def exact_score_ratios(sigmas, steps_per_scale: int, step_size: float, start_ratio: float = 0.0,
                       read_after: int | None = None) -> np.ndarray:
    """s / sigma_i at every scale of annealed Langevin dynamics with the exact score of one data point, read after
    ``read_after`` of the scale's M updates: by default M - 1, where the sampler's callback reads the score (the last
    network call of the scale, before its update); M is Proposition 3's point, the end of the scale.

    With a = eps / sigma_L**2 (alpha_i / sigma_i**2, the same at every scale) and r = s**2 / sigma_i**2::

        each step:          r <- (1 - a)**2 r + 2 a
        between scales:     r <- r sigma_{i-1}**2 / sigma_i**2

    ``start_ratio``: the start's noise over sigma_1 (0: a start at the data, the longest time to gather noise).
    """
    sigmas = np.asarray(sigmas, dtype=np.float64)
    a = step_size / sigmas[-1] ** 2
    read_after = steps_per_scale - 1 if read_after is None else read_after
    r = start_ratio**2
    out = np.empty(len(sigmas))
    for i in range(len(sigmas)):
        if i:
            r *= (sigmas[i - 1] / sigmas[i]) ** 2
        for _ in range(read_after):
            r = (1.0 - a) ** 2 * r + 2.0 * a
        out[i] = math.sqrt(r)
        for _ in range(steps_per_scale - read_after):
            r = (1.0 - a) ** 2 * r + 2.0 * a
    return out


def chain_verdict(sigmas, ratio, image_norm, dim: int, *, steps_per_scale: int | None = None, step_size: float | None = None,
                  band: tuple[float, float] = NOISE_LEVEL_BAND) -> dict:
    """Whether a chain stayed at the noise level the model expects (``ratio`` = sigma ||s|| / sqrt(D) per scale, largest
    scale first, inside ``band``), where it went off, and what that usually means.

    With ``steps_per_scale`` and ``step_size`` the exact score's values (:func:`exact_score_ratios`) separate what the
    loop's own numbers explain: the first scales, where such a chain still reads below the band (not judged, unless
    the chain reads above it there: then the start holds more noise than sigma_max); and scales where the exact score
    is off the band too and the model reads what it does (the step is off). What is left is the model's:

    - below the band at the small scales: its score is weaker than the noise the chain holds (undertrained there), so
      it cannot pull the chain back and the noise of larger scales stays (the final images show it);
    - above the band at the small scales: its score is stronger than the noise would give, or the chain lags behind
      the annealing (more steps per scale help);
    - above the band at the first scales: the start lies farther from the data than sigma_max (too small for the data).
    """
    sigmas, ratio, image_norm = (np.asarray(v, dtype=np.float64) for v in (sigmas, ratio, image_norm))
    lo, hi = band
    n = len(ratio)
    inside = lambda v: (v >= lo) & (v <= hi)  # noqa: E731
    off = ~inside(ratio)
    expected = warm = None
    start = np.zeros(n, dtype=bool)
    by_step = np.zeros(n, dtype=bool)
    if steps_per_scale is not None and step_size is not None:
        expected = exact_score_ratios(sigmas, steps_per_scale, step_size)
        warm = int(np.argmax(expected >= lo)) if (expected >= lo).any() else n
        start[:warm] = True
        by_step = off & ~start & ~inside(expected) & inside(ratio / np.maximum(expected, 1e-12))
    start_high = off & (ratio > hi) & (start | (np.arange(n) == 0))
    judged = off & ~(start & (ratio <= hi)) & ~by_step
    noise_low, noise_high = norm_noise_bounds(sigmas, image_norm, dim)
    readable = (sigmas >= NORM_READABLE_SIGMA) & ~start
    too_noisy = readable & (noise_low > hi)  # the images hold more noise than the level, whatever the network reads
    too_clean = readable & (noise_high < lo)
    diverged = not np.isfinite(image_norm[-1]) or image_norm[-1] > DIVERGED_NORM * math.sqrt(dim)
    by_norm = (too_noisy | too_clean) & ~judged & ~by_step
    never_warm = expected is not None and warm == n  # the step is too small for any chain to gather the level's noise
    out = {"band": list(band), "within": bool(not (judged.any() or by_step.any() or by_norm.any() or diverged or never_warm)),
           "num_scales": n,
           "scales_off": int((judged | by_step | by_norm).sum()), "scales_not_judged": int((start & ~start_high).sum()),
           "exact_score": None if expected is None else expected.tolist(), "diverged": bool(diverged),
           "noise_from_image_norm": [None if not r else float(v) for r, v in zip(readable, noise_low)]}
    first_scales = "scale" if out["scales_not_judged"] == 1 else f"{out['scales_not_judged']} scales"
    spared = (f", after the first {first_scales}, where the chain is still gathering noise from its uniform start "
              f"(an exact score's chain reads {expected[0]:.2f} at scale 0)") if out["scales_not_judged"] else ""
    if out["within"]:
        judged_values = ratio[~start] if (~start).any() else ratio
        out.update(causes=[], message=(f"sigma ||s|| / sqrt(D) stayed within [{lo:g}, {hi:g}] (from {judged_values.min():.2f} to "
                                       f"{judged_values.max():.2f}){spared}: the chain is at the noise level the model expects"))
        return out
    counted = judged | by_step | by_norm
    first = int(np.flatnonzero(counted)[0]) if counted.any() else n - 1
    scored = np.where(judged | by_step, np.abs(np.log(np.maximum(ratio, 1e-12))), -1.0)
    worst = int(np.argmax(scored))
    small = np.arange(n) >= n - max(1, n // 4)  # the smallest quarter of the scales, where the images are made
    model_low, model_high = judged & (ratio < lo) & ~start, judged & (ratio > hi) & ~start_high
    causes = []
    if start_high.any():
        causes.append("at the first scales the chain holds more noise than sigma_max: its uniform start lies farther from the data "
                      "than sigma_max, which is too small for the data (Technique 1 measures it: ncsn-tune sigmas)")
    if by_step.any():
        k = int(np.flatnonzero(by_step)[0])
        ratio_of_scales = float(sigmas[0] / sigmas[1]) if n > 1 else 1.0
        optimum = optimal_step_size(ratio_of_scales, steps_per_scale, float(sigmas[-1])).step_size if n > 1 else float("nan")
        causes.append(f"the loop's own numbers: with eps = {step_size:.3g} ({step_size / optimum:.3g} times Technique 4's optimum "
                      f"{optimum:.3g} for M = {steps_per_scale} and this schedule) an exact score's chain reads {expected[k]:.2f} at "
                      f"scale {k} where the network is called last (before the scale's last update), as this one does "
                      f"({ratio[k]:.2f}) at {int(by_step.sum())} scales; the step (or M) keeps the chain off the noise level "
                      "(ncsn-tune step-size --checkpoint measures eps on this model)")
    mostly_small = lambda scales: (scales & small).sum() > 0.5 * small.sum() or (scales & small).sum() > 0.5 * scales.sum()  # noqa: E731
    if mostly_small(model_low):
        causes.append("the model is undertrained at the small scales: its score is weaker than the noise the chain holds, so it "
                      "cannot pull the chain back and the noise of the larger scales stays; train longer (ncsn-tune step-size "
                      "--checkpoint tells whether a smaller eps helps meanwhile)")
    if mostly_small(model_high):
        causes.append("at the small scales the model's score is stronger than the noise the chain holds would give, or the chain "
                      "lags behind the annealing: try more steps per scale (M), or a larger eps")
    if too_noisy.any():
        k = int(np.flatnonzero(too_noisy)[np.argmax(noise_low[too_noisy])])
        causes.append(f"the images hold more noise than the level at {int(too_noisy.sum())} scales: at sigma {sigmas[k]:.3g} the mean "
                      f"||x|| / sqrt(D) = {image_norm[k] / math.sqrt(dim):.3g} means noise of at least {noise_low[k]:.2f} sigma, while "
                      f"sigma ||s|| / sqrt(D) reads {ratio[k]:.2f}: a network reads inputs noisier than it was trained on as about 1, "
                      "so only the norms show it; the chain cannot keep up with the annealing (a larger eps or M: ncsn-tune "
                      "step-size shows the whole chain's s^2/sigma^2)")
    if too_clean.any():
        k = int(np.flatnonzero(too_clean)[0])
        causes.append(f"the images hold less noise than the level at {int(too_clean.sum())} scales (at sigma {sigmas[k]:.3g} the mean "
                      f"||x|| / sqrt(D) = {image_norm[k] / math.sqrt(dim):.3g} allows at most {noise_high[k]:.2f} sigma)")
    if never_warm:
        causes.append(f"with eps = {step_size:.3g} and M = {steps_per_scale} even an exact score's chain never reaches the noise level "
                      f"of any scale (it reads {expected.max():.2g} at most): the chain hardly moves from its start, whatever the "
                      "network reads (ncsn-tune step-size gives Technique 4's eps)")
    if diverged:
        causes.append(f"the samples end with a mean norm of {image_norm[-1]:,.0f}, {image_norm[-1] / math.sqrt(dim):,.0f} times the "
                      "largest an image of pixels in [0, 1] can have: noise is left in them (the chain diverged or never settled)")
    if not causes:
        causes.append(f"the model has not learnt the scales from sigma {sigmas[first]:.3g} on well, or the step is far from right "
                      "for it (ncsn-tune step-size --checkpoint measures it)")
    where = "below" if ratio[worst] < lo else "above"
    if (judged | by_step).any():
        said = (f"sigma ||s|| / sqrt(D) is {ratio[worst]:.2f} at scale {worst} (sigma {sigmas[worst]:.3g}), {where} [{lo:g}, {hi:g}]"
                f"{spared}")
    elif never_warm:
        said = "the step is too small for the chain to reach the noise level of any scale"
    elif by_norm.any():
        said = (f"sigma ||s|| / sqrt(D) stays within [{lo:g}, {hi:g}], but the image norms say the chain holds "
                f"{'more' if too_noisy.any() else 'less'} noise than the level")
    else:
        said = f"sigma ||s|| / sqrt(D) stays within [{lo:g}, {hi:g}], but the samples end far outside the pixel range"
    scales = f"at {out['scales_off']} of {n} scales, from scale {first} (sigma {sigmas[first]:.3g}) on" if counted.any() else "at the end"
    out.update(first_off=first, first_off_sigma=float(sigmas[first]), worst=worst, worst_sigma=float(sigmas[worst]),
               worst_value=float(ratio[worst]), causes=causes,
               message=f"the chain is off the noise level the model expects {scales}: {said}")
    return out


def norm_noise_bounds(sigmas, image_norm, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on s / sigma from the mean image norm at each scale, for images whose pixels are at most 1 in size: the
    image contributes between 0 and sqrt(D) to ||x||, so s lies between sqrt(max(||x||^2 / D - 1, 0)) and ||x|| / sqrt(D)
    (tight where sigma is well above 1)."""
    per_dim = np.asarray(image_norm, dtype=np.float64) / math.sqrt(dim)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.sqrt(np.maximum(per_dim**2 - 1.0, 0.0)) / sigmas, per_dim / sigmas
