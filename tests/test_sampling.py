"""Annealed Langevin sampling: the update, the denoising step, overrides, seeds, errors (CPU)."""

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from ncsn_tune.analysis import NoiseSchedule, geometric_sigmas, optimal_step_size, variance_ratio  # noqa: E402
from ncsn_tune.cli import main  # noqa: E402
from ncsn_tune.errors import NcsnTuneError  # noqa: E402
from ncsn_tune.model.checkpoint import load_checkpoint, load_model  # noqa: E402
from ncsn_tune.model.generate import generate  # noqa: E402
from ncsn_tune.tuning import Given, resolve  # noqa: E402
from ncsn_tune.model.sampling import langevin_step_sizes, sample_annealed_langevin  # noqa: E402


def gaussian_score(x, sigma):
    """The exact score of N(0, sigma^2 I): data a single point at 0, noised at scale sigma."""
    return -x / sigma.view(-1, *([1] * (x.ndim - 1))) ** 2


def test_one_step_against_hand_computation():
    sigmas = torch.tensor([2.0, 0.5], dtype=torch.float64)
    x0 = torch.tensor([[[[1.0, -2.0]]]], dtype=torch.float64)
    eps = 1e-3
    gen = torch.Generator().manual_seed(7)
    out = sample_annealed_langevin(gaussian_score, x0.clone(), sigmas, steps_per_scale=1, step_size=eps, denoise=False, generator=gen)
    gen = torch.Generator().manual_seed(7)
    x = x0.clone()
    for sigma in (2.0, 0.5):
        alpha = eps * sigma**2 / 0.5**2
        z = torch.randn(x.shape, dtype=torch.float64, generator=gen)
        x = x + alpha * (-x / sigma**2) + math.sqrt(2 * alpha) * z
    torch.testing.assert_close(out, x, rtol=1e-12, atol=1e-12)


def test_step_sizes_use_the_smallest_scale():
    sigmas = torch.tensor([50.0, 1.0, 0.01])
    torch.testing.assert_close(langevin_step_sizes(sigmas, 6.2e-6), 6.2e-6 * (sigmas / 0.01) ** 2)


def test_variance_follows_proposition_3():
    # Chains started at N(0, (ratio sigma_1)^2): after every scale the variance ratio is Proposition 3's.
    sigmas_np = geometric_sigmas(10.0, 1.0, 6)
    ratio = sigmas_np[0] / sigmas_np[1]
    m = 3
    eps = optimal_step_size(ratio, m, 1.0).step_size
    sigmas = torch.tensor(sigmas_np, dtype=torch.float64)
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn((n, 1, 1, 1), dtype=torch.float64, generator=gen) * ratio * sigmas_np[0]
    seen = []
    sample_annealed_langevin(gaussian_score, x0, sigmas, steps_per_scale=m, step_size=eps, denoise=False, generator=gen,
                             callback=lambda info: seen.append(float(info["x"].var()) / info["sigma"] ** 2))
    r = variance_ratio(eps, ratio, m, 1.0)
    # the first scale starts exactly at ratio^2 sigma^2; later ones start from r ratio^2 sigma^2 (recursion below)
    expected, v = [], ratio**2
    a = eps / 1.0**2
    for _ in range(6):
        for _ in range(m):
            v = (1 - a) ** 2 * v + 2 * a
        expected.append(v)
        v = v * ratio**2
    assert seen[0] == pytest.approx(r, rel=0.01)
    np.testing.assert_allclose(seen, expected, rtol=0.01)


def test_denoising_step():
    sigmas = torch.tensor([1.0, 0.1], dtype=torch.float64)
    x0 = torch.rand((4, 1, 2, 2), dtype=torch.float64)
    # Tweedie for a point mass at 0: x + sigma^2 * (-x / sigma^2) = 0 (up to rounding)
    out = sample_annealed_langevin(gaussian_score, x0, sigmas, steps_per_scale=2, step_size=1e-4, denoise=True,
                                   generator=torch.Generator().manual_seed(0))
    assert torch.all(out.abs() < 1e-15)
    raw = sample_annealed_langevin(gaussian_score, x0, sigmas, steps_per_scale=2, step_size=1e-4, denoise=False,
                                   generator=torch.Generator().manual_seed(0))
    assert torch.all(raw != 0)


@pytest.fixture
def trained_run(tmp_path_factory):
    from test_train import make_trainer

    tmp = tmp_path_factory.mktemp("run")
    make_trainer(tmp, "run", steps=5, checkpoint_every=5).run()
    return tmp / "run"


def test_run_tuning_and_overrides(trained_run, tmp_path):
    run = load_checkpoint(trained_run)
    plan = resolve(Given(run=run))
    assert plan.schedule.num_scales == 10 and plan.steps_per_scale == 5 and plan.step_size == 1e-5
    assert any("the run's M = 5" in n for n in plan.notes)
    plan = resolve(Given(run=run, num_scales=20, steps_per_scale=2))
    assert plan.schedule.num_scales == 20 and plan.schedule.sigmas[0] == 20.0
    assert plan.step_size == pytest.approx(optimal_step_size(plan.schedule.ratio, 2, 0.01).step_size)
    assert any("Technique 4" in n for n in plan.notes)
    other = NoiseSchedule.from_num_scales(20.0, 12, 10)
    other.save(tmp_path / "other.json")
    with pytest.raises(NcsnTuneError, match="D = 12"):
        resolve(Given(run=run, schedule_file=tmp_path / "other.json", dim=768))


