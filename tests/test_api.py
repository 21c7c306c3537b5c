"""The public Python API: torch-free import, the README's "From Python" code, the model's exports, no sys.path tricks."""

import inspect
import json
import re
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from conftest import REPO

#: Run before a snippet: any import of torch fails, as on a machine without it.
NO_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is not installed (blocked by the test)")
    sys.meta_path.insert(0, NoTorch())
""")


def readme_snippet() -> str:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- from-python: run by tests/test_api.py -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README.md lost its From Python section"
    return block.group(1)


def test_import_never_imports_torch():
    code = ("import sys, ncsn_tune, ncsn_tune.cli, ncsn_tune.tuning, ncsn_tune.images, ncsn_tune.interop; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_readme_snippet_runs_without_torch_and_gives_the_cli_numbers(tmp_path, fake_cifar):
    code = readme_snippet().replace("../shared/data/cifar10-subset", str(fake_cifar))
    result = subprocess.run([sys.executable, "-c", NO_TORCH + code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    first, second = [line.split() for line in result.stdout.strip().splitlines()]
    from ncsn_tune.cli import main

    sigmas = json.loads(CliRunner().invoke(main, ["sigmas", "--data", "cifar10", "--data-root", str(fake_cifar), "--json"]).stdout)
    step = json.loads(CliRunner().invoke(main, ["step-size", "--M", "5", "--json"]).stdout)
    assert float(first[0]) == sigmas["sigma_max"] and int(first[1]) == sigmas["num_scales"]
    assert float(first[2]) == step["step_size"] and float(first[3]) == step["variance_ratio"]
    assert float(second[0]) == pytest.approx(0.566966, abs=1e-6) and float(second[1]) == pytest.approx(6.184025e-6, rel=1e-6)
    assert (tmp_path / "schedule.json").is_file()


def test_the_readme_snippet_on_the_real_subset(tmp_path, real_subset):
    code = readme_snippet().replace("../shared/data/cifar10-subset", str(real_subset))
    result = subprocess.run([sys.executable, "-c", NO_TORCH + code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    sigma_max, num_scales, eps, _ = result.stdout.split()[:4]
    assert round(float(sigma_max), 6) == 49.896451 and int(num_scales) == 220 and float(eps) == pytest.approx(6.462785e-6, rel=1e-6)


def test_the_model_package_exports():
    torch = pytest.importorskip("torch")
    import ncsn_tune as nt
    from ncsn_tune.model import NCSNv2, Trainer, dsm_loss, load_model, sample_annealed_langevin  # noqa: F401

    assert nt.model.NCSNv2 is NCSNv2
    params = inspect.signature(sample_annealed_langevin).parameters
    for name in ("steps_per_scale", "step_size"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default is inspect.Parameter.empty
    with pytest.raises(TypeError):
        sample_annealed_langevin(lambda x, s: -x, torch.zeros(1, 1, 2, 2), torch.tensor([1.0, 0.1]))


def test_the_readme_model_snippet_names_exist():
    text = (REPO / "README.md").read_text()
    block = re.search(r"from ncsn_tune\.model import ([\w, ]+)", text)
    names = [n.strip() for n in block.group(1).split(",")]
    import ncsn_tune.model as m

    assert set(names) <= set(m.__all__)


def test_no_sys_path_manipulation_anywhere():
    offenders = []
    for path in list((REPO / "ncsn_tune").rglob("*.py")) + list((REPO / "benchmarks").rglob("*.py")) + list((REPO / "tests").rglob("*.py")):
        for k, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"sys\.path\.(insert|append|extend)|sys\.path\s*[+]?=", code):
                offenders.append(f"{path.relative_to(REPO)}:{k}")
    assert not offenders, offenders
