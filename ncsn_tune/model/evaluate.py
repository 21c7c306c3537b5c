"""Evaluating a trained model: held-out DSM loss per scale, nearest training images of samples, FID.

:func:`held_out_loss` is the one implementation of the validation loss (the
trainer's periodic evaluation uses it too). :func:`evaluate_checkpoint` does
what ``ncsn-tune evaluate`` does and returns an :class:`Evaluation`;
:func:`write_evaluation` writes its files. Every input (samples file, FID
weights, data) is checked before any long computation starts.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..analysis.nearest_neighbours import Neighbours, nearest_neighbours
from ..checks import is_whole
from ..data import DataIdentity, Dataset, load_dataset
from ..errors import CheckpointError, DataError, NcsnTuneError
from .checkpoint import Checkpoint, load_model
from .loss import held_out_loss
from .runs import open_checkpoint


def held_out_loss_of_run(model, images: torch.Tensor, sigmas: torch.Tensor, run_dir: Path | None, *, seed: int = 0,
                         compile: bool | None = None, progress=None) -> tuple[np.ndarray, list[str]]:
    """:func:`held_out_loss` of a trained model, fast on a GPU (:func:`~ncsn_tune.model.accel.fast_score` at the batch
    :func:`~ncsn_tune.model.accel.score_batch_size` picks, 1,000 CIFAR-10 images; torch.compile decided from the work;
    ``run_dir``'s compiled artefacts are used and kept), 250 at a time on a CPU. Returns the loss per scale and notes
    on how it was computed."""
    from .accel import score_batch_size
    from .compile_policy import score_network

    dev = images.device
    n = images.shape[0]
    batch_size = score_batch_size(images.shape[1:], dev, n, cpu=250)
    generator = torch.Generator(dev).manual_seed(seed)
    total = math.ceil(n / batch_size) * len(sigmas)
    done = [0]

    def callback(_):
        done[0] += 1
        if progress is not None:
            progress(done[0], total, "scales")

    if dev.type != "cuda":
        return held_out_loss(model, images, sigmas, batch_size=batch_size, generator=generator, callback=callback), []
    batch = (batch_size, *images.shape[1:])
    score, notes = score_network(model, batch, n * len(sigmas), compile, run_dir)
    return held_out_loss(score, images, sigmas, batch_size=batch_size, generator=generator, bf16=False,  # it autocasts inside
                         callback=callback), notes


def read_samples(path: Path) -> np.ndarray:
    """Samples written by ``ncsn-tune sample --npz``: float (N, C, H, W) clipped to [0, 1] (the 'float' array,
    else 'uint8' (N, H, W, C) / 255)."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise NcsnTuneError(f"{path}: samples must be a .npz file as the sampler writes them, got {path.suffix or 'no suffix'!r}",
                            fields="samples")
    if not path.is_file():
        raise NcsnTuneError(f"samples file {path} does not exist", fields="samples")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "float" in f:
                samples = np.asarray(f["float"], dtype=np.float32)
            elif "uint8" in f:
                samples = np.asarray(f["uint8"], dtype=np.float32).transpose(0, 3, 1, 2) / 255.0
            else:
                raise KeyError("neither a 'float' nor a 'uint8' array")
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise NcsnTuneError(f"{path} is not a samples file as the sampler writes them ({type(exc).__name__}: {exc})",
                            fields="samples") from None
    if samples.ndim != 4 or len(samples) == 0:
        raise NcsnTuneError(f"{path}: expected samples shaped (N, C, H, W), got {samples.shape}", fields="samples")
    if not np.isfinite(samples).all():
        raise NcsnTuneError(f"{path}: the samples hold NaN or infinite values", fields="samples")
    return np.clip(samples, 0.0, 1.0)  # the image range; sampling may overshoot it slightly


