"""Benchmark: does the advice hold on samples? (issue 28)

One model trained as a user trains it (``ncsn-tune sigmas --data cifar10 --data-root SUBSET``, ``ncsn-tune step-size
--M 5``, ``ncsn-tune train --output RUN --steps 20000``: the schedule T1 and T2 derive from the subset, L = 220,
eps from Technique 4), then sampled with every setting the commands advise on, 1,000 samples each (seed 0, the same
starts), each scored by FID against the subset's test split (1,017 images; the TensorFlow FID Inception network of the
fid extra, on the GPU) with a bootstrap spread, and by the chain verdict of ``ncsn-tune sample``:

- annealed Langevin dynamics (M = 5, L = 220): eps at Proposition 3's optimum and x0.25, x0.5, x2, x4, and at the
  optimum of the whole-chain criterion (the loop's chain from N(0, sigma_max^2 I));
- M = 1, 3 (each at Proposition 3's optimum for that M);
- with and without the final denoising step (every chain gives both: the same samples before and after it);
- sampling levels L/2 and 2L (``--num-scales``; Technique 4's eps for that L);
- score_sde's predictor-corrector loop with this network as the score (``ncsn-tune sample --sampler pc``:
  reverse-diffusion predictor, Langevin corrector, M = 1): snr 0.0732 (Technique 4's chain optimum at N = 1000) and
  0.16 (score_sde's published CIFAR-10 value), at N = 220 and N = 1000.

Each sampling setting is resolved by the library the commands use (:func:`ncsn_tune.tuning.resolve_sampling`, as
``ncsn-tune sample --checkpoint RUN ...`` would), runs through the one compiled network at batch 1,000, and its
samples are rounded to 8-bit pixels (as image files are) before FID.

Phases (``all`` runs them in turn; each resumes what a stopped run left)::

    PYTHONPATH=. python benchmarks/advice.py train  --subset device_data/cifar10-subset --work runs/advice
    PYTHONPATH=. python benchmarks/advice.py sample --work runs/advice
    PYTHONPATH=. python benchmarks/advice.py score  --subset device_data/cifar10-subset --work runs/advice --out docs/results

``score`` prints the table and writes ``advice.json``, ``advice_fid.png`` (FID against network evaluations per
image) and ``advice_samples.png`` (16 samples of every setting) to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: score_sde's published snr for its VE CIFAR-10 PC sampler (configs/ve/cifar10_ncsnpp_continuous.py).
PUBLISHED_SNR = 0.16
SEED = 0


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()}: {gpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}, Python {platform.python_version()}"


@dataclass(frozen=True)
class Setting:
    """One way of sampling the trained model, in the terms of ``ncsn-tune sample``."""

    name: str
    what: str
    sampler: str = "ald"
    num_scales: int | None = None
    steps_per_scale: int | None = None
    step_size: float | None = None
    snr: float | None = None

    def command(self, run: str) -> str:
        parts = ["ncsn-tune sample --checkpoint", run, "--num 1000"]
        if self.sampler != "ald":
            parts += ["--sampler", self.sampler]
        for flag, value in (("--num-scales", self.num_scales), ("--M", self.steps_per_scale), ("--step-size", self.step_size),
                            ("--snr", self.snr)):
            if value is not None:
                parts += [flag, f"{value:.6g}" if isinstance(value, float) else str(value)]
        return " ".join(parts)


def settings(schedule, steps_per_scale: int) -> list[Setting]:
    """Every setting measured, from the run's schedule (L levels) and M."""
    from ncsn_tune.analysis.samplers import Sampler, optimal_snr, sampler_step
    from ncsn_tune.analysis.step_size import optimal_step_size, step_size_of_snr

    s, m = schedule, steps_per_scale
    best = optimal_step_size(s.ratio, m, s.sigma_min).step_size
    chain = step_size_of_snr(optimal_snr(Sampler(), s.sigma_max, s.sigma_min, s.num_scales, m), s.sigma_min)
    pc_best = sampler_step(Sampler.named("pc"), s.sigma_max, s.sigma_min, 1000, 1).snr
    out = [Setting("ald_x1", f"ALD, M = {m}, L = {s.num_scales}, eps at Proposition 3's optimum ({best:.4g})")]
    out += [Setting(f"ald_x{f:g}", f"ALD, eps = {f:g} x Proposition 3's", step_size=f * best) for f in (0.25, 0.5, 2.0, 4.0)]
    out.append(Setting("ald_chain", f"ALD, eps at the whole-chain optimum ({chain / best:.3g} x Proposition 3's)", step_size=chain))
    out += [Setting(f"ald_M{k}", f"ALD, M = {k}, Proposition 3's eps for M = {k}", steps_per_scale=k) for k in (1, 3) if k != m]
    half, double = max(2, s.num_scales // 2), 2 * s.num_scales
    out += [Setting(f"ald_L{n}", f"ALD, L = {n} sampling levels, Proposition 3's eps for them", num_scales=n) for n in (half, double)]
    for n in (s.num_scales, 1000):
        for snr, why in ((pc_best, "Technique 4's chain optimum at N = 1000"), (PUBLISHED_SNR, "score_sde's published value")):
            out.append(Setting(f"pc_N{n}_snr{snr:.3g}", f"PC (reverse diffusion + Langevin, M = 1), N = {n}, snr {snr:.4g} ({why})",
                               sampler="pc", num_scales=n, steps_per_scale=1, snr=float(round(snr, 4))))
    return out


def to_uint8(x) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> (N, C, H, W) uint8, rounded as image files are."""
    return np.clip(np.floor(np.asarray(x, dtype=np.float32) * 255.0 + 0.5), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ train


def train(args) -> None:
    """The user's chain from an empty work folder: sigmas, step-size, train (the same line with --resume continues)."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "NCSN_TUNE_WORKDIR": str((work / ".ncsn-tune").resolve()), "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "ncsn_tune"]
    subset = str(Path(args.subset).resolve())
    commands = []
    if not (work / ".ncsn-tune" / "schedule.json").is_file():
        commands += [["sigmas", "--data", "cifar10", "--data-root", subset], ["step-size", "--M", "5"]]
    line = ["train", "--output", "run", "--steps", str(args.steps), *args.train_args.split()]
    commands.append(line + (["--resume"] if (work / "run" / "config.yaml").is_file() else []))
    log = work / "train_commands.log"
    for command in commands:
        t0 = time.perf_counter()
        with log.open("a") as f:
            f.write(f"$ ncsn-tune {' '.join(command)}\n")
        subprocess.run([*cli, *command], check=True, cwd=work, env=env)
        with log.open("a") as f:
            f.write(f"  ({time.perf_counter() - t0:.1f} s)\n")


# ------------------------------------------------------------------------------------------------ sample


class Collect:
    """The chain diagnostics of ``ncsn-tune sample`` and, from the final callback, the samples before the denoising step."""

    def __init__(self, diagnostics) -> None:
        self.diagnostics, self.without_denoising = diagnostics, []
        self.frames = diagnostics.frames

    def __call__(self, info: dict) -> None:
        self.diagnostics(info)
        if info.get("denoised"):
            self.without_denoising.append(info["without_denoising"].detach().float().cpu())


def sample(args) -> None:
    """Every setting's 1,000 samples (and the same chains without the denoising step), uint8, with its verdict."""
    import torch

    from ncsn_tune.analysis.samplers import Sampler
    from ncsn_tune.model.compile_policy import score_network
    from ncsn_tune.model.checkpoint import load_checkpoint, load_model
    from ncsn_tune.model.generate import Diagnostics, generate, network_calls
    from ncsn_tune.tuning import Given, resolve_sampling

    work = Path(args.work)
    out = work / "samples"
    out.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(work / "run")
    model = load_model(ckpt, device=args.device, ema=True)
    shape = (model.channels, model.image_size, model.image_size)
    dim = math.prod(shape)
    batch = min(args.num, 1000)
    score, notes = score_network(model, (batch, *shape), 1e9, args.compile, ckpt.run_dir)
    print(f"network: {'; '.join(notes) or 'CUDA graph'}", flush=True)
    scorer = None
    for setting in settings(ckpt.schedule, int(ckpt.steps_per_scale)):
        if args.only and setting.name not in args.only.split(","):
            continue
        target = out / f"{setting.name}.npz"
        if target.is_file():
            continue
        sampler = Sampler.named("pc") if setting.sampler == "pc" else None
        tuning = resolve_sampling(Given(num_scales=setting.num_scales, steps_per_scale=setting.steps_per_scale,
                                        step_size=setting.step_size, snr=setting.snr if sampler else None, dim=dim, run=ckpt),
                                  sampler, workdir=work / "no_workdir")
        pc = sampler is not None
        diagnostics = Diagnostics(tuning.schedule.num_scales, dim, None if pc else tuning.steps_per_scale, None if pc else tuning.step_size)
        collect = Collect(diagnostics)
        if args.device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        x = generate(model, tuning.schedule, steps_per_scale=tuning.steps_per_scale, step_size=tuning.step_size, num=args.num,
                     batch_size=batch, seed=SEED, score=score, diagnostics=collect, sampler=tuning.sampler, snr=tuning.snr)
        seconds = time.perf_counter() - t0
        before = torch.cat(collect.without_denoising)[: args.num]
        summary = diagnostics.summary()
        record = {"name": setting.name, "what": setting.what, "command": setting.command("run"), "seconds": seconds,
                  "num": args.num, "sampler": tuning.sampler.to_dict(), "num_scales": tuning.schedule.num_scales,
                  "steps_per_scale": tuning.steps_per_scale, "step_size": None if pc else tuning.step_size, "snr": tuning.snr,
                  "variance_ratio": tuning.step.variance_ratio, "network_calls": network_calls(tuning.sampler, tuning.schedule.num_scales,
                                                                                              tuning.steps_per_scale, True),
                  "network_calls_without_denoising": network_calls(tuning.sampler, tuning.schedule.num_scales, tuning.steps_per_scale,
                                                                   False),
                  "notes": list(tuning.notes), "verdict": summary["verdict"],
                  "noise_level": summary["score_norm_times_sigma_over_sqrt_dim"],
                  "finite": bool(torch.isfinite(x).all()), "finite_without_denoising": bool(torch.isfinite(before).all())}
        np.savez_compressed(target.with_suffix(".tmp.npz"), denoised=to_uint8(x.clamp(0, 1).numpy()),
                            without_denoising=to_uint8(before.clamp(0, 1).numpy()), record=json.dumps(record))
        os.replace(target.with_suffix(".tmp.npz"), target)
        print(f"{setting.name:<22} {seconds:6.1f} s  {record['network_calls']:>5} calls/image  verdict: "
              f"{'within' if record['verdict']['within'] else 'off'}", flush=True)
        if scorer is None and inception_available(args):  # FID right away: a lease that ends early keeps what is scored
            scorer = Scorer(args)
        if scorer is not None:
            scored(target, scorer)


# ------------------------------------------------------------------------------------------------ score


class Scorer:
    """FID against the subset's test split on ``device``: the network and the reference statistics made once."""

    def __init__(self, args) -> None:
        import torch

        from ncsn_tune.data import load_dataset
        from ncsn_tune.model.fid import feature_statistics
        from ncsn_tune.model.inception import find_inception_weights, inception_features, load_fid_inception

        self.device, self.bootstrap = torch.device(args.device), args.bootstrap
        weights = find_inception_weights(args.inception_weights)
        self.network, self.sha, _ = load_fid_inception(weights, self.device)
        data = load_dataset("cifar10", args.subset, split="test", download=False)
        t0 = time.perf_counter()
        self.reference = feature_statistics(inception_features(self.network, data.unit_float32(slice(None)), batch_size=500),
                                            "CIFAR-10 subset, test split", self.sha)
        self.reference_seconds = time.perf_counter() - t0

    def __call__(self, images: np.ndarray, name: str) -> dict:
        import torch

        from ncsn_tune.model.fid import bootstrap_fid, feature_statistics, fid
        from ncsn_tune.model.inception import inception_features

        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        features = inception_features(self.network, images.astype(np.float32) / 255.0, batch_size=500)
        value = fid(feature_statistics(features, name, self.sha), self.reference)
        seconds = time.perf_counter() - t0
        spread = bootstrap_fid(features, self.reference, num=self.bootstrap, seed=1, device=self.device)
        return {"fid": value, "fid_bootstrap_sd": float(np.std(spread)), "fid_bootstrap": spread.tolist(), "fid_seconds": seconds}


def inception_available(args) -> bool:
    from ncsn_tune.errors import NcsnTuneError
    from ncsn_tune.model.inception import find_inception_weights

    try:
        find_inception_weights(args.inception_weights)
        return True
    except NcsnTuneError:
        return False


def scored(path: Path, scorer: Scorer | None) -> dict:
    """A setting's record with the FID of both sample sets (computed and stored in its file if missing and ``scorer``)."""
    with np.load(path) as f:
        record = json.loads(str(f["record"]))
        sets = {"denoised": f["denoised"], "without_denoising": f["without_denoising"]}
    if "fids" not in record and scorer is not None:
        record["fids"] = {which: scorer(images, f"{record['name']} {which}") for which, images in sets.items()}
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **sets, record=json.dumps(record))
        os.replace(tmp, path)
        d = record["fids"]["denoised"]
        print(f"{record['name']:<22} FID {d['fid']:.2f} (sd {d['fid_bootstrap_sd']:.2f}), without denoising "
              f"{record['fids']['without_denoising']['fid']:.2f}", flush=True)
    record["grid"] = sets["denoised"][:16]
    return record


