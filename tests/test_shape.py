"""The package's shape: imports run one way, rooms stay small, each decision is written once."""

import ast
import re

from conftest import REPO

PACKAGE = REPO / "ncsn_tune"
#: Each top-level room and its layer: a module may import its own layer and the ones below, never one above.
LAYERS = {"errors": 0, "checks": 0, "version": 0, "files": 0, "defaults": 0, "units": 0, "config": 1, "devices": 1, "data": 2, "analysis": 3, "images": 3,
          "tuning": 4, "plots": 4, "interop": 5, "model": 6, "cli": 7, "__init__": 8, "__main__": 9}


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        found[name[: -len(".__init__")] if name.endswith(".__init__") else name] = (path, ast.parse(path.read_text()))
    return found


def import_graph() -> dict[str, set[str]]:
    """Every import of the package's own modules, at the top or inside functions; ``from pkg import submodule`` is an
    edge to the submodule."""
    mods = modules()
    edges = {}
    for name, (path, tree) in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                parts = package.split(".")
                target = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else [])) if node.level else node.module
                if not (target or "").startswith("ncsn_tune"):
                    continue
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                deps.update(subs if subs and len(subs) == len(node.names) else [target] if target in mods else [])
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in mods)
        deps.discard(name)
        edges[name] = deps
    return edges


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_runs_back_up():
    upward = [f"{a} -> {b}" for a, deps in import_graph().items() for b in deps if LAYERS[room(b)] > LAYERS[room(a)]]
    assert not upward, upward


#: Inside model/: the speed mechanism (accel/, which knows no other part of the model), the building blocks, what is
#: assembled from them, and the orchestration that runs them; imports run down these tiers only.
MODEL_TIERS = {
    "accel": 0,
    **dict.fromkeys(["network", "loss", "ema", "sampling", "distributed", "batches", "run_log", "fid"], 1),
    **dict.fromkeys(["step", "checkpoint", "compile_policy", "inception"], 2),
    **dict.fromkeys(["precompile", "empirical_step", "train", "runs", "generate", "evaluate"], 3),
}


def model_tier(module: str) -> int | None:
    parts = module.split(".")
    if parts[:2] != ["ncsn_tune", "model"] or len(parts) < 3:
        return None
    return MODEL_TIERS[parts[2]]  # a new module of model/ must be given its tier here


def test_inside_model_no_import_runs_back_up_and_accel_is_mechanism():
    graph = import_graph()
    upward = [f"{a} -> {b}" for a, deps in graph.items() if model_tier(a) is not None for b in deps
              if model_tier(b) is not None and model_tier(b) > model_tier(a)]
    assert not upward, upward
    outside = [f"{a} -> {b}" for a, deps in graph.items() if a.startswith("ncsn_tune.model.accel") for b in deps
               if b.startswith("ncsn_tune.model") and not b.startswith("ncsn_tune.model.accel")]
    assert not outside, outside


def test_the_import_drawing_has_no_circle():
    edges, seen, circles = import_graph(), {}, []

    def visit(node, path):
        seen[node] = "open"
        for nxt in edges[node]:
            if seen.get(nxt) == "open":
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in seen:
                visit(nxt, path + [nxt])
        seen[node] = "done"

    for node in edges:
        if node not in seen:
            visit(node, [node])
    assert not circles, circles


def test_no_module_over_450_lines():
    long = {str(path.relative_to(REPO)): n for path in PACKAGE.rglob("*.py") if (n := len(path.read_text().splitlines())) > 450}
    assert not long, long


def test_the_training_loop_reads_top_to_bottom():
    tree = modules()["ncsn_tune.model.train"][1]
    run = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "run")
    text = ast.get_source_segment((PACKAGE / "model" / "train.py").read_text(), run)
    assert run.end_lineno - run.lineno + 1 < 60 and not re.search(r"compile|precompile|poll\(\)", text.replace("self.compiles", ""))


def test_each_check_and_each_range_is_written_once():
    guards = [f"{p.relative_to(REPO)}" for p in PACKAGE.rglob("*.py") for line in p.read_text().splitlines()
              if re.search(r"isinstance\(\w+, bool\)", line)]
    assert len(guards) <= 2, guards  # is_real and is_whole (ncsn_tune/checks.py)
    spelled = {str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py") if re.search(r"""["']-?[01],1["']""", p.read_text())}
    assert spelled == {"ncsn_tune/data/pixel_range.py"}, spelled