def run_data(ckpt: Checkpoint, split: str = "train") -> Dataset:
    """The data a run was trained on (its recorded absolute path), ``split`` of it for CIFAR-10."""
    config = ckpt.config
    spec, root = config.get("data") or "cifar10", config.get("data_root")
    try:
        return load_dataset(spec, root, split, download=False)
    except DataError as err:
        raise DataError(f"the run's training data cannot be read ({err}); give the data again", fields="data") from None


def evaluation_data(ckpt: Checkpoint, data: str | None = None, data_root: str | None = None, split: str | None = None,
                    progress=None) -> tuple[Dataset, bool, str]:
    """(images, held_out, description): the given data, else the run's held-out split (CIFAR-10's test set),
    else the run's training images, said so (no held-out split exists for them)."""
    train_identity = DataIdentity.from_dict(ckpt.data)
    name = ckpt.config.get("data") or "cifar10"
    if data is not None:
        dataset = load_dataset(data, data_root, split or "test", progress=progress)
    elif name.lower() in ("cifar10", "cifar-10"):
        dataset = load_dataset("cifar10", ckpt.config.get("data_root"), split or "test", download=False, progress=progress)
    else:
        dataset = run_data(ckpt)
    held_out = not (train_identity is not None and train_identity.same_data(dataset.identity()))
    if data is None and not (dataset.name == "cifar10" and dataset.split == "test"):
        held_out = False  # the run's own images (also when an old checkpoint did not record their identity)
    what = "held-out" if held_out else "training images (no held-out split)"
    return dataset, held_out, f"{what}: {dataset.identity().describe()}"


#: Which chains an evaluation's verdict judged: a short chain check of its own, or the chains of the samples drawn for FID.
CHAIN_CHECK, FID_SAMPLES = "chain check", "FID samples"


@dataclass
class Evaluation:
    """What ``ncsn-tune evaluate`` reports."""

    checkpoint: str
    step: int
    data: str
    held_out: bool
    images: int
    sigmas: list[float]
    loss_by_scale: np.ndarray
    samples: np.ndarray | None = None
    nearest: Neighbours | None = None
    nearest_images: np.ndarray | None = None
    fid: dict | None = None
    notes: list[str] = field(default_factory=list)
    chain: dict | None = None  # a sampling chain's diagnostics and verdict
    chain_images: int = 0
    chain_of: str = CHAIN_CHECK  # which chains: the chain check's, or FID_SAMPLES (those drawn for FID)

    @property
    def loss(self) -> float:
        return float(np.mean(self.loss_by_scale))

    def to_dict(self) -> dict:
        out = {"checkpoint": self.checkpoint, "step": self.step, "data": self.data, "held_out": self.held_out, "images": self.images,
               "eval_loss": self.loss, "sigmas": self.sigmas, "eval_loss_by_scale": self.loss_by_scale.tolist(), "notes": self.notes}
        if self.nearest is not None:
            d = self.nearest.distances
            out["nearest"] = {"indices": self.nearest.indices.tolist(), "distances": d.tolist(),
                              "median_distance": float(np.median(d)), "min_distance": float(d.min())}
        if self.fid is not None:
            out["fid"] = self.fid
        if self.chain is not None:
            out["chain"] = {**self.chain, "images": self.chain_images, "of": self.chain_of}
        return out


@dataclass(frozen=True)
class FidSettings:
    """How FID is computed: of the samples given, else of ``num`` drawn with the run's schedule, M and eps; against the
    ``split`` split of the run's data (its statistics kept in the run folder), or ``reference`` (a statistics .npz, or any
    data set :func:`~ncsn_tune.data.load_dataset` reads, its statistics cached); ``reference_images``: at most that many of
    the reference (default all); ``inception_weights``: the FID network (default the fid extra's,
    :func:`~ncsn_tune.model.inception.find_inception_weights`)."""

    num: int = 1000
    split: str = "train"
    reference: Path | str | None = None
    reference_images: int | None = None
    inception_weights: Path | None = None

    def check(self, samples_given: bool) -> None:
        if self.reference_images is not None and self.reference_images < 2:
            raise NcsnTuneError(f"FID needs at least 2 reference images, got {self.reference_images}", fields="fid_images")
        if not samples_given and (not is_whole(self.num) or self.num < 2):
            raise NcsnTuneError(f"FID needs at least 2 samples, got {self.num!r}", fields="fid_num")


