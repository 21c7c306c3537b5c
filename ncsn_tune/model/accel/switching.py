"""The network fast for sampling and evaluation: a :class:`~.fast.FastScore`, compiled or not, its artefacts loaded from and
saved to the user's own artefact folder; and :class:`SwitchingScore`, which hides the import of torch's compiler behind the first calls."""

from __future__ import annotations

from pathlib import Path

import torch

from . import cache as _cache
from .fast import FastScore, SpeedSwitches, static_input


def score_cache(run_dir: Path, model: torch.nn.Module, batch_shape) -> _cache.CompileCache:
    """The compiled artefacts of the network's forward pass at ``batch_shape`` (shared by sample and evaluate)."""
    device = next(model.parameters()).device
    return _cache.CompileCache(run_dir, "score", model, batch_shape, SpeedSwitches.for_device(device, compile=True))


def fast_score(model: torch.nn.Module, batch_shape, compile: bool = False, run_dir: Path | None = None,
               notes: list | None = None, switch_at: int = 0) -> FastScore | "SwitchingScore":
    """The network as a :class:`FastScore` for ``batch_shape``, compiled with ``compile`` (on a GPU). With ``run_dir``
    this graph's artefacts (:func:`score_cache`, the user's own, never the run folder's) are loaded before compiling and saved after a
    compile that did not come from them; what happened goes to ``notes``. With ``switch_at`` > 0 and torch's
    compiler not yet imported, a :class:`SwitchingScore` runs the first ``switch_at`` calls on the CUDA graph alone
    while the compiler is imported."""
    device = next(model.parameters()).device
    switches = SpeedSwitches.for_device(device, compile=compile)
    cache = score_cache(run_dir, model, batch_shape) if switches.compile and run_dir is not None else None
    notes = notes if notes is not None else []
    _cache.one_compile_thread_when_warm(cache)
    if switches.compile and switch_at > 0 and not _cache.compiler_imported():
        return SwitchingScore(model, batch_shape, switch_at, cache, notes)
    _cache.load_artefacts(cache, notes)
    score = FastScore(model, batch_shape, switches)
    _cache.keep_artefacts(cache, notes)
    return score


class SwitchingScore:
    """A score that runs its first ``switch_at`` calls on the CUDA graph alone (:class:`FastScore` without
    torch.compile) while a background thread imports torch's compiler, loads the graph's artefacts (``cache``)
    and compiles the network with one call of its own; from call ``switch_at`` on, the compiled network,
    captured in a CUDA graph, runs the calls.

    Importing the compiler takes 6.5-9 s on the H100 machine and compiling from a warm cache 3.5 s more, work
    of the CPU that the sampler's first calls need not wait for. The switch comes at a fixed call, not when
    the compile is done, so the same seed gives the same samples; if the compile is slower, the switch waits
    for it. While the thread runs, Python switches threads every 0.5 ms instead of 5 ms, so that the sampler's
    few Python calls per step do not queue behind the import. What happened is appended to ``notes``.
    """

    def __init__(self, model: torch.nn.Module, batch_shape, switch_at: int, cache: _cache.CompileCache | None = None,
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
            _cache.import_compiler()
            _cache.load_artefacts(self.cache, self._said)
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
        _cache.keep_artefacts(self.cache, self.notes)
        self.notes.append(f"the first {self.switch_at:,} network calls ran on the CUDA graph alone while torch's compiler was imported "
                          f"and the network compiled beside them (the switch waited {waited:.1f} s for it); the rest ran compiled")

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.calls == self.switch_at:
            self.switch()
        self.calls += 1
        return self.score(x, sigma)
