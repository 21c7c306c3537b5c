"""The mechanism of speed on a GPU: which switches apply (:class:`SpeedSwitches`), the one CUDA-graph capture
(:func:`capture_cuda_graph`, used by the training step and by :class:`FastScore`), and the network's batch on a GPU.
On a CPU every switch is off and the model is called as it is."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from .cache import use_persistent_cache


@dataclasses.dataclass(frozen=True)
class SpeedSwitches:
    """The speed switches that apply on a device (all off on a CPU)."""

    bf16: bool = True
    channels_last: bool = True
    fused_adam: bool = True
    compile: bool = False
    cuda_graphs: bool = True
    compile_mode: str = "default"
    #: "model": one graph for the whole network; "blocks": each residual and refine block compiled on its own
    #: (regional compilation: blocks of the same shape share one compiled graph).
    compile_scope: str = "model"

    @classmethod
    def for_device(cls, device: torch.device, *, bf16=True, channels_last=True, fused_adam=True, compile=False, cuda_graphs=True,
                   compile_mode="default", compile_scope="model", distributed: bool = False) -> "SpeedSwitches":
        """The requested switches that apply on ``device``; CUDA graphs are left out under DistributedDataParallel
        (its gradient hooks run outside a captured graph)."""
        gpu = torch.device(device).type == "cuda"
        return cls(bf16 and gpu, channels_last and gpu, fused_adam and gpu, compile and gpu, cuda_graphs and gpu and not distributed,
                   compile_mode, compile_scope)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device):
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=self.bf16)

    def compiled(self, module: torch.nn.Module) -> Callable:
        """``module`` compiled as the switches say, or as it is. ``blocks``: in place, each submodule whose class a module
        inside names in ``_repeated_blocks`` (a wrapper such as DistributedDataParallel names none itself) compiled on its
        own; the whole module when none are named."""
        if not self.compile:
            return module
        use_persistent_cache()
        repeated = {name for sub in module.modules() for name in getattr(sub, "_repeated_blocks", ())}
        if self.compile_scope == "blocks" and repeated:
            for sub in module.modules():
                if type(sub).__name__ in repeated:
                    sub.compile(mode=self.compile_mode)
            return module
        return torch.compile(module, mode=self.compile_mode)


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


#: Values per batch of the network's forward pass on a GPU: 1,000 CIFAR-10 images (3x32x32). On an H100 the
#: compiled forward runs 17,050 image evaluations/s at batch 100 and 20,700/s at 1,000 (docs/results/sample_speed_h100.log).
GPU_BATCH_VALUES = 1000 * 3 * 32 * 32


def score_batch_size(image_shape, device: torch.device, num: int | None = None, cpu: int = 100, requested: int | None = None) -> int:
    """Images per forward pass of the network when sampling or evaluating ``num`` images (None: as many as wanted)
    of ``image_shape`` (C, H, W): ``requested`` if given, else on a GPU as many as hold :data:`GPU_BATCH_VALUES`
    values (1,000 CIFAR-10 images, fewer for larger images), on a CPU ``cpu``; never more than ``num``."""
    if requested is not None:
        most = requested
    elif torch.device(device).type == "cuda":
        most = max(1, GPU_BATCH_VALUES // math.prod(int(n) for n in image_shape))
    else:
        most = cpu
    return max(1, most if num is None else min(num, most))


def use_fast_kernels(device: torch.device) -> None:
    """On a GPU, let cuDNN time its convolution algorithms for each shape and keep the fastest (unless the user
    asked for deterministic kernels): the network's speeds in benchmarks/ were measured this way."""
    if torch.device(device).type == "cuda" and not torch.backends.cudnn.deterministic:
        torch.backends.cudnn.benchmark = True


class FastScore:
    """A score model for a fixed batch shape, fast on a GPU: bf16 autocast, channels_last, optional
    ``torch.compile`` (or ``compiled``, the model compiled already), and the forward pass captured in one CUDA graph.

    Calls return the graph's output buffer, which the next call overwrites; the
    sampler uses each score before asking for the next. A smaller batch than the
    graph's is served by the graph's first rows (the network treats every image on
    its own). On a CPU it calls the model. The model is converted to channels_last
    in place when that switch is on.
    """

    def __init__(self, model: torch.nn.Module, batch_shape, switches: SpeedSwitches | None = None,
                 compiled: Callable | None = None) -> None:
        device = next(model.parameters()).device
        self.switches = switches or SpeedSwitches.for_device(device)
        self.device = device
        self.batch_shape = tuple(batch_shape)
        use_fast_kernels(device)
        if self.switches.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = compiled if compiled is not None else self.switches.compiled(model)
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
        n = x.shape[0]
        if n > self.batch_shape[0] or tuple(x.shape[1:]) != self.batch_shape[1:]:
            raise ValueError(f"this score was captured for batches of {self.batch_shape}, got {tuple(x.shape)}")
        self.static_x[:n].copy_(x)
        self.static_sigma[:n].copy_(sigma)
        self.graph.replay()
        return self.static_out if n == self.batch_shape[0] else self.static_out[:n]
