"""Speed on a GPU behind two seams: the mechanism and its caches, and the decisions.

- :mod:`.fast` -- the mechanism: :class:`SpeedSwitches` (bf16, channels_last, fused Adam, torch.compile, CUDA graphs),
  the one CUDA-graph capture, :class:`FastScore`;
- :mod:`.cache` -- what compiling made, kept: torch's caches in the user cache folder, a run's artefacts in its folder;
- :mod:`.switching` -- the network for sampling (:func:`fast_score`, :class:`SwitchingScore`);
- :mod:`.policy` -- whether compiling pays, from one table of measured costs; :func:`score_network` for sample and evaluate;
- :mod:`.precompile` -- compiling in the background (:class:`BackgroundCompiles`, :func:`plan_compiles`).
"""

from .cache import CompileCache, mark_built, one_compile_thread_when_warm, save_artefacts, use_persistent_cache
from .fast import FastScore, SpeedSwitches, capture_cuda_graph, score_batch_size, static_input, use_fast_kernels
from .policy import SAMPLE_COSTS, TRAIN_COSTS, CompileCosts, calls_while_importing, decide_compile, decide_score_compile, score_network
from .switching import SwitchingScore, fast_score, score_cache

__all__ = ["SAMPLE_COSTS", "TRAIN_COSTS", "CompileCache", "CompileCosts", "FastScore", "SpeedSwitches", "SwitchingScore",
           "calls_while_importing", "capture_cuda_graph", "decide_compile", "decide_score_compile", "fast_score", "mark_built", "one_compile_thread_when_warm",
           "save_artefacts", "score_batch_size", "score_cache", "score_network", "static_input", "use_fast_kernels",
           "use_persistent_cache"]
