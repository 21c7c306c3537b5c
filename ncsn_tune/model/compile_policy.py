"""Whether compiling pays, decided in one place from the work planned and one table of measured costs; and the one
call that gives sample and evaluate their network (:func:`score_network`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .accel import cache as _cache
from .accel.fast import FastScore
from .accel import switching as _switching
from .accel.switching import fast_score


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
#: Seconds a background process takes to compile the sampling network at batch 1000 on an H100, with empty compile
#: caches and with this machine's cache holding it (benchmarks/score_warm_start.py: ready after 43 s and 14-18 s,
#: plus the process's start and the artefacts' save; beside a training run it has fewer cores).
SCORE_COMPILE_COLD_S = 60.0
SCORE_COMPILE_WARM_S = 25.0


#: Seconds from starting to import torch's compiler (TorchDynamo, Inductor, Triton) to a compiled forward pass at batch
#: 1000, from a warm compile cache, in a thread beside the sampler on the H100 machine: the import takes 6.5 to 9.4 s
#: and the first compiled call 3.5-3.8 s (benchmarks/score_warm_start.py, docs/results/sample_phases_h100.log).
COMPILER_READY_S = 12.0


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


def calls_while_importing(batch_size: int, calls: int) -> int:
    """How many of ``calls`` network calls at ``batch_size`` the CUDA graph alone does while torch's compiler is
    imported and the network compiled beside it (:data:`COMPILER_READY_S`, at :data:`SAMPLE_COSTS`' graph speed), at
    most half of them; 0 when the compiler is imported already (nothing to hide then)."""
    if _cache.compiler_imported():
        return 0
    return max(0, min(calls // 2, int(COMPILER_READY_S / (SAMPLE_COSTS.graph_s * batch_size))))


def decide_score_compile(model: torch.nn.Module, run_dir: Path | None, batch_shape, evaluations: float,
                         compile: bool | None = None) -> tuple[bool, str | None]:
    """Whether to compile the network for ``evaluations`` image evaluations at ``batch_shape`` (sampling, or the
    held-out loss), and why: ``compile`` True/False decides; None decides from the work and whether the run
    user's artefact folder holds this graph's artefacts. On a CPU: no, nothing to say."""
    device = next(model.parameters()).device
    if compile is not None or device.type != "cuda":
        return bool(compile) and device.type == "cuda", None
    cache = _switching.score_cache(run_dir, model, batch_shape) if run_dir is not None else None
    warm = cache is not None and cache.at_hand
    verdict, why = decide_compile(evaluations, warm, SAMPLE_COSTS, "image evaluations")
    return verdict == "compile", why


def score_network(model: torch.nn.Module, batch_shape, evaluations: float, compile: bool | None = None, run_dir: Path | None = None,
                  calls_per_batch: int = 0) -> tuple[FastScore | object, list[str]]:
    """The network for ``evaluations`` image evaluations at ``batch_shape`` (sampling, or the held-out loss), and notes:
    a :class:`~.fast.FastScore` (bf16, channels_last, a CUDA graph on a GPU), compiled when ``compile`` says, or, when it is
    None, when the work repays it (:func:`decide_score_compile`), the graph's artefacts (the user's own) loaded and kept. With
    ``calls_per_batch`` (a sampler's network calls per batch) the first calls of a compiled network run on the CUDA graph
    alone while torch's compiler is imported (:func:`calls_while_importing`)."""
    use_compile, why = decide_score_compile(model, run_dir, batch_shape, evaluations, compile)
    notes = [why] if why else []
    switch_at = calls_while_importing(batch_shape[0], calls_per_batch) if use_compile and calls_per_batch else 0
    return fast_score(model, batch_shape, use_compile, run_dir, notes, switch_at=switch_at), notes
