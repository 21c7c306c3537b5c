"""One training step and what it is built from: the model, Adam, the speed switches that apply, and :class:`TrainStep`
(DSM loss, backward, Adam and the EMA update; on a GPU optionally one CUDA graph, the network optionally compiled)."""

from __future__ import annotations

import numpy as np
import torch

from ..config import TrainConfig
from ..errors import NcsnTuneError
from .accel.fast import SpeedSwitches, capture_cuda_graph, static_input
from .distributed import Distributed
from .ema import EMA
from .loss import dsm_loss
from .network import NCSNv2


def speed_switches(config: TrainConfig, device: torch.device, distributed: bool = False, compile: bool | None = None) -> SpeedSwitches:
    """The configuration's speed switches that apply on ``device`` (``compile`` decides when the configuration leaves it open)."""
    return SpeedSwitches.for_device(device, bf16=config.bf16, channels_last=config.channels_last, fused_adam=config.fused_adam,
                                    compile=bool(config.compile if config.compile is not None else compile),
                                    cuda_graphs=config.cuda_graphs, compile_mode=config.compile_mode,
                                    compile_scope=config.compile_scope, distributed=distributed)


def build_model(config: TrainConfig, image_shape: tuple[int, int, int], sigmas: np.ndarray) -> NCSNv2:
    if len(image_shape) != 3:
        raise NcsnTuneError(f"NCSNv2 trains on images (C, H, W); this data holds vectors of shape {tuple(image_shape)}", fields="data")
    channels, height, width = image_shape
    if height != width:
        raise NcsnTuneError(f"NCSNv2 needs square images, got {height}x{width}", fields="data")
    return NCSNv2(channels, height, config.ngf, config.architecture, sigmas=np.asarray(sigmas, dtype=np.float32))


def build_optimizer(model: torch.nn.Module, config: TrainConfig, switches: SpeedSwitches) -> torch.optim.Adam:
    extra = {"fused": True, "capturable": switches.cuda_graphs} if switches.fused_adam else {"foreach": True, "capturable": switches.cuda_graphs}
    return torch.optim.Adam(
        model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2), eps=config.adam_eps, weight_decay=config.weight_decay, **extra
    )


class TrainStep:
    """One optimisation step on a batch: DSM loss, backward, Adam, EMA; optionally one CUDA graph.

    ``__call__(x)`` returns the (device) loss of that step. With CUDA graphs the
    batch is copied into a static input buffer and the captured step replayed.
    """

    def __init__(self, model, optimizer, ema: EMA, sigmas: torch.Tensor, switches: SpeedSwitches, batch_shape, device, warmup: int = 3,
                 dist: Distributed | None = None):
        self.model, self.optimizer, self.ema, self.sigmas, self.switches = model, optimizer, ema, sigmas, switches
        self.dist = dist or Distributed()
        self.global_batch = batch_shape[0] * self.dist.world
        self.shard = self.dist.shard(self.global_batch) if self.dist.active else None
        network = model
        if self.dist.active:  # PyTorch's own engine: gradients averaged by DistributedDataParallel
            from torch.nn.parallel import DistributedDataParallel

            network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.forward = switches.compiled(network)
        self.graph = None
        self.device = device
        if switches.cuda_graphs:
            self.static_x = static_input(batch_shape, device, switches.memory_format)
            restore = self._snapshot()
            self.graph, self.static_loss = capture_cuda_graph(lambda: self._eager(self.static_x), device, warmup, after_warmup=restore)

    def _loss(self, x):
        with self.switches.autocast(self.device):
            return dsm_loss(self.forward, x, self.sigmas, shard=self.shard, global_batch=self.global_batch)

    def _eager(self, x):
        loss = self._loss(x)
        self.optimizer.zero_grad(set_to_none=True)  # only drops references: inside a capture the gradients come from its pool
        loss.backward()
        self.optimizer.step()
        self.ema.update(self.model)
        return loss.detach()

    def _snapshot(self):
        """A function that puts weights, EMA, Adam state and the CUDA random state back as they are now: the
        warm-up before a capture trains on a dummy batch, which must leave no trace."""
        saved_params = [p.detach().clone() for p in self.model.parameters()]
        saved_shadow = [s.clone() for s in self.ema.shadow]
        saved_adam = {p: {k: v.clone() for k, v in st.items() if torch.is_tensor(v)} for p, st in self.optimizer.state.items()}
        rng = torch.cuda.get_rng_state(self.device)

        def restore() -> None:
            with torch.no_grad():
                for p, s in zip(self.model.parameters(), saved_params):
                    p.copy_(s)
                for e, s in zip(self.ema.shadow, saved_shadow):
                    e.copy_(s)
                for param, state in self.optimizer.state.items():  # a fresh run's state is all zeros
                    for key, value in state.items():
                        if torch.is_tensor(value):
                            value.copy_(saved_adam[param][key]) if param in saved_adam else value.zero_()
            torch.cuda.set_rng_state(rng, self.device)
            self.optimizer.zero_grad(set_to_none=True)

        return restore

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            return self._eager(x)
        self.static_x.copy_(x)
        self.graph.replay()
        return self.static_loss.detach().clone()
