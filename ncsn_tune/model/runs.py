"""A training run from start to finish: the configuration, the run folder, resuming, and the trainer.

:func:`setup_run` turns what was given (settings, a YAML file, a run folder to
continue) into a :class:`RunSetup` -- the resolved configuration and the
:class:`~ncsn_tune.tuning.TrainingPlan` -- reading and checking every input and
writing nothing. :func:`run_training` locks the run folder, writes its
``config.yaml`` and ``schedule.json`` and trains. ``ncsn-tune train`` is these
two calls.

The run folder cannot be corrupted by the usual accidents: an OS lock (held
while training, released by the kernel when the process dies, so a killed run
never leaves a stale one) keeps a second trainer out; a fresh run never starts
over an existing one unless told to (``overwrite``); a continued run restores
its checkpoint exactly, then applies the settings that may change (learning
rate and the other optimiser settings, EMA rate, intervals, total steps, speed
switches, M and eps for the sample grids), and refuses the others (data,
schedule, architecture, ngf, seed) before anything is written; temporary files
of a writer that was killed are removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..config import TrainConfig, save_config
from ..data import data_name
from ..interop.ncsnv2_yaml import load_train_config, read_train_config, required_data
from ..errors import CheckpointError, NcsnTuneError, RunError
from ..tuning import TrainingPlan, plan_training
from ..tuning.training import check_cpu_training_time, resolve_data
from .checkpoint import Checkpoint, list_checkpoints, load_checkpoint, load_official_weights, non_finite_tensor

#: Settings a continued run may not change: they are part of the trained model or its schedule. Its data may not change
#: either, but is not compared here as text: ``data`` and ``data_root`` only say where to find it (a typed root, a
#: trailing slash, a relative path or a symlink all lead to the same images), and the resolver checks that what they
#: lead to is the data the run was trained on (its recorded identity).
FIXED_ON_RESUME = ("schedule", "sigma_max", "sigma_min", "num_scales", "target_overlap", "architecture", "ngf", "seed")
#: Where a run's data is found: given again on resume, they are used to find it, never reported as changes.
DATA_LOCATION = ("data", "data_root")
#: What a run folder holds (the files a fresh run refuses to mix with, and ``overwrite`` removes).
RUN_FILES = ("config.yaml", "schedule.json", "metrics.jsonl")
RUN_PATTERNS = ("checkpoint_*.pt", "samples_*.png", "fid_reference_*.npz")
LOCK_FILE = ".lock"


@dataclass
class RunSetup:
    """A run ready to start: where, with what, and (when continuing) from which checkpoint."""

    config: TrainConfig
    plan: TrainingPlan
    run_dir: Path
    resume: Checkpoint | None = None
    notes: list[str] = field(default_factory=list)
    init_weights: tuple[dict, dict | None] | None = None
    changed: dict = field(default_factory=dict)
    overwrite: bool = False

    @property
    def complete(self) -> bool:
        """A continued run already at its total number of steps: the same command again has nothing left to train."""
        return self.resume is not None and self.resume.step >= self.config.steps

    def summary(self) -> dict:
        s, config = self.plan.schedule, self.config
        return {"num_scales": s.num_scales, "sigma_max": s.sigma_max, "sigma_min": s.sigma_min, "ratio": s.ratio,
                "overlap": s.overlap, "step_size": self.plan.step_size, "steps_per_scale": config.steps_per_scale,
                "batch_size": config.batch_size, "steps": config.steps, "run_dir": str(self.run_dir),
                "resume_from": str(self.resume.path) if self.resume else None,
                "changed": {k: list(v) for k, v in self.changed.items()}, "notes": self.notes, "config": dataclasses.asdict(config)}


def run_files(run_dir: Path) -> list[Path]:
    """The files of a run in ``run_dir`` (empty when there is none)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [run_dir / name for name in RUN_FILES if (run_dir / name).exists()]
    found += [p for pattern in RUN_PATTERNS for p in sorted(run_dir.glob(pattern))]
    if (run_dir / "tensorboard").is_dir():
        found.append(run_dir / "tensorboard")
    return found


def check_run_folder(run_dir: Path) -> Path:
    """A run folder that is (or can be made) a folder this process may write in."""
    for folder in [run_dir, *run_dir.parents]:
        if folder.exists():
            if not folder.is_dir():
                raise RunError(f"{folder} is a file, not a folder; choose another run folder", fields="output")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise RunError(f"{folder} is not writable; choose a run folder you can write to", fields="output")
            return run_dir
    return run_dir


