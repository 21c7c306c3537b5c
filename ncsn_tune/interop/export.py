"""Writing a derived schedule and step for the configuration formats of other tools (torch-free).

Every format keeps the number of levels its tool *samples* with (``sampling_levels`` overrides): Technique 2 sets the
training levels, not how many a predictor-corrector sampler should run (:mod:`ncsn_tune.tuning.advice`), and the step
is derived for the levels that will run.

- ``diffusers``: a folder with ``scheduler_config.json`` that ``ScoreSdeVeScheduler.from_pretrained`` loads, for
  pixels in [0, 1] (the pipeline's convention). Levels: the pipeline's default ``num_inference_steps`` (2000), written
  as ``num_train_timesteps`` and recorded; ``snr`` the recommended one for its Langevin corrector (score_sde's
  published 0.16, measured better than the single-Gaussian criterion's optimum), ``correct_steps`` M.
- ``score-sde``: a ``.py`` whose ``get_config()`` starts from the user's base config and sets the schedule
  (``model.sigma_max``/``sigma_min``), ``data.centered`` for the schedule's pixel range, the sampler coherently
  (``sampling.method = 'pc'``, ``predictor``, ``corrector``, ``n_steps_each``, ``snr``) and ``sampling.noise_removal``
  with a final denoising step: a corrector-only loop gets the predictor :data:`~.conventions.DENOISE_PREDICTOR`,
  registered by the file, since score_sde's NonePredictor has no mean to end on. ``model.num_scales``: the
  schedule's L for a discrete-time base (its training levels), the base's own N for a continuous-time one (its
  sampling levels; a step that depends on N then needs the base read now, or ``sampling_levels``). Fields are set
  with ``ignore_type`` because score_sde's bases declare some as ints; the file refuses, when loaded, a base that is
  not variance-exploding or whose image size or channels differ from the schedule's data. The same fields as flat JSON
  beside it.
- ``ncsnv2-yaml``: the ``model``/``sampling``/``fast_fid``/``data`` settings of an official NCSNv2 YAML (its
  ``num_classes`` are both the training and the sampling levels).
- ``edm``: JSON for EDM's ``generate.py --disc=ve`` (its geometric discretisation; its default ``edm_sampler``
  would space the same ends with rho = 7 instead) and k-diffusion's ``get_sigmas_exponential``, pixels in [-1, 1];
  no Langevin steps, so no step is written.

A schedule made for another pixel range than the format's is refused unless converted (:meth:`NoiseSchedule.
in_pixel_range`: every sigma, sigma_min included, scales by the ratio of the widths; eps by its square; snr, L and
the overlap do not change). Each file says what produced it from which data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..version import __version__
from ..analysis.noise_schedule import NoiseSchedule
from ..analysis.samplers import SAMPLING_EPS, Sampler, SamplerStep
from ..errors import NcsnTuneError
from ..files import atomic_write_bytes, write_mapping
from ..data.pixel_range import DEFAULT as DEFAULT_PIXEL_RANGE, PixelRange
from .conventions import CONVENTIONS, DENOISE_PREDICTOR, DIFFUSERS_INFERENCE_STEPS, VE_SDE, centered_for

FORMATS = ("diffusers", "score-sde", "ncsnv2-yaml", "edm")
SUFFIXES = {"diffusers": ("",), "score-sde": (".py",), "ncsnv2-yaml": (".yml", ".yaml"), "edm": (".json",)}
#: EDM's VE preconditioner clamps the sampler's sigmas to this range (training/networks.py:534-535, generate.py:95-96).
EDM_VE_RANGE = (0.02, 100.0)


def provenance(schedule: NoiseSchedule, fmt: str, step: SamplerStep | None) -> dict:
    data = schedule.data or {}
    origin = {"written_by": f"ncsn-tune {__version__} export --format {fmt}",
              "data": {k: data.get(k) for k in ("name", "path", "split", "num_points", "shape", "fingerprint")} if data else "numbers given",
              "sigma_max": schedule.sigma_max, "sigma_min": schedule.sigma_min, "num_scales": schedule.num_scales, "ratio": schedule.ratio,
              "overlap": schedule.overlap if schedule.dim else None, "pixel_range": str(schedule.pixels),
              "converted_from_pixel_range": schedule.source.get("converted_from_pixel_range")}
    if step is not None:
        origin.update(sampler=step.sampler.to_dict(), steps_per_scale=step.steps_per_scale, snr=step.snr, step_size=step.step_size,
                      variance_ratio=step.variance_ratio, criterion=step.criterion)
    return origin


def converted(schedule: NoiseSchedule, wanted: PixelRange | None, convert: bool) -> tuple[NoiseSchedule, list[str]]:
    """The schedule in the format's pixel range ``wanted`` (None: the format records either), or a refusal to change it
    silently."""
    notes = []
    if schedule.pixel_range is None:
        notes.append(f"the schedule does not record its pixel range: taken as the paper's {DEFAULT_PIXEL_RANGE.label}")
    have = schedule.pixels
    if wanted is None or wanted == have:
        return schedule.in_pixel_range(have), notes
    if not convert:
        raise NcsnTuneError(f"this format puts pixels in {wanted.label} but the schedule was derived for {have.label}: derive it for "
                            f"{wanted.label} (pixel range), or convert it (every sigma, sigma_min included, scales by "
                            f"{have.factor_to(wanted):g})", fields=("convert", "pixel_range"))
    new = schedule.in_pixel_range(wanted)
    notes.append(f"converted from {have.label} to {wanted.label} pixels: every sigma x{have.factor_to(wanted):g} (sigma_min "
                 f"{schedule.sigma_min:g} -> {new.sigma_min:g}), eps x{have.factor_to(wanted) ** 2:g}; snr, L and the overlap unchanged")
    return new, notes


def check_score_sde_shape(base: dict, schedule: NoiseSchedule, base_name: str) -> None:
    """A base whose data.image_size / num_channels differ from the schedule's data is refused."""
    shape = tuple((schedule.data or {}).get("shape") or ())
    size, channels = base.get("image_size"), base.get("num_channels")
    if size is None:
        return
    theirs = (int(channels or 3), int(size), int(size))
    if len(shape) == 3 and tuple(shape) != theirs:
        raise NcsnTuneError(f"score_sde's {base_name} is for {'x'.join(map(str, theirs))} images but the schedule was derived from "
                            f"{'x'.join(map(str, shape))} data; choose a base for this image size",
                            fields="score_sde_base")
    if schedule.dim is not None and schedule.dim != theirs[0] * theirs[1] * theirs[2]:
        raise NcsnTuneError(f"score_sde's {base_name} is for {'x'.join(map(str, theirs))} images (D = {theirs[0] * theirs[1] * theirs[2]}) "
                            f"but the schedule is for D = {schedule.dim}; choose a base for this image size",
                            fields="score_sde_base")


