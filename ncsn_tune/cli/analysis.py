"""The analysis commands (no torch): sigmas and step-size (plot and simulate: plot.py, simulate.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..analysis.noise_schedule import NoiseSchedule, default_sigma_min
from ..analysis.samplers import CORRECTORS, PREDICTORS, SAMPLERS, SAMPLING_EPS, Sampler, sampler_step
from ..analysis.step_size import StepSize, optimal_step_size
from ..config import SCHEDULE_FILE, STEP_SIZE_FILE, AnalysisConfig, workdir
from ..devices import resolve_device
from ..errors import NcsnTuneError
from ..files import MAPPING_SUFFIXES, check_output
from ..data.pixel_range import DEFAULT as DEFAULT_PIXEL_RANGE, PixelRange
from ..tuning import ScheduleChoice, derive_schedule, given_step_size, resolve_schedule, save_step_size
from ..tuning.advice import chain_ratio_warning
from ..tuning.schedule import keep_derived_schedule
from ..tuning.steps import whole_chain_ratios
from .app import main
from .options import (data_options, force_option, given_from, json_option, parse_counts, parse_steps, path_option, read_data,
                      require_schedule, schedule_options, stack)
from .render import Report, fmt

A = AnalysisConfig


# ------------------------------------------------------------------------------------------------ sigmas


def schedule_summary(schedule: NoiseSchedule, path: Path | None, target_overlap: float | None = None) -> dict:
    """The numbers ``sigmas`` reports (JSON keys), the equation's gamma and L (for ``target_overlap``, else the schedule's
    own target, else 0.5) beside the schedule's."""
    equation = schedule.overlap_equation(target_overlap)
    data = schedule.data or {}
    return {"sigma_max": schedule.sigma_max, "sigma_min": schedule.sigma_min, "num_scales": schedule.num_scales,
            "gamma": equation[0] if equation else None, "ratio": schedule.ratio,
            "overlap": schedule.overlap if schedule.dim else None, "target_overlap": schedule.target_overlap,
            "equation_target_overlap": target_overlap or schedule.target_overlap or A.target_overlap, "dim": schedule.dim,
            "equation_num_scales": equation[1] if equation else None, "data": data or None, "num_points": data.get("num_points"),
            "pair": schedule.source.get("pair"), "pixel_scale": data.get("pixel_scale"), "pixel_range": schedule.pixel_range,
            "t1": schedule.source or None,
            "schedule_file": str(path) if path else None, "sigmas": schedule.sigmas.tolist()}


def schedule_rows(s: dict) -> list[list[str]]:
    rows = []
    if s["data"]:
        rows += [["data", s["data"]["name"], f"{s['data']['path']} ({s['data'].get('split') or 'all files'})"],
                 ["points N", fmt(s["num_points"]), f"pixel scale: {s['pixel_scale']}"]]
    pixels = PixelRange.parse(s["pixel_range"] or DEFAULT_PIXEL_RANGE)
    if pixels != DEFAULT_PIXEL_RANGE:
        rows.append(["pixel range", pixels.label, f"distances and sigmas in this convention ({DEFAULT_PIXEL_RANGE.factor_to(pixels):g} "
                     f"times the {DEFAULT_PIXEL_RANGE.label} ones)"])
    rows.append(["dimension D", fmt(s["dim"]), "C*H*W"])
    t1 = s["t1"]
    if t1 and "pair" in t1:
        work = (f"{t1['pairs_evaluated']:,} of {t1['pairs_total']:,} pairs" if t1["pairs_evaluated"] <= t1["pairs_total"] else
                f"{t1['pairs_evaluated']:,} pair distances for {t1['pairs_total']:,} pairs (pairs within a visiting shard are searched again)")
        rows.append(["sigma_max", f"{s['sigma_max']:.6f}", f"T1: exact max distance, pair {tuple(t1['pair'])}; {t1['method']}: "
                     f"{work} in {t1['seconds']:.2f} s"])
    else:
        rows.append(["sigma_max", f"{s['sigma_max']:.6g}", "given"])
    rows.append(["sigma_min", fmt(s["sigma_min"]), "paper default" + ("" if pixels == DEFAULT_PIXEL_RANGE else f" for {pixels.label}")
                 if s["sigma_min"] == default_sigma_min(pixels) else "given"])
    rows.append(["gamma", fmt(s["gamma"], 8), "T2: root of Phi(sqrt(2D)(g-1)+3g) - Phi(sqrt(2D)(g-1)-3g) = C"])
    how = ("ceil(log(sigma_max/sigma_min)/log gamma) + 1" if s["target_overlap"] else
           f"given (the equation gives {fmt(s['equation_num_scales'])} for overlap {s['equation_target_overlap']:g})")
    rows += [["num_scales L", str(s["num_scales"]), how],
             ["realised ratio", fmt(s["ratio"], 8), "(sigma_max/sigma_min)^(1/(L-1))"],
             ["realised overlap", fmt(s["overlap"]), "what the realised ratio achieves"]]
    sig = s["sigmas"]
    rows.append(["sigmas", ", ".join(f"{v:.4g}" for v in sig[:3]) + ", ..., " + ", ".join(f"{v:.4g}" for v in sig[-3:]),
                 "descending, geometric"])
    return rows


