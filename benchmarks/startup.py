"""Benchmark: what compiling costs before the first step, cold and warm, and what it buys afterwards (GPU).

For each variant a fresh process builds the CIFAR-10 NCSNv2 (batch 128 for training, 1000 for sampling),
times its first step (torch.compile and the CUDA-graph capture included) and then its speed:

- graph: bf16 + channels_last + fused Adam + one CUDA graph, no torch.compile;
- model: + torch.compile of the whole network (the trainer's choice for long runs);
- blocks: + torch.compile of each residual and refine block on its own (regional compilation);
- sample-graph / sample-model: the sampler's forward pass at batch 1000, without and with torch.compile.

Each compiled variant runs three times: cold (an empty compile cache), warm (the cache the cold run
filled, as on the same machine later) and artefacts (an empty cache plus the artefacts the cold run saved
with torch.compiler.save_cache_artifacts, as when a run folder moves to another machine).

    PYTHONPATH=. python benchmarks/startup.py --variants graph,model,blocks,sample-graph,sample-model
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(variant: str, steps: int, save: str | None, load: str | None) -> dict:
    import torch

    from ncsn_tune import NoiseSchedule, TrainConfig
    from ncsn_tune.model.accel import FastScore, SpeedSwitches
    from ncsn_tune.model.ema import EMA
    from ncsn_tune.model.network import NCSNv2
    from ncsn_tune.model.step import TrainStep, build_optimizer

    t0 = time.perf_counter()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    if load:
        torch.compiler.load_cache_artifacts(Path(load).read_bytes())
    schedule = NoiseSchedule.from_num_scales(50.0, 3072, 232)
    sigmas = torch.tensor(schedule.sigmas, dtype=torch.float32, device=device)
    torch.manual_seed(0)
    model = NCSNv2(3, 32, 128, sigmas=schedule.sigmas).to(device)
    sampling = variant.startswith("sample")
    compile_scope = variant.split("-")[-1]
    switches = SpeedSwitches(compile=compile_scope in ("model", "blocks"), compile_scope=compile_scope if compile_scope != "graph" else "model")
    batch = (1000 if sampling else 128, 3, 32, 32)
    x = torch.rand(batch, device=device).contiguous(memory_format=torch.channels_last)
    t_built = time.perf_counter()
    if sampling:
        model = model.eval().to(memory_format=torch.channels_last)
        score = FastScore(model, batch, switches)
        sigma = torch.ones(batch[0], device=device)
        score(x, sigma)
        torch.cuda.synchronize()
        first = time.perf_counter() - t_built
        t1 = time.perf_counter()
        for _ in range(steps):
            out = score(x, sigma)
            x = x + 1e-6 * out
        torch.cuda.synchronize()
        rate = steps * batch[0] / (time.perf_counter() - t1)  # image evaluations per second
    else:
        model = model.to(memory_format=torch.channels_last)
        step = TrainStep(model, build_optimizer(model, TrainConfig(), switches), EMA(model), sigmas, switches, batch, device)
        step(x)
        torch.cuda.synchronize()
        first = time.perf_counter() - t_built
        t1 = time.perf_counter()
        for _ in range(steps):
            step(x)
        torch.cuda.synchronize()
        rate = steps / (time.perf_counter() - t1)  # steps per second
    result = {"variant": variant, "process_to_model_s": t_built - t0, "first_step_s": first, "rate": rate,
              "peak_gb": torch.cuda.max_memory_allocated() / 1e9}
    if save:
        saved = torch.compiler.save_cache_artifacts()
        if saved is not None:
            Path(save).write_bytes(saved[0])
            result["artefacts_mb"] = len(saved[0]) / 1e6
    return result


def run_child(variant: str, cache: Path, steps: int, extra: list[str]) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "TRITON_CACHE_DIR": str(cache / "triton")}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, __file__, "--child", variant, "--steps", str(steps), *extra], env=env, capture_output=True,
                       text=True)
    if r.returncode != 0:
        return {"variant": variant, "error": r.stderr[-2000:]}
    result = json.loads(r.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="graph,model,blocks,sample-graph,sample-model")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--child")
    p.add_argument("--save")
    p.add_argument("--load")
    p.add_argument("--json-out")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.save, args.load)))
        return
    import torch

    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {os.cpu_count()} CPUs", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            compiled = variant.split("-")[-1] in ("model", "blocks")
            cache = Path(tmp) / variant
            artefacts = Path(tmp) / f"{variant}.bin"
            runs = [("cold", cache, ["--save", str(artefacts)] if compiled else [])]
            if compiled:
                runs += [("warm", cache, []), ("artefacts", Path(tmp) / f"{variant}-fresh", ["--load", str(artefacts)])]
            for kind, folder, extra in runs:
                result = {**run_child(variant, folder, args.steps, extra), "cache": kind}
                rows.append(result)
                if "error" in result:
                    print(f"{variant:<13} {kind:<9} FAILED: {result['error'][-500:]}", flush=True)
                else:
                    unit = "image evals/s" if variant.startswith("sample") else "it/s"
                    print(f"{variant:<13} {kind:<9} first step {result['first_step_s']:6.1f} s  process {result['process_s']:6.1f} s  "
                          f"{result['rate']:10.1f} {unit}  peak {result['peak_gb']:.2f} GB", flush=True)
    print(f"\n{'variant':<13} {'cache':<9} {'first step (s)':>14} {'whole process (s)':>18} {'speed':>12}")
    for r in rows:
        if "error" not in r:
            print(f"{r['variant']:<13} {r['cache']:<9} {r['first_step_s']:14.1f} {r['process_s']:18.1f} {r['rate']:12.1f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