@dataclass(frozen=True)
class Levels:
    """How many levels the exported sampler runs: ``num_scales`` (None: the base's own, read when the file is loaded),
    whether the step depends on it, and where it came from."""

    num_scales: int | None
    how: str
    step_depends_on_levels: bool = False


def export_tuning(schedule: NoiseSchedule, step: SamplerStep | None, fmt: str, output: Path, *, levels: Levels | None = None,
                  score_sde_base: str = "configs.ve.ncsnv2.cifar10", base_config: dict | None = None) -> tuple[list[Path], list[str]]:
    """Write ``schedule`` (its ends; its L levels unless ``levels`` says) and ``step`` (for the format's sampler,
    :func:`format_sampler`, derived for those levels; None for ``edm``) for ``fmt``; returns the files written and notes.
    ``base_config``: score_sde's base, as :func:`~.tool_configs.probe_score_sde` read it (checked against the schedule's
    data; None: checked only when the file is loaded)."""
    if fmt not in FORMATS:
        raise NcsnTuneError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", fields="format")
    output = Path(output)
    levels = levels or Levels(schedule.num_scales, "the schedule's L")
    if fmt == "diffusers":
        return _diffusers(schedule, step, output, levels)
    if fmt == "score-sde":
        return _score_sde(schedule, step, output, score_sde_base, base_config, levels)
    if fmt == "ncsnv2-yaml":
        return _ncsnv2_yaml(schedule, step, output)
    return _edm(schedule.with_num_scales(levels.num_scales) if levels.num_scales != schedule.num_scales else schedule, output)