@main.command()
@data_options
@click.option("--sigma-max", type=float, help="Use this sigma_max instead of computing it from --data (Technique 1).")
@click.option("--dim", type=int, help="Data dimension D = C*H*W (with --sigma-max and no --data).")
@click.option("--sigma-min", type=float, help=f"The smallest scale [default: {A.sigma_min} for pixels in [0, 1], the same relative to the "
              "data in another range: 0.02 in [-1, 1]].")
@click.option("--overlap", "target_overlap", type=float, help=f"Target overlap C of adjacent scales [default: {A.target_overlap}].")
@click.option("--num-scales", type=int, help="Use L scales instead of the equation's L; the overlap they achieve is reported.")
@click.option("--outliers", help="With --data: also sigma_max with the k farthest outliers left out, for each k given (e.g. 1,10,100): "
              "exact, greedy (the farther-from-centre point of the farthest pair, k times).")
@path_option("--output", help=f"Schedule file to write, .json or .yaml [default: WORKDIR/{SCHEDULE_FILE}].")
@force_option
@click.option("--gpus", type=click.IntRange(min=1), help="Technique 1 on N GPUs (N CPU processes with --device cpu), each holding a "
              "shard of the data: runs torchrun --nproc_per_node N -m ncsn_tune sigmas ...")
@json_option
def sigmas(output, force, as_json, outliers, gpus, **opts):
    """Techniques 1 and 2: sigma_max (exact), gamma, the number of scales L and the schedule.

    \b
    ncsn-tune sigmas --data cifar10
    ncsn-tune sigmas --data ~/data/imagenet64 --gpus 8
    ncsn-tune sigmas --sigma-max 50 --dim 3072 --num-scales 232
    """
    if gpus is not None:
        check_processes(gpus, opts, outliers)
        if gpus > 1 and "WORLD_SIZE" not in os.environ:
            from ..model.distributed import relaunch_under_torchrun

            return relaunch_under_torchrun(sys.argv[1:], gpus)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from ..model.distributed import Distributed

        group = Distributed.from_env("cuda" if resolve_device(opts["device"]).startswith("cuda") else "cpu")
        try:
            return derive_and_save(Report(as_json, quiet=not group.main), opts, output, force, outliers, as_json, group)
        finally:
            group.close()
    return derive_and_save(Report(as_json), opts, output, force, outliers, as_json)


def check_processes(gpus: int, opts: dict, outliers: str | None) -> None:
    """``--gpus N`` shares Technique 1's search of the data; it needs data, and N GPUs where the device is a GPU."""
    if opts.get("data") is None:
        raise NcsnTuneError("--gpus shares Technique 1's search of the data between processes: give --data (a sigma_max given as "
                            "a number needs no search)")
    if outliers is not None and gpus > 1:
        raise NcsnTuneError("--outliers runs in one process: leave out --gpus (or compute the outliers in a second command)")
    device = resolve_device(opts["device"])
    if device.startswith("cuda") and "WORLD_SIZE" not in os.environ:
        import torch

        if torch.cuda.device_count() < gpus:
            raise NcsnTuneError(f"--gpus {gpus}: this machine has {torch.cuda.device_count()} GPU(s); give at most that many, "
                                "or --device cpu for CPU processes")


