"""Every input a user may give is used, refused in one line, or said: nothing swapped, ignored or left to a traceback;
signals end with one line; long work refuses with its estimate."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cli_run import one_line_error, run, tiny_train  # noqa: E402

TINY = tiny_train()


# ------------------------------------------------------------------------------------------------ inputs never swapped or ignored


def test_the_overlap_given_with_the_number_of_scales_is_honoured():
    out = json.loads(run("sigmas", "--sigma-max", 50, "--dim", 3072, "--num-scales", 232, "--overlap", 0.3, "--json").stdout)
    assert out["equation_num_scales"] == 188 and out["equation_target_overlap"] == 0.3
    table = run("sigmas", "--sigma-max", 50, "--dim", 3072, "--num-scales", 232, "--overlap", 0.3).stdout
    assert "the equation gives 188 for overlap 0.3" in table


def test_train_never_swaps_a_deleted_data_file_for_cifar10(npy):
    assert run("sigmas", "--data", npy).exit_code == 0
    npy.unlink()
    one_line_error(run("train", "--dry-run", "--ngf", 4), "no longer there", "--data")


def test_no_rescale_is_honoured_for_uint8(npy):
    scaled = json.loads(run("sigmas", "--data", npy, "--json").stdout)
    raw = json.loads(run("sigmas", "--data", npy, "--no-rescale", "--json", "--output", npy.parent / "raw.json").stdout)
    assert raw["sigma_max"] == pytest.approx(255 * scaled["sigma_max"], rel=1e-9) and "as stored" in raw["pixel_scale"]


@pytest.mark.parametrize("args, phrase", [
    (["audit", "--sigma-max", 50, "--num-scales", 232, "--diameter", "nan"], "diameter must be a positive number"),
    (["audit", "--sigma-max", 50, "--num-scales", 232, "--diameter", -1], "diameter must be a positive number"),
    (["audit", "--sigma-max", 50, "--num-scales", 232, "--overlap", 1.5], "strictly between 0 and 1"),
    (["audit", "--sigma-max", 50, "--num-scales", 232, "--dim", 0], "D must be a whole number >= 1"),
    (["audit", "--sigma-max", 50, "--num-scales", 232, "--M", 5, "--step-size", -6e-6], "step size must be a positive number"),
    (["plot", "step-size", "--sigma-max", 50, "--num-scales", 232, "--mark", -1, "--output", "p.png"], "positive finite"),
    (["train", "--dry-run", "--compile-mode", "bogus"], "compile_mode must be one of"),
    (["export", "--format", "score-sde", "--output", "x.py", "--sigma-max", 50, "--num-scales", 10, "--score-sde-base", "not a module!!"],
     "is not a module name"),
])
def test_inputs_that_used_to_be_accepted_are_refused_in_one_line(args, phrase, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(run(*args), phrase)


def test_a_device_that_cannot_be_honoured_and_a_batch_larger_than_the_data_fail_the_dry_run(npy):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    one_line_error(run("train", "--data", npy, "--dry-run", "--device", "cuda"), "no GPU")
    one_line_error(run("train", "--data", npy, "--dry-run", "--batch-size", 10**7), "GiB of activations")
    out = json.loads(run("train", "--data", npy, "--dry-run", "--batch-size", 32, "--ngf", 4, "--json").stdout)
    assert any("larger than the 16 training images" in n for n in out["notes"])


def test_export_never_replaces_a_users_json_beside_the_py(tmp_path):
    (tmp_path / "cfg.json").write_text('{"mine": true}\n')
    one_line_error(run("export", "--format", "score-sde", "--output", tmp_path / "cfg.py", "--sigma-max", 50, "--num-scales", 10),
                   "cfg.json exists and was not written by ncsn-tune")
    assert json.loads((tmp_path / "cfg.json").read_text()) == {"mine": True} and not (tmp_path / "cfg.py").exists()


# ------------------------------------------------------------------------------------------------ no traceback


def bad_arrays(tmp_path):
    import zipfile

    (tmp_path / "garbage.npz").write_bytes(b"garbage")
    np.savez(tmp_path / "ok.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    data = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    with zipfile.ZipFile(tmp_path / "member.npz", "w") as z:
        z.writestr("images.npy", b"not an array")
    os.mkfifo(tmp_path / "fifo.npy")
    return [tmp_path / n for n in ("garbage.npz", "truncated.npz", "member.npz", "fifo.npy")]


def test_damaged_arrays_are_one_line_for_every_command_that_reads_them(tmp_path):
    for path in bad_arrays(tmp_path):
        one_line_error(run("sigmas", "--data", path, "--output", tmp_path / "s.json"), str(path))
        one_line_error(run("train", "--data", path, "--dry-run"), str(path))
        if path.suffix == ".npz":
            one_line_error(run("evaluate", "--checkpoint", tmp_path, "--samples", path), str(path))


def test_bad_numbers_in_a_yaml_are_one_line(tmp_path, real_configs):
    import yaml

    official = yaml.safe_load((real_configs / "ncsnv2" / "configs" / "cifar10.yml").read_text())
    for section, key, value, phrase in (("model", "sigma_begin", "fifty", "model.sigma_begin must be a number"),
                                        ("sampling", "step_lr", -1, "step")):
        edited = {k: dict(v) if isinstance(v, dict) else v for k, v in official.items()}
        edited[section][key] = value
        (tmp_path / "c.yml").write_text(yaml.safe_dump(edited))
        one_line_error(run("audit", "--config", tmp_path / "c.yml"), phrase)
        one_line_error(run("train", "--config", tmp_path / "c.yml", "--dry-run"), phrase)


def test_a_score_sde_config_that_exits_is_one_line(tmp_path, real_configs):
    (tmp_path / "exits.py").write_text("import sys\n\ndef get_config():\n    sys.exit()\n")
    one_line_error(run("audit", "--config", tmp_path / "exits.py", "--score-sde-root", real_configs / "score_sde_pytorch"),
                   "printed nothing")


def test_a_huge_simulation_is_refused_with_its_estimate():
    one_line_error(run("simulate", "mixture", "--samples", 10**9), "GiB")
    one_line_error(run("simulate", "step-size", "--sigma-max", 50, "--num-scales", 232, "--dim", 3072, "--chains", 10**8), "hours")
    one_line_error(run("simulate", "step-size", "--sigma-max", 50, "--num-scales", 232, "--dim", 3072, "--M", 10**8), "hours")


def test_a_progress_interval_that_is_not_a_number_is_said(monkeypatch):
    monkeypatch.setenv("NCSN_TUNE_PROGRESS_EVERY", "abc")
    one_line_error(run("sigmas", "--sigma-max", 50, "--dim", 3072, "--num-scales", 10, "--json"), "NCSN_TUNE_PROGRESS_EVERY")


# ------------------------------------------------------------------------------------------------ messages that say what happened


def test_a_data_root_with_some_batches_names_the_missing_ones(tmp_path, fake_cifar):
    for name in ("data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"):
        (fake_cifar / "cifar-10-batches-py" / name).unlink()
    one_line_error(run("sigmas", "--data", "cifar10", "--data-root", fake_cifar), "holds data_batch_1 but not data_batch_2")


def test_changed_data_is_called_changed(npy):
    assert run("sigmas", "--data", npy).exit_code == 0
    np.save(npy, np.random.default_rng(1).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8))
    out = json.loads(run("step-size", "--data", npy, "--json").stdout)
    assert any("changed since the schedule was derived" in n for n in out["notes"])


def test_garbage_and_foreign_torch_files_are_named_as_such(tmp_path):
    (tmp_path / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(400))
    one_line_error(run("sample", "--checkpoint", tmp_path / "garbage.pt", "--device", "cpu"), "not a file written by torch.save")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    r = run("sample", "--checkpoint", tmp_path / "list.pt", "--device", "cpu")
    one_line_error(r, "is not an ncsn_tune checkpoint")
    assert "official" not in r.stderr


def test_mixture_weights_are_printed_as_numbers():
    r = run("simulate", "mixture", "--weights", "0,1")
    one_line_error(r, "[0.0, 1.0]")
    assert "np.float64" not in r.stderr


# ------------------------------------------------------------------------------------------------ signals


def ncsn_tune(*args):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "ncsn_tune", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def handles_sigterm(pid: int) -> bool:
    """Whether the process has taken over SIGTERM (the command line's entry does so first thing)."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        return True
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << 14))


