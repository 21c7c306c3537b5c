"""What the audit reads of another tool's configuration: :class:`ToolConfig` (torch-free)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..analysis.noise_schedule import validate_num_scales, validate_range
from ..analysis.samplers import Sampler
from ..analysis.step_size import step_size_of_snr, validate_steps_per_scale
from ..checks import is_real
from ..data.pixel_range import PixelRange
from ..errors import NcsnTuneError


@dataclass(frozen=True)
class ToolConfig:
    """The settings of another tool's sampler that the paper's techniques speak about.

    ``num_scales``: the number of noise levels the sampler runs (diffusers: ``num_inference_steps``, which is not
    ``num_train_timesteps``; score_sde: ``model.num_scales``). ``sampler``: the loop it runs (None: no Langevin-type
    sampler, e.g. score_sde's probability-flow ODE; ``no_sampler_reason`` says which). ``continuous``: trained in
    continuous time (score_sde), so L is free at sampling time; False: a new L means retraining; None: not
    applicable. ``ema``: None when the configuration does not say.
    """

    tool: str
    source: str
    sigma_max: float
    sigma_min: float
    num_scales: int
    steps_per_scale: int | None = None
    step_size: float | None = None
    snr: float | None = None
    sampler: Sampler | None = Sampler()
    no_sampler_reason: str | None = None
    ema: bool | None = None
    ema_rate: float | None = None
    pixel_range: PixelRange = PixelRange.UNIT
    image_shape: tuple[int, ...] | None = None
    geometric: bool = True
    continuous: bool | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        """What the configuration gives must be numbers the techniques can use: said in the configuration's words."""
        validate_range(self.sigma_max, self.sigma_min)
        validate_num_scales(self.num_scales)
        if self.steps_per_scale is not None:
            validate_steps_per_scale(self.steps_per_scale)
        for name, value in (("step size", self.step_size), ("snr", self.snr)):
            if value is not None and not (is_real(value) and math.isfinite(value)
                                          and value > 0):
                raise NcsnTuneError(f"{self.source}: the {name} must be a positive number, got {value!r}", fields="config")
        if self.step_size is not None and self.snr is not None:
            raise NcsnTuneError("give the step as eps or as snr, not both", fields=("step_size", "snr"))

    @property
    def dim(self) -> int | None:
        return math.prod(self.image_shape) if self.image_shape else None

    @property
    def eps(self) -> float | None:
        """The step eps this configuration takes (from step_lr, or from snr as 2 (snr sigma_min)**2)."""
        if self.step_size is not None:
            return self.step_size
        return step_size_of_snr(self.snr, self.sigma_min) if self.snr is not None else None

    @property
    def given_snr(self) -> float | None:
        """The step as snr (from step_lr as sqrt(eps / 2) / sigma_min)."""
        if self.snr is not None:
            return self.snr
        return math.sqrt(self.step_size / 2) / self.sigma_min if self.step_size is not None else None

    def to_dict(self) -> dict:
        data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}
        data.update(sampler=self.sampler.to_dict() if self.sampler else None, pixel_range=str(self.pixel_range), dim=self.dim,
                    eps=self.eps)
        return data
