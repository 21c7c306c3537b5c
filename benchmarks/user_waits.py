"""Benchmark: the waits users meet, timed as they type the commands (wall clock of the whole process).

- sigmas: `ncsn-tune sigmas --data cifar10` with --device auto and with --device cpu;
- train: `ncsn-tune train --steps N` for each N of --train-steps, with the defaults (torch.compile decided
  from N: off for short runs, compiled in the background and switched to for long ones), printing the
  set-up line and the decision;
- sample: `ncsn-tune sample --num 1000` on the first run, twice, with the defaults (1,000 images per batch on a
  GPU; torch.compile from the sampling network the training run compiled beside itself);
- evaluate: `ncsn-tune evaluate` on the first run (its default 1,000 held-out images at every scale), before
  the sampling (with the defaults: no artefacts yet) and after it.

With --baseline DIR the same commands run on the code in DIR (e.g. `git archive` of the landed commit), for a
before/after on one machine: its `sample` has no --compile or --force (it compiles from 1,000 samples itself),
and is given --batch-size 1000 (its default was 100).

Each command runs in a fresh process with the user's compile cache (~/.cache/ncsn_tune) and an empty work
folder. Prints a table and the machine.

    PYTHONPATH=. python benchmarks/user_waits.py --data-root device_data/cifar10-subset --parts sigmas,train,sample
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args: list[str], env: dict, cwd: Path) -> tuple[float, str, str]:
    """Time one command in a fresh process, as a user types it."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ncsn_tune", *args], env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return seconds, r.stdout, r.stderr


def record(rows: list, name: str, seconds: float, notes: str) -> None:
    rows.append((name, seconds, notes))
    print(f"{name:<36} {seconds:9.1f}   {notes}", flush=True)


def said(text: str, *phrases: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if any(p in line for p in phrases)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--parts", default="sigmas,train,sample")
    p.add_argument("--train-steps", default="2000,4000")
    p.add_argument("--runs", help="folder for the runs (kept, so that a later call can sample from them)")
    p.add_argument("--baseline", help="run the commands on the ncsn_tune in this folder (the code before a change)")
    args = p.parse_args()
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"{platform.node()}: {gpu}, torch {torch.__version__}, {os.cpu_count()} CPUs", flush=True)
    parts = args.parts.split(",")
    runs = Path(args.runs or tempfile.mkdtemp(prefix="user_waits_"))
    runs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "NCSN_TUNE_WORKDIR": str(runs / "work"), "PYTHONUNBUFFERED": "1"}
    if args.baseline:
        env["PYTHONPATH"] = str(Path(args.baseline).resolve())
        print(f"baseline: the code in {env['PYTHONPATH']}", flush=True)
    data = ["--data", "cifar10", "--data-root", str(Path(args.data_root).resolve())]
    rows = []
    if "sigmas" in parts:
        for device in ("auto", "cpu"):
            seconds, _, _ = run(["sigmas", *data, "--device", device, "--json", "--output", str(runs / f"s_{device}.json")], env, runs)
            record(rows, f"sigmas --device {device}", seconds, "")
    if "train" in parts:
        for steps in (int(s) for s in args.train_steps.split(",")):
            out = runs / f"run_{steps}"
            seconds, _, err = run(["train", *data, "--output", str(out), "--steps", str(steps), "--eval-every", "1000000",
                                   "--sample-every", "1000000", "--log-every", "100"], env, runs)
            lines = said(err, "set-up", "torch.compile", "switched", "background compile", "sampling network")
            record(rows, f"train --steps {steps}", seconds, " | ".join(lines))
    first = sorted(runs.glob("run_*"))[0] if list(runs.glob("run_*")) else None
    evaluate = ["evaluate", "--checkpoint", str(first), "--output-dir", str(runs / "evaluation")]
    if "evaluate" in parts and first is not None:
        seconds, out, _ = run(evaluate + ([] if args.baseline else ["--force"]), env, runs)
        record(rows, "evaluate (defaults)", seconds, " | ".join(said(out, "compile", "artefacts", "DSM loss")))
    if "sample" in parts and first is not None:
        command = ["sample", "--checkpoint", str(first), "--num", "1000", "--output", str(runs / "samples.png")]
        variants = ([(["--batch-size", "1000"], "sample --num 1000 --batch-size 1000")] if args.baseline else
                    [([], "sample --num 1000 (first)"), ([], "sample --num 1000 (again)")])
        for extra, label in variants:
            seconds, out, _ = run(command + ([] if args.baseline else ["--force"]) + extra, env, runs)
            record(rows, label, seconds, " | ".join(said(out, "compile", "artefacts")))
    if "evaluate" in parts and first is not None and not args.baseline:
        seconds, out, _ = run(evaluate + ["--force"], env, runs)
        record(rows, "evaluate (defaults, after sampling)", seconds, " | ".join(said(out, "compile", "artefacts", "DSM loss")))
    print(f"\n{'command':<36} {'wall (s)':>9}   what it said")
    for name, seconds, notes in rows:
        print(f"{name:<36} {seconds:9.1f}   {notes}")


if __name__ == "__main__":
    main()
