"""Fault injection: kill -9 a tiny CPU training run at random moments, many times, and check that nothing was lost.

    python tests/fault_injection.py --kills 30 --steps 60

First the run is trained without interruption. Then the same run is started, killed with SIGKILL after a
random delay, and continued (``--resume``, or ``--overwrite`` when it was killed before its first
checkpoint), again and again; after the last kill it is left to finish. After every kill, every checkpoint
in the folder must load; at the end there must be no temporary files left, metrics.jsonl must hold each step
exactly once, and the loss at every step and the final weights must equal the uninterrupted run's bit for
bit (CPU arithmetic is deterministic). Prints a table and the machine it ran on; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


#: The run killed: ``--ngf`` sets its size (and so how long a checkpoint takes to write), ``--checkpoint-every`` how often.
RUN = {"ngf": "8", "checkpoint_every": "3"}


def _train(run_dir: Path, data: Path, steps: int, extra: list[str], env: dict) -> subprocess.Popen:
    args = [sys.executable, "-m", "ncsn_tune", "train", "--data", str(data), "--output", str(run_dir), "--steps", str(steps),
            "--ngf", RUN["ngf"], "--batch-size", "4", "--num-scales", "6", "--log-every", "1", "--checkpoint-every", RUN["checkpoint_every"],
            "--sample-every", "100000", "--eval-every", "100000", "--device", "cpu", *extra]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _losses(run_dir: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            if record["step"] in out:
                raise AssertionError(f"step {record['step']} logged twice")
            out[record["step"]] = record["loss"]
    return out


def _episode(root: Path, run_dir: Path, data: Path, steps: int, kills_left: int, max_delay: float, rng, env, counts) -> bool:
    """Train ``run_dir`` to ``steps`` under random SIGKILLs (at most ``kills_left``); True when every checkpoint
    stayed loadable after every kill."""
    from ncsn_tune.model.checkpoint import list_checkpoints, load_checkpoint

    loadable, kills = True, 0
    while True:
        checkpoints = list_checkpoints(run_dir)
        if checkpoints and load_checkpoint(run_dir).step >= steps:
            return loadable
        if checkpoints:
            extra = ["--resume"]
        elif run_dir.exists() and any(p.name != ".lock" for p in run_dir.iterdir()):
            extra = ["--overwrite"]  # killed before its first checkpoint
        else:
            extra = []
        counts["restarts"] += bool(extra)
        proc = _train(run_dir, data, steps, extra, env)
        if kills >= kills_left:
            if proc.wait() != 0:
                raise AssertionError(f"the last run failed ({proc.returncode}): {proc.stderr.read()}")
            continue
        time.sleep(rng.uniform(0.0, max_delay))
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            kills += 1
            counts["kills"] += 1
            counts["kills_during_a_write"] += bool(list(run_dir.glob(".*.tmp")))
            counts["kills_before_first_checkpoint"] += not list_checkpoints(run_dir)
            for path in list_checkpoints(run_dir):
                try:
                    load_checkpoint(path)
                except Exception as err:  # noqa: BLE001  (any failure is what this experiment looks for)
                    loadable = False
                    print(f"unloadable after kill {counts['kills']}: {path.name}: {err}", file=sys.stderr)
        elif proc.returncode != 0:
            raise AssertionError(f"a run failed ({proc.returncode}): {proc.stderr.read()}")


def inject_faults(kills: int = 30, steps: int = 60, seed: int = 0, workdir: Path | None = None, max_delay: float | None = None) -> dict:
    """Run the experiment; returns the counts and the outcome of every check. Kills come after a delay drawn
    uniformly up to ``max_delay`` (default: the uninterrupted run's duration, start-up included), so they fall
    anywhere in a run's life; when a run finishes before all kills are spent, a new episode starts afresh."""
    import torch

    from ncsn_tune.model.checkpoint import load_checkpoint

    rng = random.Random(seed)
    root = Path(workdir or tempfile.mkdtemp(prefix="fault_injection_"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NCSN_TUNE_WORKDIR": str(root / "work"), "PYTHONUNBUFFERED": "1"}
    data = root / "data.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8))

    t0 = time.perf_counter()
    reference = _train(root / "reference", data, steps, [], env)
    assert reference.wait() == 0, reference.stderr.read()
    clean_seconds = time.perf_counter() - t0
    clean = _losses(root / "reference")
    a = load_checkpoint(root / "reference")

    counts = {"kills": 0, "kills_during_a_write": 0, "kills_before_first_checkpoint": 0, "restarts": 0, "episodes": 0}
    loadable = each_once = equal = no_tmp = True
    while counts["kills"] < kills or counts["episodes"] == 0:
        run_dir = root / f"faulty_{counts['episodes']}"
        loadable &= _episode(root, run_dir, data, steps, kills - counts["kills"], max_delay or clean_seconds, rng, env, counts)
        counts["episodes"] += 1
        no_tmp &= not list(run_dir.glob(".*.tmp"))
        try:
            faulty = _losses(run_dir)
            once = sorted(faulty) == list(range(1, steps + 1))
        except AssertionError:
            faulty, once = {}, False
        b = load_checkpoint(run_dir)
        weights = all(torch.equal(a.model[k], b.model[k]) for k in a.model) and all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)
        each_once &= once
        equal &= once and faulty == clean and weights
    return {**counts, "steps": steps, "clean_run_seconds": round(clean_seconds, 2), "all_checkpoints_loadable": loadable,
            "no_temporary_files_left": no_tmp, "metrics_each_step_once": each_once, "equal_to_uninterrupted": equal}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, help="longest wait before a kill, in seconds [default: a clean run's duration]")
    parser.add_argument("--ngf", default=RUN["ngf"], help="the model's width (larger: longer checkpoint writes)")
    parser.add_argument("--checkpoint-every", default=RUN["checkpoint_every"])
    args = parser.parse_args()
    RUN.update(ngf=str(args.ngf), checkpoint_every=str(args.checkpoint_every))
    report = inject_faults(args.kills, args.steps, args.seed, max_delay=args.max_delay)
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"ngf {RUN['ngf']}, a checkpoint every {RUN['checkpoint_every']} steps")
    for key, value in report.items():
        print(f"{key:<32} {value}")
    checks = ("all_checkpoints_loadable", "no_temporary_files_left", "metrics_each_step_once", "equal_to_uninterrupted")
    return 0 if all(report[k] for k in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
