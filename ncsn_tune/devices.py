"""The one place that decides where work runs: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.

T1, the simulations, the trainer and the sampler all ask :func:`resolve_device`.
It never imports torch unless torch is installed and an NVIDIA driver is
present (importing torch costs seconds), so the analysis commands stay
torch-free on machines without a GPU. ``torch:cpu`` names torch's code path on
the CPU (used to test the GPU code on machines without one).
"""

from __future__ import annotations

import importlib.util
import os
import re

from .errors import NcsnTuneError

DEVICE_NAMES = "cpu, cuda, cuda:N, auto"
_CUDA = re.compile(r"^cuda(:(\d+))?$")


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def gpu_available() -> bool:
    """True when torch is installed, an NVIDIA driver is loaded and torch sees a GPU."""
    if not torch_installed() or not os.path.exists("/proc/driver/nvidia"):
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(device: str = "auto", *, gpu_worthwhile: bool = True) -> str:
    """The device to use, as a string torch accepts (``cpu``, ``cuda``, ``cuda:1``) or ``torch:cpu``.

    ``auto`` gives ``cuda`` when a GPU is usable and ``gpu_worthwhile`` (the
    caller's judgement that the work outweighs starting CUDA), else ``cpu``.
    An explicit ``cuda`` that cannot be honoured is an error, never a silent
    fall-back.
    """
    name = str(device).strip().lower()
    if name in ("cpu", "torch:cpu"):
        return name
    if name == "auto":
        return "cuda" if gpu_worthwhile and gpu_available() else "cpu"
    match = _CUDA.match(name)
    if match is None:
        raise NcsnTuneError(f"unknown device {device!r}; use one of {DEVICE_NAMES}", fields="device")
    if not torch_installed():
        raise NcsnTuneError(f"device {device!r} needs torch, which is not installed; install it or use cpu", fields="device")
    if not gpu_available():
        raise NcsnTuneError(f"device {device!r} was asked for but torch sees no GPU; use cpu or auto", fields="device")
    import torch

    index = int(match.group(2) or 0)
    if index >= torch.cuda.device_count():
        raise NcsnTuneError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0", fields="device"
        )
    return name


def torch_device(device: str = "auto"):
    """:func:`resolve_device` as a ``torch.device`` (imports torch)."""
    import torch

    resolved = resolve_device(device)
    return torch.device("cpu" if resolved == "torch:cpu" else resolved)
