"""The theory of Song & Ermon (2020), in NumPy/SciPy only (torch is never imported).

One module per technique:

- :mod:`.initial_noise_scale` -- Technique 1: sigma_max is the largest pairwise
  distance of the training set, computed exactly.
- :mod:`.noise_schedule` -- Technique 2: the ratio gamma from the overlap
  equation, the number of scales and the geometric schedule.
- :mod:`.step_size` -- Technique 4: Proposition 3's variance ratio and the
  step size eps that brings it closest to 1 for M steps per scale.
- :mod:`.samplers` -- Technique 4 for the sampler that runs: score_sde's
  predictor-corrector loop and diffusers' pipeline, modelled the same way.
- :mod:`.noise_level` -- Technique 4 read back from a chain: whether a trained
  model's chain stays at the noise level it expects, and a verdict.

and the checks around them: :mod:`.simulation` (Proposition 3 by Monte Carlo,
the paper's Figure 2 mixture experiment), :mod:`.nearest_neighbours` (exact
nearest training images of samples) and :mod:`.frechet` (the Frechet distance
behind FID).
"""

from .initial_noise_scale import FarthestPair, brute_force_max_distance, max_pairwise_distance
from .noise_level import NOISE_LEVEL_BAND, chain_verdict, exact_score_ratios
from .noise_schedule import (
    NoiseSchedule,
    geometric_sigmas,
    num_scales_for_ratio,
    overlap,
    ratio_for_num_scales,
    solve_gamma,
)
from .samplers import Sampler, SamplerStep, sampler_step
from .step_size import StepSize, optimal_step_size, variance_ratio

__all__ = [
    "NOISE_LEVEL_BAND",
    "chain_verdict",
    "exact_score_ratios",
    "FarthestPair",
    "NoiseSchedule",
    "Sampler",
    "SamplerStep",
    "StepSize",
    "brute_force_max_distance",
    "geometric_sigmas",
    "max_pairwise_distance",
    "num_scales_for_ratio",
    "optimal_step_size",
    "overlap",
    "ratio_for_num_scales",
    "sampler_step",
    "solve_gamma",
    "variance_ratio",
]
