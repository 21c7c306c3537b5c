"""``ncsn-tune simulate`` (no torch): three Monte Carlo experiments, one command each. ``step-size``: Proposition 3 for
NCSNv2's annealed Langevin dynamics with an exact Gaussian score; ``sampler``: another tool's loop (score_sde's
predictor-corrector, diffusers') against its single-Gaussian model; ``mixture``: the paper's Figure 2 experiment."""

from __future__ import annotations

import click

from ..analysis.noise_schedule import NoiseSchedule
from ..analysis.samplers import CORRECTORS, PREDICTORS, SAMPLING_EPS, Sampler
from ..config import MAX_SEED, AnalysisConfig, workdir
from ..errors import NcsnTuneError
from ..tuning import resolve, resolve_schedule
from .analysis import chosen_sampler
from .app import Group, main
from .options import (check_figure, force_option, given_from, json_option, path_option, read_data, require_schedule, save_figure,
                      schedule_options, stack)
from .render import Report, fmt

A = AnalysisConfig

EXPERIMENTS = "simulate step-size (Proposition 3), simulate sampler --sampler pc|diffusers, simulate mixture (Figure 2)"


class SimulateGroup(Group):
    """The experiments as subcommands; the options of the single command they replace get a pointer to them."""

    def parse_args(self, ctx, args):
        if args and args[0].startswith("--") and args[0] not in ("--help", "-h"):
            raise click.UsageError(f"simulate runs one of three experiments, each a command of its own: {EXPERIMENTS}; this line "
                                   f"is now: ncsn-tune {' '.join(new_spelling(args))}")
        return super().parse_args(ctx, args)


def new_spelling(args: list[str]) -> list[str]:
    """The subcommand line for the options of the single simulate command: --toy gmm is mixture (--toy-dim its --dim),
    --sampler pc|diffusers is sampler, the rest step-size."""
    args = list(args)
    if "--toy" in args:
        k = args.index("--toy")
        del args[k : k + 2]
        return ["simulate", "mixture", *("--dim" if a == "--toy-dim" else a for a in args)]
    if "--sampler" in args and args[args.index("--sampler") + 1 :][:1] != ["ald"]:
        return ["simulate", "sampler", *args]
    if "--sampler" in args:
        k = args.index("--sampler")
        del args[k : k + 2]
    return ["simulate", "step-size", *args]


@main.group(cls=SimulateGroup)
def simulate():
    """Monte Carlo experiments: step-size (Proposition 3), sampler (another tool's loop), mixture (Figure 2)."""


chain_options = stack(
    schedule_options,
    click.option("--M", "steps_per_scale", type=click.IntRange(min=1), help="Langevin steps per scale [default: as step-size resolves]."),
    click.option("--chains", type=click.IntRange(min=1), default=64, show_default=True, help="Chains (each of --sim-dim coordinates)."),
    click.option("--sim-dim", type=click.IntRange(min=1), help="Dimensions simulated per chain [default: the schedule's D]."),
    click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help="Random seed, 0 to 2^63 - 1."),
)


@simulate.command("step-size")
@chain_options
@click.option("--step-size", type=float, help="eps [default: the saved one if it fits, else Technique 4's optimum for M].")
@click.option("--mode", type=click.Choice(["per-scale", "annealed"]), default="per-scale", show_default=True,
              help="per-scale: each scale starts where Proposition 3 assumes; annealed: chains run through all scales.")
@click.option("--sweep", is_flag=True, help="Also measure the last scale at eps = 1/4, 1/2, 1, 2, 4 times the optimum for M = 1, 3, 5, 10 "
              "(a factor-of-2 grid).")
