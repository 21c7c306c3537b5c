"""Benchmark: NCSNv2 training steps per second on a GPU (CIFAR-10 configuration, batch 128).

Variants, each from the same initial weights, on the real CIFAR-10 subset held on the GPU:

- official: the official NCSNv2 code as shipped (fp32), when --official DIR points at a copy of its
  ``models/`` and ``losses/`` folders (not part of this project);
- fp32: our network and step in plain fp32 (no switch);
- bf16+cl+fused: bf16 autocast, channels_last, fused Adam;
- +graph: the same with the whole step in one CUDA graph;
- all: + torch.compile (the trainer's default on a GPU).

For each: time to the first step (compilation and graph capture included), steps/s over --steps
timed steps after warm-up, and peak GPU memory. Then fp32 and the default variant train side by side
for --compare-steps steps from the same weights on the same batches, and their mean losses per window
are printed: bf16 must leave the loss curve unchanged in expectation.

    PYTHONPATH=. python benchmarks/train_speed.py --subset device_data/cifar10-subset --official device_data/official_ncsnv2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from official import import_official

from ncsn_tune import NoiseSchedule, TrainConfig
from ncsn_tune.data import load_cifar10
from ncsn_tune.model.accel import SpeedSwitches
from ncsn_tune.model.ema import EMA
from ncsn_tune.model.network import NCSNv2
from ncsn_tune.model.step import TrainStep, build_optimizer
from ncsn_tune.model.batches import BatchSampler, DeviceImages


def official_step(official_dir: Path, init_state: dict, sigmas: torch.Tensor, device):
    """The official model, loss, Adam and EMA helper, as its runner uses them (fp32, eager)."""
    import argparse as ap

    anneal_dsm_score_estimation = import_official(official_dir, "losses.dsm").anneal_dsm_score_estimation
    EMAHelper = import_official(official_dir, "models.ema").EMAHelper
    Official = import_official(official_dir, "models.ncsnv2").NCSNv2

    ns = ap.Namespace
    config = ns(
        data=ns(logit_transform=False, rescaled=False, channels=3, image_size=32),
        model=ns(normalization="InstanceNorm++", ngf=128, num_classes=len(sigmas), nonlinearity="elu", sigma_dist="geometric",
                 sigma_begin=float(sigmas[0]), sigma_end=float(sigmas[-1])),
        device=device,
    )
    model = Official(config).to(device)
    model.load_state_dict(init_state)
    model = torch.nn.DataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False)
    ema = EMAHelper(mu=0.999)
    ema.register(model)

    def step(x):
        loss = anneal_dsm_score_estimation(model, x, model.module.sigmas, None, 2.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model)
        return loss.detach()

    return step


def our_step(init_state: dict, sigmas, switches: SpeedSwitches, device, batch):
    model = NCSNv2(3, 32, 128, sigmas=sigmas.cpu().numpy()).to(device)
    model.load_state_dict(init_state)
    if switches.channels_last:
        model = model.to(memory_format=torch.channels_last)
    config = TrainConfig()
    opt = build_optimizer(model, config, switches)
    ema = EMA(model, 0.999)
    return TrainStep(model, opt, ema, sigmas, switches, (batch, 3, 32, 32), device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subset", required=True, help="folder holding cifar-10-batches-py")
    p.add_argument("--official", help="folder with the official models/ and losses/ (optional)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--compare-steps", type=int, default=600)
    p.add_argument("--variants", default="official,fp32,bf16+cl+fused,+graph,all")
    p.add_argument("--profile", help="print the top GPU kernels of this variant (20 steps)")
    p.add_argument("--no-compare", action="store_true", help="skip the fp32 / bf16 loss comparison")
    p.add_argument("--json-out")
    args = p.parse_args()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True  # as the trainer sets it
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")

    data = load_cifar10(args.subset, download=False)
    images = DeviceImages(data, device)
    schedule = NoiseSchedule.from_num_scales(50.0, 3072, 232)
    sigmas = torch.tensor(schedule.sigmas, dtype=torch.float32, device=device)
    torch.manual_seed(0)
    init_state = NCSNv2(3, 32, 128, sigmas=schedule.sigmas).state_dict()

    def batches(n, seed=0):
        sampler = BatchSampler(len(images), args.batch, seed, True)
        for _ in range(n):
            idx, flips = sampler.next()
            yield images.batch(idx, flips)

    off = dict(bf16=False, channels_last=False, fused_adam=False, compile=False, cuda_graphs=False)
    variants = {
        "fp32": SpeedSwitches(**off),
        "bf16+cl+fused": SpeedSwitches(**{**off, "bf16": True, "channels_last": True, "fused_adam": True}),
        "+graph": SpeedSwitches(**{**off, "bf16": True, "channels_last": True, "fused_adam": True, "cuda_graphs": True}),
        "all": SpeedSwitches(bf16=True, channels_last=True, fused_adam=True, compile=True, cuda_graphs=True),
        "all-max-autotune": SpeedSwitches(bf16=True, channels_last=True, fused_adam=True, compile=True, cuda_graphs=True,
                                          compile_mode="max-autotune-no-cudagraphs"),
    }
    rows = []
    for name in args.variants.split(","):
        if name == "official" and not args.official:
            continue
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(0)
        try:
            t0 = time.perf_counter()
            if name == "official":
                step = official_step(Path(args.official), init_state, sigmas, device)
            else:
                step = our_step(init_state, sigmas, variants[name], device, args.batch)
            fmt = torch.channels_last if name != "official" and variants[name].channels_last else torch.contiguous_format
            it = batches(args.steps + 20)
            step(next(it).contiguous(memory_format=fmt))
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            for _ in range(19):
                step(next(it).contiguous(memory_format=fmt))
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            for x in it:
                loss = step(x.contiguous(memory_format=fmt))
            torch.cuda.synchronize()
            rate = args.steps / (time.perf_counter() - t1)
            peak = torch.cuda.max_memory_allocated() / 1e9
            rows.append({"variant": name, "it_per_s": rate, "first_step_s": first, "peak_gb": peak, "last_loss": float(loss)})
            print(f"{name:<14} {rate:8.1f} it/s   first step {first:7.1f} s   peak {peak:5.2f} GB", flush=True)
            if args.profile == name:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for x in batches(20):
                        step(x.contiguous(memory_format=fmt))
                    torch.cuda.synchronize()
                print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70), flush=True)
        except Exception as exc:  # report and go on: one failing variant must not hide the others
            rows.append({"variant": name, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{name:<14} FAILED: {type(exc).__name__}: {str(exc)[:500]}", flush=True)
        finally:
            step = None

    # fp32 against the default (bf16 + everything) on the same batches from the same weights
    curves = {}
    for name in () if args.no_compare else ("fp32", "all"):
        torch.manual_seed(1)
        step = our_step(init_state, sigmas, variants[name], device, args.batch)
        fmt = torch.channels_last if variants[name].channels_last else torch.contiguous_format
        losses = [float(step(x.contiguous(memory_format=fmt))) for x in batches(args.compare_steps, seed=1)]
        curves[name] = losses
        step = None
    window = 100
    if args.no_compare:
        curves = {"fp32": [], "all": []}
    print(f"\nmean loss per {window} steps, same weights and batches (fp32 vs bf16 + compile + CUDA graph):")
    print(f"{'steps':>11} {'fp32':>10} {'default':>10} {'rel diff':>9}")
    for s in range(0, args.compare_steps, window):
        a, b = np.mean(curves["fp32"][s : s + window]), np.mean(curves["all"][s : s + window])
        print(f"{s + 1:>5}-{s + window:<5} {a:10.2f} {b:10.2f} {abs(a - b) / a:9.2%}")

    header = f"\n{'variant':<14} {'it/s':>8} {'first step (s)':>15} {'peak GB':>8} {'vs official':>12}"
    print(header)
    base = next((r["it_per_s"] for r in rows if r["variant"] == "official" and "it_per_s" in r), None)
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<14} failed: {r['error'][:80]}")
            continue
        ratio = f"{r['it_per_s'] / base:.2f}x" if base else "-"
        print(f"{r['variant']:<14} {r['it_per_s']:8.1f} {r['first_step_s']:15.1f} {r['peak_gb']:8.2f} {ratio:>12}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"device": torch.cuda.get_device_name(0), "rows": rows, "curves": curves}, indent=2))


if __name__ == "__main__":
    main()
