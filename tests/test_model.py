"""The NCSNv2 network, the DSM loss, EMA, checkpoints and the trainer (CPU)."""

import dataclasses
import json
import signal

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ncsn_tune.analysis import NoiseSchedule  # noqa: E402
from ncsn_tune.config import TrainConfig, save_config  # noqa: E402
from ncsn_tune.interop.ncsnv2_yaml import load_train_config  # noqa: E402
from ncsn_tune.errors import NcsnTuneError  # noqa: E402
from ncsn_tune.model import checkpoint as ckpt  # noqa: E402
from ncsn_tune.model.ema import EMA  # noqa: E402
from ncsn_tune.model.loss import dsm_loss_by_scale, dsm_loss_per_sample  # noqa: E402
from ncsn_tune.model.network import InstanceNormPlus, NCSNv2, count_parameters, max_pool_5x5  # noqa: E402
from ncsn_tune.model.train import BatchSampler, Trainer  # noqa: E402


def test_cifar10_parameter_count_and_official_names():
    model = NCSNv2(3, 32, 128)
    assert count_parameters(model) == 29_694_083
    keys = set(model.state_dict())
    for key in ("sigmas", "begin_conv.weight", "normalizer.alpha", "res2.0.shortcut.conv.weight", "res3.0.shortcut.weight",
                "refine1.adapt_convs.0.1_1_conv.weight", "refine2.msf.convs.1.bias", "refine4.output_convs.3_2_conv.weight",
                "refine1.crp.convs.1.weight", "end_conv.bias"):
        assert key in keys, key


def test_deeper_variants_build_and_keep_shape():
    for arch, size in (("ncsnv2_deeper", 64), ("ncsnv2_deepest", 128)):
        model = NCSNv2(1, size, 8, arch)
        x = torch.rand(2, 1, size, size)
        assert model(x, torch.tensor([1.0, 2.0])).shape == x.shape