def _same_setting(name: str, old, new, ckpt: Checkpoint) -> bool:
    """Whether a setting given again for a continued run is the run's own: ``auto`` and the architecture it resolves
    to for the run's image size are the same; a schedule file is the run's schedule when its scales are."""
    if name == "architecture":
        from .network import architecture_for

        size = ckpt.image_shape[-1]
        return (architecture_for(size) if old == "auto" else old) == (architecture_for(size) if new == "auto" else new)
    if name == "schedule" and new is not None:
        from ..analysis.noise_schedule import NoiseSchedule

        return NoiseSchedule.load(new).same_scales(ckpt.schedule)
    return old == new


def changes_on_resume(base: TrainConfig, given: dict, ckpt: Checkpoint) -> dict[str, tuple]:
    """The settings given for a continued run that differ from the run's; refuses those that cannot change. Where the
    data is found (:data:`DATA_LOCATION`) is not a change: the data itself is checked by its identity."""
    changed = {k: (getattr(base, k), v) for k, v in given.items()
               if k not in DATA_LOCATION and not _same_setting(k, getattr(base, k), v, ckpt)}
    fixed = [k for k in changed if k in FIXED_ON_RESUME]
    if fixed:
        what = ", ".join(f"{k} {changed[k][0]!r} -> {changed[k][1]!r}" for k in fixed)
        raise RunError(f"a continued run cannot change {what}: they belong to the trained model, its data or its schedule; start a "
                       "new run for them", fields=tuple(fixed))
    return changed


def optimizer_tensors(state) -> list[tuple[str, "object"]]:
    """(name, tensor) for every tensor of an optimiser's state dict (Adam's moments and step counts)."""
    out = []
    for index, per_param in ((state or {}).get("state") or {}).items():
        for key, value in (per_param or {}).items():
            out.append((f"optimizer.state.{index}.{key}", value))
    return out


def default_run_folder(name: str) -> Path:
    """Where a run on the data called ``name`` trains when no folder is given, a new run and a continued one alike:
    runs/<name>, below the folder the command runs in."""
    return Path("runs") / name


def open_checkpoint(checkpoint=None, *, workdir: Path | None = None) -> Checkpoint:
    """``checkpoint`` read and checked (a :class:`Checkpoint` as it is, a checkpoint file, or a run folder: its newest).
    Without one, the newest checkpoint of the run the chain's ``train`` line makes without a folder: runs/<data name>
    for the data it trains on (:func:`~ncsn_tune.tuning.training.resolve_data`: the saved schedule's, else CIFAR-10),
    with a note saying which file that is and why."""
    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    if checkpoint is not None:
        return load_checkpoint(checkpoint)
    choice = resolve_data(None, None, workdir=workdir)
    name = data_name(choice.spec)
    folder = default_run_folder(name)
    if not list_checkpoints(folder):
        others = sorted(str(p) for p in folder.parent.glob("*") if p != folder and p.is_dir() and list_checkpoints(p))
        elsewhere = f"; {folder.parent} holds the run(s) {', '.join(others[:5])}: give one with --checkpoint" if others else ""
        raise CheckpointError(f"no checkpoint given, and {folder} (where 'ncsn-tune train' trains on {name} without --output) holds "
                              f"no checkpoint: train first, or give the checkpoint (a run folder or a checkpoint file){elsewhere}",
                              fields="checkpoint")
    ckpt = load_checkpoint(folder)
    ckpt.notes.insert(0, f"checkpoint {ckpt.path} (step {ckpt.step}): the newest in {folder}, where 'ncsn-tune train' trains on "
                         f"{name} without --output ({'; '.join(choice.notes)})")
    return ckpt


