"""Continuing a run with the command that started it, and a run folder where only the trainer's own files are written."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ncsn_tune.model.checkpoint import load_checkpoint  # noqa: E402
from cli_run import one_line_error, run, tiny_train  # noqa: E402

TINY = tiny_train()


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
    state["checksum"] = ckpt.state_digest(state)  # written so by a run that diverged: not damaged, but NaN
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


def test_a_run_stopped_before_its_first_checkpoint_starts_again_with_the_same_line_or_resume(npy, tmp_path):
    """Issue 29: killed before its first checkpoint, a run could be continued neither by the line that started it nor by
    the --resume its stop message printed. There is nothing to continue, so both start it again from step 0."""
    run_dir = first_run(npy, tmp_path, steps=2)
    for path in run_dir.glob("checkpoint_*.pt"):
        path.unlink()  # as if killed before the first checkpoint was written
    r = run("train", "--data", npy, "--output", run_dir, *TINY, "--steps", 2)
    assert r.exit_code == 0 and "stopped before its first checkpoint" in r.output and "starts again from step 0" in r.output, r.output
    for path in run_dir.glob("checkpoint_*.pt"):
        path.unlink()
    r = run("train", "--output", run_dir, "--resume", "--steps", 2)
    assert r.exit_code == 0 and "starts again from step 0" in r.output, r.output
    logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert logged == sorted(set(logged))  # each step once: the stopped run's log was replaced, not mixed in


def test_resume_with_a_config_file_is_refused(npy, tmp_path, real_configs):
    """Issue 29: --config with --resume was ignored (the run keeps the configuration it recorded)."""
    run_dir = first_run(npy, tmp_path, steps=2)
    one_line_error(run("train", "--output", run_dir, "--resume", "--steps", 4, "--config",
                       real_configs / "ncsnv2" / "configs" / "cifar10.yml"), "leave --config out")


def test_nan_in_the_optimisers_state_is_refused_on_resume(npy, tmp_path):
    """Issue 29: the weights were checked for NaN on resume, Adam's moments were not (the next step would give NaN)."""
    import torch

    from ncsn_tune.model import checkpoint as ckpt

    run_dir = first_run(npy, tmp_path, steps=2)
    path = ckpt.list_checkpoints(run_dir)[-1]
    state = torch.load(path, weights_only=True)
    first = next(iter(state["optimizer"]["state"].values()))
    first["exp_avg_sq"].view(-1)[0] = float("nan")
    state["checksum"] = ckpt.state_digest(state)
    torch.save(state, path)
    one_line_error(run("train", "--output", run_dir, "--resume", "--steps", 4), "optimiser's state hold NaN", "exp_avg_sq")


def test_a_flipped_bit_in_a_checkpoint_is_found(npy, tmp_path):
    """Issue 29: torch's zip reader checks no checksum; one flipped bit in the weights went unnoticed."""
    import torch

    from ncsn_tune.model import checkpoint as ckpt

    run_dir = first_run(npy, tmp_path, steps=2)
    path = ckpt.list_checkpoints(run_dir)[-1]
    state = torch.load(path, weights_only=True)
    name = next(iter(state["model"]))
    state["model"][name].view(-1)[0] += 1e-3  # a flipped bit, in effect: the checksum still says what was written
    torch.save(state, path)
    with pytest.raises(ckpt.CheckpointError, match="do not match the checksum"):
        ckpt.load_checkpoint(path)
    one_line_error(run("sample", "--checkpoint", path, "--num", 1, "--output", tmp_path / "s.png"), "do not match the checksum")


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


@pytest.mark.parametrize("kind", ["cifar10 from the saved schedule", "npy on the line"])
def test_the_same_line_again_with_resume_continues_in_the_default_run_folder(kind, tmp_path, fake_cifar, monkeypatch):
    """From an empty folder, a run started without --output trains in runs/<data name>; the same line again with --resume
    and more --steps refused with 'continuing a run needs its folder'. It continues the run in that same folder."""
    monkeypatch.chdir(tmp_path)
    if kind.startswith("cifar10"):
        r = run("sigmas", "--data", "cifar10", "--data-root", fake_cifar)
        assert r.exit_code == 0, r.output
        line, folder = ["train", "--ngf", 4, "--batch-size", 4, "--checkpoint-every", 2, "--sample-every", 1000, "--eval-every", 1000,
                        "--device", "cpu"], tmp_path / "runs" / "cifar10"
    else:
        line, folder = ["train", "--data", make_data("npy", tmp_path, fake_cifar), *TINY], tmp_path / "runs" / "d"
    r = run(*line, "--steps", 2)
    assert r.exit_code == 0 and load_checkpoint(folder).step == 2, r.output
    r = run(*line, "--steps", 4, "--resume")
    assert r.exit_code == 0 and "Resuming from" in r.output and load_checkpoint(folder).step == 4, r.output
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [folder.name]  # the same run, not a second folder
    r = run(*line, "--steps", 4, "--resume")
    assert r.exit_code == 0 and "nothing to do" in r.output, r.output


def test_resume_without_a_run_in_the_default_folder_says_which_folder_it_looked_in(tmp_path, fake_cifar, monkeypatch):
    monkeypatch.chdir(tmp_path)
    npy = make_data("npy", tmp_path, fake_cifar)
    one_line_error(run("train", "--data", npy, *TINY, "--steps", 4, "--resume"), str(os.path.join("runs", "d")), "--output")


def test_training_inside_the_image_folder_leaves_its_data_as_it_was(tmp_path, monkeypatch):
    """cd into a folder of images and train on '.': the run (runs/<name>, its sample grids), the work folder and evaluate's
    folder land inside the data. The same line again with --resume then failed ('images differ in size: ... samples_2.png');
    the folders ncsn-tune writes are not data, and loading says it left them out."""
    folder = make_data("folder", tmp_path, None)
    monkeypatch.chdir(folder)
    monkeypatch.delenv("NCSN_TUNE_WORKDIR")  # the work folder .ncsn-tune/ inside the data too
    line = ["train", "--data", ".", *TINY, "--sample-every", 2, "--sample-count", 4]
    assert run(*line, "--steps", 2).exit_code == 0
    assert list(folder.glob("runs/imgs/samples_*.png"))
    r = run(*line, "--steps", 4, "--resume")
    assert r.exit_code == 0 and load_checkpoint(folder / "runs" / "imgs").step == 4, r.output
    r = run("sigmas", "--data", ".")
    assert r.exit_code == 0 and "12 " in r.stdout and "left out" in r.output and "runs/imgs" in r.output.replace("\\", "/"), r.output
