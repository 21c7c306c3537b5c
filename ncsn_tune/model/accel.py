"""Speed on a GPU, in one place: bf16 autocast, channels_last, torch.compile and CUDA graphs.

:class:`SpeedSwitches` says which apply on a device; :func:`capture_cuda_graph`
is the one capture routine (warm-up on a side stream, then one graph), used by
the trainer's step (:class:`ncsn_tune.model.train.TrainStep`) and by the
sampler's score (:class:`FastScore`). On a CPU every switch is off and the
model is called as it is.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch


@dataclasses.dataclass(frozen=True)
class SpeedSwitches:
    """The speed switches that apply on a device (all off on a CPU)."""

    bf16: bool = True
    channels_last: bool = True
    fused_adam: bool = True
    compile: bool = False
    cuda_graphs: bool = True
    compile_mode: str = "default"

    @classmethod
    def for_device(cls, device: torch.device, *, bf16=True, channels_last=True, fused_adam=True, compile=False, cuda_graphs=True,
                   compile_mode="default", distributed: bool = False) -> "SpeedSwitches":
        """The requested switches that apply on ``device``; CUDA graphs are left out under DistributedDataParallel
        (its gradient hooks run outside a captured graph)."""
        gpu = torch.device(device).type == "cuda"
        return cls(bf16 and gpu, channels_last and gpu, fused_adam and gpu, compile and gpu, cuda_graphs and gpu and not distributed,
                   compile_mode)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device):
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=self.bf16)

    def compiled(self, module: torch.nn.Module) -> Callable:
        return torch.compile(module, mode=self.compile_mode) if self.compile else module


def capture_cuda_graph(fn: Callable[[], object], device: torch.device, warmup: int = 3,
                       after_warmup: Callable[[], None] | None = None) -> tuple[torch.cuda.CUDAGraph, object]:
    """Run ``fn`` ``warmup`` times on a side stream (compilation, cuDNN autotuning, lazy state), call
    ``after_warmup`` (e.g. to restore weights the warm-up changed), then capture one call of ``fn`` in a CUDA graph.

    ``fn`` reads and writes only static tensors; replaying the graph repeats it on their current contents.
    Returns the graph and what the captured call returned (static output tensors).
    """
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    if after_warmup is not None:
        after_warmup()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def static_input(shape, device: torch.device, memory_format=torch.contiguous_format) -> torch.Tensor:
    """A buffer for a graph's input, filled from a private generator (drawing from the global one would
    shift a resumed run's random stream)."""
    gen = torch.Generator(device).manual_seed(0)
    return torch.rand(shape, device=device, generator=gen).contiguous(memory_format=memory_format)


class FastScore:
    """A score model for a fixed batch shape, fast on a GPU: bf16 autocast, channels_last, optional
    ``torch.compile``, and the forward pass captured in one CUDA graph.

    Calls return the graph's output buffer, which the next call overwrites; the
    sampler uses each score before asking for the next. On a CPU it calls the model.
    The model is converted to channels_last in place when that switch is on.
    """

    def __init__(self, model: torch.nn.Module, batch_shape, switches: SpeedSwitches | None = None) -> None:
        device = next(model.parameters()).device
        self.switches = switches or SpeedSwitches.for_device(device)
        self.device = device
        if self.switches.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = self.switches.compiled(model)
        self.graph = None
        if self.switches.cuda_graphs:
            self.static_x = static_input(batch_shape, device, self.switches.memory_format)
            self.static_sigma = torch.ones(batch_shape[0], device=device)
            with torch.no_grad():
                self.graph, self.static_out = capture_cuda_graph(lambda: self._forward(self.static_x, self.static_sigma), device)

    def _forward(self, x, sigma):
        with self.switches.autocast(self.device):
            return self.model(x, sigma).float()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            return self._forward(x.contiguous(memory_format=self.switches.memory_format), sigma)
        self.static_x.copy_(x)
        self.static_sigma.copy_(sigma)
        self.graph.replay()
        return self.static_out