def score(args) -> None:
    """FID (and its bootstrap spread) of every setting's samples, with and without the denoising step; the table and
    the figures."""
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scorer = Scorer(args)
    rows, grids = [], []
    for path in sorted((work / "samples").glob("*.npz"), key=lambda p: order(p.stem)):
        if path.name.endswith(".tmp.npz"):
            continue
        record = scored(path, scorer)
        grids.append((record["name"], record.pop("grid")))
        for which, values in record.pop("fids").items():
            calls = record["network_calls"] if which == "denoised" else record["network_calls_without_denoising"]
            rows.append({**record, "final_step": which, **values, "calls": calls})
    head = (f"Advice on samples: one model, {rows[0]['num'] if rows else 0:,} samples per setting (seed {SEED}), FID against the "
            f"CIFAR-10 subset's test split ({scorer.reference.num_images:,} images; their features in {scorer.reference_seconds:.1f} s "
            f"on {scorer.device}), bootstrap sd of {args.bootstrap} resamples; machine: {machine()}")
    print(head)
    print(f"{'setting':<22} {'final step':<18} {'calls':>6} {'FID':>8} {'sd':>6} {'s^2/sigma^2 (model)':>20}  verdict")
    for r in rows:
        verdict = "within" if r["verdict"]["within"] else f"off at {r['verdict']['scales_off']} of {r['verdict']['num_scales']}"
        print(f"{r['name']:<22} {r['final_step']:<18} {r['calls']:>6} {r['fid']:8.2f} {r['fid_bootstrap_sd']:6.2f} "
              f"{r['variance_ratio']:20.5f}  {verdict}")
    if rows:
        print(f"FID of one setting's {rows[0]['num']:,} samples on this machine: {np.median([r['fid_seconds'] for r in rows]):.2f} s "
              "(median: Inception features and the Frechet distance)")
    document = {"machine": machine(), "reference_images": scorer.reference.num_images, "bootstrap": args.bootstrap, "settings": rows}
    (out / "advice.json").write_text(json.dumps(document, indent=1))
    plot(rows, out / "advice_fid.png")
    sample_sheet(grids, out / "advice_samples.png")
    print(f"wrote {out / 'advice.json'}, {out / 'advice_fid.png'}, {out / 'advice_samples.png'}")