@pytest.mark.parametrize("signum, status", [(2, 130), (15, 143)])
def test_a_signal_during_start_up_is_one_line_and_the_shells_status(signum, status, tmp_path):
    """From the moment the entry point runs (before the interpreter gets there no program can answer): the imports that
    follow, which took 0.4 s before they were made lazy, end in one line."""
    import time

    for delay in (0.0, 0.05, 0.15):
        proc = ncsn_tune("sigmas", "--sigma-max", 50, "--dim", 3072, "--output", tmp_path / "s.json", "--force")
        deadline = time.monotonic() + 30
        while not handles_sigterm(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        if proc.returncode == 0:
            continue  # finished before the signal came
        assert proc.returncode == status and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_sigterm_to_audit_stops_the_score_sde_child(tmp_path, real_configs):
    import subprocess
    import time

    (tmp_path / "spin.py").write_text("def get_config():\n    while True:\n        pass\n")
    proc = ncsn_tune("audit", "--config", tmp_path / "spin.py", "--score-sde-root", real_configs / "score_sde_pytorch")
    marker = str(tmp_path / "spin.py")
    children = lambda: subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()  # noqa: E731
    deadline = time.monotonic() + 60
    while len(children()) < 2 and time.monotonic() < deadline:  # the command and its child name the file
        time.sleep(0.1)
    proc.terminate()
    out, err = proc.communicate(timeout=60)
    time.sleep(0.5)
    assert proc.returncode == 143 and "Stopped" in err and "Traceback" not in err
    assert not children()
