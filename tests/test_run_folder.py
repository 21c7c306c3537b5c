"""Issue 13: a run folder nothing can corrupt. One test (or a group) per numbered item of the issue, on the tiny CPU model."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")

from ncsn_tune.model import checkpoint as ckpt  # noqa: E402
from cli_run import one_line_error, run, tiny_train  # noqa: E402

TINY = tiny_train(3)


@pytest.fixture
def data(npy):
    return npy


def train(data, out, steps, *extra):
    r = run("train", "--data", data, "--output", out, "--steps", steps, *TINY, *extra)
    assert r.exit_code == 0, r.output
    return r


def steps_logged(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(line)]


def cli(*args, **popen):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ncsn_tune", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def wait_for(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# ------------------------------------------------------------------------------------------------ 1: resume obeys


def test_resume_applies_the_optimiser_and_ema_settings_it_was_given(data, tmp_path):
    from ncsn_tune.model.runs import setup_run
    from ncsn_tune.model.train import Trainer

    train(data, tmp_path / "run", 3)
    setup = setup_run({"steps": 6, "lr": 0.01, "beta1": 0.5, "beta2": 0.9, "adam_eps": 1e-6, "weight_decay": 0.1, "ema_rate": 0.9},
                      output=tmp_path / "run", resume=True)
    trainer = Trainer(setup.config, setup.plan.schedule, setup.plan.step_size, setup.plan.train, None, setup.run_dir,
                      resume=setup.resume)
    group = trainer.optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (0.01, (0.5, 0.9), 1e-6, 0.1)
    assert trainer.ema.rate == 0.9 and trainer.step == 3
    assert any(n.startswith("changed for the rest of the run:") and "lr 0.0001 -> 0.01" in n for n in setup.notes)
    r = run("train", "--output", tmp_path / "run", "--resume", "--steps", 6, "--lr", 0.01, "--json")
    out = json.loads(r.stdout)
    assert out["changed"]["lr"] == [0.0001, 0.01] and out["config"]["lr"] == 0.01
    assert ckpt.load_checkpoint(tmp_path / "run").config["lr"] == 0.01


def test_settings_that_cannot_change_are_refused_before_anything_is_written(data, tmp_path):
    train(data, tmp_path / "run", 3)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    for flag, value in (("--ngf", 16), ("--seed", 3), ("--num-scales", 7), ("--architecture", "ncsnv2_deeper")):
        one_line_error(run("train", "--output", tmp_path / "run", "--resume", "--steps", 6, flag, value), "a continued run cannot change")
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert after == before  # config.yaml (and everything else) byte-identical
    assert run("train", "--output", tmp_path / "run", "--resume", "--steps", 6).exit_code == 0  # and a plain resume still works


def test_a_resume_whose_checkpoint_does_not_fit_leaves_the_folder_as_it_was(data, tmp_path):
    train(data, tmp_path / "run", 3)
    path = ckpt.list_checkpoints(tmp_path / "run")[-1]
    state = torch.load(path, weights_only=True)
    state["optimizer"]["param_groups"] = []  # an optimiser state that does not fit the model
    state["checksum"] = ckpt.state_digest(state)  # edited on purpose: signed again
    torch.save(state, path)
    config = (tmp_path / "run" / "config.yaml").read_bytes()
    one_line_error(run("train", "--output", tmp_path / "run", "--resume", "--steps", 6, "--lr", 0.01), "does not fit this run")
    assert (tmp_path / "run" / "config.yaml").read_bytes() == config


def test_a_resume_keeps_the_schedule_file_as_derived(data, tmp_path):
    train(data, tmp_path / "run", 3)
    schedule = (tmp_path / "run" / "schedule.json").read_bytes()
    train(data, tmp_path / "run", 6, "--resume")
    assert (tmp_path / "run" / "schedule.json").read_bytes() == schedule


# ------------------------------------------------------------------------------------------------ 2: truthful metrics


def test_a_crash_between_checkpoints_logs_each_step_once(data, tmp_path):
    train(data, tmp_path / "run", 5)  # checkpoints at 3 and 5, metrics for 1..5
    ckpt.list_checkpoints(tmp_path / "run")[-1].unlink()  # as if killed after logging step 5, before its checkpoint
    r = run("train", "--output", tmp_path / "run", "--resume", "--steps", 7)
    assert r.exit_code == 0 and "dropped 2 record(s) after step 3" in r.stderr
    assert steps_logged(tmp_path / "run") == [1, 2, 3, 4, 5, 6, 7]


def test_a_torn_last_line_is_dropped(data, tmp_path):
    train(data, tmp_path / "run", 3)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 1568.12')  # a full disk cut the write short
    r = run("train", "--output", tmp_path / "run", "--resume", "--steps", 5)
    assert r.exit_code == 0 and "unreadable line" in r.stderr
    assert steps_logged(tmp_path / "run") == [1, 2, 3, 4, 5]


def test_a_fresh_run_never_mixes_with_an_existing_one(data, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')  # killed before its first checkpoint
    (tmp_path / "run" / "config.yaml").write_text("ngf: 4\n")
    r = run("train", "--data", data, "--output", tmp_path / "run", "--steps", 2, *TINY)  # nothing to continue: it starts again
    assert r.exit_code == 0 and "stopped before its first checkpoint" in r.output, r.output
    assert steps_logged(tmp_path / "run") == [1, 2]


# ------------------------------------------------------------------------------------------------ 4: a lock


def test_a_second_trainer_on_the_same_folder_is_refused_at_once(data, tmp_path):
    first = cli("train", "--data", data, "--output", tmp_path / "run", "--steps", 100000, *TINY[:-2], "--checkpoint-every", 50,
                "--device", "cpu")
    try:
        assert wait_for(lambda: (tmp_path / "run" / "metrics.jsonl").exists()), first.stderr.read() if first.poll() else "no start"
        t0 = time.monotonic()
        r = run("train", "--output", tmp_path / "run", "--resume", "--steps", 200000)
        one_line_error(r, "is in use by process", str(first.pid))
        assert time.monotonic() - t0 < 30
    finally:
        first.kill()  # kill -9: the kernel releases the lock
        first.wait()
    steps = ckpt.load_checkpoint(tmp_path / "run").step + 1 if ckpt.list_checkpoints(tmp_path / "run") else 2
    r = run("train", "--output", tmp_path / "run", "--resume", "--steps", steps)
    assert r.exit_code == 0, r.output  # no stale lock after a kill -9 (and a run killed before its first checkpoint starts again)


# ------------------------------------------------------------------------------------------------ 5: NaN weights


def test_nan_weights_and_sigmas_are_refused_by_sample_and_evaluate(data, tmp_path):
    train(data, tmp_path / "run", 3)
    path = ckpt.list_checkpoints(tmp_path / "run")[-1]
    good = torch.load(path, weights_only=True)
    state = {**good, "ema": {k: v.clone() for k, v in good["ema"].items()}}
    name = next(iter(state["ema"]))
    state["ema"][name][...] = float("nan")
    state["checksum"] = ckpt.state_digest(state)  # edited on purpose: signed again
    torch.save(state, path)
    one_line_error(run("sample", "--checkpoint", tmp_path / "run", "--num", 1, "--output", tmp_path / "s.png", "--device", "cpu"),
                   "hold NaN or infinite values", name)
    one_line_error(run("evaluate", "--checkpoint", tmp_path / "run", "--images", 2, "--output-dir", tmp_path / "ev", "--device", "cpu"),
                   "NaN")
    state = {**good, "schedule": {**good["schedule"], "sigma_max": float("nan")}}
    state["checksum"] = ckpt.state_digest(state)  # edited on purpose: signed again
    torch.save(state, path)
    one_line_error(run("evaluate", "--checkpoint", tmp_path / "run", "--images", 2, "--output-dir", tmp_path / "ev", "--device", "cpu"),
                   "sigma_max must be a positive finite number")


# ------------------------------------------------------------------------------------------------ 6: a full disk


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_previous_one(data, tmp_path, monkeypatch):
    train(data, tmp_path / "run", 3)
    real = torch.save

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/3: file write failed")

    monkeypatch.setattr(ckpt.torch, "save", full)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: type("Usage", (), {"free": 10_000})())  # what a full disk reports
    one_line_error(run("train", "--output", tmp_path / "run", "--resume", "--steps", 9), "the disk is full", "checkpoint_00000006.pt")
    monkeypatch.setattr(ckpt.torch, "save", real)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["checkpoint_00000003.pt"]
    assert ckpt.load_checkpoint(tmp_path / "run").step == 3 and not list((tmp_path / "run").glob(".*.tmp"))


def test_a_full_disk_at_the_metrics_is_one_line_and_keeps_the_checkpoint(data, tmp_path, monkeypatch):
    from ncsn_tune.model import run_log

    train(data, tmp_path / "run", 3)
    real = run_log.RunLog.record

    def full(self, record, scalars=None):
        if record["step"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return real(self, record, scalars)

    monkeypatch.setattr(run_log.RunLog, "record", full)
    one_line_error(run("train", "--output", tmp_path / "run", "--resume", "--steps", 9), "the disk is full", "metrics.jsonl")
    assert ckpt.load_checkpoint(tmp_path / "run").step == 3


# ------------------------------------------------------------------------------------------------ 7 and 11: signals


def test_a_stop_breaks_off_a_sample_grid_within_one_scale(data, tmp_path):
    from ncsn_tune.model.runs import run_training, setup_run

    setup = setup_run({"data": str(data), "steps": 50, "ngf": 4, "batch_size": 4, "num_scales": 60, "sample_every": 2, "sample_count": 4,
                       "log_every": 1, "checkpoint_every": 100, "eval_every": 1000, "device": "cpu"}, output=tmp_path / "run")
    seen = {"scales": 0, "after": 0}
    from ncsn_tune.model import train as train_module

    real = train_module.Trainer._check_stop

    def counting(self, info=None):
        seen["scales"] += 1
        if seen["scales"] == 3:
            self.stop_requested, self.stop_signal = "SIGINT", int(signal.SIGINT)
        elif seen["scales"] > 3:
            seen["after"] += 1
        return real(self, info)

    train_module.Trainer._check_stop = counting
    try:
        result = run_training(setup)
    finally:
        train_module.Trainer._check_stop = real
    assert seen["after"] == 0  # the scale after the request was never run
    assert result["stopped_by"] == "SIGINT" and result["step"] == 2
    assert ckpt.load_checkpoint(tmp_path / "run").step == 2 and not list((tmp_path / "run").glob("samples_*.png"))


def start_long_run(data, tmp_path):
    proc = cli("train", "--data", data, "--output", tmp_path / "run", "--steps", 100000, "--ngf", 4, "--batch-size", 4,
               "--num-scales", 4, "--log-every", 1, "--checkpoint-every", 1000, "--sample-every", 1000, "--eval-every", 1000,
               "--device", "cpu")
    assert wait_for(lambda: (tmp_path / "run" / "metrics.jsonl").exists() and (tmp_path / "run" / "metrics.jsonl").stat().st_size > 0)
    return proc


def test_a_run_stopped_by_a_signal_exits_128_plus_the_signal_and_says_resumable(data, tmp_path):
    proc = start_long_run(data, tmp_path)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "resumable" in out and "--resume" in out
    step = ckpt.load_checkpoint(tmp_path / "run").step
    assert step >= 1 and steps_logged(tmp_path / "run")[-1] == step


def test_a_second_signal_stops_at_once_with_the_last_checkpoint_intact(data, tmp_path, monkeypatch):
    from ncsn_tune.errors import Interrupted
    from ncsn_tune.model.runs import run_training, setup_run

    train(data, tmp_path / "run", 3)
    setup = setup_run({"steps": 1000}, output=tmp_path / "run", resume=True)

    def twice(event):
        if event["event"] == "log" and event["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as err:
        run_training(setup, callback=twice)
    assert err.value.signum == signal.SIGINT and "second SIGINT" in str(err.value)
    assert ckpt.load_checkpoint(tmp_path / "run").step == 3


# ------------------------------------------------------------------------------------------------ 8: NaN and overflow settings


def test_a_nan_before_any_checkpoint_says_so(data, tmp_path):
    r = run("train", "--data", data, "--output", tmp_path / "run", "--steps", 30, *TINY[:-6], "--checkpoint-every", 100,
            "--sample-every", 1000, "--eval-every", 1000, "--device", "cpu", "--lr", 1e25)
    one_line_error(r, "no checkpoint had been written yet")
    assert not ckpt.list_checkpoints(tmp_path / "run")
    one_line_error(run("train", "--lr", 1e39, "--dry-run"), "lr must be a positive number below 1e30", "--lr")


# ------------------------------------------------------------------------------------------------ 9: missing fields


@pytest.mark.parametrize("drop,command,message", [
    ("rng", "resume", "lacks the optimiser or random states a resume needs"),
    ("sampling", "sample", "lacks sampling"),
    ("config.architecture", "evaluate", "config.architecture"),
])
def test_checkpoints_missing_a_field_are_one_line(data, tmp_path, drop, command, message):
    train(data, tmp_path / "run", 3)
    path = ckpt.list_checkpoints(tmp_path / "run")[-1]
    state = torch.load(path, weights_only=True)
    if "." in drop:
        del state["config"][drop.split(".")[1]]
    else:
        del state[drop]
    state["checksum"] = ckpt.state_digest(state)  # edited on purpose: signed again
    torch.save(state, path)
    args = {"resume": ["train", "--output", tmp_path / "run", "--resume", "--steps", 6],
            "sample": ["sample", "--checkpoint", tmp_path / "run", "--output", tmp_path / "s.png", "--device", "cpu"],
            "evaluate": ["evaluate", "--checkpoint", tmp_path / "run", "--output-dir", tmp_path / "ev", "--device", "cpu"]}[command]
    one_line_error(run(*args), message)


# ------------------------------------------------------------------------------------------------ 10: orphaned temporary files


def test_temporary_files_of_a_killed_writer_are_removed(data, tmp_path):
    train(data, tmp_path / "run", 3)
    orphan = tmp_path / "run" / ".checkpoint_00000006.pt.x1y2z3.tmp"
    orphan.write_bytes(b"\0" * 1000)
    r = run("train", "--output", tmp_path / "run", "--resume", "--steps", 4)
    assert r.exit_code == 0 and not orphan.exists() and "removed 1 temporary file" in r.stderr


# ------------------------------------------------------------------------------------------------ 12: data


def test_cifar_batches_are_checked_against_the_official_files(fake_cifar, monkeypatch):
    from ncsn_tune.data import cifar10 as data_mod
    from ncsn_tune.errors import DataError

    subset = data_mod.load_cifar10(fake_cifar, download=False)
    assert any("holds a subset of CIFAR-10 (4 images per batch instead of 10,000)" in n for n in subset.notes)
    monkeypatch.setattr(data_mod, "CIFAR10_BATCH_IMAGES", 4)  # the fake batches now count as full-size: their md5 must match
    with pytest.raises(DataError, match="differs from the official CIFAR-10 file"):
        data_mod.load_cifar10(fake_cifar, download=False)


@pytest.mark.slow
def test_the_fault_injection_script_runs(tmp_path):
    from fault_injection import inject_faults

    report = inject_faults(kills=2, steps=12, seed=1, workdir=tmp_path)  # as users type it: --data cifar10 --data-root, then --resume
    assert report["all_checkpoints_loadable"] and report["metrics_each_step_once"] and report["equal_to_uninterrupted"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["auto", "rlimit"])
def test_a_full_disk_at_several_free_sizes_is_one_line_and_then_resumes_bit_identical(tmp_path, method):
    from fault_injection import full_disk

    report = full_disk(steps=6, free_sizes=(2_000, 40_000), method=None if method == "auto" else method, workdir=tmp_path)
    assert report["all_passed"], report


class Payload:  # what a malicious pickle would carry: an object of some class, rebuilt by unpickling
    pass


def test_a_checkpoint_with_foreign_objects_is_refused_in_one_clause(tmp_path):
    torch.save({"format": "ncsn_tune.checkpoint/1", "step": 1, "payload": Payload()}, tmp_path / "checkpoint_00000001.pt")
    r = run("sample", "--checkpoint", tmp_path, "--output", tmp_path / "s.png", "--device", "cpu")
    one_line_error(r, "holds Python objects other than tensors and plain containers, which are not loaded (they could run code)")
    assert "weights_only" not in r.stderr and "PyTorch 2.6" not in r.stderr
