import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from jepa_world.data import UnreadableFileError
from jepa_world.data.image import ImageFolderDataset
from jepa_world.data.synthetic import PALETTE, SHAPE_NAMES, MovingShapesDataset, write_moving_shapes_videos
from jepa_world.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipTransform,
    denormalize,
    frames_to_clip,
    sample_crop_box,
)
from jepa_world.data.video import VideoFolderDataset, clip_frame_indices, write_video
from jepa_world.masks import MaskCollator, build_mask_generators

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
    ds = MovingShapesDataset(16, frames, res, seed=1, motion=motion, return_factors=True)
    for i in range(16):
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


# ----------------------------------------------------------------------------- video folder


def _ramp_video(path, num_frames: int, size=(48, 64), level_step: int = 10):
    """Grey frames whose brightness encodes the frame index: frame i is 10 * i."""
    frames = np.stack([np.full((*size, 3), level_step * i, dtype=np.uint8) for i in range(num_frames)])
    return write_video(path, frames)


def _brightness(clip: torch.Tensor) -> np.ndarray:
    """Mean 0-255 brightness per frame of a normalised (3, T, H, W) clip."""
    return (denormalize(clip) * 255).mean(dim=(0, 2, 3)).numpy()


def test_clip_frame_indices_rules():
    rng = np.random.default_rng(0)
    starts = {int(clip_frame_indices(24, 4, 3, rng)[0]) for _ in range(200)}
    assert starts == set(range(0, 24 - 10 + 1))
    assert clip_frame_indices(5, 4, 3, rng, "pad").tolist() == [0, 3, 4, 4]
    assert clip_frame_indices(5, 4, 3, rng, "loop").tolist() == [0, 3, 1, 4]
    assert clip_frame_indices(5, 4, 3, rng, "reject") is None


def test_video_folder_reads_the_right_frames(tmp_path):
    (tmp_path / "sub").mkdir()
    _ramp_video(tmp_path / "a.mp4", 24)
    _ramp_video(tmp_path / "sub" / "b.mp4", 24)
    (tmp_path / "notes.txt").write_text("not a video")
    ds = VideoFolderDataset(tmp_path, frames_per_clip=4, frame_step=3, resolution=32, crop_scale=None, hflip=False)
    assert len(ds) == 2 and ds.files[1].name == "b.mp4"
    starts = set()
    for seed in range(12):
        torch.manual_seed(seed)
        clip = ds[seed % 2]
        assert clip.shape == (3, 4, 32, 32) and clip.dtype == torch.float32
        levels = _brightness(clip)
        start = round(levels[0] / 10)
        assert 0 <= start <= 14
        np.testing.assert_allclose(levels, 10 * (start + 3 * np.arange(4)), atol=4)
        starts.add(start)
    assert len(starts) > 3, "clip starts should be random"
    torch.manual_seed(5)
    first = ds[0]
    torch.manual_seed(5)
    assert torch.equal(first, ds[0]), "same torch seed, same clip"


@pytest.mark.parametrize(("policy", "expected"), [("pad", [0, 3, 4, 4]), ("loop", [0, 3, 1, 4])])
def test_short_videos_are_padded_or_looped(tmp_path, policy, expected):
    _ramp_video(tmp_path / "short.mp4", 5, level_step=40)
    ds = VideoFolderDataset(tmp_path, 4, 3, resolution=16, crop_scale=None, hflip=False, short_videos=policy)
    np.testing.assert_allclose(_brightness(ds[0]), 40 * np.array(expected), atol=5)


def test_short_videos_can_be_rejected_like_bad_files(tmp_path):
    _ramp_video(tmp_path / "short.mp4", 5)
    _ramp_video(tmp_path / "zlong.mp4", 20)
    ds = VideoFolderDataset(tmp_path, 4, 3, resolution=16, short_videos="reject")
    with pytest.raises(UnreadableFileError, match="short.mp4.*5 frames.*span of 10"):
        ds[0]
    skipping = VideoFolderDataset(tmp_path, 4, 3, resolution=16, short_videos="reject", skip_bad_files=True)
    assert skipping[0].shape == (3, 4, 16, 16)
    assert [p.name for p in skipping.bad_files] == ["short.mp4"]


def _corrupt_files(folder):
    good = _ramp_video(folder / "good.mp4", 12)
    data = good.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return good


@pytest.mark.parametrize("name", ["truncated.mp4", "garbage.mp4"])
def test_corrupt_video_error_names_the_file(tmp_path, name):
    _corrupt_files(tmp_path)
    ds = VideoFolderDataset(tmp_path, 4, 2, resolution=16)
    index = [p.name for p in ds.files].index(name)
    with pytest.raises(UnreadableFileError, match=name):
        ds[index]


