"""The chain a user types from an empty folder, each step with no more arguments than the one before needs: every step
finds what the previous one wrote and says which file it used."""

import pytest

torch = pytest.importorskip("torch")

from cli_run import run, one_line_error  # noqa: E402

TRAIN = ["train", "--ngf", 4, "--batch-size", 4, "--num-scales", 6, "--checkpoint-every", 2, "--sample-every", 1000,
         "--eval-every", 1000, "--device", "cpu"]


@pytest.fixture
def chain(tmp_path, fake_cifar, monkeypatch):
    """sigmas --data cifar10, step-size --M 5 and a tiny train, typed in an empty folder: the run is runs/cifar10."""
    monkeypatch.chdir(tmp_path)
    for line in (["sigmas", "--data", "cifar10", "--data-root", fake_cifar], ["step-size", "--M", 5], [*TRAIN, "--steps", 2]):
        r = run(*line)
        assert r.exit_code == 0, (line, r.output)
    return tmp_path / "runs" / "cifar10"


def test_sample_with_no_checkpoint_takes_the_newest_of_the_run_train_made_and_says_which(chain, tmp_path):
    r = run("sample", "--num", 4, "--output", "grid.png", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "grid.png").is_file()
    assert "checkpoint_00000002.pt" in r.output and "runs/cifar10" in r.output.replace("\\", "/"), r.output


def test_evaluate_with_no_checkpoint_takes_the_same_run(chain, tmp_path):
    r = run("evaluate", "--images", 4, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "checkpoint_00000002.pt" in r.output and (tmp_path / "evaluation").is_dir(), r.output


def test_sample_with_no_checkpoint_and_no_run_names_the_folder_it_looked_in(tmp_path, fake_cifar, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run("sigmas", "--data", "cifar10", "--data-root", fake_cifar).exit_code == 0
    one_line_error(run("sample", "--num", 4, "--device", "cpu"), "runs/cifar10", "--checkpoint", "train first")
    one_line_error(run("evaluate", "--images", 4, "--device", "cpu"), "runs/cifar10", "--checkpoint")


def test_no_checkpoint_and_a_run_elsewhere_points_at_that_run(tmp_path, fake_cifar, monkeypatch):
    """A run trained with --output (or on other data) is not guessed at, but the error names it."""
    monkeypatch.chdir(tmp_path)
    r = run(*TRAIN, "--data", "cifar10", "--data-root", fake_cifar, "--output", "runs/mine", "--steps", 2)
    assert r.exit_code == 0, r.output
    one_line_error(run("sample", "--num", 4, "--device", "cpu"), "runs/cifar10", "runs/mine")