def _diffusers(schedule: NoiseSchedule, step: SamplerStep, output: Path, levels: Levels) -> tuple[list[Path], list[str]]:
    n = levels.num_scales
    origin = provenance(schedule, "diffusers", step) | {"num_inference_steps": n, "sampling_levels": levels.how}
    config = {"_class_name": "ScoreSdeVeScheduler", "_diffusers_version": "0.30.0", "num_train_timesteps": n,
              "snr": step.snr, "sigma_min": schedule.sigma_min, "sigma_max": schedule.sigma_max, "sampling_eps": step.sampler.sampling_eps,
              "correct_steps": step.steps_per_scale, "_ncsn_tune": origin}
    call = ("the pipeline's default num_inference_steps runs them" if n == DIFFUSERS_INFERENCE_STEPS else
            f"call the pipeline with num_inference_steps={n}: ScoreSdeVePipeline re-spaces its levels to num_inference_steps "
            f"(default {DIFFUSERS_INFERENCE_STEPS}), whatever num_train_timesteps says")
    notes = [f"{n} sampling levels ({levels.how}); {call}",
             f"snr {step.snr:.5f} for correct_steps = {step.steps_per_scale} (the single-Gaussian model of the pipeline's loop: "
             f"s^2/sigma^2 = {step.variance_ratio:.6f} at the last level)"]
    return [atomic_write_bytes(output / "scheduler_config.json", (json.dumps(config, indent=2) + "\n").encode())], notes


#: Registered by an exported score_sde config that runs a corrector-only loop (:data:`~.conventions.DENOISE_PREDICTOR`).
_DENOISE_SOURCE = '''

def _register_final_denoise():
    """score_sde's NonePredictor returns (x, x): a corrector-only loop has no mean for sampling.noise_removal to end on.
    This predictor takes no step either, except at the last level (t = eps: discrete index 0, as sde.discretize counts),
    where it returns Tweedie's denoiser x + sigma(t)^2 s(x, t) as the mean (FID 31.75 -> 10.87 on CIFAR-10 in the
    NCSNv2 paper's table)."""
    try:
        import sampling  # score_sde's sampling.py: importable where score_sde builds its sampler
    except ImportError:  # read elsewhere (e.g. ncsn-tune audit's probe): nothing samples here
        return
    if NAME in sampling._PREDICTORS:
        return
    import torch

    @sampling.register_predictor(name=NAME)
    class FinalDenoise(sampling.Predictor):
        def update_fn(self, x, t):
            if not bool(((t * (self.sde.N - 1) / self.sde.T).long() == 0).all()):
                return x, x
            sigma = self.sde.marginal_prob(torch.zeros_like(x), t)[1]
            return x, x + sigma[:, None, None, None] ** 2 * self.score_fn(x, t)
'''


