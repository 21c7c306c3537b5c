"""Issue 16: the command line as users meet it. One test (or a group) per numbered item of the issue."""

import json
import os
import stat
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
from PIL import Image

from cli_run import one_line_error as _one_line_error, tiny_train
from cli_run import run

one_line_error = partial(_one_line_error, alone=True)  # here: the Error line is all of stderr


def npy(path, n=12, size=8, seed=0):
    np.save(path, np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    return path


TINY = tiny_train()


@pytest.fixture
def tiny_run(tmp_path):
    pytest.importorskip("torch")
    data = npy(tmp_path / "imgs.npy")
    r = run("train", "--data", data, "--output", tmp_path / "run", "--steps", 2, *TINY)
    assert r.exit_code == 0, r.output
    return tmp_path / "run"


# ------------------------------------------------------------------------------------------------ 1-4: workflow


def test_runs_record_absolute_data_paths_and_evaluate_from_anywhere(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    (tmp_path / "a").mkdir()
    npy(tmp_path / "a" / "imgs.npy")
    monkeypatch.chdir(tmp_path / "a")
    assert run("train", "--data", "imgs.npy", "--output", "run", "--steps", 2, *TINY).exit_code == 0
    import yaml

    config = yaml.safe_load((tmp_path / "a" / "run" / "config.yaml").read_text())
    assert config["data"] == str((tmp_path / "a" / "imgs.npy").resolve())
    monkeypatch.chdir(tmp_path)
    r = run("evaluate", "--checkpoint", tmp_path / "a" / "run", "--images", 2, "--output-dir", tmp_path / "ev", "--device", "cpu")
    assert r.exit_code == 0, r.output


def test_the_schedule_table_names_only_the_techniques_that_ran(tmp_path):
    r = run("sigmas", "--sigma-max", 50, "--dim", 3072)
    assert r.exit_code == 0 and "Technique 2; sigma_max given" in r.stdout and "Techniques 1-2" not in r.stdout
    r = run("sigmas", "--data", npy(tmp_path / "d.npy"))
    assert r.exit_code == 0 and "Techniques 1-2" in r.stdout, r.output


def test_step_size_says_what_it_saved(tmp_path):
    r = run("step-size", "--M", "1,3,5,10", "--sigma-max", 50, "--num-scales", 232)
    assert r.exit_code == 0 and "no step size saved; give one M to save it" in r.stdout
    assert not (tmp_path / "work" / "step_size.json").exists()
    r = run("step-size", "--M", 3, "--sigma-max", 50, "--num-scales", 232)
    assert "Saved the step size for M = 3" in r.stdout and (tmp_path / "work" / "step_size.json").exists()


def test_evaluate_says_when_there_is_no_held_out_split(tmp_path):
    pytest.importorskip("torch")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(8):
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    assert run("train", "--data", folder, "--output", tmp_path / "run", "--steps", 2, *TINY).exit_code == 0
    r = run("evaluate", "--checkpoint", tmp_path / "run", "--images", 4, "--output-dir", tmp_path / "ev", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "training images (no held-out split)" in r.stdout and "held-out:" not in r.stdout
    out = json.loads(run("evaluate", "--checkpoint", tmp_path / "run", "--images", 4, "--output-dir", tmp_path / "ev", "--json",
                         "--device", "cpu").stdout)
    assert out["held_out"] is False


def test_inputs_are_checked_before_any_long_work(tmp_path):
    pytest.importorskip("torch")
    # the checkpoint does not exist either: the samples file is what is checked first
    one_line_error(run("evaluate", "--checkpoint", tmp_path / "nowhere", "--samples", tmp_path / "nonexist.npz"), "does not exist",
                   "nonexist.npz")
    one_line_error(run("sample", "--checkpoint", tmp_path / "nowhere", "--output", tmp_path / "s.bmp"), "must end in")
    one_line_error(run("train", "--data", tmp_path / "nowhere.npy", "--init-from", tmp_path / "none.pth"), "none.pth", "does not exist")


# ------------------------------------------------------------------------------------------------ 5: one line, exit 2


@pytest.mark.parametrize("args", [
    ["sigmas", "--sigma-max", 50, "--dim", 3072],
    ["step-size", "--sigma-max", 50, "--num-scales", 232],
    ["plot", "step-size", "--sigma-max", 50, "--num-scales", 232, "--output", "OUT/f.png"],
    ["simulate", "step-size", "--sigma-max", 2, "--num-scales", 3, "--dim", 10, "--chains", 2, "--output", "OUT/f.png"],
    ["train", "--data", "DATA", "--output", "OUT/run", "--steps", 1, *TINY],
])
def test_unwritable_output_is_one_line(tmp_path, monkeypatch, args):
    if args[0] == "train":
        pytest.importorskip("torch")
    npy(tmp_path / "d.npy")
    args = [str(a).replace("OUT", str(tmp_path / "out")).replace("DATA", str(tmp_path / "d.npy")) for a in args]

    def refused(*a, **k):
        raise PermissionError(13, "Permission denied", k.get("dir", "?"))

    monkeypatch.setattr("ncsn_tune.files.tempfile.mkstemp", refused)
    one_line_error(run(*args), "permission denied", "choose a folder you can write to")


def test_a_file_where_a_folder_is_needed(tmp_path, monkeypatch):
    (tmp_path / "afile.txt").write_text("mine")
    one_line_error(run("sigmas", "--sigma-max", 50, "--dim", 3072, "--output", tmp_path / "afile.txt" / "s.json"), "is a file, not a folder")
    monkeypatch.setenv("NCSN_TUNE_WORKDIR", str(tmp_path / "afile.txt"))
    one_line_error(run("sigmas", "--sigma-max", 50, "--dim", 3072), "NCSN_TUNE_WORKDIR", "is a file")


def test_other_tracebacks_are_one_line(tmp_path):
    pytest.importorskip("torch")
    one_line_error(run("train", "--architecture", "foo", "--dry-run"), "unknown architecture 'foo'", "--architecture")
    np.savez(tmp_path / "x.npz", float=np.zeros((2, 3, 8, 8), np.float32))
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 8, 8), np.float32))
    one_line_error(run("evaluate", "--checkpoint", tmp_path, "--samples", tmp_path / "x.npy"), "must be a .npz", "--samples")
    one_line_error(run("step-size", "--M", "1000000000000000000", "--ratio", 1.04), "beyond any sampling budget", "--M")


