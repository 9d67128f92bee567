"""Pretraining clips cut from a robot trajectory dataset (LeRobot v2.1/v3.0 layout).

The shipped-model recipe pretrains the encoder on the very videos the world model is later
post-trained on. Going through `TrajectoryDataset` (rather than globbing the mp4 files with
`VideoFolderDataset`) decodes each short episode once and keeps it in RAM, so an epoch costs
no video decoding; reading the files clip by clip was ~120 ms per clip on this machine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from jepa_world.data.trajectory import TrajectoryDataset
from jepa_world.data.transforms import ClipTransform


class TrajectoryClipDataset(Dataset):
    """Item: a normalised clip (3, T, R, R), like `VideoFolderDataset`.

    Augmentations draw from torch's global RNG (seeded per sample by the training loop's
    index-seeded wrapper), so a resumed run sees the same crops.
    """

    def __init__(
        self,
        root: str | Path,
        frames_per_clip: int = 8,
        frame_step: int = 1,
        resolution: int = 64,
        crop_scale: Sequence[float] | None = (0.3, 1.0),
        crop_aspect_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: bool = False,
        split: str = "train",
        val_fraction: float = 0.1,
        seed: int = 0,
        camera: str | None = None,
    ) -> None:
        self.windows = TrajectoryDataset(
            root, num_frames=frames_per_clip, frame_step=frame_step, split=split,
            val_fraction=val_fraction, seed=seed, camera=camera, cache_frames=True,
        )
        self.transform = ClipTransform(resolution, crop_scale, crop_aspect_ratio, hflip)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> Tensor:
        frames = self.windows[index]["frames"]  # (T, 3, H, W) uint8
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        return self.transform(frames.permute(0, 2, 3, 1), rng)  # (3, T, R, R)