def derive_and_save(report: Report, opts: dict, output, force: bool, outliers: str | None, as_json: bool, group=None) -> None:
    """Techniques 1 and 2 on the data (by every process of ``group`` together, when given), then the schedule saved and
    shown by the first process."""
    main_process = group is None or group.main
    path = check_output(output or workdir() / SCHEDULE_FILE, MAPPING_SUFFIXES, force=force)
    data = read_data(report, opts)
    with report.progress() as progress:
        schedule = derive_schedule(given_from(opts, data, distributed=group is not None), progress=progress)
    if not main_process:
        return
    keep_derived_schedule(path, schedule, force)
    dropped = outlier_drops(report, data, schedule, outliers, opts)
    schedule.save(path)
    summary = {**schedule_summary(schedule, path, opts["target_overlap"]), **({"outliers": [d.to_dict() for d in dropped]} if outliers else {})}
    report.result(summary)
    if not as_json:
        measured = "pair" in (summary.get("t1") or {})  # Technique 1 ran on data; else sigma_max was given
        report.table(f"Noise schedule (Song & Ermon 2020, {'Techniques 1-2' if measured else 'Technique 2; sigma_max given'})",
                     ["quantity", "value", "how"], schedule_rows(summary), (1,))
        for d in dropped:
            report.line(f"Without the {d.k} farthest outlier{'s' if d.k > 1 else ''}: sigma_max {d.distance:.6f} ({d.drop:.1%} lower; exact "
                        f"for the rest, pair {d.pair})")
        report.line(f"Saved the schedule to {path}")
        report.command(f"ncsn-tune step-size --M {A.steps_per_scale}")


def outlier_drops(report: Report, data, schedule: NoiseSchedule, outliers: str | None, opts: dict) -> list:
    """``--outliers 1,10,100``: :func:`ncsn_tune.tuning.schedule.outlier_drops` for the counts given, searched as sigma_max
    was (--method, --device)."""
    if outliers is None:
        return []
    from ..tuning.schedule import outlier_drops as drops

    with report.progress() as progress:
        return drops(data, schedule, parse_counts(outliers, "--outliers"), method=opts["method"], device=opts["device"],
                     progress=progress)


# ------------------------------------------------------------------------------------------------ step-size


def choose_schedule(report: Report, opts: dict, **extra) -> ScheduleChoice:
    """The resolver's schedule for the shared schedule options, its notes printed."""
    data = read_data(report, opts)
    with report.progress() as progress:
        choice = resolve_schedule(given_from(opts, data, **extra), workdir=workdir(), progress=progress)
    return choice


def step_rows(choice: ScheduleChoice, steps: list[int], given_eps: float | None) -> list[tuple[StepSize, StepSize | None]]:
    """For each M: Technique 4's optimum, and the given eps with its s^2/sigma^2 (or None)."""
    return [(optimal_step_size(choice.ratio, m, choice.sigma_min),
             StepSize.given(given_eps, choice.ratio, m, choice.sigma_min) if given_eps is not None else None) for m in steps]


def step_size_options(default_steps: str | None):
    return stack(
        click.option("--M", "steps_per_scale", default=default_steps, show_default=default_steps is not None,
                     help="Langevin steps per scale: one value or a list, e.g. 1,3,5,10"
                     + ("." if default_steps else " [default: the saved step size's M, else 5].")),
        schedule_options,
        click.option("--step-size", "--mark", "step_size", type=float, help="A given eps (e.g. a published 6.2e-6): its s^2/sigma^2."),
        click.option("--snr", type=float, help="A given step as score_sde's/diffusers' snr (eps = 2 (snr sigma_min)^2): its s^2/sigma^2."),
    )