def test_four_pixel_images_train_and_resume(tmp_path):
    pytest.importorskip("torch")
    data = npy(tmp_path / "four.npy", n=10, size=4)
    assert run("train", "--data", data, "--output", tmp_path / "run", "--steps", 2, *TINY).exit_code == 0
    r = run("train", "--output", tmp_path / "run", "--resume", "--steps", 4)
    assert r.exit_code == 0, r.output


# ------------------------------------------------------------------------------------------------ 6: true messages


def test_coincident_points_empty_npz_and_truncated_checkpoint(tmp_path, tiny_run):
    np.save(tmp_path / "same.npy", np.full((3, 4, 4, 3), 9, np.uint8))
    one_line_error(run("sigmas", "--data", tmp_path / "same.npy"), "all 3 points coincide", "Technique 1 gives no sigma_max")
    np.save(tmp_path / "one.npy", np.zeros((1, 4, 4, 3), np.uint8))
    one_line_error(run("sigmas", "--data", tmp_path / "one.npy"), "it holds one point")
    np.savez(tmp_path / "empty.npz")
    one_line_error(run("sigmas", "--data", tmp_path / "empty.npz"), "holds no arrays")
    newest = sorted(tiny_run.glob("checkpoint_*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    r = run("sample", "--checkpoint", newest, "--num", 1, "--output", tmp_path / "s.png", "--device", "cpu")
    one_line_error(r, "truncated or damaged (an interrupted copy or a full disk)")
    assert r.stderr.strip().endswith(")")  # a whole sentence, not one cut mid-word


def test_values_that_used_to_pass_or_mislead(tmp_path):
    one_line_error(run("step-size", "--M", 5, "--sigma-max", 50, "--num-scales", 232, "--step-size", 1), "below sigma_min^2")
    one_line_error(run("sigmas", "--sigma-max", "1e300", "--dim", 3072), "outside [1e-18, 1e+18]", "float32")
    one_line_error(run("sigmas", "--sigma-max", 50, "--dim", 3072, "--num-scales", 100000000), "more than ncsn_tune accepts")
    r = run("simulate", "step-size", "--sigma-max", 2, "--num-scales", 3, "--dim", 10, "--sim-dim", 0)
    assert r.exit_code == 2 and "--sim-dim" in r.stderr
    (tmp_path / "bad.yaml").write_text("lr: [1,\nngf: 3\n  x: 1\n")
    one_line_error(run("train", "--config", tmp_path / "bad.yaml", "--dry-run"), "is not valid YAML", "line")


def test_gmm_labels_follow_the_numbers():
    out = json.loads(run("simulate", "mixture", "--small-sigma-max", 100, "--samples", 50, "--json").stdout)
    assert "not below the diameter" in out["results"][0]["label"]
    out = json.loads(run("simulate", "mixture", "--small-sigma-max", 1, "--samples", 50, "--json").stdout)
    assert "below the diameter" in out["results"][0]["label"] and "not below" not in out["results"][0]["label"]


def test_compared_schedules_get_their_own_eps(tmp_path):
    run("sigmas", "--sigma-max", 50, "--dim", 3072, "--num-scales", 100, "--output", tmp_path / "b.json")
    r = run("plot", "schedule", "--sigma-max", 50, "--num-scales", 232, "--dim", 3072, "--compare", tmp_path / "b.json",
            "--output", tmp_path / "s.png", "--json")
    rows = json.loads(r.stdout)["schedules"]
    from ncsn_tune import NoiseSchedule

    for row in rows:
        assert row["step_size"] == NoiseSchedule.from_num_scales(50.0, 3072, row["num_scales"]).step_size(5).step_size
    assert rows[0]["step_size"] != rows[1]["step_size"]


# ------------------------------------------------------------------------------------------------ 7: files


def test_a_file_ncsn_tune_did_not_write_is_never_replaced_silently(tmp_path):
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}')
    one_line_error(run("sigmas", "--sigma-max", 50, "--dim", 3072, "--output", mine), "was not written by ncsn-tune", "--force")
    assert mine.read_text() == '{"my": "notes"}'
    assert run("sigmas", "--sigma-max", 50, "--dim", 3072, "--output", mine, "--force").exit_code == 0
    assert run("sigmas", "--sigma-max", 40, "--dim", 3072, "--output", mine).exit_code == 0  # its own output is refreshed
    (tmp_path / "afile.txt").write_text("unrelated")
    one_line_error(run("sigmas", "--sigma-max", 50, "--dim", 3072, "--output", tmp_path / "afile.txt"), "must end in .json, .yaml or .yml")
    one_line_error(run("sigmas", "--sigma-max", 50, "--dim", 3072, "--output", tmp_path / "s.toml"), "must end in")
    fig = tmp_path / "photo.png"
    Image.new("RGB", (4, 4)).save(fig)
    one_line_error(run("plot", "overlap", "--dim", 3072, "--output", fig), "was not written by ncsn-tune")


def test_files_take_the_users_umask_and_the_suffixs_format(tmp_path, tiny_run):
    old = os.umask(0o022)
    try:
        run("sigmas", "--sigma-max", 50, "--dim", 3072, "--output", tmp_path / "s.yaml")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s.yaml").stat().st_mode) == 0o644
    assert (tmp_path / "s.yaml").read_text().startswith("# written by ncsn-tune")
    r = run("sample", "--checkpoint", tiny_run, "--num", 2, "--output", tmp_path / "o.jpg", "--device", "cpu")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "o.jpg") as img:
        assert img.format == "JPEG"


