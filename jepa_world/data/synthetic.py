"""Procedural moving-shapes videos: the built-in pretraining data, no files needed.

Each clip shows 1-3 coloured shapes (circle, square, triangle) moving over a grey
background, either bouncing off the borders at constant speed or travelling in a
straight line that stays in frame. Clip ``i`` is a pure function of ``(seed, i)``.

Shape 0 is always painted on top, so its generating factors (per-frame position,
colour, class, size) are fully visible; they are returned beside the clip so a
linear probe can test what a frozen encoder captured.

Rendering paints a small integer label map with numpy broadcasting and then looks the
labels up in a colour table, so a 16-frame 64-px clip takes about a millisecond.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .transforms import IMAGENET_MEAN, IMAGENET_STD

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle")
PALETTE = np.array(  # saturated colours, far apart and far from the grey backgrounds
    [
        [230, 25, 25],  # red
        [25, 200, 40],  # green
        [30, 70, 235],  # blue
        [245, 215, 20],  # yellow
        [220, 40, 220],  # magenta
        [20, 220, 230],  # cyan
        [250, 130, 10],  # orange
        [250, 250, 250],  # white
    ],
    dtype=np.uint8,
)
BACKGROUND_GREY = (0, 90)  # uint8 grey level range of the background
Motion = Literal["bounce", "linear"]
MOTIONS: tuple[str, ...] = ("bounce", "linear")


def _validate_range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not (low <= lo <= hi <= high):
        raise ValueError(f"MovingShapesDataset.{name}={tuple(value)!r}: expected {low} <= min <= max <= {high}")
    return lo, hi


class MovingShapesDataset(Dataset):
    """Synthetic clips ``(3, T, R, R)`` float, ImageNet-normalised (like ``VideoFolderDataset``).

    Args:
        num_clips: dataset length.
        frames_per_clip: T.
        resolution: R, the square frame side in pixels.
        seed: clip ``i`` depends only on ``(seed, i)``.
        num_shapes: inclusive range of shapes per clip (1 to 3 by default).
        size: inclusive range of the shape half-size, as a fraction of R.
        speed: range of the speed in fractions of R per frame (``"bounce"`` motion).
        motion: ``"bounce"`` (constant speed, reflected at the borders) or ``"linear"``
            (start and end points drawn inside the frame, constant velocity between).
        return_factors: return ``(clip, factors)`` instead of the clip alone.

    Factors (tensors): ``position`` (T, 2) shape-0 centre (x, y) in [0, 1] of the frame
    width/height; ``velocity`` (2,) its first-frame velocity in frame fractions per frame;
    ``shape`` and ``color`` (indices into ``SHAPE_NAMES`` / ``PALETTE``); ``size``;
    ``num_shapes``; ``background`` grey level in [0, 1].
    """

    def __init__(
        self,
        num_clips: int = 4096,
        frames_per_clip: int = 16,
        resolution: int = 64,
        seed: int = 0,
        num_shapes: Sequence[int] = (1, 3),
        size: Sequence[float] = (0.08, 0.16),
        speed: Sequence[float] = (0.02, 0.06),
        motion: Motion = "bounce",
        return_factors: bool = False,
    ) -> None:
        for name, value, minimum in (("num_clips", num_clips, 1), ("frames_per_clip", frames_per_clip, 1),
                                     ("resolution", resolution, 8), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"MovingShapesDataset.{name}={value!r}: expected an integer >= {minimum}")
        lo, hi = (int(v) for v in num_shapes)
        if not 1 <= lo <= hi <= len(PALETTE):
            raise ValueError(f"MovingShapesDataset.num_shapes={tuple(num_shapes)!r}: "
                             f"expected 1 <= min <= max <= {len(PALETTE)}")
        if motion not in MOTIONS:
            raise ValueError(f"MovingShapesDataset.motion={motion!r}: expected one of {MOTIONS}")
        self.num_clips = num_clips
        self.frames_per_clip = frames_per_clip
        self.resolution = resolution
        self.seed = seed
        self.num_shapes = (lo, hi)
        self.size = _validate_range("size", size, 1.0 / resolution, 0.45)
        self.speed = _validate_range("speed", speed, 0.0, 1.0)
        self.motion = motion
        self.return_factors = return_factors
        mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
        std = np.asarray(IMAGENET_STD, dtype=np.float32)
        self._palette_normalized = ((PALETTE / 255.0 - mean) / std).astype(np.float32)  # (P, 3)
        self._mean, self._std = mean, std
        pixel_centres = np.arange(resolution, dtype=np.float32) + 0.5
        self._xs = pixel_centres.reshape(1, 1, resolution)  # (1, 1, W)
        self._ys = pixel_centres.reshape(1, resolution, 1)  # (1, H, 1)

    def __len__(self) -> int:
        return self.num_clips

    def _check_index(self, index: int) -> int:
        if not -self.num_clips <= index < self.num_clips:
            raise IndexError(f"MovingShapesDataset index {index} out of range for {self.num_clips} clips")
        return index % self.num_clips

    def _trajectories(self, rng: np.random.Generator, half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centres (T, K, 2) in pixels and velocities at frame 0 (K, 2) in pixels per frame."""
        k, res, steps = len(half), self.resolution, np.arange(self.frames_per_clip, dtype=np.float32)
        low, span = half[:, None], res - 2 * half[:, None]  # (K, 1) each: centres stay in [low, low + span]
        start = low + rng.random((k, 2)) * span
        if self.motion == "linear":
            end = low + rng.random((k, 2)) * span
            velocity = (end - start) / max(self.frames_per_clip - 1, 1)
            return start + velocity * steps[:, None, None], velocity
        angle = rng.uniform(0.0, 2.0 * np.pi, k)
        speed = rng.uniform(*self.speed, k) * res
        velocity = np.stack([np.cos(angle), np.sin(angle)], axis=1) * speed[:, None]  # (K, 2)
        travelled = (start - low) + velocity * steps[:, None, None]  # (T, K, 2)
        folded = np.mod(travelled, 2 * span)  # reflect at both borders: a triangle wave
        centres = low + span - np.abs(folded - span)
        return centres.astype(np.float32), velocity.astype(np.float32)

    def render_labels(self, index: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Label map (T, R, R) uint8 (0 background, k+1 shape k), colour table (K+1, 3) uint8, factors."""
        index = self._check_index(index)
        rng = np.random.default_rng([self.seed, index])
        k = int(rng.integers(self.num_shapes[0], self.num_shapes[1] + 1))
        classes = rng.integers(0, len(SHAPE_NAMES), k)
        colours = rng.permutation(len(PALETTE))[:k]
        half = (rng.uniform(*self.size, k) * self.resolution).astype(np.float32)  # (K,)
        grey = int(rng.integers(BACKGROUND_GREY[0], BACKGROUND_GREY[1] + 1))
        centres, velocity = self._trajectories(rng, half)

        labels = np.zeros((self.frames_per_clip, self.resolution, self.resolution), dtype=np.uint8)
        for shape in reversed(range(k)):  # shape 0 last, so it is never occluded
            dx = self._xs - centres[:, shape, 0, None, None]  # (T, 1, W)
            dy = self._ys - centres[:, shape, 1, None, None]  # (T, H, 1)
            r = half[shape]
            if classes[shape] == 0:  # circle
                inside = dx * dx + dy * dy <= r * r
            elif classes[shape] == 1:  # square with the circle's area
                side = r * np.sqrt(np.pi) / 2
                inside = (np.abs(dx) <= side) & (np.abs(dy) <= side)
            else:  # triangle, apex up, inside the circle's bounding box
                inside = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) * 0.5)
            labels[inside] = shape + 1

        table = np.concatenate([np.full((1, 3), grey, dtype=np.uint8), PALETTE[colours]], axis=0)
        factors = {
            "position": centres[:, 0] / self.resolution,
            "velocity": velocity[0] / self.resolution,
            "shape": np.int64(classes[0]),
            "color": np.int64(colours[0]),
            "size": np.float32(half[0] / self.resolution),
            "num_shapes": np.int64(k),
            "background": np.float32(grey / 255.0),
        }
        return labels, table, factors

    def render_frames(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """uint8 frames (T, R, R, 3) and factors, e.g. for writing mp4 files."""
        labels, table, factors = self.render_labels(index)
        return table[labels], factors

    def __getitem__(self, index: int) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        labels, table, factors = self.render_labels(index)
        table_normalized = ((table / np.float32(255.0) - self._mean) / self._std).astype(np.float32)  # (K+1, 3)
        clip = torch.from_numpy(np.take(np.ascontiguousarray(table_normalized.T), labels, axis=1))  # (3, T, R, R)
        if not self.return_factors:
            return clip
        return clip, {name: torch.as_tensor(value) for name, value in factors.items()}


def write_moving_shapes_videos(
    root: str | Path,
    num_videos: int,
    frames_per_clip: int = 16,
    resolution: int = 64,
    seed: int = 0,
    fps: int = 8,
    **dataset_kwargs,
) -> list[Path]:
    """Write ``num_videos`` synthetic clips as H.264 mp4 files ``root/shapes_00000.mp4``, ..."""
    from .video import write_video  # video.py imports decord; keep it off the synthetic-only path

    dataset = MovingShapesDataset(num_videos, frames_per_clip, resolution, seed, **dataset_kwargs)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num_videos):
        frames, _ = dataset.render_frames(i)
        paths.append(write_video(root / f"shapes_{i:05d}.mp4", frames, fps=fps))
    return paths
