"""Speed switches for the network's forward pass (issue 15): when torch.compile pays for sampling and evaluation,
keeping its artefacts without writing them twice, and the held-out loss of `evaluate` on the same fast path as
sampling."""

import numpy as np
import pytest
import torch

from ncsn_tune.model import accel
from ncsn_tune.model.accel import SAMPLE_COSTS, FastScore, SpeedSwitches, decide_compile, fast_score

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
    monkeypatch.setattr(accel, "score_cache", lambda run_dir, model, batch_shape: caches[-1])
    caches.append(FakeCache(present=True))
    notes = []
    fast_score(model, (2, 3, 8, 8), True, tmp_path, notes)
    cache = caches[-1]
    assert cache.saves == 0 and notes == ["loaded the compiled artefacts"]
    caches.append(FakeCache(present=False))
    notes = []
    fast_score(model, (2, 3, 8, 8), True, tmp_path, notes)
    cold = caches[-1]
    assert cold.saves == 1 and notes == ["no compiled artefacts in the run folder yet: compiling", "saved the compiled artefacts"]
    caches.append(FakeCache(present=True))
    fast_score(model, (2, 3, 8, 8), False, tmp_path, [])
    untouched = caches[-1]
    assert not untouched.loaded and untouched.saves == 0


def test_fast_score_on_a_cpu_calls_the_model():
    model = Scaled()
    score = fast_score(model, (2, 3, 8, 8), True)  # nothing to compile on a CPU
    assert isinstance(score, FastScore) and score.graph is None and score.model is model
    x, sigma = torch.randn(2, 3, 8, 8), torch.full((2,), 2.0)
    torch.testing.assert_close(score(x, sigma), model(x, sigma))


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
