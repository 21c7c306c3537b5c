"""The commands that speak to other tools (no torch): audit and export."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import workdir
from ..defaults import TARGET_OVERLAP
from ..errors import NcsnTuneError
from ..files import check_output
from ..analysis.noise_schedule import default_sigma_min
from ..interop.export import FORMATS
from ..data.pixel_range import DEFAULT as DEFAULT_PIXEL_RANGE, PixelRange
from .analysis import chosen_sampler, sampler_options, step_size_options, typed
from .app import main
from .options import (check_figure, data_options, force_option, given_from, json_option, parse_steps, path_option, read_data,
                      save_figure)
from .render import Report


def audited_config(config, score_sde_root, sampling_steps, numbers: dict):
    """The configuration to audit: a file, or the numbers given."""
    from ..interop.tool_configs import ToolConfig, read_tool_config

    if config is not None:
        try:
            return read_tool_config(config, score_sde_root, sampling_steps)
        except NcsnTuneError as err:  # a value read from the file: the file is what to change, not an option --config forbids
            if set(err.fields) <= {"config", "score_sde_root", "sampling_steps"}:
                raise
            message = str(err) if str(config) in str(err) else f"{config}: {err}"
            raise type(err)(message, fields="config") from None
    missing = [k for k in ("sigma_max", "num_scales") if numbers[k] is None]
    if missing:
        raise NcsnTuneError("give a configuration file, or at least sigma_max and the number of scales", fields=("config", *missing))
    pixels = PixelRange.parse(numbers["pixel_range"] or DEFAULT_PIXEL_RANGE)
    return ToolConfig("numbers", "numbers given", numbers["sigma_max"], numbers["sigma_min"] or default_sigma_min(pixels),
                      sampling_steps or numbers["num_scales"], numbers["steps_per_scale"], numbers["step_size"], numbers["snr"],
                      sampler=numbers["sampler"], ema=numbers["ema"], ema_rate=0.999 if numbers["ema"] else None, pixel_range=pixels)


@main.command()
@path_option("--config", type=click.Path(path_type=Path), help="An NCSNv2 .yml, a diffusers scheduler_config.json (or its folder), "
             "or a score_sde .py; leave out to audit --sigma-max, --num-scales, --M and --step-size/--snr.")
@click.option("--score-sde-root", type=click.Path(file_okay=False, path_type=Path), help="The score_sde checkout a .py config imports from.")
@click.option("--sampling-steps", type=click.IntRange(min=2), help="The levels the sampler runs where the configuration leaves them free: "
              "diffusers' num_inference_steps [default: the pipeline's 2000], a continuous-time score_sde model's N.")
@data_options
@click.option("--diameter", type=float, help="The data's diameter, instead of computing it from --data (Technique 1).")
@click.option("--dim", type=int, help="Data dimension D = C*H*W [default: the configuration's image size, or the data's].")
@click.option("--overlap", "target_overlap", type=float, default=TARGET_OVERLAP, show_default=True, help="Target overlap C (Technique 2).")
@click.option("--sigma-max", type=float, help="Without --config: the largest scale.")
@click.option("--sigma-min", type=float, help="Without --config: the smallest scale [default: 0.01 in [0, 1] pixels].")
@click.option("--num-scales", type=int, help="Without --config: the number of scales L.")
@click.option("--M", "steps_per_scale", type=int, help="Without --config: Langevin steps per scale.")
@click.option("--step-size", type=float, help="Without --config: the step eps.")
@click.option("--snr", type=float, help="Without --config: the step as snr (ald: eps = 2 (snr sigma_min)^2).")
@sampler_options
@click.option("--ema/--no-ema", default=None, help="Without --config: whether samples use EMA weights.")
@path_option("--output", help="A one-page figure of the audit (.png or .pdf).")
@force_option
@json_option
def audit(config, score_sde_root, sampling_steps, diameter, dim, target_overlap, sigma_max, sigma_min, num_scales, steps_per_scale,
          step_size, snr, sampler, predictor, corrector, sampling_eps, ema, output, force, as_json, **opts):
    """Check an existing configuration against Techniques 1, 2, 4 and 5, for the sampler it runs, with what each costs.

    \b
    ncsn-tune audit --config ncsnv2/configs/cifar10.yml --data cifar10
    ncsn-tune audit --config my_model/scheduler_config.json --data images/
    ncsn-tune audit --config score_sde/configs/ve/cifar10_ncsnpp_continuous.py --score-sde-root score_sde --data cifar10
    """
    from ..interop import audit_config
    from ..interop.audit import derived_schedule

    report = Report(as_json)
    check_figure(output, force)
    numbers = {"sigma_max": sigma_max, "sigma_min": sigma_min, "num_scales": num_scales, "ema": ema, "steps_per_scale": steps_per_scale,
               "step_size": step_size, "snr": snr, "pixel_range": opts["pixel_range"],
               "sampler": chosen_sampler(sampler, predictor, corrector, sampling_eps)}
    if config is not None:
        extra = [k for k in ("sigma_max", "sigma_min", "num_scales", "ema", "steps_per_scale", "step_size", "snr") if numbers[k] is not None]
        extra += typed("sampler", "predictor", "corrector", "sampling_eps")  # the file says which loop runs, even ald typed
        if extra:
            raise NcsnTuneError("these settings describe a configuration given as numbers; with --config the file gives them",
                                fields=tuple(extra))
    c = audited_config(config, score_sde_root, sampling_steps, numbers)
    if config is not None and opts["pixel_range"] is not None and PixelRange.parse(opts["pixel_range"]) != c.pixel_range:
        raise NcsnTuneError(f"{c.source} puts pixels in {c.pixel_range.label}; its data is measured there", fields="pixel_range")
    data = read_data(report, {**opts, "pixel_range": c.pixel_range})  # measured in the configuration's pixel convention
    if c.image_shape is not None and data is not None and tuple(data.image_shape) != tuple(c.image_shape):
        raise NcsnTuneError(f"the data is {'x'.join(map(str, data.image_shape))} but {c.source} is for {'x'.join(map(str, c.image_shape))} "
                            "images: audit it with the data it trains on", fields=("data", "config"))
    if c.dim is not None and dim is not None and dim != c.dim:
        raise NcsnTuneError(f"D = {dim} contradicts {c.source}, whose {'x'.join(map(str, c.image_shape))} images have D = {c.dim}",
                            fields=("dim", "config"))
    if data is not None and diameter is None:
        from ..analysis.initial_noise_scale import max_pairwise_distance

        with report.progress() as progress:
            diameter = max_pairwise_distance(data.points(), scale=data.scale, method=opts["method"], device=opts["device"],
                                             progress=progress).distance
    result = audit_config(c, diameter=diameter, dim=dim if dim is not None else (data.dim if data is not None else None),
                          target_overlap=target_overlap)
    if output is not None:
        from ..plots import plot_audit

        save_figure(report, plot_audit(result, derived_schedule(result)), output)
    report.result(result.to_dict())
    report.table(f"Audit of {c.source} ({c.tool}) against Song & Ermon (2020)", ["", "verdict", "it has", "the technique gives", "so"],
                 [[f.technique, f.verdict, f.have, f.paper, f.consequence] for f in result.findings])
    report.notes(result.notes)


@main.command()
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="The tool to write for.")
@path_option("--output", type=click.Path(path_type=Path), required=True,
             help="diffusers: a folder; score-sde: a .py (and .json beside); ncsnv2-yaml: a .yml; edm: a .json.")
@step_size_options(None)
@sampler_options
@click.option("--sampling-levels", type=click.IntRange(min=2), help="Levels the tool's sampler runs, the step derived for them "
              "[default: the tool's own: diffusers' num_inference_steps 2000, a continuous-time score_sde base's model.num_scales; a "
              "discrete-time model (NCSNv2, a discrete score_sde base) samples the schedule's L, its training levels].")
@click.option("--convert", is_flag=True, help="Carry a schedule made for the other pixel range into the format's (diffusers: [0, 1]; "
              "edm: [-1, 1]): every sigma, sigma_min included, scales by the ratio of the widths.")
@click.option("--score-sde-base", default="configs.ve.ncsnv2.cifar10", show_default=True,
              help="The score_sde config module the exported get_config() starts from.")
@click.option("--score-sde-root", type=click.Path(file_okay=False, path_type=Path),
              help="The score_sde checkout: read the base now, to check its image size and sampler.")
@force_option
@json_option
def export(fmt, output, steps_per_scale, step_size, snr, sampler, predictor, corrector, sampling_eps, sampling_levels, convert,
           score_sde_base, score_sde_root, force, as_json, **opts):
    """Write the saved (or given) schedule, and the step for the tool's sampler, for diffusers, score_sde, the NCSNv2 YAML or EDM.

    \b
    ncsn-tune export --format diffusers --output my_scheduler
    ncsn-tune export --format score-sde --output ncsn_tune_cifar10.py --score-sde-root score_sde
    ncsn-tune export --format score-sde --sampler pc --output pc.py --score-sde-base configs.ve.cifar10_ncsnpp_continuous
    """
    from ..interop.export import SUFFIXES, export_schedule

    report = Report(as_json)
    steps = parse_steps(steps_per_scale) if steps_per_scale is not None else [None]
    if len(steps) != 1:
        raise NcsnTuneError("export writes one M", fields="steps_per_scale")
    if fmt == "diffusers":
        if output.exists() and not output.is_dir():
            raise NcsnTuneError(f"{output} is a file; diffusers loads a folder", fields="output")
        check_output(output / "scheduler_config.json", (".json",), force=force)
    else:
        check_output(output, SUFFIXES[fmt], force=force)
        if fmt == "score-sde":
            check_output(output.with_suffix(".json"), (".json",), force=force)
    loop = chosen_sampler(sampler, predictor, corrector, sampling_eps) if typed("sampler", "predictor", "corrector") else None
    if loop is None and typed("sampling_eps") and fmt != "diffusers" and sampler == "ald":
        raise NcsnTuneError("--sampling-eps sets the t grid of score_sde's and diffusers' loops; give the loop (--sampler pc)",
                            fields=("sampling_eps", "sampler"))
    if loop is not None and fmt == "diffusers" and loop.name == "pc":
        raise NcsnTuneError("diffusers runs its own loop (ScoreSdeVePipeline); the sampler option chooses score_sde's", fields="sampler")
    data = read_data(report, opts)
    given = given_from(opts, data, steps_per_scale=steps[0], step_size=step_size, snr=snr)
    with report.progress() as progress:
        written, notes, step = export_schedule(given, fmt, output, sampler=loop, sampling_eps=sampling_eps, sampling_levels=sampling_levels,
                                               convert=convert, score_sde_base=score_sde_base, score_sde_root=score_sde_root,
                                               workdir=workdir(), progress=progress)
    report.result({"format": fmt, "files": written, "step": step.to_dict() if step else None, "notes": notes})
    report.notes(notes)
    report.line(f"Wrote {', '.join(map(str, written))}")
