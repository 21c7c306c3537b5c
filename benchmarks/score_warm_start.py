"""Benchmark: where the seconds of a compiled score's start go, when its compiled code already exists (GPU).

`sample` and `evaluate` on a trained run build the network's forward pass at batch 1000 with torch.compile
and capture it in a CUDA graph. With this graph's compiled code cached, that start still costs 13-16 s on an
H100 against 1 s for the CUDA graph alone. Each variant below runs in a fresh process and times the phases
of that start (importing torch's compiler, loading a run's artefacts, the first compiled call, the CUDA-graph
capture) and the speed afterwards:

- cold: an empty compile cache (its artefacts are saved for the variants that load them);
- warm: the cache the cold run filled (the same machine later);
- artefacts: an empty cache plus the cold run's artefacts (torch.compiler.load_cache_artifacts: another machine);
- one compile thread: TORCHINDUCTOR_COMPILE_THREADS=1, so that torch does not start its pool of compile
  workers (each imports torch) when everything is a cache hit;
- no cudnn autotune: torch.backends.cudnn.benchmark off (cuDNN's heuristics pick the convolution kernels).

    PYTHONPATH=. python benchmarks/score_warm_start.py
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402


def child(args) -> dict:
    phases = {}
    t = time.perf_counter()
    import torch

    phases["import torch"] = time.perf_counter() - t
    t = time.perf_counter()
    import torch._dynamo  # noqa: F401
    import torch._inductor.compile_fx  # noqa: F401

    phases["import the compiler"] = time.perf_counter() - t
    from ncsn_tune.model.accel import capture_cuda_graph
    from ncsn_tune.model.network import NCSNv2

    torch.backends.cudnn.benchmark = not args.no_autotune
    if args.load:
        t = time.perf_counter()
        torch.compiler.load_cache_artifacts(Path(args.load).read_bytes())
        phases["load the artefacts"] = time.perf_counter() - t
    t = time.perf_counter()
    device = torch.device("cuda")
    model = NCSNv2(3, 32, 128, sigmas=[1.0] * 232).to(device).eval().to(memory_format=torch.channels_last)
    x = torch.rand(args.batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    sigma = torch.ones(args.batch, device=device)
    torch.cuda.synchronize()
    phases["build the model"] = time.perf_counter() - t
    compiled = torch.compile(model)

    def forward():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return compiled(x, sigma).float()

    t = time.perf_counter()
    forward()
    torch.cuda.synchronize()
    phases["first compiled call"] = time.perf_counter() - t
    t = time.perf_counter()
    graph, _ = capture_cuda_graph(forward, device)
    torch.cuda.synchronize()
    phases["CUDA-graph capture (3 warm-ups)"] = time.perf_counter() - t
    ready = time.perf_counter() - START
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.replays):
        graph.replay()
    torch.cuda.synchronize()
    rate = args.replays * args.batch / (time.perf_counter() - t)
    from torch._dynamo.utils import compile_times

    result = {"phases": phases, "ready_s": ready, "rate": rate, "compile_times": compile_times(repr="str", aggregate=True)}
    if args.save:
        saved = torch.compiler.save_cache_artifacts()
        if saved is not None:
            Path(args.save).write_bytes(saved[0])
            result["artefacts_mb"] = len(saved[0]) / 1e6
    return result


def run_child(cache: Path, extra: list[str], env_extra: dict) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "TRITON_CACHE_DIR": str(cache / "triton"), **env_extra}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, __file__, "--child", *extra], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr[-3000:]}
    result = json.loads(r.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--replays", type=int, default=100)
    p.add_argument("--child", action="store_true")
    p.add_argument("--load")
    p.add_argument("--save")
    p.add_argument("--no-autotune", action="store_true")
    p.add_argument("--json-out")
    args = p.parse_args()
    common = ["--batch", str(args.batch), "--replays", str(args.replays)]
    if args.child:
        print(json.dumps(child(args)))
        return
    import torch

    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {os.cpu_count()} CPUs; forward pass at batch {args.batch}",
          flush=True)
    one_thread = {"TORCHINDUCTOR_COMPILE_THREADS": "1"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        artefacts = tmp / "artefacts.bin"
        variants = [("cold", tmp / "a", ["--save", str(artefacts)], {}),
                    ("warm", tmp / "a", [], {}),
                    ("warm, one compile thread", tmp / "a", [], one_thread),
                    ("warm, no cudnn autotune", tmp / "a", ["--no-autotune"], {}),
                    ("warm, one thread, no autotune", tmp / "a", ["--no-autotune"], one_thread),
                    ("artefacts", tmp / "b", ["--load", str(artefacts)], {}),
                    ("artefacts, one compile thread", tmp / "c", ["--load", str(artefacts)], one_thread),
                    ("warm (again)", tmp / "a", [], {})]
        for name, cache, extra, env in variants:
            r = {"variant": name, **run_child(cache, common + extra, env)}
            rows.append(r)
            if "error" in r:
                print(f"{name}: FAILED\n{r['error']}", flush=True)
                continue
            phases = ", ".join(f"{k} {v:.2f}" for k, v in r["phases"].items())
            print(f"\n## {name}: ready after {r['ready_s']:.1f} s, process {r['process_s']:.1f} s, {r['rate']:,.0f} evaluations/s\n"
                  f"phases (s): {phases}", flush=True)
            print("\n".join(r["compile_times"].splitlines()[:14]), flush=True)
    names = sorted({k for r in rows if "phases" in r for k in r["phases"]}, key=lambda k: [k in r.get("phases", {}) for r in rows])
    print(f"\n{'variant':<32} {'ready (s)':>9} {'process (s)':>11} {'evals/s':>9}   phases (s)")
    for r in rows:
        if "error" not in r:
            print(f"{r['variant']:<32} {r['ready_s']:9.1f} {r['process_s']:11.1f} {r['rate']:9,.0f}   "
                  + ", ".join(f"{k} {r['phases'][k]:.1f}" for k in names if k in r["phases"]))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
