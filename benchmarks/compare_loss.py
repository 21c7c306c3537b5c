"""Compare two training runs' loss curves window by window (the mean loss of each logged window of steps).

Two runs from the same seed and data draw the same batches, scales and noise, so their windows should agree
to well within 1% when only the speed of the step changed (bf16 kernels, torch.compile or not, a CUDA graph).
Prints a table and the largest relative difference; exits 1 when it is above --tolerance.

    python benchmarks/compare_loss.py docs/results/train_2000_before_metrics.jsonl docs/results/train_2000_after_metrics.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def windows(path: Path) -> dict[int, dict]:
    """{step: record} of the metrics.jsonl records that carry a training loss."""
    records = (json.loads(line) for line in Path(path).read_text().splitlines() if line.strip())
    return {r["step"]: r for r in records if "loss" in r}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--tolerance", type=float, default=0.01, help="largest relative difference allowed [default: 1%%]")
    args = p.parse_args()
    before, after = windows(args.before), windows(args.after)
    steps = sorted(set(before) & set(after))
    if not steps:
        sys.exit("the two runs share no logged step")
    print(f"{'step':>6} {'before':>10} {'after':>10} {'difference':>11} {'before it/s':>12} {'after it/s':>11}")
    worst = 0.0
    for step in steps:
        b, a = before[step], after[step]
        rel = (a["loss"] - b["loss"]) / b["loss"]
        worst = max(worst, abs(rel))
        print(f"{step:>6} {b['loss']:10.3f} {a['loss']:10.3f} {100 * rel:+10.3f}% {b.get('it_per_s', float('nan')):12.1f} "
              f"{a.get('it_per_s', float('nan')):11.1f}")
    print(f"\n{len(steps)} windows; largest relative difference {100 * worst:.3f}% (tolerance {100 * args.tolerance:g}%)")
    sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
