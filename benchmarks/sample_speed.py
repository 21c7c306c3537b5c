"""Benchmark: annealed Langevin sampling speed on a GPU (CIFAR-10 configuration, L = 232, M = 5).

A full run is 232 x 5 Langevin steps + 1 denoising step = 1,161 network evaluations per batch.
Variants (same weights: a checkpoint of ours, or random weights):

- official: the official sampler and model (fp32), when --official DIR holds its models/ folder;
- fp32: our sampler and network, plain fp32 eager;
- bf16+cl+graph: bf16 autocast, channels_last, the forward pass in one CUDA graph;
- +compile: the same with torch.compile.

Steps/s are measured over --timed-steps evaluations after warm-up and converted to images/s for the
full 1,161-evaluation schedule; one complete run of the fastest variant checks the conversion.
Then fp32 and bf16 samples from the same seed are compared (pixel difference and statistics).

    PYTHONPATH=. python benchmarks/sample_speed.py --checkpoint runs/cifar10 --official device_data/official_ncsnv2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from official import import_official

from ncsn_tune import NoiseSchedule
from ncsn_tune.model.accel import FastScore, SpeedSwitches
from ncsn_tune.model.checkpoint import load_model
from ncsn_tune.model.network import NCSNv2
from ncsn_tune.model.sampling import sample_annealed_langevin

EVALS = 232 * 5 + 1
FP32 = SpeedSwitches(bf16=False, channels_last=False, fused_adam=False, compile=False, cuda_graphs=False)


def official_model(official_dir: Path, state: dict, sigmas: torch.Tensor, device):
    import argparse as ap

    Official = import_official(official_dir, "models.ncsnv2").NCSNv2

    ns = ap.Namespace
    config = ns(data=ns(logit_transform=False, rescaled=False, channels=3, image_size=32),
                model=ns(normalization="InstanceNorm++", ngf=128, num_classes=len(sigmas), nonlinearity="elu", sigma_dist="geometric",
                         sigma_begin=float(sigmas[0]), sigma_end=float(sigmas[-1])), device=device)
    model = Official(config).to(device).eval()
    model.load_state_dict({**state, "sigmas": sigmas.to(device)})
    return model


def time_steps(score_fn, x, sigma, steps: int) -> float:
    """Evaluations per second of x <- x + a s(x) + sqrt(2a) z, the Langevin step."""
    alpha = 1e-4
    for _ in range(5):
        x = x + alpha * score_fn(x, sigma) + (2 * alpha) ** 0.5 * torch.randn_like(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        x = x + alpha * score_fn(x, sigma) + (2 * alpha) ** 0.5 * torch.randn_like(x)
    torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="our run folder or checkpoint (default: random weights)")
    p.add_argument("--official", help="folder with the official models/ (optional)")
    p.add_argument("--batches", default="100,1000")
    p.add_argument("--timed-steps", type=int, default=60)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--compare", type=int, default=100, help="samples for the fp32 / bf16 comparison (0: skip)")
    args = p.parse_args()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    schedule = NoiseSchedule.from_num_scales(50.0, 3072, 232)
    if args.checkpoint:
        model = load_model(Path(args.checkpoint), device=device)
        schedule_sigmas = model.sigmas
    else:
        torch.manual_seed(0)
        model = NCSNv2(3, 32, 128, sigmas=schedule.sigmas).to(device).eval()
        schedule_sigmas = model.sigmas
    state = {k: v for k, v in model.state_dict().items() if k != "sigmas"}
    sigmas = torch.tensor(schedule.sigmas, dtype=torch.float32, device=device)

    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        x = torch.rand(batch, 3, 32, 32, device=device)
        sigma = torch.full((batch,), 1.0, device=device)
        variants = []
        if args.official:
            off = official_model(Path(args.official), state, sigmas, device)
            labels = torch.full((batch,), 100, dtype=torch.long, device=device)
            variants.append(("official fp32", lambda xx, s, off=off, labels=labels: off(xx, labels)))
        variants.append(("fp32", FastScore(model, x.shape, FP32)))
        variants.append(("bf16+cl+graph", FastScore(model, x.shape, SpeedSwitches(compile=False))))
        if not args.no_compile:
            t0 = time.perf_counter()
            fast = FastScore(model, x.shape, SpeedSwitches(compile=True))
            print(f"compile + capture at batch {batch}: {time.perf_counter() - t0:.1f} s", flush=True)
            variants.append(("+compile", fast))
        for name, fn in variants:
            with torch.no_grad():
                rate = time_steps(fn, x.clone(), sigma, args.timed_steps)
            rows.append((batch, name, rate, rate * batch / EVALS))
            print(f"batch {batch:5d}  {name:<15} {rate:8.1f} steps/s  {rate * batch / EVALS:8.2f} images/s", flush=True)
        model = model.to(memory_format=torch.contiguous_format)

    # one complete run with the fastest variant at batch 100, to check the conversion
    best = FastScore(model, (100, 3, 32, 32), SpeedSwitches(compile=not args.no_compile))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    sample_annealed_langevin(best, torch.rand(100, 3, 32, 32, device=device), sigmas, steps_per_scale=5, step_size=6.2e-6,
                             generator=torch.Generator(device).manual_seed(0))
    torch.cuda.synchronize()
    full = time.perf_counter() - t0
    print(f"complete run, batch 100, {'+compile' if not args.no_compile else 'bf16+cl+graph'}: {full:.2f} s = {100 / full:.2f} images/s")

    if args.compare:
        x0 = torch.rand(args.compare, 3, 32, 32, device=device, generator=torch.Generator(device).manual_seed(1))
        outs = {}
        # built one at a time: a captured graph reads the weights where they were at capture time
        fast = [("fp32", lambda: FastScore(model, x0.shape, FP32)),
                ("bf16+cl+graph", lambda: FastScore(model, x0.shape, SpeedSwitches(compile=False)))]
        if not args.no_compile:
            fast.append(("+compile", lambda: FastScore(model, x0.shape, SpeedSwitches(compile=True))))
        for name, make in fast:
            outs[name] = sample_annealed_langevin(make(), x0.clone(), schedule_sigmas, steps_per_scale=5, step_size=6.2e-6,
                                                  generator=torch.Generator(device).manual_seed(2)).clamp(0, 1)
        a = outs["fp32"]
        print(f"\nsame seed, {args.compare} samples, against fp32 (channel means {[round(v, 4) for v in a.mean((0, 2, 3)).tolist()]}, "
              f"pixel std {float(a.std()):.4f}):")
        for name, b in outs.items():
            if name != "fp32":
                print(f"  {name:<14} mean |pixel difference| {float((a - b).abs().mean()) * 255:.2f} / 255, "
                      f"channel means {[round(v, 4) for v in b.mean((0, 2, 3)).tolist()]}, pixel std {float(b.std()):.4f}")

    print(f"\n{'batch':>6} {'variant':<15} {'steps/s':>9} {'images/s':>9}")
    base = next((r[3] for r in rows if r[1] == "official fp32" and r[0] == 100), None)
    for batch, name, rate, ips in rows:
        print(f"{batch:>6} {name:<15} {rate:9.1f} {ips:9.2f}" + (f"   {ips / base:.1f}x official at batch 100" if base else ""))


if __name__ == "__main__":
    main()
