"""Benchmark: training steps/s on 1 and on N GPUs at a fixed per-GPU batch (DistributedDataParallel).

Runs `ncsn-tune train` twice on the real CIFAR-10 subset, once on one GPU and once through torchrun
on N GPUs with N times the global batch, both without CUDA graphs (DDP's gradient hooks run outside
a captured graph, so the single-GPU run leaves them out too, to compare like with like), and reads
steps/s from metrics.jsonl (the median of the logged windows after the first two, which include
compilation). Prints the machine, a table and the scaling ratio.

    python benchmarks/ddp_speed.py --subset device_data/cifar10-subset --gpus 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(subset: str, gpus: int, per_gpu_batch: int, steps: int, out: Path, compile_mode: str) -> list[dict]:
    args = [sys.executable, "-m", "ncsn_tune", "train", "--data", "cifar10", "--data-root", subset, "--output", str(out),
            "--batch-size", str(per_gpu_batch * gpus), "--steps", str(steps), "--log-every", "50", "--eval-every", str(10**9),
            "--sample-every", str(10**9), "--checkpoint-every", str(10**9), "--no-cuda-graphs", "--compile-mode", compile_mode]
    if gpus > 1:
        args += ["--gpus", str(gpus)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if gpus == 1:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    subprocess.run(args, env=env, check=True)
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subset", required=True)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--per-gpu-batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--compile-mode", default="default")
    args = p.parse_args()
    import torch

    print(f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for gpus in (1, args.gpus):
            metrics = run(args.subset, gpus, args.per_gpu_batch, args.steps, Path(tmp) / f"g{gpus}", args.compile_mode)
            rates = [m["it_per_s"] for m in metrics if "it_per_s" in m][2:]
            losses = [m["loss"] for m in metrics if "loss" in m]
            rows.append((gpus, statistics.median(rates), losses))
    print(f"\n{'GPUs':>4} {'global batch':>12} {'steps/s':>8} {'images/s':>9} {'first losses (per 50 steps)':>30}")
    for gpus, rate, losses in rows:
        print(f"{gpus:>4} {args.per_gpu_batch * gpus:>12} {rate:8.2f} {rate * args.per_gpu_batch * gpus:9.0f}   "
              + ", ".join(f"{v:.0f}" for v in losses[:4]))
    (g1, r1, _), (gn, rn, _) = rows
    print(f"\nscaling at {args.per_gpu_batch} images per GPU: {gn} GPUs give {rn * gn / r1:.2f}x the images/s of 1 "
          f"({rn / r1:.2f}x the steps/s)")


if __name__ == "__main__":
    main()
