"""Speed switches for the network's forward pass (issue 15): when torch.compile pays for sampling and evaluation,
keeping its artefacts without writing them twice, and the held-out loss of `evaluate` on the same fast path as
sampling."""

import os

import numpy as np
import pytest
import torch

from ncsn_tune.model import accel
from ncsn_tune.model.accel import FastScore, SpeedSwitches, fast_score
from ncsn_tune.model.compile_policy import SAMPLE_COSTS, decide_compile
from ncsn_tune.model.accel.cache import artefact_dir

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_sampling_compiles_when_the_work_repays_it():
    thousand = 1000 * (220 * 5 + 1)  # sample --num 1000 with the subset's schedule and M = 5
    verdict, why = decide_compile(thousand, True, SAMPLE_COSTS, "image evaluations")
    assert verdict == "compile" and "artefacts are cached" in why
    assert decide_compile(thousand, False, SAMPLE_COSTS, "image evaluations")[0] == "off"  # a cold compile would not pay
    assert decide_compile(10 * thousand, False, SAMPLE_COSTS, "image evaluations")[0] == "compile"
    # evaluate's default pass (1,000 images at 220 scales) is done on the CUDA graph before the artefacts are loaded
    assert decide_compile(1000 * 220, True, SAMPLE_COSTS, "image evaluations")[0] == "off"


class FakeCache:
    """Stands in for a run folder's CompileCache: counts loads and saves."""

    def __init__(self, present: bool, built_here: bool = False):
        self.present, self.loaded, self.saves, self.built_here, self.marks = present, False, 0, built_here, 0

    def load(self):
        if not self.present:
            return None
        self.loaded = True
        return "loaded the compiled artefacts"

    def save(self):
        self.saves += 1
        return "saved the compiled artefacts"

    def mark_built(self):
        self.marks += 1

    @property
    def exists(self):
        return self.present

    @property
    def at_hand(self):
        return self.present or self.built_here


@pytest.fixture
def compile_on_cpu(monkeypatch):
    """Let fast_score take its compile paths on a CPU, with torch.compile replaced by the module itself."""
    def for_device(device, compile=False, **_):
        return SpeedSwitches(bf16=False, channels_last=False, fused_adam=False, compile=compile, cuda_graphs=False)

    monkeypatch.setattr(SpeedSwitches, "for_device", staticmethod(for_device))
    monkeypatch.setattr(SpeedSwitches, "compiled", lambda self, module: module)
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "0")  # whatever fast_score sets is undone after the test
    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS")


class Scaled(torch.nn.Module):
    """A score-shaped module: model(x, sigma)."""

    def __init__(self, channels=3):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, sigma):
        return self.conv(x) / sigma.view(-1, 1, 1, 1)


def test_artefacts_that_were_loaded_are_not_written_again(compile_on_cpu, monkeypatch, tmp_path):
    model = Scaled()
    caches = []
    monkeypatch.setattr(accel.switching, "score_cache", lambda run_dir, model, batch_shape: caches[-1])
    caches.append(FakeCache(present=True))
    notes = []
    fast_score(model, (2, 3, 8, 8), True, tmp_path, notes)
    cache = caches[-1]
    assert cache.saves == 0 and notes == ["loaded the compiled artefacts"]
    caches.append(FakeCache(present=False))
    notes = []
    fast_score(model, (2, 3, 8, 8), True, tmp_path, notes)
    cold = caches[-1]
    assert cold.saves == 1 and notes == ["no compiled artefacts kept yet: compiling", "saved the compiled artefacts"]
    caches.append(FakeCache(present=False, built_here=True))  # another run's compile on this machine: a warm compile
    notes = []
    fast_score(model, (2, 3, 8, 8), True, tmp_path, notes)
    assert caches[-1].saves == 1 and "this machine's compile cache holds this graph: a warm compile" in notes[0]
    assert cache.marks == cold.marks == caches[-1].marks == 1  # each compiled graph is recorded as built here
    caches.append(FakeCache(present=True))
    fast_score(model, (2, 3, 8, 8), False, tmp_path, [])
    untouched = caches[-1]
    assert not untouched.loaded and untouched.saves == 0 and untouched.marks == 0


