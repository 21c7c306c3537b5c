"""Benchmark: exact sigma_max (Technique 1) sharded over several GPUs of one host (issue 31).

Every rank builds the same synthetic 8-bit images on its GPU from one seed (uniform pixels: the hard case, where the
triangle inequality prunes almost nothing), keeps its shard (:func:`ncsn_tune.analysis.sharded_diameter.shard_of`) and
frees the rest; the shards travel round the ring over NCCL (:func:`~ncsn_tune.analysis.sharded_diameter.
sharded_max_pairwise_distance`). Rank 0 re-computes the certifying pair in float64 from the pixels and prints the table
with the machine. Sizes: ImageNet-64's 1,281,167 x 3x64x64 and FFHQ-256's 70,000 x 3x256x256, as
benchmarks/sigma_max_scale.py times them on one GPU.

    torchrun --nproc_per_node 8 benchmarks/sigma_max_multi_gpu.py           (NCCL; keep NCCL_NVLS_ENABLE=0 as the machine sets it)
    torchrun --nproc_per_node 2 benchmarks/sigma_max_multi_gpu.py --quick   (a few seconds)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json")
    args = p.parse_args()
    import torch
    import torch.distributed as dist

    from ncsn_tune.analysis.sharded_diameter import shard_of, sharded_max_pairwise_distance

    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))  # each rank its GPU, named: no guessing
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = ([(20_000, (3, 32, 32), "20k x 3x32x32")] if args.quick else
             [(1_281_167, (3, 64, 64), "ImageNet-64 size, 1,281,167 x 3x64x64"), (70_000, (3, 256, 256), "FFHQ-256 size, 70,000 x 3x256x256")])
    rows = []
    for k, (n, shape, label) in enumerate(sizes):
        dim = math.prod(shape)
        rows_here = shard_of(n, world, rank)
        generator = torch.Generator("cuda").manual_seed(k)
        shard = torch.empty((rows_here.stop - rows_here.start, dim), dtype=torch.uint8, device="cuda")
        step = max(1, (1 << 30) // dim)
        for start in range(0, n, step):  # every rank draws the same stream, keeping its own rows
            stop = min(n, start + step)
            block = torch.randint(0, 256, (stop - start, dim), dtype=torch.uint8, device="cuda", generator=generator)
            lo, hi = max(start, rows_here.start), min(stop, rows_here.stop)
            if lo < hi:
                shard[lo - rows_here.start: hi - rows_here.start] = block[lo - start: hi - start]
        torch.cuda.synchronize()
        dist.barrier()
        t0 = time.perf_counter()
        found = sharded_max_pairwise_distance(shard, rows_here.start, scale=1 / 255, device=f"cuda:{local}")
        seconds = time.perf_counter() - t0
        pair_rows = []
        for index in found.pair:  # the pair's rows, from whichever rank holds them, for the float64 recheck on rank 0
            owner = next(r for r in range(world) if shard_of(n, world, r).start <= index < shard_of(n, world, r).stop)
            row = shard[index - rows_here.start].clone() if owner == rank else torch.empty(dim, dtype=torch.uint8, device="cuda")
            dist.broadcast(row, owner)
            pair_rows.append(row.double())
        check = math.sqrt(float(((pair_rows[0] - pair_rows[1]) ** 2).sum())) * (1 / 255)
        if rank == 0:
            row = {"data": label, "gpus": world, "seconds": seconds, "sigma_max": found.distance, "pair": list(found.pair),
                   "float64_recheck": check, "equal": check == found.distance}
            rows.append(row)
            print(f"{label:<40} {world} GPUs {seconds:8.2f} s  sigma_max {found.distance:.6f} pair {found.pair}  float64 recheck "
                  f"{'equal' if row['equal'] else 'DIFFERS'}", flush=True)
        del shard
        torch.cuda.empty_cache()
    if rank == 0:
        print(f"machine: {platform.node()}: {world} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
