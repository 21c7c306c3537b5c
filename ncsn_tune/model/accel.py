"""Speed on a GPU, in one place: bf16 autocast, channels_last, torch.compile and CUDA graphs.

:class:`SpeedSwitches` says which apply on a device; :func:`capture_cuda_graph`
is the one capture routine (warm-up on a side stream, then one graph), used by
the trainer's step (:class:`ncsn_tune.model.train.TrainStep`) and by the
sampler's score (:class:`FastScore`). On a CPU every switch is off and the
model is called as it is.

Compiling costs time before the first step, so whether it pays is decided from
the work planned (:func:`decide_compile`, with costs measured by
``benchmarks/startup.py``), and what it produced is kept: torch's caches live
in ncsn_tune's user cache folder (not /tmp, which a reboot or a new container
empties), and the compiled artefacts of a run are saved in its folder
(``compile_cache/``) so that continuing it on another machine, or sampling from
it, loads them instead of compiling again (:class:`CompileCache`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from pathlib import Path
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
        """``module`` compiled as the switches say (in place for ``blocks``), or as it is."""
        if not self.compile:
            return module
        use_persistent_cache()
        if self.compile_scope == "blocks":
            from .network import RefineBlock, ResidualBlock

            for sub in module.modules():
                if isinstance(sub, (ResidualBlock, RefineBlock)):
                    sub.compile(mode=self.compile_mode)
            return module
        return torch.compile(module, mode=self.compile_mode)


# ---------------------------------------------------------------------------------------------- keeping what compiling made


def use_persistent_cache() -> Path:
    """Point torch's compile caches at ncsn_tune's user cache folder, unless the user chose one.

    A TORCHINDUCTOR_CACHE_DIR equal to torch's own default (:func:`torch_default_cache_dir`) is torch's choice,
    not the user's: importing TorchDynamo, which building an Adam optimiser does, sets it when it is unset."""
    from ..files import cache_dir

    folder = cache_dir() / "torch_compile"
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == torch_default_cache_dir():
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor")
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def torch_default_cache_dir() -> str:
    """/tmp/torchinductor_<user>: where torch's compiler caches when TORCHINDUCTOR_CACHE_DIR is unset (as
    ``torch._inductor.runtime.cache_dir_utils.default_cache_dir`` says; importing that module would import the
    whole compiler, seconds on a GPU machine)."""
    import getpass
    import re
    import tempfile

    try:
        user = getpass.getuser()
    except (KeyError, ModuleNotFoundError, OSError):
        user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
    return os.path.abspath(os.path.join(tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user)))


def built_marker(name: str) -> Path:
    """The file that says the graph ``name`` (a :class:`CompileCache` artefact's stem) is in this machine's compile
    cache; it lives inside that cache, so emptying the cache forgets it too."""
    return use_persistent_cache() / "ncsn_tune_built" / name


def mark_built(name: str) -> None:
    marker = built_marker(name)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


class CompileCache:
    """The compiled artefacts of one graph (training step or sampling score) of one run, kept in the run folder.

    ``key`` names what was compiled (torch version, GPU, network, batch shape, switches): artefacts of
    another key are never loaded. :meth:`load` before compiling makes it a warm start; :meth:`save` after
    it keeps what this process compiled (torch's portable cache artefacts) for the next one.
    """

    def __init__(self, run_dir: Path, kind: str, model: torch.nn.Module, batch_shape, switches: SpeedSwitches) -> None:
        device = next(model.parameters()).device
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        what = (kind, torch.__version__, gpu, type(model).__name__, getattr(model, "architecture", ""), getattr(model, "ngf", ""),
                getattr(model, "channels", ""), getattr(model, "image_size", ""), tuple(batch_shape), switches.bf16,
                switches.channels_last, switches.compile_mode, switches.compile_scope)
        self.key = hashlib.sha256(repr(what).encode()).hexdigest()[:16]
        self.path = Path(run_dir) / "compile_cache" / f"{kind}_{self.key}.bin"
        self.loaded = False  # whether load() put this graph's artefacts in torch's caches (nothing new to save then)

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    @property
    def built_here(self) -> bool:
        """Whether this machine's compile cache holds this graph (:meth:`mark_built` was called since it was last emptied)."""
        return built_marker(self.path.stem).is_file()

    @property
    def at_hand(self) -> bool:
        """Whether this graph's compiled code is at hand: in the run folder's artefacts or in this machine's compile cache."""
        return self.exists or self.built_here

    def mark_built(self) -> None:
        """Record that this graph has been compiled into this machine's compile cache (loading the run's artefacts
        again would only cost time)."""
        mark_built(self.path.stem)

    def load(self) -> str | None:
        """Load the saved artefacts into torch's caches; a note, or None when there are none.

        When this machine's compile cache already holds the graph (:attr:`built_here`), nothing is loaded: it would
        repeat what the cache holds and cost about 1.5 s more before the first call on an H100
        (``benchmarks/score_warm_start.py``)."""
        if not self.exists:
            return None
        use_persistent_cache()
        if self.built_here:
            self.loaded = True
            return f"this machine's compile cache holds this graph already: a warm start without loading {self.path.name}"
        try:
            torch.compiler.load_cache_artifacts(self.path.read_bytes())
        except Exception as err:  # noqa: BLE001  (a stale or foreign cache only costs a full compile)
            return f"could not load the compiled artefacts {self.path.name} ({type(err).__name__}); compiling afresh"
        self.loaded = True
        return f"loaded the compiled artefacts {self.path} (no full compile)"

    def save(self) -> str | None:
        return save_artefacts(self.path)


