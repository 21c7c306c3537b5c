"""Fault injection: kill -9 a tiny CPU training run at random moments, many times, fill its disk, and check that nothing
was lost.

    python tests/fault_injection.py --kills 30 --steps 60 [--data-root ../shared/data/cifar10-subset]

The run is trained the way users type it: ``ncsn-tune train --data cifar10 --data-root DIR --output RUN --steps N
...`` (the real CIFAR-10 subset when it is found, else a small CIFAR-10 in the official format written here), and
continued with that same command line plus ``--resume`` (also when it was killed before its first checkpoint: then
the run starts again from step 0, as the stop message advises). First the run is trained without interruption. Then it is started, killed with SIGKILL after a
random delay and continued, again and again; after the last kill it is left to finish. After every kill, every
checkpoint in the folder must load; at the end there must be no temporary files left, metrics.jsonl must hold each
step exactly once, and the loss at every step and the final weights must equal the uninterrupted run's bit for bit
(CPU arithmetic is deterministic).

Full disk: the run folder is put on a small tmpfs (where this machine lets us mount one; else the file-size limit
``ulimit -f`` stands in for it), trained to its first checkpoint, the disk filled to leave a few sizes of free
space, and the same command continued: it must end with one line (exit 2, no traceback) and leave the checkpoint
as it was; with the space freed, the same command again must finish bit-identical to the uninterrupted run.
Prints a table and the machine it ran on; exits 1 if a check fails.
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


def command(run_dir: Path, data_root: Path, steps: int) -> list[str]:
    """The command line a user types for this run (the same one, plus --resume, continues it)."""
    return ["train", "--data", "cifar10", "--data-root", str(data_root), "--output", str(run_dir), "--steps", str(steps),
            "--ngf", RUN["ngf"], "--batch-size", "4", "--num-scales", "6", "--log-every", "1", "--checkpoint-every", RUN["checkpoint_every"],
            "--sample-every", "100000", "--eval-every", "100000", "--device", "cpu"]


def _train(run_dir: Path, data_root: Path, steps: int, extra: list[str], env: dict, preexec=None) -> subprocess.Popen:
    args = [sys.executable, "-m", "ncsn_tune", *command(run_dir, data_root, steps), *extra]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


def data_root_for(root: Path, given: Path | None = None) -> Path:
    """The real CIFAR-10 subset (given, or found beside the checkout), else a small CIFAR-10 written under ``root``."""
    here = Path(__file__).resolve().parents[1]
    for candidate in [given, os.environ.get("NCSN_TUNE_SUBSET"), here.parent / "shared/data/cifar10-subset",
                      here / "shared/data/cifar10-subset", here / "device_data/cifar10-subset"]:
        if candidate and (Path(candidate) / "cifar-10-batches-py" / "data_batch_1").is_file():
            return Path(candidate)
    import pickle

    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, count in [(f"data_batch_{i}", 8) for i in range(1, 6)] + [("test_batch", 4)]:
        batch = {b"batch_label": b"fault injection", b"labels": [0] * count, b"filenames": [b"x.png"] * count,
                 b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8)}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root / "cifar10"


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
        if checkpoints or (run_dir.exists() and any(p.name != ".lock" for p in run_dir.iterdir())):
            extra = ["--resume"]  # also when killed before its first checkpoint: the printed advice starts it again
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


def inject_faults(kills: int = 30, steps: int = 60, seed: int = 0, workdir: Path | None = None, max_delay: float | None = None,
                  data_root: Path | None = None) -> dict:
    """Run the experiment; returns the counts and the outcome of every check. Kills come after a delay drawn
    uniformly up to ``max_delay`` (default: the uninterrupted run's duration, start-up included), so they fall
    anywhere in a run's life; when a run finishes before all kills are spent, a new episode starts afresh."""
    import torch

    from ncsn_tune.model.checkpoint import load_checkpoint

    rng = random.Random(seed)
    root = Path(workdir or tempfile.mkdtemp(prefix="fault_injection_"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NCSN_TUNE_WORKDIR": str(root / "work"), "PYTHONUNBUFFERED": "1"}
    data = data_root_for(root, data_root)

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
    return {**counts, "steps": steps, "data": str(data), "clean_run_seconds": round(clean_seconds, 2), "all_checkpoints_loadable": loadable,
            "no_temporary_files_left": no_tmp, "metrics_each_step_once": each_once, "equal_to_uninterrupted": equal}


def can_mount_tmpfs(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode:
        return False
    subprocess.run(["umount", str(folder)], check=True)
    return True


def _fill(folder: Path, leave: int) -> Path:
    """Write a file that leaves ``leave`` bytes free on ``folder``'s file system."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    filler = folder / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def full_disk(steps: int = 12, free_sizes=(1_000, 40_000, 400_000), method: str | None = None, workdir: Path | None = None,
              data_root: Path | None = None) -> dict:
    """The run continued on a disk with only ``free_sizes`` bytes free (a tmpfs), or under a file-size limit of those sizes
    (``method`` "rlimit", where no tmpfs can be mounted): each must end in one line and keep the checkpoint; freed, the same
    command finishes bit-identical to an uninterrupted run."""
    import resource
    import signal

    import torch

    from ncsn_tune.model.checkpoint import list_checkpoints, load_checkpoint

    root = Path(workdir or tempfile.mkdtemp(prefix="full_disk_"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NCSN_TUNE_WORKDIR": str(root / "work"), "PYTHONUNBUFFERED": "1"}
    data = data_root_for(root, data_root)
    method = method or ("tmpfs" if can_mount_tmpfs(root / "probe") else "rlimit")
    reference = _train(root / "reference", data, steps, [], env)
    assert reference.wait() == 0, reference.stderr.read()
    clean, a = _losses(root / "reference"), load_checkpoint(root / "reference")
    first = int(RUN["checkpoint_every"])
    # Room, once freed, for the run to finish: the checkpoints it keeps (3, the default), the one being written, slack.
    checkpoint_bytes = max(p.stat().st_size for p in list_checkpoints(root / "reference"))
    tmpfs_mib = max(64, (4 * checkpoint_bytes + 16 * 2**20) // 2**20 + 1)
    cases = []
    for free in free_sizes:
        disk = root / f"disk_{free}"
        disk.mkdir()
        if method == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_mib}m", "tmpfs", str(disk)], check=True)
        try:
            run_dir = disk / "run"
            started = _train(run_dir, data, first, [], env)
            assert started.wait() == 0, started.stderr.read()
            before = sorted(p.name for p in list_checkpoints(run_dir))
            filler, preexec = None, None
            if method == "tmpfs":
                filler = _fill(disk, free)
            else:
                def preexec(limit=free):
                    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
                    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            stopped = _train(run_dir, data, steps, ["--resume"], env, preexec)
            stderr = stopped.communicate()[1]
            lines = stderr.strip().splitlines()
            one_line = stopped.returncode == 2 and bool(lines) and lines[-1].startswith("Error: ") and "Traceback" not in stderr
            kept = sorted(p.name for p in list_checkpoints(run_dir)) == before and load_checkpoint(run_dir).step == first
            no_tmp = not list(run_dir.glob(".*.tmp"))
            if filler is not None:
                filler.unlink()
            again = _train(run_dir, data, steps, ["--resume"], env)
            again_stderr = again.communicate()[1]
            finished = again.returncode == 0
            b = load_checkpoint(run_dir) if finished else None
            equal = finished and _losses(run_dir) == clean and all(torch.equal(a.model[k], b.model[k]) for k in a.model)
            cases.append({"free_bytes": free, "message": lines[-1] if lines else "", "one_line": one_line, "checkpoint_kept": kept,
                          "no_temporary_files": no_tmp, "then_bit_identical": equal,
                          "then": "finished" if finished else (again_stderr.strip().splitlines() or ["exit %d" % again.returncode])[-1]})
        finally:
            if method == "tmpfs":
                subprocess.run(["umount", str(disk)], check=False)
    return {"method": method, "cases": cases, "all_passed": all(c["one_line"] and c["checkpoint_kept"] and c["no_temporary_files"]
                                                                and c["then_bit_identical"] for c in cases)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, help="longest wait before a kill, in seconds [default: a clean run's duration]")
    parser.add_argument("--ngf", default=RUN["ngf"], help="the model's width (larger: longer checkpoint writes)")
    parser.add_argument("--checkpoint-every", default=RUN["checkpoint_every"])
    parser.add_argument("--data-root", type=Path, help="the CIFAR-10 folder to train on [default: the real subset if found]")
    parser.add_argument("--full-disk", choices=["auto", "tmpfs", "rlimit", "no"], default="auto",
                        help="the full-disk cases: on a small tmpfs, under a file-size limit, or not at all")
    args = parser.parse_args()
    RUN.update(ngf=str(args.ngf), checkpoint_every=str(args.checkpoint_every))
    report = inject_faults(args.kills, args.steps, args.seed, max_delay=args.max_delay, data_root=args.data_root)
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"ngf {RUN['ngf']}, a checkpoint every {RUN['checkpoint_every']} steps")
    print("command: ncsn-tune " + " ".join(command(Path("RUN"), Path(report["data"]), args.steps)) + " [--resume]")
    for key, value in report.items():
        print(f"{key:<32} {value}")
    checks = ("all_checkpoints_loadable", "no_temporary_files_left", "metrics_each_step_once", "equal_to_uninterrupted")
    ok = all(report[k] for k in checks)
    if args.full_disk != "no":
        disk = full_disk(min(args.steps, 12), method=None if args.full_disk == "auto" else args.full_disk, data_root=args.data_root)
        print(f"full disk ({disk['method']}):")
        for case in disk["cases"]:
            print(f"  {case['free_bytes']:>9,} bytes free: one line {case['one_line']}, checkpoint kept {case['checkpoint_kept']}, "
                  f"no temporary files {case['no_temporary_files']}, then bit-identical {case['then_bit_identical']}: {case['message']}"
                  + ("" if case["then"] == "finished" else f"; freed, the same command: {case['then']}"))
        ok &= disk["all_passed"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