# ------------------------------------------------------------------------------------------------ 8: truncated checkpoints


def test_a_truncated_newest_checkpoint_falls_back_to_the_newest_valid_one(tmp_path, tiny_run):
    r = run("train", "--output", tiny_run, "--resume", "--steps", 4)
    assert r.exit_code == 0, r.output
    newest = sorted(tiny_run.glob("checkpoint_*.pt"))[-1]
    assert newest.name == "checkpoint_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:2000])
    r = run("sample", "--checkpoint", tiny_run, "--num", 1, "--output", tmp_path / "s.png", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "skipped the unreadable newer checkpoint(s) checkpoint_00000004.pt" in r.stdout and "using checkpoint_00000002.pt" in r.stdout
    r = run("train", "--output", tiny_run, "--resume", "--steps", 6, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["resume_from"].endswith("checkpoint_00000002.pt") and any("skipped" in n for n in out["notes"])


# ------------------------------------------------------------------------------------------------ 9: --json everywhere


def test_every_command_gives_one_json_document(tmp_path, tiny_run):
    cases = [
        ["sigmas", "--sigma-max", 50, "--dim", 3072],
        ["step-size", "--M", 5],
        ["step-size", "--M", "1,5"],
        ["plot", "step-size", "--output", tmp_path / "a.png"],
        ["plot", "schedule", "--output", tmp_path / "b.png"],
        ["plot", "overlap", "--output", tmp_path / "c.png"],
        ["simulate", "step-size", "--chains", 2, "--M", 1],
        ["simulate", "mixture", "--samples", 20],
        ["train", "--data", tmp_path / "imgs.npy", "--dry-run", *TINY],
        ["train", "--output", tiny_run, "--resume", "--steps", 3],
        ["sample", "--checkpoint", tiny_run, "--num", 1, "--output", tmp_path / "s.png", "--device", "cpu"],
        ["evaluate", "--checkpoint", tiny_run, "--images", 2, "--output-dir", tmp_path / "ev", "--device", "cpu"],
    ]
    for args in cases:
        r = run(*args, "--json")
        assert r.exit_code == 0, (args, r.output)
        json.loads(r.stdout)  # exactly one document: json.loads refuses anything else
        assert r.stdout.count("\n") == 1, args


# ------------------------------------------------------------------------------------------------ 10: visible long work


def test_piped_sample_prints_progress_lines(tmp_path, tiny_run):
    env = {**os.environ, "NCSN_TUNE_PROGRESS_EVERY": "0"}
    r = subprocess.run([sys.executable, "-m", "ncsn_tune", "sample", "--checkpoint", str(tiny_run), "--num", "2", "--output",
                        str(tmp_path / "s.png"), "--device", "cpu", "--json"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("scales: ")]
    assert len(lines) >= 2 and "(100%)" in lines[-1]
    json.loads(r.stdout)


def test_piped_evaluate_shows_progress_for_each_phase_that_shares_a_name(tmp_path, tiny_run):
    """The loss pass and the chain sampled after it both count scales: the second was silent once the first had printed
    its last line (on a GPU, a minute of evaluate --fid's sampling without a line)."""
    env = {**os.environ, "NCSN_TUNE_PROGRESS_EVERY": "0"}
    r = subprocess.run([sys.executable, "-m", "ncsn_tune", "evaluate", "--checkpoint", str(tiny_run), "--images", "2", "--chain-check",
                        "2", "--output-dir", str(tmp_path / "ev"), "--device", "cpu"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    finished = [line for line in r.stderr.splitlines() if line.startswith("scales: ") and "(100%)" in line]
    assert len(finished) == 2, r.stderr


def test_tables_keep_long_paths_and_commands_whole(tmp_path):
    deep = tmp_path / ("a_rather_long_folder_name_" * 4) / "data"
    deep.mkdir(parents=True)
    data = npy(deep / "images_with_a_long_name.npy")
    r = subprocess.run([sys.executable, "-m", "ncsn_tune", "sigmas", "--data", str(data)], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    assert str(data.resolve()) in r.stdout and "…" not in r.stdout
    assert "next: ncsn-tune step-size --M 5\n" in r.stdout and not r.stdout.startswith("\n")


# ------------------------------------------------------------------------------------------------ 11: said once


def test_colour_conversions_are_said(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / "a.png")
    Image.new("L", (8, 8), 50).save(folder / "b.png")
    Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(folder / "c.png")
    r = run("sigmas", "--data", folder)
    assert r.exit_code == 0, r.output
    assert "1 grayscale image(s)" in r.stderr and "converted to RGB" in r.stderr and "alpha channel" in r.stderr


def test_cpu_training_says_what_it_does_not_do(tmp_path):
    pytest.importorskip("torch")
    npy(tmp_path / "d.npy")
    r = run("train", "--data", tmp_path / "d.npy", "--output", tmp_path / "run", "--steps", 1, *TINY)
    assert r.exit_code == 0, r.output
    assert "nothing to compile on a CPU" in r.stderr and "compile, CUDA graph" not in r.stderr
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert "TensorBoard logs are off" in r.stderr


@pytest.mark.parametrize("command", [["train", "--dry-run"], ["sample", "--checkpoint", "run", "--num", "2"],
                                     ["evaluate", "--checkpoint", "run"]])
def test_a_model_command_without_torch_says_how_to_install_it(tmp_path, command):
    """The README's main command installs without torch; the next command a user types, train, needs it."""
    code = "import sys; sys.modules['torch'] = None; from ncsn_tune.cli import main; main(sys.argv[1:])"
    r = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "NCSN_TUNE_WORKDIR": str(tmp_path / "work")})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "needs torch" in r.stderr and "pip install" in r.stderr and "[train]" in r.stderr
