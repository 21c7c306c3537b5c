"""Sampling a trained model in batches, with per-scale diagnostics.

Which schedule, M and eps to use is decided by :func:`ncsn_tune.tuning.resolve`
(the run's, or overrides with Technique 4's eps): because the network is
conditioned on the noise only through the division by sigma (Technique 3), any
geometric schedule, M and eps can be used at sampling time without retraining.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..analysis.noise_level import chain_verdict
from ..analysis.noise_schedule import NoiseSchedule
from ..analysis.samplers import Sampler
from ..errors import NcsnTuneError
from ..tuning import Tuning
from ..units import duration
from .accel import fast_score, score_batch_size
from .compile_policy import score_network
from .checkpoint import Checkpoint, load_model
from .network import NCSNv2
from .runs import open_checkpoint
from .sampling import sample_annealed_langevin, sample_predictor_corrector


class Diagnostics:
    """Per scale: the mean image norm ||x|| and mean sigma * ||s(x, sigma)|| after that scale's M steps.

    For noise of scale sigma the true score has norm ~ sqrt(D) / sigma, so sigma ||s|| / sqrt(D) estimates s / sigma,
    the noise the chain holds against the noise the model expects;
    :func:`~ncsn_tune.analysis.noise_level.chain_verdict` says what it shows (with the loop's ``steps_per_scale`` and
    ``step_size``, what an exact score's chain would read is set apart).
    """

    def __init__(self, num_scales: int, dim: int, steps_per_scale: int | None = None, step_size: float | None = None) -> None:
        self.dim = dim
        self.steps_per_scale, self.step_size = steps_per_scale, step_size
        self.image_norm = np.zeros(num_scales)
        self.score_norm_sigma = np.zeros(num_scales)
        self.sigmas = np.zeros(num_scales)
        self.count = np.zeros(num_scales)
        self.denoised_image_norm = []
        self.frames: list[np.ndarray] = []

    def __call__(self, info: dict) -> None:
        x, score, i = info["x"], info["score"], info["i"]
        if info.get("denoised"):
            self.denoised_image_norm.append(float(x.flatten(1).norm(dim=1).mean()))
            return
        n = x.shape[0]
        self.image_norm[i] += float(x.flatten(1).norm(dim=1).sum())
        self.score_norm_sigma[i] += float(score.float().flatten(1).norm(dim=1).sum()) * info["sigma"]
        self.sigmas[i] = info["sigma"]
        self.count[i] += n

    def summary(self) -> dict:
        c = np.maximum(self.count, 1)
        snorm = self.score_norm_sigma / c
        ratio = snorm / math.sqrt(self.dim)
        return {
            "sigmas": self.sigmas.tolist(),
            "image_norm": (self.image_norm / c).tolist(),
            "score_norm_times_sigma": snorm.tolist(),
            "score_norm_times_sigma_over_sqrt_dim": ratio.tolist(),
            "denoised_image_norm": float(np.mean(self.denoised_image_norm)) if self.denoised_image_norm else None,
            "verdict": chain_verdict(self.sigmas, ratio, self.image_norm / c, self.dim, steps_per_scale=self.steps_per_scale,
                                     step_size=self.step_size),
        }


def check_counts(num: int, batch_size: int | None) -> None:
    """At least one sample, and a batch of at least one (None: the device's)."""
    if num < 1 or (batch_size is not None and batch_size < 1):
        raise NcsnTuneError(f"the number of samples and the batch size must be at least 1, got {num} and {batch_size}",
                            fields=("num", "batch_size"))


def generate(model: NCSNv2, schedule: NoiseSchedule, *, steps_per_scale: int, step_size: float | None = None, num: int,
             batch_size: int | None = None, seed: int = 0, denoise: bool = True, score=None, progress=None,
             diagnostics: Diagnostics | None = None, trace_chain: bool = False, sampler: Sampler | None = None,
             snr: float | None = None) -> torch.Tensor:
    """``num`` samples (float, [0, 1]-ish, on the CPU) in batches: by annealed Langevin dynamics from a uniform start
    (``sampler`` None or ald: M = ``steps_per_scale``, eps = ``step_size``), or by score_sde's predictor-corrector loop
    from its prior N(0, sigma_max**2 I) (``sampler`` pc: its predictor and corrector, M corrector steps of ``snr``).

    ``batch_size`` None: :func:`~ncsn_tune.model.accel.score_batch_size` (1,000 CIFAR-10 images on a GPU, 100 on a
    CPU). The same ``seed`` and batch size give the same samples. ``score``: the network to call at that batch size
    (:func:`~ncsn_tune.model.accel.score_network`, compiled or not; default: ``model`` with bf16, channels_last and a
    CUDA graph on a GPU). ``progress(done, total, unit)`` is called after every scale; ``diagnostics`` collects
    per-scale norms and, with ``trace_chain``, about 16 frames of the first chain.
    """
    check_counts(num, batch_size)
    pc = sampler is not None and sampler.name == "pc"
    device = next(model.parameters()).device
    shape = (model.channels, model.image_size, model.image_size)
    batch_size = score_batch_size(shape, device, num, requested=batch_size)
    sigmas = torch.tensor(schedule.sigmas, dtype=torch.float32, device=device)
    if score is None:
        score = fast_score(model, (batch_size, *shape))
    generator = torch.Generator(device).manual_seed(seed)
    outputs = []
    batches = math.ceil(num / batch_size)
    every = max(1, schedule.num_scales // 16)  # about 16 frames, the last scale and the denoised image
    for b in range(batches):
        if pc:  # score_sde's VE prior
            x0 = schedule.sigma_max * torch.randn((batch_size, *shape), device=device, generator=generator)
        else:
            x0 = torch.rand((batch_size, *shape), device=device, generator=generator)

        def callback(info, b=b):
            if diagnostics is not None:
                diagnostics(info)
                if trace_chain and b == 0 and (info.get("denoised") or info["i"] % every == 0 or info["i"] == schedule.num_scales - 1):
                    diagnostics.frames.append(info["x"][0].detach().float().clamp(0, 1).cpu().numpy())
            if progress is not None and not info.get("denoised"):
                progress(b * schedule.num_scales + info["i"] + 1, batches * schedule.num_scales, "scales")

        if pc:
            x = sample_predictor_corrector(score, x0, sigmas, snr=snr if snr is not None else 0.0, corrector_steps=steps_per_scale,
                                           predictor=sampler.predictor, corrector=sampler.corrector, denoise=denoise,
                                           generator=generator, callback=callback)
        else:
            x = sample_annealed_langevin(score, x0, sigmas, steps_per_scale=steps_per_scale, step_size=step_size, denoise=denoise,
                                         generator=generator, callback=callback)
        outputs.append(x.detach().float().cpu())
    return torch.cat(outputs)[:num]


def network_calls(sampler: Sampler | None, num_scales: int, steps_per_scale: int, denoise: bool = True) -> int:
    """Network evaluations per image: L M (+1 for the denoising step) for annealed Langevin dynamics; for the
    predictor-corrector loop N (M + 1), or N M without a predictor, N without a corrector."""
    if sampler is None or sampler.name != "pc":
        return num_scales * steps_per_scale + int(denoise)
    return num_scales * ((steps_per_scale if sampler.corrector != "none" else 0) + int(sampler.predictor != "none"))


@dataclass
class SampleRun:
    """Samples of a checkpoint, the tuning they were drawn with, and the per-scale diagnostics."""

    checkpoint: Checkpoint
    tuning: Tuning
    samples: torch.Tensor
    diagnostics: Diagnostics
    ema: bool = True
    denoise: bool = True

    def to_dict(self) -> dict:
        t = self.tuning
        pc = t.sampler.name == "pc"
        return {"checkpoint": str(self.checkpoint.path), "step": self.checkpoint.step, "num": len(self.samples),
                "sampler": t.sampler.to_dict(), "num_scales": t.schedule.num_scales, "sigma_max": t.schedule.sigma_max,
                "sigma_min": t.schedule.sigma_min, "steps_per_scale": t.steps_per_scale, "step_size": None if pc else t.step_size,
                "snr": t.snr, "variance_ratio": t.step.variance_ratio, "network_calls_per_image": self.network_calls,
                "denoise": self.denoise, "ema": self.ema, "notes": list(t.notes), "diagnostics": self.diagnostics.summary()}

    @property
    def network_calls(self) -> int:
        return network_calls(self.tuning.sampler, self.tuning.schedule.num_scales, self.tuning.steps_per_scale, self.denoise)


def check_sample_outputs(output: Path | None = None, npz: Path | None = None, diagnostics: Path | None = None,
                         chain: Path | None = None, force: bool = False) -> None:
    """Before any sampling: every output's suffix names a format we write, and no file of someone else's would
    be replaced (unless ``force``)."""
    from ..files import check_output

    for path, suffixes, what in ((output, (".png", ".jpg", ".jpeg", ".webp"), "output"), (npz, (".npz",), "npz"),
                                 (diagnostics, (".json", ".yaml", ".yml", ".png", ".pdf"), "diagnostics"),
                                 (chain, (".png", ".jpg", ".jpeg", ".webp", ".gif"), "chain")):
        if path is not None:
            check_output(path, suffixes, force=force, what=what)


#: The most image evaluations one sample command runs: about 14 hours at the 20,000 per second of an H100.
MAX_IMAGE_EVALUATIONS = 10**9
#: Image evaluations per second of the CIFAR-10 network (ngf 128) on an H100 with torch.compile (policy.SAMPLE_COSTS), and,
#: for the estimate only, on a CPU (about 2 cores' worth).
GPU_EVALUATIONS_PER_S, CPU_EVALUATIONS_PER_S = 20_000, 30


def sample_checkpoint(checkpoint=None, *, num: int = 64, batch_size: int | None = None, seed: int = 0, schedule_file: Path | None = None,
                      num_scales: int | None = None, steps_per_scale: int | None = None, step_size: float | None = None,
                      sampler: Sampler | None = None, snr: float | None = None, denoise: bool = True, ema: bool = True,
                      device: str = "auto", compile: bool | None = None, trace_chain: bool = False, progress=None,
                      model: NCSNv2 | None = None, say=None) -> SampleRun:
    """Samples from a checkpoint (``checkpoint``: a run folder, a checkpoint file or a :class:`Checkpoint`; None: the newest of the run
    ``train`` makes without a folder, :func:`~ncsn_tune.model.runs.open_checkpoint`) with the run's schedule, M and eps, or overrides (a changed schedule or M gets
    Technique 4's eps; :func:`ncsn_tune.tuning.resolve_sampling` decides and says why). ``sampler``: None or ald for
    NCSNv2's annealed Langevin dynamics, pc for score_sde's predictor-corrector loop with this network (M corrector steps
    per level, default 1; ``snr`` default from the resolver). ``batch_size`` None: 1,000 CIFAR-10 images at a time on a
    GPU (:func:`~ncsn_tune.model.accel.score_batch_size`), 100 on a CPU. ``model``: the checkpoint's network loaded
    already (:func:`~ncsn_tune.model.checkpoint.load_model`). ``say(text)``: where an estimate of a long sampling goes
    before it starts."""
    from ..tuning import Given, resolve_sampling

    check_counts(num, batch_size)
    pc = sampler is not None and sampler.name == "pc"
    if sampler is not None and sampler.name == "diffusers":
        raise NcsnTuneError("the bundled model samples with ald (NCSNv2's loop) or pc (score_sde's; diffusers' pipeline runs the same "
                            "loop as pc with its defaults)", fields="sampler")
    if pc and not sampler.annealed_langevin and step_size is not None:
        raise NcsnTuneError(f"{sampler.describe()} takes its step as snr, not eps: give snr", fields=("step_size", "snr"))
    if not pc and snr is not None and step_size is not None:
        raise NcsnTuneError("give the step as eps or as snr, not both", fields=("step_size", "snr"))
    ckpt = open_checkpoint(checkpoint)
    dim = int(np.prod(ckpt.image_shape))
    tuning = resolve_sampling(Given(schedule_file=schedule_file, num_scales=num_scales, steps_per_scale=steps_per_scale,
                                    step_size=step_size, snr=snr, dim=dim, run=ckpt), sampler)
    model = model if model is not None else load_model(ckpt, device=device, ema=ema)
    diagnostics = Diagnostics(tuning.schedule.num_scales, dim, None if pc else tuning.steps_per_scale, None if pc else tuning.step_size)
    shape = (model.channels, model.image_size, model.image_size)
    batch_size = score_batch_size(shape, model.sigmas.device, num, requested=batch_size)
    calls = network_calls(tuning.sampler, tuning.schedule.num_scales, tuning.steps_per_scale, denoise)  # per image
    if num * calls > MAX_IMAGE_EVALUATIONS:
        raise NcsnTuneError(f"{num:,} samples with L = {tuning.schedule.num_scales} and M = {tuning.steps_per_scale} are {num * calls:.3g} "
                            f"image evaluations of the network: at about 20,000 per second on an H100 that is "
                            f"{num * calls / GPU_EVALUATIONS_PER_S / 3600:,.1f} hours (ncsn_tune samples up to {MAX_IMAGE_EVALUATIONS:.0e}); "
                            "use fewer samples or a smaller M", fields=("num", "steps_per_scale"))
    work = num * calls * (ckpt.config["ngf"] / 128) ** 2 * dim / 3072  # in CIFAR-10-network evaluations
    rate = GPU_EVALUATIONS_PER_S if model.sigmas.device.type == "cuda" else CPU_EVALUATIONS_PER_S
    if work / rate > 60 and say is not None:  # said before the long work, not after it
        say(f"estimate: {num:,} samples x {calls:,} network calls take about {duration(work / rate)} on this "
            f"{model.sigmas.device.type.upper()} (Ctrl-C stops it)")
    score, notes = score_network(model, (batch_size, *shape), num * calls, compile, ckpt.run_dir, calls_per_batch=calls)
    samples = generate(model, tuning.schedule, steps_per_scale=tuning.steps_per_scale, step_size=tuning.step_size, num=num,
                       batch_size=batch_size, seed=seed, denoise=denoise, score=score, progress=progress, diagnostics=diagnostics,
                       trace_chain=trace_chain, sampler=tuning.sampler, snr=tuning.snr)
    tuning = tuning.with_notes(notes)
    if not torch.isfinite(samples).all():
        step = f"snr = {tuning.snr:g}" if pc else f"eps = {tuning.step_size:g}"
        raise NcsnTuneError(f"sampling from {ckpt.path} gave NaN or infinite values: {step} is unstable for this model, or the model "
                            "diverged", fields="snr" if pc else "step_size")
    return SampleRun(ckpt, tuning, samples, diagnostics, ema, denoise)


def write_samples(run: SampleRun, output: Path | None = None, npz: Path | None = None, diagnostics: Path | None = None,
                  chain: Path | None = None) -> list[Path]:
    """The grid image, the raw samples (.npz: 'uint8' (N,H,W,C) and 'float' (N,C,H,W)), the diagnostics (.json/.yaml,
    or a .png/.pdf plot) and one chain (a strip, or a .gif animation). Returns the paths written."""
    from ..files import WRITTEN_BY, atomic_open, write_mapping
    from ..images import image_grid, save_chain, save_figure, save_image, to_uint8_hwc

    written = []
    if output is not None:
        written.append(save_image(image_grid(run.samples), output))
    if npz is not None:
        with atomic_open(Path(npz)) as f:
            np.savez_compressed(f, uint8=to_uint8_hwc(run.samples), float=run.samples.numpy(), written_by=np.array(WRITTEN_BY))
        written.append(Path(npz))
    if diagnostics is not None:
        summary = run.diagnostics.summary()
        if Path(diagnostics).suffix.lower() in (".png", ".pdf"):
            from ..plots import plot_sampling_diagnostics

            save_figure(plot_sampling_diagnostics(summary, run.diagnostics.dim), diagnostics, dpi=150, close=True)
        else:
            write_mapping(Path(diagnostics), summary)
        written.append(Path(diagnostics))
    if chain is not None and run.diagnostics.frames:
        written.append(save_chain(run.diagnostics.frames, chain))
    return written
