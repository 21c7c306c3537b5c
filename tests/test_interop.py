"""Audit and export against the real tools: the official NCSNv2 YAMLs and score_sde's configs as published
(shared/real-configs, read with ml_collections), and diffusers' real ScoreSdeVeScheduler and ScoreSdeVePipeline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ncsn_tune import NoiseSchedule, load_dataset
from ncsn_tune.analysis.samplers import Sampler, chain_variance, sampler_step
from ncsn_tune.interop import audit_config, read_tool_config
from ncsn_tune.interop.conventions import DENOISE_PREDICTOR
from cli_run import run

#: score_sde's VE configs: (module, image size). Every one is a base the export must load over.
VE_CONFIGS = {
    "configs.ve.bedroom_ncsnpp_continuous": 256, "configs.ve.celeba_ncsnpp": 64, "configs.ve.celebahq_256_ncsnpp_continuous": 256,
    "configs.ve.celebahq_ncsnpp_continuous": 1024, "configs.ve.church_ncsnpp_continuous": 256, "configs.ve.cifar10_ddpm": 32,
    "configs.ve.cifar10_ncsnpp": 32, "configs.ve.cifar10_ncsnpp_continuous": 32, "configs.ve.cifar10_ncsnpp_deep_continuous": 32,
    "configs.ve.ffhq_256_ncsnpp_continuous": 256, "configs.ve.ffhq_ncsnpp_continuous": 1024, "configs.ve.ncsn.celeba": 64,
    "configs.ve.ncsn.celeba_124": 64, "configs.ve.ncsn.celeba_1245": 64, "configs.ve.ncsn.celeba_5": 64, "configs.ve.ncsn.cifar10": 32,
    "configs.ve.ncsn.cifar10_124": 32, "configs.ve.ncsn.cifar10_1245": 32, "configs.ve.ncsn.cifar10_5": 32,
    "configs.ve.ncsnv2.bedroom": 128, "configs.ve.ncsnv2.celeba": 64, "configs.ve.ncsnv2.cifar10": 32,
}
#: The official NCSNv2 YAMLs as published: image size, sigma_begin, num_classes, step_lr, n_steps_each.
OFFICIAL = {"cifar10": (32, 50, 232, 6.2e-6, 5), "celeba": (64, 90, 500, 3.3e-6, 5), "church": (64, 140, 788, 4.9e-6, 4),
            "bedroom": (128, 190, 1086, 1.8e-6, 3), "tower": (128, 190, 1086, 1.8e-6, 3), "ffhq": (256, 348, 2311, 9e-7, 3),
            "ncsn_original": (32, 1, 10, 2e-5, 100)}


def findings(out: dict) -> dict:
    return {f["technique"]: f for f in out["findings"]}


def score_sde(real_configs) -> Path:
    return real_configs / "score_sde_pytorch"


def official(real_configs, name: str) -> Path:
    return real_configs / "ncsnv2" / "configs" / f"{name}.yml"


def derived_yaml(real_configs, tmp_path, name: str, **sampling) -> Path:
    """The real official YAML with some sampling settings changed, as a user edits it."""
    data = yaml.safe_load(official(real_configs, name).read_text())
    data["sampling"].update(sampling)
    path = tmp_path / f"{name}_edited.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def load_score_sde_configs(root: Path, files: list[Path], fields: list[str]) -> list:
    """get_config() of each file, run as score_sde runs it (its checkout on the path), the fields asked for."""
    probe = ("import importlib.util, json, sys\nout = []\nfor f in sys.argv[1:]:\n"
             "    s = importlib.util.spec_from_file_location('o', f); m = importlib.util.module_from_spec(s); s.loader.exec_module(m)\n"
             "    c = m.get_config()\n"
             f"    out.append([eval('c.' + k) for k in {fields!r}])\nprint(json.dumps(out))\n")
    r = subprocess.run([sys.executable, "-c", probe, *map(str, files)], capture_output=True, text=True, cwd=root,
                       env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ snr and pixels


def test_step_size_reports_snr_and_takes_it():
    out = json.loads(run("step-size", "--M", 5, "--sigma-max", 50, "--num-scales", 232, "--json").stdout)
    assert round(out["snr"], 5) == 0.17584 and out["step_size"] == pytest.approx(6.184025e-6, rel=1e-6)
    out = json.loads(run("step-size", "--M", 5, "--sigma-max", 50, "--num-scales", 232, "--snr", 0.176, "--json").stdout)
    assert out["given_step_size"] == pytest.approx(6.1952e-6, rel=1e-12) and f"{out['given_step_size']:.3g}" == "6.2e-06"
    r = run("step-size", "--M", 5, "--sigma-max", 50, "--num-scales", 232, "--snr", 0.176, "--step-size", 6.2e-6)
    assert r.exit_code == 2 and "not both" in r.stderr


def test_one_pixel_range_rule_for_deriving_and_converting(fake_cifar, tmp_path):
    """Defect 8: `sigmas --pixel-range -1,1` and `export --convert` used to give two schedules (L 237 and 220)."""
    a = json.loads(run("sigmas", "--data", "cifar10", "--data-root", fake_cifar, "--json", "--output", tmp_path / "a.json").stdout)
    b = json.loads(run("sigmas", "--data", "cifar10", "--data-root", fake_cifar, "--pixel-range=-1,1", "--json",
                       "--output", tmp_path / "b.json").stdout)
    assert b["sigma_max"] == pytest.approx(2 * a["sigma_max"], rel=1e-12) and b["pixel_range"] == "-1,1"
    assert b["sigma_min"] == pytest.approx(0.02) and b["num_scales"] == a["num_scales"]
    assert NoiseSchedule.load(tmp_path / "b.json").pixel_range == "-1,1"
    assert run("export", "--format", "edm", "--schedule", tmp_path / "a.json", "--output", tmp_path / "e.json", "--convert").exit_code == 0
    converted = json.loads((tmp_path / "e.json").read_text())
    np.testing.assert_allclose(converted["sigmas"][:-1], NoiseSchedule.load(tmp_path / "b.json").sigmas, rtol=1e-12)
    assert run("sigmas", "--data", "cifar10", "--data-root", fake_cifar, "--pixel-range=-1,1", "--sigma-min", 0.01, "--json",
               "--output", tmp_path / "c.json", "--force").exit_code == 0
    assert NoiseSchedule.load(tmp_path / "c.json").sigma_min == 0.01  # a sigma_min given stands


def test_training_never_takes_a_schedule_of_the_other_pixel_range(fake_cifar, tmp_path):
    """Defect 9: the saved schedule is not used, and a named one is refused, when it is for the other pixel range."""
    pytest.importorskip("torch")
    assert run("sigmas", "--data", "cifar10", "--data-root", fake_cifar, "--pixel-range=-1,1").exit_code == 0
    out = json.loads(run("train", "--dry-run", "--json", "--ngf", 8).stdout)
    assert any("derived for pixels in [-1, 1]" in n for n in out["notes"])
    assert out["sigma_max"] == pytest.approx(NoiseSchedule.from_data(load_dataset("cifar10", fake_cifar, download=False)).sigma_max)
    assert run("sigmas", "--data", "cifar10", "--data-root", fake_cifar, "--pixel-range=-1,1", "--output", tmp_path / "s.json").exit_code == 0
    r = run("train", "--dry-run", "--schedule", tmp_path / "s.json", "--data", "cifar10", "--data-root", fake_cifar, "--ngf", 8)
    assert r.exit_code == 2 and "pixels in [-1, 1]" in r.stderr and "factor 0.5" in r.stderr
    r = run("step-size", "--schedule", tmp_path / "s.json", "--pixel-range", "0,1")
    assert r.exit_code == 2 and "pixels in [-1, 1]" in r.stderr


# ------------------------------------------------------------------------------------------------ audit: NCSNv2


def test_audit_of_the_official_cifar10_config(tmp_path, real_subset, real_configs):
    r = run("audit", "--config", official(real_configs, "cifar10"), "--data", "cifar10", "--data-root", real_subset, "--json",
            "--output", tmp_path / "a.png")
    assert r.exit_code == 0, r.output
    f = findings(json.loads(r.stdout))
    assert f["T1"]["verdict"] == "ok" and round(f["T1"]["numbers"]["diameter"], 6) == 49.896451 and f["T1"]["numbers"]["sigma_max"] == 50
    t2 = f["T2"]["numbers"]
    assert f["T2"]["verdict"] == "ok" and round(t2["overlap"], 3) == 0.567 and t2["equation_num_scales"] == 220
    t4 = f["T4"]["numbers"]
    assert f["T4"]["verdict"] == "ok" and round(t4["optimal_step_size"], 9) == 6.184e-6 and t4["exact_map"]
    assert round(t4["variance_ratio"], 6) == 1.055475 and round(t4["optimal_variance_ratio"], 6) == 1.055475
    assert t4["variance_ratio"] > t4["optimal_variance_ratio"] and f["T5"]["verdict"] == "ok"
    assert (tmp_path / "a.png").stat().st_size > 1000


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_every_official_config_is_audited(real_configs, name):
    out = json.loads(run("audit", "--config", official(real_configs, name), "--json").stdout)
    f = findings(out)
    size, sigma_begin, num_classes, step_lr, n_steps = OFFICIAL[name]
    assert out["dim"] == 3 * size**2 and out["config"]["sigma_max"] == sigma_begin and out["config"]["num_scales"] == num_classes
    assert out["config"]["step_size"] == step_lr and out["config"]["steps_per_scale"] == n_steps
    # church.yml's sigma_max 140 is above any distance of two 64 px images (issue 31); the others need the data to judge T1
    assert f["T1"]["verdict"] == ("problem" if name == "church" else "not checked")
    assert f["T2"]["verdict"] in ("ok", "warning", "problem") and f["T4"]["verdict"] in ("ok", "warning")
    assert out["config"]["pixel_range"] == "0,1" and out["config"]["sampler"]["name"] == "ald"
    if name == "ncsn_original":  # NCSN's original settings: EMA off, sigma_max 1, 10 scales (disjoint in D = 3072), a step far off
        assert f["T5"]["verdict"] == "warning" and f["T4"]["verdict"] == "warning" and f["T2"]["verdict"] == "problem"
    else:
        assert f["T2"]["verdict"] in ("ok", "warning")


def test_a_step_far_from_the_optimum_is_flagged_with_what_it_costs(tmp_path, real_configs):
    out = json.loads(run("audit", "--config", derived_yaml(real_configs, tmp_path, "cifar10", step_lr=3e-5), "--json").stdout)
    t4 = findings(out)["T4"]
    assert t4["verdict"] == "warning" and "4.85 x Proposition 3's optimum" in t4["consequence"]
    assert "8-bit pixel level" in t4["consequence"] and "FID" in t4["consequence"]  # the size in pixels, and what was measured
    assert t4["numbers"]["variance_ratio"] > t4["numbers"]["optimal_variance_ratio"] + 0.01
    unstable = json.loads(run("audit", "--config", derived_yaml(real_configs, tmp_path, "cifar10", step_lr=2e-4), "--json").stdout)
    assert findings(unstable)["T4"]["verdict"] == "problem"


def test_audit_with_the_data_and_the_table(tmp_path, fake_cifar, real_configs):
    r = run("audit", "--config", official(real_configs, "ncsn_original"), "--data", "cifar10", "--data-root", fake_cifar)
    assert r.exit_code == 0, r.output
    assert "T1" in r.stdout and "below the diameter" in r.stdout and "modes of the data can be missed" in r.stdout


def test_audit_of_numbers():
    out = json.loads(run("audit", "--sigma-max", 50, "--num-scales", 232, "--M", 5, "--snr", 0.176, "--dim", 3072, "--ema", "--json").stdout)
    f = findings(out)
    assert f["T2"]["numbers"]["equation_num_scales"] == 220 and f["T4"]["numbers"]["step_size"] == pytest.approx(6.1952e-6)
    r = run("audit", "--num-scales", 232)
    assert r.exit_code == 2 and "--sigma-max" in r.stderr


# ------------------------------------------------------------------------------------------------ audit: score_sde


@pytest.mark.slow
def test_every_real_score_sde_ve_config_is_audited_for_the_sampler_it_runs(real_configs):
    root = score_sde(real_configs)
    for module in VE_CONFIGS:
        path = root / (module.replace(".", "/") + ".py")
        r = run("audit", "--config", path, "--score-sde-root", root, "--json")
        if module == "configs.ve.ncsn.celeba":  # the published file sets training.loss where it means training.sde
            assert r.exit_code == 2 and "sets no training.sde" in r.stderr and "training.loss = 'vesde'" in r.stderr
            assert "None" not in r.stderr
            continue
        assert r.exit_code == 0, (module, r.output)
        out = json.loads(r.stdout)
        t4, sampler = findings(out)["T4"], out["config"]["sampler"]
        assert out["dim"] == 3 * VE_CONFIGS[module] ** 2 and out["config"]["pixel_range"] == "0,1"
        assert t4["verdict"] in ("ok", "warning"), (module, t4)
        if sampler["predictor"] == "none":  # the ncsn and ncsnv2 configs: annealed Langevin dynamics, Proposition 3
            assert sampler["corrector"] == "ald" and t4["numbers"]["exact_map"]
        else:
            assert (sampler["predictor"], sampler["corrector"]) == ("reverse_diffusion", "langevin") and not t4["numbers"]["exact_map"]
        assert any("training.continuous" in n for n in out["config"]["notes"])


def test_the_pc_config_is_audited_for_its_predictor_corrector_loop(real_configs):
    """Defect 4: ve/cifar10_ncsnpp_continuous.py runs reverse_diffusion + langevin; the audit used Proposition 3's 1.0181."""
    root = score_sde(real_configs)
    out = json.loads(run("audit", "--config", root / "configs/ve/cifar10_ncsnpp_continuous.py", "--score-sde-root", root, "--json").stdout)
    t4 = findings(out)["T4"]["numbers"]
    assert t4["criterion"].startswith("the loop's own chain") and t4["num_scales"] == 1000 and t4["snr"] == 0.16
    assert round(t4["variance_ratio"], 4) == 1.0245  # the chain of score_sde's PC loop at its snr 0.16, not Proposition 3's 1.0181
    assert t4["optimal_snr"] < 0.5 * 0.16 and t4["optimal_variance_ratio"] < t4["variance_ratio"]
    # issue 28: the criterion's smaller snr measured worse on samples; 0.16 is what ncsn_tune recommends, and the difference in
    # the chain's final noise is said in 8-bit pixel levels (0.03 of one), not as a percentage
    assert findings(out)["T4"]["verdict"] == "ok" and t4["recommended_snr"] == 0.16
    assert round(t4["excess_pixel_levels"], 2) == 0.03 and "8-bit pixel level" in findings(out)["T4"]["consequence"]
    assert "FID 77.5" in findings(out)["T4"]["consequence"]
    t2 = findings(out)["T2"]
    assert t2["verdict"] == "ok" and "fewer" not in t2["consequence"] and "N = 1000" in t2["consequence"]
    assert any("continuous time" in n for n in out["config"]["notes"])


