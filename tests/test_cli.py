"""The ncsn-tune command through click's test runner: outputs, the chain of files, and errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from cli_run import run


def test_sigmas_from_numbers_json():
    r = run("sigmas", "--sigma-max", 50, "--dim", 3072, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["num_scales"] == 220 and out["gamma"] == pytest.approx(1.0398, abs=5e-5)
    assert out["sigmas"][0] == 50 and out["sigmas"][-1] == 0.01 and len(out["sigmas"]) == 220
    for key in ("sigma_max", "sigma_min", "ratio", "overlap", "target_overlap", "dim"):
        assert key in out


def test_published_schedule_overlap():
    out = json.loads(run("sigmas", "--sigma-max", 50, "--dim", 3072, "--num-scales", 232, "--json").stdout)
    assert out["num_scales"] == 232 and out["overlap"] == pytest.approx(0.567, abs=1e-3)
    assert out["equation_num_scales"] == 220


def test_chain_from_data_to_step_size(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "d.npy", x)
    r = run("sigmas", "--data", tmp_path / "d.npy", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    flat = x.reshape(30, -1).astype(float) / 255
    d = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1))
    assert out["sigma_max"] == pytest.approx(d.max(), rel=1e-12)
    assert out["num_points"] == 30 and out["dim"] == 192 and sorted(out["pair"]) == list(out["pair"])
    r2 = run("step-size", "--M", 5)
    assert r2.exit_code == 0, r2.output
    assert "schedule.json" in r2.stdout and "Saved the step size for M = 5" in r2.stdout
    r3 = json.loads(run("step-size", "--json").stdout)
    assert r3["ratio"] == pytest.approx(out["ratio"]) and r3["steps_per_scale"] == 5


def test_step_size_list_and_published_value():
    r = run("step-size", "--M", "1,3,5,10", "--sigma-max", 50, "--num-scales", 232, "--step-size", 6.2e-6, "--json")
    rows = json.loads(r.stdout)
    assert [row["steps_per_scale"] for row in rows] == [1, 3, 5, 10]
    five = rows[2]
    assert five["step_size"] == pytest.approx(6.18e-6, rel=1e-3) and five["variance_ratio"] == pytest.approx(1.0555, abs=1e-4)
    assert five["given_variance_ratio"] >= five["variance_ratio"]
    table = run("step-size", "--M", "1,3,5,10", "--sigma-max", 50, "--num-scales", 232).stdout
    assert "stays above 1" in table and "6.184025e-06" in table


def test_step_size_from_a_ratio_and_from_a_file(tmp_path):
    r = json.loads(run("step-size", "--ratio", 1.0375591319992028, "--json").stdout)
    assert r["step_size"] == pytest.approx(6.184e-6, rel=1e-3)
    run("sigmas", "--sigma-max", 50, "--dim", 3072, "--num-scales", 232, "--output", tmp_path / "s.yaml")
    r2 = json.loads(run("step-size", "--schedule", tmp_path / "s.yaml", "--json").stdout)
    assert r2["step_size"] == pytest.approx(r["step_size"], rel=1e-9)


def test_sigmas_from_cifar10(fake_cifar):
    r = run("sigmas", "--data", "cifar10", "--data-root", fake_cifar, "--no-download")
    assert r.exit_code == 0, r.output
    assert "T1: exact" in r.stdout and "Saved the schedule" in r.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["sigmas", "--sigma-max", 0.01, "--dim", 10, "--sigma-min", 0.01], "smaller"),
        (["sigmas", "--sigma-max", 1, "--dim", 10, "--sigma-min", 2], "smaller"),
        (["sigmas", "--sigma-max", "nan", "--dim", 10], "positive finite"),
        (["sigmas", "--sigma-max", "inf", "--dim", 10], "positive finite"),
        (["sigmas", "--sigma-max", -3, "--dim", 10], "positive finite"),
        (["sigmas", "--sigma-max", 50, "--dim", 10, "--overlap", 1.2], "between 0 and 1"),
        (["sigmas", "--sigma-max", 50, "--dim", 3, "--overlap", 0.5], "never falls"),
        (["sigmas", "--sigma-max", 50, "--dim", 0], "--dim"),
        (["sigmas", "--sigma-max", 50, "--dim", 10, "--num-scales", 1], "at least 2"),
        (["sigmas"], "give data"),
        (["sigmas", "--data", "/nonexistent/x.npy"], "does not exist"),
        (["step-size", "--M", 0, "--ratio", 1.04], "at least 1"),
        (["step-size", "--M", "5,x", "--ratio", 1.04], "whole numbers"),
        (["step-size", "--M", 5, "--gamma", 1.0], "> 1"),
        (["step-size", "--M", 5], "no noise schedule"),
        (["step-size", "--sigma-max", 50], "sigma_max alone"),
        (["step-size", "--schedule", "/nonexistent.json"], "does not exist"),
        (["sigmas", "--sigma-max", "abc", "--dim", 10], "not a valid float"),
    ],
)
def test_bad_input_is_one_clear_line(args, message):
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.output


def test_bad_schedule_file(tmp_path):
    (tmp_path / "s.json").write_text('{"sigma_max": 50, "sigma_min": 0.01}')
    r = run("step-size", "--schedule", tmp_path / "s.json")
    assert r.exit_code == 2 and "lacks" in r.stderr


def test_missing_cifar_offline(tmp_path):
    r = run("sigmas", "--data", "cifar10", "--data-root", tmp_path, "--no-download")
    assert r.exit_code == 2 and "NCSN_TUNE_DATA" in r.stderr and "(option --data-root)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_analysis_never_imports_torch():
    code = "import sys, ncsn_tune.analysis, ncsn_tune.cli, ncsn_tune.data; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "ncsn_tune", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "sigmas" in r.stdout and "step-size" in r.stdout


def tiny_npy(tmp_path, n=24, size=16):
    x = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    np.save(tmp_path / "tiny.npy", x)
    return tmp_path / "tiny.npy"


def test_train_dry_run_json(tmp_path):
    pytest.importorskip("torch")
    data = tiny_npy(tmp_path)
    r = run("train", "--data", data, "--ngf", 8, "--dry-run", "--json", "--output", tmp_path / "run")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    for key in ("num_parameters", "num_scales", "sigma_max", "sigma_min", "step_size", "steps_per_scale", "batch_size"):
        assert key in out
    assert out["batch_size"] == 128 and out["steps_per_scale"] == 5 and out["sigma_min"] == 0.01
    assert not (tmp_path / "run").exists()


def test_chain_sigmas_step_size_train(tmp_path):
    pytest.importorskip("torch")
    data = tiny_npy(tmp_path)
    assert run("sigmas", "--data", data).exit_code == 0
    assert run("step-size", "--M", 3).exit_code == 0
    r = run("train", "--data", data, "--M", 3, "--ngf", 8, "--dry-run", "--json")
    notes = " ".join(json.loads(r.stdout)["notes"])
    assert "schedule.json" in notes and "step_size.json" in notes


def test_train_reads_the_official_yaml(tmp_path, fake_cifar, real_configs):
    pytest.importorskip("torch")
    r = run("train", "--config", real_configs / "ncsnv2" / "configs" / "cifar10.yml", "--data-root", fake_cifar, "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["num_parameters"] == 29_694_083 and out["num_scales"] == 232 and out["step_size"] == 6.2e-6
    assert out["sigma_max"] == 50.0 and out["batch_size"] == 128


def test_train_runs_and_resumes(tmp_path):
    pytest.importorskip("torch")
    data = tiny_npy(tmp_path)
    common = ["--data", data, "--ngf", 8, "--batch-size", 4, "--num-scales", 5, "--log-every", 2, "--checkpoint-every", 3,
              "--sample-every", 1000, "--output", tmp_path / "run", "--device", "cpu"]
    r = run("train", *common, "--steps", 3)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "checkpoint_00000003.pt").exists()
    again = run("train", *common, "--steps", 3)
    assert again.exit_code == 2 and "--resume" in again.stderr
    r2 = run("train", "--output", tmp_path / "run", "--resume", "--steps", 6)
    assert r2.exit_code == 0, r2.output
    assert "Resuming from" in r2.stdout and (tmp_path / "run" / "checkpoint_00000006.pt").exists()
    before = (tmp_path / "run" / "checkpoint_00000006.pt").read_bytes()
    done = run("train", "--output", tmp_path / "run", "--resume", "--steps", 6)  # the same line again, once finished
    assert done.exit_code == 0 and "trained to step 6 already" in done.stdout and "nothing to do" in done.stdout, done.output
    assert (tmp_path / "run" / "checkpoint_00000006.pt").read_bytes() == before
    fewer = run("train", "--output", tmp_path / "run", "--resume", "--steps", 4)
    assert fewer.exit_code == 2 and "already at step 6 (--steps 4)" in fewer.stderr
    changed = run("train", "--output", tmp_path / "run", "--resume", "--steps", 6, "--lr", 1e-3)
    assert changed.exit_code == 2 and "already at step 6 and a change applies only to the steps still to train (lr)" in changed.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--output", "nowhere", "--resume"], "not a run folder"),
        (["train", "--resume"], "runs/cifar10 has no config.yaml: it is not a run folder to continue (where a run on this data "
                                 "trains without --output; name the run's folder with --output)"),
        (["train", "--lr", 0, "--dry-run"], "lr must be a positive number"),
        (["train", "--batch-size", 0, "--dry-run"], "batch_size must be at least 1"),
        (["train", "--config", "/nonexistent.yml"], "does not exist"),
    ],
)
def test_train_errors(args, message, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)  # an empty folder: no runs/ of anyone's
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
