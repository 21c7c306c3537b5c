"""Nothing trusted that was not checked (issue 29): inputs users really type, each refused in one line (or, where the
input is right, taken), never ignored, never blamed on the wrong option, never a traceback. One test per defect."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cli_run import one_line_error, run


@pytest.fixture
def imgs(tmp_path):
    np.save(tmp_path / "imgs.npy", np.random.default_rng(0).random((24, 3, 8, 8)).astype(np.float32))
    return tmp_path / "imgs.npy"


def test_a_json_failure_is_one_json_document_on_stdout():
    r = run("sigmas", "--sigma-max", -1, "--dim", 3, "--json")
    assert r.exit_code == 2
    doc = json.loads(r.stdout)
    assert doc["exit_status"] == 2 and "sigma_max" in doc["error"] and doc["fields"] == ["sigma_max"]
    assert r.stderr.startswith("Error: ")


def test_a_work_folder_with_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NCSN_TUNE_WORKDIR", "~/wd")  # quoted in a shell, the tilde reaches us unexpanded
    assert run("sigmas", "--sigma-max", 50, "--dim", 3072).exit_code == 0
    assert (tmp_path / "wd" / "schedule.json").is_file() and not Path("~").exists()


@pytest.mark.parametrize("args, phrase", [
    (["simulate", "step-size", "--seed", -1], "--seed"),
    (["train", "--data", "IMGS", "--output", "OUT/run", "--steps", 1, "--seed", 2**70, "--device", "cpu"], "seed must lie between"),
])
def test_seeds_out_of_range_are_refused_before_any_file(args, phrase, imgs, tmp_path):
    args = [str(a).replace("IMGS", str(imgs)).replace("OUT", str(tmp_path)) for a in args]
    one_line_error(run(*args), phrase)
    assert not (tmp_path / "run").exists()  # train used to leave an empty run folder


def test_a_loop_without_langevin_steps_has_no_step_to_export_or_save(tmp_path):
    base = ["--sampler", "pc", "--predictor", "none", "--corrector", "none", "--sigma-max", 50, "--num-scales", 100]
    one_line_error(run("export", "--format", "score-sde", "--output", tmp_path / "x.py", *base), "takes no Langevin steps")
    one_line_error(run("step-size", "--output", tmp_path / "s.json", *base), "takes no Langevin steps")
    assert not (tmp_path / "s.json").exists()  # it saved an "optimal" step with s^2/sigma^2 of 2.5e7


def test_a_string_in_a_diffusers_config_is_named(tmp_path):
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"_class_name": "ScoreSdeVeScheduler", "snr": "abc"}))
    one_line_error(run("audit", "--config", tmp_path), "snr must be a number", "'abc'")


def test_a_sampler_typed_where_the_configuration_decides_is_refused(tmp_path, real_configs):
    yml = real_configs / "ncsnv2" / "configs" / "cifar10.yml"
    one_line_error(run("audit", "--config", yml, "--sampler", "ald"), "with --config the file gives them", "--sampler")
    one_line_error(run("export", "--format", "diffusers", "--sampler", "ald", "--sigma-max", 50, "--num-scales", 100,
                       "--output", tmp_path / "d"), "diffusers runs")
    one_line_error(run("step-size", "--M", 5, "--sigma-max", 50, "--num-scales", 232, "--sampling-eps", 1e-3), "--sampling-eps",
                   "has none")


def test_fid_options_without_fid_are_refused(tmp_path):
    one_line_error(run("evaluate", "--checkpoint", tmp_path / "nowhere", "--fid-num", 50), "--fid-num", "add --fid")


def test_audit_refuses_data_of_another_size_than_the_configuration(tmp_path, real_configs):
    np.save(tmp_path / "small.npy", np.random.default_rng(0).random((10, 3, 8, 8)).astype(np.float32))
    yml = real_configs / "ncsnv2" / "configs" / "cifar10.yml"
    one_line_error(run("audit", "--config", yml, "--data", tmp_path / "small.npy"), "3x8x8", "3x32x32")  # it used D = 192 silently
    one_line_error(run("audit", "--config", yml, "--dim", 192), "D = 192 contradicts")


def test_an_official_yaml_for_other_data_does_not_train_on_cifar10(tmp_path, real_configs, imgs):
    celeba = real_configs / "ncsnv2" / "configs" / "celeba.yml"
    one_line_error(run("train", "--config", celeba, "--output", tmp_path / "r", "--dry-run"), "trains on CELEBA", "--data")
    one_line_error(run("train", "--config", celeba, "--data", imgs, "--output", tmp_path / "r", "--dry-run"), "3x64x64", "3x8x8")


def test_cifar10_without_a_data_root_is_read_where_the_saved_schedule_read_it(real_subset, tmp_path):
    assert run("sigmas", "--data", "cifar10", "--data-root", real_subset).exit_code == 0
    r = run("sigmas", "--data", "cifar10", "--json")  # it went looking in the cache (and tried to download)
    assert r.exit_code == 0, r.output
    assert "cifar10-subset" in json.loads(r.stdout)["data"]["path"]


def test_a_schedule_of_numbers_does_not_silently_replace_one_derived_from_data(imgs, tmp_path):
    assert run("sigmas", "--data", imgs).exit_code == 0
    saved = Path(os.environ["NCSN_TUNE_WORKDIR"]) / "schedule.json"
    derived = saved.read_bytes()
    one_line_error(run("sigmas", "--sigma-max", 50, "--dim", 192, "--num-scales", 232), "derived from imgs", "--output")
    assert saved.read_bytes() == derived
    assert run("sigmas", "--sigma-max", 50, "--dim", 192, "--num-scales", 232, "--output", tmp_path / "published.json").exit_code == 0
    assert run("sigmas", "--sigma-max", 50, "--dim", 192, "--num-scales", 232, "--force").exit_code == 0


def test_a_deeply_nested_file_is_one_line(tmp_path):
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    r = run("train", "--config", tmp_path / "deep.yaml", "--dry-run")
    assert r.exit_code == 2 and "Traceback" not in r.output and r.stderr.strip().startswith("Error:")


def test_a_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    """Issue 29: a PNG that declares more pixels than Pillow will decode raised DecompressionBombError as a traceback."""
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(3):
        Image.new("RGB", (40, 40), (k, 0, 0)).save(folder / f"{k}.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40 x 40 = 1,600 pixels: more than twice the limit, a "bomb"
    r = run("sigmas", "--data", folder)
    one_line_error(r, "is not a readable image")


def test_plot_step_size_for_pc_reports_the_given_snr(tmp_path):
    """Issue 29: --snr was drawn but not reported by plot step-size --sampler pc."""
    r = run("plot", "step-size", "--sampler", "pc", "--M", 1, "--sigma-max", 50, "--num-scales", 1000, "--snr", 0.16,
            "--output", tmp_path / "p.png", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["given"][0]["snr"] == 0.16 and round(out["given"][0]["variance_ratio"], 4) == 1.0245


def test_chains_beyond_one_batch_are_refused_before_loading(tmp_path, imgs):
    """Issue 29: step-size --checkpoint --chains 10000000 ran out of memory with a traceback."""
    pytest.importorskip("torch")
    assert run("train", "--data", imgs, "--output", tmp_path / "run", "--steps", 1, "--ngf", 4, "--batch-size", 4, "--num-scales", 4,
               "--device", "cpu", "--sample-every", 1000, "--eval-every", 1000).exit_code == 0
    one_line_error(run("step-size", "--checkpoint", tmp_path / "run", "--chains", 10_000_000), "10,000,000 chains", "--chains")


def test_long_work_says_its_estimate_or_refuses_before_it_starts(tmp_path, imgs):
    """Issue 29: train on a CPU at the paper's settings ran for months without a word; the PC loop's model at M = 100000
    never refused."""
    one_line_error(run("train", "--data", imgs, "--output", tmp_path / "r", "--device", "cpu", "--ngf", 128, "--batch-size", 128),
                   "on this machine's CPU", "days", "--device")
    assert not (tmp_path / "r").exists()
    dry = run("train", "--data", imgs, "--output", tmp_path / "r", "--device", "cpu", "--ngf", 128, "--batch-size", 128, "--dry-run")
    assert dry.exit_code == 0 and "training would be refused" in dry.output  # a dry run shows the plan and says so
    r = run("train", "--data", imgs, "--output", tmp_path / "r", "--device", "cpu", "--steps", 2000, "--ngf", 64, "--dry-run")
    assert r.exit_code == 0 and "estimate: 2,000 steps on this CPU take about" in r.output
    one_line_error(run("step-size", "--sampler", "pc", "--M", 100000, "--sigma-max", 50, "--num-scales", 220), "minutes",
                   "fewer levels or steps per level")


def test_a_killed_writers_temporary_file_goes_and_a_live_writers_stays(tmp_path, imgs):
    """Issue 29: temporary files of killed writers stayed in the sample folder and the FID cache (33 MB each), and train's
    start-up deleted another process's live temporary file. Temporaries now carry their writer's process id."""
    import subprocess
    import sys

    from ncsn_tune.files import atomic_write_bytes

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = tmp_path / ".s.npz.4194303999.abc.tmp"  # no such process
        alive = tmp_path / f".s.npz.{live.pid}.abc.tmp"
        for path in (dead, alive):
            path.write_bytes(b"\0" * 1000)
        atomic_write_bytes(tmp_path / "s.npz", b"x")
        assert not dead.exists() and alive.exists() and (tmp_path / "s.npz").read_bytes() == b"x"
        assert run("train", "--data", imgs, "--output", tmp_path / "run", "--steps", 2, "--ngf", 4, "--batch-size", 4, "--num-scales", 4,
                   "--device", "cpu", "--sample-every", 1000, "--eval-every", 1000).exit_code == 0
        in_run = tmp_path / "run" / f".checkpoint_00000009.pt.{live.pid}.xyz.tmp"  # say, another command writing there now
        in_run.write_bytes(b"\0")
        r = run("train", "--output", tmp_path / "run", "--resume", "--steps", 4)
        assert r.exit_code == 0 and in_run.exists(), r.output
    finally:
        live.kill()
        live.wait()


def test_a_fifo_where_a_checkpoint_should_be_is_refused_not_waited_on(tmp_path, imgs):
    """Issue 29: a FIFO named like a checkpoint made sample wait forever on its open()."""
    assert run("train", "--data", imgs, "--output", tmp_path / "run", "--steps", 2, "--ngf", 4, "--batch-size", 4, "--num-scales", 4,
               "--device", "cpu", "--sample-every", 1000, "--eval-every", 1000).exit_code == 0
    os.mkfifo(tmp_path / "run" / "checkpoint_00000009.pt")
    r = run("sample", "--checkpoint", tmp_path / "run", "--num", 1, "--output", tmp_path / "s.png")
    assert r.exit_code == 0 and "not a regular file" in r.output, r.output  # skipped, said, the step-2 checkpoint used
    one_line_error(run("sample", "--checkpoint", tmp_path / "run" / "checkpoint_00000009.pt", "--num", 1, "--output",
                       tmp_path / "t.png"), "not a regular file")


def test_a_bad_value_in_a_file_is_blamed_on_the_file(tmp_path, real_configs, real_subset):
    """Issue 29: a value read from --config was blamed on --sigma-min/--sigma-max, options audit forbids with --config."""
    import yaml

    data = yaml.safe_load((real_configs / "ncsnv2" / "configs" / "cifar10.yml").read_text())
    data["model"]["sigma_begin"] = 0.001
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(data))
    for args in (["audit", "--config", tmp_path / "bad.yml"], ["train", "--config", tmp_path / "bad.yml", "--data-root", real_subset,
                                                               "--dry-run", "--output", tmp_path / "r"]):
        r = run(*args)
        one_line_error(r, "bad.yml", "(option --config)")
        assert "--sigma-min" not in r.stderr


def test_precompile_never_writes_through_links_planted_in_the_run_folder(tmp_path):
    """Issue 29: the background compile's spec and log were written with plain open() through whatever stood there."""
    pytest.importorskip("torch")
    from ncsn_tune.model.precompile import ScoreSpec, log_path, start

    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec = ScoreSpec(3, 8, 4, "ncsnv2", 4, 2, str(run_dir))
    (run_dir / "precompile_score_spec.json").symlink_to(victim)
    log_path(run_dir, "score").symlink_to(victim)
    proc = start(spec, run_dir)
    proc.kill()
    proc.wait()
    assert victim.read_text() == "keep me"
    assert not (run_dir / "precompile_score_spec.json").is_symlink() and not log_path(run_dir, "score").is_symlink()


def test_fid_stands_when_its_statistics_cannot_be_kept(tmp_path, monkeypatch):
    """Issue 29: evaluate lost its FID when the reference statistics could not be written to the cache."""
    torch = pytest.importorskip("torch")
    from ncsn_tune.data import as_dataset
    from ncsn_tune.model import fid as fid_module
    from ncsn_tune.model.evaluate import fid_of_samples
    from ncsn_tune.model.inception import FIDInceptionV3

    def no_room(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fid_module.FeatureStatistics, "save", no_room)
    network = FIDInceptionV3().eval()  # the distance's arithmetic is what is checked here, not the published weights
    rng = np.random.default_rng(0)
    reference = as_dataset(rng.random((3, 3, 16, 16)).astype(np.float32))
    samples = rng.random((3, 3, 16, 16)).astype(np.float32)
    out = fid_of_samples(samples, ("weights", network, "sha", []), (reference, tmp_path / "cache" / "stats"), None, torch.device("cpu"))
    assert np.isfinite(out["fid"]) and out["reference_statistics"] is None
    assert any("not saved" in n and "No space left" in n for n in out["notes"])