def test_the_first_calls_run_on_the_cuda_graph_while_the_compiler_is_imported(compile_on_cpu, monkeypatch, tmp_path):
    import sys
    import threading

    from ncsn_tune.model.accel import SwitchingScore

    from ncsn_tune.model.compile_policy import calls_while_importing

    imported, built = [], []
    monkeypatch.setattr(accel.cache, "compiler_imported", lambda: False)
    monkeypatch.setattr(accel.cache, "import_compiler", lambda: imported.append(threading.current_thread().name))
    monkeypatch.setattr(SpeedSwitches, "compiled", lambda self, module: built.append((self.compile, threading.current_thread().name)) or module)
    cache = FakeCache(present=True)
    monkeypatch.setattr(accel.switching, "score_cache", lambda run_dir, model, batch_shape: cache)
    model, notes = Scaled(), []
    interval = sys.getswitchinterval()
    score = fast_score(model, (2, 3, 8, 8), True, tmp_path, notes, switch_at=3)
    assert isinstance(score, SwitchingScore) and built[0] == (False, "MainThread")  # the CUDA graph first, in the sampler's thread
    x, sigma = torch.randn(2, 3, 8, 8), torch.full((2,), 2.0)
    outputs = []
    for call in range(5):
        outputs.append(score(x, sigma))
        assert score.score.switches.compile == (call >= 3)  # the compiled score serves from the fourth call on, not before
    assert imported == ["compile the network"] and built == [(False, "MainThread"), (True, "compile the network")]
    assert notes[0] == "loaded the compiled artefacts" and notes[1].startswith("the first 3 network calls ran on the CUDA graph alone")
    assert cache.loaded and cache.saves == 0 and cache.marks == 1 and sys.getswitchinterval() == interval
    for out in outputs:
        torch.testing.assert_close(out, model(x, sigma))
    # a failed background compile is said, and the network is compiled at the switch instead
    monkeypatch.setattr(accel.cache, "import_compiler", lambda: 1 / 0)
    notes = []
    score = fast_score(model, (2, 3, 8, 8), True, tmp_path, notes, switch_at=1)
    score(x, sigma)
    torch.testing.assert_close(score(x, sigma), model(x, sigma))
    assert score.score.switches.compile and any(n.startswith("compiling beside the first calls failed (ZeroDivisionError") for n in notes)
    # how many calls the CUDA graph does meanwhile: about 12 s at 12,488 evaluations/s, at most half of them
    assert calls_while_importing(1000, 1101) == 149 and calls_while_importing(10, 1101) == 550
    monkeypatch.setattr(accel.cache, "compiler_imported", lambda: True)
    assert calls_while_importing(1000, 1101) == 0
    assert isinstance(fast_score(model, (2, 3, 8, 8), True, tmp_path, [], switch_at=3), FastScore)  # nothing to overlap


def test_a_warm_compile_does_not_start_torchs_pool_of_compile_workers(monkeypatch):
    from ncsn_tune.model.accel import one_compile_thread_when_warm

    monkeypatch.setattr(accel.cache, "compiler_imported", lambda: False)
    for cache, threads in ((FakeCache(present=True), "1"), (FakeCache(present=False, built_here=True), "1"),
                           (FakeCache(present=False), None), (None, None)):
        monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
        one_compile_thread_when_warm(cache)
        assert os.environ.get("TORCHINDUCTOR_COMPILE_THREADS") == threads  # a cold compile keeps its workers
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "8")
    one_compile_thread_when_warm(FakeCache(present=True))
    assert os.environ["TORCHINDUCTOR_COMPILE_THREADS"] == "8"  # the user's choice stands


def test_a_graph_built_on_this_machine_is_not_loaded_again(monkeypatch, tmp_path):
    from ncsn_tune.model.accel import CompileCache, score_cache
    from ncsn_tune.model.compile_policy import decide_score_compile

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    model = Scaled()
    cache = CompileCache(tmp_path / "run", "score", model, (2, 3, 8, 8), SpeedSwitches())
    keep(monkeypatch, cache, b"artefacts")
    loads = []
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", loads.append)
    assert not cache.built_here
    assert cache.load().startswith("loaded the compiled artefacts") and loads == [b"artefacts"]
    cache.mark_built()
    assert (tmp_path / "inductor" / "ncsn_tune_built" / cache.path.stem).is_file()  # inside the cache: emptied with it
    again = CompileCache(tmp_path / "run", "score", model, (2, 3, 8, 8), SpeedSwitches())
    assert again.built_here and "holds this graph already" in again.load() and again.loaded and len(loads) == 1
    other = CompileCache(tmp_path / "run", "score", model, (4, 3, 8, 8), SpeedSwitches())  # another batch: another graph
    assert not other.built_here
    # On a CPU nothing is compiled, whatever the caches hold.
    assert decide_score_compile(model, tmp_path / "run", (2, 3, 8, 8), 10**9) == (False, None)
    assert score_cache(tmp_path / "run", model, (2, 3, 8, 8)).path.parent == artefact_dir()  # the user's own, not the run's


