"""Benchmark: where the wall clock of `ncsn-tune sample` goes, phase by phase, in one fresh process.

Does what the command does (sample_checkpoint, then write_samples) with a timer around each phase: importing
torch and ncsn_tune, reading the checkpoint, building the model, building the fast score (CUDA-graph capture,
torch.compile, loading or saving the run's compiled artefacts),
the Langevin loop and writing the files. Prints a table and the machine.

    PYTHONPATH=. python benchmarks/sample_phases.py --checkpoint runs/cifar10 --num 1000
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import functools  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

PHASES: list[tuple[str, float, float, str]] = []  # (name, start, seconds, thread)


def timed(owner, name: str, label: str | None = None) -> None:
    """Wrap ``owner.name`` so that each call is recorded as a phase."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            PHASES.append((label or name, t0 - START, time.perf_counter() - t0, threading.current_thread().name))

    setattr(owner, name, wrapper)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--batch-size", type=int, help="[default: the command's, 1,000 CIFAR-10 images on a GPU]")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--output", default="/tmp/sample_phases.png")
    args = p.parse_args()

    t0 = time.perf_counter()
    import torch

    PHASES.append(("import torch", t0 - START, time.perf_counter() - t0, "MainThread"))
    t0 = time.perf_counter()
    import importlib

    accel, generate = (importlib.import_module(f"ncsn_tune.model.{name}") for name in ("accel", "generate"))

    PHASES.append(("import ncsn_tune.model.generate", t0 - START, time.perf_counter() - t0, "MainThread"))
    timed(generate, "load_checkpoint", "read the checkpoint")
    timed(generate, "load_model", "build the model, load the EMA weights")
    timed(accel.FastScore, "__init__", "build a fast score (capture; compile if on)")
    timed(accel.CompileCache, "load", "load the compiled artefacts")
    timed(accel.CompileCache, "save", "save the compiled artefacts")
    timed(accel, "import_compiler", "import torch's compiler")
    timed(accel.SwitchingScore, "_prepare", "import, load artefacts, compile (thread)")
    timed(accel.SwitchingScore, "switch", "switch: wait for the compile, capture")
    timed(generate, "sample_annealed_langevin", "Langevin loop")
    timed(generate, "write_samples", "write the PNG grid")

    compile = {"auto": None, "on": True, "off": False}[args.compile]
    run = generate.sample_checkpoint(args.checkpoint, num=args.num, batch_size=args.batch_size, compile=compile)
    generate.write_samples(run, Path(args.output))
    total = time.perf_counter() - START

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"{platform.node()}: {gpu}, torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(f"sample --num {args.num} --batch-size {args.batch_size or 'default'} --compile {args.compile} from {args.checkpoint}\n")
    print(f"{'phase':<44} {'starts at (s)':>13} {'takes (s)':>10}   thread")
    for name, start, seconds, thread in PHASES:
        print(f"{name:<44} {start:13.2f} {seconds:10.2f}   {'background' if thread != 'MainThread' else 'main'}")
    print(f"{'whole process':<44} {0:13.2f} {total:10.2f}")
    images_per_s = args.num / sum(s for n, _, s, _ in PHASES if n == "Langevin loop")
    print(f"\nLangevin loop: {images_per_s:.2f} images/s")
    for note in run.tuning.notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
