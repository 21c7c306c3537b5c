"""Keeping what compiling made: torch's compile caches in ncsn_tune's user cache folder (not /tmp, which a reboot or a
new container empties), a marker for each graph compiled on this machine, and each graph's compiled artefacts in the
user's own artefact folder, so that the next run, sample or evaluation of the same network loads them instead of
compiling.

Compiled artefacts are code: ``torch.compiler.load_cache_artifacts`` unpickles them. So they are loaded only from
:func:`artefact_dir` -- a folder of the user's own cache, owned by them and writable by nobody else -- and only when
their SHA-256 matches the digest written beside them when they were saved. Never from a run folder, which may come
from anyone (a run folder that holds ``compile_cache/``, as older versions wrote it, is left alone and said so)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from ...files import cache_dir


def use_persistent_cache() -> Path:
    """Point torch's compile caches at ncsn_tune's user cache folder, unless the user chose one.

    A TORCHINDUCTOR_CACHE_DIR equal to torch's own default (:func:`torch_default_cache_dir`) is torch's choice,
    not the user's: importing TorchDynamo, which building an Adam optimiser does, sets it when it is unset."""
    folder = cache_dir() / "torch_compile"
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == torch_default_cache_dir():
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor")
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def torch_default_cache_dir() -> str:
    """/tmp/torchinductor_<user>: where torch's compiler caches when TORCHINDUCTOR_CACHE_DIR is unset (as
    ``torch._inductor.runtime.cache_dir_utils.default_cache_dir`` says; importing that module would import the
    whole compiler, seconds on a GPU machine)."""
    import getpass
    import re
    import tempfile

    try:
        user = getpass.getuser()
    except (KeyError, ModuleNotFoundError, OSError):
        user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
    return os.path.abspath(os.path.join(tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user)))


def built_marker(name: str) -> Path:
    """The file that says the graph ``name`` (a :class:`CompileCache` artefact's stem) is in this machine's compile
    cache; it lives inside that cache, so emptying the cache forgets it too."""
    return use_persistent_cache() / "ncsn_tune_built" / name


def mark_built(name: str) -> None:
    marker = built_marker(name)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


class UntrustedFolder(Exception):
    """The artefact folder is not the user's own (another owner, others may write to it, or a link)."""


def owned_privately(path: Path) -> bool:
    """``path`` is no link, belongs to this user and nobody else may write to it."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    import stat

    if stat.S_ISLNK(st.st_mode):
        return False
    return (not hasattr(os, "getuid") or st.st_uid == os.getuid()) and not st.st_mode & 0o022


def artefact_dir() -> Path:
    """The user's own folder for compiled artefacts (``<cache>/compiled_artefacts``), created owner-only (0700);
    :class:`UntrustedFolder` when it exists but is not the user's alone."""
    folder = cache_dir() / "compiled_artefacts"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
    except OSError as err:
        raise UntrustedFolder(f"{folder} cannot be made ({err.strerror})") from None
    if not owned_privately(folder):
        raise UntrustedFolder(f"{folder} is not this user's alone (another owner, writable by others, or a link)")
    return folder


