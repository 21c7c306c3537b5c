"""Where a forward pass of the CIFAR-10 NCSNv2 spends its GPU time (sampling's cost is 1,161 of them).

Profiles the bf16 + channels_last forward at one batch size with torch.profiler and prints the
GPU time per operator (self time, summed over kernels), then times single layers in isolation:
3x3 convolutions plain and dilated (the dilated ones of stages res3 and res4, and the same
arithmetic as a plain convolution over the dilation's d x d phase sub-images), and the 5x5 max
pool of the chained residual pooling against the same pool done as 5x1 then 1x5.

    python benchmarks/profile_forward.py --batch 1000
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ncsn_tune.model.network import NCSNv2


def timed(fn, reps: int = 20) -> float:
    """Milliseconds per call, after warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3


def phase_split_conv(x, weight, bias, d: int):
    """A 3x3 convolution of dilation d (padding d) as a plain 3x3 convolution of the d*d phase sub-images."""
    b, c, h, w = x.shape
    phases = x.reshape(b, c, h // d, d, w // d, d).permute(0, 3, 5, 1, 2, 4).reshape(b * d * d, c, h // d, w // d)
    out = F.conv2d(phases, weight, bias, padding=1)
    co = out.shape[1]
    return out.reshape(b, d, d, co, h // d, w // d).permute(0, 3, 4, 1, 5, 2).reshape(b, co, h, w)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1000)
    args = p.parse_args()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, batch {args.batch}")
    model = NCSNv2(3, 32, 128).to(device).eval().to(memory_format=torch.channels_last)
    x = torch.rand(args.batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    sigma = torch.ones(args.batch, device=device)

    def forward():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return model(x, sigma)

    total = timed(forward, 10)
    print(f"\nforward, eager: {total:.2f} ms = {args.batch / total * 1e3:.0f} evaluations/s")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        forward()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))

    print("\nsingle layers (bf16, channels_last), ms per call:")
    print(f"{'layer':<52} {'ms':>8} {'TFLOP/s':>8}")
    b = args.batch
    for cin, cout, size, d in ((128, 128, 32, 1), (256, 256, 16, 1), (256, 256, 16, 2), (256, 256, 16, 4)):
        inp = torch.randn(b, cin, size, size, device=device, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(cin, cout, 3, padding=d, dilation=d).to(device, torch.bfloat16).to(memory_format=torch.channels_last)
        flops = 2 * 9 * cin * cout * size * size * b
        with torch.no_grad():
            ms = timed(lambda: conv(inp))
            print(f"{f'conv {cin}->{cout} at {size}x{size}, dilation {d}':<52} {ms:8.3f} {flops / ms / 1e9:8.1f}")
            if d > 1:
                ref = conv(inp)
                alt = phase_split_conv(inp, conv.weight, conv.bias, d)
                err = float((ref.float() - alt.float()).abs().max())
                ms = timed(lambda: phase_split_conv(inp, conv.weight, conv.bias, d))
                print(f"{f'  same as phase-split plain conv (max diff {err:.1e})':<52} {ms:8.3f} {flops / ms / 1e9:8.1f}")
    for ch, size in ((256, 16), (128, 32)):
        inp = torch.randn(b, ch, size, size, device=device, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        ms = timed(lambda: F.max_pool2d(inp, 5, stride=1, padding=2))
        print(f"{f'max pool 5x5, {ch} ch at {size}x{size}':<52} {ms:8.3f}")
        sep = lambda: F.max_pool2d(F.max_pool2d(inp, (5, 1), stride=1, padding=(2, 0)), (1, 5), stride=1, padding=(0, 2))  # noqa: E731
        err = float((F.max_pool2d(inp, 5, stride=1, padding=2) - sep()).abs().max())
        ms = timed(sep)
        print(f"{f'  as 5x1 then 1x5 (max diff {err:.1e})':<52} {ms:8.3f}")


if __name__ == "__main__":
    main()
