"""Video-folder pretraining dataset, frame readers (decord, PyAV fallback) and an mp4 writer (PyAV).

`open_frame_reader` opens a video with decord (fast random access) and falls back to PyAV
when decord cannot open it: decord's bundled FFmpeg has no AV1 decoder, and AV1 (libsvtav1)
is LeRobot's default video codec, while PyAV ships dav1d.

A clip is ``frames_per_clip`` frames taken every ``frame_step`` frames from a random
start, so it spans ``(frames_per_clip - 1) * frame_step + 1`` source frames. Videos
shorter than that follow ``short_videos``:

* ``"pad"`` (default, as V-JEPA 2 does): take every ``frame_step``-th frame from the
  first one and repeat the last frame to fill the clip;
* ``"loop"``: wrap the frame indices around the video;
* ``"reject"``: treat the video as unreadable (an error naming it, or skipped when
  ``skip_bad_files=True``).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import av
import decord
import numpy as np
from torch import Tensor

from .files import FileFolderDataset, UnreadableFileError
from .transforms import ClipTransform

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm")
ShortVideoPolicy = Literal["pad", "loop", "reject"]
SHORT_VIDEO_POLICIES: tuple[str, ...] = ("pad", "loop", "reject")


def clip_frame_indices(
    num_frames: int,
    frames_per_clip: int,
    frame_step: int,
    rng: np.random.Generator,
    short_videos: ShortVideoPolicy = "pad",
) -> np.ndarray | None:
    """Source frame indices (frames_per_clip,) of a random clip; None when rejected as too short."""
    offsets = np.arange(frames_per_clip) * frame_step
    span = int(offsets[-1]) + 1
    if num_frames >= span:
        return int(rng.integers(0, num_frames - span + 1)) + offsets
    if short_videos == "pad":
        return np.minimum(offsets, num_frames - 1)
    if short_videos == "loop":
        return offsets % num_frames
    return None


class VideoOpenError(RuntimeError):
    """Neither decord nor PyAV can open a video (message: the path and both backends' reasons)."""


class FrameReader(Protocol):
    """Random access to the frames of one video file."""

    def __len__(self) -> int: ...

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 frames (len(indices), H, W, 3) in the order of `indices`."""
        ...


class DecordFrameReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)

    def __len__(self) -> int:
        return len(self.reader)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return self.reader.get_batch(list(indices)).asnumpy()


class PyAVFrameReader:
    """Frames by index through PyAV: seek to the keyframe before the first wanted frame, decode forward.

    A frame's index is its presentation time times the stream's frame rate, so files that pack
    several episodes (LeRobot v3) are read from the right place without decoding from the start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.container = av.open(str(path))
        if not self.container.streams.video:
            self.container.close()
            raise VideoOpenError(f"{path}: no video stream")
        self.stream = self.container.streams.video[0]
        self.rate = self.stream.average_rate or self.stream.guessed_rate
        if not self.rate:
            self.container.close()
            raise VideoOpenError(f"{path}: video stream has no frame rate")
        self.start_pts = self.stream.start_time or 0
        # The container's frame count can be absent (0); counting packets needs no decoding.
        self.num_frames = self.stream.frames or sum(1 for packet in self.container.demux(self.stream) if packet.size)

    def __len__(self) -> int:
        return self.num_frames

    def _frame_index(self, frame: av.VideoFrame) -> int:
        return int(round(float((frame.pts - self.start_pts) * self.stream.time_base * self.rate)))

    def read(self, indices: Sequence[int]) -> np.ndarray:
        wanted = set(int(i) for i in indices)
        if not wanted:
            raise ValueError(f"{self.path}: no frame indices to read")
        first, last = min(wanted), max(wanted)
        if first < 0 or last >= self.num_frames:
            raise IndexError(f"{self.path}: frames {first}..{last} asked, the video has {self.num_frames}")
        self.container.seek(self.start_pts + int(first / self.rate / self.stream.time_base), stream=self.stream,
                            backward=True, any_frame=False)
        found: dict[int, np.ndarray] = {}
        for frame in self.container.decode(self.stream):
            index = self._frame_index(frame)
            if index in wanted:
                found[index] = frame.to_ndarray(format="rgb24")
            if index >= last:
                break
        missing = sorted(wanted - set(found))
        if missing:
            raise VideoOpenError(f"{self.path}: frames {missing[:10]} could not be decoded (the file ends early)")
        return np.stack([found[int(i)] for i in indices])


def open_frame_reader(path: str | Path) -> FrameReader:
    """decord when it can open `path`, else PyAV (AV1 and other codecs decord's FFmpeg lacks)."""
    path = Path(path)
    try:
        return DecordFrameReader(path)
    except (RuntimeError, decord.DECORDError) as decord_error:  # decord reports unreadable containers as either
        try:
            return PyAVFrameReader(path)
        except (av.FFmpegError, VideoOpenError) as pyav_error:
            raise VideoOpenError(f"{path}: decord: {_first_line(decord_error)}; PyAV: {_first_line(pyav_error)}") \
                from pyav_error


READ_ERRORS: tuple[type[Exception], ...] = (RuntimeError, decord.DECORDError, av.FFmpegError)
"""What `FrameReader.read` raises for a file that opened but cannot be decoded (VideoOpenError is a RuntimeError)."""


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8, crf: int = 18) -> Path:
    """Write uint8 frames (T, H, W, 3) as an H.264/yuv420p mp4 (even H and W), atomically."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video {str(path)!r}: expected uint8 frames (T, H, W, 3), got "
                         f"{frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"write_video {str(path)!r}: yuv420p needs even height and width, got {frames.shape[1:3]}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())  # flush the encoder
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


class VideoFolderDataset(FileFolderDataset):
    """Clips from every video under ``root`` (recursive, sorted), as normalised (3, T, R, R) floats.

    Args:
        root: folder searched recursively for ``extensions``.
        frames_per_clip, frame_step: T frames, every ``frame_step``-th source frame.
        resolution: R; ``crop_scale``/``crop_aspect_ratio``/``hflip`` configure the
            per-clip random-resized crop (``crop_scale=None``: centred square, no randomness).
        skip_bad_files: skip unreadable videos (logged and counted in ``bad_files``)
            instead of raising ``UnreadableFileError``; see ``jepa_world.data.files``.
        short_videos: rule for videos shorter than a clip's span (module docstring).
    """

    what = "video"

    def __init__(
        self,
        root: str | Path,
        frames_per_clip: int = 16,
        frame_step: int = 4,
        resolution: int = 224,
        crop_scale: Sequence[float] | None = (0.3, 1.0),
        hflip: bool = True,
        skip_bad_files: bool = False,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        crop_aspect_ratio: Sequence[float] = (3 / 4, 4 / 3),
        short_videos: ShortVideoPolicy = "pad",
    ) -> None:
        for name, value in (("frames_per_clip", frames_per_clip), ("frame_step", frame_step)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VideoFolderDataset.{name}={value!r}: expected a positive integer")
        if short_videos not in SHORT_VIDEO_POLICIES:
            raise ValueError(f"VideoFolderDataset.short_videos={short_videos!r}: expected one of {SHORT_VIDEO_POLICIES}")
        self.transform = ClipTransform(resolution, crop_scale, crop_aspect_ratio, hflip)
        super().__init__(root, extensions, skip_bad_files)
        self.frames_per_clip = frames_per_clip
        self.frame_step = frame_step
        self.short_videos = short_videos

    def read_frames(self, path: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """uint8 frames (T, H, W, 3) of a random clip of ``path`` and their source indices."""
        try:
            reader = open_frame_reader(path)
        except VideoOpenError as error:
            raise UnreadableFileError(f"cannot open video {str(path)!r}: {_first_line(error)}") from error
        indices = clip_frame_indices(len(reader), self.frames_per_clip, self.frame_step, rng, self.short_videos)
        if indices is None:
            raise UnreadableFileError(
                f"video {str(path)!r} has {len(reader)} frames, fewer than a clip's span of "
                f"{(self.frames_per_clip - 1) * self.frame_step + 1} (short_videos='reject')"
            )
        try:
            frames = reader.read(indices.tolist())
        except READ_ERRORS as error:
            raise UnreadableFileError(f"cannot decode video {str(path)!r}: {_first_line(error)}") from error
        if frames.shape[0] != len(indices) or frames.ndim != 4 or frames.shape[-1] != 3:
            raise UnreadableFileError(f"video {str(path)!r} decoded to frames of shape {frames.shape}, "
                                      f"expected ({len(indices)}, H, W, 3)")
        return frames, indices

    def load(self, path: Path, rng: np.random.Generator) -> Tensor:
        frames, _ = self.read_frames(path, rng)
        return self.transform(frames, rng)  # (3, T, R, R)