def evaluate_checkpoint(checkpoint=None, *, data: str | None = None, data_root: str | None = None, split: str | None = None,
                        images: int = 1000, samples: Path | None = None, fid: FidSettings | bool | None = None,
                        chain_check: int = 16, ema: bool = True, device: str = "auto", seed: int = 0, compile: bool | None = None,
                        progress=None) -> Evaluation:
    """Held-out DSM loss per scale of a checkpoint, on ``images`` images of ``data`` (default: the run's held-out split),
    and a sampling chain's verdict (``chain_check`` images, 0: none); with ``samples`` (an .npz) their exact nearest
    training images; with ``fid`` (:class:`FidSettings`, or True for its defaults) the FID of those samples, or of
    ``fid.num`` drawn here with the run's settings and ``seed``, whose chains then give the verdict.

    ``checkpoint``: a run folder, a checkpoint file or a :class:`Checkpoint`; None: the newest of the run ``train`` makes
    without a folder (:func:`~ncsn_tune.model.runs.open_checkpoint`). Every input is read and checked before the long work.

    On a GPU the loss pass runs the network as sampling does (bf16, channels_last, a CUDA graph, at batches of up
    to 1,000 CIFAR-10 images: the same graph as ``sample``'s on 1,000 or more, so they share compiled artefacts), with
    torch.compile decided from the image evaluations to do unless ``compile`` says."""
    fid = FidSettings() if fid is True else (fid or None)
    # Inputs: every one read and checked before the long work.
    if not is_whole(images) or images < 1:
        raise NcsnTuneError(f"the number of evaluation images must be at least 1, got {images!r}", fields="images")
    if fid is not None:
        fid.check(samples_given=samples is not None)
    sample_array = read_samples(samples) if samples is not None else None
    inception, reference = fid_inputs(fid, data_root, progress) if fid is not None else (None, None)
    ckpt = open_checkpoint(checkpoint)
    if fid is not None and reference is None and fid.split != "train":
        reference = split_reference(ckpt, fid.split, progress)
    if sample_array is not None and tuple(sample_array.shape[1:]) != ckpt.image_shape:
        raise NcsnTuneError(f"the samples have shape {sample_array.shape[1:]} but the model's images {ckpt.image_shape}", fields="samples")
    model = load_model(ckpt, device=device, ema=ema)
    dev = next(model.parameters()).device

    # The loss: each evaluation image noised at every scale.
    dataset, held_out, described = evaluation_data(ckpt, data, data_root, split, progress)
    if dataset.image_shape != ckpt.image_shape:
        raise NcsnTuneError(f"the data has shape {dataset.image_shape} but the model was trained on {ckpt.image_shape}", fields="data")
    n = min(images, dataset.num_points)
    x = torch.from_numpy(dataset.unit_float32(slice(0, n))).to(dev)
    sigmas = torch.tensor(ckpt.schedule.sigmas, dtype=torch.float32, device=dev)
    by_scale, notes = held_out_loss_of_run(model, x, sigmas, ckpt.run_dir, seed=seed, compile=compile, progress=progress)
    if not np.isfinite(by_scale).all():
        raise CheckpointError(f"{ckpt.path}: the loss is not finite at {int((~np.isfinite(by_scale)).sum())} scale(s); the weights "
                              "give NaN or infinite scores there")
    result = Evaluation(str(ckpt.path), ckpt.step, described, held_out, n, ckpt.schedule.sigmas.tolist(), by_scale,
                        notes=ckpt.notes + notes)
    if not held_out:
        result.notes.append("the loss is on training images: this data has no held-out split (give one as data to measure generalisation)")

    # Chains: the FID samples drawn here (their chains give the verdict), else a short chain check.
    from .generate import sample_checkpoint

    if fid is not None and sample_array is None:
        drawn = sample_checkpoint(ckpt, num=fid.num, seed=seed, device=device, compile=compile, ema=ema, model=model, progress=progress)
        sample_array = np.clip(drawn.samples.numpy(), 0.0, 1.0)
        result.notes.append(f"FID of {fid.num:,} samples drawn here (seed {seed}, the run's schedule, M and eps)")
        result.chain, result.chain_images, result.chain_of = drawn.diagnostics.summary(), fid.num, FID_SAMPLES
    elif chain_check:
        check = sample_checkpoint(ckpt, num=chain_check, seed=seed, device=device, compile=False, ema=ema, model=model, progress=progress)
        result.chain, result.chain_images = check.diagnostics.summary(), chain_check

    # Samples: their exact nearest training images, and FID against the reference (default: the training images).
    if sample_array is not None:
        recorded = DataIdentity.from_dict(ckpt.data)
        same = recorded is not None and recorded.same_data(dataset.identity())  # evaluated on the training images: read once
        train = dataset if same else run_data(ckpt)
        queries = (sample_array.reshape(len(sample_array), -1) - train.offset) / train.scale  # compare in the data's stored units
        result.samples = sample_array
        result.nearest = nearest_neighbours(queries, train.points(), scale=train.scale, progress=progress)
        result.nearest_images = train.unit_float32(result.nearest.indices)
        if fid is not None:
            reference = reference or (train, Path(ckpt.run_dir) / f"fid_reference_{train.split or 'data'}_"
                                                                  f"{train.content_digest(progress)[:16]}")
            result.fid = fid_of_samples(sample_array, inception, reference, fid.reference_images, dev, progress)
    return result


