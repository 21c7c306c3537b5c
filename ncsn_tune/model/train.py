"""The NCSNv2 trainer: DSM with the derived schedule, Adam, EMA, checkpoints, metrics and samples.

Speed on a GPU comes from keeping the data set on the device (flips there
too), bf16 autocast, channels_last, fused Adam, ``torch.compile`` and one CUDA
graph for the whole step (forward, backward, Adam and the EMA update), so
that Python and kernel launches stay off the critical path. Each switch is in
:class:`~ncsn_tune.config.TrainConfig`; on a CPU none of them applies.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..analysis.noise_schedule import NoiseSchedule
from ..config import TrainConfig
from ..data import as_dataset
from ..devices import torch_device
from ..errors import CheckpointError, Interrupted, RunError
from ..images import image_grid, save_image
from .batches import BatchSampler, DeviceImages
from .checkpoint import Checkpoint, load_model_weights, save_checkpoint
from .compile_policy import TRAIN_COSTS
from .distributed import Distributed
from .ema import EMA
from .loss import held_out_loss
from .network import count_parameters
from .precompile import BackgroundCompiles, plan_compiles
from .run_log import RunLog
from .sampling import sample_annealed_langevin
from .step import TrainStep, build_model, build_optimizer, speed_switches

def set_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels where asked (slower; cuDNN's autotuning off), else cuDNN's autotuning on a GPU."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


@dataclasses.dataclass
class LossWindow:
    """The losses of the steps since the last log line, kept on the device (read back only when logged), and when the
    window opened."""

    losses: torch.Tensor
    filled: int = 0
    opened: float = dataclasses.field(default_factory=time.perf_counter)

    @classmethod
    def of(cls, size: int, device: torch.device) -> "LossWindow":
        return cls(torch.zeros(size, device=device))

    def add(self, loss: torch.Tensor) -> None:
        self.losses[self.filled] = loss
        self.filled += 1

    @property
    def full(self) -> bool:
        return self.filled == len(self.losses)

    def values(self) -> torch.Tensor:
        return self.losses[: self.filled]

    def reopen(self, *, keep: bool = False) -> None:
        """A new window from now (``keep``: the losses so far stay, only the clock restarts, after side work)."""
        self.filled = self.filled if keep else 0
        self.opened = time.perf_counter()


class Trainer:
    """Trains one run in ``run_dir``; ``callback(event)`` reports progress (see :meth:`run`)."""

    def __init__(
        self,
        config: TrainConfig,
        schedule: NoiseSchedule,
        step_size: float,
        train,
        test=None,
        run_dir: Path | str = "runs/run",
        *,
        resume: Checkpoint | None = None,
        init_weights: tuple[dict, dict | None] | None = None,
        callback: Callable[[dict], None] | None = None,
    ) -> None:
        """``train``/``test``: :class:`~ncsn_tune.data.Dataset` or arrays of images (pixels scaled to [0, 1] as the
        loader does). ``step_size`` and ``config.steps_per_scale`` are only used for the sample grids;
        ``resume`` continues a run from its checkpoint exactly."""
        from ..tuning import DEFAULTS  # the one place the defaults of the tuning live

        # Settings: the configuration checked; the schedule, and the M and eps of the sample grids.
        self.config, self.schedule, self.step_size, self.run_dir = config.validate(), schedule, float(step_size), Path(run_dir)
        self.steps_per_scale = config.steps_per_scale or DEFAULTS.steps_per_scale
        self.callback = callback or (lambda event: None)
        self.step = 0
        self.stop_requested, self.stop_signal = None, None

        # Device: this process's GPU (its rank's under torchrun, where only rank 0 reports), the speed switches, the seed.
        requested = torch_device(config.device)
        self.dist = Distributed.from_env(requested.type)
        self.device = self.dist.device(requested)
        if self.dist.active:
            self.dist.shard(config.batch_size)  # checks divisibility
            if not self.dist.main:
                self.callback = lambda event: None
        self.switches = speed_switches(config, self.device, self.dist.active)
        torch.manual_seed(config.seed)
        set_determinism(config.deterministic, self.device)

        # Data: the training and held-out images on the device; batches in seeded epochs, the global batch on every rank.
        self.train_data = as_dataset(train)
        self.images = DeviceImages(self.train_data, self.device)
        test = as_dataset(test) if test is not None else None
        self.test_images = DeviceImages(test, self.device) if test is not None and test.num_points else None
        self.image_shape = tuple(int(s) for s in self.images.values.shape[1:])
        self.sampler = BatchSampler(len(self.images), config.batch_size, config.seed, config.random_flip)

        # Model: NCSNv2 conditioned on the schedule's sigmas, its EMA (Technique 5) and Adam; or an official checkpoint's
        # weights and EMA to start from, with this run's schedule.
        self.sigmas = torch.tensor(schedule.sigmas, dtype=torch.float32, device=self.device)
        self.model = build_model(config, self.image_shape, schedule.sigmas).to(self.device)
        if self.switches.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if init_weights is not None:
            load_model_weights(self.model, {**init_weights[0], "sigmas": self.model.sigmas}, "the initial weights")
        self.ema = EMA(self.model, config.ema_rate)
        if init_weights is not None and init_weights[1] is not None:
            try:
                self.ema.load_state_dict(init_weights[1])
            except KeyError as err:
                raise CheckpointError(f"the EMA weights of the initial checkpoint do not fit this model: {err}",
                                      fields="init_from") from None
        self.optimizer = build_optimizer(self.model, config, self.switches)
        self.num_parameters = count_parameters(self.model)

        # Resume: weights, EMA, Adam, the batch order and the random states exactly as saved; then this configuration's
        # optimiser and EMA settings (a continued run may change them).
        if resume is not None:
            self._restore(resume)
            self._apply_settings()

        # Compiling (GPU only): what is worth compiling for the steps left, the artefacts to load, the background compiles.
        self.compile_cache, self.compile_note, self.compiles = None, None, None
        if self.device.type == "cuda":
            plan = plan_compiles(config, self.model, self.run_dir, self.device, config.batch_size // self.dist.world,
                                 config.steps - self.step, self.dist.active, self.dist.main)
            self.switches, self.compile_cache, self.compile_note = plan.switches, plan.cache, plan.note
            self.compiles = BackgroundCompiles.from_plan(plan, self.run_dir, seconds_left=self._seconds_left, say=self._say)

    def _say(self, text: str) -> None:
        self.callback({"event": "note", "text": text})

    def _seconds_left(self) -> float:
        """What the steps left take, at the measured speed of the step the run trains with."""
        return (self.config.steps - self.step) * (TRAIN_COSTS.compiled_s if self.switches.compile else TRAIN_COSTS.graph_s)

    def _step_fn(self, switches=None) -> TrainStep:
        """The training step with ``switches`` (default: the run's), which become the run's."""
        self.switches = switches or self.switches
        return TrainStep(self.model, self.optimizer, self.ema, self.sigmas, self.switches,
                         (self.config.batch_size // self.dist.world, *self.image_shape), self.device, dist=self.dist)

    def _first_step_fn(self) -> TrainStep:
        """The step to start with: the compile decision said, the run folder's compiled artefacts loaded, the background
        compiles started."""
        for note in (self.compile_note, self.compile_cache.load() if self.compile_cache is not None else None):
            if note:
                self._say(note)
        step_fn = self._step_fn()
        if self.compiles is not None:
            self.compiles.begin()
        return step_fn

    def _next_step_fn(self, step_fn: TrainStep, log) -> TrainStep:
        """After a step: the compiled step once its background compile is done; after the first step, which compiled
        every graph, what it compiled kept."""
        if self.compiles is not None:
            step_fn = self.compiles.poll(self.step, step_fn, lambda: self._step_fn(self.compiles.compiled_switches))
        if self.compile_cache is not None and log is not None:
            self._keep_compiled()
        return step_fn

    def _keep_compiled(self) -> None:
        """After the first step, which compiled every graph: its artefacts into the run folder (unless they came from
        it), and the graph recorded as built on this machine."""
        cache, self.compile_cache = self.compile_cache, None
        note = None if cache.loaded else cache.save()
        cache.mark_built()
        if note:
            self._say(note)

    # ---------------------------------------------------------------- checkpoints

    def _restore(self, ckpt: Checkpoint) -> None:
        load_model_weights(self.model, ckpt.model, str(ckpt.path))
        if ckpt.optimizer is None or ckpt.rng is None or "sampler" not in ckpt.rng or "torch" not in ckpt.rng:
            raise CheckpointError(f"{ckpt.path} lacks the optimiser or random states a resume needs; it can be sampled from, not "
                                  "continued")
        try:
            self.ema.load_state_dict(ckpt.ema)
            self.optimizer.load_state_dict(ckpt.optimizer)
            self.sampler.load_state_dict(ckpt.rng["sampler"])
            torch.set_rng_state(ckpt.rng["torch"])
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"{ckpt.path} does not fit this run: {err}") from None
        if self.device.type == "cuda" and ckpt.rng.get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt.rng["cuda"], self.device)
        self.step = int(ckpt.step)

    def _apply_settings(self) -> None:
        """After a restore: the optimiser and EMA settings of this configuration (a resumed run may change them;
        the restored Adam state carries the old ones)."""
        config = self.config
        for group in self.optimizer.param_groups:
            for key, value in (("lr", config.lr), ("eps", config.adam_eps), ("weight_decay", config.weight_decay)):
                if torch.is_tensor(group[key]):
                    group[key].fill_(value)
                else:
                    group[key] = value
            group["betas"] = (config.beta1, config.beta2)
        self.ema.rate = config.ema_rate

    def checkpoint_state(self) -> dict:
        return {
            "step": self.step,
            "config": dataclasses.asdict(self.config),
            "schedule": self.schedule.to_dict(),
            "sampling": {"steps_per_scale": self.steps_per_scale, "step_size": self.step_size},
            "image_shape": list(self.image_shape),
            "data": self.train_data.identity(content=True).to_dict(),  # every byte: resume checks it is the same data
            "model": {k: v.detach().contiguous() for k, v in self.model.state_dict().items()},
            "ema": {k: v.contiguous() for k, v in self.ema.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                "sampler": self.sampler.state_dict(),
            },
        }

    def save(self) -> Path | None:
        """Rank 0 writes the checkpoint (every rank holds the same state); the others wait for it."""
        path = None
        if self.dist.main:
            path = save_checkpoint(self.checkpoint_state(), self.run_dir, self.config.keep_checkpoints,
                                   note=lambda text: self.callback({"event": "note", "text": text}))
            self.callback({"event": "checkpoint", "step": self.step, "path": str(path)})
        self.dist.barrier()
        return path

    # ---------------------------------------------------------------- evaluation and samples

    def evaluate(self) -> dict:
        """Held-out DSM loss of the EMA model on the first ``eval_images`` test images, per scale."""
        model = self.ema.averaged_model(self.model).eval()
        x = self.test_images.batch(torch.arange(min(self.config.eval_images, len(self.test_images))))
        generator = torch.Generator(self.device).manual_seed(self.config.seed + 1)
        by_scale = held_out_loss(model, x, self.sigmas, batch_size=256, generator=generator, bf16=self.switches.bf16,
                                 callback=self._check_stop)
        return {"eval_loss": float(by_scale.mean()), "eval_loss_by_scale": by_scale.tolist()}

    def sample_grid(self) -> Path:
        model = self.ema.averaged_model(self.model).eval()
        generator = torch.Generator(self.device).manual_seed(self.config.seed + 2)
        x0 = torch.rand((self.config.sample_count, *self.image_shape), device=self.device, generator=generator)
        with self.switches.autocast(self.device):
            x = sample_annealed_langevin(model, x0, self.sigmas, steps_per_scale=self.steps_per_scale, step_size=self.step_size,
                                         generator=generator, callback=self._check_stop)
        path = save_image(image_grid(x), self.run_dir / f"samples_{self.step:08d}.png")
        self.callback({"event": "samples", "step": self.step, "path": str(path)})
        return path

    # ---------------------------------------------------------------- the loop

    def _on_signal(self, signum, frame) -> None:
        """The first SIGINT/SIGTERM asks for a stop at the next step (sampling and evaluation break off); the
        second stops at once."""
        name = signal.Signals(signum).name
        if self.stop_requested is not None:
            raise Interrupted(f"stopped at once by a second {name} at step {self.step}; the last checkpoint written is intact "
                              "and the run can continue from it", signum)
        self.stop_requested, self.stop_signal = name, int(signum)
        try:  # said at once (a CPU step can take seconds): os.write, safe inside a signal handler
            os.write(2, f"{name}: stopping after this step, with a checkpoint; {name} again stops at once\n".encode())
        except OSError:
            pass

    def _check_stop(self, info=None) -> None:
        if self.stop_requested is not None:
            raise _StopWork

    def _log(self, log, window: LossWindow, t_start: float, last_saved: int | None) -> None:
        values = self.dist.mean(window.values()).cpu().numpy()
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            bad_step = self.step - window.filled + int(bad[0]) + 1
            kept = (f"the last good checkpoint is the one from step {last_saved} in {self.run_dir}" if last_saved is not None
                    else "no checkpoint had been written yet, so the run must start again")
            raise RunError(f"the loss became {values[bad[0]]} at step {bad_step}; training stopped and {kept}. Try a lower "
                           "learning rate or check the data", fields="lr")
        now = time.perf_counter()
        record = {"step": self.step, "loss": float(values.mean()), "it_per_s": window.filled / max(now - window.opened, 1e-9),
                  "time": now - t_start}
        if log is not None:
            log.record(record, {"loss": record["loss"], "it_per_s": record["it_per_s"]})
        self.callback({"event": "log", **record})

    def _side_work(self, log, due: dict) -> None:
        """Evaluation and the sample grid (rank 0), either broken off by a stop request."""
        try:
            if due["eval"] and self.test_images is not None and log is not None:
                result = {"step": self.step, **self.evaluate()}
                log.record(result, {"eval_loss": result["eval_loss"],
                                    **{f"eval_loss_by_scale/{i:04d}": v for i, v in enumerate(result["eval_loss_by_scale"])}})
                self.callback({"event": "eval", **result})
            if due["sample"] and log is not None:
                self.sample_grid()
        except _StopWork:
            self.callback({"event": "note", "text": f"{self.stop_requested}: broke off the evaluation or sample grid of step {self.step}"})
        if self.dist.active and (due["eval"] or due["sample"]):
            self.dist.barrier()

    def run(self) -> dict:
        """Train until ``config.steps`` (the total, counting resumed steps).

        Events passed to the callback: ``start``, ``log`` (step, loss, it_per_s), ``eval``,
        ``samples``, ``checkpoint``, ``note``, ``stopped``, ``done``. A NaN or infinite loss
        raises :class:`RunError` naming the step; the last checkpoint written stays the last
        good one. A first SIGINT/SIGTERM stops at the next step with a checkpoint (evaluation
        and sampling break off); a second raises :class:`Interrupted` at once.
        """
        config, t_start = self.config, time.perf_counter()
        log = self._open_log()
        shard = self.dist.shard(config.batch_size) if self.dist.active else slice(None)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            step_fn = self._first_step_fn()
            self.callback({"event": "start", "step": self.step, "steps": config.steps, "setup_seconds": time.perf_counter() - t_start,
                           "num_parameters": self.num_parameters, "switches": dataclasses.asdict(self.switches),
                           "device": str(self.device), "processes": self.dist.world})
            window = LossWindow.of(config.log_every, self.device)
            last_saved = self.step if self.step > 0 else None
            stop = False
            while self.step < config.steps and not stop:
                indices, flips = self.sampler.next()
                x = self.images.batch(indices[shard], flips[shard]).contiguous(memory_format=self.switches.memory_format)
                window.add(step_fn(x))
                self.step += 1
                step_fn = self._next_step_fn(step_fn, log)
                due = {name: self.step % getattr(config, f"{name}_every") == 0 for name in ("log", "eval", "sample", "checkpoint")}
                at_log = window.full or self.step >= config.steps or any(due.values())
                stop = self._agree_on_stop(at_log)
                if at_log or stop:
                    self._log(log, window, t_start, last_saved)
                    window.reopen()
                if not stop and (due["eval"] or due["sample"]):
                    self._side_work(log, due)
                    window.reopen(keep=True)
                stop = stop or (not self.dist.active and self.stop_requested is not None)  # a request during the side work
                if due["checkpoint"] or stop or self.step >= config.steps:
                    self.save()
                    last_saved = self.step
                    window.reopen(keep=True)
            if stop:
                self.callback({"event": "stopped", "step": self.step, "signal": self.stop_requested or "SIGTERM (another rank)"})
        finally:
            self._close(log, handlers)
        summary = {"step": self.step, "seconds": time.perf_counter() - t_start, "stopped_by": self.stop_requested,
                   "signal_number": self.stop_signal}
        self.callback({"event": "done", **summary})
        return summary

    def _open_log(self):
        """The metrics log (rank 0), its notes said."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.dist.main:
            return None
        log = RunLog(self.run_dir, self.step)
        for note in log.notes:
            self._say(note)
        if log.writer is None:
            self._say("TensorBoard logs are off: the tensorboard package is not installed (pip install tensorboard); metrics.jsonl has "
                      "every value")
        return log

    def _agree_on_stop(self, at_log: bool) -> bool:
        """Whether to stop now: under torchrun only on a flag the ranks agree on at the same step (else their all-reduces
        would hang), so only at a log point; alone, as soon as a stop was requested."""
        if self.dist.active:
            return self.dist.any(self.stop_requested is not None, self.device) if at_log else False
        return self.stop_requested is not None

    def _close(self, log, handlers) -> None:
        if self.compiles is not None:
            self.compiles.close()
        for s, h in handlers.items():
            signal.signal(s, h)
        if log is not None:
            log.close()
        self.dist.close()


class _StopWork(Exception):
    """Raised inside sampling or evaluation when a stop was requested, to break them off."""
