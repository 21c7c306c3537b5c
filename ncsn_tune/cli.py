"""The ``ncsn-tune`` command: formatting and files only; the numbers come from :mod:`ncsn_tune.analysis`.

Each step saves what the next needs in the work folder (``.ncsn-tune/`` or
``$NCSN_TUNE_WORKDIR``) and says which file it wrote or read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .analysis import noise_schedule as t2
from .analysis.initial_noise_scale import max_pairwise_distance
from .analysis.noise_schedule import NoiseSchedule
from .analysis.step_size import optimal_step_size, variance_ratio
from .config import SCHEDULE_FILE, STEP_SIZE_FILE, AnalysisConfig, TrainConfig, workdir
from .data import SPLITS, Dataset, load_dataset
from .errors import NcsnTuneError
from .files import load_schedule, save_schedule, save_step_size

DEFAULTS = AnalysisConfig()
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


class CleanErrors(click.Group):
    """Bad input ends with one line on stderr and exit status 2, never a traceback."""

    def main(self, args=None, prog_name=None, **kwargs):  # noqa: D401
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            err.print("Aborted.")
            sys.exit(130)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.format_message()}", err=True)
            sys.exit(2)
        except NcsnTuneError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            err.print("Interrupted.")
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=CleanErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ncsn-tune")
def main() -> None:
    """Noise scales and Langevin step sizes for score-based models, from theory (Song & Ermon 2020).

    \b
    ncsn-tune sigmas --data cifar10     Techniques 1-2: sigma_max, gamma, L, the schedule
    ncsn-tune step-size --M 5           Technique 4: the Langevin step size eps for M steps
    """


# --------------------------------------------------------------------------- helpers


def positive_float(name: str, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise NcsnTuneError(f"{name} must be a positive finite number, got {value}")
    return value


def parse_steps(text: str) -> list[int]:
    """'5' or '1,3,5,10' -> [5] or [1, 3, 5, 10]."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            m = int(part)
        except ValueError:
            raise NcsnTuneError(f"--M takes whole numbers separated by commas (e.g. 5 or 1,3,5,10), got {text!r}") from None
        if m < 1:
            raise NcsnTuneError(f"--M must be at least 1 (Langevin steps per scale), got {m}")
        values.append(m)
    return values


@contextmanager
def progress_bar(enabled: bool = True):
    """A rich progress bar on stderr; yields a callback(done, total, description)."""
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(done: int, total: int | None, description: str = "working") -> None:
            if description not in tasks:
                tasks[description] = bar.add_task(description, total=total)
            bar.update(tasks[description], completed=done, total=total)

        yield update


def data_options(f):
    f = click.option(
        "--device", default=DEFAULTS.device, show_default=True, help="Where to compute sigma_max: cpu, cuda, cuda:N or auto."
    )(f)
    f = click.option(
        "--method",
        type=click.Choice(["pruned", "blocked"]),
        default=DEFAULTS.distance_method,
        show_default=True,
        help="Exact sigma_max: pruned (skips pairs that provably cannot win) or blocked (every pair).",
    )(f)
    f = click.option("--no-rescale", is_flag=True, help="Use array values as stored instead of scaling them to [0, 1].")(f)
    f = click.option("--no-download", is_flag=True, help="Never download CIFAR-10; fail if it is not on disk.")(f)
    f = click.option(
        "--split", type=click.Choice(SPLITS), default=DEFAULTS.split, show_default=True, help="CIFAR-10 split to read."
    )(f)
    f = click.option(
        "--data-root",
        type=click.Path(file_okay=False, path_type=Path),
        help="Folder holding cifar-10-batches-py/ (else $NCSN_TUNE_DATA, else the cache).",
    )(f)
    f = click.option("--data", "data_spec", metavar="cifar10|FILE|DIR", help="Data set: cifar10, a .npy/.npz array or an image folder.")(f)
    return f


def read_data(spec: str, data_root, split, no_download, no_rescale, quiet) -> Dataset:
    """The data set of --data, with a progress bar unless ``quiet``."""
    with progress_bar(not quiet) as cb:
        dataset = load_dataset(spec, data_root, split, download=not no_download, rescale=not no_rescale, progress=cb)
    return dataset


def measure_sigma_max(dataset: Dataset, quiet: bool, method: str, device: str) -> dict[str, Any]:
    """Technique 1 on ``dataset``, as the fields the outputs report."""
    with progress_bar(not quiet) as cb:
        result = max_pairwise_distance(
            dataset.points(),
            scale=dataset.scale,
            method=method,
            device=device,
            progress=cb,
        )
    return {
        **dataset.describe(),
        "sigma_max": result.distance,
        "pair": list(result.pair),
        "pairs_evaluated": result.pairs_evaluated,
        "pairs_total": result.pairs_total,
        "method": result.method,
        "seconds": result.seconds,
    }


def schedule_summary(schedule: NoiseSchedule) -> dict[str, Any]:
    return {
        "sigma_max": schedule.sigma_max,
        "sigma_min": schedule.sigma_min,
        "num_scales": schedule.num_scales,
        "gamma": schedule.gamma,
        "ratio": schedule.ratio,
        "overlap": schedule.overlap,
        "target_overlap": schedule.target_overlap,
        "dim": schedule.dim,
    }


def fmt(value: Any, digits: int = 6) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


# --------------------------------------------------------------------------- sigmas


