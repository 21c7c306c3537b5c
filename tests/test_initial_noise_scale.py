"""Technique 1: the exact farthest pair against a float64 brute force."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ncsn_tune.analysis import brute_force_max_distance, max_pairwise_distance
from ncsn_tune.analysis._rows import float32_error_bound, take as _take
from ncsn_tune.errors import DataError


def check(x, block_size=7, scale=1.0, **kwargs):
    """Both methods give the brute force's value (1e-9 relative) and its pair."""
    ref = brute_force_max_distance(x, scale=scale)
    for method in ("pruned", "blocked"):
        got = max_pairwise_distance(x, block_size=block_size, scale=scale, method=method, **kwargs)
        assert got.distance == pytest.approx(ref.distance, rel=1e-9, abs=1e-300)
        assert got.pair == ref.pair
        assert got.pair[0] <= got.pair[1]
    return got


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 40), st.integers(1, 12)),
        elements=st.floats(-1e3, 1e3, allow_nan=False, width=64),
    ),
    st.integers(1, 16),
)
def test_matches_brute_force_on_arbitrary_sets(x, block_size):
    # Rounded to 1e-6: the float64 brute force itself underflows on values like 1e-236.
    check(np.round(x, 6), block_size)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 60), st.integers(1, 50), st.integers(0, 2**32 - 1))
def test_matches_brute_force_on_clustered_uint8_images(n, dim, seed):
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 256, (3, dim))
    x = np.clip(centres[rng.integers(0, 3, n)] + rng.integers(-5, 6, (n, dim)), 0, 255).astype(np.uint8)
    got = check(x, block_size=5, scale=1 / 255)
    assert got.distance <= np.sqrt(dim) + 1e-12


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 7), max_size=12))
def test_take_returns_the_rows_asked_for(ids):
    # sorted, unsorted, repeated and consecutive index lists (the nearest-neighbour recheck repeats rows)
    x = np.arange(8 * 2, dtype=np.float64).reshape(8, 2)
    ids = np.asarray(ids, dtype=np.int64)
    np.testing.assert_array_equal(_take(x, ids), x[ids])
    np.testing.assert_array_equal(_take(x, np.sort(ids)), x[np.sort(ids)])


def test_single_point_and_two_points():
    one = max_pairwise_distance(np.ones((1, 5)))
    assert one.distance == 0.0 and one.pair == (0, 0) and one.pairs_total == 0
    two = max_pairwise_distance(np.array([[0.0, 0.0], [3.0, 4.0]]))
    assert two.distance == 5.0 and two.pair == (0, 1)


def test_duplicates_and_all_identical():
    x = np.repeat(np.array([[1.0, 2.0, 3.0], [4.0, 6.0, 3.0]]), 20, axis=0)
    got = check(x, block_size=3)
    assert got.distance == 5.0
    same = max_pairwise_distance(np.full((30, 4), 7.0), block_size=4)
    assert same.distance == 0.0 and same.pair == (0, 1)


def test_ties_pick_the_first_pair():
    # A regular simplex: every pair at distance sqrt(2); the first pair in index order wins.
    got = check(np.eye(25) * 1.0, block_size=4)
    assert got.distance == pytest.approx(np.sqrt(2), rel=1e-15) and got.pair == (0, 1)


def test_large_offset_and_values():
    rng = np.random.default_rng(1)
    x = 1e8 + rng.normal(size=(300, 20))  # distances ~1 on top of values ~1e8
    check(x, block_size=64)
    check(rng.normal(size=(200, 10)) * 1e150, block_size=64)


def test_near_ties_within_float32_rounding():
    # Many pairs whose distances differ by far less than float32 can resolve.
    rng = np.random.default_rng(2)
    base = rng.normal(size=(1, 3000))
    x = np.concatenate([base, -base + 1e-7 * rng.normal(size=(60, 3000))])
    got = check(x, block_size=16)
    assert got.pairs_rechecked >= 2


def test_float32_input_and_higher_rank():
    rng = np.random.default_rng(3)
    x = rng.random((64, 3, 4, 4)).astype(np.float32)
    check(x, block_size=10)


def test_counts_every_pair_once():
    got = max_pairwise_distance(np.random.default_rng(4).normal(size=(101, 3)), block_size=10, method="blocked")
    assert got.pairs_evaluated == got.pairs_total == 101 * 100 // 2


def test_progress_reaches_the_total():
    calls = []
    max_pairwise_distance(
        np.random.default_rng(5).normal(size=(50, 3)), block_size=8, chunk_rows=7, progress=lambda d, t, what: calls.append((what, d, t))
    )
    reads = [c for c in calls if c[0] == "reading points"]
    blocks = [c for c in calls if c[0] == "blocks of pairs"]
    assert reads[-1][1:] == (50, 50) and blocks[-1][1:] == (7, 7)
    assert [d for _, d, _ in blocks] == sorted(d for _, d, _ in blocks)


