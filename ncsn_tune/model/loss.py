"""Denoising score matching, as the official NCSNv2 code trains it.

For a batch x, a scale index per sample, sigma = sigmas[idx], x~ = x + sigma z,
target = -(x~ - x) / sigma**2 = -z / sigma, and the loss per sample

    l = 0.5 * sum_dims (s_theta(x~, sigma) - target)**2 * sigma**2,

averaged over the batch. Weighting by sigma**2 makes every scale's term O(1).
"""

from __future__ import annotations

import torch


def dsm_loss_per_sample(model, x: torch.Tensor, sigmas: torch.Tensor, indices: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The per-sample DSM loss at the scales ``sigmas[indices]``; ``noise`` defaults to fresh N(0, I)."""
    sigma = sigmas[indices].to(x.dtype)
    shape = (-1,) + (1,) * (x.ndim - 1)
    z = torch.randn_like(x) if noise is None else noise
    perturbed = x + sigma.view(shape) * z
    target = -z / sigma.view(shape)
    score = model(perturbed, sigma)
    dtype = torch.promote_types(x.dtype, torch.float32)  # never accumulate the loss in half precision
    diff = (score.to(dtype) - target.to(dtype)).flatten(1)
    return 0.5 * diff.pow(2).sum(dim=1) * sigma.to(dtype) ** 2


def dsm_loss(model, x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None = None,
             shard: slice | None = None, global_batch: int | None = None) -> torch.Tensor:
    """The batch mean of the DSM loss, with one scale drawn uniformly per sample.

    With ``shard``, the scale indices and the noise are drawn for the whole
    global batch of ``global_batch`` samples and this process keeps ``shard`` of
    them, so that N processes together draw exactly what one process would.
    """
    n = global_batch or x.shape[0]
    indices = torch.randint(0, len(sigmas), (n,), device=x.device, generator=generator)
    noise = torch.randn((n, *x.shape[1:]), device=x.device, dtype=x.dtype, generator=generator)
    if shard is not None:
        indices, noise = indices[shard], noise[shard]
    return dsm_loss_per_sample(model, x, sigmas, indices, noise).mean()


@torch.no_grad()
def dsm_loss_by_scale(model, x: torch.Tensor, sigmas: torch.Tensor, samples_per_scale: int = 1, batch_size: int = 256,
                      generator: torch.Generator | None = None, callback=None):
    """Held-out DSM loss at every scale: each image is noised at every scale ``samples_per_scale`` times.

    Returns a float64 tensor of shape (L,) with the mean loss per scale; ``callback(idx)`` after each scale of each batch.
    """
    total = torch.zeros(len(sigmas), dtype=torch.float64, device=x.device)
    count = 0
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size]
        for idx in range(len(sigmas)):
            for _ in range(samples_per_scale):
                indices = torch.full((batch.shape[0],), idx, device=x.device, dtype=torch.long)
                noise = torch.randn(batch.shape, device=x.device, dtype=batch.dtype, generator=generator)
                total[idx] += dsm_loss_per_sample(model, batch, sigmas, indices, noise).double().sum()
            if callback is not None:
                callback(idx)
        count += batch.shape[0] * samples_per_scale
    return total / count


@torch.no_grad()
def held_out_loss(model, images: torch.Tensor, sigmas: torch.Tensor, *, batch_size: int = 256, generator: torch.Generator | None = None,
                  bf16: bool | None = None, callback=None):
    """The DSM loss per noise scale (L values, a NumPy array) of ``model`` on ``images`` (N, C, H, W in [0, 1]) noised at
    every scale: the validation loss of training and of ``ncsn-tune evaluate``.

    The network runs under bf16 autocast when ``bf16`` says (default: on a GPU, as training runs; False for a model that
    autocasts inside itself); the loss is accumulated in float64. ``callback(scale_index)`` after each scale of each batch.
    """
    device = images.device
    bf16 = device.type == "cuda" if bf16 is None else bf16
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        by_scale = dsm_loss_by_scale(model, images, sigmas.to(device), batch_size=batch_size, generator=generator, callback=callback)
    return by_scale.cpu().numpy()