def test_an_ode_config_takes_no_langevin_steps(real_configs, tmp_path):
    root = score_sde(real_configs)
    ode = tmp_path / "ode.py"  # a user's config over the published one, as score_sde's own configs are written
    ode.write_text("from configs.ve import cifar10_ncsnpp_continuous as base\n\n\ndef get_config():\n"
                   "    config = base.get_config()\n    config.sampling.method = 'ode'\n    return config\n")
    out = json.loads(run("audit", "--config", ode, "--score-sde-root", root, "--json").stdout)
    t4 = findings(out)["T4"]
    assert t4["verdict"] == "no Langevin steps" and "probability-flow ODE" in t4["have"] and out["config"]["steps_per_scale"] is None


def test_a_vp_config_is_refused_in_one_line(real_configs):
    root = score_sde(real_configs)
    r = run("audit", "--config", root / "configs/vp/cifar10_ddpmpp.py", "--score-sde-root", root)
    assert r.exit_code == 2 and "vpsde" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------ diffusers


@pytest.fixture
def saved(fake_cifar):
    assert run("sigmas", "--data", "cifar10", "--data-root", fake_cifar).exit_code == 0
    assert run("step-size", "--M", 3).exit_code == 0
    return NoiseSchedule.load(Path(os.environ["NCSN_TUNE_WORKDIR"]) / "schedule.json")


