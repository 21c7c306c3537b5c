"""Each tool's pixel range and sampler, as its own source establishes them (torch-free).

Read from the sources at these commits (file:line):

- **diffusers** (0.42.1), ``ScoreSdeVePipeline``, the only pipeline that uses ``ScoreSdeVeScheduler``:
  ``pipelines/deprecated/score_sde_ve/pipeline_score_sde_ve.py:82`` starts from ``randn * init_noise_sigma`` with no
  centring, and ``:102`` returns ``sample_mean.clamp(0, 1)``: pixels in **[0, 1]** (its default sigma_max = 1348 is
  score_sde's 1024-px value for ``data.centered = False``). The loop (``:88-100``): ``correct_steps`` calls of
  ``step_correct`` (the langevin corrector, ``schedulers/scheduling_sde_ve.py:245-298``), then ``step_pred`` (the
  reverse-diffusion predictor, ``:177-243``) over ``linspace(1, sampling_eps, num_inference_steps)``
  (``:105-122``); ``num_inference_steps`` defaults to 2000 (``pipeline_score_sde_ve.py:48``), whatever
  ``num_train_timesteps`` says.
- **score_sde** (yang-song/score_sde_pytorch cb1f359): ``datasets.py:23-27``, ``get_data_scaler``: ``x * 2. - 1.``
  when ``data.centered``, else the data as loaded in [0, 1]. Sampler: ``sampling.py:80-123`` (``sampling.method``
  ``pc`` or ``ode``), ``:355-409`` (the PC loop: corrector, then predictor, over ``linspace(1, eps, N)``, eps = 1e-5
  for VE by ``run_lib.py:98``).
- **NCSNv2** (ermongroup/ncsnv2 1bcea03): ``datasets/__init__.py:110-119``, ``data_transform``: ``2 * X - 1.`` when
  ``data.rescaled``, else the logit transform when ``data.logit_transform``, else [0, 1]. Sampler:
  ``models/__init__.py:20-50``, ``anneal_Langevin_dynamics`` with ``step_lr * (sigma / sigmas[-1]) ** 2``; the
  FID sweep reads ``fast_fid.step_lr`` and ``fast_fid.n_steps_each`` (``runners/ncsn_runner.py:499-511``).
- **EDM** (NVlabs/edm 008a4e5): ``training/training_loop.py:128``, ``images / 127.5 - 1``: **[-1, 1]**.
  ``generate.py``: ``edm_sampler`` (``:25-36``) spaces sigma_max..sigma_min with rho = 7, not geometrically; the
  geometric schedule is the ablation sampler's ``--disc=ve`` (``:107-109``: sigma_i**2 = sigma_max**2
  (sigma_min**2 / sigma_max**2)**(i / (N - 1))), with ``--schedule=ve --scaling=none`` for a VE model; the VE
  preconditioner clamps to [0.02, 100] (``training/networks.py:534-535``, ``generate.py:95-96``).
- **k-diffusion** (crowsonkb/k-diffusion 4601bf0): ``k_diffusion/augmentation.py:87-88``, ``* 2 - 1``: **[-1, 1]**.
  ``k_diffusion/sampling.py:26-29``, ``get_sigmas_exponential(n, sigma_min, sigma_max)``: exp(linspace(log
  sigma_max, log sigma_min, n)) with a 0 appended, the geometric schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.pixel_range import PixelRange


@dataclass(frozen=True)
class Convention:
    """A tool's pixel range (None: a configuration field decides, ``rule``) and the sampler it runs."""

    tool: str
    pixel_range: PixelRange | None
    rule: str
    sampler: str


CONVENTIONS = {
    "diffusers": Convention("diffusers ScoreSdeVePipeline", PixelRange.UNIT,
                            "always [0, 1] (no centring; sample_mean.clamp(0, 1))",
                            "langevin corrector, then reverse-diffusion predictor, num_inference_steps levels"),
    "score-sde": Convention("score_sde", None, "data.centered: [-1, 1], else [0, 1]",
                            "sampling.method: pc (sampling.predictor, sampling.corrector) or ode"),
    "ncsnv2-yaml": Convention("NCSNv2", None, "data.rescaled: [-1, 1]; data.logit_transform: logit space; else [0, 1]",
                              "annealed Langevin dynamics, step_lr (sigma / sigma_min)^2"),
    "edm": Convention("EDM / k-diffusion", PixelRange.SYMMETRIC, "always [-1, 1] (images / 127.5 - 1)",
                      "EDM's generate.py --disc=ve, or k-diffusion's sample_*(model, x, sigmas): no Langevin steps"),
}


def score_sde_pixel_range(centered) -> PixelRange:
    """score_sde's ``data.centered``: True -> [-1, 1], else [0, 1]."""
    return PixelRange.SYMMETRIC if centered else PixelRange.UNIT


def ncsnv2_pixel_range(data: dict) -> PixelRange:
    """NCSNv2's ``data`` section: ``rescaled`` -> [-1, 1], else [0, 1] (a logit transform is noted separately)."""
    return PixelRange.SYMMETRIC if data.get("rescaled") else PixelRange.UNIT


def centered_for(pixel_range: PixelRange) -> bool:
    """The ``data.centered`` (score_sde) or ``data.rescaled`` (NCSNv2) that puts pixels in ``pixel_range``."""
    return pixel_range == PixelRange.SYMMETRIC


#: The predictor an exported score_sde config registers for a corrector-only loop: score_sde's ``NonePredictor`` returns
#: (x, x), so ``sampling.noise_removal`` has no mean to end on; this one takes no step either, except at the last level
#: (t = eps, discrete index 0), where it returns Tweedie's denoiser x + sigma(t)**2 s(x, t) as the mean.
DENOISE_PREDICTOR = "ncsn_tune_final_denoise"
#: score_sde's VE SDE name (``training.sde``); the other two (vpsde, subvpsde) are not variance-exploding.
VE_SDE = "vesde"
#: diffusers' ScoreSdeVePipeline samples with this many levels unless called with num_inference_steps
#: (``pipeline_score_sde_ve.py:48``).
DIFFUSERS_INFERENCE_STEPS = 2000
