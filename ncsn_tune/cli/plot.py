"""``ncsn-tune plot`` (no torch): the figures of Techniques 2 and 4, PNG or PDF by the --output suffix."""

from __future__ import annotations

import click

from ..analysis.noise_schedule import NoiseSchedule, solve_gamma
from ..analysis.samplers import sampler_step
from ..config import AnalysisConfig
from ..errors import NcsnTuneError
from ..tuning import given_step_size
from .analysis import (choose_schedule, chosen_sampler, measure_step_on, measured_options, render_measured_step, sampler_options,
                       step_size_options)
from .app import main
from .options import (check_figure, figure_output, json_option, parse_steps, path_option, require_schedule, save_figure,
                      schedule_options)
from .render import Report, fmt

A = AnalysisConfig


@main.group()
def plot():
    """Figures (PNG or PDF by the --output suffix): step-size, schedule, overlap."""


@plot.command("step-size")
@step_size_options("1,3,5,10")
@sampler_options
@measured_options
@figure_output
@json_option
def plot_step_size_cmd(steps_per_scale, step_size, snr, sampler, predictor, corrector, sampling_eps, checkpoint, chains, output, force,
                       as_json, **opts):
    """s^2/sigma^2 against eps (or snr, for another tool's loop) for several M, each optimum marked (Technique 4); takes what
    step-size takes. With --checkpoint: s^2/sigma^2 measured on the trained model at every scale, for each eps tried."""
    from ..plots import plot_measured_step, plot_sampler_step, plot_step_size

    report = Report(as_json)
    check_figure(output, force)
    if checkpoint is not None:
        result = measure_step_on(report, checkpoint, steps_per_scale, chains, opts, allowed=("output", "force"))
        save_figure(report, plot_measured_step(result), output)
        render_measured_step(report, result, checkpoint, figure=str(output))
        return
    loop = chosen_sampler(sampler, predictor, corrector, sampling_eps)
    steps = parse_steps(steps_per_scale)
    choice = choose_schedule(report, opts)
    if loop.name == "ald":
        fig = plot_step_size(choice.ratio, choice.sigma_min, steps, given_step_size(step_size, snr, choice.sigma_min))
    elif step_size is not None:
        raise NcsnTuneError(f"{loop.describe()} takes its step as snr, not eps: give --snr", fields=("step_size", "snr"))
    else:
        fig = plot_sampler_step(loop, require_schedule(choice), steps, snr)
    save_figure(report, fig, output)
    given = [] if snr is None or loop.name == "ald" else [sampler_step(loop, o.sigma_max, o.sigma_min, o.num_scales, o.steps_per_scale, snr)
                                                          for o in fig.optima]
    report.result({"figure": output, "optima": [o.to_dict() for o in fig.optima], "given": [g.to_dict() for g in given],
                   "notes": list(choice.notes)})
    for k, o in enumerate(fig.optima):
        report.line(f"M = {o.steps_per_scale}: " + (f"eps = {o.step_size:.6e}" if loop.name == "ald" else f"the criterion's optimum snr = "
                    f"{o.snr:.5f}") + f", s^2/sigma^2 = {o.variance_ratio:.6f}"
                    + (f"; at the given snr {snr:g}: {given[k].variance_ratio:.6f}" if given else ""))


@plot.command("schedule")
@schedule_options
@path_option("--compare", "compare_file", help="A second schedule file, drawn beside with its own eps.")
@click.option("--compare-num-scales", type=int, help="A second schedule with the same ends and this many scales (e.g. 232).")
@click.option("--M", "steps_per_scale", type=int, default=A.steps_per_scale, show_default=True, help="M for each schedule's eps.")
@click.option("--step-size", type=float, help="One eps for every schedule [default: each schedule's Technique 4 optimum for M].")
@figure_output
@json_option
def plot_schedule_cmd(compare_file, compare_num_scales, steps_per_scale, step_size, output, force, as_json, **opts):
    """Noise scales against their index with alpha_i and the overlap; several schedules side by side."""
    from ..plots import plot_schedule

    report = Report(as_json)
    check_figure(output, force)
    schedule = require_schedule(choose_schedule(report, opts))
    schedules = [schedule]
    if compare_file is not None:
        schedules.append(NoiseSchedule.load(compare_file))
    if compare_num_scales is not None:
        schedules.append(schedule.with_num_scales(compare_num_scales))
    eps = [step_size if step_size is not None else s.step_size(steps_per_scale).step_size for s in schedules]
    labels = [f"L = {s.num_scales}" for s in schedules]
    save_figure(report, plot_schedule(schedules, eps, labels), output)
    rows = [{"num_scales": s.num_scales, "ratio": s.ratio, "overlap": s.overlap if s.dim else None, "step_size": e}
            for s, e in zip(schedules, eps)]
    report.result({"figure": output, "schedules": rows})
    for r in rows:
        report.line(f"L = {r['num_scales']}: ratio {r['ratio']:.6f}, overlap {fmt(r['overlap'], 4)}, eps {r['step_size']:.4g}")


@plot.command("overlap")
@schedule_options
@figure_output
@json_option
def plot_overlap_cmd(output, force, as_json, **opts):
    """The overlap C against gamma for the data's dimension, the chosen gamma marked (Technique 2)."""
    from ..plots import plot_overlap

    report = Report(as_json)
    check_figure(output, force)
    target = opts["target_overlap"] or A.target_overlap
    only_dim = opts["dim"] is not None and not any(opts[k] for k in ("sigma_max", "num_scales", "data", "schedule"))
    if only_dim:
        dim, gamma = opts["dim"], solve_gamma(opts["dim"], target)
    else:
        schedule = require_schedule(choose_schedule(report, opts))
        if schedule.dim is None:
            raise NcsnTuneError("the overlap depends on the data dimension D", fields=("dim", "data"))
        dim, gamma = schedule.dim, schedule.gamma or schedule.ratio
        target = schedule.target_overlap or target
    save_figure(report, plot_overlap(dim, gamma, target), output)
    report.result({"figure": output, "dim": dim, "gamma": gamma, "target_overlap": target})
    report.line(f"gamma = {gamma:.8f}")
