"""Background compiles and the compile plan of a training run, with fake processes on the CPU."""

import dataclasses

import pytest

torch = pytest.importorskip("torch")



from test_train import losses, make_trainer  # noqa: E402


def test_compile_decisions_follow_the_planned_work():
    from ncsn_tune.model.compile_policy import SAMPLE_COSTS, TRAIN_COSTS, decide_compile

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
    compiled = SpeedSwitches(bf16=False, channels_last=False, fused_adam=False, compile=False, cuda_graphs=False)
    trainer.compiles = precompile.BackgroundCompiles(trainer.run_dir, step=object(), compiled_switches=compiled, say=trainer._say)
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


def beside(trainer, precompile, score_s, **kwargs):
    """The background compiles of a GPU run, on the CPU trainer: the sampling network's (and ``kwargs``' step)."""
    trainer.compiles = precompile.BackgroundCompiles(trainer.run_dir, score=score_spec(), score_s=score_s, seconds_left=trainer._seconds_left,
                                                     say=trainer._say, **kwargs)


def notes_of(events):
    return [e["text"] for e in events if e.get("event") == "note"]


def test_the_sampling_network_is_compiled_beside_the_run(tmp_path, monkeypatch):
    from ncsn_tune.model import precompile

    started, events = [], []
    monkeypatch.setattr(precompile, "start", lambda spec, folder, threads=None: Started(started, spec, 2, threads))
    trainer = make_trainer(tmp_path, steps=60, log_every=5, checkpoint_every=1000, callback=events.append)
    beside(trainer, precompile, score_s=0.0)  # on a GPU plan_compiles decides it
    trainer.run()
    assert [p.spec for p in started] == [score_spec()] and started[0].threads >= 1 and not started[0].killed
    notes = notes_of(events)
    assert any(n.startswith("compiling the sampling network (batch") for n in notes)
    assert any(n.startswith("compiled the sampling network in the background") for n in notes)

    # a run too short for it: said, not started
    started, events = [], []
    trainer = make_trainer(tmp_path, "short", steps=10, callback=events.append)
    beside(trainer, precompile, score_s=60.0)
    trainer.run()
    assert started == [] and any("is not compiled beside this run" in n for n in notes_of(events))

    # a compile still running when the run ends is stopped, and said so
    monkeypatch.setattr(precompile, "start", lambda spec, folder, threads=None: Started(started, spec, 10**9, threads))
    events = []
    trainer = make_trainer(tmp_path, "unfinished", steps=10, callback=events.append)
    beside(trainer, precompile, score_s=0.0)
    trainer.run()
    assert started[-1].killed and any(n.startswith("training ended before the sampling network was compiled") for n in notes_of(events))


def test_the_sampling_network_compiles_after_the_training_step(tmp_path, monkeypatch):
    """One background compile at a time: the sampling network's starts once the training step's is done."""
    from ncsn_tune.model import precompile
    from ncsn_tune.model.accel import SpeedSwitches

    started, events = [], []
    monkeypatch.setattr(precompile, "start", lambda spec, folder, threads=None: Started(started, spec, 2, threads))
    trainer = make_trainer(tmp_path, steps=100, log_every=5, checkpoint_every=1000, callback=lambda e: events.append((e, len(started))))
    beside(trainer, precompile, 0.0, step="train spec",
           compiled_switches=SpeedSwitches(bf16=False, channels_last=False, fused_adam=False, compile=False, cuda_graphs=False))
    trainer.run()
    assert [p.spec for p in started] == ["train spec", score_spec()]
    switched = next(n for e, n in events if e.get("text", "").startswith("switched to the compiled step at step 50"))
    assert switched == 1  # only the training step's compile had started when the trainer switched


def test_which_sampling_network_a_run_compiles(tmp_path):
    from ncsn_tune.model.accel import score_cache
    from ncsn_tune.model.precompile import plan_compiles, plan_score

    trainer = make_trainer(tmp_path, steps=10)
    spec, _ = plan_score(trainer.model, trainer.run_dir, trainer.device)  # planned on a GPU; on a CPU the batch is the CPU's
    assert (spec.channels, spec.image_size, spec.ngf, spec.batch, spec.run_dir) == (3, 16, 8, 100, str(tmp_path / "run"))
    cache = score_cache(tmp_path / "run", trainer.model, (spec.batch, 3, 16, 16))
    import torch

    saved = torch.compiler.save_cache_artifacts
    torch.compiler.save_cache_artifacts = lambda: (b"artefacts", None)
    try:
        cache.save()
    finally:
        torch.compiler.save_cache_artifacts = saved
    spec, _ = plan_score(trainer.model, trainer.run_dir, trainer.device)
    assert spec is None  # this user's artefacts hold that graph already
    cache.path.unlink()
    config = dataclasses.replace(trainer.config, compile=False)
    plan = plan_compiles(config, trainer.model, trainer.run_dir, trainer.device, 4, 10, False, True)
    assert plan.score is None  # compiling is switched off


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
    from ncsn_tune.model.precompile import plan_compiles

    trainer = make_trainer(tmp_path, steps=2000)

    def decided():  # on a GPU the trainer plans its compiles; on a CPU the plan still says what it would decide
        plan = plan_compiles(trainer.config, trainer.model, trainer.run_dir, trainer.device, trainer.config.batch_size, 2000, False, True)
        trainer.switches, trainer.compile_note = plan.switches, plan.note

    decided()
    assert "(nothing cached yet)" in trainer.compile_note and trainer.compile_note.startswith("torch.compile off")
    wanted = trainer.switches
    batch = (trainer.config.batch_size, *trainer.image_shape)
    CompileCache(trainer.run_dir, "train", trainer.model, batch, dataclasses.replace(wanted, compile=True)).mark_built()
    decided()
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