def _score_sde(schedule: NoiseSchedule, step: SamplerStep, output: Path, base: str, base_config: dict | None,
               levels: Levels) -> tuple[list[Path], list[str]]:
    origin = provenance(schedule, "score-sde", step) | {"sampling_levels": levels.how, "num_scales_written": levels.num_scales}
    sampler = step.sampler
    predictor = DENOISE_PREDICTOR if sampler.predictor == "none" else sampler.predictor
    fields = {"model.sigma_max": schedule.sigma_max, "model.sigma_min": schedule.sigma_min, "data.centered": centered_for(schedule.pixels),
              "sampling.method": "pc", "sampling.predictor": predictor, "sampling.corrector": sampler.corrector,
              "sampling.n_steps_each": step.steps_per_scale, "sampling.snr": step.snr, "sampling.noise_removal": True}
    shape = tuple((schedule.data or {}).get("shape") or ())
    n_said = levels.num_scales if levels.num_scales is not None else "set when the file is loaded"
    notes = [f"configures {sampler.describe()}: snr {step.snr:.5f} for M = {step.steps_per_scale} "
             f"({'exact map to eps' if sampler.annealed_langevin else 'the recommended step'}: s^2/sigma^2 = {step.variance_ratio:.6f}); "
             f"model.num_scales {n_said} ({levels.how})",
             "sampling.noise_removal = True: the final denoising step" + (f", by the predictor {DENOISE_PREDICTOR!r} the file registers "
                                                                          "(score_sde's NonePredictor has no mean to end on)"
                                                                          if predictor == DENOISE_PREDICTOR else " (the predictor's last mean)")]
    if base_config is not None:
        check_score_sde_shape(base_config, schedule, base)
        theirs = (base_config.get("predictor"), base_config.get("corrector"))
        if base_config.get("method") and (base_config.get("method"), *theirs) != ("pc", sampler.predictor, sampler.corrector):
            notes.append(f"the base samples with method {base_config.get('method')!r}, predictor {theirs[0]!r}, corrector {theirs[1]!r}; "
                         "the export replaces them with the sampler its snr was derived for")
        if base_config.get("continuous") is False and base_config.get("num_scales") != schedule.num_scales:
            notes.append(f"the base trains on discrete scales (training.continuous = False): model.num_scales {base_config.get('num_scales')} "
                         f"-> {schedule.num_scales} means training a new model")
    else:
        notes.append("the base was not read here (give the score_sde checkout to check it now); the written get_config() checks "
                     "its SDE, image size and channels when it is loaded")
    check = ["    sde = getattr(config.training, 'sde', None)",
             f"    if sde != {VE_SDE!r}:",
             f"        what = f'trains a {{sde}} model' if sde else 'sets no training.sde (score_sde\\'s run_lib reads it)'",
             f"        raise ValueError(f'{{__file__}}: {base} {{what}}; this export is for variance-exploding (vesde) models')"]
    if len(shape) == 3:
        check += [f"    expected = {tuple(shape)!r}  # (channels, height, width) of the data the schedule was derived from",
                  "    found = (config.data.num_channels, config.data.image_size, config.data.image_size)",
                  "    if tuple(found) != expected:",
                  f"        raise ValueError(f'{{__file__}}: the schedule was derived from {{expected}} images, but {base} is for {{found}}; "
                  "export again over a base of that image size')"]
    n = schedule.num_scales
    if levels.num_scales is not None:
        check += ["    continuous = bool(getattr(config.training, 'continuous', False))",
                  f"    if not continuous and {levels.num_scales} != {n}:",
                  f"        raise ValueError(f'{{__file__}}: {base} trains on discrete levels (training.continuous = False), which are its "
                  f"sampling levels: the schedule has {n}, not {levels.num_scales}; export again without the sampling levels')",
                  f"    num_scales = {levels.num_scales}"]
    elif levels.step_depends_on_levels:
        check += ["    continuous = bool(getattr(config.training, 'continuous', False))",
                  f"    if continuous and config.model.num_scales != {n}:",
                  f"        raise ValueError(f'{{__file__}}: the step was derived for {n} levels, but {base} trains in continuous time and samples "
                  "model.num_scales = {config.model.num_scales}: export again with that many sampling levels, or with the score_sde "
                  "checkout so the base is read')",
                  f"    num_scales = {n}"]
    else:
        check += ["    continuous = bool(getattr(config.training, 'continuous', False))",
                  f"    num_scales = config.model.num_scales if continuous else {n}  # a continuous model keeps its sampling levels"]
    lines = [f'"""Overrides written by {origin["written_by"]} (data: {json.dumps(origin["data"])}).',
             "",
             f"Starts from score_sde's {base} and sets the noise schedule, the pixel range and the sampler the step was derived for:",
             f"{sampler.describe()}, snr {step.snr!r}, M = {step.steps_per_scale}, with the final denoising step.",
             '"""', "", "import importlib", "", f"NAME = {DENOISE_PREDICTOR!r}", *_DENOISE_SOURCE.splitlines(), "", "",
             "def get_config():",
             f"    config = importlib.import_module({base!r}).get_config()", *check,
             "    with config.ignore_type():  # score_sde's bases declare e.g. model.sigma_max = 50 as an int",
             "        config.model.num_scales = num_scales"]
    lines += [f"        config.{key} = {value!r}" for key, value in fields.items()]
    if predictor == DENOISE_PREDICTOR:
        lines += ["    _register_final_denoise()"]
    lines += ["    return config", ""]
    flat = {**fields, "model.num_scales": levels.num_scales}
    written = [atomic_write_bytes(output, "\n".join(lines).encode()), write_mapping(output.with_suffix(".json"), {**flat, "_ncsn_tune": origin})]
    return written, notes


def _ncsnv2_yaml(schedule: NoiseSchedule, step: SamplerStep, output: Path) -> tuple[list[Path], list[str]]:
    from .ncsnv2_yaml import yaml_sections

    origin = provenance(schedule, "ncsnv2-yaml", step)
    text = (f"# written by {origin['written_by']}: merge these keys into an official NCSNv2 config\n"
            f"# data: {json.dumps(origin['data'])}\n" + yaml.safe_dump(yaml_sections(schedule, step), sort_keys=False))
    return [atomic_write_bytes(output, text.encode())], ["fast_fid.step_lr and fast_fid.n_steps_each are set too: the official "
                                                         "FID sweep (main.py --fast_fid) samples with them"]


