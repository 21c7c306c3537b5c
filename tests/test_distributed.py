"""Issue 8 on CPUs: torchrun with the gloo backend and 2 processes, through `ncsn-tune train --gpus 2`."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)


def tiny(tmp_path):
    np.save(tmp_path / "tiny.npy", np.random.default_rng(0).integers(0, 256, (24, 16, 16, 3), dtype=np.uint8))
    return tmp_path / "tiny.npy"


def train(tmp_path, out, *extra, processes=None, background=False):
    args = [sys.executable, "-m", "ncsn_tune", "train", "--device", "cpu", "--data", str(tmp_path / "tiny.npy"), "--ngf", "8",
            "--batch-size", "8", "--log-every", "2", "--checkpoint-every", "4", "--sample-every", "1000", "--num-scales", "5",
            "--output", str(tmp_path / out), *map(str, extra)]
    if processes:
        args += ["--gpus", str(processes)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    if background:
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True)
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def losses(path):
    return [json.loads(l)["loss"] for l in path.read_text().splitlines() if "loss" in json.loads(l)]


@pytest.mark.slow
def test_two_processes_match_one_and_resume_anywhere(tmp_path):
    tiny(tmp_path)
    train(tmp_path, "two", "--steps", 8, processes=2)
    train(tmp_path, "one", "--steps", 8)
    two, one = losses(tmp_path / "two" / "metrics.jsonl"), losses(tmp_path / "one" / "metrics.jsonl")
    assert len(two) == len(one) == 4
    np.testing.assert_allclose(two, one, rtol=1e-5)  # the same global batches and noise; only reduction order differs
    # a 2-process checkpoint resumes on 1 process, and a 1-process one on 2
    train(tmp_path, "two", "--resume", "--steps", 12)
    train(tmp_path, "one", "--resume", "--steps", 12, processes=2)
    np.testing.assert_allclose(losses(tmp_path / "two" / "metrics.jsonl"), losses(tmp_path / "one" / "metrics.jsonl"), rtol=1e-4)


@pytest.mark.slow
def test_sigint_stops_every_rank_with_a_checkpoint(tmp_path):
    tiny(tmp_path)
    proc = train(tmp_path, "run", "--steps", 100000, processes=2, background=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the ranks did not stop within 120 s of SIGINT")
    checkpoints = sorted((tmp_path / "run").glob("checkpoint_*.pt"))
    assert checkpoints, output
    from ncsn_tune.model.checkpoint import load_checkpoint

    step = load_checkpoint(tmp_path / "run").step
    assert step >= 6 and "saved a checkpoint" in output, output