def test_sampling_refuses_a_schedule_for_the_other_pixel_range(trained_run, tmp_path):
    """The run trained on pixels in [0, 1]: a [-1, 1] schedule has every sigma twice too large for its network."""
    run = load_checkpoint(trained_run)
    run.schedule.in_pixel_range("-1,1").save(tmp_path / "symmetric.json")
    with pytest.raises(NcsnTuneError, match=r"pixels in \[-1, 1\].*factor 0.5"):
        resolve(Given(run=run, schedule_file=tmp_path / "symmetric.json"))
    r = CliRunner().invoke(main, ["sample", "--checkpoint", str(trained_run), "--schedule", str(tmp_path / "symmetric.json"), "--num", "1"])
    assert r.exit_code == 2 and "pixels in [-1, 1]" in r.stderr


def test_seed_reproducible(trained_run):
    model = load_model(trained_run)
    schedule = load_checkpoint(trained_run).schedule.with_num_scales(4)
    kwargs = dict(steps_per_scale=1, step_size=1e-5, num=3, batch_size=2, score=model)  # the network called as it is
    a = generate(model, schedule, seed=1, **kwargs)
    b = generate(model, schedule, seed=1, **kwargs)
    c = generate(model, schedule, seed=2, **kwargs)
    assert a.shape == (3, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)


