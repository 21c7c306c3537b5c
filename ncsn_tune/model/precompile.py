"""Compiling in the background, so that nobody waits for torch.compile: the training step, and the sampling network.

A cold torch.compile of the NCSNv2 training step takes over a minute (87 s on an H100) before the first
step. Instead the trainer starts at once with the CUDA-graph step (26 it/s there) and starts this module
in a separate process: it builds the same network, optimiser and step with torch.compile, runs one step
on random data (compiling everything), saves the compiled artefacts in the user's own artefact folder (:func:`~.cache.artefact_dir`) and exits. Its
compiled graphs land in the persistent compile cache shared by both processes, so when it is done the
trainer builds the compiled step from that cache (a warm compile, about 10 s) and continues at full
speed (48 it/s). The weights never leave the trainer: compiled code depends only on shapes and types.

The same holds for the network's forward pass at the batch ``sample`` and ``evaluate`` use (:class:`ScoreSpec`):
compiled while the run trains, its artefacts are kept when training ends, so the first
``sample`` on the run starts warm (about 14 s on an H100) instead of compiling (about 45 s).

:class:`BackgroundCompiles` owns both for a training run (one at a time, the step's first), and
:func:`plan_compiles` decides, from the work planned and what is at hand, what the run compiles and when.

    python -m ncsn_tune.model.precompile SPEC.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


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
    default, :func:`ncsn_tune.model.accel.score_batch_size`); its artefacts go to the user's own artefact folder."""

    run_dir: str

    kind = "score"


def log_path(folder: Path, kind: str) -> Path:
    """Where the background compile of ``kind`` writes its output."""
    return Path(folder) / ("precompile.log" if kind == "train" else f"precompile_{kind}.log")


def start(spec: StepSpec | ScoreSpec, folder: Path, threads: int | None = None) -> subprocess.Popen:
    """Start the background compilation (its output goes to :func:`log_path`), with at most ``threads`` compile
    workers (torch's default: one per core)."""
    from ..files import atomic_write_bytes

    spec_file = Path(folder) / f"precompile_{spec.kind}_spec.json"
    atomic_write_bytes(spec_file, json.dumps({"kind": spec.kind, **dataclasses.asdict(spec)}).encode())  # replaces a link, never follows it
    env = dict(os.environ, TORCHINDUCTOR_COMPILE_THREADS=str(threads)) if threads else None
    log_file = log_path(folder, spec.kind)
    if log_file.is_symlink():
        log_file.unlink()  # a link planted where the log goes is removed, not written through
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(log_file, flags, 0o644), "w") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen([sys.executable, "-m", "ncsn_tune.model.precompile", str(spec_file)], stdout=log,
                                stderr=subprocess.STDOUT, env=env)


def compile_step(spec: StepSpec) -> None:
    import torch

    from ..config import TrainConfig
    from .ema import EMA
    from .network import NCSNv2
    from .step import TrainStep, build_optimizer
    from .accel.cache import mark_built, save_artefacts, use_persistent_cache
    from .accel.fast import SpeedSwitches, use_fast_kernels

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
    which saves its artefacts in the user's own artefact folder."""
    import torch

    from .network import NCSNv2
    from .accel.switching import fast_score

    model = NCSNv2(spec.channels, spec.image_size, spec.ngf, spec.architecture, sigmas=[1.0] * spec.num_scales)
    model = model.to(torch.device("cuda")).eval()
    notes: list[str] = []
    fast_score(model, (spec.batch, spec.channels, spec.image_size, spec.image_size), compile=True, run_dir=Path(spec.run_dir),
               notes=notes)
    torch.cuda.synchronize()
    print("compiled the sampling network\n" + "\n".join(notes), flush=True)


@dataclasses.dataclass
class CompilePlan:
    """What a training run compiles: the switches it starts with, the compile cache of its step (when it compiles first),
    why, and what it compiles in the background (the step, to switch to; the sampling network, for sample/evaluate)."""

    switches: object
    cache: object = None
    note: str | None = None
    step: StepSpec | None = None
    compiled_switches: object = None
    score: ScoreSpec | None = None
    score_s: float = 0.0


def plan_compiles(config, model, run_dir: Path, device, batch: int, steps_left: int, distributed: bool, main: bool) -> CompilePlan:
    """On a GPU: torch.compile the training step now, in the background, or not, when the configuration leaves it open
    (:func:`~.policy.decide_compile`, from the steps to go and whether the compiled step is at hand, in the user's artefact folder
    or this machine's compile cache); and whether the sampling network is compiled beside the run (:func:`plan_score`)."""
    from .step import speed_switches
    from .accel.cache import CompileCache
    from .compile_policy import TRAIN_COSTS, decide_compile

    wanted = speed_switches(config, device, distributed, compile=True)
    image_shape = (model.channels, model.image_size, model.image_size)
    cache = CompileCache(run_dir, "train", model, (batch, *image_shape), wanted)
    plan = CompilePlan(speed_switches(config, device, distributed))
    if config.compile is None:
        background = wanted.cuda_graphs and not distributed
        verdict, plan.note = decide_compile(steps_left, cache.at_hand, TRAIN_COSTS, "steps", background)
        plan.switches = wanted if verdict == "compile" else dataclasses.replace(wanted, compile=False)
        if verdict == "background":
            plan.step = StepSpec(image_shape[0], image_shape[1], config.ngf, model.architecture, len(model.sigmas), batch,
                                 dataclasses.asdict(wanted), str(cache.path))
            plan.compiled_switches = wanted
    if plan.switches.compile:
        plan.cache = cache
    if config.compile is not False and main:
        plan.score, plan.score_s = plan_score(model, run_dir, device)
    return plan


