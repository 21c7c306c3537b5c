"""The two checks every argument check starts from: a real number and a whole number (neither a bool, which Python
counts as an int). NumPy's scalars count: they register as numbers.Real and numbers.Integral."""

from __future__ import annotations

import numbers


def is_real(value) -> bool:
    """A real number (int, float or a NumPy scalar), not a bool; it may still be NaN or infinite."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_whole(value) -> bool:
    """A whole number (int or a NumPy integer), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
