"""Technique 5: an exponential moving average of the weights, used for sampling.

    shadow <- rate * shadow + (1 - rate) * theta,   rate = 0.999

after every optimiser step, over the trainable parameters (as the official
code does; buffers are copied as they are).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """The averaged copy of a model's parameters (``shadow``), updated in place with fused foreach ops."""

    def __init__(self, model: nn.Module, rate: float = 0.999) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"the EMA rate must be in [0, 1), got {rate}")
        self.rate = rate
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for _, p in model.named_parameters() if p.requires_grad]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = [p.detach() for p in model.parameters() if p.requires_grad]
        torch._foreach_lerp_(self.shadow, params, 1.0 - self.rate)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameter name -> averaged value (the official checkpoints' EMA layout)."""
        return dict(zip(self.names, self.shadow))

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"the EMA state lacks {len(missing)} parameters, e.g. {missing[0]}")
        for name, value in zip(self.names, self.shadow):
            if state[name].shape != value.shape:
                raise KeyError(f"the EMA state has {name} of shape {tuple(state[name].shape)}, expected {tuple(value.shape)}")
            value.copy_(state[name])

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        """Write the averaged parameters into ``model`` (in place) and return it."""
        params = dict(model.named_parameters())
        for name, value in zip(self.names, self.shadow):
            params[name].copy_(value)
        return model

    def averaged_model(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` with the averaged parameters."""
        return self.copy_to(copy.deepcopy(model))
