"""The NCSNv2 score networks (Song & Ermon 2020): RefineNet-style, InstanceNorm++ and ELU.

Technique 3 (noise conditioning): the network is unconditional and its output
is divided by the noise scale of each sample,

    s_theta(x, sigma) = s_theta(x) / sigma.

Module and parameter names follow the official implementation
(ermongroup/ncsnv2, ``models/ncsnv2.py``), so its checkpoints load into these
modules; the CIFAR-10 configuration (ngf 128, 32x32x3) has 29,694,083
parameters, as the official one does. Three depths:

- ``ncsnv2``: 4 stages (32 px; the official CIFAR-10 and CelebA model),
- ``ncsnv2_deeper``: 5 stages (64-128 px; the official LSUN model),
- ``ncsnv2_deepest``: 6 stages (256 px; the official FFHQ model).

The arithmetic is the official one, arranged to run faster: InstanceNorm++
folds into one per-channel scale and shift, mean pooling over 2x2 is
``avg_pool2d``, the 5x5 max pool of the chained residual pooling is a 5x1 then
a 1x5 max pool (the same maxima; on an H100 with torch.compile the network runs
1.8x faster for it, see ``benchmarks/profile_forward.py``), and the bilinear
resize of equal-sized maps (an identity) is skipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ARCHITECTURES  # noqa: F401  (re-exported)


def architecture_for(image_size: int) -> str:
    """The depth for an image size: 4 stages below 64 px, 5 up to 96 px, 6 from 128 px."""
    if image_size < 64:
        return "ncsnv2"
    if image_size < 128:
        return "ncsnv2_deeper"
    return "ncsnv2_deepest"


class InstanceNormPlus(nn.Module):
    """InstanceNorm++: instance norm that keeps the channel means' relative sizes.

    With mu_c, v_c the spatial mean and (biased) variance of channel c, and m,
    s**2 the mean and (unbiased) variance of mu over channels,

        out_c = gamma_c * ((x_c - mu_c) / sqrt(v_c + 1e-5) + alpha_c * (mu_c - m) / sqrt(s**2 + 1e-5)) + beta_c,

    computed as one per-channel scale and shift.
    """

    def __init__(self, num_features: int, bias: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.alpha = nn.Parameter(torch.empty(num_features).normal_(1.0, 0.02))
        self.gamma = nn.Parameter(torch.empty(num_features).normal_(1.0, 0.02))
        self.beta = nn.Parameter(torch.zeros(num_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics never in half precision
        var, mean = torch.var_mean(stats, dim=(2, 3), unbiased=False)
        ch_var, ch_mean = torch.var_mean(mean, dim=1, keepdim=True)  # unbiased over channels
        mean_term = (mean - ch_mean) * torch.rsqrt(ch_var + 1e-5)
        scale = self.gamma * torch.rsqrt(var + 1e-5)
        shift = self.gamma * self.alpha * mean_term - mean * scale
        if self.beta is not None:
            shift = shift + self.beta
        return torch.addcmul(shift[..., None, None].to(x.dtype), x, scale[..., None, None].to(x.dtype))


def conv3x3(cin: int, cout: int, bias: bool = True, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=bias)


class ConvMeanPool(nn.Module):
    """Convolution, then the mean over each 2x2 patch (halves the resolution)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, adjust_padding: bool = False) -> None:
        super().__init__()
        conv = nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2)
        self.conv = nn.Sequential(nn.ZeroPad2d((1, 0, 1, 0)), conv) if adjust_padding else conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(x), 2)