def test_real_subset_matches_brute_force(real_subset):
    from ncsn_tune.data import load_cifar10

    data = load_cifar10(real_subset, download=False)
    got = max_pairwise_distance(data.points(), scale=data.scale)
    x = data.points().astype(np.float64) / 255.0
    norms = (x * x).sum(1)
    # float64 Gram brute force over all 5,085 points, then the winning pair by direct differences
    d2 = norms[:, None] + norms[None, :] - 2 * (x @ x.T)
    i, j = np.unravel_index(np.argmax(np.triu(d2, 1)), d2.shape)
    assert got.pair == (int(i), int(j))
    assert got.distance == pytest.approx(np.sqrt(((x[i] - x[j]) ** 2).sum()), rel=1e-12)
    assert got.distance == pytest.approx(49.896451177, rel=1e-9)


@pytest.mark.parametrize("bad", [np.zeros((0, 3)), np.zeros((3, 0)), []])
def test_empty_is_an_error(bad):
    with pytest.raises(DataError, match="empty"):
        max_pairwise_distance(bad)


def test_non_finite_is_an_error_naming_the_point():
    x = np.zeros((5, 3))
    x[3, 1] = np.nan
    with pytest.raises(DataError, match="point 3"):
        max_pairwise_distance(x)


def test_error_bound_grows_with_dimension_and_radius():
    assert float32_error_bound(3072, 1.0) > float32_error_bound(10, 1.0)
    assert float32_error_bound(10, 4.0) == pytest.approx(4 * float32_error_bound(10, 1.0), rel=1e-12)


def augmented_images(n_base=300, copies=4, seed=0):
    """Real-looking structure: base 'images' with flips and small shifts (distances tie exactly under flips)."""
    rng = np.random.default_rng(seed)
    base = np.clip(rng.normal(128, 40, (n_base, 3, 8, 8)) + rng.normal(0, 30, (n_base, 3, 1, 1)), 0, 255).astype(np.uint8)
    variants = [base, base[..., ::-1], np.roll(base, 1, axis=-1), np.roll(base, -1, axis=-2)][:copies]
    return np.concatenate(variants).reshape(n_base * copies, -1)


def test_pruning_skips_most_pairs_on_image_like_data():
    x = augmented_images()
    pruned = max_pairwise_distance(x, block_size=64, scale=1 / 255)
    full = max_pairwise_distance(x, block_size=64, scale=1 / 255, method="blocked")
    ref = brute_force_max_distance(x, scale=1 / 255)
    assert pruned.pair == full.pair == ref.pair and pruned.distance == full.distance
    assert pruned.pairs_evaluated < full.pairs_evaluated / 5


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 80), st.integers(1, 6), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_duplicate_heavy_sets(n, distinct, block_size, seed):
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 4, (distinct, 5)).astype(np.float64)
    check(pool[rng.integers(0, distinct, n)], block_size)


def test_adversarial_equal_radii():
    # Every point at the same distance from the centre: the radius bound prunes nothing.
    rng = np.random.default_rng(6)
    x = rng.normal(size=(400, 30))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    check(x, block_size=50)


def test_memory_mapped_and_streamed_equal_in_memory(tmp_path):
    x = augmented_images(200, 3, seed=1)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    a = max_pairwise_distance(x, block_size=32)
    b = max_pairwise_distance(mm, block_size=32, chunk_rows=17, memory_budget=0)  # every block re-read from disk
    assert a == b.__class__(**{**b.to_dict(), "pair": b.pair, "seconds": a.seconds})


def test_torch_code_path_matches_numpy():
    torch = pytest.importorskip("torch")
    x = augmented_images(150, 4, seed=2)
    ref = brute_force_max_distance(x)
    for method in ("pruned", "blocked"):
        got = max_pairwise_distance(torch.from_numpy(x), device="torch:cpu", method=method, block_size=40)
        assert got.pair == ref.pair and got.distance == pytest.approx(ref.distance, rel=1e-12)
    xf = np.random.default_rng(3).normal(size=(120, 9))
    got = max_pairwise_distance(xf, device="torch:cpu", block_size=16)
    ref = brute_force_max_distance(xf)
    assert got.pair == ref.pair and got.distance == pytest.approx(ref.distance, rel=1e-9)


@pytest.mark.skipif("not __import__('importlib').util.find_spec('torch') or not __import__('torch').cuda.is_available()")
def test_gpu_matches_cpu():
    x = augmented_images(500, 4, seed=4)
    cpu = max_pairwise_distance(x, device="cpu")
    gpu = max_pairwise_distance(x, device="cuda")
    assert gpu.pair == cpu.pair and gpu.distance == cpu.distance


