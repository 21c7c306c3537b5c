"""The NCSNv2 network, the DSM loss and EMA (CPU)."""


import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ncsn_tune.model.ema import EMA  # noqa: E402
from ncsn_tune.model.loss import dsm_loss_by_scale, dsm_loss_per_sample  # noqa: E402
from ncsn_tune.model.network import InstanceNormPlus, NCSNv2, count_parameters, max_pool_5x5  # noqa: E402


def test_cifar10_parameter_count_and_official_names():
    model = NCSNv2(3, 32, 128)
    assert count_parameters(model) == 29_694_083
    keys = set(model.state_dict())
    for key in ("sigmas", "begin_conv.weight", "normalizer.alpha", "res2.0.shortcut.conv.weight", "res3.0.shortcut.weight",
                "refine1.adapt_convs.0.1_1_conv.weight", "refine2.msf.convs.1.bias", "refine4.output_convs.3_2_conv.weight",
                "refine1.crp.convs.1.weight", "end_conv.bias"):
        assert key in keys, key


def test_deeper_variants_build_and_keep_shape():
    for arch, size in (("ncsnv2_deeper", 64), ("ncsnv2_deepest", 128)):
        model = NCSNv2(1, size, 8, arch)
        x = torch.rand(2, 1, size, size)
        assert model(x, torch.tensor([1.0, 2.0])).shape == x.shape


def test_instance_norm_plus_matches_its_formula():
    torch.manual_seed(0)
    norm = InstanceNormPlus(5)
    with torch.no_grad():
        norm.beta.normal_()
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64) * 3 + 1
    mu = x.mean(dim=(2, 3))
    var = x.var(dim=(2, 3), unbiased=False)
    m, s2 = mu.mean(dim=1, keepdim=True), mu.var(dim=1, keepdim=True, unbiased=True)
    h = (x - mu[..., None, None]) / torch.sqrt(var[..., None, None] + 1e-5)
    h = h + (((mu - m) / torch.sqrt(s2 + 1e-5)) * norm.alpha.double())[..., None, None]
    expected = norm.gamma.double()[None, :, None, None] * h + norm.beta.double()[None, :, None, None]
    got = norm.double()(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_separable_max_pool_equals_the_5x5_pool():
    g = torch.Generator().manual_seed(0)
    for shape in ((2, 3, 9, 7), (1, 4, 2, 2), (3, 2, 16, 16)):
        x = torch.randn(shape, generator=g)
        x[..., ::3, :] = -1.0  # ties, as ELU's floor gives them
        torch.testing.assert_close(max_pool_5x5(x), torch.nn.functional.max_pool2d(x, 5, stride=1, padding=2), rtol=0, atol=0)
    x = torch.full((1, 1, 4, 4), -3.0)  # borders never see the padding as a value
    assert (max_pool_5x5(x) == -3.0).all()


def test_output_is_divided_by_sigma():
    torch.manual_seed(0)
    model = NCSNv2(3, 32, 8).eval()
    x = torch.rand(2, 3, 32, 32)
    base = model.unconditional(x)
    torch.testing.assert_close(model(x, torch.tensor([2.0, 0.5])), base / torch.tensor([2.0, 0.5]).view(2, 1, 1, 1))


class Linear(torch.nn.Module):
    """s(x, sigma) = (W x) / sigma, W a fixed matrix: small enough to compute the loss by hand."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x, sigma):
        return (x.flatten(1) @ self.w.T).view_as(x) / sigma.view(-1, 1, 1, 1)


def test_dsm_loss_against_hand_computation():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 4))
    x = rng.random((3, 1, 2, 2))
    z = rng.normal(size=(3, 1, 2, 2))
    sigmas = np.array([5.0, 1.0, 0.2])
    idx = np.array([2, 0, 1])
    got = dsm_loss_per_sample(Linear(torch.tensor(w)), torch.tensor(x), torch.tensor(sigmas), torch.tensor(idx), torch.tensor(z)).numpy()
    for k in range(3):
        s = sigmas[idx[k]]
        xt = (x[k] + s * z[k]).reshape(-1)
        target = -(xt - x[k].reshape(-1)) / s**2
        score = w @ xt / s
        assert got[k] == pytest.approx(0.5 * ((score - target) ** 2).sum() * s**2, rel=1e-12)


def test_loss_by_scale_shape_and_ideal_denoiser():
    # For a single data point at 0, the exact score of the noised data is -x/sigma^2: loss 0 at every scale.
    class Exact(torch.nn.Module):
        def forward(self, x, sigma):
            return -x / sigma.view(-1, 1, 1, 1) ** 2

    sigmas = torch.tensor([3.0, 1.0, 0.1], dtype=torch.float64)
    out = dsm_loss_by_scale(Exact(), torch.zeros(4, 1, 2, 2, dtype=torch.float64), sigmas)
    assert out.shape == (3,) and torch.all(out.abs() < 1e-20)


def test_ema_update_rule():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, 0.9)
    before = [s.clone() for s in ema.shadow]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for b, s, p in zip(before, ema.shadow, model.parameters()):
        torch.testing.assert_close(s, 0.9 * b + 0.1 * p.detach())
    copy = ema.averaged_model(model)
    torch.testing.assert_close(copy.weight, ema.shadow[0])
