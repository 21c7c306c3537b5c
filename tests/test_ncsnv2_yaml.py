"""Our YAML and the official NCSNv2 YAML as the trainer reads them."""


import pytest

torch = pytest.importorskip("torch")

from ncsn_tune.config import save_config  # noqa: E402
from ncsn_tune.interop.ncsnv2_yaml import load_train_config  # noqa: E402
from test_train import tiny_config  # noqa: E402
from ncsn_tune.errors import NcsnTuneError  # noqa: E402


def test_official_yaml_reads_into_its_values(tmp_path, real_configs):
    official = (real_configs / "ncsnv2" / "configs" / "cifar10.yml").read_text()  # as published
    c = load_train_config(real_configs / "ncsnv2" / "configs" / "cifar10.yml")
    assert (c.data, c.batch_size, c.steps, c.sigma_max, c.sigma_min, c.num_scales) == ("cifar10", 128, 300001, 50.0, 0.01, 232)
    assert (c.step_size, c.steps_per_scale, c.ngf, c.lr, c.beta1, c.adam_eps, c.ema_rate) == (6.2e-6, 5, 128, 1e-4, 0.9, 1e-8, 0.999)
    assert (c.weight_decay, c.random_flip, c.checkpoint_every, c.architecture) == (0.0, True, 5000, "ncsnv2")
    path = tmp_path / "cifar10.yml"
    path.write_text(official.replace("InstanceNorm++", "BatchNorm"))
    with pytest.raises(NcsnTuneError, match="BatchNorm"):
        load_train_config(path)


def test_our_yaml_roundtrip_and_errors(tmp_path):
    c = tiny_config(lr=3e-4)
    save_config(c, tmp_path / "c.yaml")
    assert load_train_config(tmp_path / "c.yaml") == c
    (tmp_path / "bad.yaml").write_text("lr: fast\n")
    with pytest.raises(NcsnTuneError, match="lr must be float"):
        load_train_config(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text("learning_rate: 1\n")
    with pytest.raises(NcsnTuneError, match="unknown setting"):
        load_train_config(tmp_path / "bad2.yaml")
