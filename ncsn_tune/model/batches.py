"""The training data on the device, and the seeded order its batches are drawn in (saved in checkpoints, so a resumed
run draws the same batches)."""

from __future__ import annotations

import numpy as np
import torch

from ..data import Dataset


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
