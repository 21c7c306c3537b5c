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
    (["simulate", "--seed", -1], "--seed"),
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