def keep(monkeypatch, cache, data: bytes) -> None:
    """Artefacts saved as a compile in this process saves them (torch's save_cache_artifacts stood in for: no compiler here)."""
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (data, None))
    assert cache.save().startswith("saved the compiled artefacts")


def test_compiled_artefacts_are_loaded_only_from_the_users_own_folder(monkeypatch, tmp_path):
    """Issue 29: torch.compiler.load_cache_artifacts unpickles; a run folder handed over by someone could run code on
    sample, evaluate or train. Artefacts in a run folder are never loaded; the user's own are, only while their folder
    is theirs alone and their bytes match the digest saved with them."""
    from ncsn_tune.model.accel import CompileCache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    loads = []
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", loads.append)
    model = Scaled()
    cache = CompileCache(tmp_path / "run", "score", model, (2, 3, 8, 8), SpeedSwitches())
    planted = tmp_path / "run" / "compile_cache" / cache.path.name  # where older versions kept them, and a stranger could
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"code from someone else")
    assert not cache.exists and "not loaded (compiled code from a run folder could be anyone's)" in cache.load() and loads == []
    keep(monkeypatch, cache, b"ours")
    assert oct(os.stat(cache.path).st_mode & 0o777) == "0o600" and oct(os.stat(artefact_dir()).st_mode & 0o777) == "0o700"
    cache.path.write_bytes(b"changed")  # bytes that are not the ones saved
    assert "does not match the digest" in cache.load() and loads == [] and not cache.loaded
    keep(monkeypatch, cache, b"ours")
    folder = artefact_dir()
    os.chmod(folder, 0o777)  # a folder others may write to
    assert "not this user's alone" in cache.load() and loads == []
    os.chmod(folder, 0o700)
    assert cache.load().startswith("loaded the compiled artefacts") and loads == [b"ours"]


def test_batch_sizes_fill_a_gpu_and_stay_small_on_a_cpu():
    from ncsn_tune.model.accel import score_batch_size

    gpu, cpu = torch.device("cuda"), torch.device("cpu")  # only the device's type is read
    assert score_batch_size((3, 32, 32), gpu) == 1000  # sample --num 1000 in one batch: 20,700 evaluations/s on an H100, not 17,050
    assert score_batch_size((3, 32, 32), gpu, 64) == 64
    assert score_batch_size((3, 64, 64), gpu) == 250 and score_batch_size((3, 256, 256), gpu) == 15
    assert score_batch_size((3, 1024, 1024), gpu) == 1
    assert score_batch_size((3, 32, 32), cpu) == 100 and score_batch_size((3, 32, 32), cpu, 7) == 7
    assert score_batch_size((3, 32, 32), cpu, 5000, cpu=250) == 250
    assert score_batch_size((3, 32, 32), gpu, 64, requested=500) == 64 and score_batch_size((3, 32, 32), gpu, 64, requested=7) == 7


def test_fast_score_on_a_cpu_calls_the_model():
    model = Scaled()
    score = fast_score(model, (2, 3, 8, 8), True)  # nothing to compile on a CPU
    assert isinstance(score, FastScore) and score.graph is None and score.model is model
    x, sigma = torch.randn(2, 3, 8, 8), torch.full((2,), 2.0)
    torch.testing.assert_close(score(x, sigma), model(x, sigma))