def test_the_chain_to_diffusers_with_the_real_subset(tmp_path, real_subset):
    """Done-when: sigmas on the real subset, export for diffusers, from_pretrained has the [0, 1] values."""
    diffusers = pytest.importorskip("diffusers")
    assert run("sigmas", "--data", "cifar10", "--data-root", real_subset).exit_code == 0
    r = run("export", "--format", "diffusers", "--output", tmp_path / "d", "--json")
    assert r.exit_code == 0, r.output
    scheduler = diffusers.ScoreSdeVeScheduler.from_pretrained(tmp_path / "d")
    assert round(scheduler.config.sigma_max, 6) == 49.896451 and scheduler.config.sigma_min == 0.01
    # issue 28: the pipeline's own 2000 levels (not Technique 2's L = 220) and the published snr 0.16, which measured better
    # than the single-Gaussian criterion's optimum for the loop
    assert scheduler.config.num_train_timesteps == 2000 and scheduler.config.correct_steps == 1 and scheduler.config.snr == 0.16
    out = json.loads(r.stdout)
    assert out["step"]["num_scales"] == 2000 and any("default num_inference_steps" in n for n in out["notes"])
    r = run("export", "--format", "diffusers", "--output", tmp_path / "e", "--sampling-levels", 220, "--json")
    assert diffusers.ScoreSdeVeScheduler.from_pretrained(tmp_path / "e").config.num_train_timesteps == 220
    assert any("num_inference_steps=220" in n for n in json.loads(r.stdout)["notes"])