def save_artefacts(path: Path) -> str | None:
    """What this process compiled (torch's portable cache artefacts) into ``path``, atomically; a note, or None when
    there was nothing to save."""
    from ..files import atomic_write_bytes

    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return None
    atomic_write_bytes(Path(path), saved[0])
    return f"saved the compiled artefacts to {path} ({len(saved[0]) / 1e6:.1f} MB)"


# ---------------------------------------------------------------------------------------------- whether compiling pays


@dataclasses.dataclass(frozen=True)
class CompileCosts:
    """What compiling costs and saves, measured on one H100 with the CIFAR-10 configuration
    (``benchmarks/startup.py``); other GPUs and image sizes differ, so decisions made from it are estimates."""

    #: Seconds per unit of work (a training step at batch 128, or one network evaluation of one image) without
    #: and with torch.compile, both inside a CUDA graph.
    graph_s: float
    compiled_s: float
    #: Seconds of compiling before the first step, with empty caches (cold) and with this graph's artefacts (warm).
    cold_s: float
    warm_s: float


#: Training, per step at batch 128: 26.2 and 48.0 it/s; compiling cost 87.0 s before the first step cold and 9.6 s
#: from the run's artefacts, against 12.6 s for the CUDA graph alone (docs/results/startup_h100.log).
TRAIN_COSTS = CompileCosts(graph_s=1 / 26.2, compiled_s=1 / 48.0, cold_s=87.0 - 12.6, warm_s=10.0)
#: Sampling, per image evaluation at batch 1000: 12,488 and 20,600 evaluations/s; compiling cost 38.8 s cold, against
#: 1.1 s for the CUDA graph alone; from a run's artefacts, loading them took 7.1 s and building the compiled graph 8.9 s
#: (docs/results/sample_phases_h100.log).
SAMPLE_COSTS = CompileCosts(graph_s=1 / 12488, compiled_s=1 / 20600, cold_s=38.8 - 1.1, warm_s=7.1 + 8.9 - 1.1)


def decide_compile(work: float, warm: bool, costs: CompileCosts, unit: str, background: bool = False) -> tuple[str, str]:
    """(``compile`` | ``background`` | ``off``, why), from the planned ``work`` in ``costs``' units.

    Warm (the artefacts are there): compile first when it saves more than the warm compile costs. Cold:
    with ``background``, compile in another process while the work starts on the CUDA-graph path, and switch
    (loading what that process compiled costs ``costs.warm_s``) when the work left then saves more than the
    switch costs; without it, compile first when the whole work saves more than a cold compile costs.
    """
    per_unit = costs.graph_s - costs.compiled_s
    how = "estimates measured on an H100; --compile/--no-compile decide instead"
    if warm:
        saved = work * per_unit
        verdict = "compile" if saved > costs.warm_s else "off"
        return verdict, (f"torch.compile {'on' if verdict == 'compile' else 'off'}: {work:,.0f} {unit} to go and this graph's compiled "
                         f"artefacts are cached (about {costs.warm_s:.0f} s to load, saving about {saved:.0f} s; {how})")
    if background:
        left = work - costs.cold_s / costs.graph_s  # what remains once the background compile is done
        saved = left * per_unit - costs.warm_s
        verdict = "background" if saved > 0 else "off"
        return verdict, (f"torch.compile {'in the background' if verdict == 'background' else 'off'}: {work:,.0f} {unit} to go; "
                         f"compiling takes about {costs.cold_s:.0f} s, so training starts on the CUDA graph "
                         + (f"and switches to the compiled step when it is ready (about {saved:.0f} s saved; {how})" if verdict == "background"
                            else f"and would finish before switching paid off ({how})"))
    saved = work * per_unit
    verdict = "compile" if saved > costs.cold_s else "off"
    return verdict, (f"torch.compile {'on' if verdict == 'compile' else 'off (CUDA graph only)'}: {work:,.0f} {unit} to go; compiling "
                     f"costs about {costs.cold_s:.0f} s (nothing cached yet) and would save about {saved:.0f} s ({how})")


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


