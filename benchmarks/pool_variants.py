"""Benchmark: the CRP blocks' 5x5 max pool written three ways, eager and compiled (CIFAR-10 NCSNv2, bf16).

The network's pool (``network.max_pool_5x5``) is swapped for:

- native: ``F.max_pool2d(x, 5, stride=1, padding=2)`` (the official code's);
- separable: a 5x1 then a 1x5 max pool (the network's choice; the same maxima);
- shifts: the maximum of shifted slices of a -inf-padded copy (what a fused kernel would read).

Each variant runs through ``FastScore`` (bf16, channels_last, CUDA graph), eager or compiled with
the given modes; the table gives network evaluations/s and images/s of the 1,161-evaluation schedule.

    python benchmarks/pool_variants.py --batch 1000 --modes eager,default --pools native,separable,shifts
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ncsn_tune.model import network
from ncsn_tune.model.accel import FastScore, SpeedSwitches
from ncsn_tune.model.network import NCSNv2


def shifted_maxima(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[2:]
    padded = F.pad(x, (2, 2, 2, 2), value=float("-inf"))
    rows = padded[:, :, :, 0:w]
    for k in range(1, 5):
        rows = torch.maximum(rows, padded[:, :, :, k : k + w])
    out = rows[:, :, 0:h]
    for k in range(1, 5):
        out = torch.maximum(out, rows[:, :, k : k + h])
    return out


POOLS = {
    "native": lambda x: F.max_pool2d(x, 5, stride=1, padding=2),
    "separable": network.max_pool_5x5,
    "shifts": shifted_maxima,
}


def evaluations_per_second(score, x, sigma, reps: int = 30) -> float:
    for _ in range(3):
        score(x, sigma)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        score(x, sigma)
    torch.cuda.synchronize()
    return reps * x.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--modes", default="eager,default", help="eager and/or torch.compile modes")
    p.add_argument("--pools", default="native,separable,shifts")
    args = p.parse_args()
    torch.backends.cudnn.benchmark = True
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, batch {args.batch}")
    torch.manual_seed(0)
    model = NCSNv2(3, 32, 128).cuda().eval()
    x = torch.rand(args.batch, 3, 32, 32, device="cuda")
    sigma = torch.ones(args.batch, device="cuda")
    original = network.max_pool_5x5
    try:
        for pool in args.pools.split(","):
            network.max_pool_5x5 = POOLS[pool]  # CRPBlock looks the function up at call time
            for mode in args.modes.split(","):
                torch._dynamo.reset()
                t0 = time.perf_counter()
                switches = SpeedSwitches(compile=mode != "eager", compile_mode="default" if mode == "eager" else mode)
                score = FastScore(model, x.shape, switches)
                build = time.perf_counter() - t0
                rate = evaluations_per_second(score, x, sigma)
                print(f"pool {pool:<10} {mode:<28} build {build:6.1f} s  {rate:8.0f} evaluations/s  {rate / 1161:6.2f} images/s", flush=True)
                model = model.to(memory_format=torch.contiguous_format)
    finally:
        network.max_pool_5x5 = original


if __name__ == "__main__":
    main()
