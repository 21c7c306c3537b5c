"""Writing a derived schedule and step size in the configuration formats of other tools (torch-free).

- ``diffusers``: a folder with ``scheduler_config.json`` that ``ScoreSdeVeScheduler.from_pretrained`` loads;
  its ``discrete_sigmas`` are this schedule's sigmas (ascending), ``snr`` the step, ``correct_steps`` M.
- ``score-sde``: a ``.py`` whose ``get_config()`` starts from the user's base config and sets
  ``model.sigma_max``/``sigma_min``/``num_scales``, ``sampling.snr``/``n_steps_each`` and ``data.centered``,
  and the same fields as flat JSON beside it.
- ``ncsnv2-yaml``: the ``model``/``sampling``/``data`` settings of an official NCSNv2 YAML.
- ``edm``: JSON with the continuous ``sigma_max``/``sigma_min`` in [-1, 1] pixels and the sigmas for
  k-diffusion's ``sample_*(model, x, sigmas)`` (descending, with the trailing 0 k-diffusion appends).

diffusers and EDM/k-diffusion put pixels in [-1, 1]: a schedule derived in [0, 1] is refused for them
unless converted (every sigma doubles, eps quadruples; snr and the overlap do not change). score_sde and
the NCSNv2 YAML take either convention (``data.centered``, ``data.rescaled``) and are set to the schedule's.
Each file says what produced it from which data.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .. import __version__
from ..analysis.noise_schedule import NoiseSchedule
from ..analysis.step_size import StepSize
from ..errors import NcsnTuneError
from ..files import atomic_write_bytes, write_mapping

FORMATS = ("diffusers", "score-sde", "ncsnv2-yaml", "edm")
#: The pixel convention a format fixes (None: it records either).
CONVENTIONS = {"diffusers": "-1,1", "edm": "-1,1", "score-sde": None, "ncsnv2-yaml": None}
SUFFIXES = {"diffusers": ("",), "score-sde": (".py",), "ncsnv2-yaml": (".yml", ".yaml"), "edm": (".json",)}


def provenance(schedule: NoiseSchedule, step: StepSize, fmt: str) -> dict:
    data = schedule.data or {}
    return {"written_by": f"ncsn-tune {__version__} export --format {fmt}",
            "data": {k: data.get(k) for k in ("name", "path", "split", "num_points", "shape", "fingerprint")} if data else "numbers given",
            "sigma_max": schedule.sigma_max, "sigma_min": schedule.sigma_min, "num_scales": schedule.num_scales, "ratio": schedule.ratio,
            "overlap": schedule.overlap if schedule.dim else None, "steps_per_scale": step.steps_per_scale, "step_size": step.step_size,
            "snr": step.snr, "variance_ratio": step.variance_ratio, "pixel_range": schedule.pixel_range,
            "converted_from_pixel_range": schedule.source.get("converted_from_pixel_range")}


def converted(schedule: NoiseSchedule, step: StepSize, fmt: str, convert: bool) -> tuple[NoiseSchedule, StepSize, list[str]]:
    """The schedule and step in the format's pixel convention, or a refusal to change it silently."""
    wanted, notes = CONVENTIONS[fmt], []
    have = schedule.pixel_range or "0,1"
    if schedule.pixel_range is None:
        notes.append("the schedule does not record its pixel range: taken as the paper's [0, 1]")
    if wanted is None or wanted == have:
        return schedule.in_pixel_range(have), step, notes
    if not convert:
        raise NcsnTuneError(f"{fmt} puts pixels in [{wanted}] but this schedule was derived for [{have}]: derive it for [{wanted}] "
                            "(pixel range), or convert it (every sigma scales with the pixel range)", fields=("convert", "pixel_range"))
    new = schedule.in_pixel_range(wanted)
    factor = (new.sigma_min / schedule.sigma_min) ** 2  # alpha = eps sigma^2 / sigma_min^2 keeps its meaning
    new_step = StepSize(step.steps_per_scale, step.step_size * factor, step.variance_ratio, step.ratio, new.sigma_min, step.optimal)
    notes.append(f"converted from [{have}] to [{wanted}] pixels: sigmas x{new.sigma_min / schedule.sigma_min:g}, eps x{factor:g}, "
                 "snr and overlap unchanged")
    return new, new_step, notes


