"""Compiling in the background, so that nobody waits for torch.compile: the training step, and the sampling network.

A cold torch.compile of the NCSNv2 training step takes over a minute (87 s on an H100) before the first
step. Instead the trainer starts at once with the CUDA-graph step (26 it/s there) and starts this module
in a separate process: it builds the same network, optimiser and step with torch.compile, runs one step
on random data (compiling everything), saves the compiled artefacts in the run folder and exits. Its
compiled graphs land in the persistent compile cache shared by both processes, so when it is done the
trainer builds the compiled step from that cache (a warm compile, about 10 s) and continues at full
speed (48 it/s). The weights never leave the trainer: compiled code depends only on shapes and types.

The same holds for the network's forward pass at the batch ``sample`` and ``evaluate`` use (:class:`ScoreSpec`):
compiled while the run trains, its artefacts are in the run folder when training ends, so the first
``sample`` on the run starts warm (about 14 s on an H100) instead of compiling (about 45 s).

    python -m ncsn_tune.model.precompile SPEC.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """The network and the batch a compiled graph is built for (the weights do not matter: compiled code depends
    only on shapes and types)."""

    channels: int
    image_size: int
    ngf: int
    architecture: str
    num_scales: int
    batch: int


@dataclasses.dataclass(frozen=True)
class StepSpec(NetworkSpec):
    """What determines the compiled training step: the network, the batch and the switches; its artefacts go to
    ``artefacts``."""

    switches: dict
    artefacts: str

    kind = "train"


@dataclasses.dataclass(frozen=True)
class ScoreSpec(NetworkSpec):
    """What determines the compiled sampling network: the network and the batch (``sample``'s and ``evaluate``'s
    default, :func:`ncsn_tune.model.accel.score_batch_size`); its artefacts go to ``run_dir``/compile_cache."""

    run_dir: str

    kind = "score"


def log_path(folder: Path, kind: str) -> Path:
    """Where the background compile of ``kind`` writes its output."""
    return Path(folder) / ("precompile.log" if kind == "train" else f"precompile_{kind}.log")


def start(spec: StepSpec | ScoreSpec, folder: Path, threads: int | None = None) -> subprocess.Popen:
    """Start the background compilation (its output goes to :func:`log_path`), with at most ``threads`` compile
    workers (torch's default: one per core)."""
    spec_file = Path(folder) / f"precompile_{spec.kind}_spec.json"
    spec_file.write_text(json.dumps({"kind": spec.kind, **dataclasses.asdict(spec)}))
    env = dict(os.environ, TORCHINDUCTOR_COMPILE_THREADS=str(threads)) if threads else None
    with open(log_path(folder, spec.kind), "w") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen([sys.executable, "-m", "ncsn_tune.model.precompile", str(spec_file)], stdout=log,
                                stderr=subprocess.STDOUT, env=env)


def compile_step(spec: StepSpec) -> None:
    import torch

    from ..config import TrainConfig
    from .accel import SpeedSwitches, mark_built, save_artefacts, use_fast_kernels, use_persistent_cache
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
    saved = save_artefacts(Path(spec.artefacts))
    mark_built(Path(spec.artefacts).stem)
    print(f"compiled; {saved or 'nothing to save'}", flush=True)


def compile_score(spec: ScoreSpec) -> None:
    """Build the sampling network's compiled forward pass as ``sample`` does (:func:`~ncsn_tune.model.accel.fast_score`),
    which saves its artefacts in the run folder."""
    import torch

    from .accel import fast_score
    from .network import NCSNv2

    model = NCSNv2(spec.channels, spec.image_size, spec.ngf, spec.architecture, sigmas=[1.0] * spec.num_scales)
    model = model.to(torch.device("cuda")).eval()
    notes: list[str] = []
    fast_score(model, (spec.batch, spec.channels, spec.image_size, spec.image_size), compile=True, run_dir=Path(spec.run_dir),
               notes=notes)
    torch.cuda.synchronize()
    print("compiled the sampling network\n" + "\n".join(notes), flush=True)


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    kind = spec.pop("kind", "train")
    if kind == "score":
        compile_score(ScoreSpec(**spec))
    else:
        compile_step(StepSpec(**spec))


if __name__ == "__main__":
    main(sys.argv[1])