def plan_score(model, run_dir: Path, device) -> tuple[ScoreSpec | None, float]:
    """The sampling network a run compiles beside itself (at the batch ``sample`` and ``evaluate`` use), and how long that
    takes; (None, 0) when that graph's artefacts are kept already."""
    from .accel.fast import score_batch_size
    from .accel.switching import score_cache
    from .compile_policy import SCORE_COMPILE_COLD_S, SCORE_COMPILE_WARM_S

    image_shape = (model.channels, model.image_size, model.image_size)
    batch = score_batch_size(image_shape, device)
    cache = score_cache(run_dir, model, (batch, *image_shape))
    if cache.exists:
        return None, 0.0
    spec = ScoreSpec(image_shape[0], image_shape[1], model.ngf, model.architecture, len(model.sigmas), batch, str(run_dir))
    return spec, SCORE_COMPILE_WARM_S if cache.built_here else SCORE_COMPILE_COLD_S


class BackgroundCompiles:
    """The compiles a training run runs beside itself, one at a time, and what it says of them (``say(text)``).

    First the training step's (``step``, a :class:`StepSpec`), then the sampling network's (``score``, a
    :class:`ScoreSpec`), which starts only when the steps left (``seconds_left()``) take longer than compiling it
    (``score_s`` seconds). :meth:`poll` every ``every`` steps switches to the compiled step once its compile is done
    (``rebuild()`` builds it; the switches it was built with are ``compiled_switches``); :meth:`close` stops what still
    runs when training ends. Processes come from :func:`start`."""

    def __init__(self, run_dir: Path, *, step: StepSpec | None = None, compiled_switches=None, score: ScoreSpec | None = None,
                 score_s: float = 0.0, seconds_left: Callable[[], float] = lambda: 0.0, say: Callable[[str], None] = print,
                 every: int = 25) -> None:
        self.run_dir, self.step, self.compiled_switches, self.score, self.score_s = Path(run_dir), step, compiled_switches, score, score_s
        self.seconds_left, self.say, self.every = seconds_left, say, every
        self.training = self.sampling = None  # the running processes
        self.started = 0.0

    @classmethod
    def from_plan(cls, plan: CompilePlan, run_dir: Path, **kwargs) -> "BackgroundCompiles | None":
        if plan.step is None and plan.score is None:
            return None
        return cls(run_dir, step=plan.step, compiled_switches=plan.compiled_switches, score=plan.score, score_s=plan.score_s, **kwargs)

    def begin(self) -> None:
        """Start the training step's compile, or, when there is none, the sampling network's."""
        self.started = time.perf_counter()
        if self.step is not None:
            self.training = start(self.step, self.run_dir)
        else:
            self._start_score()

    def poll(self, step: int, step_fn, rebuild: Callable[[], object]):
        """Every ``every`` steps: the step to train with (the compiled one once its compile is done), the sampling
        network's compile started once the step's is over, and its end said."""
        if step % self.every:
            return step_fn
        if self.training is not None and self.training.poll() is not None:
            process, self.training = self.training, None
            if process.returncode != 0:
                self.say(f"the background compile failed (exit {process.returncode}; see {log_path(self.run_dir, 'train')}): training "
                         "goes on with the CUDA graph")
            else:
                t0 = time.perf_counter()
                del step_fn  # frees the first graph's memory pool before the second is captured
                step_fn = rebuild()
                self.say(f"switched to the compiled step at step {step}: compiled in the background in {t0 - self.started:.0f} s, "
                         f"loaded in {time.perf_counter() - t0:.1f} s")
            self._start_score()
        if self.sampling is not None:
            self._sampling_done(final=False)
        return step_fn

    def close(self) -> None:
        """The run is over: a compile still running is stopped (the training step's is not needed; the sampling
        network's is said)."""
        if self.training is not None and self.training.poll() is None:
            self.training.kill()
            self.training.wait()
        self.training = None
        if self.sampling is not None:
            self._sampling_done(final=True)

    def _start_score(self) -> None:
        spec, self.score = self.score, None
        if spec is None:
            return
        left_s = self.seconds_left()
        if left_s < self.score_s:
            self.say(f"the sampling network is not compiled beside this run: the steps left take about {left_s:.0f} s, compiling it "
                     f"about {self.score_s:.0f} s; the first sample on a GPU compiles it, or runs on the CUDA graph alone")
            return
        self.say(f"compiling the sampling network (batch {spec.batch}) in the background, so that sample and evaluate on this run "
                 f"start without compiling ({log_path(self.run_dir, 'score')})")
        self.started = time.perf_counter()
        self.sampling = start(spec, self.run_dir, threads=max(1, (os.cpu_count() or 2) - 2))  # leave the training a core or two

    def _sampling_done(self, final: bool) -> None:
        process = self.sampling
        if process.poll() is None:
            if not final:
                return
            process.kill()
            process.wait()
            self.say("training ended before the sampling network was compiled: the first sample on a GPU compiles it, or runs on the "
                     "CUDA graph alone")
        elif process.returncode != 0:
            self.say(f"compiling the sampling network in the background failed (exit {process.returncode}; see "
                     f"{log_path(self.run_dir, 'score')}); sample and evaluate will compile it")
        else:
            self.say(f"compiled the sampling network in the background in {time.perf_counter() - self.started:.0f} s: sample and "
                     "evaluate on this run load it from this user's compile cache")
        self.sampling = None


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    kind = spec.pop("kind", "train")
    if kind == "score":
        compile_score(ScoreSpec(**spec))
    else:
        compile_step(StepSpec(**spec))


if __name__ == "__main__":
    main(sys.argv[1])