def export_tuning(schedule: NoiseSchedule, step: StepSize, fmt: str, output: Path, *, convert: bool = False,
                  score_sde_base: str = "configs.ve.ncsnv2.cifar10") -> tuple[list[Path], list[str]]:
    """Write ``schedule`` and ``step`` for ``fmt``; returns the files written and notes."""
    if fmt not in FORMATS:
        raise NcsnTuneError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", fields="format")
    schedule, step, notes = converted(schedule, step, fmt, convert)
    origin = provenance(schedule, step, fmt)
    output = Path(output)
    if fmt == "diffusers":
        config = {"_class_name": "ScoreSdeVeScheduler", "_diffusers_version": "0.30.0", "num_train_timesteps": schedule.num_scales,
                  "snr": step.snr, "sigma_min": schedule.sigma_min, "sigma_max": schedule.sigma_max, "sampling_eps": 1e-5,
                  "correct_steps": step.steps_per_scale, "_ncsn_tune": origin}
        return [atomic_write_bytes(output / "scheduler_config.json", (json.dumps(config, indent=2) + "\n").encode())], notes
    if fmt == "score-sde":
        fields = {"model.sigma_max": schedule.sigma_max, "model.sigma_min": schedule.sigma_min, "model.num_scales": schedule.num_scales,
                  "sampling.snr": step.snr, "sampling.n_steps_each": step.steps_per_scale,
                  "data.centered": schedule.pixel_range == "-1,1"}
        lines = [f'"""Overrides written by {origin["written_by"]} (data: {json.dumps(origin["data"])}).',
                 "",
                 f"Starts from score_sde's {score_sde_base} and sets the noise schedule and the corrector's step: snr is exact for the",
                 "ald corrector (step 2 (snr sigma)^2 = eps sigma^2 / sigma_min^2) and approximate for the langevin one.",
                 '"""', "", "import importlib", "", "", "def get_config():",
                 f"    config = importlib.import_module({score_sde_base!r}).get_config()"]
        lines += [f"    config.{key} = {value!r}" for key, value in fields.items()]
        lines += ["    return config", ""]
        written = [atomic_write_bytes(output, "\n".join(lines).encode()),
                   write_mapping(output.with_suffix(".json"), {**fields, "_ncsn_tune": origin})]
        return written, notes
    if fmt == "ncsnv2-yaml":
        section = {"model": {"sigma_dist": "geometric", "sigma_begin": schedule.sigma_max, "sigma_end": schedule.sigma_min,
                             "num_classes": schedule.num_scales, "ema": True, "ema_rate": 0.999},
                   "sampling": {"n_steps_each": step.steps_per_scale, "step_lr": step.step_size, "denoise": True},
                   "data": {"rescaled": schedule.pixel_range == "-1,1"}}
        text = (f"# written by {origin['written_by']}: merge these keys into an official NCSNv2 config\n"
                f"# data: {json.dumps(origin['data'])}\n" + yaml.safe_dump(section, sort_keys=False))
        return [atomic_write_bytes(output, text.encode())], notes
    sigmas = [float(s) for s in schedule.sigmas] + [0.0]
    document = {"sigma_max": schedule.sigma_max, "sigma_min": schedule.sigma_min, "num_scales": schedule.num_scales,
                "pixel_range": schedule.pixel_range, "sigmas": sigmas, "steps_per_scale": step.steps_per_scale,
                "step_size": step.step_size, "snr": step.snr,
                "usage": "torch.tensor(sigmas) for k-diffusion's sample_*(model, x, sigmas) (descending, the final 0 appended as "
                         "k-diffusion does); EDM's sampler takes sigma_max and sigma_min; step_size is Technique 4's eps for "
                         "annealed Langevin dynamics with steps_per_scale steps per scale",
                "_ncsn_tune": origin}
    return [write_mapping(output, document)], notes