def fid_inputs(fid: FidSettings, data_root=None, progress=None) -> tuple[tuple, object]:
    """The FID network (its path, the network and its description, on the CPU until used) and the given reference
    (:func:`read_fid_reference`; None when it is the run's own data), read and checked."""
    from .inception import find_inception_weights, load_fid_inception

    weights_path = find_inception_weights(fid.inception_weights)
    inception = (weights_path, *load_fid_inception(weights_path, torch.device("cpu")))
    return inception, read_fid_reference(fid.reference, data_root, progress) if fid.reference is not None else None


def split_reference(ckpt: Checkpoint, split: str, progress=None) -> tuple[Dataset, Path]:
    """The ``split`` split of the run's data as the FID reference, with the stem of its statistics in the run folder."""
    data = run_data(ckpt, split)
    if data.split != split:
        raise NcsnTuneError(f"the run's data ({data.identity().describe()}) has no {split} split: use --fid-split train, "
                            "or give the reference data or statistics with --fid-reference", fields="fid_split")
    return data, Path(ckpt.run_dir) / f"fid_reference_{split}_{data.content_digest(progress)[:16]}"


def read_fid_reference(reference: Path, data_root=None, progress=None):
    """What FID compares against: a statistics .npz (mu and sigma, pytorch-fid's format), or a data set (any that
    ``load_dataset`` reads), whose statistics are kept in ncsn_tune's cache under the data's fingerprint."""
    from ..data import load_dataset
    from ..files import cache_dir
    from .fid import FeatureStatistics

    reference = Path(str(reference))
    if reference.suffix.lower() == ".npz" and reference.is_file():
        import zipfile

        try:
            with zipfile.ZipFile(reference) as archive:
                if "mu.npy" in archive.namelist():
                    return FeatureStatistics.load(reference)
        except zipfile.BadZipFile:
            pass
    data = load_dataset(str(reference), data_root, split="test" if str(reference).lower() in ("cifar10", "cifar-10") else "train",
                        download=False, progress=progress)
    return data, cache_dir() / "fid_statistics" / f"{data.name}_{data.content_digest(progress)[:16]}"


