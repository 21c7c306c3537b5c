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


def test_sigmas_with_gpus_shares_the_search_between_processes_and_saves_one_schedule(tmp_path, monkeypatch):
    """`ncsn-tune sigmas --data d.npy --gpus 2 --device cpu` (torchrun, gloo): the same schedule as one process, the
    same certifying pair, saved once, printed once."""
    import subprocess
    import sys

    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (90, 6, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "d.npy", pixels)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NCSN_TUNE_WORKDIR": str(tmp_path / "work")}
    line = [sys.executable, "-m", "ncsn_tune", "sigmas", "--data", "d.npy", "--device", "cpu", "--json"]
    two = subprocess.run([*line, "--gpus", "2", "--output", "two.json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    one = subprocess.run([*line, "--output", "one.json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    printed = [json.loads(l) for l in two.stdout.splitlines() if l.startswith("{")]
    assert len(printed) == 1, two.stdout  # one voice: rank 0
    a, b = printed[0], json.loads(one.stdout)
    assert a["sigma_max"] == b["sigma_max"] and a["num_scales"] == b["num_scales"]
    saved = json.loads((tmp_path / "two.json").read_text())
    assert "sharded over 2 processes" in saved["source"]["method"]
    ref = brute_force_max_distance(pixels, scale=1 / 255)
    assert tuple(saved["source"]["pair"]) == ref.pair and saved["sigma_max"] == pytest.approx(ref.distance, rel=1e-15)


@pytest.mark.parametrize("args,phrase", [(["--sigma-max", 50, "--dim", 3072], "give --data"),
                                         (["--data", "d.npy", "--outliers", 1], "--outliers runs in one process")])
def test_sigmas_gpus_refusals(tmp_path, monkeypatch, args, phrase):
    from cli_run import one_line_error, run

    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "d.npy", np.zeros((4, 2, 2, 3), dtype=np.uint8))
    one_line_error(run("sigmas", *args, "--gpus", 2, "--device", "cpu"), phrase)