def records(args) -> None:
    """Every setting's record so far (the FIDs without their bootstrap draws, no samples) as --out/advice_records.json."""
    out = []
    for path in sorted((Path(args.work) / "samples").glob("*.npz"), key=lambda p: order(p.stem)):
        if path.name.endswith(".tmp.npz"):
            continue
        with np.load(path) as f:
            record = json.loads(str(f["record"]))
        for value in record.get("fids", {}).values():
            value.pop("fid_bootstrap", None)
        out.append(record)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "advice_records.json").write_text(json.dumps(out, indent=1))


def order(name: str) -> tuple:
    groups = ("ald_x1", "ald_x", "ald_chain", "ald_M", "ald_L", "pc_")
    numbers = tuple(float(n) for n in __import__("re").findall(r"\d+(?:\.\d+)?", name))
    return next((i for i, g in enumerate(groups) if name.startswith(g)), len(groups)), numbers, name


def plot(rows: list[dict], path: Path) -> None:
    """FID against network evaluations per image, one marker per setting (filled: with the denoising step; open:
    without). Settings whose FID is more than twice the best sit on the top edge with their value written beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6))
    colours = {"ald_x": "C0", "ald_chain": "C1", "ald_M": "C2", "ald_L": "C3", "pc_": "C4"}
    best = min(r["fid"] for r in rows)
    top = 2.0 * best
    for r in rows:
        colour = next((c for prefix, c in colours.items() if r["name"].startswith(prefix)), "C0")
        filled = r["final_step"] == "denoised"
        x = r["calls"] * (1.0 if filled else 0.97)
        if r["fid"] > top:
            ax.plot(x, top, "^" if filled else "v", color=colour, mfc=colour if filled else "white")
            if filled:
                ax.annotate(f"{r['name']}: FID {r['fid']:.0f} (off scale)", (x, top), textcoords="offset points", xytext=(4, -10),
                            fontsize=7)
            continue
        ax.errorbar(x, r["fid"], yerr=r["fid_bootstrap_sd"], fmt="o" if filled else "s", color=colour,
                    mfc=colour if filled else "white", capsize=2, ms=5)
        if filled:
            ax.annotate(r["name"], (x, r["fid"]), textcoords="offset points", xytext=(5, -3), fontsize=7)
    ax.set_xscale("log")
    ax.set_ylim(best * 0.93, top * 1.03)
    ax.set_xlabel("network evaluations per image")
    ax.set_ylabel(f"FID ({rows[0]['num']:,} samples vs the test split; bars: bootstrap sd)")
    ax.set_title("Sampling settings of one trained NCSNv2 (filled: final denoising step; open: the same chains without it)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def replot(args) -> None:
    """The figure again from a written advice.json (--out)."""
    document = json.loads((Path(args.out) / "advice.json").read_text())
    plot(document["settings"], Path(args.out) / "advice_fid.png")


def sample_sheet(grids: list[tuple[str, np.ndarray]], path: Path) -> None:
    """16 samples of every setting, one row each, named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not grids:
        return
    fig, axes = plt.subplots(len(grids), 1, figsize=(10, 0.75 * len(grids) + 0.3))
    for ax, (name, images) in zip(np.atleast_1d(axes), grids):
        ax.imshow(np.concatenate(list(images.transpose(0, 2, 3, 1)), axis=1))
        ax.set_axis_off()
        ax.set_title(name, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=["train", "sample", "score", "records", "plot", "all"])
    p.add_argument("--subset", default="device_data/cifar10-subset", help="CIFAR-10 (the real subset): the folder holding cifar-10-batches-py/")
    p.add_argument("--work", default="runs/advice")
    p.add_argument("--out", default="runs/advice/results", help="score: where the table's JSON and the figures go")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--train-args", default=os.environ.get("ADVICE_TRAIN_ARGS", ""),
                   help="train: more options for ncsn-tune train (a CPU smoke test: '--ngf 4 --batch-size 8') [default: $ADVICE_TRAIN_ARGS]")
    p.add_argument("--num", type=int, default=1000, help="samples per setting")
    p.add_argument("--only", help="sample: these settings only (comma-separated names)")
    p.add_argument("--bootstrap", type=int, default=100)
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--inception-weights", type=Path)
    args = p.parse_args()
    phases = {"train": [train], "sample": [sample], "score": [score], "records": [records], "plot": [replot], "all": [train, sample, score]}[args.phase]
    for phase in phases:
        phase(args)


if __name__ == "__main__":
    main()
