"""Benchmark: fidelity of ncsn_tune against the official NCSNv2 code, in one protocol (issue 24).

Both train for the same steps on the real CIFAR-10 subset with the official CIFAR-10 configuration (sigma_max 50,
232 scales, eps 6.2e-6, M = 5, batch 128, Adam 1e-4, EMA 0.999), each with its own code and its own initial weights:

- ours: as a user types it, ``ncsn-tune train --config cifar10.yml --data-root SUBSET --steps N`` and
  ``ncsn-tune sample --checkpoint RUN --num 1000 --seed K --npz ...`` (two sample sets, seeds 0 and 1);
- official: the official code's model (``models.ncsnv2.NCSNv2``), loss (``losses.dsm.anneal_dsm_score_estimation``),
  EMA helper (``models.ema.EMAHelper``) and Adam as its runner builds them, fp32 as shipped, trained on the same
  subset with random flips (its runner's data loader checks the full files' md5 and cannot read the subset), and
  sampled with its own ``anneal_Langevin_dynamics`` (final_only, denoise), as its fast_fid does;
  ``--official DIR`` is a copy of its ``models/`` and ``losses/`` (not part of this project).

Then, for each: the held-out DSM loss of the EMA weights on the subset's 1,017 test images, scored by the official
loss function (4 passes, seed 1; our weights load into the official class by name), and FID of its 1,000 samples
against the subset's test split with the TensorFlow FID Inception network that the fid extra ships. How large the
noise is: the FID of ours' second sample set (another seed), the bootstrap standard deviation of each FID (the
samples drawn again with replacement, 200 times) and the FID between ours' two sets.

Phases, so that the GPU work and the FID can run on different machines::

    PYTHONPATH=. python benchmarks/fidelity.py ours     --subset device_data/cifar10-subset --config cifar10.yml --work runs/fidelity
    PYTHONPATH=. python benchmarks/fidelity.py official --subset device_data/cifar10-subset --official device_data/official_ncsnv2 --work runs/fidelity
    PYTHONPATH=. python benchmarks/fidelity.py score    --subset ../shared/data/cifar10-subset --work runs/fidelity

``ours`` and ``official`` write ``{name}_samples_seed{K}.npz`` (uint8, N x 32 x 32 x 3, rounded as image files are)
and ``{name}_loss.json`` into --work; ``score`` prints the table (of one or several --work folders, e.g. one per
training seed).

Where a gap comes from: ``official --samplers official,ours,ours-fp32`` also samples the official EMA weights with our
sampler (``ncsn_tune.model.generate``: bf16 autocast and a CUDA graph, as ``ncsn-tune sample`` runs it) and with our
sampler in fp32 (``official_by_ours_samples_seed0.npz``, ``official_by_ours-fp32_samples_seed0.npz``): the same
weights through both samplers set the sampler's share apart from the training's; ``--seed`` gives a second training
run of either code (the training-seed noise).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HELD_OUT_PASSES, HELD_OUT_SEED = 4, 1


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()}: {gpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}, Python {platform.python_version()}"


def official_config(official_yaml: dict, device):
    """The official CIFAR-10 YAML as the namespace its modules read."""
    import argparse as ap

    def ns(d):
        return ap.Namespace(**{k: ns(v) if isinstance(v, dict) else v for k, v in d.items()})

    config = ns(official_yaml)
    config.device = device
    return config


def official_held_out(official_dir: Path, model, test_images, sigmas, device) -> dict:
    """The official loss function on the test images: ``HELD_OUT_PASSES`` passes, random scales and noise of seed
    ``HELD_OUT_SEED``, batches of 128; the mean and the mean by quarter of the scales (largest sigma first)."""
    import torch

    from official import import_official

    dsm = import_official(official_dir, "losses.dsm").anneal_dsm_score_estimation
    losses, scales = [], []
    torch.manual_seed(HELD_OUT_SEED)
    model.eval()
    with torch.no_grad():
        for _ in range(HELD_OUT_PASSES):
            for start in range(0, len(test_images), 128):
                x = test_images[start:start + 128].to(device)
                labels = torch.randint(0, len(sigmas), (x.shape[0],), device=device)
                per_image = []
                dsm(model, x, sigmas, labels, 2.0, hook=lambda loss, lab: per_image.append(loss.detach()))
                losses.append(per_image[0].cpu())
                scales.append(labels.cpu())
    loss, label = torch.cat(losses).double(), torch.cat(scales)
    quarters = [float(loss[(label >= q * len(sigmas) // 4) & (label < (q + 1) * len(sigmas) // 4)].mean()) for q in range(4)]
    return {"held_out_loss": float(loss.mean()), "by_quarter": quarters, "images": len(test_images), "passes": HELD_OUT_PASSES,
            "seed": HELD_OUT_SEED}


def to_uint8(x) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> (N, H, W, C) uint8, rounded (as torchvision's save_image and our npz do)."""
    return np.clip(np.floor(np.asarray(x, dtype=np.float32) * 255.0 + 0.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def one_work(args) -> Path:
    """The one --work folder of a GPU phase, created."""
    if args.work and len(args.work) > 1:
        raise SystemExit("ours and official write into one --work folder; score reads several")
    work = Path(args.work[0] if args.work else "runs/fidelity")
    work.mkdir(parents=True, exist_ok=True)
    return work


def load_official_module(official_dir: Path, config):
    from official import import_official

    return import_official(official_dir, "models.ncsnv2").NCSNv2(config)


def run_official(args) -> None:
    """Train (unless its EMA weights are in --work already), score and sample the official code."""
    import torch
    import yaml

    from official import import_official

    from ncsn_tune.data import load_cifar10
    from ncsn_tune.model.batches import BatchSampler, DeviceImages

    device = torch.device(args.device)
    work = one_work(args)
    config = official_config(yaml.safe_load(Path(args.config).read_text()), device)
    get_sigmas = import_official(args.official, "models").get_sigmas
    sigmas = get_sigmas(config)
    weights = work / "official_ema.pt"
    log = {"machine": machine(), "steps": args.steps, "training_seed": args.seed}
    if not weights.is_file():
        EMAHelper = import_official(args.official, "models.ema").EMAHelper
        dsm = import_official(args.official, "losses.dsm").anneal_dsm_score_estimation
        torch.manual_seed(args.seed)
        model = torch.nn.DataParallel(load_official_module(args.official, config).to(device))  # as its runner wraps it
        opt = torch.optim.Adam(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay,
                               betas=(config.optim.beta1, 0.999), amsgrad=config.optim.amsgrad, eps=config.optim.eps)
        ema = EMAHelper(mu=config.model.ema_rate)
        ema.register(model)
        images = DeviceImages(load_cifar10(args.subset, split="train", download=False), device)
        batches = BatchSampler(len(images), config.training.batch_size, args.seed, config.data.random_flip)
        t0, window = time.perf_counter(), []
        for step in range(1, args.steps + 1):
            x = images.batch(*batches.next())
            loss = dsm(model, x, sigmas, None, config.training.anneal_power)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ema.update(model)
            window.append(loss.detach())
            if step % 500 == 0:
                print(f"official step {step}: mean loss of the last 500 {float(torch.stack(window).mean()):.2f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
                window = []
        log["train_seconds"] = time.perf_counter() - t0
        torch.save(ema.state_dict(), weights)  # the EMA shadow: every parameter, by the inner module's names
    inner = load_official_module(args.official, config).to(device)
    missing, unexpected = inner.load_state_dict(torch.load(weights, map_location=device, weights_only=True), strict=False)
    if unexpected or set(missing) - {"sigmas"}:
        raise SystemExit(f"the official EMA weights do not load: missing {missing}, unexpected {unexpected}")
    model = torch.nn.DataParallel(inner)  # its fast_fid samples the EMA copy wrapped like this
    test = torch.from_numpy(load_cifar10(args.subset, split="test", download=False).unit_float32(slice(None)))
    log.update(official_held_out(args.official, model, test, sigmas, device))
    print(f"official held-out loss {log['held_out_loss']:.2f}", flush=True)
    (work / "official_loss.json").write_text(json.dumps(log, indent=1))
    for sampler in (args.samplers.split(",") if args.samples else []):
        t0 = time.perf_counter()
        if sampler == "official":
            anneal = import_official(args.official, "models").anneal_Langevin_dynamics
            torch.manual_seed(0)
            init = torch.rand(args.samples, config.data.channels, config.data.image_size, config.data.image_size, device=device)
            x = anneal(init, model, sigmas.cpu().numpy(), config.fast_fid.n_steps_each, config.fast_fid.step_lr,
                       final_only=True, verbose=False, denoise=config.sampling.denoise)[-1]
            x = torch.clamp(x, 0.0, 1.0).cpu()  # its fast_fid passes sigmas as NumPy; its inverse_data_transform for pixels in [0, 1]
            name = "official_samples_seed0"
        else:
            x = sample_with_ours(weights, config, sigmas, args.samples, device, bf16=sampler == "ours").clamp(0.0, 1.0)
            name = f"official_by_{sampler}_samples_seed0"
        log[f"sample_seconds_{sampler}"] = time.perf_counter() - t0
        np.savez_compressed(work / f"{name}.npz", uint8=to_uint8(x.numpy()))
        print(f"official weights, {sampler} sampler: {args.samples} samples in {log[f'sample_seconds_{sampler}']:.0f} s", flush=True)
        (work / "official_loss.json").write_text(json.dumps(log, indent=1))


def sample_with_ours(weights: Path, config, sigmas, num: int, device, bf16: bool):
    """The official EMA weights in our network, sampled by our sampler (seed 0, the config's M and eps, denoised);
    ``bf16`` False runs the network in fp32 (still channels_last and one CUDA graph)."""
    import torch

    from ncsn_tune.analysis import NoiseSchedule
    from ncsn_tune.model.accel import FastScore, SpeedSwitches, score_batch_size
    from ncsn_tune.model.generate import generate
    from ncsn_tune.model.network import NCSNv2

    sigmas = np.asarray(sigmas.cpu(), dtype=np.float64)
    model = NCSNv2(config.data.channels, config.data.image_size, config.model.ngf, "ncsnv2", sigmas=sigmas).to(device)
    missing, unexpected = model.load_state_dict(torch.load(weights, map_location=device, weights_only=True), strict=False)
    if unexpected or set(missing) - {"sigmas"}:
        raise SystemExit(f"the official EMA weights do not load into our network: missing {missing}, unexpected {unexpected}")
    model.eval()
    schedule = NoiseSchedule.from_num_scales(float(sigmas[0]), None, len(sigmas), sigma_min=float(sigmas[-1]))
    shape = (config.data.channels, config.data.image_size, config.data.image_size)
    batch = score_batch_size(shape, torch.device(device), num)
    score = FastScore(model, (batch, *shape), SpeedSwitches.for_device(device, bf16=bf16))
    return generate(model, schedule, steps_per_scale=config.fast_fid.n_steps_each, step_size=config.fast_fid.step_lr, num=num,
                    batch_size=batch, seed=0, denoise=config.sampling.denoise, score=score)


def run_ours(args) -> None:
    """Train and sample with the ncsn-tune command as a user types it; score the EMA weights with the official loss."""
    import torch
    import yaml

    from ncsn_tune.data import load_cifar10
    from ncsn_tune.model.checkpoint import load_model

    work = one_work(args)
    run = work / "ours"
    cli = [sys.executable, "-m", "ncsn_tune"]
    log = {"machine": machine(), "steps": args.steps, "training_seed": args.seed, "commands": []}
    t0 = time.perf_counter()
    train = [*cli, "train", "--config", str(args.config), "--data-root", str(args.subset), "--steps", str(args.steps), "--output", str(run),
             "--device", args.device, "--seed", str(args.seed)]
    if (run / "config.yaml").exists():
        train.append("--resume")
    log["commands"].append(" ".join(train[3:]))
    subprocess.run(train, check=True)
    log["train_seconds"] = time.perf_counter() - t0
    for seed in range(args.sample_sets):
        npz = work / f"ours_samples_seed{seed}.npz"
        command = [*cli, "sample", "--checkpoint", str(run), "--num", str(args.samples), "--seed", str(seed), "--npz", str(npz),
                   "--output", str(work / f"ours_seed{seed}.png"), "--device", args.device, "--force"]
        log["commands"].append(" ".join(command[3:]))
        t0 = time.perf_counter()
        subprocess.run(command, check=True)
        log[f"sample_seconds_seed{seed}"] = time.perf_counter() - t0
        with np.load(npz) as data:  # keep the uint8 array only
            np.savez_compressed(npz, uint8=data["uint8"])
    if args.official:
        device = torch.device(args.device)
        config = official_config(yaml.safe_load(Path(args.config).read_text()), device)
        official = load_official_module(args.official, config).to(device)
        ours = load_model(run, device=str(device), ema=True)
        state = {k: v for k, v in ours.state_dict().items() if k != "sigmas"}
        missing, unexpected = official.load_state_dict(state, strict=False)
        if unexpected or set(missing) != {"sigmas"}:
            raise SystemExit(f"our weights do not load into the official class: missing {missing}, unexpected {unexpected}")
        test = torch.from_numpy(load_cifar10(args.subset, split="test", download=False).unit_float32(slice(None)))
        log.update(official_held_out(args.official, official, test, official.sigmas, device))
        print(f"ours held-out loss (official scorer) {log['held_out_loss']:.2f}", flush=True)
    (work / "ours_loss.json").write_text(json.dumps(log, indent=1))


def score(args) -> None:
    """FID of every sample set in --work against the subset's test split; the table."""
    import torch

    from ncsn_tune.data import load_cifar10
    from ncsn_tune.model.fid import feature_statistics, fid
    from ncsn_tune.model.inception import find_inception_weights, inception_features, load_fid_inception

    works = [Path(w) for w in (args.work or ["runs/fidelity"])]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    weights = find_inception_weights(args.inception_weights)
    network, sha, _ = load_fid_inception(weights, device)
    reference_data = load_cifar10(args.subset, split="test", download=False)
    cache = works[0] / "features_test.npy"
    if not cache.is_file():
        np.save(cache, inception_features(network, reference_data.unit_float32(slice(None))))
    reference = feature_statistics(np.load(cache), "subset test split", sha)
    rows, features, losses = [], {}, {}
    labels = {work: "" if len(works) == 1 else f"{work.name if [w.name for w in works].count(work.name) == 1 else work}/" for work in works}
    for work in works:
        for npz in sorted(work.glob("*_samples_seed*.npz")):
            cached = work / f"features_{npz.stem}.npy"
            if not cached.is_file():
                with np.load(npz) as data:
                    images = data["uint8"].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
                np.save(cached, inception_features(network, images))
            name = labels[work] + npz.stem
            features[name] = np.load(cached)
            who = npz.stem.split("_samples")[0].split("_by_")[0]  # the training run: official_by_ours_... is official's
            path = work / f"{who}_loss.json"
            losses[name] = json.loads(path.read_text()) if path.is_file() else {}
    rng = np.random.default_rng(0)
    stats = {k: feature_statistics(f, k, sha) for k, f in features.items()}
    for name, f in features.items():
        value = fid(stats[name], reference)
        boot = [fid(feature_statistics(f[rng.integers(0, len(f), len(f))], name, sha), reference) for _ in range(args.bootstrap)]
        loss = losses[name]
        rows.append((name, len(f), value, float(np.std(boot)), loss.get("held_out_loss", float("nan")), loss.get("by_quarter")))
    print(f"Fidelity on the CIFAR-10 subset; FID against its test split ({reference.num_images:,} images), TensorFlow FID Inception "
          f"from {weights.name} (SHA-256 {sha[:12]}), computed on {device}; machine of the FID: {machine()}")
    width = max(26, *(len(name) for name in features))
    print(f"{'sample set':<{width}} {'samples':>7} {'FID':>8} {'bootstrap sd':>12} {'held-out DSM':>12}  by quarter of the scales")
    for name, n, value, sd, loss, quarters in rows:
        q = " / ".join(f"{v:.1f}" for v in quarters) if quarters else ""
        print(f"{name:<{width}} {n:>7} {value:8.2f} {sd:12.2f} {loss:12.2f}  {q}")
    for work in works:
        ours = sorted(k for k in features if k.startswith(f"{labels[work]}ours_"))
        if len(ours) >= 2:
            print(f"FID between ours' two sample sets ({ours[0]} vs {ours[1]}): {fid(stats[ours[0]], stats[ours[1]]):.2f}")
    for work in works:  # one model's weights through the official sampler and ours
        for k in sorted(features):
            if k.startswith(f"{labels[work]}official_by_") and f"{labels[work]}official_samples_seed0" in stats:
                print(f"FID between one model's samples by two samplers ({labels[work]}official_samples_seed0 vs {k}): "
                      f"{fid(stats[f'{labels[work]}official_samples_seed0'], stats[k]):.2f}")
    for a_work, b_work in zip(works, works[1:]):  # one code trained twice
        for stem in ("ours_samples_seed0", "official_samples_seed0"):
            a, b = labels[a_work] + stem, labels[b_work] + stem
            if a in stats and b in stats:
                print(f"FID between two training runs of one code ({a} vs {b}): {fid(stats[a], stats[b]):.2f}")
    for work in works:
        for name in ("ours", "official"):
            path = work / f"{name}_loss.json"
            if path.is_file():
                log = json.loads(path.read_text())
                times = {k: round(v, 1) for k, v in log.items() if k.endswith("seconds") or k.startswith("sample_seconds")}
                print(f"{labels[work]}{name}: {log.get('steps')} steps (training seed {log.get('training_seed', 0)}) on {log.get('machine')}; seconds {times}")
                for command in log.get("commands", []):
                    print(f"  ncsn-tune {command.removeprefix('ncsn_tune ')}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=["ours", "official", "score"])
    p.add_argument("--subset", required=True, help="folder holding cifar-10-batches-py (the real subset)")
    p.add_argument("--config", help="the official cifar10.yml")
    p.add_argument("--official", type=Path, help="folder with the official models/ and losses/")
    p.add_argument("--work", action="append", help="the folder of one training run of each code [default: runs/fidelity]; "
                   "score takes several (e.g. one per training seed)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--sample-sets", type=int, default=2, help="ours: sample sets of different seeds")
    p.add_argument("--samplers", default="official", help="official: comma-separated, of official (its own sampler), ours (our "
                   "sampler, bf16 as ncsn-tune sample runs it) and ours-fp32 [default: official]")
    p.add_argument("--seed", type=int, default=0, help="the training run's seed (initial weights, batches, noise)")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--inception-weights", type=Path)
    p.add_argument("--device", default="cuda", help="ours and official: where the official code runs [default: cuda]")
    args = p.parse_args()
    unknown = set(args.samplers.split(",")) - {"official", "ours", "ours-fp32"}
    if unknown:
        p.error(f"--samplers: unknown {sorted(unknown)}; choose from official, ours, ours-fp32")
    {"ours": run_ours, "official": run_official, "score": score}[args.phase](args)


if __name__ == "__main__":
    main()
