"""Benchmark: how far training and sampling are from the GPU's limit (CIFAR-10 NCSNv2, bf16).

- FLOPs per image, forward and forward + backward (torch.utils.flop_counter), and the bytes the eager
  operators read and write (the sum of their inputs' and outputs' sizes: an unfused upper bound on memory
  traffic; torch.compile fuses much of it away);
- the peak: a large bf16 matrix product on this GPU, measured in the same run;
- achieved TFLOP/s and the share of that peak for the trainer's step (batch 128) and the sampler's score
  (batch 1000), each as the product ships (bf16, channels_last, CUDA graph, with and without torch.compile);
- where the time goes: a profile of the step, its GPU time split into convolutions, normalisation
  (reductions), other element-wise work, the optimiser and EMA, and the gaps between kernels.

    PYTHONPATH=. python benchmarks/roofline.py
"""

from __future__ import annotations

import argparse
import re
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from ncsn_tune import NoiseSchedule, TrainConfig
from ncsn_tune.model.accel import FastScore, SpeedSwitches
from ncsn_tune.model.ema import EMA
from ncsn_tune.model.loss import dsm_loss
from ncsn_tune.model.network import NCSNv2
from ncsn_tune.model.step import TrainStep, build_optimizer


class ByteCounter(TorchDispatchMode):
    """Sum of the sizes of every operator's tensor inputs and outputs (eager, unfused)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))

        def size(t):
            return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0

        flat = list(args) + list((kwargs or {}).values()) + (list(out) if isinstance(out, (tuple, list)) else [out])
        self.bytes += sum(size(t) for t in flat)
        return out


def per_image_costs(model, sigmas, device) -> dict:
    x = torch.rand(8, 3, 32, 32, device=device)
    sigma = torch.ones(8, device=device)
    with torch.autocast("cuda", dtype=torch.bfloat16), FlopCounterMode(display=False) as flops:
        model(x, sigma)
    forward = flops.get_total_flops() / 8
    with torch.autocast("cuda", dtype=torch.bfloat16), FlopCounterMode(display=False) as flops:
        dsm_loss(model, x, sigmas).backward()
    both = flops.get_total_flops() / 8
    counter = ByteCounter()
    with torch.autocast("cuda", dtype=torch.bfloat16), counter:
        model(x, sigma)
    forward_bytes = counter.bytes / 8
    counter = ByteCounter()
    with torch.autocast("cuda", dtype=torch.bfloat16), counter:
        dsm_loss(model, x, sigmas).backward()
    return {"forward_flops": forward, "train_flops": both, "forward_bytes": forward_bytes, "train_bytes": counter.bytes / 8}


def matmul_peak(device, n=8192, repeat=10) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeat / (time.perf_counter() - t0)


#: Kernel name -> kind. Triton kernels first: inductor names a fused kernel after every op it absorbed
#: (``triton_poi_fused_convolution_elu_...``), but the convolutions themselves run in cuDNN/CUTLASS kernels.
CATEGORIES = [
    ("normalisation (reductions)", re.compile(r"^triton_(red|per)_", re.I)),
    ("element-wise", re.compile(r"^triton_poi_", re.I)),
    ("optimizer + EMA", re.compile(r"adam|multi_tensor|foreach|lerp", re.I)),
    ("convolution", re.compile(r"conv|cudnn|xmma|implicit|gemm|sm90|wgrad|dgrad|nhwc|cutlass|winograd", re.I)),
    ("normalisation (reductions)", re.compile(r"reduce|norm|welford|var_mean|mean", re.I)),
    ("element-wise", re.compile(r"elementwise|vectorized|unrolled|elu|copy|fill|add|mul|where|max_pool|pool", re.I)),
]


def profile_split(step, make_input, steps=20) -> dict:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step(make_input())
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step(make_input())
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / steps
    split = dict.fromkeys(name for name, _ in CATEGORIES)
    split = {name: 0.0 for name in split}
    split["other kernels"] = 0.0
    for event in prof.key_averages():
        gpu = getattr(event, "device_time_total", getattr(event, "cuda_time_total", 0)) or 0
        if gpu <= 0 or event.key.startswith("ProfilerStep") or "aten::" in event.key or event.key.startswith("cuda"):
            continue
        for name, pattern in CATEGORIES:
            if pattern.search(event.key):
                split[name] += gpu / 1e6 / steps
                break
        else:
            split["other kernels"] += gpu / 1e6 / steps
    busy = sum(split.values())
    split["gaps (GPU idle)"] = max(0.0, wall - busy)
    return {"wall_s": wall, "split_s": split}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    schedule = NoiseSchedule.from_num_scales(50.0, 3072, 232)
    sigmas = torch.tensor(schedule.sigmas, dtype=torch.float32, device=device)
    torch.manual_seed(0)
    model = NCSNv2(3, 32, 128, sigmas=schedule.sigmas).to(device)
    costs = per_image_costs(model, sigmas, device)
    peak = matmul_peak(device)
    print(f"per image: forward {costs['forward_flops'] / 1e9:.2f} GFLOP, {costs['forward_bytes'] / 1e6:.1f} MB; forward+backward "
          f"{costs['train_flops'] / 1e9:.2f} GFLOP, {costs['train_bytes'] / 1e6:.1f} MB (eager, unfused); bf16 matmul peak "
          f"{peak / 1e12:.0f} TFLOP/s", flush=True)
    rows = []
    for name, compile in (("train, CUDA graph", False), ("train, + compile", True)):
        m = NCSNv2(3, 32, 128, sigmas=schedule.sigmas).to(device).to(memory_format=torch.channels_last)
        switches = SpeedSwitches(compile=compile)
        x = torch.rand(128, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        step = TrainStep(m, build_optimizer(m, TrainConfig(), switches), EMA(m), sigmas, switches, tuple(x.shape), device)
        for _ in range(10):
            step(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(x)
        torch.cuda.synchronize()
        rate = args.steps / (time.perf_counter() - t0)
        achieved = rate * 128 * costs["train_flops"]
        rows.append((name, f"{rate:.1f} it/s", achieved))
        split = profile_split(step, lambda: x)
        print(f"{name}: {rate:.1f} it/s = {achieved / 1e12:.0f} TFLOP/s ({achieved / peak:.0%} of the peak); per step "
              f"{split['wall_s'] * 1e3:.2f} ms: " + ", ".join(f"{k} {v / split['wall_s']:.0%}" for k, v in split["split_s"].items()),
              flush=True)
    for name, compile in (("sample, CUDA graph", False), ("sample, + compile", True)):
        m = NCSNv2(3, 32, 128, sigmas=schedule.sigmas).to(device).eval()
        x = torch.rand(1000, 3, 32, 32, device=device)
        sigma = torch.ones(1000, device=device)
        score = FastScore(m, tuple(x.shape), SpeedSwitches(compile=compile))
        for _ in range(5):
            score(x, sigma)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(60):
            score(x, sigma)
        torch.cuda.synchronize()
        evals = 60 * 1000 / (time.perf_counter() - t0)
        achieved = evals * costs["forward_flops"]
        rows.append((name, f"{evals / 1161:.2f} images/s", achieved))
        split = profile_split(lambda xx: score(xx, sigma), lambda: x, steps=10)
        print(f"{name}: {evals / 1161:.2f} images/s (1,161 evaluations each) = {achieved / 1e12:.0f} TFLOP/s ({achieved / peak:.0%} of "
              f"the peak); per evaluation of 1000 {split['wall_s'] * 1e3:.1f} ms: "
              + ", ".join(f"{k} {v / split['wall_s']:.0%}" for k, v in split["split_s"].items()), flush=True)
    print(f"\n{'work':<20} {'speed':>16} {'TFLOP/s':>8} {'of peak':>8}")
    for name, speed, achieved in rows:
        print(f"{name:<20} {speed:>16} {achieved / 1e12:8.0f} {achieved / peak:8.0%}")


if __name__ == "__main__":
    main()