class ResidualBlock(nn.Module):
    """norm -> ELU -> conv -> norm -> ELU -> conv, plus a shortcut (a convolution where shapes change).

    ``resample="down"`` halves the resolution with a mean pool, or, with a
    dilation, keeps it and dilates the convolutions instead (as the official model does).
    """

    def __init__(self, cin: int, cout: int, resample: str | None = None, dilation: int | None = None, adjust_padding: bool = False) -> None:
        super().__init__()
        self.act = nn.ELU()
        self.normalize1 = InstanceNormPlus(cin)
        d = dilation or 1
        if resample == "down":
            self.conv1 = conv3x3(cin, cin, dilation=d)
            self.normalize2 = InstanceNormPlus(cin)
            if dilation is not None:
                self.conv2 = conv3x3(cin, cout, dilation=d)
                self.shortcut = conv3x3(cin, cout, dilation=d)
            else:
                self.conv2 = ConvMeanPool(cin, cout, 3, adjust_padding)
                self.shortcut = ConvMeanPool(cin, cout, 1, adjust_padding)
        elif resample is None:
            self.conv1 = conv3x3(cin, cout, dilation=d)
            self.normalize2 = InstanceNormPlus(cout)
            self.conv2 = conv3x3(cout, cout, dilation=d)
            if cout != cin:
                self.shortcut = conv3x3(cin, cout, dilation=d) if dilation is not None else nn.Conv2d(cin, cout, 1)
        else:
            raise ValueError(f"unknown resample {resample!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.normalize1(x)))
        h = self.conv2(self.act(self.normalize2(h)))
        return (self.shortcut(x) if hasattr(self, "shortcut") else x) + h


class RCUBlock(nn.Module):
    """Residual conv units: ``n_blocks`` times (ELU -> conv) x ``n_stages`` plus the input."""

    def __init__(self, features: int, n_blocks: int, n_stages: int) -> None:
        super().__init__()
        self.n_blocks, self.n_stages = n_blocks, n_stages
        for i in range(n_blocks):
            for j in range(n_stages):
                setattr(self, f"{i + 1}_{j + 1}_conv", conv3x3(features, features, bias=False))
        self.act = nn.ELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n_blocks):
            residual = x
            for j in range(self.n_stages):
                x = getattr(self, f"{i + 1}_{j + 1}_conv")(self.act(x))
            x = x + residual
        return x


