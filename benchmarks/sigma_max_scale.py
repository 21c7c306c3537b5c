"""Benchmark: exact sigma_max (Technique 1) at the data sizes of the paper's own configs, on one GPU (issue 31).

Synthetic 8-bit images are built on the GPU (uniform random pixels: every image about as far from the centre as every
other, so the triangle inequality prunes almost nothing and the search is close to a brute force, the hard case):

- 1,281,167 x 3x64x64 (ImageNet-64's size, 15.7 GB as uint8), target: under 60 s;
- 70,000 x 3x256x256 (FFHQ-256's size, 13.8 GB), target: under 30 s;
- 100,000 x 3x64x64 through both exact paths, the integer one (int8 products, integer sums) and the float32 one
  (float32 products within a rounding bound, re-checked in float64), for their ratio.

Each result's certifying pair is re-computed in float64 from the pixels and must give the same distance. A first
check compares both paths with a float64 brute force on small random sets of awkward shapes (row counts below 17,
lengths that are not multiples of 8, more than 2**16 coordinates).

    PYTHONPATH=. python benchmarks/sigma_max_scale.py            # on a GPU; --quick for a few-second CPU run of the same code
    PYTHONPATH=. python benchmarks/sigma_max_scale.py --only ffhq256,compare      # some of the runs, in that order
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()}: {gpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}, NumPy {np.__version__}"


def synthetic(n: int, shape: tuple[int, ...], device, seed: int):
    """n uint8 images of ``shape``, uniform, built on ``device`` in chunks."""
    import torch

    dim = int(np.prod(shape))
    out = torch.empty((n, dim), dtype=torch.uint8, device=device)
    generator = torch.Generator(device).manual_seed(seed)
    step = max(1, (1 << 30) // dim)
    for start in range(0, n, step):
        stop = min(n, start + step)
        out[start:stop] = torch.randint(0, 256, (stop - start, dim), dtype=torch.uint8, device=device, generator=generator)
    return out


def recheck(x, pair) -> float:
    """The pair's distance from the pixels, the squared differences summed in float64 (exact for 8-bit pixels), times 1/255
    as the search scales it."""
    import math

    import torch

    i, j = pair
    diff = x[i].to(torch.float64) - x[j].to(torch.float64)
    return math.sqrt(float((diff * diff).sum())) * (1 / 255)


def small_checks(device: str) -> list[dict]:
    """Both exact paths against a float64 brute force on random sets of awkward shapes."""
    import torch

    from ncsn_tune.analysis.initial_noise_scale import brute_force_max_distance, max_pairwise_distance

    rng = np.random.default_rng(7)
    out = []
    for n, dim, block in ((13, 24, 8), (40, 3 * 7 * 7, 16), (300, 3 * 32 * 32, 64), (24, 70_001, 8), (200, 12_288, 32)):
        data = rng.integers(0, 256, (n, dim), dtype=np.uint8)
        ref = brute_force_max_distance(data, scale=1 / 255)
        x = torch.from_numpy(data).to("cpu" if device == "torch:cpu" else device)
        for integer in (True, False):
            r = max_pairwise_distance(x, scale=1 / 255, device=device, block_size=block, integer=integer)
            out.append({"n": n, "dim": dim, "path": r.method, "equal_distance": r.distance == ref.distance, "equal_pair": r.pair == ref.pair})
            if not (r.distance == ref.distance and r.pair == ref.pair):
                raise SystemExit(f"{r.method} differs from the float64 brute force on {n} x {dim}: {r.distance!r} {r.pair} vs "
                                 f"{ref.distance!r} {ref.pair}")
    return out


def timed(x, device: str, integer: bool, label: str, target: float | None) -> dict:
    import torch

    from ncsn_tune.analysis.initial_noise_scale import max_pairwise_distance

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    last = [t0]

    def progress(done, total, what):  # a line every 15 s, so a cut-off run still says how far it got
        now = time.perf_counter()
        if what == "blocks of pairs" and now - last[0] > 15:
            last[0] = now
            print(f"  {label}: {done}/{total} block rows after {now - t0:.0f} s", flush=True)

    r = max_pairwise_distance(x, scale=1 / 255, device=device, integer=integer, progress=progress)
    seconds = time.perf_counter() - t0
    check = recheck(x, r.pair)
    row = {"data": label, "points": r.num_points, "dim": r.dim, "path": r.method, "sigma_max": r.distance, "pair": list(r.pair),
           "float64_recheck": check, "equal": check == r.distance, "pairs_evaluated": r.pairs_evaluated,
           "pairs_total": r.pairs_total, "seconds": seconds, "target_seconds": target,
           "tera_ops_per_s": 2.0 * r.pairs_evaluated * r.dim / seconds / 1e12}
    print(f"{label:<34} {r.method:<22} {seconds:8.2f} s  sigma_max {r.distance:.6f} pair {r.pair}  float64 recheck "
          f"{'equal' if row['equal'] else 'DIFFERS: ' + repr(check)}  {row['tera_ops_per_s']:7.1f} T(int)ops/s "
          f"({r.pairs_evaluated / r.pairs_total:.1%} of pairs)" + (f"  target < {target:g} s" if target else ""), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="small sizes (a CPU run of the same code: --device torch:cpu)")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--only", default="imagenet64,ffhq256,compare",
                   help="which runs, in this order: imagenet64, ffhq256, compare (the two paths on one set)")
    p.add_argument("--skip-checks", action="store_true", help="leave out the small checks against a float64 brute force")
    args = p.parse_args()
    import torch

    device = args.device
    where = "cpu" if device == "torch:cpu" else device
    print(f"machine: {machine()}", flush=True)
    checks = [] if args.skip_checks else small_checks(device)
    if checks:
        print(f"small checks: {len(checks)} runs of both paths equal to a float64 brute force (value and pair)", flush=True)
    sizes = {"imagenet64": (2000, (3, 16, 16), 60.0, "2k x 3x16x16") if args.quick else
             (1_281_167, (3, 64, 64), 60.0, "ImageNet-64 size, 1,281,167 x 3x64x64"),
             "ffhq256": (300, (3, 64, 64), 30.0, "300 x 3x64x64") if args.quick else
             (70_000, (3, 256, 256), 30.0, "FFHQ-256 size, 70,000 x 3x256x256")}
    rows = []
    for k, name in enumerate(args.only.split(",")):
        if name == "compare":
            n = 3000 if args.quick else 100_000
            x = synthetic(n, (3, 64, 64), where, seed=11)
            for integer in (True, False):
                rows.append(timed(x, device, integer, f"{n:,} x 3x64x64, both paths", None))
            print(f"integer path {rows[-1]['seconds'] / rows[-2]['seconds']:.1f}x faster than float32 on {n:,} x 3x64x64", flush=True)
        else:
            n, shape, target, label = sizes[name]
            t0 = time.perf_counter()
            x = synthetic(n, shape, where, seed=k)
            if where.startswith("cuda"):
                torch.cuda.synchronize()
            print(f"{label}: built on {where} in {time.perf_counter() - t0:.1f} s", flush=True)
            rows.append(timed(x, device, True, label, target))
        del x
        if where.startswith("cuda"):
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "small_checks": checks, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
