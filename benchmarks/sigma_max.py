"""Benchmark: exact sigma_max (Technique 1), brute force against the pruned search.

Data sets:
- the real CIFAR-10 subset (5,085 training images);
- an augmented set of 50,000 made from it (horizontal flips and 1-2 pixel shifts of the real images,
  so that the structure is that of real images: flips also create exact ties);
- a random Gaussian set (the hard case: every point is about as far from the centre as every other,
  so the triangle inequality prunes almost nothing).

Methods: float64 brute force (Gram matrix in float64, 4096-row blocks), float32 blocked brute force
(every pair through the exact engine), and the pruned search; on a GPU the same through torch.
Every method's value and pair is printed; the speed-up is against float32 blocked brute force on the
same device. Times are the median of --repeat runs, after the data is in memory.

    python benchmarks/sigma_max.py                       # CPU, everything (several minutes on 2 cores)
    python benchmarks/sigma_max.py --device cuda         # the same on a GPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from ncsn_tune.analysis import max_pairwise_distance
from ncsn_tune.data import load_cifar10


def machine(device: str) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{platform.node()}: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, NumPy {np.__version__}"
    if device.startswith("cuda"):
        import torch

        text += f", torch {torch.__version__}, {torch.cuda.get_device_name(0)}"
    return text


def find_subset(given: str | None) -> Path:
    here = Path(__file__).resolve().parents[1]
    for c in [given, os.environ.get("NCSN_TUNE_SUBSET"), here.parent / "shared/data/cifar10-subset", here / "device_data/cifar10-subset"]:
        if c and (Path(c) / "cifar-10-batches-py").is_dir():
            return Path(c)
    sys.exit("the real CIFAR-10 subset was not found: pass --subset DIR (the folder holding cifar-10-batches-py)")


def augmented(values: np.ndarray, n: int) -> np.ndarray:
    """Flips and small shifts of real images, (n, D) uint8."""
    variants = [values, values[..., ::-1]]
    for dx in (-2, -1, 1, 2):
        variants.append(np.roll(values, dx, axis=-1))
        variants.append(np.roll(values[..., ::-1], dx, axis=-2))
    out = np.concatenate(variants)
    if len(out) < n:
        raise SystemExit(f"cannot make {n} points from {len(values)} images")
    return np.ascontiguousarray(out[:n]).reshape(n, -1)


def float64_brute_force(x: np.ndarray, scale: float, device: str, block: int = 4096):
    """Every pair's squared distance from a float64 Gram matrix, in blocks; the winner by direct differences."""
    if device.startswith("cuda"):
        import torch

        xt = torch.as_tensor(x, device=device).double()
        norms = (xt * xt).sum(1)
        best, pair = -1.0, (0, 0)
        for i in range(0, len(x), block):
            d2 = norms[i : i + block, None] + norms[None, :] - 2 * xt[i : i + block] @ xt.T
            rows = torch.arange(i, min(i + block, len(x)), device=device)
            d2[torch.arange(len(rows), device=device)[:, None] >= (torch.arange(len(x), device=device)[None, :] - i)] = -1
            k = int(torch.argmax(d2))
            r, c = divmod(k, len(x))
            if float(d2[r, c]) > best:
                best, pair = float(d2[r, c]), (i + r, c)
        torch.cuda.synchronize()
    else:
        x64 = x.astype(np.float64)
        norms = np.einsum("ij,ij->i", x64, x64)
        best, pair = -1.0, (0, 0)
        for i in range(0, len(x), block):
            for j in range(i, len(x), block):
                d2 = norms[i : i + block, None] + norms[None, j : j + block] - 2 * x64[i : i + block] @ x64[j : j + block].T
                if i == j:
                    d2[np.tril_indices(len(d2), 0, d2.shape[1])] = -1
                r, c = np.unravel_index(int(np.argmax(d2)), d2.shape)
                if d2[r, c] > best:
                    best, pair = float(d2[r, c]), (i + int(r), j + int(c))
    diff = x[pair[0]].astype(np.float64) - x[pair[1]].astype(np.float64)
    return math.sqrt(float(diff @ diff)) * scale, pair


def timed(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subset", help="folder holding cifar-10-batches-py (the real subset)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--n", type=int, default=50000, help="points in the augmented set")
    p.add_argument("--gaussian-n", type=int, default=20000, help="points in the Gaussian set (0: skip)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--skip-slow", action="store_true", help="skip brute force on the large sets")
    p.add_argument("--json-out", help="also write the rows as JSON here")
    args = p.parse_args()

    print(machine(args.device))
    subset = find_subset(args.subset)
    load_time, data = timed(lambda: load_cifar10(subset, download=False), args.repeat)
    print(f"loading the CIFAR-10 subset ({data.num_points} train images, python format): {load_time:.3f} s")

    sets = [("real subset", data.points(), data.scale), (f"augmented {args.n:,}", augmented(data.values, args.n), data.scale)]
    if args.gaussian_n:
        rng = np.random.default_rng(0)
        sets.append((f"Gaussian {args.gaussian_n:,}", rng.standard_normal((args.gaussian_n, 3072), dtype=np.float32), 1.0))

    rows = []
    for name, x, scale in sets:
        small = len(x) <= 10000
        if args.device.startswith("cuda"):
            import torch

            on_device = torch.as_tensor(np.ascontiguousarray(x), device=args.device)
            torch.cuda.synchronize()
        methods = []
        if small or not args.skip_slow:
            methods.append(("brute force float64", lambda x=x, s=scale: float64_brute_force(x, s, args.device)))
            methods.append(("blocked float32", lambda x=x, s=scale: max_pairwise_distance(x, scale=s, method="blocked", device=args.device)))
        methods.append(("pruned", lambda x=x, s=scale: max_pairwise_distance(x, scale=s, device=args.device)))
        if args.device.startswith("cuda"):
            methods.append(("pruned, data on GPU", lambda t=on_device, s=scale: max_pairwise_distance(t, scale=s, device=args.device)))
        base = None
        for label, fn in methods:
            fn()  # warm-up (GPU kernels, page cache)
            seconds, result = timed(fn, args.repeat if (small or label.startswith("pruned")) else 1)
            if isinstance(result, tuple):
                value, pair, evaluated = result[0], result[1], len(x) * (len(x) - 1) // 2
            else:
                value, pair, evaluated = result.distance, result.pair, result.pairs_evaluated
            if label == "blocked float32":
                base = seconds
            rows.append(
                {"data": name, "n": len(x), "method": label, "device": args.device, "seconds": seconds, "pairs_evaluated": evaluated,
                 "sigma_max": value, "pair": list(pair), "speedup_vs_blocked_float32": None}
            )
        for row in rows:
            if row["data"] == name and base:
                row["speedup_vs_blocked_float32"] = base / row["seconds"]

    header = f"{'data':<18} {'N':>7} {'method':<22} {'time (s)':>10} {'pairs evaluated':>16} {'sigma_max':>18} {'pair':>15} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = r["speedup_vs_blocked_float32"]
        speed = "-" if not ratio else (f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.2f}x")
        print(
            f"{r['data']:<18} {r['n']:>7} {r['method']:<22} {r['seconds']:>10.4f} {r['pairs_evaluated']:>16,} "
            f"{r['sigma_max']:>18.12f} {str(tuple(r['pair'])):>15} {speed:>9}"
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"machine": machine(args.device), "load_seconds": load_time, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
