"""Speed on a GPU: the mechanism and its caches. It imports nothing else of the model; the decisions that use it (whether
compiling pays, compiling in the background) live above it, in :mod:`ncsn_tune.model.compile_policy` and
:mod:`ncsn_tune.model.precompile`.

- :mod:`.fast` -- the mechanism: :class:`SpeedSwitches` (bf16, channels_last, fused Adam, torch.compile, CUDA graphs),
  the one CUDA-graph capture, :class:`FastScore`;
- :mod:`.cache` -- what compiling made, kept: torch's caches in the user cache folder, a run's artefacts in its folder;
- :mod:`.switching` -- the network for sampling (:func:`fast_score`, :class:`SwitchingScore`);
"""

from .cache import CompileCache, mark_built, one_compile_thread_when_warm, save_artefacts, use_persistent_cache
from .fast import FastScore, SpeedSwitches, capture_cuda_graph, score_batch_size, static_input, use_fast_kernels
from .switching import SwitchingScore, fast_score, score_cache

__all__ = ["CompileCache", "FastScore", "SpeedSwitches", "SwitchingScore", "capture_cuda_graph", "fast_score", "mark_built",
           "one_compile_thread_when_warm", "save_artefacts", "score_batch_size", "score_cache", "static_input", "use_fast_kernels",
           "use_persistent_cache"]
