"""Technique 1 on several processes (GPUs), each holding a shard of the points: the exact largest distance of the whole set.

Under ``torch.distributed`` (started by torchrun; NCCL between GPUs, gloo on CPUs) every rank r of W holds its shard
S_r. The shards travel round a ring: at step t rank r holds S_{(r+t) mod W} beside its own and finds the exact farthest
pair of S_r with it (step 0: within S_r; steps 1 .. floor(W/2): between S_r and the visiting shard, each unordered pair
of shards taken once, by the lower rank when W is even and t = W/2), with the single-process search of
:mod:`.initial_noise_scale` run on the two shards together (so pairs inside the visiting shard are searched again: at
most twice the work of one process on the whole set, spread over W). Then the ranks agree on the largest squared
distance, ties going to the first pair in the global numbering, as the single-process search orders them. Exact as that
search is: integer arithmetic for 8-bit pixels on a GPU, else float32 selection with a float64 re-check.

torch is imported when the search runs, never at module import.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import DataError
from ._rows import as_point_matrix
from .initial_noise_scale import FarthestPair, max_pairwise_distance


def ring_steps(world: int, rank: int) -> list[int]:
    """The ring steps t at which ``rank`` searches its shard against the one it holds: 0 (its own), then 1 .. floor(W/2),
    the last only on the lower rank of each pair when W is even (every unordered pair of shards exactly once)."""
    steps = [0]
    for t in range(1, world // 2 + 1):
        if 2 * t == world and rank >= (rank + t) % world:
            continue
        steps.append(t)
    return steps


def _group_device(group=None) -> str:
    """Where the group's messages travel: the CPU under gloo, this process's GPU under NCCL; an error outside a group."""
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise DataError("the search over several processes runs under torch.distributed: start it with torchrun "
                        "(ncsn-tune sigmas --gpus N does), or init_process_group")
    return "cpu" if dist.get_backend(group) == "gloo" else f"cuda:{torch.cuda.current_device()}"


def _search_device(device: str) -> str:
    """The search's device for a group's device: torch's CPU path on the CPU (the shards are torch tensors)."""
    return "torch:cpu" if device == "cpu" else device


def sharded_max_pairwise_distance(shard, offset: int, *, scale: float = 1.0, method: str = "pruned", device: str | None = None,
                                  integer: bool | None = None, group=None) -> FarthestPair:
    """The exact largest distance over the union of every rank's ``shard`` (its rows are points ``offset``,
    ``offset + 1``, ... of the whole set), with the pair in the whole set's numbering; called by every rank of
    ``group`` (the default process group). ``device``: where each rank computes (default: the group's own, its GPU
    under NCCL, torch's CPU path under gloo)."""
    import torch
    import torch.distributed as dist

    comm = _group_device(group)
    t0 = time.perf_counter()
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    x = as_point_matrix(shard)
    local = torch.as_tensor(np.ascontiguousarray(np.asarray(x))) if not hasattr(x, "detach") else x.detach()
    local = local.to(comm)
    dim = int(local.shape[1])
    sizes = [torch.zeros(3, dtype=torch.int64, device=comm) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local.shape[0], offset, dim], dtype=torch.int64, device=comm), group=group)
    counts, offsets = [int(s[0]) for s in sizes], [int(s[1]) for s in sizes]
    if len({int(s[2]) for s in sizes}) != 1:
        raise DataError(f"every shard must hold points of one dimension, got {sorted({int(s[2]) for s in sizes})}")
    best = (-math.inf, (0, 0))
    evaluated = 0
    visiting, holder = local, rank
    wanted = set(ring_steps(world, rank))
    for t in range(world // 2 + 1):
        if t in wanted and (t == 0 or counts[holder] > 0) and counts[rank] > 0:
            parts = [(offsets[rank], local)] + ([(offsets[holder], visiting)] if t else [])
            parts.sort(key=lambda part: part[0])  # in the whole set's order, so that ties resolve as one process would
            both = torch.cat([p for _, p in parts]) if t else local
            ids = np.concatenate([np.arange(len(p)) + o for o, p in parts])
            if both.shape[0] >= 2:
                found = max_pairwise_distance(both, scale=1.0, method=method, device=_search_device(device or comm), integer=integer)
                evaluated += found.pairs_evaluated
                i, j = sorted((int(ids[found.pair[0]]), int(ids[found.pair[1]])))
                d2 = found.distance**2
                if d2 > best[0] or (d2 == best[0] and (i, j) < best[1]):
                    best = (d2, (i, j))
        if t == world // 2:
            break
        # pass the visiting shard one rank down the ring, take the next one from the rank above
        send_to, receive_from = (rank - 1) % world, (rank + 1) % world
        holder_next = (holder + 1) % world
        incoming = torch.empty((counts[holder_next], dim), dtype=local.dtype, device=comm)
        requests = [dist.isend(visiting.contiguous(), send_to, group=group), dist.irecv(incoming, receive_from, group=group)]
        for request in requests:
            request.wait()
        visiting, holder = incoming, holder_next
    everyone = [None] * world
    dist.all_gather_object(everyone, (best[0], best[1], evaluated), group=group)
    d2 = max(e[0] for e in everyone)
    pair = min(e[1] for e in everyone if e[0] == d2)  # ties: the first pair, as the single-process search keeps it
    n = sum(counts)
    return FarthestPair(math.sqrt(max(d2, 0.0)) * scale, pair, n, dim, sum(e[2] for e in everyone), n * (n - 1) // 2, 0,
                        f"sharded over {world} processes ({method})", time.perf_counter() - t0)


def shard_of(num_points: int, world: int, rank: int) -> slice:
    """The contiguous rows rank ``rank`` of ``world`` holds: the set cut into near-equal parts in order."""
    per, extra = divmod(num_points, world)
    start = rank * per + min(rank, extra)
    return slice(start, start + per + (rank < extra))


def group_max_pairwise_distance(points, *, scale: float = 1.0, method: str = "pruned", integer: bool | None = None,
                                group=None) -> FarthestPair:
    """Technique 1 by every process of the torch.distributed ``group`` together (torchrun; ``ncsn-tune sigmas --gpus N``):
    each process is given the whole set ``points`` (as each loads it, memory-mapped where the source allows), keeps its
    shard (:func:`shard_of`) and searches it with the others (:func:`sharded_max_pairwise_distance`) on its GPU under
    NCCL, or on its CPU (torch) under gloo. Every process returns the same exact result."""
    import torch.distributed as dist

    _group_device(group)  # inside a group, or said so
    x = as_point_matrix(points)
    rows = shard_of(int(x.shape[0]), dist.get_world_size(group), dist.get_rank(group))
    return sharded_max_pairwise_distance(x[rows], rows.start, scale=scale, method=method, integer=integer, group=group)
