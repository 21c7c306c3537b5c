"""What ncsn_tune recommends for sampling, which criterion each number uses, and the measurement behind it.

Technique 4 rests on a model: the data is one Gaussian point and the score exact. Two criteria read that model:

- **Proposition 3** (:data:`~ncsn_tune.analysis.samplers.PROPOSITION_3`): each scale starts from the previous scale's
  marginal N(0, sigma_{i-1}**2 I) and s**2/sigma**2 after its M steps is the same at every scale. This is the paper's
  Technique 4 and the step ncsn_tune recommends for annealed Langevin dynamics (NCSNv2's loop, and score_sde's
  corrector-only ``ald`` loop): measured best of every step tried.
- **The chain** (:data:`~ncsn_tune.analysis.samplers.CHAIN`): the loop run as it runs, each level starting where the last
  ended, s**2/sigma**2 after the corrector at the last level. For annealed Langevin dynamics it is reported beside
  Proposition 3 as a safety check: where it exceeds :data:`CHAIN_RATIO_LIMIT` the measured chains failed outright. For
  predictor-corrector loops it is the only criterion there is, and its optimum (an snr of 0.073 for score_sde's CIFAR-10
  VE loop at N = 1000) measured worse than score_sde's published snr, which is what ncsn_tune recommends for a Langevin
  corrector; the criterion's optimum is shown beside it.

Neither criterion decides how many levels a sampler runs: Technique 2 sets the *training* levels. ncsn_tune keeps the
sampling levels a tool's configuration has, unless told otherwise.

The measurement (:data:`MEASURED`, ``benchmarks/advice.py``, ``docs/results/advice_h200.log``): one NCSNv2 (ngf 128)
trained 15,000 steps on the 5,085-image CIFAR-10 subset with the schedule Techniques 1 and 2 derive (sigma_max 49.9,
L = 220) and Technique 4's eps for M = 5; 1,000 samples per setting (the same seed), FID against the subset's
1,017 test images, bootstrap sd of 100 resamples about 1. One model and one data set: the numbers say which way the
advice points there, not that it holds everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Where the measurement is logged.
MEASUREMENT = "docs/results/advice_h200.log (benchmarks/advice.py, one H200)"

#: score_sde's snr for its VE CIFAR-10 predictor-corrector sampler (configs/ve/cifar10_ncsnpp_continuous.py:
#: sampling.snr = 0.16), and what measured best for a Langevin corrector here.
PUBLISHED_SNR = 0.16

#: s**2/sigma**2 of annealed Langevin dynamics run through the whole chain above which the measured chains failed
#: (eps x0.25 at M = 5: 1.86, M = 1 at Proposition 3's eps: 2.00, both pure noise, FID 470), while 1.28 (eps x0.5) still
#: gave FID 83.
CHAIN_RATIO_LIMIT = 1.5


@dataclass(frozen=True)
class Measured:
    """One sampling setting of the measurement (its name in the log, what it is): FID with the final denoising step, its
    bootstrap sd, and without it."""

    name: str
    setting: str
    network_calls: int
    fid: float
    sd: float
    fid_without_denoising: float


#: The measurement's numbers (docs/results/advice_h200.log), by setting.
MEASURED = {m.name: m for m in (
    Measured("ald_x1", "ALD, M = 5, L = 220, Proposition 3's eps (6.46e-6)", 1101, 77.13, 1.00, 100.58),
    Measured("ald_x0.25", "ALD, eps x0.25", 1101, 470.09, 0.79, 470.08),
    Measured("ald_x0.5", "ALD, eps x0.5", 1101, 83.17, 1.08, 109.61),
    Measured("ald_chain", "ALD, eps x1.82 (the chain criterion's optimum)", 1101, 81.92, 1.14, 107.07),
    Measured("ald_x2", "ALD, eps x2", 1101, 84.27, 1.13, 109.18),
    Measured("ald_x4", "ALD, eps x4", 1101, 126.01, 1.56, 164.68),
    Measured("ald_M1", "ALD, M = 1, Proposition 3's eps for M = 1", 221, 469.97, 0.74, 469.97),
    Measured("ald_M3", "ALD, M = 3, Proposition 3's eps for M = 3", 661, 77.89, 0.90, 105.53),
    Measured("ald_L110", "ALD, L = 110 sampling levels", 551, 75.75, 0.95, 104.70),
    Measured("ald_L440", "ALD, L = 440 sampling levels", 2201, 77.01, 1.08, 100.34),
    Measured("pc_N220_snr0.0732", "PC, N = 220, snr 0.0732", 440, 85.25, 0.87, 96.70),
    Measured("pc_N220_snr0.16", "PC, N = 220, snr 0.16", 440, 80.51, 1.14, 91.54),
    Measured("pc_N1000_snr0.0732", "PC, N = 1000, snr 0.0732", 2000, 80.36, 1.17, 89.23),
    Measured("pc_N1000_snr0.16", "PC, N = 1000, snr 0.16", 2000, 77.47, 1.11, 92.66),
)}


def _fid(setting: str) -> str:
    m = MEASURED[setting]
    return f"FID {m.fid:.1f}"


def langevin_snr_advice(criterion_snr: float | None, num_scales: int) -> str:
    """Why a Langevin corrector gets :data:`PUBLISHED_SNR` rather than the chain criterion's optimum."""
    measured = (f"measured on CIFAR-10 with score_sde's loop (reverse diffusion + Langevin, M = 1): snr 0.16 gave "
                f"{_fid('pc_N1000_snr0.16')} against {_fid('pc_N1000_snr0.0732')} at the criterion's 0.073 (N = 1000), "
                f"{_fid('pc_N220_snr0.16')} against {_fid('pc_N220_snr0.0732')} (N = 220); sd about 1; {MEASUREMENT}")
    if criterion_snr is None:
        return f"snr {PUBLISHED_SNR:g}, score_sde's published value ({measured})"
    if criterion_snr < PUBLISHED_SNR:
        return (f"snr {PUBLISHED_SNR:g}, score_sde's published value, not the single-Gaussian chain criterion's {criterion_snr:.4f} for "
                f"N = {num_scales}: the criterion sees only the variance of a single Gaussian, not the score errors the corrector "
                f"repairs, and its smaller snr measured worse ({measured})")
    return (f"snr {PUBLISHED_SNR:g}, score_sde's published value; the single-Gaussian chain criterion gives {criterion_snr:.4f} for "
            f"N = {num_scales}, larger, which was not measured ({measured})")


