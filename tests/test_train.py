"""The trainer: steps, resume, checkpoints, NaN and signals, evaluation and samples, initial weights (CPU)."""

import json
import signal

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ncsn_tune.analysis import NoiseSchedule  # noqa: E402
from ncsn_tune.config import TrainConfig  # noqa: E402
from ncsn_tune.errors import NcsnTuneError  # noqa: E402
from ncsn_tune.model import checkpoint as ckpt  # noqa: E402
from ncsn_tune.model.network import NCSNv2  # noqa: E402
from ncsn_tune.model.batches import BatchSampler  # noqa: E402
from ncsn_tune.model.train import Trainer  # noqa: E402


def tiny_config(**overrides):
    base = dict(data="unused", ngf=8, batch_size=8, steps=20, lr=1e-3, log_every=5, eval_every=10**6, sample_every=10**6,
                checkpoint_every=10, device="cpu", eval_images=8)
    return TrainConfig(**{**base, **overrides})


def tiny_images(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 16, 16), dtype=np.uint8)


def make_trainer(tmp_path, name="run", callback=None, resume=None, **overrides):
    config = tiny_config(**overrides)
    schedule = NoiseSchedule.from_num_scales(20.0, 3 * 16 * 16, 10)
    images = tiny_images()
    return Trainer(config, schedule, 1e-5, images, images[:8], tmp_path / name, resume=resume, callback=callback)


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(line)]


def test_a_few_steps_reduce_the_loss(tmp_path):
    trainer = make_trainer(tmp_path, steps=60, log_every=10, checkpoint_every=1000)
    trainer.run()
    curve = losses(tmp_path / "run")
    assert len(curve) == 6 and curve[-1] < curve[0] * 0.8


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=GPU)])
def test_resume_equals_uninterrupted(tmp_path, device):
    # on a GPU: deterministic kernels, with the step captured in a CUDA graph (its random stream must resume too)
    extra = {} if device == "cpu" else dict(device="cuda", deterministic=True, compile=False, cuda_graphs=True)
    make_trainer(tmp_path, "straight", steps=20, **extra).run()
    make_trainer(tmp_path, "split", steps=10, **extra).run()
    state = ckpt.load_checkpoint(tmp_path / "split")
    assert state.step == 10
    make_trainer(tmp_path, "split", steps=20, resume=state, **extra).run()
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")
    a = ckpt.load_checkpoint(tmp_path / "straight")
    b = ckpt.load_checkpoint(tmp_path / "split")
    for k in a.model:
        torch.testing.assert_close(a.model[k], b.model[k], rtol=0, atol=0)


def test_interrupted_checkpoint_write_keeps_the_previous(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, steps=10)
    trainer.run()
    good = ckpt.list_checkpoints(tmp_path / "run")
    assert [p.name for p in good] == ["checkpoint_00000010.pt"]

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    trainer.step = 11
    with pytest.raises(KeyboardInterrupt):
        trainer.save()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["checkpoint_00000010.pt"]
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    assert ckpt.load_checkpoint(tmp_path / "run").step == 10


def test_keeps_the_last_checkpoints(tmp_path):
    make_trainer(tmp_path, steps=25, checkpoint_every=5, keep_checkpoints=2).run()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["checkpoint_00000020.pt", "checkpoint_00000025.pt"]


def test_corrupt_missing_and_mismatched_checkpoints(tmp_path):
    bad = tmp_path / "checkpoint_00000001.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(NcsnTuneError, match="not a readable checkpoint"):
        ckpt.load_checkpoint(bad)
    with pytest.raises(NcsnTuneError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(NcsnTuneError, match="holds no checkpoint"):
        ckpt.load_checkpoint(tmp_path / "emptydir" if (tmp_path / "emptydir").mkdir() is None else None)
    make_trainer(tmp_path, "small", steps=10).run()
    state = ckpt.load_checkpoint(tmp_path / "small")
    with pytest.raises(NcsnTuneError, match="do not fit"):
        make_trainer(tmp_path, "other", steps=20, ngf=16, resume=state)


def test_nan_loss_stops_naming_the_step(tmp_path, monkeypatch):
    import ncsn_tune.model.step as train_mod  # the training step's module

    calls = {"n": 0}
    real = train_mod.dsm_loss

    def flaky(model, x, sigmas, generator=None, **kwargs):
        calls["n"] += 1
        loss = real(model, x, sigmas, generator, **kwargs)
        return loss * float("nan") if calls["n"] == 13 else loss

    monkeypatch.setattr(train_mod, "dsm_loss", flaky)
    with pytest.raises(NcsnTuneError, match="at step 13.*step 10"):
        make_trainer(tmp_path, steps=20).run()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["checkpoint_00000010.pt"]


def test_sigint_saves_and_stops(tmp_path):
    holder = {}

    def callback(event):
        if event["event"] == "log" and event["step"] == 5:
            holder["trainer"]._on_signal(signal.SIGINT, None)

    trainer = make_trainer(tmp_path, steps=100, callback=callback)
    holder["trainer"] = trainer
    result = trainer.run()
    assert result["stopped_by"] == "SIGINT" and result["step"] == 5
    assert ckpt.load_checkpoint(tmp_path / "run").step == 5


def test_eval_and_samples_are_written(tmp_path):
    trainer = make_trainer(tmp_path, steps=4, eval_every=4, sample_every=4, sample_count=4, checkpoint_every=4, log_every=2)
    trainer.run()
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [l for l in lines if "eval_loss" in l]
    assert len(evals) == 1 and len(evals[0]["eval_loss_by_scale"]) == 10
    from PIL import Image

    with Image.open(tmp_path / "run" / "samples_00000004.png") as img:
        assert img.size == (2 + 2 * 18, 2 + 2 * 18)


def test_batch_sampler_visits_each_image_once_per_epoch():
    s = BatchSampler(10, 4, seed=0, flip=True)
    seen = torch.cat([s.next()[0] for _ in range(5)])  # 20 draws = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))


def test_official_checkpoint_loads_with_init_from(tmp_path):
    source = NCSNv2(3, 16, 8, sigmas=np.linspace(1, 0.1, 232))
    ema_state = {n: p.detach() + 1.0 for n, p in source.named_parameters()}
    official = [{f"module.{k}": v for k, v in source.state_dict().items()}, {}, 3, 1234, ema_state]
    torch.save(official, tmp_path / "checkpoint.pth")
    weights, ema = ckpt.load_official_weights(tmp_path / "checkpoint.pth")
    config = tiny_config()
    schedule = NoiseSchedule.from_num_scales(20.0, 3 * 16 * 16, 10)
    trainer = Trainer(config, schedule, 1e-5, tiny_images(), None, tmp_path / "run", init_weights=(weights, ema))
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(p.detach(), source.state_dict()[name])
    torch.testing.assert_close(trainer.ema.state_dict()["begin_conv.weight"], ema_state["begin_conv.weight"])
    assert trainer.model.sigmas.shape == (10,)
    with pytest.raises(NcsnTuneError, match="looks like an official"):
        ckpt.load_checkpoint(tmp_path / "checkpoint.pth")
