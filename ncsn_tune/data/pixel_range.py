"""The interval pixels are mapped into before noise is added: [0, 1] or [-1, 1].

Every distance and every noise scale is measured in pixel units, so the same
images in [-1, 1] are twice as far apart as in [0, 1], and the same noise
relative to the data is twice as large: a schedule carried from one range to
the other scales *every* sigma, sigma_min included, by the ratio of the widths
(:meth:`PixelRange.factor_to`); the step eps scales with its square (the
Langevin step eps sigma**2 / sigma_min**2 is a squared distance), snr, the
ratio of adjacent scales, L and the overlap do not change. The defaults follow
the same rule: sigma_min 0.01 in [0, 1] is 0.02 in [-1, 1] (EDM's VE sampler
uses 0.02 and 100 where NCSNv2 uses 0.01 and 50).

This module is the only place that spells the ranges; which range each tool
uses is in :mod:`ncsn_tune.interop.conventions`.
"""

from __future__ import annotations

import enum

from ..errors import NcsnTuneError


class PixelRange(str, enum.Enum):
    """A pixel convention. Its value ("0,1", "-1,1") is what files and the command line hold."""

    UNIT = "0,1"
    SYMMETRIC = "-1,1"

    def __str__(self) -> str:
        return self.value

    @property
    def low(self) -> float:
        return 0.0 if self is PixelRange.UNIT else -1.0

    @property
    def high(self) -> float:
        return 1.0

    @property
    def width(self) -> float:
        return self.high - self.low

    @property
    def label(self) -> str:
        """The interval as people write it: [0, 1]."""
        return f"[{self.low:g}, {self.high:g}]"

    def factor_to(self, other: "PixelRange") -> float:
        """What every distance and sigma is multiplied by when the pixels move from this range to ``other``."""
        return PixelRange.parse(other).width / self.width

    def affine_to(self, other: "PixelRange", scale: float = 1.0, offset: float = 0.0) -> tuple[float, float]:
        """(scale', offset') such that ``values * scale' + offset'`` lies in ``other`` where ``values * scale + offset``
        lay in this range."""
        other = PixelRange.parse(other)
        factor = self.factor_to(other)
        return scale * factor, (offset - self.low) * factor + other.low

    @classmethod
    def parse(cls, value, *, error: type[NcsnTuneError] = NcsnTuneError, what: str = "pixel range") -> "PixelRange":
        """A PixelRange from itself or its text ("0,1", "-1,1", also "[0, 1]"); anything else is an error naming the choices."""
        if isinstance(value, cls):
            return value
        text = str(value).strip().strip("[]()").replace(" ", "") if isinstance(value, str) else None
        for member in cls:
            if text == member.value:
                return member
        raise error(f"the {what} must be one of {', '.join(CHOICES)}, got {value!r}", fields="pixel_range")

    @classmethod
    def parse_optional(cls, value, **kwargs) -> "PixelRange | None":
        return None if value is None else cls.parse(value, **kwargs)


#: The ranges as the command line offers them.
CHOICES = tuple(member.value for member in PixelRange)
#: The paper's convention, and NCSNv2's unless ``data.rescaled``.
DEFAULT = PixelRange.UNIT