def test_instance_norm_plus_matches_its_formula():
    torch.manual_seed(0)
    norm = InstanceNormPlus(5)
    with torch.no_grad():
        norm.beta.normal_()
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64) * 3 + 1
    mu = x.mean(dim=(2, 3))
    var = x.var(dim=(2, 3), unbiased=False)
    m, s2 = mu.mean(dim=1, keepdim=True), mu.var(dim=1, keepdim=True, unbiased=True)
    h = (x - mu[..., None, None]) / torch.sqrt(var[..., None, None] + 1e-5)
    h = h + (((mu - m) / torch.sqrt(s2 + 1e-5)) * norm.alpha.double())[..., None, None]
    expected = norm.gamma.double()[None, :, None, None] * h + norm.beta.double()[None, :, None, None]
    got = norm.double()(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_separable_max_pool_equals_the_5x5_pool():
    g = torch.Generator().manual_seed(0)
    for shape in ((2, 3, 9, 7), (1, 4, 2, 2), (3, 2, 16, 16)):
        x = torch.randn(shape, generator=g)
        x[..., ::3, :] = -1.0  # ties, as ELU's floor gives them
        torch.testing.assert_close(max_pool_5x5(x), torch.nn.functional.max_pool2d(x, 5, stride=1, padding=2), rtol=0, atol=0)
    x = torch.full((1, 1, 4, 4), -3.0)  # borders never see the padding as a value
    assert (max_pool_5x5(x) == -3.0).all()


def test_output_is_divided_by_sigma():
    torch.manual_seed(0)
    model = NCSNv2(3, 32, 8).eval()
    x = torch.rand(2, 3, 32, 32)
    base = model.unconditional(x)
    torch.testing.assert_close(model(x, torch.tensor([2.0, 0.5])), base / torch.tensor([2.0, 0.5]).view(2, 1, 1, 1))


class Linear(torch.nn.Module):
    """s(x, sigma) = (W x) / sigma, W a fixed matrix: small enough to compute the loss by hand."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x, sigma):
        return (x.flatten(1) @ self.w.T).view_as(x) / sigma.view(-1, 1, 1, 1)


def test_dsm_loss_against_hand_computation():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 4))
    x = rng.random((3, 1, 2, 2))
    z = rng.normal(size=(3, 1, 2, 2))
    sigmas = np.array([5.0, 1.0, 0.2])
    idx = np.array([2, 0, 1])
    got = dsm_loss_per_sample(Linear(torch.tensor(w)), torch.tensor(x), torch.tensor(sigmas), torch.tensor(idx), torch.tensor(z)).numpy()
    for k in range(3):
        s = sigmas[idx[k]]
        xt = (x[k] + s * z[k]).reshape(-1)
        target = -(xt - x[k].reshape(-1)) / s**2
        score = w @ xt / s
        assert got[k] == pytest.approx(0.5 * ((score - target) ** 2).sum() * s**2, rel=1e-12)


def test_loss_by_scale_shape_and_ideal_denoiser():
    # For a single data point at 0, the exact score of the noised data is -x/sigma^2: loss 0 at every scale.
    class Exact(torch.nn.Module):
        def forward(self, x, sigma):
            return -x / sigma.view(-1, 1, 1, 1) ** 2

    sigmas = torch.tensor([3.0, 1.0, 0.1], dtype=torch.float64)
    out = dsm_loss_by_scale(Exact(), torch.zeros(4, 1, 2, 2, dtype=torch.float64), sigmas)
    assert out.shape == (3,) and torch.all(out.abs() < 1e-20)


def test_ema_update_rule():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, 0.9)
    before = [s.clone() for s in ema.shadow]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for b, s, p in zip(before, ema.shadow, model.parameters()):
        torch.testing.assert_close(s, 0.9 * b + 0.1 * p.detach())
    copy = ema.averaged_model(model)
    torch.testing.assert_close(copy.weight, ema.shadow[0])


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
    import ncsn_tune.model.train as train_mod

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


def test_official_yaml_reads_into_its_values(tmp_path, real_configs):
    official = (real_configs / "ncsnv2" / "configs" / "cifar10.yml").read_text()  # as published
    c = load_train_config(real_configs / "ncsnv2" / "configs" / "cifar10.yml")
    assert (c.data, c.batch_size, c.steps, c.sigma_max, c.sigma_min, c.num_scales) == ("cifar10", 128, 300001, 50.0, 0.01, 232)
    assert (c.step_size, c.steps_per_scale, c.ngf, c.lr, c.beta1, c.adam_eps, c.ema_rate) == (6.2e-6, 5, 128, 1e-4, 0.9, 1e-8, 0.999)
    assert (c.weight_decay, c.random_flip, c.checkpoint_every, c.architecture) == (0.0, True, 5000, "ncsnv2")
    path = tmp_path / "cifar10.yml"
    path.write_text(official.replace("InstanceNorm++", "BatchNorm"))
    with pytest.raises(NcsnTuneError, match="BatchNorm"):
        load_train_config(path)


def test_our_yaml_roundtrip_and_errors(tmp_path):
    c = tiny_config(lr=3e-4)
    save_config(c, tmp_path / "c.yaml")
    assert load_train_config(tmp_path / "c.yaml") == c
    (tmp_path / "bad.yaml").write_text("lr: fast\n")
    with pytest.raises(NcsnTuneError, match="lr must be float"):
        load_train_config(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text("learning_rate: 1\n")
    with pytest.raises(NcsnTuneError, match="unknown setting"):
        load_train_config(tmp_path / "bad2.yaml")


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


def test_compile_decisions_follow_the_planned_work():
    from ncsn_tune.model.accel import SAMPLE_COSTS, TRAIN_COSTS, decide_compile

    assert decide_compile(2000, False, TRAIN_COSTS, "steps")[0] == "off"  # a short run never waits for a cold compile
    assert decide_compile(2000, False, TRAIN_COSTS, "steps", background=True)[0] == "off"  # nor switches too late to pay
    assert decide_compile(300000, False, TRAIN_COSTS, "steps")[0] == "compile"
    verdict, why = decide_compile(300000, False, TRAIN_COSTS, "steps", background=True)
    assert verdict == "background" and "switches to the compiled step" in why
    assert decide_compile(2000, True, TRAIN_COSTS, "steps")[0] == "compile"  # warm: the compile costs seconds
    assert decide_compile(64 * 1161, False, SAMPLE_COSTS, "image evaluations")[0] == "off"
    assert decide_compile(1000 * 1161, True, SAMPLE_COSTS, "image evaluations")[0] == "compile"


class FinishedProcess:
    """Stands in for the background compile: finished after ``polls`` polls."""

    def __init__(self, polls):
        self.polls, self.returncode = polls, None

    def poll(self):
        self.polls -= 1
        if self.polls <= 0:
            self.returncode = 0
        return self.returncode

    def kill(self):
        pass

    def wait(self):
        return self.returncode


def test_switching_to_the_compiled_step_mid_run_leaves_the_run_as_it_was(tmp_path, monkeypatch):
    from ncsn_tune.model import precompile
    from ncsn_tune.model.accel import SpeedSwitches

    make_trainer(tmp_path, "straight", steps=60, log_every=5, checkpoint_every=1000).run()
    events = []
    trainer = make_trainer(tmp_path, "switched", steps=60, log_every=5, checkpoint_every=1000, callback=events.append)
    trainer.background = object()  # a spec; what start() receives
    trainer.compiled_switches = SpeedSwitches(bf16=False, channels_last=False, fused_adam=False, compile=False, cuda_graphs=False)
    monkeypatch.setattr(precompile, "start", lambda spec, folder: FinishedProcess(polls=2))
    trainer.run()
    assert losses(tmp_path / "switched") == losses(tmp_path / "straight")
    assert any("switched to the compiled step at step 50" in e.get("text", "") for e in events)


class Started(FinishedProcess):
    """A background compile that records what was started, and whether it was killed."""

    def __init__(self, log, spec, polls, threads=None):
        super().__init__(polls)
        self.spec, self.killed, self.threads = spec, False, threads
        log.append(self)

    def kill(self):
        self.killed = True


def score_spec():
    from ncsn_tune.model.precompile import ScoreSpec

    return ScoreSpec(3, 16, 8, "auto", 10, 100, "run")


def notes_of(events):
    return [e["text"] for e in events if e.get("event") == "note"]


def test_the_sampling_network_is_compiled_beside_the_run(tmp_path, monkeypatch):
    from ncsn_tune.model import precompile

    started, events = [], []
    monkeypatch.setattr(precompile, "start", lambda spec, folder, threads=None: Started(started, spec, 2, threads))
    trainer = make_trainer(tmp_path, steps=60, log_every=5, checkpoint_every=1000, callback=events.append)
    trainer.score_spec, trainer.score_compile_s = score_spec(), 0.0  # on a GPU _plan_score_compile sets them
    trainer.run()
    assert [p.spec for p in started] == [score_spec()] and started[0].threads >= 1 and not started[0].killed
    notes = notes_of(events)
    assert any(n.startswith("compiling the sampling network (batch") for n in notes)
    assert any(n.startswith("compiled the sampling network in the background") for n in notes)

    # a run too short for it: said, not started
    started, events = [], []
    trainer = make_trainer(tmp_path, "short", steps=10, callback=events.append)
    trainer.score_spec, trainer.score_compile_s = score_spec(), 60.0
    trainer.run()
    assert started == [] and any("is not compiled beside this run" in n for n in notes_of(events))

    # a compile still running when the run ends is stopped, and said so
    monkeypatch.setattr(precompile, "start", lambda spec, folder, threads=None: Started(started, spec, 10**9, threads))
    events = []
    trainer = make_trainer(tmp_path, "unfinished", steps=10, callback=events.append)
    trainer.score_spec, trainer.score_compile_s = score_spec(), 0.0
    trainer.run()
    assert started[-1].killed and any(n.startswith("training ended before the sampling network was compiled") for n in notes_of(events))


def test_the_sampling_network_compiles_after_the_training_step(tmp_path, monkeypatch):
    """One background compile at a time: the sampling network's starts once the training step's is done."""
    from ncsn_tune.model import precompile
    from ncsn_tune.model.accel import SpeedSwitches

    started, events = [], []
    monkeypatch.setattr(precompile, "start", lambda spec, folder, threads=None: Started(started, spec, 2, threads))
    trainer = make_trainer(tmp_path, steps=100, log_every=5, checkpoint_every=1000, callback=lambda e: events.append((e, len(started))))
    trainer.background = "train spec"
    trainer.compiled_switches = SpeedSwitches(bf16=False, channels_last=False, fused_adam=False, compile=False, cuda_graphs=False)
    trainer.score_spec, trainer.score_compile_s = score_spec(), 0.0
    trainer.run()
    assert [p.spec for p in started] == ["train spec", score_spec()]
    switched = next(n for e, n in events if e.get("text", "").startswith("switched to the compiled step at step 50"))
    assert switched == 1  # only the training step's compile had started when the trainer switched


def test_which_sampling_network_a_run_compiles(tmp_path):
    from ncsn_tune.model.accel import score_cache

    trainer = make_trainer(tmp_path, steps=10)
    trainer._plan_score_compile()  # called on a GPU; on a CPU the batch is the CPU's
    spec = trainer.score_spec
    assert (spec.channels, spec.image_size, spec.ngf, spec.batch, spec.run_dir) == (3, 16, 8, 100, str(tmp_path / "run"))
    cache = score_cache(tmp_path / "run", trainer.model, (spec.batch, 3, 16, 16))
    cache.path.parent.mkdir(parents=True)
    cache.path.write_bytes(b"artefacts")
    trainer.score_spec = None
    trainer._plan_score_compile()
    assert trainer.score_spec is None  # the run folder holds that graph already
    cache.path.unlink()
    trainer.config = dataclasses.replace(trainer.config, compile=False)
    trainer._plan_score_compile()
    assert trainer.score_spec is None  # compiling is switched off


def test_background_compiles_are_told_what_to_build(tmp_path, monkeypatch):
    from ncsn_tune.model import precompile

    started, built = [], []
    monkeypatch.setattr(precompile.subprocess, "Popen", lambda command, **kw: started.append((command, kw)) or "process")
    monkeypatch.setattr(precompile, "compile_score", built.append)
    monkeypatch.setattr(precompile, "compile_step", built.append)
    score = precompile.ScoreSpec(3, 32, 128, "cifar10", 232, 1000, str(tmp_path))
    assert precompile.start(score, tmp_path, threads=6) == "process"
    command, kw = started[-1]
    assert kw["env"]["TORCHINDUCTOR_COMPILE_THREADS"] == "6" and command[1:3] == ["-m", "ncsn_tune.model.precompile"]
    precompile.main(command[-1])
    step = precompile.StepSpec(3, 32, 128, "cifar10", 232, 128, {"bf16": True}, str(tmp_path / "train_key.bin"))
    precompile.start(step, tmp_path)
    command, kw = started[-1]
    assert kw["env"] is None  # torch's own number of compile workers
    precompile.main(command[-1])
    assert built == [score, step]
    assert precompile.log_path(tmp_path, "train").name == "precompile.log" and precompile.log_path(tmp_path, "score").is_file()


def test_a_step_compiled_on_this_machine_before_makes_compiling_pay_for_a_short_run(tmp_path, monkeypatch):
    """Warm means the run folder's artefacts or this machine's compile cache: a new run of a step compiled here before
    compiles first (about 11 s from the cache, then 48 it/s instead of 26), where a cold one would not pay."""
    from ncsn_tune.model.accel import CompileCache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    trainer = make_trainer(tmp_path, steps=2000)
    trainer._decide_compile()  # on a GPU __init__ calls it; on a CPU it still says what it would decide
    assert "(nothing cached yet)" in trainer.compile_note and trainer.compile_note.startswith("torch.compile off")
    wanted = trainer.switches
    batch = (trainer.config.batch_size, *trainer.image_shape)
    CompileCache(trainer.run_dir, "train", trainer.model, batch, dataclasses.replace(wanted, compile=True)).mark_built()
    trainer._decide_compile()
    assert trainer.compile_note.startswith("torch.compile on") and "artefacts are cached" in trainer.compile_note


class StepCache:
    """Stands in for the run folder's CompileCache of the training step."""

    def __init__(self, present):
        self.present, self.loaded, self.saves, self.marks = present, False, 0, 0

    def load(self):
        self.loaded = self.present
        return "loaded the compiled artefacts" if self.present else None

    def save(self):
        self.saves += 1
        return "saved the compiled artefacts"

    def mark_built(self):
        self.marks += 1


def test_the_compiled_step_is_saved_once_and_recorded_as_built(tmp_path):
    for present, saves in ((False, 1), (True, 0)):  # artefacts loaded from the run folder are not written again
        events = []
        trainer = make_trainer(tmp_path, f"run_{present}", steps=3, callback=events.append)
        trainer.compile_cache = cache = StepCache(present)  # on a GPU _decide_compile sets it when compiling
        trainer.run()
        assert (cache.saves, cache.marks) == (saves, 1)
        assert ("saved the compiled artefacts" in notes_of(events)) == (saves == 1)
