import numpy as np
import pytest
import torch

from jepa_world.data.synthetic import PALETTE, SHAPE_NAMES, MovingShapesDataset
from jepa_world.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipTransform,
    denormalize,
    frames_to_clip,
    sample_crop_box,
)

# ----------------------------------------------------------------------------- transforms


def test_frames_to_clip_layout_and_range():
    frames = np.zeros((4, 6, 8, 3), dtype=np.uint8)
    frames[2, 1, 3] = (255, 128, 0)
    clip = frames_to_clip(frames)
    assert clip.shape == (3, 4, 6, 8) and clip.dtype == torch.float32
    assert clip[:, 2, 1, 3].tolist() == pytest.approx([1.0, 128 / 255, 0.0])
    with pytest.raises(ValueError, match="expected uint8"):
        frames_to_clip(frames.astype(np.float32))


def test_crop_boxes_respect_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = sample_crop_box(60, 80, (0.3, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        assert 0.3 * 4800 - 80 <= h * w <= 4800
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05


def test_clip_transform_same_crop_and_flip_for_every_frame():
    # A horizontal ramp with a per-frame offset: after crop/flip each frame must
    # keep the same spatial pattern, shifted by the same frame offset.
    width = 48
    ramp = np.tile(np.linspace(0, 200, width, dtype=np.float32), (40, 1))
    frames = np.stack([ramp + 10 * t for t in range(5)]).astype(np.uint8)
    frames = np.repeat(frames[..., None], 3, axis=-1)  # (5, 40, 48, 3)
    transform = ClipTransform(16, crop_scale=(0.3, 0.6), hflip=True)
    flips = 0
    for seed in range(20):
        clip = denormalize(transform(frames, np.random.default_rng(seed)))  # (3, 5, 16, 16)
        assert clip.shape == (3, 5, 16, 16)
        diffs = clip[0, 1:] - clip[0, :-1]  # frame-to-frame difference: the constant 10/255
        assert torch.allclose(diffs, torch.full_like(diffs, 10 / 255), atol=2e-3)
        flips += bool(clip[0, 0, 0, 0] > clip[0, 0, 0, -1])
    assert 3 <= flips <= 17, "flip should happen about half the time"


def test_clip_transform_normalises_with_imagenet_statistics():
    frames = np.full((2, 8, 8, 3), 255, dtype=np.uint8)
    clip = ClipTransform(8, crop_scale=None, hflip=False)(frames, np.random.default_rng(0))
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert clip[:, 0, 0, 0].tolist() == pytest.approx(expected, rel=1e-5)


def test_clip_transform_rejects_bad_settings():
    with pytest.raises(ValueError, match="crop_scale=\\(-0.1, 1.0\\)"):
        ClipTransform(16, crop_scale=(-0.1, 1.0))
    with pytest.raises(ValueError, match="resolution=0"):
        ClipTransform(0)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_clip_format_and_determinism():
    ds = MovingShapesDataset(num_clips=8, frames_per_clip=8, resolution=32, seed=3)
    clip = ds[5]
    assert clip.shape == (3, 8, 32, 32) and clip.dtype == torch.float32 and clip.is_contiguous()
    pixels = denormalize(clip)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert torch.equal(clip, MovingShapesDataset(8, 8, 32, seed=3)[5])
    assert not torch.equal(clip, MovingShapesDataset(8, 8, 32, seed=4)[5])
    assert not torch.equal(clip, ds[6])
    assert not torch.equal(clip[:, 0], clip[:, -1]), "shapes should move"
    with pytest.raises(IndexError, match="out of range"):
        ds[8]


@pytest.mark.parametrize("motion", ["bounce", "linear"])
def test_synthetic_factors_match_rendered_pixels(motion):
    res, frames = 48, 12
    ds = MovingShapesDataset(40, frames, res, seed=1, motion=motion, return_factors=True)
    for i in range(40):
        clip, factors = ds[i]
        rgb = (denormalize(clip) * 255).round().to(torch.int64)  # (3, T, H, W)
        colour = torch.as_tensor(PALETTE[int(factors["color"])], dtype=torch.int64)
        position = factors["position"]  # (T, 2) in [0, 1]
        assert position.shape == (frames, 2) and 0 <= float(position.min()) and float(position.max()) <= 1
        assert 0 <= int(factors["shape"]) < len(SHAPE_NAMES) and 1 <= int(factors["num_shapes"]) <= 3
        is_colour = (rgb == colour[:, None, None, None]).all(dim=0)  # (T, H, W)
        for t in range(frames):
            x, y = (position[t] * res).tolist()
            # Shape 0 is painted on top, so the pixel at its centre has its colour ...
            if int(factors["shape"]) == 2:  # the triangle's centre is its box centre; look lower, inside
                y += 0.4 * float(factors["size"]) * res
            assert is_colour[t, int(y), int(x)], (i, t)
            # ... and its pixels' centroid lies at the reported position (up to the triangle's offset).
            ys, xs = torch.nonzero(is_colour[t], as_tuple=True)
            assert abs(float(xs.float().mean()) + 0.5 - position[t, 0] * res) < 1.0


def test_synthetic_trajectories_are_constant_velocity_and_stay_in_frame():
    ds = MovingShapesDataset(30, 16, 64, seed=2, motion="linear", return_factors=True)
    for i in range(30):
        _, f = ds[i]
        steps = f["position"][1:] - f["position"][:-1]
        assert torch.allclose(steps, f["velocity"].expand_as(steps), atol=1e-5)
        half = float(f["size"])
        assert float(f["position"].min()) >= half - 1e-5 and float(f["position"].max()) <= 1 - half + 1e-5
    bounce = MovingShapesDataset(30, 64, 64, seed=2, speed=(0.05, 0.08), return_factors=True)
    bounced = 0
    for i in range(30):
        _, f = bounce[i]
        speeds = (f["position"][1:] - f["position"][:-1]).abs()  # per-axis speed is constant ...
        axis_speed = f["velocity"].abs()
        # ... except on the frame where it reflects off a wall, where it can only shrink.
        assert (speeds <= axis_speed + 1e-5).all()
        steady = (speeds - axis_speed).abs() < 1e-4
        assert steady.float().mean() > 0.8
        bounced += int((~steady).any())
        half = float(f["size"])
        assert float(f["position"].min()) >= half - 1e-5 and float(f["position"].max()) <= 1 - half + 1e-5
    assert bounced > 10, "fast shapes over 64 frames should hit walls"


def test_synthetic_rejects_bad_settings():
    with pytest.raises(ValueError, match="motion='zigzag'"):
        MovingShapesDataset(motion="zigzag")
    with pytest.raises(ValueError, match="num_shapes=\\(0, 2\\)"):
        MovingShapesDataset(num_shapes=(0, 2))
    with pytest.raises(ValueError, match="resolution=4"):
        MovingShapesDataset(resolution=4)
