"""Benchmark: ways to compile the sampler's network (batch 1000, CIFAR-10 NCSNv2), cold and warm, on a GPU.

For each variant a fresh process builds the network's forward pass at batch 1000 (bf16 autocast, channels_last,
one CUDA graph) and reports the seconds until it is ready, its speed in image evaluations per second and its
largest difference from the CUDA-graph-only output on one input:

- graph: no torch.compile (the reference);
- compile: torch.compile (inductor, mode "default"), as ncsn-tune does today;
- freezing: the same with inductor's freezing (the weights become constants of the compiled graph);
- aoti: torch.export, then AOTInductor into one package that a later process loads without dynamo.

Each compiled variant runs cold (empty caches; the package is built) and warm (the caches or the package of
the cold run, as for a second `ncsn-tune sample` on the same run).

    PYTHONPATH=. python benchmarks/sample_compile_variants.py --variants graph,compile,freezing,aoti
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


def child(variant: str, work: Path, evaluations: int) -> dict:
    import numpy as np
    import torch

    from ncsn_tune.model.accel import FastScore, SpeedSwitches, capture_cuda_graph
    from ncsn_tune.model.network import NCSNv2

    t0 = time.perf_counter()
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = NCSNv2(3, 32, 128, sigmas=np.geomspace(50, 0.01, 232)).to(device).eval().to(memory_format=torch.channels_last)
    batch = (1000, 3, 32, 32)
    gen = torch.Generator(device).manual_seed(1)
    x = torch.rand(batch, device=device, generator=gen).contiguous(memory_format=torch.channels_last)
    sigma = torch.full((1000,), 0.5, device=device)
    t_model = time.perf_counter()
    if variant in ("graph", "compile", "freezing"):
        if variant == "freezing":
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
        score = FastScore(model, batch, SpeedSwitches(compile=variant != "graph"))
    else:
        package = work / "score.pt2"
        if not package.exists():
            class Bf16Score(torch.nn.Module):
                def __init__(self, m):
                    super().__init__()
                    self.m = m

                def forward(self, x, sigma):
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        return self.m(x, sigma).float()

            with torch.no_grad():
                exported = torch.export.export(Bf16Score(model), (x, sigma))
                torch._inductor.aoti_compile_and_package(exported, package_path=str(package))
        runner = torch._inductor.aoti_load_package(str(package))
        static_x, static_sigma = x.clone(), sigma.clone()
        with torch.no_grad():
            graph, static_out = capture_cuda_graph(lambda: runner(static_x, static_sigma), device)

        def score(a, b):
            static_x.copy_(a)
            static_sigma.copy_(b)
            graph.replay()
            return static_out
    out = score(x, sigma).clone()
    torch.cuda.synchronize()
    ready = time.perf_counter() - t_model
    reference = work / "graph_out.pt"
    if variant == "graph":
        torch.save(out.cpu(), reference)
        diff = 0.0
    else:
        diff = float((out.cpu() - torch.load(reference)).abs().max()) if reference.exists() else float("nan")
    calls = max(1, evaluations // batch[0])
    t1 = time.perf_counter()
    for _ in range(calls):
        out = score(x, sigma)
    torch.cuda.synchronize()
    rate = calls * batch[0] / (time.perf_counter() - t1)
    return {"variant": variant, "setup_s": t_model - t0, "ready_s": ready, "rate": rate, "max_abs_diff": diff,
            "out_scale": float(out.abs().mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="graph,compile,freezing,aoti")
    p.add_argument("--evaluations", type=int, default=60000)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], Path(args.child[1]), args.evaluations)), flush=True)
        return
    import torch

    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {os.cpu_count()} CPUs", flush=True)
    root = Path(tempfile.mkdtemp(prefix="compile_variants_"))
    rows = []
    for variant in args.variants.split(","):
        work = root / variant
        work.mkdir()
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor"), "TRITON_CACHE_DIR": str(work / "triton")}
        (root / "graph_out.pt").exists() and os.link(root / "graph_out.pt", work / "graph_out.pt")
        for cache in ("cold",) if variant == "graph" else ("cold", "warm"):
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, __file__, "--evaluations", str(args.evaluations), "--child", variant, str(work)],
                               env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            result = [json.loads(line[7:]) for line in r.stdout.splitlines() if line.startswith("RESULT ")]
            if r.returncode != 0 or not result:
                print(f"{variant} {cache}: failed ({r.returncode})\n{r.stderr[-2500:]}", flush=True)
                break
            row = {**result[0], "cache": cache, "process_s": wall}
            rows.append(row)
            if variant == "graph":
                os.link(work / "graph_out.pt", root / "graph_out.pt")
            print(f"{variant:<9} {cache:<5} ready {row['ready_s']:6.1f} s  process {wall:6.1f} s  {row['rate']:9.0f} image evals/s  "
                  f"max |diff| {row['max_abs_diff']:.3g} (mean |out| {row['out_scale']:.3g})", flush=True)
    print(f"\n{'variant':<9} {'cache':<5} {'ready (s)':>9} {'process (s)':>11} {'image evals/s':>13} {'max |diff|':>10}")
    for r in rows:
        print(f"{r['variant']:<9} {r['cache']:<5} {r['ready_s']:9.1f} {r['process_s']:11.1f} {r['rate']:13.0f} {r['max_abs_diff']:10.3g}")


if __name__ == "__main__":
    main()