@path_option("--output", help="Figure of the result (.png or .pdf).")
@force_option
@json_option
def simulate_step_size(steps_per_scale, chains, sim_dim, seed, step_size, mode, sweep, output, force, as_json, **opts):
    """Proposition 3 by Monte Carlo: NCSNv2's annealed Langevin dynamics with the exact score of an isotropic Gaussian,
    s^2/sigma^2 measured at every scale against the prediction.

    \b
    ncsn-tune simulate step-size --M 5 --sweep --output prop3.png
    """
    from ..analysis.simulation import simulate_proposition3, sweep_step_sizes

    report = Report(as_json)
    check_figure(output, force)
    data = read_data(report, opts)
    tuning = resolve(given_from(opts, data, steps_per_scale=steps_per_scale, step_size=step_size), workdir=workdir())
    schedule = require_schedule(tuning)
    dim = simulated_dim(sim_dim, schedule)
    m, eps = tuning.steps_per_scale, tuning.step_size
    with report.progress() as progress:
        check = simulate_proposition3(schedule.sigmas, m, eps, dim, chains, mode, seed, device=opts["device"], progress=progress)
        sweeps = sweep_step_sizes(schedule.ratio, schedule.sigma_min, dim=dim, num_chains=chains, seed=seed,
                                  device=opts["device"]) if sweep else []
    if output is not None:
        from ..plots import plot_proposition3

        save_figure(report, plot_proposition3(check, sweeps or None), output)
    report.result({**check.to_dict(), "notes": list(tuning.notes), **({"sweep": [s.to_dict() for s in sweeps]} if sweeps else {})})
    if not as_json:
        render_proposition3(report, check, sweeps, tuning, schedule, mode)


def simulated_dim(sim_dim: int | None, schedule: NoiseSchedule) -> int:
    dim = sim_dim or schedule.dim
    if dim is None:
        raise NcsnTuneError("the simulation needs a dimension: give the schedule's D or the dimensions per chain", fields=("dim", "sim_dim"))
    return dim


@simulate.command("sampler")
@chain_options
@click.option("--sampler", type=click.Choice(["pc", "diffusers"]), required=True,
              help="pc (score_sde's predictor-corrector sampler) or diffusers (ScoreSdeVePipeline).")
@click.option("--predictor", type=click.Choice(PREDICTORS), help="pc: score_sde's sampling.predictor [default: reverse_diffusion].")
@click.option("--corrector", type=click.Choice(CORRECTORS), help="pc: score_sde's sampling.corrector [default: langevin].")
@click.option("--sampling-eps", type=float, default=SAMPLING_EPS, show_default=True, help="The end time of the t grid linspace(1, eps, N).")
@click.option("--snr", type=float, help="The corrector's snr [default: as step-size --sampler resolves it].")
@json_option
def simulate_sampler_cmd(steps_per_scale, chains, sim_dim, seed, sampler, predictor, corrector, sampling_eps, snr, as_json, **opts):
    """Another tool's loop run with particles against its single-Gaussian model: s^2/sigma^2 after the corrector at the last
    level, measured against predicted.

    \b
    ncsn-tune simulate sampler --sampler pc --sigma-max 50 --num-scales 1000 --dim 3072
    """
    loop = chosen_sampler(sampler, predictor, corrector, sampling_eps)
    simulate_loop(Report(as_json), loop, opts, steps_per_scale, snr, chains, sim_dim, seed)


def simulate_loop(report: Report, loop: Sampler, opts, steps_per_scale, snr, chains, sim_dim, seed) -> None:
    """``simulate --sampler pc|diffusers``: the loop run with particles against its single-Gaussian model."""
    from ..analysis.samplers import simulate_sampler
    from ..tuning import resolve_sampler_step

    data = read_data(report, opts)
    given = given_from(opts, data, steps_per_scale=steps_per_scale, snr=snr)
    choice = resolve_schedule(given, workdir=workdir())
    step, notes = resolve_sampler_step(given, loop, choice, workdir=workdir())
    schedule = require_schedule(choice)
    dim = simulated_dim(sim_dim, schedule)
    with report.progress() as progress:
        check = simulate_sampler(loop, schedule.sigma_max, schedule.sigma_min, schedule.num_scales, step.steps_per_scale, step.snr,
                                 dim, chains, seed, progress=progress)
    report.result({**check.to_dict(), "notes": [*choice.notes, *notes]})
    report.notes([*choice.notes, *notes])
    report.line(f"{loop.describe()}, N = {schedule.num_scales}, M = {step.steps_per_scale}, snr {fmt(step.snr, 5)}, {chains} chains x {dim} "
                f"dimensions: s^2/sigma^2 after the corrector at the last level measured {check.measured_ratio:.5f} against the model's "
                f"{check.predicted_ratio:.5f} ({check.z:+.1f} standard errors of {check.standard_error:.5f}).")