def fast_score(model: torch.nn.Module, batch_shape, compile: bool = False, run_dir: Path | None = None,
               notes: list | None = None, switch_at: int = 0) -> FastScore | SwitchingScore:
    """The network as a :class:`FastScore` for ``batch_shape``, compiled with ``compile`` (on a GPU). With ``run_dir``
    the run folder's artefacts of this graph (:func:`score_cache`) are loaded before compiling and saved after a
    compile that did not come from them; what happened goes to ``notes``. With ``switch_at`` > 0 and torch's
    compiler not yet imported, a :class:`SwitchingScore` runs the first ``switch_at`` calls on the CUDA graph alone
    while the compiler is imported."""
    device = next(model.parameters()).device
    switches = SpeedSwitches.for_device(device, compile=compile)
    cache = score_cache(run_dir, model, batch_shape) if switches.compile and run_dir is not None else None
    notes = notes if notes is not None else []
    one_compile_thread_when_warm(cache)
    if switches.compile and switch_at > 0 and not compiler_imported():
        return SwitchingScore(model, batch_shape, switch_at, cache, notes)
    load_artefacts(cache, notes)
    score = FastScore(model, batch_shape, switches)
    keep_artefacts(cache, notes)
    return score


def one_compile_thread_when_warm(cache: CompileCache | None) -> None:
    """With this graph's compiled code at hand (in this machine's compile cache, or in the run folder), let torch
    compile in one thread: its pool of compile workers, which it starts when its compiler is imported, has nothing
    to do then and cost 3-4 s of the process on the H100 machine (``benchmarks/score_warm_start.py``: the whole
    process took 4-6 s more than being ready and running, against 1.3-1.7 s with one thread). A choice the user made
    (TORCHINDUCTOR_COMPILE_THREADS) stands, and nothing changes once the compiler is imported."""
    if cache is not None and cache.at_hand and not compiler_imported():
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")


def load_artefacts(cache: CompileCache | None, notes: list) -> None:
    """Before compiling: the run folder's artefacts of the graph into torch's caches, unless this machine's cache
    holds the graph already; what happened goes to ``notes``."""
    if cache is not None:
        notes.append(cache.load() or ("no compiled artefacts in the run folder yet, but this machine's compile cache holds this graph: "
                                      "a warm compile" if cache.built_here else "no compiled artefacts in the run folder yet: compiling"))


def keep_artefacts(cache: CompileCache | None, notes: list) -> None:
    """After compiling: the artefacts into the run folder (unless they came from it) and the graph recorded as built here."""
    if cache is not None:
        if not cache.loaded:
            saved = cache.save()
            if saved:
                notes.append(saved)
        cache.mark_built()


#: Seconds from starting to import torch's compiler (TorchDynamo, Inductor, Triton) to a compiled forward pass at batch
#: 1000, from a warm compile cache, in a thread beside the sampler on the H100 machine: the import takes 6.5 to 9.4 s
#: and the first compiled call 3.5-3.8 s (benchmarks/score_warm_start.py, docs/results/sample_phases_h100.log).
COMPILER_READY_S = 12.0


def compiler_imported() -> bool:
    import sys

    return "torch._inductor.compile_fx" in sys.modules


def import_compiler() -> None:
    import torch._dynamo  # noqa: F401
    import torch._inductor.compile_fx  # noqa: F401


