"""Images in [0, 1] to pixels and files: grids, PNG strips, animated GIFs (NumPy and Pillow only).

Arrays are (N, C, H, W) floats in [0, 1] (values outside are clamped); torch
tensors are accepted and copied to the CPU. Files are written atomically, in
the format their suffix names.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import NcsnTuneError
from .files import WRITTEN_BY, atomic_open

#: Suffix -> Pillow format of the image files written.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF", ".webp": "WEBP", ".pdf": "PDF"}


def _numpy(images) -> np.ndarray:
    if hasattr(images, "detach"):  # a torch tensor, without importing torch
        images = images.detach().float().cpu().numpy()
    return np.asarray(images, dtype=np.float32)


def to_uint8(images) -> np.ndarray:
    """Values in [0, 1] (clamped) as uint8 0..255, rounded to nearest; the layout is kept."""
    return np.floor(np.clip(_numpy(images), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_uint8_hwc(images) -> np.ndarray:
    """(N, C, H, W) in [0, 1] to (N, H, W, C) uint8, the layout FID tools and image files use."""
    return to_uint8(images).transpose(0, 2, 3, 1)


def image_grid(images, columns: int | None = None, border: int = 2) -> np.ndarray:
    """A uint8 (H', W', C) grid (or (H', W') for one channel) of N images with white borders."""
    x = np.clip(_numpy(images), 0.0, 1.0)
    n, c, h, w = x.shape
    columns = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / columns))
    grid = np.ones((c, rows * (h + border) + border, columns * (w + border) + border), dtype=np.float32)
    for k in range(n):
        r, q = divmod(k, columns)
        top, left = border + r * (h + border), border + q * (w + border)
        grid[:, top : top + h, left : left + w] = x[k]
    out = to_uint8(grid).transpose(1, 2, 0)
    return out[..., 0] if c == 1 else out


def image_format(path: Path, allowed: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")) -> str:
    """The Pillow format the suffix of ``path`` names; an unknown or disallowed suffix is an error."""
    suffix = Path(path).suffix.lower()
    if suffix not in allowed:
        raise NcsnTuneError(f"{path}: an image file must end in {', '.join(allowed)}, got {suffix or 'no suffix'!r}", fields="output")
    return IMAGE_FORMATS[suffix]


def _marked(image, fmt: str) -> dict:
    """Save options that mark the file as ncsn_tune's (PNG text, EXIF Software for JPEG/WebP, GIF comment)."""
    from PIL import Image, PngImagePlugin

    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("Software", WRITTEN_BY)
        return {"pnginfo": info}
    if fmt == "GIF":
        return {"comment": WRITTEN_BY.encode()}
    exif = Image.Exif()
    exif[0x0131] = WRITTEN_BY  # Software
    return {"exif": exif.tobytes()}


def save_image(array: np.ndarray, path: Path) -> Path:
    """Write a uint8 image array in the format of the path's suffix (PNG, JPEG, WebP), atomically."""
    from PIL import Image

    fmt = image_format(path)
    image = Image.fromarray(array)
    with atomic_open(Path(path)) as f:
        image.save(f, format=fmt, **_marked(image, fmt))
    return Path(path)


def save_figure(fig, path: Path, dpi: int = 200, close: bool = False) -> Path:
    """Write a matplotlib figure as PNG or PDF (by suffix), atomically, marked as ncsn_tune's; ``close`` frees it."""
    fmt = image_format(path, (".png", ".pdf")).lower()
    metadata = {"Software": WRITTEN_BY} if fmt == "png" else {"Creator": WRITTEN_BY}
    with atomic_open(Path(path)) as f:
        fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight", metadata=metadata)
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return Path(path)


def save_gif(frames, path: Path, upscale: int = 4, frame_ms: int = 150, last_ms: int = 1500) -> Path:
    """An animated GIF of (C, H, W) frames in [0, 1], enlarged ``upscale`` times (nearest), written atomically."""
    from PIL import Image

    image_format(path, (".gif",))
    images = []
    for frame in frames:
        array = to_uint8(frame).transpose(1, 2, 0).repeat(upscale, axis=0).repeat(upscale, axis=1)
        images.append(Image.fromarray(array[..., 0] if array.shape[2] == 1 else array))
    durations = [frame_ms] * (len(images) - 1) + [last_ms]
    with atomic_open(Path(path)) as f:
        images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0, **_marked(images[0], "GIF"))
    return Path(path)


def save_chain(frames, path: Path) -> Path:
    """One chain's frames as a strip (PNG/JPEG/WebP) or, for a .gif path, an animation."""
    if Path(path).suffix.lower() == ".gif":
        return save_gif(frames, path)
    stacked = np.stack([_numpy(f) for f in frames])
    return save_image(image_grid(stacked, columns=len(stacked)), path)