def setup_run(settings: dict, *, output: Path | None = None, config_file: Path | None = None, resume: bool = False,
              init_from: Path | None = None, overwrite: bool = False, workdir: Path | None = None, progress=None,
              main_process: bool = True, dry_run: bool = False) -> RunSetup:
    """Resolve a run from ``settings`` (TrainConfig fields given; None = not given) on top of the run folder's
    config.yaml (``resume``), a YAML file (ours or an official NCSNv2 one), or the defaults. Every input is
    read and checked here, before any long work; nothing is written. Only the main process (rank 0 under
    torchrun, which owns the folder) checks the folder's lock and whether it already holds a run: the other
    ranks would race with rank 0's own writes."""
    given = {k: v for k, v in settings.items() if v is not None}
    ckpt, changed, file_notes, required = None, {}, [], None
    if init_from is not None and resume:
        raise CheckpointError("initial weights and continuing a run exclude each other", fields=("init_from", "resume"))
    if overwrite and resume:
        raise RunError("continuing a run and starting it afresh exclude each other", fields=("overwrite", "resume"))
    defaulted = resume and output is None
    if defaulted:  # the same line that started the run without --output continues it where it trained
        output = default_run_folder(data_name(resolve_data(given.get("data"), given.get("data_root"), workdir=workdir).spec))
    if output is not None:
        check_run_folder(Path(output))
        if main_process:
            check_own_files(Path(output))
            RunLock.refuse_if_held(Path(output))
    init = load_official_weights(init_from) if init_from is not None else None
    if resume and config_file is not None:
        raise RunError("a run continues with the configuration it recorded (config.yaml in its folder): leave --config out, or "
                       "start a new run from it", fields=("config", "resume"))
    if resume:
        saved = Path(output) / "config.yaml"
        if not saved.is_file():
            where = " (where a run on this data trains without --output; name the run's folder with --output)" if defaulted else ""
            raise RunError(f"{output} has no config.yaml: it is not a run folder to continue{where}", fields="output")
        base = load_train_config(saved)
        # a run stopped before its first checkpoint has nothing to continue, so it starts again
        if list_checkpoints(output):
            ckpt = load_checkpoint(output)
            bad = (non_finite_tensor(ckpt.model) or non_finite_tensor(ckpt.ema)
                   or non_finite_tensor(dict(optimizer_tensors(ckpt.optimizer))))
            if bad is not None:
                raise CheckpointError(f"{ckpt.path}: the weights or the optimiser's state hold NaN or infinite values ({bad}), so the run "
                                      "cannot continue from it; delete it to continue from the checkpoint before, or start the run afresh",
                                      fields=("resume", "overwrite"))
            changed = changes_on_resume(base, given, ckpt)
            given = {k: v for k, v in given.items() if k in changed or k in DATA_LOCATION}  # the run's own values stay as recorded
    elif config_file is not None:
        try:
            base, file_notes = read_train_config(config_file)
            base.validate()
        except NcsnTuneError as err:  # a value in the file: said of the file, not of the option that would override it
            if set(err.fields) <= {"config"}:
                raise
            raise type(err)(str(err) if str(config_file) in str(err) else f"{config_file}: {err}", fields="config") from None
        required = required_data(config_file)
        if required is not None and required[1] is None and "data" not in given:
            shape = "x".join(map(str, required[2])) if required[2] else "its"
            raise RunError(f"{config_file} trains on {required[0] or 'a data set it does not name'} ({shape} images), which ncsn_tune "
                           "cannot find by name: give those images with --data (a folder of images or an array); without it the run "
                           "would train on CIFAR-10", fields=("data", "config"))
    else:
        base = TrainConfig()
    try:
        config = dataclasses.replace(base, **given).validate()
    except TypeError as exc:
        raise NcsnTuneError(str(exc)) from None
    from_file = ({k for k, v in dataclasses.asdict(base).items() if k not in given and v != getattr(TrainConfig(), k)}
                 if config_file is not None else set())
    try:
        plan = plan_training(config, run=ckpt, changed=set(changed), workdir=workdir, progress=progress)
    except NcsnTuneError as err:  # a value the file gave is what to change, not an option the user did not type
        if set(err.fields) & from_file and not set(err.fields) & set(given):
            raise type(err)(f"{config_file}: {err}", fields="config") from None
        raise
    if config_file is not None and required is not None and required[2] is not None and tuple(plan.train.image_shape) != required[2]:
        raise RunError(f"{config_file} is for {'x'.join(map(str, required[2]))} images, but the data is "
                       f"{'x'.join(map(str, plan.train.image_shape))}: its model and schedule are for the images it names",
                       fields=("data", "config"))
    from ..devices import resolve_device

    slow = check_cpu_training_time(plan.config, plan.train.image_shape, resolve_device(plan.config.device),
                                   plan.config.steps - (ckpt.step if ckpt is not None else 0), refuse=not dry_run)
    file_notes += [slow] if slow else []
    run_dir = Path(output) if output is not None else check_run_folder(default_run_folder(plan.train.name))
    if ckpt is not None and (ckpt.step > plan.config.steps or (ckpt.step == plan.config.steps and changed)):
        what = f" (--steps {plan.config.steps})" if ckpt.step > plan.config.steps else \
            " and a change applies only to the steps still to train (" + ", ".join(changed) + ")"
        raise RunError(f"the run is already at step {ckpt.step}{what}; give a total number of steps above that to train further",
                       fields="steps")
    existing = run_files(run_dir) if main_process else []
    restart = False
    if ckpt is None and existing and not overwrite:
        steps = list_checkpoints(run_dir)
        if steps:
            raise RunError(f"{run_dir} already holds checkpoints up to {steps[-1].name}: continue it, start it afresh (its files are "
                           "deleted), or choose another run folder", fields=("resume", "overwrite", "output"))
        # a run stopped before its first checkpoint: nothing of it can be continued, so the same line (or --resume) starts it
        # again from step 0, its own files replaced (there is no checkpoint among them to lose)
        restart = True
        file_notes.append(f"{run_dir} holds a run that stopped before its first checkpoint: nothing to continue, so it starts again "
                          f"from step 0 (its files, {', '.join(sorted(p.name for p in existing))}, are replaced)")
    notes = (ckpt.notes if ckpt is not None else []) + file_notes + list(plan.notes)
    if changed:
        notes.append("changed for the rest of the run: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    return RunSetup(plan.config, plan, run_dir, ckpt, notes, init, changed, (overwrite or restart) and bool(existing))


def count_model_parameters(setup: RunSetup) -> int:
    from .network import count_parameters
    from .train import build_model

    return count_parameters(build_model(setup.config, setup.plan.train.image_shape, setup.plan.schedule.sigmas))


def check_own_files(run_dir: Path) -> None:
    """ncsn_tune writes only its own files in a run folder: a link there (to a file anywhere) is refused, never followed,
    and so are a metrics log that is not a writable file. Checked before anything is written."""
    from .run_log import METRICS_FILE

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    for path in [run_dir / LOCK_FILE, *run_files(run_dir)]:
        if path.is_symlink():
            raise RunError(f"{path} is a symbolic link; ncsn_tune writes only its own files in a run folder and does not follow links "
                           "there: remove the link", fields="output")
    metrics = run_dir / METRICS_FILE
    if metrics.exists() and not metrics.is_file():
        raise RunError(f"{metrics} is not a file; it is where the run logs its metrics: move it away", fields="output")
    if metrics.exists() and not os.access(metrics, os.W_OK):
        raise RunError(f"{metrics} is not writable; make it writable (chmod u+w) or choose another run folder", fields="output")


class RunLock:
    """An exclusive OS lock on a run folder (``.lock``), held while training. The kernel releases it when the
    process ends, however it ends, so a killed run never leaves a stale lock; the file names the holder."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fd = None

    @classmethod
    def refuse_if_held(cls, run_dir: Path) -> None:
        """Fail at once, naming the holder, when another process trains in ``run_dir`` (nothing is written)."""
        path = Path(run_dir) / LOCK_FILE
        if path.exists() or path.is_symlink():
            os.close(cls(run_dir)._lock(cls._open(path, os.O_RDWR)))  # closing releases it

    @staticmethod
    def _open(path: Path, flags: int) -> int:
        try:
            return os.open(path, flags | os.O_NOFOLLOW, 0o666)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise RunError(f"{path} is a symbolic link; ncsn_tune does not follow links in a run folder: remove it",
                               fields="output") from None
            raise

    def _lock(self, fd: int) -> int:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunError(f"{self.path.parent} is in use by {holder}; wait for it to finish or stop it", fields="output") from None
        return fd

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = self._lock(self._open(self.path, os.O_RDWR | os.O_CREAT))
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock; the file stays, naming nobody once unlocked
            self.fd = None


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Temporary files of atomic writes whose writer died (:func:`ncsn_tune.files.stale_temporaries`: a file another
    process is writing now is left alone)."""
    from ..files import stale_temporaries

    return stale_temporaries(run_dir, remove=True)


def run_training(setup: RunSetup, *, callback: Callable[[dict], None] | None = None, main_process: bool = True) -> dict:
    """Lock the run folder (rank 0), write its config.yaml and schedule.json once the trainer has restored
    and checked everything, and train; returns the trainer's summary."""
    from .train import Trainer

    callback = callback or (lambda event: None)
    with RunLock(setup.run_dir) if main_process else contextlib.nullcontext():
        if main_process:
            _prepare_folder(setup, callback)
        plan = setup.plan
        trainer = Trainer(setup.config, plan.schedule, plan.step_size, plan.train, plan.test, setup.run_dir, resume=setup.resume,
                          init_weights=setup.init_weights, callback=callback)
        if main_process:
            save_config(setup.config, setup.run_dir / "config.yaml")
            if setup.resume is None:
                plan.schedule.save(setup.run_dir / "schedule.json")
        return trainer.run()


def _prepare_folder(setup: RunSetup, callback) -> None:
    """Under the lock: the folder is still as setup_run saw it; leftovers of killed writers go, and with
    ``overwrite`` the old run's files too."""
    run_dir = setup.run_dir
    check_own_files(run_dir)
    stale = remove_stale_temporaries(run_dir)
    if stale:
        callback({"event": "note", "text": f"removed {len(stale)} temporary file(s) left by an interrupted write: "
                                           f"{', '.join(p.name for p in stale)}"})
    if setup.resume is not None:
        newest = list_checkpoints(run_dir)
        if not newest or newest[-1].name < setup.resume.path.name:
            raise RunError(f"{run_dir} changed while this run was being prepared (its checkpoint {setup.resume.path.name} is gone)",
                           fields="output")
    elif setup.overwrite:
        for path in run_files(run_dir):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        callback({"event": "note", "text": f"started {run_dir} afresh: the earlier run's files were deleted"})
    elif run_files(run_dir):
        raise RunError(f"{run_dir} received a run while this one was being prepared; choose another run folder", fields="output")
