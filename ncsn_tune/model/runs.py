"""A training run from start to finish: the configuration, the run folder, resuming, and the trainer.

:func:`setup_run` turns what was given (settings, a YAML file, a run folder to
continue) into a :class:`RunSetup` -- the resolved configuration and the
:class:`~ncsn_tune.tuning.TrainingPlan` -- without writing anything;
:func:`run_training` writes the run folder's ``config.yaml`` and
``schedule.json`` and trains. ``ncsn-tune train`` is these two calls.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..config import TrainConfig, load_train_config, save_config
from ..errors import CheckpointError, NcsnTuneError, RunError
from ..tuning import TrainingPlan, plan_training
from .checkpoint import Checkpoint, list_checkpoints, load_checkpoint, load_official_weights


@dataclass
class RunSetup:
    """A run ready to start: where, with what, and (when continuing) from which checkpoint."""

    config: TrainConfig
    plan: TrainingPlan
    run_dir: Path
    resume: Checkpoint | None = None
    notes: list[str] = field(default_factory=list)
    init_weights: tuple[dict, dict | None] | None = None

    def summary(self) -> dict:
        s, config = self.plan.schedule, self.config
        return {"num_scales": s.num_scales, "sigma_max": s.sigma_max, "sigma_min": s.sigma_min, "ratio": s.ratio,
                "overlap": s.overlap, "step_size": self.plan.step_size, "steps_per_scale": config.steps_per_scale,
                "batch_size": config.batch_size, "steps": config.steps, "run_dir": str(self.run_dir),
                "resume_from": str(self.resume.path) if self.resume else None, "notes": self.notes,
                "config": dataclasses.asdict(config)}


def setup_run(settings: dict, *, output: Path | None = None, config_file: Path | None = None, resume: bool = False,
              init_from: Path | None = None, workdir: Path | None = None, progress=None) -> RunSetup:
    """Resolve a run from ``settings`` (TrainConfig fields given; None = not given) on top of the run folder's
    config.yaml (``resume``), a YAML file (ours or an official NCSNv2 one), or the defaults. Every input is
    read and checked here, before any long work; nothing is written."""
    given = {k: v for k, v in settings.items() if v is not None}
    ckpt = None
    if init_from is not None and resume:
        raise CheckpointError("initial weights and continuing a run exclude each other", fields=("init_from", "resume"))
    if output is not None:
        check_run_folder(Path(output))
    init = load_official_weights(init_from) if init_from is not None else None
    if resume:
        if output is None:
            raise RunError("continuing a run needs its folder", fields="output")
        saved = Path(output) / "config.yaml"
        if not saved.is_file():
            raise RunError(f"{output} has no config.yaml: it is not a run folder to continue", fields="output")
        base = load_train_config(saved)
        ckpt = load_checkpoint(output)
    elif config_file is not None:
        base = load_train_config(config_file)
    else:
        base = TrainConfig()
    try:
        config = dataclasses.replace(base, **given).validate()
    except TypeError as exc:
        raise NcsnTuneError(str(exc)) from None
    plan = plan_training(config, run=ckpt, workdir=workdir, progress=progress)
    run_dir = Path(output) if output is not None else check_run_folder(Path("runs") / plan.train.name)
    if ckpt is not None and ckpt.step >= plan.config.steps:
        raise RunError(f"the run is already at step {ckpt.step}; give a total number of steps above that to train further",
                       fields="steps")
    if ckpt is None and list_checkpoints(run_dir):
        raise RunError(f"{run_dir} already holds checkpoints: continue it, or choose another run folder", fields=("resume", "output"))
    notes = (ckpt.notes if ckpt is not None else []) + list(plan.notes)
    return RunSetup(plan.config, plan, run_dir, ckpt, notes, init)


def check_run_folder(run_dir: Path) -> Path:
    """A run folder that is (or can be made) a folder this process may write in."""
    import os

    for folder in [run_dir, *run_dir.parents]:
        if folder.exists():
            if not folder.is_dir():
                raise RunError(f"{folder} is a file, not a folder; choose another run folder", fields="output")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise RunError(f"{folder} is not writable; choose a run folder you can write to", fields="output")
            return run_dir
    return run_dir


def count_model_parameters(setup: RunSetup) -> int:
    from .network import count_parameters
    from .train import build_model

    return count_parameters(build_model(setup.config, setup.plan.train.image_shape, setup.plan.schedule.sigmas))


def run_training(setup: RunSetup, *, callback: Callable[[dict], None] | None = None, main_process: bool = True) -> dict:
    """Write the run folder's config.yaml and schedule.json (rank 0) and train; returns the trainer's summary."""
    from .train import Trainer

    if main_process:
        setup.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(setup.config, setup.run_dir / "config.yaml")
        if setup.resume is None:
            setup.plan.schedule.save(setup.run_dir / "schedule.json")
    plan = setup.plan
    trainer = Trainer(setup.config, plan.schedule, plan.step_size, plan.train, plan.test, setup.run_dir, resume=setup.resume,
                      init_weights=setup.init_weights, callback=callback)
    return trainer.run()
