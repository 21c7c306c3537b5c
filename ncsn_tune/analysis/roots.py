"""Brent's method for a root of a continuous function on a bracket (Brent 1973, "Algorithms for Minimization
without Derivatives", ch. 4), used by Techniques 2 and 4.

Written here rather than taken from ``scipy.optimize``: importing that package costs about half a second,
which every ``ncsn-tune`` command would pay.
"""

from __future__ import annotations

import math
from typing import Callable

EPS = 2.0**-52


def brent_root(f: Callable[[float], float], a: float, b: float, *, xtol: float = 2e-12, rtol: float = 4 * EPS,
               maxiter: int = 500) -> float:
    """A root of ``f`` in [a, b], where f(a) and f(b) differ in sign (or one is 0).

    Inverse quadratic interpolation or the secant step where they make progress, bisection where they do
    not, so the bracket always shrinks; the result is within ``xtol + rtol * |x|`` of a sign change of f.
    """
    fa, fb = f(a), f(b)
    if fa == 0:
        return a
    if fb == 0:
        return b
    if (fa > 0) == (fb > 0):
        raise ValueError(f"f(a) and f(b) must differ in sign, got f({a!r}) = {fa!r} and f({b!r}) = {fb!r}")
    c, fc = a, fa
    d = e = b - a
    for _ in range(maxiter):
        if (fb > 0) == (fc > 0):  # keep the root between b and c
            c, fc = a, fa
            d = e = b - a
        if abs(fc) < abs(fb):  # b is the best estimate
            a, b, c = b, c, b
            fa, fb, fc = fb, fc, fb
        tol = 2.0 * EPS * abs(b) + 0.5 * xtol + 0.5 * rtol * abs(b)
        m = 0.5 * (c - b)
        if abs(m) <= tol or fb == 0:
            return b
        if abs(e) >= tol and abs(fa) > abs(fb):
            s = fb / fa
            if a == c:  # secant
                p, q = 2.0 * m * s, 1.0 - s
            else:  # inverse quadratic interpolation
                q, r = fa / fc, fb / fc
                p = s * (2.0 * m * q * (q - r) - (b - a) * (r - 1.0))
                q = (q - 1.0) * (r - 1.0) * (s - 1.0)
            if p > 0:
                q = -q
            else:
                p = -p
            if 2.0 * p < min(3.0 * m * q - abs(tol * q), abs(e * q)):  # the interpolation is acceptable
                e, d = d, p / q
            else:
                d = e = m
        else:
            d = e = m
        a, fa = b, fb
        b += d if abs(d) > tol else math.copysign(tol, m)
        fb = f(b)
    raise ArithmeticError(f"Brent's method did not converge in {maxiter} iterations")