def render_proposition3(report: Report, check, sweeps, tuning, schedule: NoiseSchedule, mode: str) -> None:
    from ..analysis.simulation import compounded_ratios

    report.notes(tuning.notes)
    m, eps = check.steps_per_scale, check.step_size
    report.line(f"M = {m}, eps = {eps:.6e}, {check.num_chains} chains x {check.dim} dimensions, mode {mode}.")
    n = len(check.sigmas)
    rows = [[str(i), f"{check.sigmas[i]:.4g}", f"{check.predicted[i]:.5f}", f"{check.measured[i]:.5f}", f"{check.standard_errors[i]:.5f}"]
            for i in sorted({0, 1, n // 2, n - 1})]
    report.table("Proposition 3 by Monte Carlo (exact score of an isotropic Gaussian)",
                 ["scale i", "sigma", "predicted s^2/sigma^2", "measured", "standard error"], rows, (0, 1, 2, 3, 4))
    z = abs(check.measured_ratio - check.predicted_ratio) / check.standard_error
    report.line(f"Last scale: measured {check.measured_ratio:.5f} against {check.predicted_ratio:.5f} ({z:.1f} standard errors); "
                f"largest relative gap over all {n} scales {check.max_relative_error:.2%}.")
    if mode == "per-scale":
        report.line(f"Chains that run through all scales without reset compound the excess and settle near "
                    f"{compounded_ratios(schedule.sigmas, m, eps)[-1]:.4f} (--mode annealed measures that).")
    for s in sweeps:
        report.line(f"M = {s.steps_per_scale}: lowest measured ratio at eps = {s.lowest_measured_at:.3g} on the factor-of-2 grid "
                    f"(Technique 4's optimum {s.optimum.step_size:.3g}).")


@simulate.command("mixture")
@click.option("--dim", type=click.IntRange(min=1), default=2, show_default=True, help="Dimension of the mixture.")
@click.option("--weights", default="0.8,0.2", show_default=True, help="Mode weights of the mixture.")
@click.option("--separation", type=float, default=10.0, show_default=True, help="Distance between the modes.")
@click.option("--tau", type=float, default=0.5, show_default=True, help="Standard deviation of each mixture component.")
@click.option("--small-sigma-max", type=float, default=1.0, show_default=True, help="The too-small sigma_max.")
@click.option("--sigma-min", type=float, default=A.sigma_min, show_default=True, help="The smallest scale.")
@click.option("--overlap", "target_overlap", type=float, default=A.target_overlap, show_default=True,
              help="Target overlap C of adjacent scales (Technique 2's L for each sigma_max).")
@click.option("--M", "steps_per_scale", type=click.IntRange(min=1), default=A.steps_per_scale, show_default=True,
              help="Langevin steps per scale.")
@click.option("--samples", "num_samples", type=click.IntRange(min=1), default=1000, show_default=True, help="Samples.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help="Random seed, 0 to 2^63 - 1.")
@path_option("--output", help="Figure of the result (.png or .pdf).")
@force_option
@json_option
def simulate_mixture(dim, weights, separation, tau, small_sigma_max, sigma_min, target_overlap, steps_per_scale, num_samples, seed,
                     output, force, as_json):
    """The paper's Figure 2 experiment: a mixture sampled with a small sigma_max and with Technique 1's; the shares of the
    modes against their weights.

    \b
    ncsn-tune simulate mixture --output gmm.png
    """
    from ..analysis.simulation import gmm_experiment, mixture_on_circle

    report = Report(as_json)
    check_figure(output, force)
    try:
        w = [float(v) for v in weights.split(",")]
    except ValueError:
        raise NcsnTuneError(f"--weights takes numbers separated by commas, got {weights!r}") from None
    mixture = mixture_on_circle(w, separation, dim, tau)
    m = steps_per_scale
    results = gmm_experiment(mixture, small_sigma_max, sigma_min, num_samples, m, target_overlap, seed)
    if output is not None:
        from ..plots import plot_gmm

        save_figure(report, plot_gmm(results, mixture), output)
    report.result({"dim": dim, "weights": mixture.weights.tolist(), "results": [r.to_dict() for r in results]})
    rows = [[f"{r.sigma_max:.3g} ({r.label})", str(r.num_scales), ", ".join(f"{f:.3f}" for f in r.fractions),
             ", ".join(f"{v:.3f}" for v in r.weights), f"{r.total_variation:.3f}"] for r in results]
    report.table(f"Figure 2 experiment: {len(w)} modes in {dim} dimensions, {num_samples} samples, M = {m}",
                 ["sigma_max", "L", "mode shares", "weights", "total variation"], rows, (1, 4))
    report.line("Too small a sigma_max leaves each chain in the basin it started in, so the shares follow the basins, not the weights.")