class CompileCache:
    """The compiled artefacts of one graph (training step or sampling score), kept in the user's own
    :func:`artefact_dir` with their SHA-256 beside them.

    ``key`` names what was compiled (torch version, GPU, network, batch shape, switches): artefacts of
    another key are never loaded. :meth:`load` before compiling makes it a warm start; :meth:`save` after
    it keeps what this process compiled (torch's portable cache artefacts) for the next one. ``run_dir`` is the run
    the graph serves: compiled artefacts found in it are never loaded (they are code from wherever the folder came from).
    """

    def __init__(self, run_dir: Path | None, kind: str, model: torch.nn.Module, batch_shape, switches) -> None:
        device = next(model.parameters()).device
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        what = (kind, torch.__version__, gpu, type(model).__name__, getattr(model, "architecture", ""), getattr(model, "ngf", ""),
                getattr(model, "channels", ""), getattr(model, "image_size", ""), tuple(batch_shape), switches.bf16,
                switches.channels_last, switches.compile_mode, switches.compile_scope)
        self.key = hashlib.sha256(repr(what).encode()).hexdigest()[:16]
        self.path = cache_dir() / "compiled_artefacts" / f"{kind}_{self.key}.bin"
        self.in_run_folder = Path(run_dir) / "compile_cache" / self.path.name if run_dir is not None else None
        self.loaded = False  # whether load() put this graph's artefacts in torch's caches (nothing new to save then)

    @property
    def digest_path(self) -> Path:
        return self.path.with_suffix(".sha256")

    @property
    def exists(self) -> bool:
        """Artefacts of this graph that may be loaded: in the user's own folder, with their digest."""
        return self.path.is_file() and self.digest_path.is_file()

    @property
    def built_here(self) -> bool:
        """Whether this machine's compile cache holds this graph (:meth:`mark_built` was called since it was last emptied)."""
        return built_marker(self.path.stem).is_file()

    @property
    def at_hand(self) -> bool:
        """Whether this graph's compiled code is at hand: in the user's artefact folder or in this machine's compile cache."""
        return self.exists or self.built_here

    def mark_built(self) -> None:
        """Record that this graph has been compiled into this machine's compile cache (loading the run's artefacts
        again would only cost time)."""
        mark_built(self.path.stem)

    def load(self) -> str | None:
        """Load the saved artefacts into torch's caches; a note, or None when there are none.

        When this machine's compile cache already holds the graph (:attr:`built_here`), nothing is loaded: it would
        repeat what the cache holds and cost about 1.5 s more before the first call on an H100
        (``benchmarks/score_warm_start.py``)."""
        foreign = self.in_run_folder is not None and self.in_run_folder.exists()
        said = (f"{self.in_run_folder} holds compiled artefacts: not loaded (compiled code from a run folder could be anyone's); "
                "this user's own compile cache is used instead") if foreign else None
        if not self.exists:
            return said
        use_persistent_cache()
        if self.built_here:
            self.loaded = True
            return f"this machine's compile cache holds this graph already: a warm start without loading {self.path.name}"
        try:
            artefact_dir()
            if not (owned_privately(self.path) and owned_privately(self.digest_path)):
                raise UntrustedFolder(f"{self.path} is not this user's alone")
            data = self.path.read_bytes()
            if hashlib.sha256(data).hexdigest() != self.digest_path.read_text().strip():
                raise UntrustedFolder(f"{self.path} does not match the digest saved with it")
            torch.compiler.load_cache_artifacts(data)
        except UntrustedFolder as err:
            return f"compiled artefacts not loaded: {err}; compiling afresh"
        except Exception as err:  # noqa: BLE001  (a stale cache only costs a full compile)
            return f"could not load the compiled artefacts {self.path.name} ({type(err).__name__}); compiling afresh"
        self.loaded = True
        return f"loaded the compiled artefacts {self.path} (no full compile)"

    def save(self) -> str | None:
        return save_artefacts(self.path)


def save_artefacts(path: Path) -> str | None:
    """What this process compiled (torch's portable cache artefacts) into ``path`` in the user's own :func:`artefact_dir`,
    atomically and owner-only, with its SHA-256 beside it; a note, or None when there was nothing to save (or the
    folder is not the user's alone: then nothing is kept)."""
    from ...files import atomic_write_bytes

    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return None
    try:
        folder = artefact_dir()
    except UntrustedFolder as err:
        return f"compiled artefacts not kept: {err}"
    path = folder / Path(path).name
    atomic_write_bytes(path, saved[0])
    os.chmod(path, 0o600)
    atomic_write_bytes(path.with_suffix(".sha256"), hashlib.sha256(saved[0]).hexdigest().encode())
    os.chmod(path.with_suffix(".sha256"), 0o600)
    return f"saved the compiled artefacts to {path} ({len(saved[0]) / 1e6:.1f} MB)"


def one_compile_thread_when_warm(cache: CompileCache | None) -> None:
    """With this graph's compiled code at hand (in this machine's compile cache, or in the user's artefact folder), let torch
    compile in one thread: its pool of compile workers, which it starts when its compiler is imported, has nothing
    to do then and cost 3-4 s of the process on the H100 machine (``benchmarks/score_warm_start.py``: the whole
    process took 4-6 s more than being ready and running, against 1.3-1.7 s with one thread). A choice the user made
    (TORCHINDUCTOR_COMPILE_THREADS) stands, and nothing changes once the compiler is imported."""
    if cache is not None and cache.at_hand and not compiler_imported():
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")


def load_artefacts(cache: CompileCache | None, notes: list) -> None:
    """Before compiling: the graph's artefacts from the user's own folder into torch's caches, unless this machine's cache
    holds the graph already; what happened goes to ``notes``."""
    if cache is not None:
        notes.append(cache.load() or ("no compiled artefacts kept yet, but this machine's compile cache holds this graph: "
                                      "a warm compile" if cache.built_here else "no compiled artefacts kept yet: compiling"))


def keep_artefacts(cache: CompileCache | None, notes: list) -> None:
    """After compiling: the artefacts into the user's own folder (unless they came from it) and the graph recorded as
    built here."""
    if cache is not None:
        if not cache.loaded:
            saved = cache.save()
            if saved:
                notes.append(saved)
        cache.mark_built()


def compiler_imported() -> bool:

    return "torch._inductor.compile_fx" in sys.modules


def import_compiler() -> None:
    import torch._dynamo  # noqa: F401
    import torch._inductor.compile_fx  # noqa: F401
