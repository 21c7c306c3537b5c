"""Options shared by several commands, and turning them into the library's inputs.

Every default comes from the configuration dataclasses (:mod:`ncsn_tune.config`);
options that are not given stay None, so that the resolver
(:mod:`ncsn_tune.tuning`) can tell "not given" from "given".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from ..analysis.noise_schedule import NoiseSchedule
from ..config import AnalysisConfig, help_of
from ..data import SPLITS, Dataset, load_dataset
from ..errors import NcsnTuneError
from ..files import check_output
from ..data.pixel_range import CHOICES as PIXEL_RANGE_CHOICES, DEFAULT as DEFAULT_PIXEL_RANGE
from ..tuning import Given, ScheduleChoice
from .render import Report

A = AnalysisConfig


def path_option(*names: str, **kwargs):
    kwargs.setdefault("type", click.Path(dir_okay=False, path_type=Path))
    return click.option(*names, **kwargs)


def stack(*decorators):
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout; messages go to stderr.")
force_option = click.option("--force", is_flag=True, help="Replace existing output files that ncsn-tune did not write.")

data_options = stack(
    click.option("--data", metavar="cifar10|FILE|DIR", help="Data set: cifar10, a .npy/.npz array or a folder of PNG/JPEG images."),
    click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
                 help="Folder holding cifar-10-batches-py/ [default: $NCSN_TUNE_DATA, else the cache]."),
    click.option("--split", type=click.Choice(SPLITS), default=A.split, show_default=True, help=help_of(A, "split")),
    click.option("--no-download", is_flag=True, help="Never download CIFAR-10; fail if it is not on disk."),
    click.option("--no-rescale", is_flag=True, help="Use array values as stored instead of scaling them to [0, 1]."),
    click.option("--pixel-range", type=click.Choice(PIXEL_RANGE_CHOICES),
                 help="The pixel convention distances and sigmas refer to: the paper's [0, 1], or [-1, 1] (EDM, k-diffusion, "
                 "score_sde with data.centered) [default: the paper's [0, 1]; a schedule file's own range]."),
    click.option("--method", type=click.Choice(["pruned", "blocked"]), default=A.distance_method, show_default=True,
                 help=help_of(A, "distance_method")),
    click.option("--device", default=A.device, show_default=True, help=help_of(A, "device")),
)

schedule_options = stack(
    path_option("--schedule", help="Schedule file (JSON/YAML) [default: the work folder's schedule.json]."),
    click.option("--sigma-max", type=float, help="The largest scale: with --num-scales (or --dim), a schedule from numbers."),
    click.option("--sigma-min", type=float, help=f"The smallest scale [default: the schedule's, else {A.sigma_min} for pixels in [0, 1], "
                 "the same relative to the data in another range]."),
    click.option("--num-scales", type=int, help="Number of scales L (with --sigma-max; alone, re-spaces the chosen schedule)."),
    click.option("--dim", type=int, help="Data dimension D = C*H*W (for the overlap, when no data is given)."),
    click.option("--ratio", "--gamma", "ratio", type=float, help="A bare ratio of adjacent scales instead of a schedule."),
    click.option("--overlap", "target_overlap", type=float, help=f"Target overlap C of adjacent scales [default: {A.target_overlap}]."),
    data_options,
)


def parse_counts(text: str, option: str) -> list[int]:
    """'1,10,100' -> [1, 10, 100] (whole numbers separated by commas)."""
    try:
        return [int(part.strip()) for part in str(text).split(",")]
    except ValueError:
        raise NcsnTuneError(f"{option} takes whole numbers separated by commas (e.g. 1,10,100), got {text!r}") from None


def parse_steps(text: str) -> list[int]:
    """'5' or '1,3,5,10' -> [5] or [1, 3, 5, 10]."""
    values = []
    for part in str(text).split(","):
        try:
            m = int(part.strip())
        except ValueError:
            raise NcsnTuneError(f"--M takes whole numbers separated by commas (e.g. 5 or 1,3,5,10), got {text!r}") from None
        if m < 1:
            raise NcsnTuneError(f"--M must be at least 1 (Langevin steps per scale), got {m}")
        values.append(m)
    return values


def read_data(report: Report, opts: dict[str, Any], split: str | None = None) -> Dataset | None:
    """The data set of --data (None when not given), with progress."""
    if opts.get("data") is None:
        return None
    from ..config import workdir
    from ..tuning.training import saved_data_root

    root, notes = saved_data_root(opts["data"], opts.get("data_root"), workdir=workdir())
    report.notes(notes)
    with report.progress() as progress:
        data = load_dataset(opts["data"], root, split or opts.get("split", A.split),
                            download=not opts.get("no_download"), rescale=not opts.get("no_rescale"), progress=progress,
                            pixel_range=opts.get("pixel_range") or DEFAULT_PIXEL_RANGE)
    for note in data.notes:
        report.warn(note)
    return data


def given_from(opts: dict[str, Any], data: Dataset | None = None, **extra) -> Given:
    """The resolver's :class:`Given` from the shared options (those not given stay None)."""
    return Given(schedule_file=opts.get("schedule"), sigma_max=opts.get("sigma_max"), sigma_min=opts.get("sigma_min"),
                 num_scales=opts.get("num_scales"), dim=opts.get("dim"), ratio=opts.get("ratio"),
                 target_overlap=opts.get("target_overlap"), data=data, method=opts.get("method", A.distance_method),
                 device=opts.get("device", A.device), pixel_range=opts.get("pixel_range"), **extra)


def _option_type(annotation: str):
    first = annotation.split("|")[0].strip()
    return {"bool": bool, "int": int, "float": float}.get(first, str)


def config_options(cls, aliases: dict[str, list[str]] | None = None):
    """One option per dataclass field, with the field's help and default (None = not given), so that
    defaults live only in the dataclass."""
    aliases = aliases or {}

    def decorate(f):
        defaults = cls()
        for fld in reversed(dataclasses.fields(cls)):
            flag = "--" + fld.name.replace("_", "-")
            kind = _option_type(str(fld.type))
            default = getattr(defaults, fld.name)
            text = fld.metadata.get("help", "")
            if default is not None and "[default" not in text:
                text += f" [default: {default}]"
            if kind is bool:
                f = click.option(f"{flag}/--no-{flag[2:]}", fld.name, default=None, help=text)(f)
            else:
                f = click.option(flag, *aliases.get(fld.name, []), fld.name, type=kind, default=None, help=text)(f)
        return f

    return decorate


# ------------------------------------------------------------------------------------------------ figures

figure_output = stack(path_option("--output", required=True, help="The figure to write: .png or .pdf."), force_option)
FIGURE_SUFFIXES = (".png", ".pdf")


def check_figure(output: Path | None, force: bool) -> None:
    if output is not None:
        check_output(output, FIGURE_SUFFIXES, force=force)


def save_figure(report: Report, fig, output: Path) -> Path:
    from ..images import save_figure as write

    write(fig, output, close=True)
    report.line(f"Wrote {output}")
    return output


def require_schedule(choice: ScheduleChoice) -> NoiseSchedule:
    if choice.schedule is None:
        raise NcsnTuneError("this needs a schedule, not a bare ratio", fields="ratio")
    return choice.schedule