def test_audit_of_a_diffusers_config_is_in_its_own_pixels(tmp_path, real_subset):
    """Defect 1: (50, 0.01) on CIFAR-10 is T1 ok in diffusers' [0, 1], as it is for score_sde."""
    diffusers = pytest.importorskip("diffusers")
    diffusers.ScoreSdeVeScheduler(sigma_max=50.0, sigma_min=0.01, num_train_timesteps=1000).save_config(tmp_path / "theirs")
    out = json.loads(run("audit", "--config", tmp_path / "theirs", "--data", "cifar10", "--data-root", real_subset, "--json").stdout)
    f = findings(out)
    assert f["T1"]["verdict"] == "ok" and round(f["T1"]["numbers"]["diameter"], 6) == 49.896451
    assert out["config"]["num_scales"] == 2000 and any("num_train_timesteps = 1000 is not what runs" in n for n in out["config"]["notes"])
    assert f["T4"]["numbers"]["sampler"]["name"] == "diffusers"
    out = json.loads(run("audit", "--config", tmp_path / "theirs", "--sampling-steps", 1000, "--json").stdout)
    assert out["config"]["num_scales"] == 1000
    r = run("audit", "--config", tmp_path / "theirs", "--pixel-range=-1,1")
    assert r.exit_code == 2 and "[0, 1]" in r.stderr