def test_unknown_device_and_method():
    from ncsn_tune.errors import NcsnTuneError

    with pytest.raises(NcsnTuneError, match="unknown device"):
        max_pairwise_distance(np.zeros((3, 2)), device="tpu")
    with pytest.raises(NcsnTuneError, match="unknown method"):
        max_pairwise_distance(np.zeros((3, 2)), method="fast")


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 70), st.integers(1, 40), st.integers(1, 33), st.integers(0, 2**32 - 1))
def test_integer_path_matches_brute_force_on_uint8(n, dim, block_size, seed):
    """int8 products and integer sums (the GPU's exact path, here on torch's CPU) give the float64 brute force's value
    and pair, whatever the row count (padded to more than 16) and length (padded to a multiple of 8)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, dim), dtype=np.uint8)
    if n > 3:
        x[rng.integers(0, n, 3)] = x[0]  # exact ties
    ref = brute_force_max_distance(x, scale=1 / 255)
    for method in ("pruned", "blocked"):
        got = max_pairwise_distance(torch.from_numpy(x), scale=1 / 255, device="torch:cpu", method=method, block_size=block_size)
        assert "int8" in got.method
        assert got.distance == ref.distance and got.pair == ref.pair


def test_integer_path_sums_long_rows_in_int64():
    """More than 2**16 coordinates: the int32 products are taken over slices and summed in int64 (no overflow at 255)."""
    torch = pytest.importorskip("torch")
    x = np.zeros((20, 70_001), dtype=np.uint8)
    x[3] = 255  # the farthest pair: 0 against 255 everywhere, squared distance 70,001 * 255^2 > 2^31
    x[5, :100] = 255
    got = max_pairwise_distance(torch.from_numpy(x), scale=1 / 255, device="torch:cpu", block_size=8)
    assert got.pair == (0, 3) and got.distance == np.sqrt(70_001.0 * 255**2) * (1 / 255)
    with pytest.raises(DataError, match="uint8"):
        max_pairwise_distance(torch.from_numpy(x.astype(np.float32)), device="torch:cpu", integer=True)
    with pytest.raises(DataError, match="torch device"):
        max_pairwise_distance(x, device="cpu", integer=True)
    assert "int8" not in max_pairwise_distance(torch.from_numpy(x), device="torch:cpu", integer=False, block_size=8).method


def test_sigma_max_without_the_farthest_outliers_is_exact_for_the_rest():
    """Issue 31: how much sigma_max drops when the k farthest outliers are left out; each value equals a float64 brute force
    over the points that are left."""
    from ncsn_tune.analysis.initial_noise_scale import diameter_without_outliers

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6))
    x[5] += 30  # one stray point carries the diameter
    x[17] -= 25
    drops = diameter_without_outliers(x, (1, 2, 5))
    assert [d.k for d in drops] == [1, 2, 5] and drops[0].removed == (5,) and drops[1].removed[:2] == (5, 17)
    for d in drops:
        rest = np.setdiff1d(np.arange(len(x)), d.removed)
        ref = brute_force_max_distance(x[rest])
        assert d.distance == pytest.approx(ref.distance, rel=1e-12)
        assert tuple(sorted(rest[list(ref.pair)])) == tuple(sorted(d.pair))
    assert drops[1].drop > 0.8  # without its two strays the set is small


def test_sigmas_reports_the_drop_without_outliers(tmp_path):
    from cli_run import run
    import json

    np.save(tmp_path / "d.npy", np.random.default_rng(1).random((60, 3, 4, 4)).astype(np.float32))
    out = json.loads(run("sigmas", "--data", tmp_path / "d.npy", "--outliers", "1,10", "--json").stdout)
    assert [o["k"] for o in out["outliers"]] == [1, 10] and out["outliers"][1]["distance"] <= out["outliers"][0]["distance"] <= out["sigma_max"]
    r = run("sigmas", "--sigma-max", 50, "--dim", 48, "--outliers", 1, "--output", tmp_path / "s.json")
    assert r.exit_code == 2 and "give the data" in r.stderr


def test_torch_on_the_cpu_prunes_as_numpy_does():
    """torch:cpu (the gloo path of sigmas --gpus N --device cpu) took a GPU's 4096-point blocks, which prune almost nothing
    at this size (two processes on the CIFAR-10 subset computed 14.8M pair distances for 12.9M pairs); it takes the CPU's."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    points = rng.integers(100, 156, (3000, 48), dtype=np.uint8)
    points[:5] = rng.integers(0, 256, (5, 48), dtype=np.uint8)  # a few far points: the bound rules most pairs out
    a = max_pairwise_distance(points, device="cpu")
    b = max_pairwise_distance(points, device="torch:cpu")
    assert (a.distance, a.pair) == (b.distance, b.pair)
    assert b.pairs_evaluated == a.pairs_evaluated < a.pairs_total // 4
