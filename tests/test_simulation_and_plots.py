"""Issue 5: the Monte Carlo check of Proposition 3, the mixture experiment, and the figures."""

import json

import numpy as np
import pytest
from PIL import Image

from ncsn_tune.analysis import NoiseSchedule, geometric_sigmas, optimal_step_size
from ncsn_tune.analysis.simulation import Mixture, compounded_ratios, default_mixture, gmm_experiment, simulate_proposition3
from ncsn_tune.plots import plot_overlap, plot_schedule, plot_step_size
from cli_run import run


def small_schedule():
    sigmas = geometric_sigmas(2.0, 0.5, 5)
    return sigmas, sigmas[0] / sigmas[1]


@pytest.mark.parametrize("mode", ["per-scale", "annealed"])
def test_simulation_matches_the_formula_within_its_error(mode):
    sigmas, ratio = small_schedule()
    eps = optimal_step_size(ratio, 3, 0.5).step_size
    check = simulate_proposition3(sigmas, 3, eps, dim=1000, num_chains=400, mode=mode, seed=1)
    z = np.abs(np.array(check.measured) - np.array(check.predicted)) / np.array(check.standard_errors)
    assert np.all(z < 4.5), z
    assert abs(check.measured_ratio / check.predicted_ratio - 1) < 0.005  # 0.5% with 400,000 chains
    if mode == "per-scale":
        np.testing.assert_allclose(check.predicted, optimal_step_size(ratio, 3, 0.5).variance_ratio, rtol=1e-12)
    else:
        assert check.predicted[0] == pytest.approx(optimal_step_size(ratio, 3, 0.5).variance_ratio, rel=1e-12)
        assert check.predicted[-1] > check.predicted[0]  # the excess compounds


def test_compounded_ratios_fixed_point():
    sigmas = geometric_sigmas(50.0, 0.01, 232)
    ratio = sigmas[0] / sigmas[1]
    eps = optimal_step_size(ratio, 5).step_size
    a = eps / 0.01**2
    q, rstar = (1 - a) ** 10, 2 / (2 - a)
    fixed = rstar * (1 - q) / (1 - q * ratio**2)
    assert compounded_ratios(sigmas, 5, eps)[-1] == pytest.approx(fixed, rel=1e-9)


def test_measured_optimum_lands_on_the_formula():
    ratio, sigma_min = 1.2, 1.0
    best = optimal_step_size(ratio, 2, sigma_min).step_size
    two = np.array([ratio, 1.0])
    measured = [simulate_proposition3(two, 2, best * f, 500, 400, seed=2).measured_ratio for f in (0.3, 1.0, 3.0)]
    assert int(np.argmin(measured)) == 1


@pytest.mark.parametrize("dim,tau", [(2, 0.0), (2, 0.7), (5, 0.3)])
def test_mixture_score_matches_finite_differences(dim, tau):
    rng = np.random.default_rng(0)
    mixture = Mixture(np.array([0.5, 0.3, 0.2]), rng.normal(size=(3, dim)) * 3, tau)
    x = rng.normal(size=(4, dim)) * 2
    sigma, h = 0.8, 1e-5
    score = mixture.score(x, sigma)
    for k in range(dim):
        e = np.zeros(dim)
        e[k] = h
        fd = (mixture.log_density(x + e, sigma) - mixture.log_density(x - e, sigma)) / (2 * h)
        np.testing.assert_allclose(score[:, k], fd, rtol=1e-6, atol=1e-7)


def test_mixture_experiment_shows_lost_weight():
    results = gmm_experiment(default_mixture(2), num_samples=600, seed=3)
    small, technique1 = results
    assert small.sigma_max == 1.0 and technique1.sigma_max == pytest.approx(10.0)
    assert small.total_variation > 0.15 and technique1.total_variation < small.total_variation / 2
    assert sum(technique1.fractions) == pytest.approx(1.0)


def assert_image(path):
    with Image.open(path) as img:
        img.verify()
    assert path.stat().st_size > 1000


def test_step_size_plot_marks_the_optimiser_optima(tmp_path):
    ratio = NoiseSchedule.from_num_scales(50.0, 3072, 232).ratio
    fig = plot_step_size(ratio, 0.01, [1, 5], mark=6.2e-6)
    for m, o in zip([1, 5], fig.optima):
        best = optimal_step_size(ratio, m, 0.01)
        assert o.step_size == best.step_size
        marker = [ln for ln in fig.axes[0].lines if ln.get_marker() == "o"][[1, 5].index(m)]
        assert marker.get_xdata()[0] == best.step_size and marker.get_ydata()[0] == best.variance_ratio
    fig.savefig(tmp_path / "s.png")
    assert_image(tmp_path / "s.png")


def test_schedule_and_overlap_plots(tmp_path):
    a, b = NoiseSchedule.from_num_scales(50.0, 3072, 220), NoiseSchedule.from_num_scales(50.0, 3072, 232)
    plot_schedule([a, b], [6.2e-6, 6.2e-6]).savefig(tmp_path / "sched.pdf")
    assert (tmp_path / "sched.pdf").read_bytes()[:4] == b"%PDF"
    plot_overlap(3072, 1.0398, 0.5).savefig(tmp_path / "o.png")
    assert_image(tmp_path / "o.png")


def test_cli_plots(tmp_path):
    common = ["--sigma-max", 50, "--num-scales", 232, "--dim", 3072]
    for kind, extra in (("step-size", ["--mark", 6.2e-6]), ("schedule", ["--compare-num-scales", 220]), ("overlap", [])):
        r = run("plot", kind, *common, *extra, "--output", tmp_path / f"{kind}.png")
        assert r.exit_code == 0, r.output
        assert_image(tmp_path / f"{kind}.png")
    r = run("plot", "step-size", *common, "--output", tmp_path / "x.jpg")
    assert r.exit_code == 2 and ".png or .pdf" in r.stderr


def test_cli_simulate_json(tmp_path):
    r = run("simulate", "step-size", "--sigma-max", 2.0, "--sigma-min", 0.5, "--num-scales", 5, "--dim", 100, "--chains", 200, "--M", 3,
            "--json", "--output", tmp_path / "sim.png")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    for key in ("predicted_ratio", "measured_ratio", "standard_error", "num_chains", "dim", "predicted", "measured", "standard_errors"):
        assert key in out
    assert out["num_chains"] == 200 and out["dim"] == 100 and len(out["measured"]) == 5
    assert abs(out["measured_ratio"] - out["predicted_ratio"]) < 5 * out["standard_error"]
    assert_image(tmp_path / "sim.png")


def test_cli_gmm(tmp_path):
    r = run("simulate", "mixture", "--samples", 300, "--json", "--output", tmp_path / "gmm.png")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out["results"]) == 2 and out["results"][1]["total_variation"] < out["results"][0]["total_variation"]
    assert_image(tmp_path / "gmm.png")
    bad = run("simulate", "mixture", "--weights", "1")
    assert bad.exit_code == 2 and "two positive" in bad.stderr


def test_torch_path_agrees_with_the_formula():
    pytest.importorskip("torch")
    sigmas, ratio = small_schedule()
    eps = optimal_step_size(ratio, 2, 0.5).step_size
    check = simulate_proposition3(sigmas, 2, eps, dim=500, num_chains=400, seed=4, device="torch:cpu")
    z = np.abs(np.array(check.measured) - np.array(check.predicted)) / np.array(check.standard_errors)
    assert np.all(z < 4.5), z