def _edm(schedule: NoiseSchedule, output: Path) -> tuple[list[Path], list[str]]:
    origin = provenance(schedule, "edm", None)
    s = schedule
    generate = f"--steps={s.num_scales} --sigma_min={s.sigma_min!r} --sigma_max={s.sigma_max!r} --disc=ve --schedule=ve --scaling=none"
    document = {"sigma_max": s.sigma_max, "sigma_min": s.sigma_min, "num_steps": s.num_scales, "pixel_range": str(s.pixels),
                "edm_generate_args": generate,
                "k_diffusion": f"k_diffusion.sampling.get_sigmas_exponential({s.num_scales}, {s.sigma_min!r}, {s.sigma_max!r})",
                "sigmas": [float(v) for v in s.sigmas] + [0.0], "_ncsn_tune": origin}
    notes = [f"EDM: python generate.py {generate} (--disc=ve spaces the levels geometrically, as this schedule; EDM's default "
             "sampler would space the same ends with rho = 7); k-diffusion: the sigmas listed (descending, the final 0 appended), "
             "or get_sigmas_exponential",
             "EDM and k-diffusion take no Langevin steps: no step size is written"]
    lo, hi = EDM_VE_RANGE
    if s.sigma_min < lo or s.sigma_max > hi:
        notes.append(f"EDM's VE preconditioner clamps the sampler's sigmas to [{lo:g}, {hi:g}] (a network trained by EDM's VE setup "
                     "knows no others)")
    return [write_mapping(output, document)], notes


def format_pixel_range(fmt: str) -> PixelRange | None:
    """The pixel range a format fixes (None: it records either, by data.centered or data.rescaled)."""
    return CONVENTIONS[fmt].pixel_range


def format_sampler(fmt: str, sampler: Sampler | None, sampling_eps: float = SAMPLING_EPS) -> Sampler | None:
    """The sampler a format configures: diffusers' pipeline, NCSNv2's annealed Langevin dynamics, for score_sde the one
    asked for (default: corrector-only ald, NCSNv2's loop, for which Technique 4 is Proposition 3), none for EDM."""
    if fmt == "score-sde":
        if sampler is not None and sampler.name == "diffusers":
            raise NcsnTuneError("score_sde runs its own pc loop: choose the ald or the pc sampler for it", fields="sampler")
        if sampler is None or sampler.name == "ald":
            return Sampler("pc", "none", "ald", sampling_eps)
        return sampler
    fixed = {"diffusers": Sampler.named("diffusers", sampling_eps=sampling_eps), "ncsnv2-yaml": Sampler.named("ald"), "edm": None}[fmt]
    if sampler is not None and sampler != fixed:
        what = "takes no Langevin steps" if fmt == "edm" else f"runs {fixed.describe()}"
        raise NcsnTuneError(f"{fmt} {what}; the sampler option chooses score_sde's loop", fields="sampler")
    if fmt != "diffusers" and sampling_eps != SAMPLING_EPS:
        raise NcsnTuneError(f"{fmt} has no t grid: sampling_eps is for score_sde's and diffusers' loops", fields="sampling_eps")
    return fixed




def levels_for(fmt: str, schedule: NoiseSchedule, loop: Sampler | None, given: int | None, base: dict | None) -> Levels:
    """How many levels the format's sampler runs (:class:`Levels`): the tool's own unless ``given``; a discrete-time model
    (NCSNv2, a score_sde base with ``training.continuous = False``) samples the levels it trains on, the schedule's L."""
    L = schedule.num_scales
    depends = loop is not None and loop.langevin_steps and loop.corrector != "langevin"  # eps (snr) is derived for N levels
    if given is not None and (not isinstance(given, int) or given < 2):
        raise NcsnTuneError(f"the number of sampling levels must be a whole number >= 2, got {given!r}", fields="sampling_levels")
    fixed = "a discrete-time model samples the levels it was trained on, the schedule's L"
    if fmt == "ncsnv2-yaml" or (fmt == "score-sde" and base is not None and not base.get("continuous")):
        if given not in (None, L):
            raise NcsnTuneError(f"{fixed} ({L}), not {given}: leave the sampling levels out, or derive a schedule of {given} scales",
                                fields="sampling_levels")
        return Levels(L, fixed, depends)
    if given is not None:
        return Levels(given, "as given", depends)
    if fmt == "diffusers":
        return Levels(DIFFUSERS_INFERENCE_STEPS, "the pipeline's default num_inference_steps")
    if fmt == "edm":
        return Levels(L, "the schedule's L")
    if base is not None:
        return Levels(int(base["num_scales"]), "the continuous-time base's own model.num_scales", depends)
    return Levels(None, "the base's model.num_scales when it trains in continuous time, else the schedule's L", depends)


