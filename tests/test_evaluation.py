"""Issue 7 evaluation: exact nearest neighbours, the Frechet distance, ncsn-tune evaluate."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from ncsn_tune.analysis.frechet import frechet_distance, gaussian_statistics, trace_sqrt_product
from ncsn_tune.analysis.nearest_neighbours import nearest_neighbours


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(1, 60), st.integers(1, 20), st.integers(1, 25), st.integers(0, 2**32 - 1))
def test_nearest_neighbours_match_brute_force(nq, n, dim, block, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, (n, dim)).astype(np.float64)  # small integers: many exact ties
    q = rng.integers(0, 6, (nq, dim)).astype(np.float64)
    got = nearest_neighbours(q, x, block_size=block)
    d2 = ((q[:, None, :] - x[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(got.indices, d2.argmin(axis=1))  # argmin keeps the first of ties
    np.testing.assert_allclose(got.distances, np.sqrt(d2.min(axis=1)), rtol=1e-12)


def test_frechet_distance_known_answers():
    rng = np.random.default_rng(0)
    mu, a = rng.normal(size=4), rng.normal(size=(4, 4))
    cov = a @ a.T + np.eye(4)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)
    # diagonal covariances: sum (sqrt(v1) - sqrt(v2))^2 plus the squared mean difference
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    m1, m2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    expected = 5.0 + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)
    # the trace term against a general matrix square root, for non-commuting full-rank covariances
    from scipy import linalg

    b = rng.normal(size=(6, 6))
    s1, s2 = b @ b.T + 0.1 * np.eye(6), (lambda c: c @ c.T + 0.1 * np.eye(6))(rng.normal(size=(6, 6)))
    assert trace_sqrt_product(s1, s2) == pytest.approx(np.trace(linalg.sqrtm(s1 @ s2)).real, rel=1e-9)
    # singular covariances (fewer points than dimensions, as FID on few images): still exact
    few = rng.normal(size=(5, 50))
    m, c = gaussian_statistics(few)
    assert abs(frechet_distance(m, c, m, c)) < 1e-9 * np.trace(c)
    # statistics of samples converge to those of their Gaussian
    f = rng.multivariate_normal(mu, cov, size=200000)
    m, c = gaussian_statistics(f)
    assert frechet_distance(m, c, mu, cov) < 0.01


def test_evaluate_cli(tmp_path):
    pytest.importorskip("torch")
    from test_train import make_trainer, tiny_images

    make_trainer(tmp_path, "run", steps=3, checkpoint_every=3).run()
    images = tiny_images()
    np.save(tmp_path / "train.npy", images)
    # make the run's data set the .npy, and give two "samples" that are exact training images
    samples = (images[[7, 2]].astype(np.float32) / 255.0)
    np.savez(tmp_path / "s.npz", float=samples, uint8=images[[7, 2]].transpose(0, 2, 3, 1))
    from ncsn_tune.model import checkpoint as ckpt
    import torch

    path = ckpt.list_checkpoints(tmp_path / "run")[-1]
    state = torch.load(path, weights_only=True)
    state["config"]["data"] = str(tmp_path / "train.npy")
    state["checksum"] = ckpt.state_digest(state)  # edited on purpose: signed again
    torch.save(state, path)
    r = CliRunner().invoke(main_cli(), ["evaluate", "--checkpoint", str(tmp_path / "run"), "--split", "train", "--images", "6",
                                        "--samples", str(tmp_path / "s.npz"), "--output-dir", str(tmp_path / "ev"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out["eval_loss_by_scale"]) == 10 and out["images"] == 6
    assert out["nearest"]["indices"] == [7, 2] and max(out["nearest"]["distances"]) < 1e-6
    for name in ("evaluation.json", "evaluation.png", "nearest_neighbours.png"):
        assert (tmp_path / "ev" / name).exists()


def main_cli():
    from ncsn_tune.cli import main

    return main