def calls_while_importing(batch_size: int, calls: int) -> int:
    """How many of ``calls`` network calls at ``batch_size`` the CUDA graph alone does while torch's compiler is
    imported and the network compiled beside it (:data:`COMPILER_READY_S`, at :data:`SAMPLE_COSTS`' graph speed), at
    most half of them; 0 when the compiler is imported already (nothing to hide then)."""
    if compiler_imported():
        return 0
    return max(0, min(calls // 2, int(COMPILER_READY_S / (SAMPLE_COSTS.graph_s * batch_size))))


class SwitchingScore:
    """A score that runs its first ``switch_at`` calls on the CUDA graph alone (:class:`FastScore` without
    torch.compile) while a background thread imports torch's compiler, loads the run's artefacts (``cache``)
    and compiles the network with one call of its own; from call ``switch_at`` on, the compiled network,
    captured in a CUDA graph, runs the calls.

    Importing the compiler takes 6.5-9 s on the H100 machine and compiling from a warm cache 3.5 s more, work
    of the CPU that the sampler's first calls need not wait for. The switch comes at a fixed call, not when
    the compile is done, so the same seed gives the same samples; if the compile is slower, the switch waits
    for it. While the thread runs, Python switches threads every 0.5 ms instead of 5 ms, so that the sampler's
    few Python calls per step do not queue behind the import. What happened is appended to ``notes``.
    """

    def __init__(self, model: torch.nn.Module, batch_shape, switch_at: int, cache: CompileCache | None = None,
                 notes: list | None = None) -> None:
        import sys
        import threading

        self.model, self.batch_shape, self.switch_at, self.cache = model, tuple(batch_shape), switch_at, cache
        self.notes = notes if notes is not None else []
        self.calls, self._said, self._failed, self._compiled = 0, [], None, None
        device = next(model.parameters()).device
        self.score = FastScore(model, batch_shape, SpeedSwitches.for_device(device, compile=False))  # before the thread: it
        self._switches = SpeedSwitches.for_device(device, compile=True)  # runs many Python calls
        self._interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._interval, 5e-4))
        self._thread = threading.Thread(target=self._prepare, name="compile the network", daemon=True)
        self._thread.start()

    def _prepare(self) -> None:
        try:
            import_compiler()
            load_artefacts(self.cache, self._said)
            compiled = self._switches.compiled(self.model)
            x = static_input(self.batch_shape, self.score.device, self._switches.memory_format)
            with torch.no_grad(), self._switches.autocast(self.score.device):  # as FastScore calls it
                compiled(x, torch.ones(self.batch_shape[0], device=self.score.device))
            self._compiled = compiled
        except BaseException as err:  # noqa: BLE001  (the switch says it and compiles in the sampling thread)
            self._failed = err

    def switch(self) -> None:
        """Wait for the background compile, then capture the compiled network and use it from now on."""
        import sys
        import time

        t0 = time.perf_counter()
        self._thread.join()
        sys.setswitchinterval(self._interval)
        waited = time.perf_counter() - t0
        self.notes.extend(self._said)
        if self._failed is not None:
            self.notes.append(f"compiling beside the first calls failed ({type(self._failed).__name__}: {self._failed}); compiling now")
        self.score = None  # the first graph's memory goes back to the pool before the second is captured
        self.score = FastScore(self.model, self.batch_shape, self._switches, compiled=self._compiled)
        keep_artefacts(self.cache, self.notes)
        self.notes.append(f"the first {self.switch_at:,} network calls ran on the CUDA graph alone while torch's compiler was imported "
                          f"and the network compiled beside them (the switch waited {waited:.1f} s for it); the rest ran compiled")

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.calls == self.switch_at:
            self.switch()
        self.calls += 1
        return self.score(x, sigma)


def decide_score_compile(model: torch.nn.Module, run_dir: Path | None, batch_shape, evaluations: float,
                         compile: bool | None = None) -> tuple[bool, str | None]:
    """Whether to compile the network for ``evaluations`` image evaluations at ``batch_shape`` (sampling, or the
    held-out loss), and why: ``compile`` True/False decides; None decides from the work and whether the run
    folder holds this graph's artefacts. On a CPU: no, nothing to say."""
    device = next(model.parameters()).device
    if compile is not None or device.type != "cuda":
        return bool(compile) and device.type == "cuda", None
    cache = score_cache(run_dir, model, batch_shape) if run_dir is not None else None
    warm = cache is not None and cache.at_hand
    verdict, why = decide_compile(evaluations, warm, SAMPLE_COSTS, "image evaluations")
    return verdict == "compile", why


def score_cache(run_dir: Path, model: torch.nn.Module, batch_shape) -> CompileCache:
    """The run folder's compiled artefacts of the network's forward pass at ``batch_shape`` (shared by sample and evaluate)."""
    device = next(model.parameters()).device
    return CompileCache(run_dir, "score", model, batch_shape, SpeedSwitches.for_device(device, compile=True))
