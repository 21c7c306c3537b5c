"""Reading the sampler settings of the tools people train with, in ncsn_tune's terms (torch-free).

- the official NCSNv2 YAML (``model.sigma_begin``/``sigma_end``/``num_classes``, ``sampling.step_lr``/``n_steps_each``);
- a diffusers ``ScoreSdeVeScheduler`` ``scheduler_config.json`` (or a folder holding one);
- a score_sde config ``.py`` (its ``get_config()`` is run in a separate process with the user's score_sde
  checkout on the import path; score_sde's configs import ``ml_collections`` and ``torch``);
- plain numbers.

Each reader records the pixel range and the sampler the tool runs, as :mod:`.conventions` establishes them from
the tools' sources, so that the audit models the loop that will run (:mod:`ncsn_tune.analysis.samplers`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..analysis.samplers import CORRECTORS, PREDICTORS, SAMPLING_EPS, Sampler
from ..checks import is_real
from ..errors import NcsnTuneError
from ..files import read_mapping
from .conventions import CONVENTIONS, DENOISE_PREDICTOR, DIFFUSERS_INFERENCE_STEPS, VE_SDE, score_sde_pixel_range
from . import ncsnv2_yaml
from .tool_config import ToolConfig



def _need(mapping: dict, path: str, where: str, kind: type | None = None):
    """``mapping``'s value at the dotted ``path``; with ``kind`` (float or int) it must be such a number."""
    value = mapping
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise NcsnTuneError(f"{where} has no {path}; is it the configuration it looks like?", fields="config")
        value = value[key]
    if kind is not None:
        if not is_real(value) or (kind is int and float(value) != int(value)):
            raise NcsnTuneError(f"{where}: {path} must be {'a whole number' if kind is int else 'a number'}, got {value!r}", fields="config")
        value = kind(value)
    return value


def read_ncsnv2_yaml(path: Path) -> ToolConfig:
    """An official NCSNv2 YAML (ermongroup/ncsnv2 ``configs/*.yml``), read by :mod:`.ncsnv2_yaml`."""
    return ncsnv2_yaml.read_ncsnv2_yaml(path).tool_config()


