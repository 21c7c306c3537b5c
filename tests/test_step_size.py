"""Technique 4: Proposition 3's ratio and the optimal step size."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ncsn_tune.analysis import optimal_step_size, ratio_for_num_scales, variance_ratio
from ncsn_tune.errors import ScheduleError


def recursion(eps, ratio, m, sigma_min, sigma=3.7):
    """Langevin on N(0, sigma^2) from N(0, (ratio sigma)^2): v <- (1 - alpha/sigma^2)^2 v + 2 alpha."""
    alpha = eps * sigma**2 / sigma_min**2
    v = (ratio * sigma) ** 2
    for _ in range(m):
        v = (1 - alpha / sigma**2) ** 2 * v + 2 * alpha
    return v / sigma**2


@settings(max_examples=100, deadline=None)
@given(st.floats(1e-4, 0.99), st.floats(1.0001, 2.0), st.integers(1, 50), st.floats(1e-3, 1.0))
def test_ratio_equals_the_variance_recursion(a, ratio, m, sigma_min):
    eps = a * sigma_min**2
    assert variance_ratio(eps, ratio, m, sigma_min) == pytest.approx(recursion(eps, ratio, m, sigma_min), rel=1e-10)


def test_ratio_is_vectorised():
    eps = np.array([1e-6, 5e-6, 1e-5])
    out = variance_ratio(eps[:, None], 1.04, np.array([1, 5, 10])[None, :], 0.01)
    assert out.shape == (3, 3)
    assert out[1, 1] == pytest.approx(variance_ratio(5e-6, 1.04, 5, 0.01))


def test_cifar10_published_values():
    ratio = ratio_for_num_scales(50.0, 0.01, 232)
    best = optimal_step_size(ratio, 5, 0.01)
    assert best.step_size == pytest.approx(6.18e-6, rel=1e-3)
    assert best.variance_ratio == pytest.approx(1.0555, abs=1e-4)
    assert variance_ratio(6.2e-6, ratio, 5, 0.01) == pytest.approx(best.variance_ratio, abs=1e-4)


@settings(max_examples=40, deadline=None)
@given(st.floats(1.001, 1.5), st.integers(1, 30), st.floats(1e-3, 1.0))
def test_optimum_beats_a_dense_grid(ratio, m, sigma_min):
    best = optimal_step_size(ratio, m, sigma_min)
    grid = np.logspace(-9, np.log10(0.999), 200001) * sigma_min**2
    ratios = variance_ratio(grid, ratio, m, sigma_min)
    k = int(np.argmin(ratios))
    assert best.variance_ratio <= ratios[k] * (1 + 1e-12)
    assert best.variance_ratio > 1.0
    # 1e-6 relative in eps: the grid's neighbours bracket the optimum
    assert grid[max(k - 1, 0)] <= best.step_size * (1 + 1e-6) and best.step_size <= grid[min(k + 1, len(grid) - 1)] * (1 + 1e-6)


def test_optimum_is_accurate_to_1e6_in_eps():
    ratio = ratio_for_num_scales(50.0, 0.01, 232)
    best = optimal_step_size(ratio, 5, 0.01)
    for factor in (1 - 1e-6, 1 + 1e-6):
        assert variance_ratio(best.step_size * factor, ratio, 5, 0.01) >= best.variance_ratio


@pytest.mark.parametrize("args", [(1.0, 5, 0.01), (0.9, 5, 0.01), (1.04, 0, 0.01), (1.04, -3, 0.01), (1.04, 5, 0.0), (float("nan"), 5, 0.01)])
def test_bad_arguments(args):
    with pytest.raises(ScheduleError):
        optimal_step_size(*args)