class MSFBlock(nn.Module):
    """Multi-resolution fusion: a conv per input, resized (bilinear) to the output size, summed."""

    def __init__(self, in_planes: list[int], features: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(conv3x3(c, features) for c in in_planes)

    def forward(self, xs: list[torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
        total = None
        for conv, x in zip(self.convs, xs):
            h = conv(x)
            if tuple(h.shape[2:]) != tuple(shape):
                h = F.interpolate(h, size=shape, mode="bilinear", align_corners=True)
            total = h if total is None else total + h
        return total


def max_pool_5x5(x: torch.Tensor) -> torch.Tensor:
    """5x5 max pool, stride 1, padding 2, as a 5x1 then a 1x5 pool.

    max over a 5x5 window = max over its rows of the max over each row, so the
    values are exactly those of ``F.max_pool2d(x, 5, 1, 2)``; where several
    elements tie for the maximum the gradient may go to a different one of them.
    """
    return F.max_pool2d(F.max_pool2d(x, (5, 1), stride=1, padding=(2, 0)), (1, 5), stride=1, padding=(0, 2))


class CRPBlock(nn.Module):
    """Chained residual pooling: ELU, then ``n_stages`` times (5x5 max pool -> conv), each added."""

    def __init__(self, features: int, n_stages: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(conv3x3(features, features, bias=False) for _ in range(n_stages))
        self.act = nn.ELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        path = x
        for conv in self.convs:
            path = conv(max_pool_5x5(path))
            x = path + x
        return x


class RefineBlock(nn.Module):
    """RefineNet block: adapt each input (2 RCUs), fuse (MSF), pool (CRP), output RCUs (3 at the end)."""

    def __init__(self, in_planes: list[int], features: int, start: bool = False, end: bool = False) -> None:
        super().__init__()
        self.adapt_convs = nn.ModuleList(RCUBlock(c, 2, 2) for c in in_planes)
        self.output_convs = RCUBlock(features, 3 if end else 1, 2)
        if not start:
            self.msf = MSFBlock(in_planes, features)
        self.crp = CRPBlock(features, 2)

    def forward(self, xs: list[torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
        hs = [adapt(x) for adapt, x in zip(self.adapt_convs, xs)]
        h = self.msf(hs, shape) if len(hs) > 1 else hs[0]
        return self.output_convs(self.crp(h))


def _stages(architecture: str, ngf: int, image_size: int):
    """(name, [ResidualBlock args]) for each encoder stage, and (name, in_planes, features, start, end) for each refine block."""
    n = ngf
    if architecture == "ncsnv2":
        res = [
            ("res1", [(n, n, None, None), (n, n, None, None)]),
            ("res2", [(n, 2 * n, "down", None), (2 * n, 2 * n, None, None)]),
            ("res3", [(2 * n, 2 * n, "down", 2), (2 * n, 2 * n, None, 2)]),
            ("res4", [(2 * n, 2 * n, "down", 4, image_size == 28), (2 * n, 2 * n, None, 4)]),
        ]
        refine = [
            ("refine1", [2 * n], 2 * n, True, False),
            ("refine2", [2 * n, 2 * n], 2 * n, False, False),
            ("refine3", [2 * n, 2 * n], n, False, False),
            ("refine4", [n, n], n, False, True),
        ]
        return res, refine
    res = [
        ("res1", [(n, n, None, None), (n, n, None, None)]),
        ("res2", [(n, 2 * n, "down", None), (2 * n, 2 * n, None, None)]),
        ("res3", [(2 * n, 2 * n, "down", None), (2 * n, 2 * n, None, None)]),
    ]
    if architecture == "ncsnv2_deepest":
        res.append(("res31", [(2 * n, 2 * n, "down", None), (2 * n, 2 * n, None, None)]))
    res += [
        ("res4", [(2 * n, 4 * n, "down", 2), (4 * n, 4 * n, None, 2)]),
        ("res5", [(4 * n, 4 * n, "down", 4), (4 * n, 4 * n, None, 4)]),
    ]
    refine = [
        ("refine1", [4 * n], 4 * n, True, False),
        ("refine2", [4 * n, 4 * n], 2 * n, False, False),
        ("refine3", [2 * n, 2 * n], 2 * n, False, False),
    ]
    if architecture == "ncsnv2_deepest":
        refine.append(("refine31", [2 * n, 2 * n], 2 * n, False, False))
    refine += [("refine4", [2 * n, 2 * n], n, False, False), ("refine5", [n, n], n, False, True)]
    if architecture == "ncsnv2_deepest":  # refine3 follows refine31 in the forward pass
        order = ["refine1", "refine2", "refine31", "refine3", "refine4", "refine5"]
        refine = sorted(refine, key=lambda r: order.index(r[0]))
    return res, refine


class NCSNv2(nn.Module):
    """The NCSNv2 score network s_theta(x, sigma) = s_theta(x) / sigma (Technique 3).

    ``x`` is in [0, 1] (mapped to [-1, 1] inside, as the official model does);
    ``sigma`` is the noise scale of each sample, shape (B,). The ``sigmas``
    buffer records the training schedule (the official checkpoints carry it).
    """

    #: The blocks repeated through the network, compiled one by one under regional compilation (blocks of one shape share
    #: a compiled graph), as diffusers' models name theirs.
    _repeated_blocks = ("ResidualBlock", "RefineBlock")

    def __init__(self, channels: int = 3, image_size: int = 32, ngf: int = 128, architecture: str = "auto", sigmas=None) -> None:
        super().__init__()
        if architecture == "auto":
            architecture = architecture_for(image_size)
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; use one of {', '.join(ARCHITECTURES)}")
        self.architecture, self.channels, self.image_size, self.ngf = architecture, channels, image_size, ngf
        self.register_buffer("sigmas", torch.as_tensor(sigmas if sigmas is not None else [1.0], dtype=torch.float32))
        self.begin_conv = nn.Conv2d(channels, ngf, 3, padding=1)
        self.normalizer = InstanceNormPlus(ngf)
        self.end_conv = nn.Conv2d(ngf, channels, 3, padding=1)
        self.act = nn.ELU()
        res, refine = _stages(architecture, ngf, image_size)
        self.stage_names = [name for name, _ in res]
        self.refine_names = [r[0] for r in refine]
        for name, blocks in res:
            setattr(self, name, nn.ModuleList(ResidualBlock(*args) for args in blocks))
        for name, in_planes, features, start, end in refine:
            setattr(self, name, RefineBlock(in_planes, features, start, end))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The schedule buffer takes the length of the checkpoint's schedule.
        saved = state_dict.get(prefix + "sigmas")
        if saved is not None and saved.shape != self.sigmas.shape:
            self.sigmas = torch.empty_like(saved, device=self.sigmas.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def unconditional(self, x: torch.Tensor) -> torch.Tensor:
        """s_theta(x): the network before the division by sigma."""
        h = self.begin_conv(2.0 * x - 1.0)
        layers = []
        for name in self.stage_names:
            for block in getattr(self, name):
                h = block(h)
            layers.append(h)
        out = getattr(self, self.refine_names[0])([layers[-1]], layers[-1].shape[2:])
        for name, skip in zip(self.refine_names[1:], reversed(layers[:-1])):
            out = getattr(self, name)([skip, out], skip.shape[2:])
        return self.end_conv(self.act(self.normalizer(out)))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """s_theta(x, sigma) = s_theta(x) / sigma, with ``sigma`` of shape (B,) or a scalar."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        out = self.unconditional(x)
        return out / sigma.view(-1, *([1] * (x.ndim - 1))).to(out.dtype)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