def test_export_to_diffusers_refuses_the_other_pixel_range_unless_converted(tmp_path, fake_cifar):
    diffusers = pytest.importorskip("diffusers")
    assert run("sigmas", "--data", "cifar10", "--data-root", fake_cifar, "--pixel-range=-1,1").exit_code == 0
    r = run("export", "--format", "diffusers", "--output", tmp_path / "d")
    assert r.exit_code == 2 and "[0, 1]" in r.stderr and "--convert" in r.stderr
    assert run("export", "--format", "diffusers", "--output", tmp_path / "d", "--convert").exit_code == 0
    unit = NoiseSchedule.from_data(load_dataset("cifar10", fake_cifar, download=False))
    scheduler = diffusers.ScoreSdeVeScheduler.from_pretrained(tmp_path / "d")
    assert scheduler.config.sigma_max == pytest.approx(unit.sigma_max, rel=1e-12) and scheduler.config.sigma_min == pytest.approx(0.01)


def test_the_pipeline_visits_our_sigmas_and_ends_where_the_model_says(tmp_path, saved):
    """ScoreSdeVePipeline's real loop, with a stand-in network of the right shape that returns the exact score of
    N(0, sigma^2 I): its predictor steps through our sigmas, and the variance after the corrector at the last level is
    what the single-Gaussian model of the loop predicts (within Monte Carlo error)."""
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    assert run("export", "--format", "diffusers", "--output", tmp_path / "d", "--sampling-levels", saved.num_scales).exit_code == 0
    scheduler = diffusers.ScoreSdeVeScheduler.from_pretrained(tmp_path / "d")
    calls = []

    class ExactScore(diffusers.ModelMixin, diffusers.ConfigMixin):
        @diffusers.configuration_utils.register_to_config
        def __init__(self, sample_size: int = 32):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, sigma):
            calls.append((float(sigma[0]), float(x.double().pow(2).mean())))
            return diffusers.models.unets.unet_2d.UNet2DOutput(sample=-x / sigma[:, None, None, None] ** 2)

    pipe = diffusers.ScoreSdeVePipeline(unet=ExactScore(sample_size=32), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    visited = []
    step_pred = scheduler.step_pred

    def record(model_output, timestep, sample, generator=None, return_dict=True):
        index = int((timestep * torch.ones(1) * (len(scheduler.timesteps) - 1)).long())
        visited.append(float(scheduler.discrete_sigmas[index]))
        return step_pred(model_output, timestep, sample, generator=generator, return_dict=return_dict)

    scheduler.step_pred = record
    m, levels = scheduler.config.correct_steps, saved.num_scales
    pipe(batch_size=24, num_inference_steps=levels, generator=torch.Generator().manual_seed(0), output_type="np")
    np.testing.assert_allclose(visited, saved.sigmas, rtol=2e-6)  # every level of our schedule, once, largest first
    assert len(calls) == levels * (m + 1)
    np.testing.assert_allclose([s for s, _ in calls[:: m + 1]], saved.sigmas, rtol=2e-4)  # the network at sigma(t) ~ our sigmas
    sigma, variance = calls[-1]  # the predictor's call at the last level sees the chain after the corrector
    measured = variance / sigma**2
    predicted = chain_variance(Sampler.named("diffusers"), saved.sigma_max, saved.sigma_min, levels, m, scheduler.config.snr).final[0]
    assert measured == pytest.approx(predicted, abs=4 * predicted * np.sqrt(2 / (24 * 3072)))


# ------------------------------------------------------------------------------------------------ score_sde export


def test_the_score_sde_export_loads_over_every_real_ve_base(tmp_path, real_configs, fake_cifar):
    """Defect 2: 17 of the 22 bases declare model.sigma_max as an int; the exported get_config() set it to a float."""
    root = score_sde(real_configs)
    files, expected = [], []
    for module, size in VE_CONFIGS.items():
        out = tmp_path / (module.replace(".", "_") + ".py")
        r = run("export", "--format", "score-sde", "--output", out, "--score-sde-base", module, "--sigma-max", 49.5,
                "--num-scales", 200, "--dim", 3 * size * size, "--M", 3, "--json")
        assert r.exit_code == 0, (module, r.output)
        files.append(out)
        expected.append([49.5, 0.01, 200, "pc", DENOISE_PREDICTOR, "ald", 3, sampler_step(Sampler.named("ald"), 49.5, 0.01, 200, 3).snr,
                         False, True])
    fields = ["model.sigma_max", "model.sigma_min", "model.num_scales", "sampling.method", "sampling.predictor", "sampling.corrector",
              "sampling.n_steps_each", "sampling.snr", "data.centered", "sampling.noise_removal"]
    loaded, refused = [], []
    for module, out in zip(VE_CONFIGS, files):  # eps is derived for 200 levels: a continuous base sampling another N refuses it
        probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; s = u.spec_from_file_location('o', 'F'); "
                                "m = u.module_from_spec(s); s.loader.exec_module(m); m.get_config()".replace("F", str(out))],
                               capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
        (loaded if probe.returncode == 0 else refused).append((module, out, probe.stderr))
    reasons = {m: err.strip().splitlines()[-1] for m, _, err in refused}
    assert "sets no training.sde" in reasons.pop("configs.ve.ncsn.celeba")  # the published file sets training.loss instead
    assert all("derived for 200 levels" in err and "trains in continuous time" in err for err in reasons.values())
    bases = [root / (m.replace(".", "/") + ".py") for m in VE_CONFIGS]
    continuous = {m for m, (c, n) in zip(VE_CONFIGS, load_score_sde_configs(root, bases, ["training.continuous", "model.num_scales"]))
                  if c and n != 200}
    assert set(reasons) == continuous and len(continuous) == 9  # 8 ncsnpp_continuous bases and ncsnv2.bedroom
    got = load_score_sde_configs(root, [out for _, out, _ in loaded], fields)
    for (module, _, _), g in zip(loaded, got):
        e = expected[list(VE_CONFIGS).index(module)]
        assert g[:7] == e[:7] and g[8:] == e[8:] and g[7] == pytest.approx(e[7], rel=1e-12), module