def read_diffusers(path: Path, sampling_steps: int | None = None) -> ToolConfig:
    """A diffusers ``ScoreSdeVeScheduler`` configuration (``scheduler_config.json``, or a folder holding one).

    ``sampling_steps``: the ``num_inference_steps`` the pipeline is called with (default: the pipeline's 2000)."""
    path = Path(path)
    if path.is_dir():
        found = [p for p in (path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json") if p.is_file()]
        if not found:
            raise NcsnTuneError(f"{path} holds no scheduler_config.json (nor scheduler/scheduler_config.json)", fields="config")
        path = found[0]
    data = read_mapping(path)
    for key, kind_of in (("sigma_max", float), ("sigma_min", float), ("snr", float), ("sampling_eps", float),
                         ("num_train_timesteps", int), ("correct_steps", int)):
        if key in data:
            _need(data, key, str(path), kind_of)
    kind = data.get("_class_name", "ScoreSdeVeScheduler")
    if kind != "ScoreSdeVeScheduler":
        raise NcsnTuneError(f"{path} configures a {kind}; ncsn_tune audits the variance-exploding ScoreSdeVeScheduler", fields="config")
    trained = int(data.get("num_train_timesteps", 2000))
    origin = data.get("_ncsn_tune") if isinstance(data.get("_ncsn_tune"), dict) else {}
    recorded = origin.get("num_inference_steps")
    if sampling_steps:
        steps, how = sampling_steps, f"num_inference_steps = {sampling_steps} as given"
    elif isinstance(recorded, int) and recorded >= 2:
        steps, how = recorded, (f"num_inference_steps = {recorded}, which ncsn-tune exported this file for (the pipeline's default is "
                                f"{DIFFUSERS_INFERENCE_STEPS}: pass num_inference_steps={recorded})")
    else:
        steps, how = DIFFUSERS_INFERENCE_STEPS, f"the pipeline's default num_inference_steps = {DIFFUSERS_INFERENCE_STEPS}"
    notes = [f"audited as sampled with {how}; ScoreSdeVePipeline re-spaces its levels to num_inference_steps, so "
             f"num_train_timesteps = {trained} is not what runs unless the two agree",
             f"pixels in {CONVENTIONS['diffusers'].pixel_range.label}: {CONVENTIONS['diffusers'].rule}"]
    return ToolConfig(
        tool="diffusers", source=str(path), sigma_max=float(data.get("sigma_max", 1348.0)), sigma_min=float(data.get("sigma_min", 0.01)),
        num_scales=steps, steps_per_scale=int(data.get("correct_steps", 1)), snr=float(data.get("snr", 0.15)),
        sampler=Sampler.named("diffusers", sampling_eps=float(data.get("sampling_eps", SAMPLING_EPS))), ema=None,
        pixel_range=CONVENTIONS["diffusers"].pixel_range, continuous=True, notes=tuple(notes))


#: Run in a separate process: the score_sde config's get_config(), as JSON of the fields the audit reads.
_SCORE_SDE_PROBE = """
import importlib, importlib.util, json, sys
target = sys.argv[1]
if target.endswith(".py"):
    spec = importlib.util.spec_from_file_location("score_sde_config", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
else:
    module = importlib.import_module(target)
c = module.get_config()
get = lambda obj, name, default=None: getattr(obj, name, default) if obj is not None else default
training, sampling, model, data = (get(c, k) for k in ("training", "sampling", "model", "data"))
out = {"sde": get(training, "sde"), "loss": get(training, "loss"), "continuous": get(training, "continuous"),
       "sigma_max": get(model, "sigma_max"), "sigma_min": get(model, "sigma_min"), "num_scales": get(model, "num_scales"),
       "ema_rate": get(model, "ema_rate"), "method": get(sampling, "method"), "snr": get(sampling, "snr"),
       "n_steps_each": get(sampling, "n_steps_each"), "corrector": get(sampling, "corrector"), "predictor": get(sampling, "predictor"),
       "probability_flow": get(sampling, "probability_flow"), "centered": get(data, "centered"), "image_size": get(data, "image_size"),
       "num_channels": get(data, "num_channels")}
print(json.dumps(out))
"""


def probe_score_sde(target: str, score_sde_root: Path | None, what: str) -> dict:
    """Run ``get_config()`` of a score_sde config (a .py path or a module name such as ``configs.ve.ncsnv2.cifar10``)
    with the checkout ``score_sde_root`` on the import path; the fields the audit and the export read."""
    if score_sde_root is None:
        raise NcsnTuneError(f"{what} is a score_sde config: give the score_sde checkout its imports come from (the folder holding "
                            "configs/)", fields="score_sde_root")
    root = Path(score_sde_root)
    if not (root / "configs").is_dir():
        raise NcsnTuneError(f"{root} holds no configs/ folder: give the root of a score_sde checkout", fields="score_sde_root")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root.resolve()), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", _SCORE_SDE_PROBE, target], capture_output=True, text=True, env=env, cwd=str(root))
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        last = (r.stderr.strip().splitlines() or [f"it exited with status {r.returncode} and printed nothing"])[-1]
        missing = "ml_collections" if "ml_collections" in last else "torch" if "'torch'" in last else None
        hint = f"; install {missing} (score_sde's configs import it)" if missing else ""
        raise NcsnTuneError(f"running get_config() of {what} failed: {last}{hint}", fields="config")
    try:
        return json.loads(lines[-1])
    except ValueError:
        raise NcsnTuneError(f"get_config() of {what} did not return a configuration the probe could read (its last output line: "
                            f"{lines[-1][:120]!r})", fields="config") from None


def score_sde_sampler(c: dict, where: str) -> tuple[Sampler | None, str | None]:
    """The loop score_sde's get_sampling_fn builds from a config (sampling.py:80-123), or None and why not."""
    method = (c.get("method") or "").lower()
    if method == "ode":
        return None, "the probability-flow ODE (sampling.method = 'ode', an RK45 solver): no Langevin steps"
    if method != "pc":
        return None, f"sampling.method is {c.get('method')!r}; score_sde runs 'pc' or 'ode'"
    predictor, corrector = (str(c.get(k) or "none").lower() for k in ("predictor", "corrector"))
    if predictor == DENOISE_PREDICTOR:  # an ncsn-tune export's corrector-only loop with the final denoising step
        predictor = "none"
    if predictor not in PREDICTORS or corrector not in CORRECTORS:
        return None, f"predictor {predictor!r} with corrector {corrector!r} is not modelled (ncsn_tune models predictors " \
                     f"{', '.join(PREDICTORS)} and correctors {', '.join(CORRECTORS)})"
    if c.get("probability_flow") and predictor != "none":
        return None, "the predictor follows the probability-flow ODE (sampling.probability_flow): not modelled"
    return Sampler.named("pc", predictor, corrector, continuous=bool(c.get("continuous"))), None


def read_score_sde(path: Path, score_sde_root: Path | None, sampling_steps: int | None = None) -> ToolConfig:
    """A score_sde config ``.py``: its ``get_config()`` run with ``score_sde_root`` on the import path."""
    path = Path(path)
    c = probe_score_sde(str(path.resolve()), score_sde_root, str(path))
    if c["sde"] is None:
        also = f" (it sets training.loss = {c['loss']!r}, which score_sde does not read)" if c.get("loss") else ""
        raise NcsnTuneError(f"{path} sets no training.sde{also}, so score_sde's run_lib cannot run it (it reads config.training.sde); "
                            "set training.sde = 'vesde' in a copy to audit it", fields="config")
    if c["sde"] != VE_SDE:
        raise NcsnTuneError(f"{path} trains a {c['sde']} model; the techniques apply to variance-exploding (vesde) ones", fields="config")
    sampler, why_not = score_sde_sampler(c, str(path))
    notes = []
    if str(c.get("predictor") or "").lower() == DENOISE_PREDICTOR:
        notes.append(f"predictor {DENOISE_PREDICTOR!r} (written by ncsn-tune export): no predictor step, and the final denoising step at "
                     "the last level")
    if sampler is not None and sampler.corrector == "langevin":
        notes.append("the langevin corrector's step is 2 (snr ||z|| / ||s||)^2, modelled for a single Gaussian (exact as D grows)")
    continuous = bool(c.get("continuous"))
    n = _need(c, "num_scales", f"{path} (model.num_scales)", int)
    if sampling_steps and sampling_steps != n:
        notes.append(f"sampled with N = {sampling_steps} as given, not model.num_scales = {n}" +
                     ("" if continuous else ": this model was trained on discrete scales (training.continuous = False), so its "
                      "network only knows the model.num_scales levels"))
        n = sampling_steps
    notes.append("training.continuous = True: trained in continuous time, so N (model.num_scales) can change at sampling time "
                 "without retraining" if continuous else
                 "training.continuous = False: trained on model.num_scales discrete scales; another L means retraining")
    size, channels = c.get("image_size"), c.get("num_channels")
    for key in ("sigma_max", "sigma_min", "num_scales"):
        _need(c, key, f"{path} (model.{key})", float)
    return ToolConfig(
        tool="score-sde", source=str(path), sigma_max=float(c["sigma_max"]), sigma_min=float(c["sigma_min"]), num_scales=n,
        steps_per_scale=int(c["n_steps_each"]) if sampler is not None and sampler.langevin_steps else None,
        snr=float(c["snr"]) if c.get("snr") is not None and sampler is not None and sampler.langevin_steps else None,
        sampler=sampler, no_sampler_reason=why_not, ema=bool(c.get("ema_rate")) if c.get("ema_rate") is not None else None,
        ema_rate=c.get("ema_rate"), pixel_range=score_sde_pixel_range(c.get("centered")),
        image_shape=(int(channels), int(size), int(size)) if size else None, continuous=continuous, notes=tuple(notes))


def read_tool_config(path: Path, score_sde_root: Path | None = None, sampling_steps: int | None = None) -> ToolConfig:
    """Any of the supported configurations, by its suffix (.yml/.yaml: NCSNv2; .json or a folder: diffusers; .py: score_sde).

    ``sampling_steps``: the number of levels the sampler is run with, where the configuration does not fix it
    (diffusers' num_inference_steps; a continuous-time score_sde model)."""
    path = Path(path)
    if not path.exists():
        raise NcsnTuneError(f"{path} does not exist", fields="config")
    if path.is_dir() or path.suffix.lower() == ".json":
        return read_diffusers(path, sampling_steps)
    if sampling_steps is not None and path.suffix.lower() in (".yml", ".yaml"):
        raise NcsnTuneError("an NCSNv2 YAML samples its num_classes scales; the number of sampling steps is not free", fields="sampling_steps")
    if path.suffix.lower() in (".yml", ".yaml"):
        return read_ncsnv2_yaml(path)
    if path.suffix.lower() == ".py":
        return read_score_sde(path, score_sde_root, sampling_steps)
    raise NcsnTuneError(f"{path}: not a configuration ncsn_tune reads (an NCSNv2 .yml, a diffusers scheduler_config.json or folder, "
                        "a score_sde .py)", fields="config")
