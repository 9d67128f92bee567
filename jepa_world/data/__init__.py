"""Pretraining data: synthetic moving shapes, video folders (decord), image folders (PIL).

All sources return ImageNet-normalised float tensors, (3, T, H, W) clips or (3, H, W)
images, ready for ``jepa_world.masks.MaskCollator``. ``video`` and ``image`` are imported
on first use, so the synthetic path does not load decord.
"""
from __future__ import annotations

import importlib
from typing import Any

from .files import UnreadableFileError
from .synthetic import MovingShapesDataset, write_moving_shapes_videos
from .transforms import IMAGENET_MEAN, IMAGENET_STD, ClipTransform, denormalize, frames_to_clip, normalize

_LAZY = {
    "VideoFolderDataset": ".video",
    "write_video": ".video",
    "ImageFolderDataset": ".image",
}

__all__ = [
    "ClipTransform",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolderDataset",
    "MovingShapesDataset",
    "UnreadableFileError",
    "VideoFolderDataset",
    "denormalize",
    "frames_to_clip",
    "normalize",
    "write_moving_shapes_videos",
    "write_video",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