def test_skip_bad_files_skips_counts_and_logs(tmp_path, caplog):
    _corrupt_files(tmp_path)  # sorted: garbage, good, truncated
    ds = VideoFolderDataset(tmp_path, 4, 2, resolution=16, skip_bad_files=True)
    with caplog.at_level(logging.WARNING, logger="jepa_world.data.files"):
        clips = []
        for i in range(len(ds)):
            torch.manual_seed(0)
            clips.append(ds[i])
    assert sorted(p.name for p in ds.bad_files) == ["garbage.mp4", "truncated.mp4"]
    assert "garbage.mp4" in caplog.text and "truncated.mp4" in caplog.text and "2 bad video files" in caplog.text
    # A bad index is served by the next readable file with the sample's own random draws.
    assert torch.equal(clips[0], clips[1]) and torch.equal(clips[2], clips[1])


def test_all_bad_files_still_raise(tmp_path):
    (tmp_path / "x.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(UnreadableFileError, match="all 1 video files"):
        VideoFolderDataset(tmp_path, 4, 2, resolution=16, skip_bad_files=True)[0]


def test_missing_or_empty_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VideoFolderDataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no video files.*empty"):
        VideoFolderDataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no image files"):
        ImageFolderDataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="frame_step=0"):
        VideoFolderDataset(tmp_path, frame_step=0)
    with pytest.raises(ValueError, match="short_videos='drop'"):
        VideoFolderDataset(tmp_path, short_videos="drop")


def test_synthetic_mp4_round_trip_through_decord_and_mask_collator(tmp_path):
    paths = write_moving_shapes_videos(tmp_path, 4, frames_per_clip=8, resolution=64, seed=9)
    assert [p.name for p in paths] == [f"shapes_{i:05d}.mp4" for i in range(4)]
    ds = VideoFolderDataset(tmp_path, frames_per_clip=8, frame_step=1, resolution=64, crop_scale=None, hflip=False)
    reference = MovingShapesDataset(4, 8, 64, seed=9)
    for i in range(4):
        decoded = denormalize(ds[i])
        error = (decoded - denormalize(reference[i])).abs()
        assert float(error.mean()) < 0.02, "H.264 at crf 18 should be close to the rendered clip"
    collator = MaskCollator(build_mask_generators("vjepa2"), seed=0, patch_size=16, tubelet_size=2)
    torch.manual_seed(0)
    clips, masks = next(iter(DataLoader(ds, batch_size=2, collate_fn=collator)))
    assert clips.shape == (2, 3, 8, 64, 64) and len(masks) == 2


# ----------------------------------------------------------------------------- image folder


def test_image_folder_reads_recursively_and_converts_to_rgb(tmp_path):
    (tmp_path / "cls_a").mkdir()
    (tmp_path / "cls_b" / "deep").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 20, 20)).save(tmp_path / "cls_a" / "red.png")
    Image.new("L", (32, 32), 128).save(tmp_path / "cls_b" / "deep" / "grey.JPG")
    Image.new("RGB", (32, 48), (20, 20, 200)).save(tmp_path / "cls_b" / "blue.jpeg", quality=95)
    ds = ImageFolderDataset(tmp_path, resolution=16, crop_scale=None)
    assert [p.name for p in ds.files] == ["red.png", "blue.jpeg", "grey.JPG"]
    expected = {"red.png": (200, 20, 20), "blue.jpeg": (20, 20, 200), "grey.JPG": (128, 128, 128)}
    for i, path in enumerate(ds.files):
        image = ds[i]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32
        rgb = (denormalize(image) * 255).mean(dim=(1, 2)).tolist()
        assert rgb == pytest.approx(expected[path.name], abs=3)
    torch.manual_seed(1)
    cropped = ImageFolderDataset(tmp_path, resolution=16)[0]
    assert cropped.shape == (3, 16, 16)


def test_image_folder_bad_files(tmp_path):
    Image.new("RGB", (16, 16), (0, 255, 0)).save(tmp_path / "a_good.png")
    (tmp_path / "b_bad.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(UnreadableFileError, match="b_bad.jpg"):
        ImageFolderDataset(tmp_path, resolution=8)[1]
    ds = ImageFolderDataset(tmp_path, resolution=8, skip_bad_files=True)
    torch.manual_seed(3)
    substitute = ds[1]
    torch.manual_seed(3)
    assert torch.equal(substitute, ds[0]) and [p.name for p in ds.bad_files] == ["b_bad.jpg"]
