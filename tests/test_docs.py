"""The docs name only what exists: every repository path they quote, every result file indexed, every benchmark listed."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "DEVELOPERS.md", REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
PATH = re.compile(r"`((?:docs|benchmarks|tests|ncsn_tune)/[A-Za-z0-9_./*-]+)`")


def test_every_path_the_docs_quote_exists():
    missing = []
    for doc in DOCS:
        for quoted in PATH.findall(doc.read_text()):
            path = quoted.rstrip(".,:;")
            if not list(REPO.glob(path)):  # a glob such as docs/results/train_speed_h100*.log names at least one file
                missing.append(f"{doc.relative_to(REPO)}: {path}")
    assert not missing, missing


def test_every_result_file_is_indexed_and_every_index_entry_exists():
    index = (REPO / "docs" / "results" / "README.md").read_text()
    named = set(re.findall(r"`([A-Za-z0-9_.*-]+\.[a-z]+)`", index))
    present = {p.name for p in (REPO / "docs" / "results").iterdir() if p.name != "README.md"}
    assert not present - named, f"not in docs/results/README.md: {sorted(present - named)}"
    assert not {n for n in named if "*" not in n} - present, f"indexed but missing: {sorted({n for n in named if '*' not in n} - present)}"


def test_every_benchmark_script_is_listed():
    listed = (REPO / "benchmarks" / "README.md").read_text()
    scripts = {p.name for p in (REPO / "benchmarks").iterdir() if p.suffix in (".py", ".sh")}
    assert not {s for s in scripts if f"`{s}`" not in listed}
