"""Clip and image transforms shared by the pretraining datasets.

Every dataset returns float32 tensors normalised with the ImageNet mean/std, laid out
``(3, T, H, W)`` for clips and ``(3, H, W)`` for images. The random-resized crop and
the flip are drawn once per clip, so every frame of a clip gets the same crop.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CropBox = tuple[int, int, int, int]  # (top, left, height, width) in pixels


def frames_to_clip(frames: np.ndarray | Tensor) -> Tensor:
    """uint8 frames (T, H, W, 3) -> float clip (3, T, H, W) in [0, 1]."""
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    return frames.permute(3, 0, 1, 2).to(torch.float32).div_(255.0)


def normalize(x: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """Channel-first (3, ...) float in [0, 1] -> normalised, in place."""
    shape = (3,) + (1,) * (x.ndim - 1)
    return x.sub_(torch.tensor(mean).view(shape)).div_(torch.tensor(std).view(shape))


def denormalize(x: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """Inverse of ``normalize`` (returns a new tensor), for viewing samples."""
    shape = (3,) + (1,) * (x.ndim - 1)
    return x * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)


def sample_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    aspect_ratio: tuple[float, float],
    rng: np.random.Generator,
) -> CropBox:
    """Random-resized-crop box: area ~ U(scale) of the frame, log-uniform width/height ratio.

    Falls back to the largest centred box within the ratio range after 10 misses.
    """
    area = height * width
    log_ratio = (math.log(aspect_ratio[0]), math.log(aspect_ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * ratio))
        h = round(math.sqrt(target_area / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    frame_ratio = width / height
    if frame_ratio < aspect_ratio[0]:
        w, h = width, round(width / aspect_ratio[0])
    elif frame_ratio > aspect_ratio[1]:
        h, w = height, round(height * aspect_ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def center_square_box(height: int, width: int) -> CropBox:
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def _check_range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not (low < lo <= hi <= high):
        raise ValueError(f"{name}={tuple(value)!r}: expected {low} < min <= max <= {high}")
    return lo, hi


class ClipTransform:
    """uint8 frames (T, H, W, 3) -> normalised float clip (3, T, R, R).

    With ``crop_scale=None`` it takes the centred square (evaluation); otherwise a
    random-resized crop with area fraction in ``crop_scale`` and width/height ratio in
    ``crop_aspect_ratio`` (V-JEPA 2 uses (0.3, 1.0) and (3/4, 4/3)). ``hflip`` flips
    the whole clip with probability 1/2.
    """

    def __init__(
        self,
        resolution: int,
        crop_scale: Sequence[float] | None = (0.3, 1.0),
        crop_aspect_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: bool = True,
    ) -> None:
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution={resolution!r}: expected a positive integer number of pixels")
        self.resolution = resolution
        self.crop_scale = None if crop_scale is None else _check_range("crop_scale", crop_scale, 0.0, 1.0)
        self.crop_aspect_ratio = _check_range("crop_aspect_ratio", crop_aspect_ratio, 0.0, math.inf)
        self.hflip = bool(hflip)

    def crop_box(self, height: int, width: int, rng: np.random.Generator) -> CropBox:
        if self.crop_scale is None:
            return center_square_box(height, width)
        return sample_crop_box(height, width, self.crop_scale, self.crop_aspect_ratio, rng)

    def __call__(self, frames: np.ndarray | Tensor, rng: np.random.Generator) -> Tensor:
        frames = torch.as_tensor(frames)
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames: expected uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        top, left, h, w = self.crop_box(frames.shape[1], frames.shape[2], rng)
        flip = self.hflip and rng.random() < 0.5
        crop = frames[:, top : top + h, left : left + w]  # crop the uint8 frames: less to convert
        x = crop.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)  # (T, 3, h, w)
        if (h, w) != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                              antialias=True, align_corners=False)
        if flip:
            x = x.flip(-1)
        return normalize(x.permute(1, 0, 2, 3).contiguous())  # (3, T, R, R)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(resolution={self.resolution}, crop_scale={self.crop_scale}, "
                f"crop_aspect_ratio={self.crop_aspect_ratio}, hflip={self.hflip})")
