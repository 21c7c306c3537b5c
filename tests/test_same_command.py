"""The same command continues the same run, and no input is silently swapped, ignored or left to a traceback."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from ncsn_tune.cli import main  # noqa: E402
from ncsn_tune.model.checkpoint import load_checkpoint  # noqa: E402

TINY = ["--ngf", 4, "--batch-size", 4, "--num-scales", 4, "--log-every", 1, "--checkpoint-every", 2, "--sample-every", 1000,
        "--eval-every", 1000, "--device", "cpu"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r, *phrases):
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("Error: ") and "Traceback" not in r.output, r.output
    for phrase in phrases:
        assert phrase in lines[-1], (phrase, lines[-1])


def make_data(kind: str, tmp_path, fake_cifar):
    """The data a user has: CIFAR-10 in the official layout, a folder of PNGs, or a .npy array."""
    if kind == "cifar10":
        return fake_cifar
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    if kind == "npy":
        np.save(tmp_path / "d.npy", images)
        return tmp_path / "d.npy"
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    return folder


def spell(path, spelling: str, tmp_path) -> str:
    if spelling == "absolute":
        return str(path)
    if spelling == "trailing slash":
        return str(path) + "/"
    if spelling == "relative":
        return os.path.relpath(path, tmp_path)
    link = tmp_path / "link"
    if not link.exists():
        link.symlink_to(path)
    return str(link)


@pytest.mark.parametrize("kind", ["cifar10", "folder", "npy"])
@pytest.mark.parametrize("spelling", ["absolute", "trailing slash", "relative", "symlink"])
def test_the_first_command_again_with_resume_continues_the_run(kind, spelling, tmp_path, fake_cifar, monkeypatch):
    if kind == "npy" and spelling == "trailing slash":
        pytest.skip("a file has no trailing slash")
    monkeypatch.chdir(tmp_path)
    target = spell(make_data(kind, tmp_path, fake_cifar), spelling, tmp_path)
    data = ["--data", "cifar10", "--data-root", target] if kind == "cifar10" else ["--data", target]
    first = ["train", *data, "--output", "run", *TINY]
    r = run(*first, "--steps", 2)
    assert r.exit_code == 0, r.output
    r = run(*first, "--steps", 4, "--resume")
    assert r.exit_code == 0, r.output
    assert load_checkpoint(tmp_path / "run").step == 4
    other = ["--data", "cifar10", "--data-root", str(fake_cifar / "cifar-10-batches-py")] if kind == "cifar10" else \
        ["--data", os.path.abspath(target)]
    r = run("train", *other, "--output", "run", *TINY, "--steps", 6, "--resume")  # another spelling of the same data
    assert r.exit_code == 0, r.output
    assert load_checkpoint(tmp_path / "run").step == 6


def test_resume_on_other_data_is_refused_by_what_the_data_is(tmp_path, fake_cifar, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = make_data("folder", tmp_path, fake_cifar)
    assert run("train", "--data", folder, "--output", "run", *TINY, "--steps", 2).exit_code == 0
    other = tmp_path / "other"
    other.mkdir()
    from PIL import Image

    for i in range(12):
        Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(other / f"{i}.png")
    one_line_error(run("train", "--data", other, "--output", "run", *TINY, "--steps", 4, "--resume"), "a run continues on its own data")


# ------------------------------------------------------------------------------------------------ the run folder's own files


@pytest.fixture
def npy(tmp_path):
    np.save(tmp_path / "d.npy", np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8))
    return tmp_path / "d.npy"


def first_run(npy, tmp_path, steps=2):
    r = run("train", "--data", npy, "--output", tmp_path / "run", *TINY, "--steps", steps)
    assert r.exit_code == 0, r.output
    return tmp_path / "run"


def test_a_lock_link_to_an_outside_file_leaves_that_file_unchanged(npy, tmp_path):
    run_dir = first_run(npy, tmp_path)
    outside = tmp_path / "precious.txt"
    outside.write_text("mine\n")
    (run_dir / ".lock").unlink()
    (run_dir / ".lock").symlink_to(outside)
    one_line_error(run("train", "--data", npy, "--output", run_dir, *TINY, "--steps", 4, "--resume"), ".lock is a symbolic link")
    assert outside.read_text() == "mine\n"


def test_a_metrics_link_is_refused_and_nothing_is_written(npy, tmp_path):
    run_dir = first_run(npy, tmp_path)
    outside = tmp_path / "log.txt"
    outside.write_text("mine\n")
    (run_dir / "metrics.jsonl").rename(tmp_path / "kept.jsonl")
    (run_dir / "metrics.jsonl").symlink_to(outside)
    config = (run_dir / "config.yaml").read_text()
    one_line_error(run("train", "--data", npy, "--output", run_dir, *TINY, "--steps", 4, "--resume"), "metrics.jsonl is a symbolic link")
    assert outside.read_text() == "mine\n" and (run_dir / "metrics.jsonl").is_symlink() and (run_dir / "config.yaml").read_text() == config


def test_a_metrics_folder_is_refused_before_config_yaml_is_rewritten(npy, tmp_path):
    run_dir = first_run(npy, tmp_path)
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "metrics.jsonl").mkdir()
    config = (run_dir / "config.yaml").read_text()
    one_line_error(run("train", "--data", npy, "--output", run_dir, *TINY, "--steps", 4, "--lr", 3e-4, "--resume"),
                   "metrics.jsonl is not a file")
    assert (run_dir / "config.yaml").read_text() == config


def test_an_unreadable_newest_checkpoint_stops_instead_of_being_overwritten(npy, tmp_path, monkeypatch):
    from ncsn_tune.model import checkpoint as ckpt

    run_dir = first_run(npy, tmp_path, steps=4)
    newest = ckpt.list_checkpoints(run_dir)[-1]
    before = newest.read_bytes()
    if os.geteuid() == 0:  # root reads any file: take the permission away as the operating system would for a user
        real = ckpt.os.access
        monkeypatch.setattr(ckpt.os, "access", lambda p, mode: False if os.fspath(p) == os.fspath(newest) else real(p, mode))
    else:
        newest.chmod(0)
    try:
        one_line_error(run("train", "--data", npy, "--output", run_dir, *TINY, "--steps", 6, "--resume"), "permission denied",
                       "not damaged", newest.name)
    finally:
        newest.chmod(0o644)
        monkeypatch.undo()
    assert newest.read_bytes() == before and ckpt.load_checkpoint(run_dir).step == 4


def test_resume_refuses_a_checkpoint_with_nan_weights(npy, tmp_path):
    from ncsn_tune.model import checkpoint as ckpt

    run_dir = first_run(npy, tmp_path)
    path = ckpt.list_checkpoints(run_dir)[-1]
    state = torch.load(path, weights_only=True)
    next(iter(state["model"].values())).fill_(float("nan"))
    torch.save(state, path)
    config = (run_dir / "config.yaml").read_text()
    one_line_error(run("train", "--data", npy, "--output", run_dir, *TINY, "--steps", 4, "--lr", 3e-4, "--resume"), "NaN",
                   "cannot continue")
    assert (run_dir / "config.yaml").read_text() == config


def test_a_failed_prune_does_not_stop_a_run_that_saved(npy, tmp_path, monkeypatch):
    from ncsn_tune.model import checkpoint as ckpt

    real = ckpt.Path.unlink

    def refuse(self, missing_ok=False):
        if ckpt.PATTERN.match(self.name):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, missing_ok=missing_ok)

    monkeypatch.setattr(ckpt.Path, "unlink", refuse)
    r = run("train", "--data", npy, "--output", tmp_path / "run", *TINY, "--steps", 10, "--keep-checkpoints", 1)
    assert r.exit_code == 0, r.output
    assert "could not delete the old checkpoint" in r.stderr and ckpt.load_checkpoint(tmp_path / "run").step == 10


def test_resume_takes_the_runs_own_values_given_again(npy, tmp_path):
    run_dir = first_run(npy, tmp_path)
    r = run("train", "--data", npy, "--output", run_dir, *TINY, "--steps", 4, "--resume", "--architecture", "ncsnv2",
            "--schedule", run_dir / "schedule.json")
    assert r.exit_code == 0, r.output
    one_line_error(run("train", "--data", npy, "--output", run_dir, *TINY, "--steps", 6, "--resume", "--architecture", "ncsnv2_deeper"),
                   "cannot change architecture")


def test_a_run_stopped_before_its_first_checkpoint_is_not_offered_resume(npy, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    r = run("train", "--data", npy, "--output", run_dir, *TINY, "--steps", 2)
    one_line_error(r, "stopped before its first checkpoint", "--overwrite")
    assert "--resume" not in r.stderr.strip().splitlines()[-1]


def test_a_checkpoint_write_that_fails_on_a_full_disk_is_one_line(npy, tmp_path, monkeypatch):
    """torch's zip writer reports ENOSPC as 'unexpected pos 64 vs 0', a message without 'write' in it."""
    from ncsn_tune.model import checkpoint as ckpt

    run_dir = first_run(npy, tmp_path, steps=2)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: type("U", (), {"free": 40_000})())

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(ckpt.torch, "save", full)
    one_line_error(run("train", "--data", npy, "--output", run_dir, *TINY, "--steps", 4, "--resume"), "the disk is full")
    monkeypatch.undo()
    assert ckpt.load_checkpoint(run_dir).step == 2 and not list(run_dir.glob(".*.tmp"))


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
    one_line_error(run("simulate", "--toy", "gmm", "--samples", 10**9), "GiB")
    one_line_error(run("simulate", "--sigma-max", 50, "--num-scales", 232, "--dim", 3072, "--chains", 10**8), "hours")
    one_line_error(run("simulate", "--sigma-max", 50, "--num-scales", 232, "--dim", 3072, "--M", 10**8), "hours")


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
    r = run("simulate", "--toy", "gmm", "--weights", "0,1")
    one_line_error(r, "[0.0, 1.0]")
    assert "np.float64" not in r.stderr


# ------------------------------------------------------------------------------------------------ signals


def ncsn_tune(*args):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "ncsn_tune", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signum, status", [(2, 130), (15, 143)])
def test_a_signal_during_start_up_is_one_line_and_the_shells_status(signum, status, tmp_path):
    import time

    for delay in (0.1, 0.25):
        proc = ncsn_tune("sigmas", "--sigma-max", 50, "--dim", 3072, "--output", tmp_path / "s.json", "--force")
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