def test_sample_cli(trained_run, tmp_path):
    r = CliRunner().invoke(main, ["sample", "--checkpoint", str(trained_run), "--num", 3, "--batch-size", 2, "--num-scales", 4,
                                  "--output", str(tmp_path / "g.png"), "--npz", str(tmp_path / "s.npz"),
                                  "--diagnostics", str(tmp_path / "d.json"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["num_scales"] == 4 and len(out["diagnostics"]["image_norm"]) == 4
    data = np.load(tmp_path / "s.npz")
    assert data["uint8"].shape == (3, 16, 16, 3) and data["float"].shape == (3, 3, 16, 16)
    assert (tmp_path / "g.png").exists() and json.loads((tmp_path / "d.json").read_text())["sigmas"][0] == 20.0


def test_sample_chain_strip_and_gif(trained_run, tmp_path):
    from PIL import Image

    args = ["sample", "--checkpoint", str(trained_run), "--num", 2, "--num-scales", 4, "--output", str(tmp_path / "g.png"),
            "--npz", str(tmp_path / "s.npz"), "--json"]
    for name in ("chain.png", "chain.gif"):
        r = CliRunner().invoke(main, args + ["--chain", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
    frames = 4 + 1  # every scale (4 scales: fewer than 16) and the denoised image
    strip = np.asarray(Image.open(tmp_path / "chain.png"))
    assert strip.shape == (16 + 4, frames * (16 + 2) + 2, 3)
    gif = Image.open(tmp_path / "chain.gif")
    assert gif.n_frames == frames and gif.size == (16 * 4, 16 * 4)
    gif.seek(frames - 1)
    last = np.asarray(gif.convert("RGB"))[::4, ::4]
    final = np.load(tmp_path / "s.npz")["uint8"][0]  # the chain is the first sample's; GIF palettes may round slightly
    assert np.abs(last.astype(int) - final.astype(int)).mean() < 8


@pytest.mark.parametrize("kind", ["missing", "corrupt", "empty"])
def test_sample_cli_bad_checkpoint(tmp_path, kind):
    path = tmp_path / "checkpoint_00000001.pt"
    if kind == "corrupt":
        path.write_bytes(b"garbage")
    if kind == "empty":
        path = tmp_path
    r = CliRunner().invoke(main, ["sample", "--checkpoint", str(path)])
    assert r.exit_code == 2 and r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------ score_sde's PC loop


def test_pc_loop_against_hand_computation():
    """Two levels of the reverse-diffusion predictor and the Langevin corrector (M = 1), as score_sde's sampling.py writes
    them: the corrector's step 2 (snr mean||z|| / mean||s||)^2, then x_mean = x + (sigma_i^2 - sigma_{i+1}^2) s."""
    from ncsn_tune.model.sampling import sample_predictor_corrector

    sigmas = torch.tensor([2.0, 0.5], dtype=torch.float64)
    x0 = torch.randn((3, 1, 2, 2), dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2.0
    snr = 0.16
    out = sample_predictor_corrector(gaussian_score, x0.clone(), sigmas, snr=snr, generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    x = x0.clone()
    levels = [2.0, 0.5, 0.0]
    for i in range(2):
        s = -x / levels[i] ** 2
        z = torch.randn(x.shape, dtype=torch.float64, generator=gen)
        h = 2 * (snr * z.flatten(1).norm(dim=1).mean() / s.flatten(1).norm(dim=1).mean()) ** 2
        x = x + h * s + torch.sqrt(2 * h) * z
        s = -x / levels[i] ** 2
        g2 = levels[i] ** 2 - levels[i + 1] ** 2
        z = torch.randn(x.shape, dtype=torch.float64, generator=gen)
        mean = x + g2 * s
        x = mean + math.sqrt(g2) * z
    torch.testing.assert_close(out, mean, rtol=1e-12, atol=1e-12)  # the last x_mean: score_sde's noise_removal
    # for a point mass at 0 the last predictor's mean is Tweedie's denoiser: exactly 0
    assert out.abs().max() < 1e-12
    raw = sample_predictor_corrector(gaussian_score, x0.clone(), sigmas, snr=snr, denoise=False, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(raw, x, rtol=1e-12, atol=1e-12)


def test_pc_chain_follows_the_single_gaussian_model():
    """Many chains with the exact score reach the noise level ncsn_tune.analysis.samplers predicts for the loop."""
    from ncsn_tune.analysis.samplers import Sampler, chain_variance
    from ncsn_tune.model.sampling import sample_predictor_corrector

    sigma_max, sigma_min, n = 20.0, 0.05, 30
    sigmas = torch.tensor(geometric_sigmas(sigma_max, sigma_min, n), dtype=torch.float64)
    x0 = torch.randn((400, 1, 16, 16), dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * sigma_max
    for snr in (0.08, 0.3):
        seen = []
        sample_predictor_corrector(gaussian_score, x0.clone(), sigmas, snr=snr, generator=torch.Generator().manual_seed(1),
                                   callback=lambda info: seen.append(float(info["x"].pow(2).mean()) / info["sigma"] ** 2))
        predicted = chain_variance(Sampler.named("pc"), sigma_max, sigma_min, n, 1, snr).ratios[:, 0]
        # the model uses score_sde's t grid (within 1e-4 of these sigmas) and the many-dimensions limit of the norm ratio
        np.testing.assert_allclose(seen[:n], predicted, rtol=0.03)


def test_pc_corrector_only_returns_the_last_x_as_score_sde_does():
    from ncsn_tune.model.sampling import sample_predictor_corrector

    sigmas = torch.tensor([1.0, 0.1], dtype=torch.float64)
    x0 = torch.rand((2, 1, 2, 2), dtype=torch.float64)
    kwargs = dict(snr=0.2, predictor="none", corrector="ald", corrector_steps=2)
    a = sample_predictor_corrector(gaussian_score, x0, sigmas, denoise=True, generator=torch.Generator().manual_seed(3), **kwargs)
    b = sample_predictor_corrector(gaussian_score, x0, sigmas, denoise=False, generator=torch.Generator().manual_seed(3), **kwargs)
    assert torch.equal(a, b) and a.abs().min() > 0  # NonePredictor returns (x, x): nothing denoises
    # the ald corrector at snr is NCSNv2's loop at eps = 2 (snr sigma_min)^2
    c = sample_annealed_langevin(gaussian_score, x0, sigmas, steps_per_scale=2, step_size=2 * (0.2 * 0.1) ** 2, denoise=False,
                                 generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="neither a predictor nor a corrector"):
        sample_predictor_corrector(gaussian_score, x0, sigmas, snr=0.1, predictor="none", corrector="none")


def test_sample_cli_pc(trained_run, tmp_path):
    r = CliRunner().invoke(main, ["sample", "--checkpoint", str(trained_run), "--num", 3, "--batch-size", 2, "--sampler", "pc",
                                  "--num-scales", 6, "--snr", 0.16, "--output", str(tmp_path / "g.png"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["sampler"]["name"] == "pc" and out["sampler"]["predictor"] == "reverse_diffusion" and out["snr"] == 0.16
    assert out["steps_per_scale"] == 1 and out["network_calls_per_image"] == 6 * 2 and out["step_size"] is None
    assert len(out["diagnostics"]["image_norm"]) == 6
    r = CliRunner().invoke(main, ["sample", "--checkpoint", str(trained_run), "--num", 2, "--sampler", "pc", "--num-scales", 4,
                                  "--predictor", "none", "--corrector", "ald", "--M", 2, "--output", str(tmp_path / "h.png"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["network_calls_per_image"] == 8


@pytest.mark.parametrize("args, phrase", [
    (["--sampler", "pc", "--step-size", "1e-5"], "takes its step as snr"),
    (["--predictor", "none"], "--sampler pc"),
    (["--step-size", "1e-5", "--snr", "0.1"], "eps or as snr, not both"),
])
def test_sample_cli_step_refusals(trained_run, tmp_path, args, phrase):
    r = CliRunner().invoke(main, ["sample", "--checkpoint", str(trained_run), "--num", 1, "--output", str(tmp_path / "g.png"), *args])
    assert r.exit_code == 2 and phrase in r.stderr and "Traceback" not in r.output, r.output
