"""Technique 1 sharded over processes (issue 31): two processes under torch.distributed (gloo, on the CPU), each holding a
shard, find the whole set's exact farthest pair."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ncsn_tune.analysis import brute_force_max_distance  # noqa: E402
from ncsn_tune.analysis.sharded_diameter import ring_steps, shard_of  # noqa: E402


def _rank(rank: int, world: int, folder: str) -> None:
    import torch.distributed as dist

    from ncsn_tune.analysis.sharded_diameter import sharded_max_pairwise_distance

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        for name in ("floats", "pixels"):
            points = np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r")
            rows = shard_of(len(points), world, rank)
            found = sharded_max_pairwise_distance(np.asarray(points[rows]), rows.start, scale=1 / 255 if name == "pixels" else 1.0,
                                                  device="torch:cpu", method="pruned")
            with open(os.path.join(folder, f"{name}_{rank}.json"), "w") as f:
                json.dump({"distance": found.distance, "pair": list(found.pair), "n": found.num_points}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_shards_on_several_processes_give_the_whole_sets_farthest_pair(tmp_path, world):
    rng = np.random.default_rng(world)
    floats = rng.normal(size=(151, 12))
    floats[97] += 9.0  # the pair crosses shards
    floats[3] -= 9.0
    pixels = rng.integers(0, 256, (100, 3 * 4 * 4), dtype=np.uint8)  # the integer path, exact ties possible
    np.save(tmp_path / "floats.npy", floats)
    np.save(tmp_path / "pixels.npy", pixels)
    torch.multiprocessing.spawn(_rank, args=(world, str(tmp_path)), nprocs=world, join=True)
    for name, data, scale in (("floats", floats, 1.0), ("pixels", pixels, 1 / 255)):
        ref = brute_force_max_distance(data, scale=scale)
        for rank in range(world):
            got = json.loads((tmp_path / f"{name}_{rank}.json").read_text())
            assert got["n"] == len(data) and tuple(got["pair"]) == ref.pair
            assert got["distance"] == pytest.approx(ref.distance, rel=1e-12)


def test_every_pair_of_shards_is_searched_once():
    for world in range(1, 9):
        pairs = []
        for rank in range(world):
            pairs += [tuple(sorted((rank, (rank + t) % world))) for t in ring_steps(world, rank)]
        assert sorted(pairs) == sorted({(a, b) for a in range(world) for b in range(a, world)})
    assert [shard_of(10, 3, r) for r in range(3)] == [slice(0, 4), slice(4, 7), slice(7, 10)]
