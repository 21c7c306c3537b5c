"""Benchmark: `ncsn-tune sigmas --data FOLDER` on a folder of 20,000 64x64 PNGs (CelebA-64 size), wall clock.

The folder is made once from the real CIFAR-10 subset (upscaled to 64x64, flipped and shifted copies so
that the images differ) or, without it, from random images. Each variant runs the real command in a fresh
process, --repeat times, and the table gives the median:

- this code with one decoding process (NCSN_TUNE_DECODE_WORKERS=1) and with one per core;
- with --baseline-python PY, the same command run by another interpreter with another version of ncsn_tune
  installed (e.g. a venv with the code before this change), for a before/after on one machine in one run.

    python -m venv /tmp/v-old && /tmp/v-old/bin/pip install /path/to/old/checkout
    PYTHONPATH=. python benchmarks/image_folder.py --subset ../shared/data/cifar10-subset --baseline-python /tmp/v-old/bin/python
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_folder(folder: Path, count: int, subset: str | None) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.png"))) >= count:
        return
    if subset:
        from ncsn_tune.data import load_cifar10

        source = load_cifar10(subset, download=False).values.transpose(0, 2, 3, 1)
    else:
        source = np.random.default_rng(0).integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8)
    for i in range(count):
        img, k = source[i % len(source)], i // len(source)
        if k:
            img = np.roll(img[:, ::-1] if k % 2 else img, k, axis=0)
        Image.fromarray(img).resize((64, 64), Image.BILINEAR).save(folder / f"{i:06d}.png")


def time_once(folder: Path, env: dict, python: str = sys.executable) -> float:
    (folder.parent / "bench_schedule.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    r = subprocess.run([python, "-m", "ncsn_tune", "sigmas", "--data", str(folder), "--device", "cpu", "--json",
                        "--output", str(folder.parent / "bench_schedule.json")], env=env, capture_output=True, text=True,
                       cwd=folder.parent)  # not the repository: python -m would import the checkout there, whichever interpreter runs
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default="/tmp/folder20k")
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--subset", help="the CIFAR-10 subset to make the images from (default: random images)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--baseline-python", help="an interpreter with another version of ncsn_tune installed, timed the same way")
    args = p.parse_args()
    folder = Path(args.folder)
    make_folder(folder, args.count, args.subset)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{platform.platform()}, {cores} cores, Python {platform.python_version()}; {args.count:,} PNGs of 64x64 in {folder}")
    base = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(cores))}
    variants = []
    if args.baseline_python:
        variants.append(("baseline (--baseline-python)", base, args.baseline_python))
    variants.append(("this code, 1 decoding process", {**base, "NCSN_TUNE_DECODE_WORKERS": "1"}, sys.executable))
    variants.append((f"this code, {cores} decoding processes", base, sys.executable))
    time_once(folder, base)  # the files into the page cache
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for _ in range(args.repeat):  # interleaved, so that every variant meets the same machine
        for name, env, python in variants:
            times[name].append(time_once(folder, env, python))
    rows = [(name, statistics.median(times[name])) for name, _, _ in variants]
    first = rows[0][1]
    print(f"\n{'variant':<36} {'wall (median)':>14} {'speed-up':>9}   all runs")
    for name, seconds in rows:
        print(f"{name:<36} {seconds:13.2f}s {first / seconds:8.2f}x   {', '.join(f'{t:.2f}' for t in times[name])}")


if __name__ == "__main__":
    main()