def test_the_score_sde_export_of_a_data_schedule_checks_the_base(tmp_path, real_configs, saved):
    """Defect 3: a CelebA 64x64 base used to carry a 32x32 CIFAR-10 schedule silently; the sampler fields were left as the base's."""
    root = score_sde(real_configs)
    r = run("export", "--format", "score-sde", "--output", tmp_path / "bad.py", "--score-sde-base", "configs.ve.celeba_ncsnpp",
            "--score-sde-root", root)
    assert r.exit_code == 2 and "3x64x64 images" in r.stderr and "3x32x32 data" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad.py").exists()
    # without the checkout to read it now, the written get_config() refuses the base when it is loaded
    assert run("export", "--format", "score-sde", "--output", tmp_path / "late.py", "--score-sde-base", "configs.ve.celeba_ncsnpp").exit_code == 0
    probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; s = u.spec_from_file_location('o', 'LATE'); "
                            "m = u.module_from_spec(s); s.loader.exec_module(m); m.get_config()".replace("LATE", str(tmp_path / "late.py"))],
                           capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert probe.returncode != 0 and "derived from (3, 32, 32) images" in probe.stderr
    # a predictor-corrector base: the export writes the sampler its snr is for
    r = run("export", "--format", "score-sde", "--sampler", "pc", "--output", tmp_path / "pc.py", "--score-sde-base",
            "configs.ve.cifar10_ncsnpp_continuous", "--score-sde-root", root, "--json")
    assert r.exit_code == 0, r.output
    step = json.loads(r.stdout)["step"]
    (sigma_max, num_scales, method, predictor, corrector, snr, m), = load_score_sde_configs(
        root, [tmp_path / "pc.py"], ["model.sigma_max", "model.num_scales", "sampling.method", "sampling.predictor", "sampling.corrector",
                                     "sampling.snr", "sampling.n_steps_each"])
    # issue 28: the continuous-time base keeps its 1000 sampling levels, and the snr is score_sde's published one (measured
    # better than the single-Gaussian criterion's optimum), not Technique 2's L and the criterion's 0.07
    assert (sigma_max, num_scales, method, predictor, corrector, m) == (saved.sigma_max, 1000, "pc", "reverse_diffusion", "langevin", 1)
    assert snr == 0.16 == step["snr"]
    assert snr > sampler_step(Sampler.named("pc"), saved.sigma_max, saved.sigma_min, 1000, 1).snr
    audited = json.loads(run("audit", "--config", tmp_path / "pc.py", "--score-sde-root", root, "--json").stdout)
    assert findings(audited)["T4"]["verdict"] == "ok" and audited["config"]["num_scales"] == 1000
    assert "fewer" not in findings(audited)["T2"]["consequence"]
    flat = json.loads((tmp_path / "pc.json").read_text())
    assert flat["model.num_scales"] == 1000 and flat["_ncsn_tune"]["data"]["name"] == "cifar10"
    # --sampling-levels: the levels asked for, the step for them; a discrete base samples its training levels only
    r = run("export", "--format", "score-sde", "--output", tmp_path / "ald.py", "--score-sde-root", root, "--sampling-levels", 500)
    assert r.exit_code == 2 and "discrete-time model samples the levels it was trained on" in r.stderr
    r = run("export", "--format", "score-sde", "--output", tmp_path / "c.py", "--score-sde-base", "configs.ve.cifar10_ncsnpp_continuous",
            "--score-sde-root", root, "--sampling-levels", 500, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["step"]["num_scales"] == 500
    r = run("audit", "--config", tmp_path / "pc.py")
    assert r.exit_code == 2 and "--score-sde-root" in r.stderr


# ------------------------------------------------------------------------------------------------ NCSNv2 YAML and EDM


def test_export_to_the_ncsnv2_yaml_merges_into_the_official_one(tmp_path, saved, real_configs):
    pytest.importorskip("torch")
    assert run("export", "--format", "ncsnv2-yaml", "--output", tmp_path / "ours.yml").exit_code == 0
    from ncsn_tune.interop.ncsnv2_yaml import load_train_config

    merged = yaml.safe_load(official(real_configs, "cifar10").read_text())
    for section, values in yaml.safe_load((tmp_path / "ours.yml").read_text()).items():
        merged[section].update(values)
    (tmp_path / "merged.yml").write_text(yaml.safe_dump(merged))
    c = load_train_config(tmp_path / "merged.yml")
    assert (c.sigma_max, c.num_scales, c.steps_per_scale) == (saved.sigma_max, saved.num_scales, 3)
    assert c.step_size == pytest.approx(saved.step_size(3).step_size, rel=1e-12)
    # defect 7: the official FID sweep reads fast_fid.step_lr and n_steps_each
    assert merged["fast_fid"]["step_lr"] == c.step_size and merged["fast_fid"]["n_steps_each"] == 3
    assert not any("fast_fid" in n for n in read_tool_config(tmp_path / "merged.yml").notes)
    assert any("fast_fid.step_lr" in n for n in read_tool_config(derived_yaml(real_configs, tmp_path, "cifar10", step_lr=5e-6)).notes)


def test_export_to_edm_is_the_ve_discretisation_with_nothing_unread(tmp_path, saved):
    """Defect 6: EDM's default sampler spaces the ends with rho = 7; the geometric schedule is --disc=ve."""
    r = run("export", "--format", "edm", "--output", tmp_path / "edm.json")
    assert r.exit_code == 2 and "--convert" in r.stderr and "[-1, 1]" in r.stderr
    r = run("export", "--format", "edm", "--output", tmp_path / "edm.json", "--convert", "--json")
    assert r.exit_code == 0, r.output
    edm = json.loads((tmp_path / "edm.json").read_text())
    assert edm["pixel_range"] == "-1,1" and edm["sigmas"][-1] == 0.0 and edm["sigmas"][0] == pytest.approx(2 * saved.sigma_max)
    assert edm["sigma_min"] == pytest.approx(0.02) and "--disc=ve" in edm["edm_generate_args"]
    assert not {"step_size", "steps_per_scale", "snr"} & set(edm)
    steps = np.arange(saved.num_scales)  # EDM's generate.py, --disc=ve: sigma_i^2 = sigma_max^2 (sigma_min^2 / sigma_max^2)^(i / (N-1))
    ve = np.sqrt(edm["sigma_max"] ** 2 * (edm["sigma_min"] ** 2 / edm["sigma_max"] ** 2) ** (steps / (saved.num_scales - 1)))
    np.testing.assert_allclose(edm["sigmas"][:-1], ve, rtol=1e-12)
    r = run("export", "--format", "edm", "--output", tmp_path / "e2.json", "--convert", "--sampler", "pc")
    assert r.exit_code == 2 and "no Langevin steps" in r.stderr


def test_export_of_numbers_in_the_given_pixel_range(tmp_path):
    r = run("export", "--format", "edm", "--output", tmp_path / "edm.json", "--sigma-max", 100, "--num-scales", 232, "--pixel-range=-1,1")
    assert r.exit_code == 0, r.stderr
    edm = json.loads((tmp_path / "edm.json").read_text())
    assert edm["pixel_range"] == "-1,1" and edm["sigma_max"] == 100 and edm["sigmas"][0] == 100 and edm["sigma_min"] == 0.02
    r = run("export", "--format", "edm", "--output", tmp_path / "edm.json", "--sigma-max", 50, "--num-scales", 232)
    assert r.exit_code == 2 and "derived for [0, 1]" in r.stderr and "--convert" in r.stderr


def test_the_real_official_configs_read_as_published(real_configs):
    for path in sorted((real_configs / "ncsnv2" / "configs").glob("*.yml")):
        c = read_tool_config(path)
        assert len(audit_config(c).findings) == 4 and c.sampler.name == "ald", path


def test_the_exported_corrector_only_loop_denoises_in_score_sdes_own_sampler(tmp_path, real_configs, saved):
    """Issue 28: score_sde's NonePredictor returns (x, x), so its corrector-only ald loop ended without the final denoising
    step. The export registers a predictor that takes Tweedie's step at the last level only; run here inside score_sde's
    real get_pc_sampler (its sampling.py, sde_lib.py and models/utils.py from $NCSN_TUNE_SCORE_SDE_CODE) with the exact
    score of a single point, the denoised samples are 0 where the NonePredictor's are not."""
    code = os.environ.get("NCSN_TUNE_SCORE_SDE_CODE")
    if not code or not (Path(code) / "sampling.py").is_file():
        pytest.skip("score_sde's code (sampling.py, sde_lib.py, models/) is not here: set NCSN_TUNE_SCORE_SDE_CODE to a checkout")
    pytest.importorskip("torch")
    assert run("export", "--format", "score-sde", "--output", tmp_path / "ald.py", "--num-scales", 20).exit_code == 0
    script = """
import importlib.util, json, sys, torch
import sampling, sde_lib
spec = importlib.util.spec_from_file_location('exported', sys.argv[1]); module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = module.get_config()
sde = sde_lib.VESDE(config.model.sigma_min, config.model.sigma_max, config.model.num_scales)
sigmas = torch.flip(sde.discrete_sigmas, [0])  # label 0 is the largest (models/utils.py, get_score_fn)
class Exact(torch.nn.Module):
    def forward(self, x, labels):
        return -x / sigmas[labels][:, None, None, None] ** 2
out = {}
for name in (config.sampling.predictor, 'none'):
    fn = sampling.get_pc_sampler(sde, (64, 3, 8, 8), sampling.get_predictor(name), sampling.get_corrector(config.sampling.corrector),
                                 lambda x: x, config.sampling.snr, config.sampling.n_steps_each, False, config.training.continuous,
                                 config.sampling.noise_removal, 1e-5, 'cpu')
    torch.manual_seed(0)
    x, _ = fn(Exact())
    out[name] = float(x.abs().max())
print(json.dumps(out))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(score_sde(real_configs)), code])}
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ald.py")], capture_output=True, text=True, env=env, cwd=code)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["none"] > 1e-3  # noise of sd about sigma_min left in every sample
    assert out[DENOISE_PREDICTOR] < 1e-2 * out["none"]  # Tweedie's step: 0 up to sigma(eps) / sigma_min - 1 = 1e-4


def test_impossible_configurations_of_the_official_code_are_named(real_configs):
    """Issue 31: church.yml's sigma_max 140 at 64 px is above sqrt(D) = 110.9, the largest distance two images in [0, 1] can
    have; score_sde's FFHQ-1024 config at N = 2000 leaves adjacent levels disjoint (overlap about 1e-32 in D = 3,145,728)."""
    out = json.loads(run("audit", "--config", official(real_configs, "church"), "--json").stdout)
    t1 = findings(out)["T1"]
    assert t1["verdict"] == "problem" and round(t1["numbers"]["largest_possible_distance"], 1) == 110.9 and "impossible" in t1["consequence"]
    for name in ("cifar10", "celeba", "ffhq"):  # the others stay below it
        assert findings(json.loads(run("audit", "--config", official(real_configs, name), "--json").stdout))["T1"]["verdict"] != "problem"
    root = score_sde(real_configs)
    out = json.loads(run("audit", "--config", root / "configs/ve/ffhq_ncsnpp_continuous.py", "--score-sde-root", root, "--json").stdout)
    t2 = findings(out)["T2"]
    assert t2["verdict"] == "problem" and t2["numbers"]["overlap"] < 1e-20 and "disjoint" in t2["consequence"]
