"""The paper's defaults, each written once: every function's default, every option's and every configuration's comes from
here (Song & Ermon 2020; the CIFAR-10 configuration of the official code). Values in another pixel range follow from
these (:func:`ncsn_tune.analysis.noise_schedule.default_sigma_min`)."""

from __future__ import annotations

#: The smallest scale sigma_L for pixels in [0, 1] (the paper's 0.01).
SIGMA_MIN = 0.01
#: The overlap C adjacent scales should reach (Technique 2: "about 0.5").
TARGET_OVERLAP = 0.5
#: M, Langevin steps per scale (the CIFAR-10 config's n_steps_each = 5).
STEPS_PER_SCALE = 5
