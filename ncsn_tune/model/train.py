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
from ..data import Dataset, as_dataset
from ..devices import torch_device
from ..errors import CheckpointError, Interrupted, NcsnTuneError, RunError
from ..images import image_grid, save_image
from .accel import TRAIN_COSTS, CompileCache, SpeedSwitches, capture_cuda_graph, decide_compile, static_input
from .checkpoint import Checkpoint, load_model_weights, save_checkpoint
from .distributed import Distributed
from .ema import EMA
from .evaluate import held_out_loss
from .loss import dsm_loss
from .network import NCSNv2, count_parameters
from .run_log import RunLog
from .sampling import sample_annealed_langevin

#: Seconds a background process takes to compile the sampling network at batch 1000 on an H100, with empty compile
#: caches and with this machine's cache holding it (benchmarks/score_warm_start.py: ready after 43 s and 14-18 s,
#: plus the process's start and the artefacts' save; beside a training run it has fewer cores).
SCORE_COMPILE_COLD_S = 60.0
SCORE_COMPILE_WARM_S = 25.0


def speed_switches(config: TrainConfig, device: torch.device, distributed: bool = False, compile: bool | None = None) -> SpeedSwitches:
    """The configuration's speed switches that apply on ``device`` (``compile`` decides when the configuration leaves it open)."""
    return SpeedSwitches.for_device(device, bf16=config.bf16, channels_last=config.channels_last, fused_adam=config.fused_adam,
                                    compile=bool(config.compile if config.compile is not None else compile),
                                    cuda_graphs=config.cuda_graphs, compile_mode=config.compile_mode,
                                    compile_scope=config.compile_scope, distributed=distributed)


def build_model(config: TrainConfig, image_shape: tuple[int, int, int], sigmas: np.ndarray) -> NCSNv2:
    if len(image_shape) != 3:
        raise NcsnTuneError(f"NCSNv2 trains on images (C, H, W); this data holds vectors of shape {tuple(image_shape)}", fields="data")
    channels, height, width = image_shape
    if height != width:
        raise NcsnTuneError(f"NCSNv2 needs square images, got {height}x{width}", fields="data")
    return NCSNv2(channels, height, config.ngf, config.architecture, sigmas=np.asarray(sigmas, dtype=np.float32))


def build_optimizer(model: torch.nn.Module, config: TrainConfig, switches: SpeedSwitches) -> torch.optim.Adam:
    extra = {"fused": True, "capturable": switches.cuda_graphs} if switches.fused_adam else {"foreach": True, "capturable": switches.cuda_graphs}
    return torch.optim.Adam(
        model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2), eps=config.adam_eps, weight_decay=config.weight_decay, **extra
    )


