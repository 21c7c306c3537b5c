"""Quantities said the way a person plans with them (torch-free)."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """Seconds as seconds, minutes, hours or days, whichever reads best."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.1f} days"
