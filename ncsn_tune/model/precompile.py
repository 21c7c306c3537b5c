"""Compiling a training step in the background, so that a run does not wait for torch.compile.

A cold torch.compile of the NCSNv2 training step takes over a minute (87 s on an H100) before the first
step. Instead the trainer starts at once with the CUDA-graph step (26 it/s there) and starts this module
in a separate process: it builds the same network, optimiser and step with torch.compile, runs one step
on random data (compiling everything), saves the compiled artefacts in the run folder and exits. Its
compiled graphs land in the persistent compile cache shared by both processes, so when it is done the
trainer builds the compiled step from that cache (a warm compile, about 10 s) and continues at full
speed (48 it/s). The weights never leave the trainer: compiled code depends only on shapes and types.

    python -m ncsn_tune.model.precompile SPEC.json
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What determines the compiled training step: the network, the batch and the switches."""

    channels: int
    image_size: int
    ngf: int
    architecture: str
    num_scales: int
    batch: int
    switches: dict
    artefacts: str

    def to_file(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(dataclasses.asdict(self)))
        return Path(path)


def start(spec: StepSpec, folder: Path) -> subprocess.Popen:
    """Start the background compilation (its output goes to ``folder``/precompile.log)."""
    spec_file = spec.to_file(Path(folder) / "precompile_spec.json")
    with open(Path(folder) / "precompile.log", "w") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen([sys.executable, "-m", "ncsn_tune.model.precompile", str(spec_file)], stdout=log,
                                stderr=subprocess.STDOUT)


def compile_step(spec: StepSpec) -> None:
    import torch

    from ..config import TrainConfig
    from ..files import atomic_write_bytes
    from .accel import SpeedSwitches, use_fast_kernels, use_persistent_cache
    from .ema import EMA
    from .network import NCSNv2
    from .train import TrainStep, build_optimizer

    use_persistent_cache()
    device = torch.device("cuda")
    use_fast_kernels(device)
    switches = SpeedSwitches(**spec.switches)
    model = NCSNv2(spec.channels, spec.image_size, spec.ngf, spec.architecture, sigmas=[1.0] * spec.num_scales).to(device)
    if switches.channels_last:
        model = model.to(memory_format=torch.channels_last)
    sigmas = torch.ones(spec.num_scales, device=device)
    batch = (spec.batch, spec.channels, spec.image_size, spec.image_size)
    step = TrainStep(model, build_optimizer(model, TrainConfig(), switches), EMA(model), sigmas, switches, batch, device)
    step(torch.rand(batch, device=device).contiguous(memory_format=switches.memory_format))
    torch.cuda.synchronize()
    saved = torch.compiler.save_cache_artifacts()
    if saved is not None:
        atomic_write_bytes(Path(spec.artefacts), saved[0])
    print(f"compiled; artefacts {'saved to ' + spec.artefacts if saved else 'not saved'}", flush=True)


if __name__ == "__main__":
    compile_step(StepSpec(**json.loads(Path(sys.argv[1]).read_text())))