sampler_options = stack(
    click.option("--sampler", type=click.Choice(SAMPLERS), default="ald", show_default=True,
                 help="The loop the step is for: ald (NCSNv2's annealed Langevin dynamics: Proposition 3), pc (score_sde's "
                 "predictor-corrector sampler) or diffusers (ScoreSdeVePipeline)."),
    click.option("--predictor", type=click.Choice(PREDICTORS), help="pc: score_sde's sampling.predictor [default: reverse_diffusion]."),
    click.option("--corrector", type=click.Choice(CORRECTORS), help="pc: score_sde's sampling.corrector [default: langevin]."),
    click.option("--sampling-eps", type=float, default=SAMPLING_EPS, show_default=True,
                 help="pc, diffusers: the end time of the t grid linspace(1, eps, N)."),
)


def typed(*names: str) -> list[str]:
    """Which of the current command's options ``names`` the user typed (or set through the environment), not defaults."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return []
    sources = {name: ctx.get_parameter_source(name) for name in names}
    return [name for name, source in sources.items()
            if source in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)]


def chosen_sampler(name: str, predictor: str | None, corrector: str | None, sampling_eps: float) -> Sampler:
    if name != "pc" and (predictor or corrector):
        raise NcsnTuneError(f"--predictor and --corrector choose score_sde's loop (--sampler pc); {name} runs a fixed one",
                            fields=("predictor", "corrector", "sampler"))
    if name == "ald" and typed("sampling_eps"):
        raise NcsnTuneError("--sampling-eps sets the t grid of score_sde's and diffusers' loops; NCSNv2's annealed Langevin dynamics "
                            "runs its scales and has none", fields=("sampling_eps", "sampler"))
    return Sampler.named(name, predictor, corrector, sampling_eps=sampling_eps)


measured_options = stack(
    click.option("--checkpoint", type=click.Path(path_type=Path), help="A trained run (its folder or a checkpoint): measure the step "
                 "with the model's own score, beside Proposition 3's (needs torch; an empirical check)."),
    click.option("--chains", type=click.IntRange(min=1), default=16, show_default=True, help="With --checkpoint: chains per step size tried."),
)


@main.command("step-size")
@step_size_options(str(A.steps_per_scale))
@sampler_options
@measured_options
@path_option("--output", help=f"Step-size file to write (one M), .json or .yaml [default: WORKDIR/{STEP_SIZE_FILE}].")
@force_option
@json_option
def step_size(steps_per_scale, step_size, snr, sampler, predictor, corrector, sampling_eps, checkpoint, chains, output, force, as_json,
              **opts):
    """Technique 4: the eps (or snr) that brings s^2/sigma^2 closest to 1 for M steps per scale, for the sampler that runs.

    \b
    ncsn-tune step-size --M 5                     (uses the schedule 'sigmas' saved)
    ncsn-tune step-size --M 1,3,5,10 --sigma-max 50 --num-scales 232
    ncsn-tune step-size --sampler pc --M 1 --sigma-max 50 --num-scales 1000 --snr 0.16
    """
    report = Report(as_json)
    if checkpoint is not None:
        return render_measured_step(report, measure_step_on(report, checkpoint, steps_per_scale, chains, opts), checkpoint)
    loop = chosen_sampler(sampler, predictor, corrector, sampling_eps)
    steps = parse_steps(steps_per_scale)
    target = check_output(output or workdir() / STEP_SIZE_FILE, MAPPING_SUFFIXES, force=force) if len(steps) == 1 else None
    choice = choose_schedule(report, opts)
    if loop.name != "ald":
        return sampler_step_size(report, loop, choice, steps, step_size, snr, target)
    step_size = given_step_size(step_size, snr, choice.sigma_min)
    rows = step_rows(choice, steps, step_size)
    saved = save_step_size(rows[0][0], target, choice.schedule, choice.file) if target else None
    chain = [whole_chain_ratios(choice, b, g) for b, g in rows]
    results = [{**best.to_dict(), "chain_ratio": c[0], **({"given_step_size": g.step_size, "given_variance_ratio": g.variance_ratio,
                                                           "given_chain_ratio": c[1]} if g else {})}
               for (best, g), c in zip(rows, chain)]
    warning = chain_ratio_warning({**{f"M = {b.steps_per_scale} at its optimal eps": c[0] for (b, _), c in zip(rows, chain)},
                                   **{f"M = {b.steps_per_scale} at eps = {step_size:g}": c[1] for (b, g), c in zip(rows, chain) if g}})
    warnings = [warning] if warning else []
    report.result({**results[0], "step_size_file": saved, "notes": list(choice.notes) + warnings} if saved else results)
    if as_json:
        return
    report.notes(choice.notes)
    columns = ["M", "eps (optimal)", "snr", "s^2/sigma^2 at eps", "whole chain"]
    columns += [f"s^2/sigma^2 at eps = {step_size:g}", "whole chain"] if step_size else []
    table = [[str(b.steps_per_scale), f"{b.step_size:.6e}", f"{b.snr:.5f}", f"{b.variance_ratio:.6f}", fmt(c[0], 4)]
             + ([f"{g.variance_ratio:.6f}", fmt(c[1], 4)] if g else []) for (b, g), c in zip(rows, chain)]
    report.table(f"Langevin step size (Technique 4), ratio {choice.ratio:.8g}, sigma_min {choice.sigma_min:g}", columns, table,
                 tuple(range(len(columns))))
    report.line("For a ratio > 1, s^2/sigma^2 stays above 1 for every eps, so the optimum is its minimum (Proposition 3: exact "
                "for a single-Gaussian model, an approximation for real data). 'whole chain': the same loop run through every "
                "scale from N(0, sigma_max^2 I), each starting where the last ended (a safety check, not the criterion: "
                "ncsn_tune.tuning.advice says why).")
    for w in warnings:
        report.line(f"Warning: {w}.")
    report.line(f"Saved the step size for M = {steps[0]} to {saved}" if saved else
                f"Several values of M ({', '.join(map(str, steps))}): no step size saved; give one M to save it.")


def measure_step_on(report: Report, checkpoint: Path, steps_per_scale: str, chains: int, opts: dict, allowed=()):
    """``--checkpoint RUN``: the step measured with the trained model (:mod:`ncsn_tune.model.empirical_step`), over the
    run's own schedule and, unless --M is given, its M. Options that would change the schedule or the loop are refused
    rather than ignored (``allowed``: the command's own, e.g. a figure's --output)."""
    from ..model.empirical_step import empirical_step_size

    ctx = click.get_current_context()
    own = {"checkpoint", "chains", "steps_per_scale", "device", "as_json", *allowed}
    typed = [p for p in ctx.command.params if p.name not in own
             and ctx.get_parameter_source(p.name) not in (click.core.ParameterSource.DEFAULT, None)]
    if typed:
        names = ", ".join(p.opts[0] for p in typed)
        raise NcsnTuneError(f"--checkpoint measures the step with the run's own schedule, data and annealed Langevin loop, and saves "
                            f"no step-size file; {names} cannot be used with it (leave --checkpoint out for Proposition 3 on other "
                            "settings)", fields="checkpoint")
    given_m = ctx.get_parameter_source("steps_per_scale") != click.core.ParameterSource.DEFAULT
    steps = parse_steps(steps_per_scale) if given_m else [None]
    if len(steps) != 1:
        raise NcsnTuneError("--checkpoint measures the step for one M, got several", fields="steps_per_scale")
    with report.progress() as progress:
        return empirical_step_size(checkpoint, steps_per_scale=steps[0], num=chains, device=opts["device"], progress=progress)


def render_measured_step(report: Report, result, checkpoint: Path, **extra) -> None:
    """The measured step's table (or JSON, with ``extra``) and the command that samples with it."""
    report.result({**result.to_dict(), **extra})
    if report.as_json:
        return
    n, best = len(result.sigmas), result.theoretical
    shown = sorted({0, n // 2, 3 * n // 4, n - 1})
    rows = [[f"{eps:.4g}", f"{eps / best.step_size:g}", *[f"{r[i]:.3f}" for i in shown], f"{miss:.3f}", f"{e[-1]:.3f}"]
            for eps, r, miss, e in zip(result.step_sizes, result.ratios, result.misses, result.exact_score)]
    report.table(f"Technique 4 on the trained model ({result.checkpoint}, M = {result.steps_per_scale}, {result.num_chains} chains, "
                 f"seed {result.seed}): s^2/sigma^2 measured as (sigma ||s|| / sqrt(D))^2 after each scale's M steps",
                 ["eps", "x optimum", *[f"scale {i} (sigma {result.sigmas[i]:.3g})" for i in shown],
                  f"mean |log| from scale {result.judged_from}", f"exact score, scale {n - 1}"], rows,
                 tuple(range(len(shown) + 4)))
    report.line(f"Closest to the noise level the model expects: eps = {result.best_step_size:.4g}; Proposition 3's optimum is "
                f"{best.step_size:.4g} (s^2/sigma^2 = {best.variance_ratio:.4f} for a single Gaussian and an exact score). This is "
                f"an empirical check with {result.num_chains} chains of one seed, not a derivation: it carries their noise and the "
                f"model's errors. It took {result.seconds:.1f} s.")
    if result.at_edge:
        report.line(f"The closest eps is at the edge of the range tried ({result.step_sizes[0]:.3g} to {result.step_sizes[-1]:.3g}): the "
                    "best may lie beyond it, and a chain this far from 1 at every eps says more about the model than the step "
                    "(ncsn-tune sample's verdict says what).")
    report.command(f"ncsn-tune sample --checkpoint {checkpoint} --step-size {result.best_step_size:.4g}", before="to sample with it: ")


def sampler_step_size(report: Report, loop: Sampler, choice: ScheduleChoice, steps: list[int], step_size, snr, target) -> None:
    """``step-size --sampler pc|diffusers``: for each M the recommended snr (:func:`ncsn_tune.tuning.recommended_sampler_step`),
    the single-Gaussian chain criterion's optimum beside it, and a given snr's ratio; the recommended step is saved."""
    from ..tuning import recommended_sampler_step

    schedule = require_schedule(choice)
    if step_size is not None:
        raise NcsnTuneError(f"{loop.describe()} takes its step as snr, not eps: give --snr", fields=("step_size", "snr"))
    if not loop.langevin_steps:
        raise NcsnTuneError(f"{loop.describe()} takes no Langevin steps: there is no step to tune (choose a corrector)",
                            fields=("corrector", "sampler"))
    args = (schedule.sigma_max, schedule.sigma_min, schedule.num_scales)
    rows = [(*recommended_sampler_step(loop, *args, m), sampler_step(loop, *args, m),
             sampler_step(loop, *args, m, snr) if snr is not None else None) for m in steps]
    saved = save_step_size(rows[0][0], target, schedule, choice.file) if target else None
    results = [{**rec.to_dict(), "why": why, "criterion_snr": best.snr, "criterion_variance_ratio": best.variance_ratio,
                **({"given_snr": g.snr, "given_variance_ratio": g.variance_ratio} if g else {})} for rec, why, best, g in rows]
    report.result({**results[0], "step_size_file": saved, "notes": list(choice.notes)} if saved else results)
    if report.as_json:
        return
    report.notes(choice.notes)
    columns = ["M", "snr (recommended)", "s^2/sigma^2 at the last level", "criterion's optimum snr", "its s^2/sigma^2"]
    columns += [f"at snr = {snr:g}"] if snr is not None else []
    table = [[str(r.steps_per_scale), f"{r.snr:.5f}", f"{r.variance_ratio:.6f}", f"{b.snr:.5f}", f"{b.variance_ratio:.6f}"]
             + ([f"{g.variance_ratio:.6f}"] if g else []) for r, _, b, g in rows]
    report.table(f"Corrector step (Technique 4) for {loop.describe()}: N = {schedule.num_scales} levels from {schedule.sigma_max:.6g} "
                 f"to {schedule.sigma_min:g}, t in linspace(1, {loop.sampling_eps:g}, N)", columns, table, tuple(range(len(columns))))
    report.line(f"Recommended: {rows[0][1]}.")
    report.line(f"Criterion: {rows[0][2].criterion}, closest to 1 (a single-Gaussian model of the loop, exact for it; an "
                "approximation for real data). No closed form: the loop's variance recursion, checked by Monte Carlo in the tests.")
    report.line(f"Saved the recommended step for M = {steps[0]} to {saved}" if saved else
                f"Several values of M ({', '.join(map(str, steps))}): nothing saved; give one M to save it.")
