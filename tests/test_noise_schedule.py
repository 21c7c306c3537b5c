"""Technique 2: the overlap equation, the number of scales and the schedule."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from ncsn_tune.analysis import (
    NoiseSchedule,
    geometric_sigmas,
    num_scales_for_ratio,
    overlap,
    ratio_for_num_scales,
    solve_gamma,
)
from ncsn_tune.analysis.noise_schedule import MAX_OVERLAP
from ncsn_tune.errors import ScheduleError


def direct_overlap(gamma, dim):
    c = math.sqrt(2 * dim) * (gamma - 1)
    return norm.cdf(c + 3 * gamma) - norm.cdf(c - 3 * gamma)


def test_cifar10_published_numbers():
    assert solve_gamma(3072, 0.5) == pytest.approx(1.0398, abs=5e-5)
    assert NoiseSchedule.from_overlap(50.0, 3072, sigma_min=0.01, target_overlap=0.5).num_scales == 220
    published = NoiseSchedule.from_num_scales(50.0, 3072, 232, sigma_min=0.01)
    assert published.ratio == pytest.approx(1.03756, abs=1e-5)
    assert published.overlap == pytest.approx(0.567, abs=1e-3)


@settings(max_examples=80, deadline=None)
@given(st.integers(5, 10**6), st.floats(0.001, 0.997))
def test_gamma_solves_its_equation(dim, target):
    gamma = solve_gamma(dim, target)
    assert gamma > 1
    assert direct_overlap(gamma, dim) == pytest.approx(target, abs=1e-9)
    # it is the smallest root: just below it the overlap is still above the target
    assert overlap(1 + (gamma - 1) * (1 - 1e-6), dim) > target


def test_overlap_matches_scipy_and_keeps_tail_accuracy():
    for gamma, dim in [(1.01, 3072), (1.04, 3072), (1.5, 100), (2.0, 5)]:
        assert overlap(gamma, dim) == pytest.approx(direct_overlap(gamma, dim), rel=1e-12, abs=1e-15)
    tail = overlap(1.5, 100000)  # far in the tail: CDF differences would round to 0
    assert 0 < tail < 1e-300 or tail == 0.0
    assert overlap(1.0, 10) == pytest.approx(MAX_OVERLAP)
    np.testing.assert_allclose(overlap(np.array([1.01, 1.04]), 3072), [overlap(1.01, 3072), overlap(1.04, 3072)])


@pytest.mark.parametrize("dim", [1, 2, 3, 4])
def test_low_dimensions_have_no_solution(dim):
    with pytest.raises(ScheduleError, match="never falls"):
        solve_gamma(dim, 0.5)


@pytest.mark.parametrize("target", [0.0, 1.0, -0.1, 1.5, float("nan"), 0.9990])
def test_impossible_targets(target):
    with pytest.raises(ScheduleError):
        solve_gamma(3072, target)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.02, 1e4), st.floats(1e-4, 0.01), st.integers(2, 2000))
def test_schedule_ends_exact_and_descending(sigma_max, sigma_min, num_scales):
    s = geometric_sigmas(sigma_max, sigma_min, num_scales)
    assert s[0] == sigma_max and s[-1] == sigma_min and len(s) == num_scales
    assert np.all(np.diff(s) < 0)
    np.testing.assert_allclose(s[:-1] / s[1:], ratio_for_num_scales(sigma_max, sigma_min, num_scales), rtol=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.floats(1.0001, 3.0), st.floats(1.5, 1e4))
def test_num_scales_is_the_fewest_with_ratio_at_most_gamma(gamma, span):
    n = num_scales_for_ratio(span, 1.0, gamma)
    assert ratio_for_num_scales(span, 1.0, n) <= gamma * (1 + 1e-12)
    if n > 2:
        assert ratio_for_num_scales(span, 1.0, n - 1) > gamma * (1 - 1e-12)


def test_realised_overlap_at_least_target():
    s = NoiseSchedule.from_overlap(49.9, 3072)
    assert s.ratio <= s.gamma and s.overlap >= 0.5


@pytest.mark.parametrize(
    "args", [(0.01, 0.01, 10), (0.001, 0.01, 10), (-1.0, 0.01, 10), (float("inf"), 0.01, 10), (50.0, 0.01, 1), (50.0, 0.0, 10)]
)
def test_bad_ranges(args):
    with pytest.raises(ScheduleError):
        geometric_sigmas(*args)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_schedule_file_roundtrip(tmp_path, suffix):
    s = NoiseSchedule.from_overlap(50.0, 3072, source={"name": "cifar10", "pair": [1, 2]}, data={"name": "cifar10", "fingerprint": "f"})
    path = s.save(tmp_path / f"s{suffix}")
    back = NoiseSchedule.load(path)
    assert back == s
    np.testing.assert_array_equal(back.sigmas, s.sigmas)


def test_bad_schedule_files(tmp_path):
    p = tmp_path / "s.json"
    p.write_text("{not json")
    with pytest.raises(Exception, match="not valid JSON"):
        NoiseSchedule.load(p)
    p.write_text(json.dumps({"sigma_max": 1.0, "sigma_min": 2.0, "num_scales": 10, "dim": 3}))
    with pytest.raises(ScheduleError, match="smaller"):
        NoiseSchedule.load(p)
    p.write_text(json.dumps({"sigma_max": 50.0, "num_scales": 10}))
    with pytest.raises(ScheduleError, match="lacks"):
        NoiseSchedule.load(p)
    good = NoiseSchedule.from_num_scales(50.0, 3072, 10).to_dict()
    good["sigmas"][3] *= 1.01
    p.write_text(json.dumps(good))
    with pytest.raises(ScheduleError, match="geometric"):
        NoiseSchedule.load(p)
    with pytest.raises(Exception, match="does not exist"):
        NoiseSchedule.load(tmp_path / "missing.json")


def test_the_library_and_the_command_give_the_same_default_sigma_min_in_each_pixel_range():
    """Issue 30: NoiseSchedule.from_num_scales(100, 3072, 232, pixel_range='-1,1') had sigma_min 0.01 where the command gives
    0.02: every default now comes from ncsn_tune.analysis.defaults."""
    import json

    from cli_run import run

    for make in (lambda: NoiseSchedule.from_num_scales(100.0, 3072, 232, pixel_range="-1,1"),
                 lambda: NoiseSchedule.from_overlap(100.0, 3072, pixel_range="-1,1")):
        assert make().sigma_min == 0.02
    out = json.loads(run("sigmas", "--sigma-max", 100, "--dim", 3072, "--num-scales", 232, "--pixel-range=-1,1", "--json").stdout)
    assert out["sigma_min"] == 0.02 == NoiseSchedule.from_num_scales(100.0, 3072, 232, pixel_range="-1,1").sigma_min
    assert NoiseSchedule.from_num_scales(50.0, 3072, 232).sigma_min == 0.01
