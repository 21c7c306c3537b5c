"""The one place that decides the tuning: the noise schedule, M (Langevin steps per scale) and eps.

Every command, the trainer and the sampler ask :func:`resolve` (or its two
halves, :func:`resolve_schedule` and :func:`resolve_steps`) with what the user
gave (:class:`Given`), and get back the schedule, M, eps and notes that say
where each came from. No torch here.

Schedule, the first rule that applies:

1. A schedule file that was named. Given data must have its D; a schedule
   derived from other data is used because it was asked for, and the notes say
   so.
2. Numbers: ``sigma_max`` with ``num_scales`` (a geometric schedule), or
   ``sigma_max`` alone (Technique 2's L for the data's or the given D).
3. A run's schedule (sampling from or evaluating a trained model).
4. The work folder's ``schedule.json`` (saved by ``ncsn-tune sigmas``). With
   data given it is used only if it was derived from that same data (same
   fingerprint, number of points, shape and split) or made from numbers for the
   same D, and only if a given ``sigma_min`` or target overlap agrees with it;
   otherwise the schedule is derived from the data and the notes say why the
   saved one was not used. Without data it is used as it is.
5. The data: Techniques 1 and 2.

A ``num_scales`` given without ``sigma_max`` re-spaces whichever schedule was
chosen (same ends, L scales). A bare ``ratio`` (no schedule) serves step-size
questions only.

M: given, else the run's, else the saved step size's (when that was made for
this schedule), else 5 (the paper's CIFAR-10 setting).
eps: given, else the run's (same schedule and M), else the saved step size
(made for this schedule and this M), else Technique 4's optimum.

Another tool's loop (score_sde's PC sampler, diffusers' pipeline; :func:`resolve_sampler_step`): M given, else
the saved step size's (made for that loop and schedule), else 1; snr given, else the saved one (same M), else
the recommended one (:mod:`.advice`: score_sde's published 0.16 for a Langevin corrector, which measured better
than the single-Gaussian criterion's optimum; Proposition 3 for the ``ald`` corrector)."""

from .schedule import DEFAULTS, Given, ScheduleChoice, derive_schedule, resolve_schedule
from .steps import (CORRECTOR_STEPS, SavedStepSize, StepChoice, Tuning, given_step_size, load_step_size, recommended_sampler_step,
                    resolve, resolve_sampler_step, resolve_sampling, resolve_steps, save_step_size)
from .training import DataChoice, TrainingPlan, check_batch_fits, load_training_data, plan_training, resolve_data

__all__ = ["CORRECTOR_STEPS", "DEFAULTS", "DataChoice", "Given", "SavedStepSize", "ScheduleChoice", "StepChoice", "TrainingPlan", "Tuning",
           "check_batch_fits", "derive_schedule", "given_step_size", "load_step_size", "load_training_data", "plan_training",
           "recommended_sampler_step", "resolve", "resolve_data", "resolve_sampler_step", "resolve_sampling", "resolve_schedule", "resolve_steps", "save_step_size"]
