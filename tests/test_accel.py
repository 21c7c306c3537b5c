"""Speed switches for the network's forward pass (issue 15): when torch.compile pays, building the compiled
network in a background thread while the work starts on the CUDA graph, keeping its artefacts, and the held-out
loss of `evaluate` on the same fast path as sampling."""

import threading

import numpy as np
import pytest
import torch

from ncsn_tune.model import accel
from ncsn_tune.model.accel import SAMPLE_COSTS, TRAIN_COSTS, FastScore, SpeedSwitches, SwitchWhenReady, decide_compile, fast_score

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_sampling_compiles_in_a_thread_when_the_work_outlasts_the_build():
    sample = dict(costs=SAMPLE_COSTS, unit="image evaluations", background=True, threaded=True)
    thousand = 1000 * (220 * 5 + 1)  # sample --num 1000 with the subset's schedule and M = 5
    verdict, why = decide_compile(thousand, False, **sample)
    assert verdict == "background" and "sampling starts on the CUDA graph" in why and "compiled network" in why
    verdict, why = decide_compile(thousand, True, **sample)  # warm: loading the artefacts is the build
    assert verdict == "background" and "cached artefacts" in why
    for warm in (False, True):  # 64 samples are done on the CUDA graph before either build would be ready
        assert decide_compile(64 * 1101, warm, **sample)[0] == "off"
    # training keeps its own rules: the process build's switch costs a load, and a warm start compiles first
    assert decide_compile(300000, True, TRAIN_COSTS, "steps", background=True)[0] == "compile"
    assert decide_compile(2000, False, TRAIN_COSTS, "steps", background=True)[0] == "off"


def test_switch_when_ready_serves_whole_calls_then_switches_once():
    gate = threading.Event()

    def build():
        gate.wait(10)
        return lambda x: ("compiled", x)

    score = SwitchWhenReady(lambda x: ("graph", x), build)
    assert [score(i) for i in range(3)] == [("graph", 0), ("graph", 1), ("graph", 2)]
    gate.set()
    score._thread.join(10)
    assert score(3) == ("compiled", 3) and score(4) == ("compiled", 4)
    assert score.switched_at == 3 and score.calls == 5
    (note,) = score.finish()
    assert "after 3 of 5 calls" in note


def test_a_failed_background_build_leaves_the_first_and_says_so():
    def build():
        raise RuntimeError("inductor broke")

    score = SwitchWhenReady(lambda x: x + 1, build)
    score._thread.join(10)
    assert [score(i) for i in range(3)] == [1, 2, 3] and not score.switched and score.failed
    (note,) = score.finish()
    assert "background compile failed (RuntimeError: inductor broke)" in note and "CUDA graph" in note


def test_a_build_slower_than_the_work_is_waited_for_and_said():
    gate = threading.Event()
    score = SwitchWhenReady(lambda x: x, lambda: (gate.wait(10), (lambda x: -x))[1])
    assert score(5) == 5
    threading.Timer(0.2, gate.set).start()
    (note,) = score.finish()
    assert "finished after the work" in note and not score.switched


class FakeCache:
    """Stands in for a run folder's CompileCache: counts loads and saves."""

    def __init__(self, present: bool):
        self.present, self.loaded, self.saves = present, False, 0

    def load(self):
        if not self.present:
            return None
        self.loaded = True
        return "loaded the compiled artefacts"

    def save(self):
        self.saves += 1
        return "saved the compiled artefacts"


@pytest.fixture
def compile_on_cpu(monkeypatch):
    """Let fast_score take its compile paths on a CPU, with torch.compile replaced by the module itself."""
    def for_device(device, compile=False, **_):
        return SpeedSwitches(bf16=False, channels_last=False, fused_adam=False, compile=compile, cuda_graphs=False)

    monkeypatch.setattr(SpeedSwitches, "for_device", staticmethod(for_device))
    monkeypatch.setattr(SpeedSwitches, "compiled", lambda self, module: module)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)


class Scaled(torch.nn.Module):
    """A score-shaped module: model(x, sigma)."""

    def __init__(self, channels=3):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, sigma):
        return self.conv(x) / sigma.view(-1, 1, 1, 1)


def test_artefacts_that_were_loaded_are_not_written_again(compile_on_cpu):
    model = Scaled()
    cache, notes = FakeCache(present=True), []
    fast_score(model, (2, 3, 8, 8), "compile", cache, notes)
    assert cache.saves == 0 and notes == ["loaded the compiled artefacts"]
    cold, notes = FakeCache(present=False), []
    fast_score(model, (2, 3, 8, 8), "compile", cold, notes)
    assert cold.saves == 1 and notes[-1] == "saved the compiled artefacts"


def test_a_background_compile_saves_its_artefacts_after_the_work(compile_on_cpu):
    model = Scaled()
    x, sigma = torch.randn(2, 3, 8, 8), torch.ones(2)
    for present, saves in ((False, 1), (True, 0)):
        cache, notes = FakeCache(present), []
        score = fast_score(model, (2, 3, 8, 8), "background", cache, notes)
        assert isinstance(score, SwitchWhenReady)
        score._thread.join(10)
        torch.testing.assert_close(score(x, sigma), model(x, sigma))
        notes += accel.finish_score(score, cache)
        assert cache.saves == saves and "switched to the compiled network after 0 of 1 calls" in " ".join(notes)


def test_fast_score_on_a_cpu_calls_the_model_and_refuses_unknown_modes():
    model = Scaled()
    score = fast_score(model, (2, 3, 8, 8), "background")  # nothing to compile on a CPU: no thread
    assert isinstance(score, FastScore)
    x, sigma = torch.randn(2, 3, 8, 8), torch.full((2,), 2.0)
    torch.testing.assert_close(score(x, sigma), model(x, sigma))
    with pytest.raises(ValueError, match="'off', 'compile' or 'background'"):
        fast_score(model, (2, 3, 8, 8), "always")


def test_evaluate_reports_progress_through_the_loss_pass(tmp_path):
    from ncsn_tune.model.evaluate import held_out_loss, held_out_loss_of_run

    from test_model import make_trainer

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
def test_background_compile_on_a_gpu_switches_and_agrees(tmp_path):
    from ncsn_tune.model.network import NCSNv2

    model = NCSNv2(3, 16, 16, sigmas=np.geomspace(10, 0.1, 5)).cuda().eval()
    x, sigma = torch.rand(4, 3, 16, 16, device="cuda"), torch.full((4,), 0.5, device="cuda")
    cache = accel.score_cache(tmp_path, model, (4, 3, 16, 16))
    score = fast_score(model, (4, 3, 16, 16), "background", cache)
    first = score(x, sigma).clone()
    while score._thread.is_alive():  # keep the GPU busy from this thread while the other compiles and captures
        score(x, sigma)
        torch.cuda.synchronize()
    last = score(x, sigma)
    notes = accel.finish_score(score, cache)
    assert score.switched and not score.failed, notes
    torch.testing.assert_close(last, first, rtol=0.05, atol=0.05)  # bf16, compiled or not
    assert cache.exists and any("saved the compiled artefacts" in n for n in notes)
