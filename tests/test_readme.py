"""The README stays true to the repository: every file it names exists; the layout in DEVELOPERS.md matches the tree."""

import re

from conftest import REPO

README = (REPO / "README.md").read_text()


def layout_block() -> str:
    section = (REPO / "DEVELOPERS.md").read_text().split("## Layout", 1)[1]
    return re.search(r"```\n(.*?)```", section, re.S).group(1)


def test_layout_lists_every_module_and_only_existing_ones():
    block = layout_block()
    listed = set(re.findall(r"([\w]+\.py)", block))
    actual = {p.name for p in (REPO / "ncsn_tune").rglob("*.py") if p.name != "__main__.py"}
    assert actual - listed == set(), f"modules missing from the layout in DEVELOPERS.md: {sorted(actual - listed)}"
    assert listed - actual == set(), f"the layout in DEVELOPERS.md names modules that do not exist: {sorted(listed - actual)}"
    for folder in re.findall(r"^\s*([\w/]+)/\s", block, re.M):
        assert (REPO / folder).is_dir() or (REPO / "ncsn_tune" / folder).is_dir() or any((REPO / "ncsn_tune").glob(f"*/{folder}")), folder


def test_every_file_the_readme_names_exists():
    names = set(re.findall(r"\]\(([^)#\s]+)\)", README))  # markdown links and images
    names |= set(re.findall(r"(?<![\w./-])((?:docs|benchmarks|tests|ncsn_tune|\.ci)/[\w./*-]*\w)", README))
    names |= set(re.findall(r"(?<![\w./-])([A-Z][A-Z_]+\.md)\b", README))
    missing = []
    for name in sorted(names):
        if name.startswith("http"):
            continue
        path = REPO / name
        if "*" in name:
            found = list(REPO.glob(name))
        else:
            found = [path] if path.exists() else []
        if not found:
            missing.append(name)
    assert not missing, f"the README names files that are not in the repository: {missing}"