def check_score_sde_sde(base: dict, base_name: str) -> None:
    """A base that is not variance-exploding (VP, sub-VP) or sets no SDE is refused: the techniques are for VE models."""
    if base.get("sde") != VE_SDE:
        what = f"trains a {base.get('sde')} model" if base.get("sde") else "sets no training.sde (score_sde's run_lib needs one)"
        raise NcsnTuneError(f"score_sde's {base_name} {what}; the schedule and step are for variance-exploding (vesde) models: choose a "
                            "VE base (configs.ve...)", fields="score_sde_base")


_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def export_schedule(given, fmt: str, output: Path, *, sampler: Sampler | None = None, sampling_eps: float = SAMPLING_EPS,
                    sampling_levels: int | None = None, convert: bool = False, score_sde_base: str = "configs.ve.ncsnv2.cifar10",
                    score_sde_root: Path | None = None, workdir: Path | None = None,
                    progress=None) -> tuple[list[Path], list[str], SamplerStep | None]:
    """The resolver's schedule (:func:`ncsn_tune.tuning.resolve_schedule`), the levels the format samples with
    (:func:`levels_for`) and the step for the format's sampler on them (:func:`ncsn_tune.tuning.resolve_sampler_step`),
    in the format's pixel range, written for ``fmt``. Returns the files, the notes (where each value came from, what to do
    with the files) and the step written."""
    from ..tuning import ScheduleChoice, resolve_sampler_step, resolve_schedule
    from .tool_configs import probe_score_sde

    if fmt not in FORMATS:
        raise NcsnTuneError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", fields="format")
    if fmt == "score-sde" and not _MODULE.fullmatch(score_sde_base or ""):
        raise NcsnTuneError(f"{score_sde_base!r} is not a module name such as configs.ve.ncsnv2.cifar10", fields="score_sde_base")
    loop = format_sampler(fmt, sampler, sampling_eps)
    if loop is not None and not loop.langevin_steps:
        raise NcsnTuneError(f"{loop.describe()} takes no Langevin steps: there is no step to export for it (choose a corrector, or the "
                            "edm format for a sampler without Langevin steps)", fields=("corrector", "sampler"))
    choice = resolve_schedule(given, workdir=workdir, progress=progress)
    if choice.schedule is None:
        raise NcsnTuneError("an export writes a schedule, not a bare ratio", fields="ratio")
    base = probe_score_sde(score_sde_base, score_sde_root, f"score_sde's {score_sde_base}") if fmt == "score-sde" and score_sde_root else None
    if base is not None:
        check_score_sde_sde(base, score_sde_base)
    levels = levels_for(fmt, choice.schedule, loop, sampling_levels, base)
    run_on = choice
    if levels.num_scales is not None and levels.num_scales != choice.schedule.num_scales:
        spaced = choice.schedule.with_num_scales(levels.num_scales)
        run_on = ScheduleChoice(spaced, spaced.ratio, choice.sigma_min, (*choice.notes, f"the step is derived for the {levels.num_scales} "
                                                                          f"sampling levels ({levels.how})"), choice.file)
    step, step_notes = resolve_sampler_step(given, loop, run_on, workdir=workdir) if loop is not None else (None, ())
    schedule, pixel_notes = converted(choice.schedule, format_pixel_range(fmt), convert)
    if step is not None:
        step = step.scaled(schedule.sigma_min / choice.schedule.sigma_min)
    written, notes = export_tuning(schedule, step, fmt, output, levels=levels, score_sde_base=score_sde_base, base_config=base)
    return written, [*run_on.notes, *step_notes, *pixel_notes, *notes], step