class TrainStep:
    """One optimisation step on a batch: DSM loss, backward, Adam, EMA; optionally one CUDA graph.

    ``__call__(x)`` returns the (device) loss of that step. With CUDA graphs the
    batch is copied into a static input buffer and the captured step replayed.
    """

    def __init__(self, model, optimizer, ema: EMA, sigmas: torch.Tensor, switches: SpeedSwitches, batch_shape, device, warmup: int = 3,
                 dist: Distributed | None = None):
        self.model, self.optimizer, self.ema, self.sigmas, self.switches = model, optimizer, ema, sigmas, switches
        self.dist = dist or Distributed()
        self.global_batch = batch_shape[0] * self.dist.world
        self.shard = self.dist.shard(self.global_batch) if self.dist.active else None
        network = model
        if self.dist.active:  # PyTorch's own engine: gradients averaged by DistributedDataParallel
            from torch.nn.parallel import DistributedDataParallel

            network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.forward = switches.compiled(network)
        self.graph = None
        self.device = device
        if switches.cuda_graphs:
            self.static_x = static_input(batch_shape, device, switches.memory_format)
            restore = self._snapshot()
            self.graph, self.static_loss = capture_cuda_graph(lambda: self._eager(self.static_x), device, warmup, after_warmup=restore)

    def _loss(self, x):
        with self.switches.autocast(self.device):
            return dsm_loss(self.forward, x, self.sigmas, shard=self.shard, global_batch=self.global_batch)

    def _eager(self, x):
        loss = self._loss(x)
        self.optimizer.zero_grad(set_to_none=True)  # only drops references: inside a capture the gradients come from its pool
        loss.backward()
        self.optimizer.step()
        self.ema.update(self.model)
        return loss.detach()

    def _snapshot(self):
        """A function that puts weights, EMA, Adam state and the CUDA random state back as they are now: the
        warm-up before a capture trains on a dummy batch, which must leave no trace."""
        saved_params = [p.detach().clone() for p in self.model.parameters()]
        saved_shadow = [s.clone() for s in self.ema.shadow]
        saved_adam = {p: {k: v.clone() for k, v in st.items() if torch.is_tensor(v)} for p, st in self.optimizer.state.items()}
        rng = torch.cuda.get_rng_state(self.device)

        def restore() -> None:
            with torch.no_grad():
                for p, s in zip(self.model.parameters(), saved_params):
                    p.copy_(s)
                for e, s in zip(self.ema.shadow, saved_shadow):
                    e.copy_(s)
                for param, state in self.optimizer.state.items():  # a fresh run's state is all zeros
                    for key, value in state.items():
                        if torch.is_tensor(value):
                            value.copy_(saved_adam[param][key]) if param in saved_adam else value.zero_()
            torch.cuda.set_rng_state(rng, self.device)
            self.optimizer.zero_grad(set_to_none=True)

        return restore

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            return self._eager(x)
        self.static_x.copy_(x)
        self.graph.replay()
        return self.static_loss.detach().clone()


class BatchSampler:
    """Batches in epochs (each image once per epoch, in a random order), flips chosen by the same generator.

    Its whole state (generator, permutation, position) goes into checkpoints,
    so a resumed run draws the same batches.
    """

    def __init__(self, num_points: int, batch_size: int, seed: int, flip: bool) -> None:
        self.n, self.batch_size, self.flip = num_points, batch_size, flip
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(num_points, generator=self.generator)
        self.pos = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        parts, need = [], self.batch_size
        while need:
            take = self.perm[self.pos : self.pos + need]
            parts.append(take)
            need -= len(take)
            self.pos += len(take)
            if self.pos >= self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.generator), 0
        flips = torch.rand(self.batch_size, generator=self.generator) < 0.5 if self.flip else torch.zeros(self.batch_size, dtype=torch.bool)
        return torch.cat(parts), flips

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])


