"""Issue 14: snr, the pixel convention, `ncsn-tune audit` for existing configurations, `ncsn-tune export` for other tools."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ncsn_tune import NoiseSchedule, load_dataset
from ncsn_tune.cli import main
from ncsn_tune.interop import audit_config, read_tool_config

#: The settings of the official NCSNv2 configs (ermongroup/ncsnv2 configs/*.yml), as numbers:
#: dataset, image_size, sigma_begin, num_classes, step_lr, n_steps_each, ema.
OFFICIAL = {
    "cifar10": ("CIFAR10", 32, 50, 232, 6.2e-6, 5, True),
    "celeba": ("CELEBA", 64, 90, 500, 3.3e-6, 5, True),
    "church": ("LSUN", 64, 140, 788, 4.9e-6, 4, True),
    "bedroom": ("LSUN", 128, 190, 1086, 1.8e-6, 3, True),
    "tower": ("LSUN", 128, 190, 1086, 1.8e-6, 3, True),
    "ffhq": ("FFHQ", 256, 348, 2311, 9e-7, 3, True),
    "ncsn_original": ("CIFAR10", 32, 1, 10, 2e-5, 100, False),
}


def official_yaml(path: Path, name: str, **change) -> Path:
    dataset, size, sigma_begin, num_classes, step_lr, n_steps, ema = OFFICIAL[name]
    values = dict(dataset=dataset, size=size, sigma_begin=sigma_begin, num_classes=num_classes, step_lr=step_lr, n_steps=n_steps,
                  ema=str(ema).lower())
    values.update(change)
    path.write_text(textwrap.dedent("""
        training: {{batch_size: 128, n_iters: 300001, snapshot_freq: 5000}}
        sampling: {{batch_size: 100, data_init: false, step_lr: {step_lr}, n_steps_each: {n_steps}, denoise: true}}
        data: {{dataset: "{dataset}", image_size: {size}, channels: 3, logit_transform: false, rescaled: false, random_flip: true}}
        model: {{sigma_begin: {sigma_begin}, num_classes: {num_classes}, ema: {ema}, ema_rate: 0.999, spec_norm: false,
                sigma_dist: geometric, sigma_end: 0.01, normalization: InstanceNorm++, nonlinearity: elu, ngf: 128}}
        optim: {{weight_decay: 0.0, optimizer: "Adam", lr: 0.0001, beta1: 0.9, amsgrad: false, eps: 0.00000001}}
    """).format(**values))
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def findings(out: dict) -> dict:
    return {f["technique"]: f for f in out["findings"]}


# ------------------------------------------------------------------------------------------------ snr and pixels


def test_step_size_reports_snr_and_takes_it():
    out = json.loads(run("step-size", "--M", 5, "--sigma-max", 50, "--num-scales", 232, "--json").stdout)
    assert round(out["snr"], 5) == 0.17584 and out["step_size"] == pytest.approx(6.184025e-6, rel=1e-6)
    out = json.loads(run("step-size", "--M", 5, "--sigma-max", 50, "--num-scales", 232, "--snr", 0.176, "--json").stdout)
    assert out["given_step_size"] == pytest.approx(6.1952e-6, rel=1e-12) and f"{out['given_step_size']:.3g}" == "6.2e-06"
    r = run("step-size", "--M", 5, "--sigma-max", 50, "--num-scales", 232, "--snr", 0.176, "--step-size", 6.2e-6)
    assert r.exit_code == 2 and "not both" in r.stderr


def test_the_pixel_range_doubles_distances_and_is_recorded(fake_cifar, tmp_path):
    a = json.loads(run("sigmas", "--data", "cifar10", "--data-root", fake_cifar, "--json", "--output", tmp_path / "a.json").stdout)
    b = json.loads(run("sigmas", "--data", "cifar10", "--data-root", fake_cifar, "--pixel-range=-1,1", "--json",
                       "--output", tmp_path / "b.json").stdout)
    assert b["sigma_max"] == pytest.approx(2 * a["sigma_max"], rel=1e-12) and b["pixel_range"] == "-1,1"
    assert NoiseSchedule.load(tmp_path / "b.json").pixel_range == "-1,1"


def test_training_never_takes_a_schedule_of_the_other_pixel_range(fake_cifar):
    pytest.importorskip("torch")
    assert run("sigmas", "--data", "cifar10", "--data-root", fake_cifar, "--pixel-range=-1,1").exit_code == 0
    out = json.loads(run("train", "--dry-run", "--json", "--ngf", 8).stdout)
    assert any("derived for pixels in [-1,1]" in n for n in out["notes"])
    assert out["sigma_max"] == pytest.approx(NoiseSchedule.from_data(load_dataset("cifar10", fake_cifar, download=False)).sigma_max)


# ------------------------------------------------------------------------------------------------ audit


def test_audit_of_the_official_cifar10_config(tmp_path, real_subset):
    config = official_yaml(tmp_path / "cifar10.yml", "cifar10")
    r = run("audit", "--config", config, "--data", "cifar10", "--data-root", real_subset, "--json", "--output", tmp_path / "a.png")
    assert r.exit_code == 0, r.output
    f = findings(json.loads(r.stdout))
    assert f["T1"]["verdict"] == "ok" and round(f["T1"]["numbers"]["diameter"], 6) == 49.896451 and f["T1"]["numbers"]["sigma_max"] == 50
    t2 = f["T2"]["numbers"]
    assert f["T2"]["verdict"] == "ok" and round(t2["overlap"], 3) == 0.567 and t2["equation_num_scales"] == 220
    t4 = f["T4"]["numbers"]
    assert f["T4"]["verdict"] == "ok" and round(t4["optimal_step_size"], 9) == 6.184e-6
    assert round(t4["variance_ratio"], 6) == 1.055475 and round(t4["optimal_variance_ratio"], 6) == 1.055475
    assert t4["variance_ratio"] > t4["optimal_variance_ratio"] and f["T5"]["verdict"] == "ok"
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_audit_with_fake_data_and_the_table(tmp_path, fake_cifar):
    config = official_yaml(tmp_path / "cifar10.yml", "cifar10", sigma_begin=5)
    r = run("audit", "--config", config, "--data", "cifar10", "--data-root", fake_cifar)
    assert r.exit_code == 0, r.output
    assert "T1" in r.stdout and "below the diameter" in r.stdout and "modes of the data can be missed" in r.stdout


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_every_official_config_is_audited(tmp_path, name):
    out = json.loads(run("audit", "--config", official_yaml(tmp_path / f"{name}.yml", name), "--json").stdout)
    f = findings(out)
    assert f["T1"]["verdict"] == "not checked" and f["T2"]["verdict"] in ("ok", "warning") and f["T4"]["verdict"] in ("ok", "warning")
    assert out["dim"] == 3 * OFFICIAL[name][1] ** 2
    if name == "ncsn_original":  # NCSN's original settings: EMA off, sigma_max 1, 10 scales, a step far from the optimum
        assert f["T5"]["verdict"] == "warning" and f["T4"]["verdict"] == "warning" and f["T2"]["verdict"] == "warning"


def test_the_real_official_configs_when_present():
    folder = os.environ.get("NCSN_TUNE_OFFICIAL_CONFIGS")
    if not folder:
        pytest.skip("set NCSN_TUNE_OFFICIAL_CONFIGS to a folder of ermongroup/ncsnv2's configs/*.yml")
    for path in sorted(Path(folder).glob("*.yml")):
        c = read_tool_config(path)
        assert len(audit_config(c).findings) == 4, path


def test_a_step_far_from_the_optimum_is_flagged_with_what_it_costs(tmp_path):
    out = json.loads(run("audit", "--config", official_yaml(tmp_path / "c.yml", "cifar10", step_lr=3e-5), "--json").stdout)
    t4 = findings(out)["T4"]
    assert t4["verdict"] == "warning" and "4.85 times the optimum" in t4["consequence"]
    assert t4["numbers"]["variance_ratio"] > t4["numbers"]["optimal_variance_ratio"] + 0.01
    unstable = json.loads(run("audit", "--config", official_yaml(tmp_path / "u.yml", "cifar10", step_lr=2e-4), "--json").stdout)
    assert findings(unstable)["T4"]["verdict"] == "problem"


def test_audit_of_numbers():
    out = json.loads(run("audit", "--sigma-max", 50, "--num-scales", 232, "--M", 5, "--snr", 0.176, "--dim", 3072, "--ema", "--json").stdout)
    f = findings(out)
    assert f["T2"]["numbers"]["equation_num_scales"] == 220 and f["T4"]["numbers"]["step_size"] == pytest.approx(6.1952e-6)
    r = run("audit", "--num-scales", 232)
    assert r.exit_code == 2 and "--sigma-max" in r.stderr


# ------------------------------------------------------------------------------------------------ export


@pytest.fixture
def saved(fake_cifar):
    assert run("sigmas", "--data", "cifar10", "--data-root", fake_cifar).exit_code == 0
    assert run("step-size", "--M", 3).exit_code == 0
    return NoiseSchedule.load(Path(os.environ["NCSN_TUNE_WORKDIR"]) / "schedule.json")


def test_export_to_diffusers_loads_in_diffusers(tmp_path, saved):
    diffusers = pytest.importorskip("diffusers")
    r = run("export", "--format", "diffusers", "--output", tmp_path / "sched")
    assert r.exit_code == 2 and "puts pixels in [-1,1]" in r.stderr and "--convert" in r.stderr
    r = run("export", "--format", "diffusers", "--output", tmp_path / "sched", "--convert", "--json")
    assert r.exit_code == 0, r.output
    scheduler = diffusers.ScoreSdeVeScheduler.from_pretrained(tmp_path / "sched")
    ours = 2 * saved.sigmas  # [-1, 1] pixels: every sigma doubles
    np.testing.assert_allclose(scheduler.discrete_sigmas.numpy()[::-1], ours, rtol=2e-6)
    assert scheduler.config.num_train_timesteps == saved.num_scales and scheduler.config.correct_steps == 3
    assert scheduler.config.snr == pytest.approx(saved.step_size(3).snr, rel=1e-12)  # snr does not change with the pixels
    audited = read_tool_config(tmp_path / "sched")
    assert audited.sigma_max == pytest.approx(2 * saved.sigma_max) and audited.steps_per_scale == 3


def test_export_to_score_sde_gives_a_config_with_our_fields(tmp_path, saved):
    pytest.importorskip("ml_collections")
    root = tmp_path / "score_sde"
    (root / "configs" / "ve" / "ncsnv2").mkdir(parents=True)
    for init in (root / "configs", root / "configs" / "ve", root / "configs" / "ve" / "ncsnv2"):
        (init / "__init__.py").write_text("")
    (root / "configs" / "ve" / "ncsnv2" / "cifar10.py").write_text(textwrap.dedent("""
        import ml_collections

        def get_config():
            config = ml_collections.ConfigDict()
            config.training = ml_collections.ConfigDict({"sde": "vesde", "continuous": False})
            config.sampling = ml_collections.ConfigDict({"snr": 0.16, "n_steps_each": 1, "corrector": "ald", "predictor": "none"})
            config.data = ml_collections.ConfigDict({"centered": False, "image_size": 32, "num_channels": 3})
            config.model = ml_collections.ConfigDict({"sigma_min": 0.01, "sigma_max": 50.0, "num_scales": 1000, "ema_rate": 0.999})
            return config
    """))
    r = run("export", "--format", "score-sde", "--output", tmp_path / "ours.py")
    assert r.exit_code == 0, r.output
    probe = "import importlib.util, json; s = importlib.util.spec_from_file_location('o', 'OURS'); m = importlib.util.module_from_spec(s); " \
            "s.loader.exec_module(m); c = m.get_config(); print(json.dumps([c.model.sigma_max, c.model.sigma_min, c.model.num_scales, " \
            "c.sampling.snr, c.sampling.n_steps_each, c.data.centered]))".replace("OURS", str(tmp_path / "ours.py"))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    sigma_max, sigma_min, num_scales, snr, m, centered = json.loads(out.stdout)
    step = saved.step_size(3)
    assert (sigma_max, sigma_min, num_scales, m, centered) == (saved.sigma_max, saved.sigma_min, saved.num_scales, 3, False)
    assert snr == pytest.approx(step.snr, rel=1e-12)
    flat = json.loads((tmp_path / "ours.json").read_text())
    assert flat["model.num_scales"] == saved.num_scales and flat["_ncsn_tune"]["data"]["name"] == "cifar10"
    # and the audit reads score_sde configs the same way
    audited = json.loads(run("audit", "--config", tmp_path / "ours.py", "--score-sde-root", root, "--json").stdout)
    assert audited["config"]["num_scales"] == saved.num_scales and audited["config"]["tool"] == "score-sde"
    r = run("audit", "--config", tmp_path / "ours.py")
    assert r.exit_code == 2 and "--score-sde-root" in r.stderr


def test_export_of_numbers_in_the_given_pixel_range(tmp_path):
    r = run("export", "--format", "edm", "--output", tmp_path / "edm.json", "--sigma-max", 100, "--num-scales", 232, "--pixel-range=-1,1")
    assert r.exit_code == 0, r.stderr
    edm = json.loads((tmp_path / "edm.json").read_text())
    assert edm["pixel_range"] == "-1,1" and edm["sigma_max"] == 100 and edm["sigmas"][0] == 100  # as given: nothing converted
    r = run("export", "--format", "edm", "--output", tmp_path / "edm.json", "--sigma-max", 50, "--num-scales", 232)
    assert r.exit_code == 2 and "derived for [0,1]" in r.stderr and "--convert" in r.stderr  # the default [0, 1] is not changed silently


def test_export_to_the_ncsnv2_yaml_and_edm(tmp_path, saved):
    pytest.importorskip("torch")
    assert run("export", "--format", "ncsnv2-yaml", "--output", tmp_path / "ours.yml").exit_code == 0
    import yaml

    from ncsn_tune.config import load_train_config

    merged = yaml.safe_load(official_yaml(tmp_path / "cifar10.yml", "cifar10").read_text())
    for section, values in yaml.safe_load((tmp_path / "ours.yml").read_text()).items():
        merged[section].update(values)
    (tmp_path / "merged.yml").write_text(yaml.safe_dump(merged))
    c = load_train_config(tmp_path / "merged.yml")
    assert (c.sigma_max, c.num_scales, c.steps_per_scale) == (saved.sigma_max, saved.num_scales, 3)
    assert c.step_size == pytest.approx(saved.step_size(3).step_size, rel=1e-12)
    r = run("export", "--format", "edm", "--output", tmp_path / "edm.json")
    assert r.exit_code == 2 and "--convert" in r.stderr
    assert run("export", "--format", "edm", "--output", tmp_path / "edm.json", "--convert").exit_code == 0
    edm = json.loads((tmp_path / "edm.json").read_text())
    assert edm["pixel_range"] == "-1,1" and edm["sigmas"][-1] == 0.0 and edm["sigmas"][0] == pytest.approx(2 * saved.sigma_max)
    assert np.all(np.diff(edm["sigmas"]) < 0) and len(edm["sigmas"]) == saved.num_scales + 1
