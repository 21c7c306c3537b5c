"""Brent's method (ncsn_tune.analysis.roots) against scipy.optimize.brentq, and the normal CDF against scipy."""

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from ncsn_tune.analysis.noise_schedule import normal_cdf
from ncsn_tune.analysis.roots import brent_root


@settings(max_examples=200, deadline=None)
@given(st.floats(-50, 50), st.floats(0.01, 20), st.integers(1, 7), st.floats(0, 3))
def test_matches_scipy_on_shifted_powers_and_exponentials(root, scale, power, tilt):
    f = lambda x: math.copysign(abs(x - root) ** power, x - root) * scale + tilt * (math.exp(x - root) - 1.0)  # noqa: E731
    a, b = root - 7.3, root + 11.1
    ours = brent_root(f, a, b, xtol=1e-13, rtol=4 * 2**-52)
    theirs = optimize.brentq(f, a, b, xtol=1e-13, rtol=4 * 2**-52, maxiter=1000)
    assert abs(ours - theirs) <= 1e-10 * max(1.0, abs(root))
    assert abs(f(ours)) <= abs(f(ours + 1e-9 * max(1, abs(ours)))) + abs(f(ours - 1e-9 * max(1, abs(ours))))


def test_ends_bad_brackets_and_exact_zeros():
    assert brent_root(lambda x: x - 1.0, 1.0, 2.0) == 1.0
    assert brent_root(lambda x: x - 2.0, 1.0, 2.0) == 2.0
    with pytest.raises(ValueError, match="differ in sign"):
        brent_root(lambda x: x * x + 1, -1.0, 1.0)
    assert brent_root(lambda x: math.cos(x) - x, 0.0, 1.0, xtol=1e-300) == pytest.approx(0.7390851332151607, abs=1e-16)


def test_normal_cdf_matches_scipy_in_both_tails():
    x = np.concatenate([np.linspace(-37, 8, 2001), [-1e-3, 0.0, 1e-3]])  # below -37.5 scipy's cdf is 0, ours subnormal
    np.testing.assert_allclose(normal_cdf(x), stats.norm.cdf(x), rtol=1e-12, atol=0)
    np.testing.assert_allclose(1 - normal_cdf(x[x < 5]), stats.norm.sf(x[x < 5]), rtol=1e-11, atol=1e-16)


def test_the_analysis_core_imports_without_scipy():
    code = "import sys, ncsn_tune, ncsn_tune.cli; assert 'scipy' not in sys.modules, sorted(m for m in sys.modules if 'scipy' in m)[:3]"
    subprocess.run([sys.executable, "-c", code], check=True)
