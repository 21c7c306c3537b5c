"""Reading the sampler settings of the tools people train with, in ncsn_tune's terms (torch-free).

- the official NCSNv2 YAML (``model.sigma_begin``/``sigma_end``/``num_classes``, ``sampling.step_lr``/``n_steps_each``);
- a diffusers ``ScoreSdeVeScheduler`` ``scheduler_config.json`` (or a folder holding one);
- a score_sde config ``.py`` (its ``get_config()`` is run in a separate process with the user's score_sde
  checkout on the import path; score_sde's configs import ``ml_collections`` and ``torch``);
- plain numbers.

Facts behind the mapping (checked against the public sources): score_sde's ``ald`` corrector takes the step
2 (snr sigma)**2 at each scale, which is Technique 4's alpha = eps sigma**2 / sigma_min**2 exactly when
snr = sqrt(eps / 2) / sigma_min; its ``langevin`` corrector and diffusers' ``step_correct`` take
2 (snr ||z|| / ||s||)**2, the same map when ||s|| ~ sqrt(D) / sigma (an approximation). score_sde and
diffusers step through sigma_min (sigma_max / sigma_min)**t over N evenly spaced t, a geometric schedule of
N scales; diffusers' pipelines and score_sde's ``data.centered`` put pixels in [-1, 1].
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis.step_size import step_size_of_snr
from ..errors import NcsnTuneError
from ..files import read_mapping

@dataclass(frozen=True)
class ToolConfig:
    """The settings of another tool's sampler that the paper's techniques speak about.

    ``step_rule``: ``ald`` (annealed Langevin dynamics, alpha = eps sigma**2 / sigma_min**2: the exact map),
    ``langevin`` (snr times the noise-to-score norm ratio: mapped through ||s|| ~ sqrt(D) / sigma, an
    approximation) or ``none`` (no Langevin steps). ``ema``: None when the configuration does not say.
    """

    tool: str
    source: str
    sigma_max: float
    sigma_min: float
    num_scales: int
    steps_per_scale: int | None = None
    step_size: float | None = None
    snr: float | None = None
    step_rule: str = "ald"
    ema: bool | None = None
    ema_rate: float | None = None
    pixel_range: str = "0,1"
    image_shape: tuple[int, ...] | None = None
    geometric: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def dim(self) -> int | None:
        return math.prod(self.image_shape) if self.image_shape else None

    @property
    def eps(self) -> float | None:
        """The step eps this configuration takes (from step_lr, or from snr as 2 (snr sigma_min)**2)."""
        if self.step_size is not None:
            return self.step_size
        return step_size_of_snr(self.snr, self.sigma_min) if self.snr is not None else None

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()} | {"dim": self.dim, "eps": self.eps}


def _need(mapping: dict, path: str, where: str):
    value = mapping
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise NcsnTuneError(f"{where} has no {path}; is it the configuration it looks like?", fields="config")
        value = value[key]
    return value


def read_ncsnv2_yaml(path: Path) -> ToolConfig:
    """An official NCSNv2 YAML (ermongroup/ncsnv2 ``configs/*.yml``)."""
    data = read_mapping(path)
    where = str(path)
    model, sampling, dset = (_need(data, k, where) for k in ("model", "sampling", "data"))
    notes = []
    geometric = model.get("sigma_dist", "geometric") == "geometric"
    if not geometric:
        notes.append(f"sigma_dist is {model.get('sigma_dist')}: Techniques 2 and 4 assume a geometric schedule")
    if dset.get("logit_transform"):
        notes.append("logit_transform is on: distances in logit space are not the pixel distances Technique 1 measures")
    if not sampling.get("denoise", True):
        notes.append("the final denoising step is off (it took the paper's CIFAR-10 FID from 31.75 to 10.87)")
    return ToolConfig(
        tool="ncsnv2-yaml", source=where, sigma_max=float(_need(model, "sigma_begin", where)), sigma_min=float(_need(model, "sigma_end", where)),
        num_scales=int(_need(model, "num_classes", where)), steps_per_scale=int(_need(sampling, "n_steps_each", where)),
        step_size=float(_need(sampling, "step_lr", where)), step_rule="ald", ema=bool(model.get("ema", False)),
        ema_rate=float(model.get("ema_rate", 0.999)) if model.get("ema") else None,
        pixel_range="-1,1" if dset.get("rescaled") else "0,1",
        image_shape=(int(dset.get("channels", 3)), int(dset.get("image_size", 0)), int(dset.get("image_size", 0)))
        if dset.get("image_size") else None,
        geometric=geometric, notes=tuple(notes))


def read_diffusers(path: Path) -> ToolConfig:
    """A diffusers ``ScoreSdeVeScheduler`` configuration (``scheduler_config.json``, or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        found = [p for p in (path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json") if p.is_file()]
        if not found:
            raise NcsnTuneError(f"{path} holds no scheduler_config.json (nor scheduler/scheduler_config.json)", fields="config")
        path = found[0]
    data = read_mapping(path)
    kind = data.get("_class_name", "ScoreSdeVeScheduler")
    if kind != "ScoreSdeVeScheduler":
        raise NcsnTuneError(f"{path} configures a {kind}; ncsn_tune audits the variance-exploding ScoreSdeVeScheduler", fields="config")
    return ToolConfig(
        tool="diffusers", source=str(path), sigma_max=float(data.get("sigma_max", 1348.0)), sigma_min=float(data.get("sigma_min", 0.01)),
        num_scales=int(data.get("num_train_timesteps", 2000)), steps_per_scale=int(data.get("correct_steps", 1)),
        snr=float(data.get("snr", 0.15)), step_rule="langevin", ema=None, pixel_range="-1,1",
        notes=("diffusers' corrector step is 2 (snr ||z|| / ||s||)^2; eps = 2 (snr sigma_min)^2 assumes ||s|| ~ sqrt(D) / sigma "
               "(an approximation), and its predictor steps come on top",
               "pixels in [-1, 1], as diffusers' pipelines use them"))


#: Run in a separate process: the score_sde config's get_config(), as JSON of the fields the audit reads.
_SCORE_SDE_PROBE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("score_sde_config", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
c = module.get_config()
get = lambda obj, name, default=None: getattr(obj, name, default) if obj is not None else default
out = {"sde": get(c.training, "sde"), "continuous": get(c.training, "continuous"), "sigma_max": get(c.model, "sigma_max"),
       "sigma_min": get(c.model, "sigma_min"), "num_scales": get(c.model, "num_scales"), "ema_rate": get(c.model, "ema_rate"),
       "snr": get(c.sampling, "snr"), "n_steps_each": get(c.sampling, "n_steps_each"), "corrector": get(c.sampling, "corrector"),
       "predictor": get(c.sampling, "predictor"), "centered": get(c.data, "centered"), "image_size": get(c.data, "image_size"),
       "num_channels": get(c.data, "num_channels")}
print(json.dumps(out))
"""


def read_score_sde(path: Path, score_sde_root: Path | None) -> ToolConfig:
    """A score_sde config ``.py``: its ``get_config()`` run with ``score_sde_root`` on the import path."""
    path = Path(path)
    if score_sde_root is None:
        raise NcsnTuneError(f"{path} is a score_sde config: give the score_sde checkout its imports come from (the folder holding "
                            "configs/)", fields="score_sde_root")
    root = Path(score_sde_root)
    if not (root / "configs").is_dir():
        raise NcsnTuneError(f"{root} holds no configs/ folder: give the root of a score_sde checkout", fields="score_sde_root")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root.resolve()), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", _SCORE_SDE_PROBE, str(path.resolve())], capture_output=True, text=True, env=env,
                       cwd=str(root))
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        missing = "ml_collections" if "ml_collections" in last else "torch" if "'torch'" in last else None
        hint = f"; install {missing} (score_sde's configs import it)" if missing else ""
        raise NcsnTuneError(f"running get_config() of {path} failed: {last}{hint}", fields="config")
    c = json.loads(r.stdout.strip().splitlines()[-1])
    if c["sde"] != "vesde":
        raise NcsnTuneError(f"{path} trains a {c['sde']} model; the techniques apply to variance-exploding (vesde) ones", fields="config")
    corrector = c.get("corrector") or "none"
    rule = {"ald": "ald", "langevin": "langevin"}.get(corrector, "none")
    notes = []
    if rule == "langevin":
        notes.append("the langevin corrector's step is 2 (snr ||z|| / ||s||)^2; eps = 2 (snr sigma_min)^2 assumes ||s|| ~ sqrt(D) / sigma")
    if c.get("predictor") not in (None, "none"):
        notes.append(f"the {c['predictor']} predictor takes steps of its own between the corrector's")
    size, channels = c.get("image_size"), c.get("num_channels")
    return ToolConfig(
        tool="score-sde", source=str(path), sigma_max=float(c["sigma_max"]), sigma_min=float(c["sigma_min"]), num_scales=int(c["num_scales"]),
        steps_per_scale=int(c["n_steps_each"]) if rule != "none" else None, snr=float(c["snr"]) if c.get("snr") is not None else None,
        step_rule=rule, ema=bool(c.get("ema_rate")) if c.get("ema_rate") is not None else None, ema_rate=c.get("ema_rate"),
        pixel_range="-1,1" if c.get("centered") else "0,1", image_shape=(int(channels), int(size), int(size)) if size else None,
        notes=tuple(notes))


def read_tool_config(path: Path, score_sde_root: Path | None = None) -> ToolConfig:
    """Any of the supported configurations, by its suffix (.yml/.yaml: NCSNv2; .json or a folder: diffusers; .py: score_sde)."""
    path = Path(path)
    if not path.exists():
        raise NcsnTuneError(f"{path} does not exist", fields="config")
    if path.is_dir() or path.suffix.lower() == ".json":
        return read_diffusers(path)
    if path.suffix.lower() in (".yml", ".yaml"):
        return read_ncsnv2_yaml(path)
    if path.suffix.lower() == ".py":
        return read_score_sde(path, score_sde_root)
    raise NcsnTuneError(f"{path}: not a configuration ncsn_tune reads (an NCSNv2 .yml, a diffusers scheduler_config.json or folder, "
                        "a score_sde .py)", fields="config")
