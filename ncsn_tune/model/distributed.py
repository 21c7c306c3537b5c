"""Training on several GPUs (or CPU processes) with torch.distributed, launched by torchrun.

``torchrun --nproc_per_node N -m ncsn_tune train ...`` (or ``ncsn-tune train --gpus N``,
which runs exactly that) starts N processes; each reads RANK, WORLD_SIZE and
LOCAL_RANK from its environment and joins one process group (NCCL on GPUs,
gloo on CPUs), with a timeout so that a rank that dies or hangs ends the
others with a message instead of a hang.

The semantics are those of one GPU with the global batch: every rank draws
the same global batch (indices, flips, scale indices and noise) from
identically seeded generators and keeps its 1/N shard; DistributedDataParallel
averages the gradients, so parameters, Adam and EMA stay identical on every
rank, and a checkpoint (written by rank 0) resumes on any number of GPUs.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import NcsnTuneError


@dataclass
class Distributed:
    """This process's place in the group (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str, timeout_s: float = 600.0) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            device_id = None
            if device_type == "cuda":
                torch.cuda.set_device(local_rank)
                device_id = torch.device("cuda", local_rank)  # named, so NCCL never guesses a rank's GPU
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), device_id=device_id)
        return cls(rank, world, local_rank)

    def device(self, requested: torch.device) -> torch.device:
        return torch.device("cuda", self.local_rank) if requested.type == "cuda" else requested

    def shard(self, global_batch: int) -> slice:
        if global_batch % self.world:
            raise NcsnTuneError(f"the batch size {global_batch} must be divisible by the number of processes ({self.world})")
        per = global_batch // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over ranks (the tensor itself on one rank)."""
        if not self.active:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is True on any rank."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def torchrun_command(args: list[str], processes: int) -> list[str]:
    """The command that runs ``ncsn-tune <args>`` under torchrun with ``processes`` processes on this machine
    (any ``--gpus N`` / ``--gpus=N`` removed from ``args``)."""
    import sys

    if processes < 1:
        raise NcsnTuneError(f"the number of processes must be at least 1, got {processes}", fields="gpus")
    cleaned, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--gpus":
            skip = True
        elif not a.startswith("--gpus="):
            cleaned.append(a)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m", "ncsn_tune", *cleaned]


def relaunch_under_torchrun(args: list[str], processes: int) -> int:
    """Run :func:`torchrun_command` and return its exit status."""
    import subprocess

    return subprocess.call(torchrun_command(args, processes))


def select_local_gpu() -> bool:
    """Under torchrun, put this process on its own GPU before anything touches CUDA (T1 included); returns
    whether it is rank 0, the one that prints and writes the run folder (True when not under torchrun)."""
    if "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    return int(os.environ.get("RANK", "0")) == 0