def fid_of_samples(samples: np.ndarray, inception: tuple, reference, reference_images: int | None, device, progress=None) -> dict:
    """FID of the samples against ``reference``: statistics (:class:`~.fid.FeatureStatistics`), or (a data set, the stem of
    its cached statistics file: computed once from its first ``reference_images`` images, or all, and kept).
    ``inception``: the weights file, the network loaded from it, its SHA-256 and notes."""
    from .fid import FeatureStatistics, cached_reference, feature_statistics, fid
    from .inception import inception_features

    import time

    t0 = time.perf_counter()
    weights_path, network, sha, notes = inception
    network = network.to(device)  # the model's device: on a GPU a 1,000-sample FID takes seconds, on 2 CPU cores minutes
    if isinstance(reference, FeatureStatistics):
        where, stats_file = reference.source, None
    else:
        data, stem = reference
        n = data.num_points if reference_images is None else min(reference_images, data.num_points)
        source = f"{data.name} {data.split or ''} images from {data.source}".replace("  ", " ")
        cache = Path(f"{stem}_{n}.npz")
        reference = cached_reference(cache, source, n, sha)
        if reference is None:
            features = inception_features(network, lambda a, b: data.unit_float32(slice(a, b)), count=n, progress=progress)
            reference = feature_statistics(features, source, sha)
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                reference.save(cache)
                notes.append(f"reference statistics computed from {n:,} images and saved to {cache}")
            except OSError as err:  # the FID stands; only the next run computes the statistics again
                notes.append(f"reference statistics computed from {n:,} images, but not saved to {cache} ({err.strerror or err}): the "
                             "next FID against them computes them again")
                cache = None
        else:
            notes.append(f"reference statistics reused from {cache}")
        where, stats_file = source, cache  # None when it could not be written
    stats = feature_statistics(inception_features(network, samples, progress=progress), "samples", sha)
    if stats.num_images < 50000:
        notes.append(f"FID from {stats.num_images:,} samples is biased upwards against the usual 50,000; compare only FIDs of equal "
                     "sample counts and references")
    value = fid(stats, reference)
    if not math.isfinite(value):
        raise NcsnTuneError("FID came out non-finite; the samples' features hold NaN or infinite values")
    return {"fid": value, "num_samples": stats.num_images, "reference": where, "reference_images": reference.num_images,
            "reference_statistics": None if stats_file is None else str(stats_file), "weights": str(weights_path),
            "device": str(torch.device(device)), "seconds": time.perf_counter() - t0, "notes": notes}


EVALUATION_FILES = ("evaluation.json", "evaluation.png", "nearest_neighbours.png")


def check_evaluation_outputs(output_dir: Path, force: bool = False) -> None:
    """Before any work: the folder can hold the evaluation's files without replacing a file of someone else's."""
    from ..files import check_output

    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NcsnTuneError(f"{output_dir} is a file, not a folder", fields="output_dir")
    for name in EVALUATION_FILES:
        check_output(output_dir / name, (Path(name).suffix,), force=force, what="output_dir")


def write_evaluation(result: Evaluation, output_dir: Path) -> list[Path]:
    """evaluation.json, evaluation.png (loss by scale, distance histogram) and, with samples,
    nearest_neighbours.png (each sample beside its nearest training image). Returns the paths written."""
    from ..files import write_mapping
    from ..images import image_grid, save_figure, save_image
    from ..plots import plot_eval

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = [write_mapping(output_dir / "evaluation.json", result.to_dict())]
    distances = result.nearest.distances if result.nearest is not None else None
    fig = plot_eval(result.loss_by_scale, result.sigmas, distances, held_out=result.held_out)
    written.append(save_figure(fig, output_dir / "evaluation.png", close=True))
    if result.nearest is not None:
        pairs = np.empty((2 * len(result.samples), *result.samples.shape[1:]), dtype=np.float32)
        pairs[0::2], pairs[1::2] = result.samples, result.nearest_images
        written.append(save_image(image_grid(pairs, columns=16), output_dir / "nearest_neighbours.png"))
    return written