@main.command()
@data_options
@click.option("--sigma-max", type=float, help="Use this sigma_max instead of computing it from --data.")
@click.option("--dim", type=int, help="Data dimension D = C*H*W (with --sigma-max and no --data).")
@click.option("--sigma-min", type=float, default=DEFAULTS.sigma_min, show_default=True, help="Smallest noise scale.")
@click.option("--overlap", "target_overlap", type=float, default=DEFAULTS.target_overlap, show_default=True, help="Target overlap C of adjacent scales.")
@click.option("--num-scales", type=int, help="Use L scales instead of the equation's L; the overlap they achieve is reported.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help=f"Schedule file to write [default: WORKDIR/{SCHEDULE_FILE}].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def sigmas(data_spec, data_root, split, no_download, no_rescale, method, device, sigma_max, dim, sigma_min, target_overlap, num_scales, output, as_json):
    """Techniques 1 and 2: sigma_max (exact), gamma, the number of scales L and the schedule.

    \b
    ncsn-tune sigmas --data cifar10
    ncsn-tune sigmas --sigma-max 50 --dim 3072 --num-scales 232
    """
    positive_float("--sigma-max", sigma_max)
    positive_float("--sigma-min", sigma_min)
    if not (math.isfinite(target_overlap) and 0 < target_overlap < 1):
        raise NcsnTuneError(f"--overlap must lie strictly between 0 and 1 (the paper uses 0.5), got {target_overlap}")
    if num_scales is not None and num_scales < 2:
        raise NcsnTuneError(f"--num-scales must be at least 2, got {num_scales}")
    if dim is not None and dim < 1:
        raise NcsnTuneError(f"--dim must be at least 1, got {dim}")
    if data_spec is None and (sigma_max is None or dim is None):
        raise NcsnTuneError("give --data (e.g. --data cifar10) or both --sigma-max and --dim")

    source: dict[str, Any] = {}
    if data_spec is not None:
        dataset = read_data(data_spec, data_root, split, no_download, no_rescale, as_json)
        if dim is not None and dim != dataset.dim:
            raise NcsnTuneError(f"--dim {dim} contradicts the data's dimension {dataset.dim}; leave --dim out")
        dim = dataset.dim
        if sigma_max is None:
            source = measure_sigma_max(dataset, as_json, method, device)
            sigma_max = source["sigma_max"]
        else:
            source = {**dataset.describe(), "sigma_max_given": True}
    else:
        source = {"sigma_max_given": True}
    if sigma_min >= sigma_max:
        raise NcsnTuneError(f"--sigma-min ({sigma_min:g}) must be smaller than sigma_max ({sigma_max:g})")

    try:
        gamma = t2.solve_gamma(dim, target_overlap)
    except NcsnTuneError:
        if num_scales is None:
            raise
        gamma = None
    if num_scales is None:
        schedule = t2.schedule_from_overlap(sigma_max, dim, sigma_min, target_overlap, source)
        equation_scales = schedule.num_scales
    else:
        equation_scales = None if gamma is None else t2.num_scales_for_ratio(sigma_max, sigma_min, gamma)
        schedule = NoiseSchedule(sigma_max, sigma_min, num_scales, dim, target_overlap, gamma, {**source, "num_scales_given": True})

    path = output or workdir() / SCHEDULE_FILE
    save_schedule(schedule, path)

    summary = schedule_summary(schedule)
    if data_spec is not None:
        summary.update(num_points=source.get("num_points"), pair=source.get("pair"), pixel_scale=source.get("pixel_scale"))
    summary.update(equation_num_scales=equation_scales, schedule_file=str(path), sigmas=schedule.sigmas.tolist())
    if as_json:
        click.echo(json.dumps(summary))
        return

    table = Table(title="Noise schedule (Song & Ermon 2020, Techniques 1-2)", show_lines=False)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("how", style="dim")
    if data_spec is not None:
        table.add_row("data", str(source.get("name")), f"{source.get('source')} ({source.get('split') or 'all files'})")
        table.add_row("points N", fmt(source.get("num_points")), f"pixel scale: {source.get('pixel_scale')}")
    table.add_row("dimension D", fmt(dim), "C*H*W")
    if "pair" in source:
        table.add_row(
            "sigma_max", f"{sigma_max:.6f}",
            f"T1: exact max distance, pair {tuple(source['pair'])}; {source['method']}: "
            f"{source['pairs_evaluated']:,} of {source['pairs_total']:,} pairs in {source['seconds']:.2f} s",
        )
    else:
        table.add_row("sigma_max", f"{sigma_max:.6g}", "given")
    table.add_row("sigma_min", fmt(sigma_min), "given" if sigma_min != DEFAULTS.sigma_min else "paper default")
    table.add_row("target overlap C", fmt(target_overlap), "T2 equation target")
    table.add_row("gamma", fmt(gamma, 8), "T2: root of Phi(sqrt(2D)(g-1)+3g) - Phi(sqrt(2D)(g-1)-3g) = C")
    if num_scales is None:
        table.add_row("num_scales L", str(schedule.num_scales), "ceil(log(sigma_max/sigma_min)/log gamma) + 1")
    else:
        table.add_row("num_scales L", str(schedule.num_scales), f"given (the equation gives {fmt(equation_scales)})")
    table.add_row("realised ratio", fmt(schedule.ratio, 8), "(sigma_max/sigma_min)^(1/(L-1))")
    table.add_row("realised overlap", fmt(schedule.overlap, 6), "what the realised ratio achieves")
    sig = schedule.sigmas
    shown = ", ".join(f"{s:.4g}" for s in sig[:3]) + ", ..., " + ", ".join(f"{s:.4g}" for s in sig[-3:])
    table.add_row("sigmas", shown, "descending, geometric")
    out.print(table)
    out.print(f"Saved the schedule to [bold]{path}[/bold]; next: ncsn-tune step-size --M {DEFAULTS.steps_per_scale}")


# --------------------------------------------------------------------------- step-size


def schedule_source(schedule_file, sigma_max, sigma_min, num_scales, gamma, data_args, target_overlap, quiet):
    """(gamma, sigma_min, description, schedule-or-None, schedule_file-or-None) from whichever source was given."""
    data_spec, data_root, split, no_download, no_rescale, method, device = data_args
    if gamma is not None:
        if not (math.isfinite(gamma) and gamma > 1):
            raise NcsnTuneError(f"--gamma must be a finite number > 1, got {gamma}")
        return gamma, sigma_min or DEFAULTS.sigma_min, "--gamma", None, None
    if sigma_max is not None or num_scales is not None:
        if sigma_max is None or num_scales is None:
            raise NcsnTuneError("give --sigma-max and --num-scales together (or --gamma, --schedule or --data)")
        sm = sigma_min or DEFAULTS.sigma_min
        if sm >= sigma_max:
            raise NcsnTuneError(f"--sigma-min ({sm:g}) must be smaller than --sigma-max ({sigma_max:g})")
        ratio = t2.ratio_for_num_scales(sigma_max, sm, num_scales)
        return ratio, sm, f"sigma_max {sigma_max:g}, sigma_min {sm:g}, L = {num_scales}", None, None
    if data_spec is not None:
        dataset = read_data(data_spec, data_root, split, no_download, no_rescale, quiet)
        source = measure_sigma_max(dataset, quiet, method, device)
        sm = sigma_min or DEFAULTS.sigma_min
        schedule = t2.schedule_from_overlap(source["sigma_max"], dataset.dim, sm, target_overlap, source)
        return schedule.ratio, sm, f"derived from {data_spec}", schedule, None
    path = schedule_file or workdir() / SCHEDULE_FILE
    if not Path(path).exists():
        if schedule_file is None:
            raise NcsnTuneError(
                f"no schedule given and {path} does not exist: run 'ncsn-tune sigmas --data ...' first, "
                "or give --schedule FILE, --sigma-max with --num-scales, --gamma, or --data"
            )
        raise NcsnTuneError(f"schedule file {path} does not exist")
    schedule = load_schedule(Path(path))
    if sigma_min is not None and sigma_min != schedule.sigma_min:
        raise NcsnTuneError(f"--sigma-min {sigma_min:g} contradicts the schedule's sigma_min {schedule.sigma_min:g}; leave it out")
    return schedule.ratio, schedule.sigma_min, f"schedule file {path}", schedule, Path(path)


@main.command("step-size")
@click.option("--M", "steps", default=str(DEFAULTS.steps_per_scale), show_default=True, help="Langevin steps per scale: one value or a list, e.g. 1,3,5,10.")
@click.option("--schedule", "schedule_file", type=click.Path(dir_okay=False, path_type=Path), help=f"Schedule file [default: WORKDIR/{SCHEDULE_FILE}].")
@click.option("--sigma-max", type=float, help="With --num-scales: the schedule from numbers.")
@click.option("--sigma-min", type=float, help=f"Smallest scale [default: the schedule's, else {DEFAULTS.sigma_min}].")
@click.option("--num-scales", type=int, help="Number of scales L (with --sigma-max).")
@click.option("--gamma", type=float, help="Ratio of adjacent scales, instead of a schedule.")
@data_options
@click.option("--overlap", "target_overlap", type=float, default=DEFAULTS.target_overlap, show_default=True, help="Target overlap C (with --data).")
@click.option("--step-size", "given_step", type=float, help="Also report the ratio at this eps (e.g. a published 6.2e-6).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help=f"Step-size file to write (one M) [default: WORKDIR/{STEP_SIZE_FILE}].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def step_size(steps, schedule_file, sigma_max, sigma_min, num_scales, gamma, data_spec, data_root, split, no_download, no_rescale, method, device, target_overlap, given_step, output, as_json):
    """Technique 4: the eps that brings Proposition 3's s^2/sigma^2 closest to 1 for M steps per scale.

    \b
    ncsn-tune step-size --M 5                     (uses the schedule 'sigmas' saved)
    ncsn-tune step-size --M 1,3,5,10 --sigma-max 50 --num-scales 232
    """
    ms = parse_steps(steps)
    positive_float("--sigma-max", sigma_max)
    positive_float("--sigma-min", sigma_min)
    positive_float("--step-size", given_step)
    if num_scales is not None and num_scales < 2:
        raise NcsnTuneError(f"--num-scales must be at least 2, got {num_scales}")
    data_args = (data_spec, data_root, split, no_download, no_rescale, method, device)
    ratio, sm, described, schedule, used_file = schedule_source(
        schedule_file, sigma_max, sigma_min, num_scales, gamma, data_args, target_overlap, as_json
    )
    results = [optimal_step_size(ratio, m, sm) for m in ms]
    saved = None
    if len(ms) == 1:
        saved = save_step_size(results[0], output or workdir() / STEP_SIZE_FILE, used_file)

    if as_json:
        rows = []
        for r in results:
            row = r.to_dict()
            if given_step is not None:
                row["given_step_size"] = given_step
                row["given_variance_ratio"] = variance_ratio(given_step, ratio, r.steps_per_scale, sm)
            rows.append(row)
        click.echo(json.dumps(rows[0] if len(rows) == 1 else rows))
        return

    if used_file is not None:
        out.print(f"Using the schedule in [bold]{used_file}[/bold]")
    table = Table(title=f"Langevin step size (Technique 4), gamma = {ratio:.8g}, sigma_min = {sm:g}")
    table.add_column("M", justify="right")
    table.add_column("eps (optimal)", justify="right")
    table.add_column("s^2/sigma^2 at eps", justify="right")
    if schedule is not None:
        table.add_column("alpha at sigma_max", justify="right")
    if given_step is not None:
        table.add_column(f"s^2/sigma^2 at eps = {given_step:g}", justify="right")
    for r in results:
        row = [str(r.steps_per_scale), f"{r.step_size:.6e}", f"{r.variance_ratio:.6f}"]
        if schedule is not None:
            row.append(f"{r.step_size * (schedule.sigma_max / sm) ** 2:.4g}")
        if given_step is not None:
            row.append(f"{variance_ratio(given_step, ratio, r.steps_per_scale, sm):.6f}")
        table.add_row(*row)
    out.print(table)
    out.print(f"Schedule: {described}.")
    out.print(
        "For gamma > 1 the ratio s^2/sigma^2 stays above 1 for every eps, so the optimum is its minimum "
        "(Proposition 3: a single-Gaussian model, exact under that assumption)."
    )
    if saved is not None:
        out.print(f"Saved the step size to [bold]{saved}[/bold].")


if __name__ == "__main__":  # pragma: no cover
    main()


# --------------------------------------------------------------------------- train

def _option_type(annotation: str):
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if annotation.split("|")[0].strip() == name:
            return kind
    return str


def config_options(cls, aliases: dict[str, list[str]] | None = None):
    """One click option per dataclass field (default None = not given), so defaults live only in the dataclass."""
    aliases = aliases or {}

    def decorate(f):
        defaults = cls()
        for fld in reversed(dataclasses.fields(cls)):
            flag = "--" + fld.name.replace("_", "-")
            kind = _option_type(str(fld.type))
            default = getattr(defaults, fld.name)
            doc = f"[default: {default}]"
            if kind is bool:
                f = click.option(f"{flag}/--no-{flag[2:]}", fld.name, default=None, help=doc)(f)
            else:
                f = click.option(flag, *aliases.get(fld.name, []), fld.name, type=kind, default=None, help=doc)(f)
        return f

    return decorate


def _given(options: dict) -> dict:
    return {k: v for k, v in options.items() if v is not None}


def _train_progress(total: int, start: int, disable: bool = False):
    from rich.progress import MofNCompleteColumn

    return Progress(
        TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} it/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err,
        disable=disable,
    )


def launch_torchrun(processes: int) -> None:
    """Run this same command under torchrun with ``processes`` processes (``--gpus`` removed), and exit with its status."""
    import subprocess

    args = sys.argv[1:]
    cleaned, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--gpus":
            skip = True
            continue
        if a.startswith("--gpus="):
            continue
        cleaned.append(a)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m", "ncsn_tune", *cleaned]
    err.print("Launching: " + " ".join(command[1:]))
    sys.exit(subprocess.call(command))


@main.command()
@config_options(TrainConfig, {"steps_per_scale": ["--M"]})
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), help="Run folder [default: runs/<data name>].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), help="YAML configuration: ours, or an official NCSNv2 config (e.g. configs/cifar10.yml).")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its newest checkpoint (--steps is then the total to reach).")
@click.option("--init-from", type=click.Path(dir_okay=False, path_type=Path), help="Start from the weights (and EMA) of an official NCSNv2 checkpoint.")
@click.option("--dry-run", is_flag=True, help="Print the resolved configuration and the parameter count; do not train.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print JSON.")
@click.option("--gpus", type=int, help="Train on N GPUs (processes with --device cpu): runs torchrun --nproc_per_node N -m ncsn_tune train ...")
def train(output, config_file, resume, init_from, dry_run, as_json, gpus, **options):
    """Train NCSNv2 with the derived noise schedule and step size (Techniques 1-5).

    \b
    ncsn-tune train                                  (uses what sigmas/step-size saved, or derives it)
    ncsn-tune train --data cifar10 --output runs/cifar10 --steps 300000
    ncsn-tune train --output runs/cifar10 --resume --steps 400000
    ncsn-tune train --config ncsnv2/configs/cifar10.yml --dry-run
    """
    from .config import load_train_config, save_config
    from .run_setup import plan_run

    if gpus is not None:
        if gpus < 1:
            raise NcsnTuneError(f"--gpus must be at least 1, got {gpus}")
        if gpus > 1 and "WORLD_SIZE" not in os.environ:
            return launch_torchrun(gpus)
    rank = int(os.environ.get("RANK", "0"))
    if "LOCAL_RANK" in os.environ:  # under torchrun: each rank on its own GPU from the start (T1 included)
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if rank != 0:  # one voice: rank 0 prints and writes the run folder's files
        out.quiet = err.quiet = True
        as_json = False
    given = _given(options)
    if resume:
        if output is None:
            raise NcsnTuneError("--resume needs --output, the run folder to continue")
        saved = output / "config.yaml"
        if not saved.exists():
            raise NcsnTuneError(f"{output} has no config.yaml: it is not a run folder to resume")
        base = load_train_config(saved)
    elif config_file is not None:
        base = load_train_config(config_file)
    else:
        base = TrainConfig()
    try:
        config = dataclasses.replace(base, **given).validate()
    except TypeError as exc:
        raise NcsnTuneError(str(exc)) from None
    run_dir = output or Path("runs") / Path(config.data).name.replace(".npy", "").replace(".npz", "")

    with progress_bar(not as_json) as cb:
        plan = plan_run(config, cb)
    config = plan.config

    import torch  # noqa: F401  (training needs torch; the analysis commands do not)

    from .model.checkpoint import load_checkpoint, load_official_weights
    from .model.network import count_parameters
    from .model.train import Trainer, build_model

    num_parameters = count_parameters(build_model(config, plan.train.image_shape, plan.schedule.sigmas))
    summary = {
        "num_parameters": num_parameters, "num_scales": plan.schedule.num_scales, "sigma_max": plan.schedule.sigma_max,
        "sigma_min": plan.schedule.sigma_min, "ratio": plan.schedule.ratio, "overlap": plan.schedule.overlap,
        "step_size": plan.step_size, "steps_per_scale": config.steps_per_scale, "batch_size": config.batch_size,
        "steps": config.steps, "run_dir": str(run_dir), "notes": plan.notes, "config": dataclasses.asdict(config),
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        table = Table(title=f"Training configuration ({run_dir})")
        table.add_column("setting")
        table.add_column("value", justify="right")
        for key in ("data", "batch_size", "steps", "lr", "beta1", "beta2", "adam_eps", "ema_rate", "ngf", "architecture", "device", "seed"):
            table.add_row(key, str(getattr(config, key)))
        table.add_row("image shape", "x".join(str(s) for s in plan.train.image_shape) + f" ({plan.train.num_points} images)")
        table.add_row("sigma_max / sigma_min", f"{plan.schedule.sigma_max:.6g} / {plan.schedule.sigma_min:g}")
        table.add_row("num_scales L (overlap)", f"{plan.schedule.num_scales} ({plan.schedule.overlap:.4f})")
        table.add_row("M, step size eps", f"{config.steps_per_scale}, {plan.step_size:.6e}")
        table.add_row("parameters", f"{num_parameters:,}")
        table.add_row("speed switches", ", ".join(k for k in ("bf16", "channels_last", "fused_adam", "compile", "cuda_graphs") if getattr(config, k)) + " (GPU only)")
        out.print(table)
        for note in plan.notes:
            out.print(f"- {note}")
    if dry_run:
        return

    resume_state = None
    if resume:
        resume_state = load_checkpoint(run_dir)
        out.print(f"Resuming from {resume_state['path']} (step {resume_state['step']}).")
        if resume_state["step"] >= config.steps:
            raise NcsnTuneError(f"the run is already at step {resume_state['step']}; give --steps above that to train further")
        if resume_state["schedule"]["num_scales"] != plan.schedule.num_scales or abs(resume_state["schedule"]["sigma_max"] - plan.schedule.sigma_max) > 1e-12 * plan.schedule.sigma_max:
            raise NcsnTuneError("the checkpoint was trained with another noise schedule than this configuration resolves to")
    elif any(run_dir.glob("checkpoint_*.pt")):
        raise NcsnTuneError(f"{run_dir} already holds checkpoints: pass --resume to continue it, or choose another --output")
    init = load_official_weights(init_from) if init_from is not None else None

    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        save_schedule(plan.schedule, run_dir / "schedule.json")
        out.print(f"Run folder: {run_dir} (config.yaml, schedule.json, metrics.jsonl, checkpoints, samples)")

    test = None if plan.test is None else (plan.test.values, plan.test.scale, plan.test.offset)
    with _train_progress(config.steps, 0, disable=rank != 0) as bar:
        task = bar.add_task("train", total=config.steps, loss="-", speed="-")

        def report(event: dict) -> None:
            kind = event["event"]
            if kind == "start":
                bar.update(task, completed=event["step"])
                err.print(f"device {event['device']} ({event['processes']} process{'es' if event['processes'] > 1 else ''}), "
                          f"set-up (compile, CUDA graph capture) {event['setup_seconds']:.1f} s")
            elif kind == "log":
                bar.update(task, completed=event["step"], loss=f"{event['loss']:.2f}", speed=f"{event['it_per_s']:.1f}")
            elif kind == "eval":
                err.print(f"step {event['step']}: held-out DSM loss {event['eval_loss']:.3f}")
            elif kind == "samples":
                err.print(f"step {event['step']}: samples in {event['path']}")
            elif kind == "checkpoint":
                bar.update(task, completed=event["step"])
            elif kind == "stopped":
                err.print(f"{event['signal']}: saved a checkpoint at step {event['step']} and stopped")

        trainer = Trainer(config, plan.schedule, plan.step_size, (plan.train.values, plan.train.scale, plan.train.offset), test, run_dir,
                          resume_state=resume_state, init_weights=init, callback=report)
        result = trainer.run()
    out.print(f"Trained to step {result['step']} in {result['seconds']:.1f} s; checkpoints and metrics in {run_dir}.")


# --------------------------------------------------------------------------- sample

@main.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="A run folder (its newest checkpoint) or a checkpoint file.")
@click.option("--num", type=int, default=64, show_default=True, help="Number of samples.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("samples.png"), show_default=True, help="PNG grid of the samples.")
@click.option("--npz", type=click.Path(dir_okay=False, path_type=Path), help="Also save the raw samples: 'uint8' (N,H,W,C) and 'float' (N,C,H,W).")
@click.option("--M", "steps_per_scale", type=int, help="Langevin steps per scale [default: the run's].")
@click.option("--step-size", type=float, help="eps [default: the run's, or Proposition 3's optimum when M or the schedule changes].")
@click.option("--schedule", "schedule_file", type=click.Path(dir_okay=False, path_type=Path), help="Sample with this schedule file instead of the run's.")
@click.option("--num-scales", type=int, help="Sample with L geometric scales between the schedule's ends.")
@click.option("--no-denoise", is_flag=True, help="Leave out the final denoising step.")
@click.option("--no-ema", is_flag=True, help="Use the raw weights instead of the EMA (Technique 5).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=int, default=100, show_default=True)
@click.option("--compile/--no-compile", "use_compile", default=None,
              help="torch.compile the network (GPU only; ~30 s of compiling, then 1.7x the images/s at batch 1000 on an H100) "
                   "[default: on from 1,000 samples].")
@click.option("--diagnostics", type=click.Path(dir_okay=False, path_type=Path), help="Write per-scale diagnostics here (.json, or a .png plot).")
@click.option("--chain", type=click.Path(dir_okay=False, path_type=Path),
              help="One chain from noise to image: a PNG strip, or an animated GIF when the name ends in .gif.")
@click.option("--json", "as_json", is_flag=True)
def sample(checkpoint, num, output, npz, steps_per_scale, step_size, schedule_file, num_scales, no_denoise, no_ema, seed, device,
           batch_size, use_compile, diagnostics, chain, as_json):
    """Annealed Langevin dynamics from a trained model (uniform start, final denoising step, EMA weights).

    \b
    ncsn-tune sample --checkpoint runs/cifar10 --num 64 --output samples.png
    ncsn-tune sample --checkpoint runs/cifar10 --M 3          (eps re-derived for M = 3)
    """
    if num < 1 or batch_size < 1:
        raise NcsnTuneError("--num and --batch-size must be at least 1")
    if steps_per_scale is not None and steps_per_scale < 1:
        raise NcsnTuneError(f"--M must be at least 1, got {steps_per_scale}")
    positive_float("--step-size", step_size)
    if num_scales is not None and num_scales < 2:
        raise NcsnTuneError(f"--num-scales must be at least 2, got {num_scales}")
    import numpy as np

    from .model.generate import Diagnostics, generate, load_model, plan_sampling, to_uint8
    from .model.train import image_grid, resolve_device, save_png

    if use_compile is None:  # compiling pays for itself from about a minute of sampling
        use_compile = num >= 1000
    dev = resolve_device(device)
    model, state = load_model(checkpoint, dev, use_ema=not no_ema)
    schedule = load_schedule(schedule_file) if schedule_file is not None else None
    plan = plan_sampling(state, schedule, num_scales, steps_per_scale, step_size, not no_denoise)
    diag = Diagnostics(plan.schedule.num_scales, plan.schedule.dim)
    with progress_bar(not as_json) as cb:
        samples = generate(model, plan, num, batch_size, seed, fast=True, compile=use_compile, progress=cb, diagnostics=diag,
                           trace_chain=chain is not None)
    save_png(image_grid(samples), output)
    if npz is not None:
        npz.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(npz, uint8=to_uint8(samples), float=samples.numpy())
    summary = diag.summary()
    if diagnostics is not None:
        if diagnostics.suffix.lower() == ".png" or diagnostics.suffix.lower() == ".pdf":
            from .plots import plot_sampling_diagnostics

            plot_sampling_diagnostics(summary, plan.schedule.dim).savefig(diagnostics, dpi=150, bbox_inches="tight")
        else:
            from .files import write_mapping

            write_mapping(diagnostics, summary)
    if chain is not None and diag.frames:
        import torch

        if chain.suffix.lower() == ".gif":
            from .model.train import save_gif

            save_gif(diag.frames, chain)
        else:
            save_png(image_grid(torch.tensor(np.stack(diag.frames)), columns=len(diag.frames)), chain)
    result = {"checkpoint": state["path"], "step": state["step"], "num": num, "output": str(output), "npz": str(npz) if npz else None,
              "num_scales": plan.schedule.num_scales, "steps_per_scale": plan.steps_per_scale, "step_size": plan.step_size,
              "denoise": plan.denoise, "ema": not no_ema, "notes": plan.notes, "diagnostics": summary}
    if as_json:
        click.echo(json.dumps(result))
        return
    out.print(f"Sampled {num} images from {state['path']} (step {state['step']}) into {output}" + (f" and {npz}" if npz else ""))
    for note in plan.notes:
        out.print(f"- {note}")
    table = Table(title="Per-scale diagnostics (after each scale's M steps)")
    for col in ("scale i", "sigma", "mean ||x||", "sigma ||s|| / sqrt(D)"):
        table.add_column(col, justify="right")
    L = plan.schedule.num_scales
    for i in sorted({0, L // 4, L // 2, 3 * L // 4, L - 1}):
        table.add_row(str(i), f"{summary['sigmas'][i]:.4g}", f"{summary['image_norm'][i]:.2f}", f"{summary['score_norm_times_sigma_over_sqrt_dim'][i]:.3f}")
    out.print(table)
    out.print("sigma ||s|| / sqrt(D) near 1: the chain is at the noise level the model expects (Proposition 3's picture).")


# --------------------------------------------------------------------------- plot and simulate

def schedule_options(f):
    f = click.option("--overlap", "target_overlap", type=float, default=DEFAULTS.target_overlap, show_default=True, help="Target overlap C (with --data).")(f)
    f = data_options(f)
    f = click.option("--dim", type=int, help="Data dimension D (with --sigma-max and --num-scales).")(f)
    f = click.option("--num-scales", type=int, help="Number of scales L (with --sigma-max).")(f)
    f = click.option("--sigma-min", type=float, help=f"Smallest scale [default: the schedule's, else {DEFAULTS.sigma_min}].")(f)
    f = click.option("--sigma-max", type=float, help="With --num-scales and --dim: a schedule from numbers.")(f)
    f = click.option("--schedule", "schedule_file", type=click.Path(dir_okay=False, path_type=Path), help=f"Schedule file [default: WORKDIR/{SCHEDULE_FILE}].")(f)
    return f


def schedule_from_options(schedule_file, sigma_max, sigma_min, num_scales, dim, data_args, target_overlap, quiet) -> tuple[NoiseSchedule, str]:
    """A NoiseSchedule from a file, numbers or data (the same sources as step-size), and where it came from."""
    positive_float("--sigma-max", sigma_max)
    positive_float("--sigma-min", sigma_min)
    if sigma_max is not None or num_scales is not None:
        if sigma_max is None or num_scales is None or dim is None:
            raise NcsnTuneError("give --sigma-max, --num-scales and --dim together (or --schedule or --data)")
        if dim < 1 or num_scales < 2:
            raise NcsnTuneError("--dim must be at least 1 and --num-scales at least 2")
        sm = sigma_min or DEFAULTS.sigma_min
        if sm >= sigma_max:
            raise NcsnTuneError(f"--sigma-min ({sm:g}) must be smaller than --sigma-max ({sigma_max:g})")
        return t2.schedule_from_num_scales(sigma_max, dim, num_scales, sm), f"sigma_max {sigma_max:g}, L = {num_scales}, D = {dim}"
    _, _, described, schedule, _ = schedule_source(schedule_file, None, sigma_min, None, None, data_args, target_overlap, quiet)
    return schedule, described


@main.group()
def plot():
    """Figures (PNG or PDF by the --output suffix): step-size, schedule, overlap."""


def _save(fig, output: Path, quiet: bool = False) -> None:
    """Write a figure; the message goes to stderr when stdout carries JSON."""
    if output.suffix.lower() not in (".png", ".pdf"):
        raise NcsnTuneError(f"--output must end in .png or .pdf, got {output.name}")
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=200, bbox_inches="tight")
    (err if quiet else out).print(f"Wrote {output}")


@plot.command("step-size")
@schedule_options
@click.option("--gamma", type=float, help="Ratio of adjacent scales, instead of a schedule.")
@click.option("--M", "steps", default="1,3,5,10", show_default=True, help="The values of M to draw.")
@click.option("--mark", type=float, help="Draw this eps (e.g. a published 6.2e-6) as a line.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def plot_step_size_cmd(schedule_file, sigma_max, sigma_min, num_scales, dim, data_spec, data_root, split, no_download, no_rescale, method, device, target_overlap, gamma, steps, mark, output):
    """s^2/sigma^2 against eps for several M, the optimum of each marked (Technique 4)."""
    from .plots import plot_step_size

    ms = parse_steps(steps)
    positive_float("--mark", mark)
    if gamma is not None:
        if not (math.isfinite(gamma) and gamma > 1):
            raise NcsnTuneError(f"--gamma must be a finite number > 1, got {gamma}")
        ratio, sm = gamma, sigma_min or DEFAULTS.sigma_min
    else:
        schedule, _ = schedule_from_options(schedule_file, sigma_max, sigma_min, num_scales, dim,
                                            (data_spec, data_root, split, no_download, no_rescale, method, device), target_overlap, False)
        ratio, sm = schedule.ratio, schedule.sigma_min
    fig = plot_step_size(ratio, sm, ms, mark)
    _save(fig, output)
    for o in fig.optima:
        out.print(f"M = {o.steps_per_scale}: eps = {o.step_size:.6e}, s^2/sigma^2 = {o.variance_ratio:.6f}")


@plot.command("schedule")
@schedule_options
@click.option("--compare", "compare_file", type=click.Path(dir_okay=False, path_type=Path), help="A second schedule file, drawn beside.")
@click.option("--compare-num-scales", type=int, help="A second schedule with the same ends and this many scales (e.g. the published 232).")
@click.option("--M", "steps", type=int, default=DEFAULTS.steps_per_scale, show_default=True, help="M for the step size alpha_i drawn.")
@click.option("--step-size", "given_step", type=float, help="eps for alpha_i [default: Proposition 3's optimum for M].")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def plot_schedule_cmd(schedule_file, sigma_max, sigma_min, num_scales, dim, data_spec, data_root, split, no_download, no_rescale, method, device, target_overlap, compare_file, compare_num_scales, steps, given_step, output):
    """Noise scales against their index with alpha_i and the overlap; two schedules side by side."""
    from .plots import plot_schedule

    schedule, described = schedule_from_options(schedule_file, sigma_max, sigma_min, num_scales, dim,
                                                (data_spec, data_root, split, no_download, no_rescale, method, device), target_overlap, False)
    schedules, labels = [schedule], [f"L = {schedule.num_scales}"]
    if compare_file is not None:
        schedules.append(load_schedule(compare_file))
        labels.append(f"{compare_file.name}: L = {schedules[-1].num_scales}")
    if compare_num_scales is not None:
        schedules.append(t2.schedule_from_num_scales(schedule.sigma_max, schedule.dim, compare_num_scales, schedule.sigma_min))
        labels.append(f"L = {compare_num_scales}")
    if steps < 1:
        raise NcsnTuneError(f"--M must be at least 1, got {steps}")
    eps = given_step or optimal_step_size(schedule.ratio, steps, schedule.sigma_min).step_size
    _save(plot_schedule(schedules, eps, labels), output)
    for s, label in zip(schedules, labels):
        out.print(f"{label}: ratio {s.ratio:.6f}, overlap {s.overlap:.4f}")


@plot.command("overlap")
@schedule_options
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def plot_overlap_cmd(schedule_file, sigma_max, sigma_min, num_scales, dim, data_spec, data_root, split, no_download, no_rescale, method, device, target_overlap, output):
    """The overlap C against gamma for the data's dimension, the chosen gamma marked (Technique 2)."""
    from .plots import plot_overlap

    if dim is not None and sigma_max is None and num_scales is None and data_spec is None and schedule_file is None:
        gamma = t2.solve_gamma(dim, target_overlap)
        fig = plot_overlap(dim, gamma, target_overlap)
    else:
        schedule, _ = schedule_from_options(schedule_file, sigma_max, sigma_min, num_scales, dim,
                                            (data_spec, data_root, split, no_download, no_rescale, method, device), target_overlap, False)
        gamma = schedule.gamma or schedule.ratio
        fig = plot_overlap(schedule.dim, gamma, schedule.target_overlap or target_overlap)
    _save(fig, output)
    out.print(f"gamma = {gamma:.8f}")


@main.command()
@schedule_options
@click.option("--M", "steps", type=int, default=DEFAULTS.steps_per_scale, show_default=True, help="Langevin steps per scale.")
@click.option("--step-size", "given_step", type=float, help="eps [default: Proposition 3's optimum for M].")
@click.option("--chains", type=int, default=64, show_default=True, help="Chains (each of --dim coordinates).")
@click.option("--sim-dim", type=int, help="Dimensions simulated per chain [default: the schedule's D].")
@click.option("--mode", type=click.Choice(["per-scale", "annealed"]), default="per-scale", show_default=True,
              help="per-scale: each scale starts where Proposition 3 assumes; annealed: chains run through all scales.")
@click.option("--sweep", is_flag=True, help="Also measure the last scale at several eps around the optimum for M = 1, 3, 5, 10.")
@click.option("--toy", type=click.Choice(["gmm"]), help="Run the paper's Figure 2 experiment instead: a mixture sampled with a small and with Technique 1's sigma_max.")
@click.option("--toy-dim", type=int, default=2, show_default=True, help="Dimension of the mixture (--toy gmm).")
@click.option("--weights", default="0.8,0.2", show_default=True, help="Mode weights of the mixture (--toy gmm).")
@click.option("--separation", type=float, default=10.0, show_default=True, help="Distance between the modes (--toy gmm).")
@click.option("--small-sigma-max", type=float, default=1.0, show_default=True, help="The too-small sigma_max (--toy gmm).")
@click.option("--tau", type=float, default=0.5, show_default=True, help="Standard deviation of each mixture component (0: point masses).")
@click.option("--samples", "num_samples", type=int, default=1000, show_default=True, help="Samples (--toy gmm).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Figure of the result (.png or .pdf).")
@click.option("--json", "as_json", is_flag=True)
def simulate(schedule_file, sigma_max, sigma_min, num_scales, dim, data_spec, data_root, split, no_download, no_rescale, method, device,
             target_overlap, steps, given_step, chains, sim_dim, mode, sweep, toy, toy_dim, weights, separation, small_sigma_max, tau, num_samples, seed, output, as_json):
    """Monte Carlo check of Proposition 3 with an exact Gaussian score, or the paper's Figure 2 experiment (--toy gmm)."""
    import numpy as np

    from .analysis import simulation as sim

    if toy == "gmm":
        try:
            w = np.array([float(v) for v in weights.split(",")])
        except ValueError:
            raise NcsnTuneError(f"--weights takes numbers separated by commas, got {weights!r}") from None
        if len(w) < 2 or np.any(w <= 0) or toy_dim < 1 or num_samples < 1:
            raise NcsnTuneError("--weights needs at least two positive numbers, --toy-dim and --samples at least 1")
        w = w / w.sum()
        positive_float("--separation", separation)
        positive_float("--small-sigma-max", small_sigma_max)
        k = len(w)
        angles = np.linspace(0, 2 * np.pi, k, endpoint=False)
        centres = np.zeros((k, toy_dim))
        centres[:, 0] = 0.5 * separation * np.cos(angles)
        if toy_dim > 1:
            centres[:, 1] = 0.5 * separation * np.sin(angles)
        if not (math.isfinite(tau) and tau >= 0):
            raise NcsnTuneError(f"--tau must be a finite number >= 0, got {tau}")
        mixture = sim.Mixture(w, centres, tau)
        results = sim.gmm_experiment(mixture, small_sigma_max, DEFAULTS.sigma_min, num_samples, steps, target_overlap, seed)
        if output is not None:
            from .plots import plot_gmm

            _save(plot_gmm(results, mixture), output, as_json)
        if as_json:
            click.echo(json.dumps({"dim": toy_dim, "weights": w.tolist(), "results": [r.to_dict() for r in results]}))
            return
        table = Table(title=f"Figure 2 experiment: {k} modes in {toy_dim} dimensions, {num_samples} samples, M = {steps}")
        for col in ("sigma_max", "L", "mode shares", "weights", "total variation"):
            table.add_column(col, justify="right")
        for r in results:
            table.add_row(f"{r.sigma_max:.3g} ({r.label})", str(r.num_scales), ", ".join(f"{f:.3f}" for f in r.fractions),
                          ", ".join(f"{v:.3f}" for v in r.weights), f"{r.total_variation:.3f}")
        out.print(table)
        out.print("Too small a sigma_max leaves each chain in the basin it started in, so the shares follow the basins, not the weights.")
        return

    if chains < 1 or steps < 1:
        raise NcsnTuneError("--chains and --M must be at least 1")
    schedule, described = schedule_from_options(schedule_file, sigma_max, sigma_min, num_scales, dim,
                                                (data_spec, data_root, split, no_download, no_rescale, method, device), target_overlap, as_json)
    positive_float("--step-size", given_step)
    eps = given_step or optimal_step_size(schedule.ratio, steps, schedule.sigma_min).step_size
    if eps >= schedule.sigma_min**2:
        raise NcsnTuneError(f"eps must be below sigma_min^2 = {schedule.sigma_min ** 2:g} for Langevin steps to be stable, got {eps:g}")
    d = sim_dim or schedule.dim
    with progress_bar(not as_json) as cb:
        if cb:
            cb(0, 1, "simulating")
        check = sim.simulate_proposition3(schedule.sigmas, steps, eps, d, chains, mode, seed, device=device)
        sweeps = {}
        if sweep:
            last_two = np.array([schedule.ratio * schedule.sigma_min, schedule.sigma_min])
            for m in (1, 3, 5, 10):
                best = optimal_step_size(schedule.ratio, m, schedule.sigma_min).step_size
                grid = [best * f for f in (0.25, 0.5, 1.0, 2.0, 4.0) if best * f < schedule.sigma_min**2]
                runs = [sim.simulate_proposition3(last_two, m, e, d, chains, "per-scale", seed, device=device) for e in grid]
                sweeps[m] = (grid, [r.measured_ratio for r in runs], [r.standard_error for r in runs], schedule.ratio, schedule.sigma_min)
    result = check.to_dict()
    if sweep:
        result["sweep"] = {str(m): {"step_sizes": v[0], "measured_ratio": v[1], "standard_error": v[2]} for m, v in sweeps.items()}
    if output is not None:
        from .plots import plot_proposition3

        _save(plot_proposition3(check, sweeps or None), output, as_json)
    if as_json:
        click.echo(json.dumps(result))
        return
    z = abs(check.measured_ratio - check.predicted_ratio) / check.standard_error
    out.print(f"Schedule: {described}; M = {steps}, eps = {eps:.6e}, {chains} chains x {d} dimensions, mode {mode}.")
    table = Table(title="Proposition 3 by Monte Carlo (exact score of an isotropic Gaussian)")
    for col in ("scale i", "sigma", "predicted s^2/sigma^2", "measured", "standard error"):
        table.add_column(col, justify="right")
    L = len(check.sigmas)
    for i in sorted({0, 1, L // 2, L - 1}):
        table.add_row(str(i), f"{check.sigmas[i]:.4g}", f"{check.predicted[i]:.5f}", f"{check.measured[i]:.5f}", f"{check.standard_errors[i]:.5f}")
    out.print(table)
    out.print(f"Last scale: measured {check.measured_ratio:.5f} against {check.predicted_ratio:.5f} ({z:.1f} standard errors); "
              f"largest relative gap over all {L} scales {check.max_relative_error:.2%}.")
    if mode == "per-scale":
        annealed = sim.compounded_ratios(np.asarray(check.sigmas), steps, eps)[-1]
        out.print(f"Note: chains that run through all scales without reset compound the excess and settle near {annealed:.4f} "
                  "(--mode annealed measures that).")
    for m, v in sweeps.items():
        best = optimal_step_size(schedule.ratio, m, schedule.sigma_min)
        k = int(np.argmin(v[1]))
        out.print(f"M = {m}: lowest measured ratio at eps = {v[0][k]:.3g} (formula's optimum {best.step_size:.3g}).")


# --------------------------------------------------------------------------- evaluate

@main.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="A run folder (its newest checkpoint) or a checkpoint file.")
@click.option("--data", "data_spec", help="Held-out data [default: the run's data set, test split for cifar10].")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True)
@click.option("--images", type=int, default=1000, show_default=True, help="Held-out images (each noised at every scale).")
@click.option("--samples", "samples_npz", type=click.Path(dir_okay=False, path_type=Path), help="Samples (.npz from ncsn-tune sample): find each one's nearest training image.")
@click.option("--fid", "with_fid", is_flag=True, help="FID of --samples against the training images' Inception statistics (or --fid-reference).")
@click.option("--inception-weights", type=click.Path(dir_okay=False, path_type=Path),
              help="pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID weights) [default: the torch.hub or ncsn_tune cache].")
@click.option("--fid-reference", type=click.Path(dir_okay=False, path_type=Path),
              help="Reference statistics (.npz with mu and sigma, as pytorch-fid --save-stats writes) instead of the training images.")
@click.option("--fid-images", type=int, help="Training images for the reference statistics [default: all].")
@click.option("--no-ema", is_flag=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("evaluation"), show_default=True)
@click.option("--json", "as_json", is_flag=True)
def evaluate(checkpoint, data_spec, data_root, split, images, samples_npz, with_fid, inception_weights, fid_reference, fid_images, no_ema,
             device, seed, output_dir, as_json):
    """Held-out DSM loss per noise scale; with --samples the nearest training image of each sample, and --fid.

    \b
    ncsn-tune evaluate --checkpoint runs/cifar10
    ncsn-tune sample --checkpoint runs/cifar10 --num 64 --npz s.npz && ncsn-tune evaluate --checkpoint runs/cifar10 --samples s.npz
    ncsn-tune evaluate --checkpoint runs/cifar10 --samples s.npz --fid --inception-weights pt_inception-2015-12-05-6726825d.pth
    """
    import numpy as np
    import torch

    from .analysis.nearest_neighbours import nearest_neighbours
    from .files import write_mapping
    from .model.generate import load_model
    from .model.loss import dsm_loss_by_scale
    from .model.train import DeviceImages, image_grid, resolve_device, save_png

    if images < 1:
        raise NcsnTuneError(f"--images must be at least 1, got {images}")
    if with_fid and samples_npz is None:
        raise NcsnTuneError("--fid needs --samples FILE.npz (write one with ncsn-tune sample --npz)")
    if fid_images is not None and fid_images < 2:
        raise NcsnTuneError(f"--fid-images must be at least 2, got {fid_images}")
    weights_path = None
    if with_fid:  # before any long work: the weights are the one thing that cannot be fetched here
        from .model.inception import find_inception_weights

        weights_path = find_inception_weights(inception_weights)
    dev = resolve_device(device)
    model, state = load_model(checkpoint, dev, use_ema=not no_ema)
    run_config = state["config"]
    spec = data_spec or run_config["data"]
    root = data_root or run_config.get("data_root")
    with progress_bar(not as_json) as cb:
        held_out = load_dataset(spec, root, split, progress=cb)
    if held_out.image_shape != tuple(state["image_shape"]):
        raise NcsnTuneError(f"the data has shape {held_out.image_shape} but the model was trained on {tuple(state['image_shape'])}")
    n = min(images, held_out.num_points)
    x = DeviceImages(held_out.values[:n], held_out.scale, held_out.offset, dev).batch(torch.arange(n))
    sigmas = torch.tensor(state["schedule"]["sigmas"], dtype=torch.float32, device=dev)
    generator = torch.Generator(dev).manual_seed(seed)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        by_scale = dsm_loss_by_scale(model, x, sigmas, batch_size=250, generator=generator).cpu().numpy()
    output_dir.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": state["path"], "step": state["step"], "data": spec, "split": split, "images": n,
              "eval_loss": float(by_scale.mean()), "sigmas": state["schedule"]["sigmas"], "eval_loss_by_scale": by_scale.tolist()}

    distances = None
    if samples_npz is not None:
        try:
            with np.load(samples_npz) as f:
                samples = np.clip(f["float"], 0, 1)  # the image range; sampling may overshoot it slightly
        except (OSError, KeyError, ValueError) as exc:
            raise NcsnTuneError(f"{samples_npz} is not a samples file of ncsn-tune sample --npz ({exc})") from None
        with progress_bar(not as_json) as cb:
            train = load_dataset(run_config["data"], run_config.get("data_root"), "train", progress=cb)
            if train.image_shape != samples.shape[1:]:
                raise NcsnTuneError(f"the samples have shape {samples.shape[1:]} but the training images {train.image_shape}")
            # samples live in [0, 1]; training values times scale (+ offset) too: compare in [0, 1] units
            queries = (samples.reshape(len(samples), -1) - train.offset) / train.scale
            nb = nearest_neighbours(queries, train.points(), scale=train.scale, progress=cb)
        result["nearest"] = {"indices": nb.indices.tolist(), "distances": nb.distances.tolist(),
                             "median_distance": float(np.median(nb.distances)), "min_distance": float(nb.distances.min())}
        pairs = np.empty((2 * len(samples), *samples.shape[1:]), dtype=np.float32)
        pairs[0::2] = samples
        pairs[1::2] = train.unit_float32(nb.indices)
        save_png(image_grid(torch.tensor(pairs), columns=16), output_dir / "nearest_neighbours.png")
        distances = nb.distances
        if with_fid:
            result["fid"] = fid_of_samples(samples, train, weights_path, fid_reference, fid_images,
                                           Path(state["path"]).parent, dev, as_json)
    from .plots import plot_eval

    plot_eval(by_scale, state["schedule"]["sigmas"], distances).savefig(output_dir / "evaluation.png", dpi=200, bbox_inches="tight")
    write_mapping(output_dir / "evaluation.json", result)
    if as_json:
        click.echo(json.dumps(result))
        return
    out.print(f"{state['path']} (step {state['step']}): held-out DSM loss {result['eval_loss']:.3f} on {n} {split} images of {spec}")
    table = Table(title="Held-out DSM loss by noise scale (each image noised at every scale)")
    for col in ("scale i", "sigma", "loss"):
        table.add_column(col, justify="right")
    L = len(by_scale)
    for i in sorted({0, L // 4, L // 2, 3 * L // 4, L - 1}):
        table.add_row(str(i), f"{state['schedule']['sigmas'][i]:.4g}", f"{by_scale[i]:.3f}")
    out.print(table)
    if "nearest" in result:
        out.print(f"Nearest training images: median distance {result['nearest']['median_distance']:.3f}, "
                  f"smallest {result['nearest']['min_distance']:.3f} (exact); pairs in {output_dir / 'nearest_neighbours.png'}")
    if "fid" in result:
        f = result["fid"]
        out.print(f"FID {f['fid']:.2f}: {f['num_samples']} samples against {f['reference']} ({f['reference_images']} images)")
        for note in f["notes"]:
            out.print(f"- {note}")
    out.print(f"Wrote {output_dir / 'evaluation.json'} and {output_dir / 'evaluation.png'}")


def fid_of_samples(samples, train, weights_path: Path, reference_file: Path | None, reference_images: int | None, run_dir: Path,
                   device, quiet: bool) -> dict:
    """FID of the samples against --fid-reference, or against the training images' statistics (cached in the run folder)."""
    from .model.fid import FeatureStatistics, cached_reference, feature_statistics, fid
    from .model.inception import inception_features, load_fid_inception

    network, sha, notes = load_fid_inception(weights_path, device)
    if reference_file is not None:
        reference = FeatureStatistics.load(reference_file)
        where, stats_file = str(reference_file), reference_file
    else:
        n = train.num_points if reference_images is None else min(reference_images, train.num_points)
        source = f"{train.name} {train.split or ''} images from {train.source}".replace("  ", " ")
        cache = run_dir / f"fid_reference_{train.split or 'data'}_{n}.npz"
        reference = cached_reference(cache, source, n, sha)
        if reference is None:
            with progress_bar(not quiet) as cb:
                features = inception_features(network, lambda a, b: train.unit_float32(slice(a, b)), count=n, progress=cb)
            reference = feature_statistics(features, source, sha)
            reference.save(cache)
            notes.append(f"reference statistics computed from {n} training images and saved to {cache}")
        else:
            notes.append(f"reference statistics reused from {cache}")
        where, stats_file = source, cache
    with progress_bar(not quiet) as cb:
        stats = feature_statistics(inception_features(network, samples, progress=cb), "samples", sha)
    if stats.num_images < 50000:
        notes.append(f"FID from {stats.num_images} samples is biased upwards against the usual 50,000; compare only FIDs of equal sample counts")
    return {"fid": fid(stats, reference), "num_samples": stats.num_images, "reference": where, "reference_images": reference.num_images,
            "reference_statistics": str(stats_file), "weights": str(weights_path), "notes": notes}