def chain_ratio_warning(chain_ratios: dict[str, float]) -> str | None:
    """One warning naming every step (label: its whole-chain s**2/sigma**2) whose annealed Langevin chain ends with more
    noise than the measured chains survived; None when none does."""
    over = {k: v for k, v in chain_ratios.items() if v is not None and not v < CHAIN_RATIO_LIMIT}
    if not over:
        return None
    which = ", ".join(f"{k} ({v:.3g})" for k, v in over.items())
    return (f"run through the whole chain, s^2/sigma^2 ends above {CHAIN_RATIO_LIMIT:g} for {which}: in the measurement such chains "
            f"gave pure noise (eps x0.25: 1.86, M = 1: 2.00, both FID 470, against {_fid('ald_x1')} at Proposition 3's eps for M = 5; "
            f"{MEASUREMENT}); use Proposition 3's eps with M >= 3 (M = 3 gave {_fid('ald_M3')})")


def sampling_levels_advice(sampler_name: str) -> str:
    """What the measurement says of the number of sampling levels, for annealed Langevin dynamics or a PC loop."""
    if sampler_name == "ald":
        return (f"sampling levels: Technique 2's L = 220 gave {_fid('ald_x1')}, "
                f"L/2 = 110 {_fid('ald_L110')} and 2L = 440 {_fid('ald_L440')} (each "
                f"with Proposition 3's eps for its levels; sd about 1): no level count measured better ({MEASUREMENT})")
    return (f"sampling levels: Technique 2 sets the training levels, not how many a predictor-corrector sampler runs; "
            f"N = 220 (Technique 2's L) gave {_fid('pc_N220_snr0.16')} against {_fid('pc_N1000_snr0.16')} at "
            f"N = 1000 (snr 0.16; {MEASUREMENT}): keep the levels the configuration runs")


def denoising_advice() -> str:
    m, p = MEASURED["ald_x1"], MEASURED["pc_N1000_snr0.16"]
    return (f"the final denoising step (x + sigma_min^2 s(x, sigma_min)): FID {m.fid:.1f} with it, {m.fid_without_denoising:.1f} "
            f"without (annealed Langevin dynamics); {p.fid:.1f} and {p.fid_without_denoising:.1f} for the PC loop ({MEASUREMENT})")