def test_evaluate_reports_progress_through_the_loss_pass(tmp_path):
    from ncsn_tune.model.evaluate import held_out_loss_of_run
    from ncsn_tune.model.loss import held_out_loss

    from test_train import make_trainer

    trainer = make_trainer(tmp_path, steps=1)
    images = torch.rand(6, 3, 16, 16)
    calls = []
    by_scale, notes = held_out_loss_of_run(trainer.model.eval(), images, trainer.sigmas, None, seed=3,
                                           progress=lambda done, total, unit: calls.append((done, total, unit)))
    assert calls[-1] == (10, 10, "scales") and len(calls) == 10 and notes == []
    expected = held_out_loss(trainer.model, images, trainer.sigmas, batch_size=250, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(by_scale, expected)


# ------------------------------------------------------------------------------------------------ on a GPU


@GPU
def test_fast_score_serves_smaller_batches_and_times_cudnn():
    from ncsn_tune.model.network import NCSNv2

    torch.backends.cudnn.benchmark = False
    model = NCSNv2(3, 16, 16, sigmas=np.geomspace(10, 0.1, 5)).cuda().eval()
    x, sigma = torch.rand(8, 3, 16, 16, device="cuda"), torch.full((8,), 0.5, device="cuda")
    score = FastScore(model, (8, 3, 16, 16))
    assert torch.backends.cudnn.benchmark  # the speeds in benchmarks/ are measured with cuDNN's autotuner
    full = score(x, sigma).clone()
    part = score(x[:5], sigma[:5])
    assert part.shape == (5, 3, 16, 16)
    torch.testing.assert_close(part, full[:5])
    with pytest.raises(ValueError, match="captured for batches"):
        score(torch.rand(9, 3, 16, 16, device="cuda"), torch.ones(9, device="cuda"))


@GPU
def test_the_background_compile_leaves_what_sample_loads(tmp_path):
    """What a training run compiles beside itself (precompile.ScoreSpec) is the graph sample and evaluate build:
    same key, found in the run folder, and this machine's compile cache is used without loading it again."""
    from ncsn_tune.model import precompile
    from ncsn_tune.model.accel import score_cache
    from ncsn_tune.model.compile_policy import decide_score_compile
    from ncsn_tune.model.network import NCSNv2

    run = tmp_path / "run"
    run.mkdir()
    process = precompile.start(precompile.ScoreSpec(3, 16, 16, "auto", 5, 8, str(run)), run)
    assert process.wait(timeout=600) == 0, precompile.log_path(run, "score").read_text()[-2000:]
    model = NCSNv2(3, 16, 16, sigmas=np.geomspace(10, 0.1, 7)).cuda().eval()  # another schedule: the same graph
    assert score_cache(run, model, (8, 3, 16, 16)).exists
    assert decide_score_compile(model, run, (8, 3, 16, 16), 10**9)[0]
    notes = []
    score = fast_score(model, (8, 3, 16, 16), True, run, notes)
    assert "holds this graph already" in notes[0] and len(notes) == 1  # nothing loaded, nothing written again
    x, sigma = torch.rand(8, 3, 16, 16, device="cuda"), torch.full((8,), 0.5, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        expected = model.to(memory_format=torch.channels_last)(x, sigma).float()
    torch.testing.assert_close(score(x, sigma), expected, atol=0.05, rtol=0.05)


@GPU
def test_switching_score_on_a_gpu_gives_the_compiled_scores_after_the_switch():
    from ncsn_tune.model.accel import SwitchingScore
    from ncsn_tune.model.network import NCSNv2

    model = NCSNv2(3, 16, 16, sigmas=np.geomspace(10, 0.1, 5)).cuda().eval()
    x, sigma = torch.rand(8, 3, 16, 16, device="cuda"), torch.full((8,), 0.5, device="cuda")
    score = SwitchingScore(model, (8, 3, 16, 16), switch_at=2)
    before = [score(x, sigma).clone() for _ in range(2)]
    assert not score.score.switches.compile
    after = score(x, sigma).clone()
    assert score.score.switches.compile and score.score.graph is not None
    torch.testing.assert_close(before[0], before[1])
    torch.testing.assert_close(after, before[0], atol=0.05, rtol=0.05)  # bf16, fused differently
    assert score.notes[-1].startswith("the first 2 network calls ran on the CUDA graph alone")
    assert score.score.model is score._compiled  # compiled beside the first calls, captured at the switch


def test_compile_caches_stay_in_the_user_cache_after_torch_chose_tmp(monkeypatch, tmp_path):
    """Building an Adam optimiser imports TorchDynamo, which sets TORCHINDUCTOR_CACHE_DIR to /tmp/torchinductor_<user>
    when it is unset: the trainer's compiles, its background compiles and their markers then went to /tmp."""
    from ncsn_tune.model.accel import use_persistent_cache

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    torch.optim.Adam(Scaled().parameters())
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    cache_dir()  # what torch's compiler does when it finds the variable unset
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == os.path.abspath(default_cache_dir())
    ours = tmp_path / "cache" / "torch_compile"
    assert use_persistent_cache() == ours / "inductor" and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(ours / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(ours / "triton")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert use_persistent_cache() == tmp_path / "mine"  # a folder the user chose stands


def test_regional_compilation_compiles_the_blocks_the_network_names_also_inside_a_wrapper():
    """compile_scope "blocks" compiles each block NCSNv2 names in _repeated_blocks (accel knows no network class), and finds
    them inside a wrapper (as DistributedDataParallel wraps the network) that names none itself."""
    from ncsn_tune.model.network import NCSNv2

    switches = SpeedSwitches(compile=True, compile_scope="blocks")
    for wrap in (lambda m: m, torch.nn.Sequential):
        model = NCSNv2(3, 32, ngf=4)
        out = switches.compiled(wrap(model))
        compiled = {type(sub).__name__ for sub in model.modules() if getattr(sub, "_compiled_call_impl", None) is not None}
        assert compiled == {"ResidualBlock", "RefineBlock"} and out is not None
        assert getattr(model, "_compiled_call_impl", None) is None  # the blocks, not the whole network