class DeviceImages:
    """A data set's images kept on the device (uint8 where they are uint8) and turned into [0, 1] batches there."""

    def __init__(self, dataset: Dataset, device: torch.device) -> None:
        values, scale, offset = dataset.values, dataset.scale, dataset.offset
        array = np.ascontiguousarray(np.asarray(values))
        if not array.flags.writeable:  # memory-mapped files: torch wants memory of its own
            array = array.copy()
        if array.dtype == np.uint8:
            self.values = torch.from_numpy(array).to(device)
        else:
            self.values = torch.from_numpy(array.astype(np.float32)).to(device)
        self.scale, self.offset = float(scale), float(offset)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def batch(self, indices: torch.Tensor, flips: torch.Tensor | None = None) -> torch.Tensor:
        x = self.values[indices.to(self.values.device)].float() * self.scale + self.offset
        if flips is not None:
            x = torch.where(flips.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
        return x


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
        from ..config import AnalysisConfig

        self.config, self.schedule, self.step_size, self.run_dir = config.validate(), schedule, float(step_size), Path(run_dir)
        self.steps_per_scale = config.steps_per_scale or AnalysisConfig().steps_per_scale
        self.callback = callback or (lambda event: None)
        requested = torch_device(config.device)
        self.dist = Distributed.from_env(requested.type)
        self.device = self.dist.device(requested)
        if self.dist.active:
            self.dist.shard(config.batch_size)  # checks divisibility
            if not self.dist.main:
                self.callback = lambda event: None
        self.switches = speed_switches(config, self.device, self.dist.active)
        torch.manual_seed(config.seed)
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.train_data = as_dataset(train)
        self.images = DeviceImages(self.train_data, self.device)
        test = as_dataset(test) if test is not None else None
        self.test_images = DeviceImages(test, self.device) if test is not None and test.num_points else None
        self.image_shape = tuple(int(s) for s in self.images.values.shape[1:])
        self.sigmas = torch.tensor(schedule.sigmas, dtype=torch.float32, device=self.device)
        self.model = build_model(config, self.image_shape, schedule.sigmas).to(self.device)
        if self.switches.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, config.ema_rate)
        self.optimizer = build_optimizer(self.model, config, self.switches)
        self.sampler = BatchSampler(len(self.images), config.batch_size, config.seed, config.random_flip)  # the global batch
        self.step = 0
        if init_weights is not None:
            weights, ema_weights = init_weights
            weights = {**weights, "sigmas": self.model.sigmas}  # keep this run's schedule
            load_model_weights(self.model, weights, "the initial weights")
            self.ema = EMA(self.model, config.ema_rate)
            if ema_weights is not None:
                try:
                    self.ema.load_state_dict(ema_weights)
                except KeyError as err:
                    raise CheckpointError(f"the EMA weights of the initial checkpoint do not fit this model: {err}",
                                          fields="init_from") from None
        if resume is not None:
            self._restore(resume)
            self._apply_settings()
        self.num_parameters = count_parameters(self.model)
        self.stop_requested, self.stop_signal = None, None
        self.compile_cache, self.compile_note, self.background = None, None, None
        self.score_spec, self.score_compile_s = None, 0.0
        if self.device.type == "cuda":
            self._decide_compile()
            self._plan_score_compile()

    def _decide_compile(self) -> None:
        """torch.compile now, in the background, or not, when the configuration leaves it open: from the steps to
        go and whether the compiled step is at hand, in this run folder or in this machine's compile cache
        (:func:`ncsn_tune.model.accel.decide_compile`)."""
        wanted = speed_switches(self.config, self.device, self.dist.active, compile=True)
        batch = (self.config.batch_size // self.dist.world, *self.image_shape)
        cache = CompileCache(self.run_dir, "train", self.model, batch, wanted)
        if self.config.compile is None:
            background = wanted.cuda_graphs and not self.dist.active
            verdict, self.compile_note = decide_compile(self.config.steps - self.step, cache.at_hand, TRAIN_COSTS, "steps", background)
            self.switches = wanted if verdict == "compile" else dataclasses.replace(wanted, compile=False)
            if verdict == "background":
                from .precompile import StepSpec

                self.background = StepSpec(self.image_shape[0], self.image_shape[1], self.config.ngf, self.model.architecture,
                                           len(self.schedule.sigmas), batch[0], dataclasses.asdict(wanted), str(cache.path))
                self.compiled_switches = wanted
        if self.switches.compile:
            self.compile_cache = cache

    def _plan_score_compile(self) -> None:
        """Whether to compile the sampling network beside the training (:mod:`ncsn_tune.model.precompile`), so that
        ``sample`` and ``evaluate`` on this run start warm: not when compiling is switched off, nor on other ranks
        than the first, nor when the run folder holds that graph's artefacts already."""
        from .accel import score_batch_size, score_cache
        from .precompile import ScoreSpec

        if self.config.compile is False or not self.dist.main:
            return
        batch = score_batch_size(self.image_shape, self.device)
        cache = score_cache(self.run_dir, self.model, (batch, *self.image_shape))
        if cache.exists:
            return
        self.score_spec = ScoreSpec(self.image_shape[0], self.image_shape[1], self.config.ngf, self.model.architecture,
                                    len(self.schedule.sigmas), batch, str(self.run_dir))
        self.score_compile_s = SCORE_COMPILE_WARM_S if cache.built_here else SCORE_COMPILE_COLD_S

    def _start_score_compile(self):
        """Start compiling the sampling network in the background when the steps left take longer than that (else
        say why not); the process, or None."""
        spec, self.score_spec = self.score_spec, None
        if spec is None:
            return None
        step_s = TRAIN_COSTS.compiled_s if self.switches.compile else TRAIN_COSTS.graph_s
        left_s = (self.config.steps - self.step) * step_s
        if left_s < self.score_compile_s:
            self.callback({"event": "note", "text": f"the sampling network is not compiled beside this run: the steps left take about "
                                                    f"{left_s:.0f} s, compiling it about {self.score_compile_s:.0f} s; the first sample "
                                                    "on a GPU compiles it, or runs on the CUDA graph alone"})
            return None
        from .precompile import log_path, start

        self.callback({"event": "note", "text": f"compiling the sampling network (batch {spec.batch}) in the background, so that sample "
                                                f"and evaluate on this run start without compiling ({log_path(self.run_dir, 'score')})"})
        return start(spec, self.run_dir, threads=max(1, (os.cpu_count() or 2) - 2))  # leave the training loop a core or two

    def _score_compile_done(self, process, started: float, final: bool = False):
        """None once the background compile of the sampling network has ended (said how), else ``process``; with
        ``final`` (the run is over) a compile still running is stopped."""
        from .precompile import log_path

        if process is None:
            return None
        if process.poll() is None:
            if not final:
                return process
            process.kill()
            process.wait()
            self.callback({"event": "note", "text": "training ended before the sampling network was compiled: the first sample on a GPU "
                                                    "compiles it, or runs on the CUDA graph alone"})
        elif process.returncode != 0:
            self.callback({"event": "note", "text": f"compiling the sampling network in the background failed (exit {process.returncode}; "
                                                    f"see {log_path(self.run_dir, 'score')}); sample and evaluate will compile it"})
        else:
            self.callback({"event": "note", "text": f"compiled the sampling network in the background in {time.perf_counter() - started:.0f} "
                                                    "s: sample and evaluate on this run load it from compile_cache/"})
        return None

    def _switch_when_compiled(self, process, step_fn, started: float):
        """The compiled step once the background compile has finished (else ``step_fn``); a failed one is said."""
        if process is None or process.poll() is None:
            return step_fn, process
        if process.returncode != 0:
            from .precompile import log_path

            self.callback({"event": "note", "text": f"the background compile failed (exit {process.returncode}; see "
                                                    f"{log_path(self.run_dir, 'train')}): training goes on with the CUDA graph"})
            return step_fn, None
        t0 = time.perf_counter()
        del step_fn  # frees the first graph's memory pool before the second is captured
        compiled = TrainStep(self.model, self.optimizer, self.ema, self.sigmas, self.compiled_switches,
                             (self.config.batch_size, *self.image_shape), self.device, dist=self.dist)
        self.switches = self.compiled_switches
        self.callback({"event": "note", "text": f"switched to the compiled step at step {self.step}: compiled in the background in "
                                                f"{t0 - started:.0f} s, loaded in {time.perf_counter() - t0:.1f} s"})
        return compiled, None

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
            "data": self.train_data.identity().to_dict(),
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

    def _check_stop(self, info=None) -> None:
        if self.stop_requested is not None:
            raise _StopWork

    def _log(self, log, window, filled, t_window, t_start, last_saved) -> None:
        values = self.dist.mean(window[:filled]).cpu().numpy()
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            bad_step = self.step - filled + int(bad[0]) + 1
            kept = (f"the last good checkpoint is the one from step {last_saved} in {self.run_dir}" if last_saved is not None
                    else "no checkpoint had been written yet, so the run must start again")
            raise RunError(f"the loss became {values[bad[0]]} at step {bad_step}; training stopped and {kept}. Try a lower "
                           "learning rate or check the data", fields="lr")
        now = time.perf_counter()
        record = {"step": self.step, "loss": float(values.mean()), "it_per_s": filled / max(now - t_window, 1e-9), "time": now - t_start}
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
        config = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = RunLog(self.run_dir, self.step) if self.dist.main else None
        if log is not None:
            for note in log.notes:
                self.callback({"event": "note", "text": note})
            if log.writer is None:
                self.callback({"event": "note", "text": "TensorBoard logs are off: the tensorboard package is not installed "
                                                        "(pip install tensorboard); metrics.jsonl has every value"})
        t_start = time.perf_counter()
        per_process = config.batch_size // self.dist.world
        shard = self.dist.shard(config.batch_size) if self.dist.active else slice(None)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        compiling = None  # the background compile's process, while it runs
        score_compiling, score_started = None, 0.0  # the same for the sampling network
        try:
            for note in (self.compile_note, self.compile_cache.load() if self.compile_cache is not None else None):
                if note:
                    self.callback({"event": "note", "text": note})
            step_fn = TrainStep(self.model, self.optimizer, self.ema, self.sigmas, self.switches, (per_process, *self.image_shape),
                                self.device, dist=self.dist)
            compile_started = time.perf_counter()
            if self.background is not None and log is not None:
                from .precompile import start

                compiling = start(self.background, self.run_dir)
            elif log is not None:  # one compile at a time: the sampling network's waits for the training step's
                score_compiling, score_started = self._start_score_compile(), time.perf_counter()
            self.callback({"event": "start", "step": self.step, "steps": config.steps, "setup_seconds": time.perf_counter() - t_start,
                           "num_parameters": self.num_parameters, "switches": dataclasses.asdict(self.switches),
                           "device": str(self.device), "processes": self.dist.world})
            window = torch.zeros(config.log_every, device=self.device)
            filled, t_window = 0, time.perf_counter()
            last_saved = self.step if self.step > 0 else None
            stop = False
            while self.step < config.steps and not stop:
                indices, flips = self.sampler.next()
                x = self.images.batch(indices[shard], flips[shard])
                if self.switches.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                window[filled] = step_fn(x)
                filled += 1
                self.step += 1
                if compiling is not None and self.step % 25 == 0:
                    step_fn, compiling = self._switch_when_compiled(compiling, step_fn, compile_started)
                    if compiling is None and log is not None:
                        score_compiling, score_started = self._start_score_compile(), time.perf_counter()
                if score_compiling is not None and self.step % 25 == 0:
                    score_compiling = self._score_compile_done(score_compiling, score_started)
                if self.compile_cache is not None and log is not None:  # after the first step every graph is compiled
                    cache, self.compile_cache = self.compile_cache, None
                    note = None if cache.loaded else cache.save()  # what was loaded from the run folder is there already
                    cache.mark_built()
                    if note:
                        self.callback({"event": "note", "text": note})
                due = {name: self.step % getattr(config, f"{name}_every") == 0 for name in ("log", "eval", "sample", "checkpoint")}
                at_log = filled == config.log_every or self.step >= config.steps or any(due.values())
                if self.dist.active:  # ranks stop only on a flag they agree on at the same step, else their all-reduces would hang
                    stop = self.dist.any(self.stop_requested is not None, self.device) if at_log else False
                else:
                    stop = self.stop_requested is not None
                if at_log or stop:
                    self._log(log, window, filled, t_window, t_start, last_saved)
                    filled, t_window = 0, time.perf_counter()
                if not stop and (due["eval"] or due["sample"]):
                    self._side_work(log, due)
                    t_window = time.perf_counter()
                if not self.dist.active:  # a request that came while logging, evaluating or sampling
                    stop = self.stop_requested is not None
                if due["checkpoint"] or stop or self.step >= config.steps:
                    self.save()
                    last_saved, t_window = self.step, time.perf_counter()
            if stop:
                self.callback({"event": "stopped", "step": self.step, "signal": self.stop_requested or "SIGTERM (another rank)"})
        finally:
            if compiling is not None and compiling.poll() is None:
                compiling.kill()  # the run ended first: the compile is not needed
                compiling.wait()
            self._score_compile_done(score_compiling, score_started, final=True)
            for s, h in handlers.items():
                signal.signal(s, h)
            if log is not None:
                log.close()
            self.dist.close()
        summary = {"step": self.step, "seconds": time.perf_counter() - t_start, "stopped_by": self.stop_requested,
                   "signal_number": self.stop_signal}
        self.callback({"event": "done", **summary})
        return summary


class _StopWork(Exception):
    """Raised inside sampling or evaluation when a stop was requested, to break them off."""
