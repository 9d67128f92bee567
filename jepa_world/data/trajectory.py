"""Windows of (frames, actions, states) from LeRobot datasets, for action-conditioned post-training.

A window of `num_frames` frames spaced `frame_step` apart starts at every frame where it fits
inside one episode. The `frame_step` actions between two kept frames are merged into one:

    action_merge="sum"    displacement actions (our envs, V-JEPA 2-AC deltas): the total move
    action_merge="first"  absolute / target actions: the command issued at the kept frame
    action_merge="mean"   velocity-like actions held over the interval

Episodes, not windows, are split between train and val, so no trajectory leaks across.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from jepa_world.data.lerobot import (
    DatasetFormatError,
    DatasetMeta,
    EpisodeFiles,
    read_columns,
    read_image_frames,
    read_meta,
)
from jepa_world.data.video import READ_ERRORS, FrameReader, VideoOpenError, open_frame_reader

log = logging.getLogger(__name__)

ACTION_MERGES = ("sum", "first", "mean")
SPLITS = ("train", "val", "all")


def split_episodes(episode_ids: list[int], split: str, val_fraction: float, seed: int) -> list[int]:
    """Deterministic episode-level split: a seeded permutation, the first ceil(f*N) episodes are val."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}, expected one of {SPLITS}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}, expected 0 <= val_fraction < 1")
    if split == "all":
        return sorted(episode_ids)
    ids = np.array(sorted(episode_ids))
    perm = np.random.default_rng(seed).permutation(len(ids))
    n_val = int(np.ceil(val_fraction * len(ids))) if val_fraction > 0 else 0
    if val_fraction > 0 and n_val >= len(ids):
        raise ValueError(f"val_fraction={val_fraction} leaves no training episode out of {len(ids)}")
    chosen = perm[:n_val] if split == "val" else perm[n_val:]
    return sorted(ids[chosen].tolist())


def merge_actions(actions: np.ndarray, frame_step: int, rule: str) -> np.ndarray:
    """(K*frame_step, A) consecutive actions -> (K, A), one merged action per kept-frame interval."""
    k = len(actions) // frame_step
    chunks = actions[: k * frame_step].reshape(k, frame_step, -1)  # (K, step, A)
    if rule == "sum":
        return chunks.sum(1)
    if rule == "first":
        return chunks[:, 0]
    if rule == "mean":
        return chunks.mean(1)
    raise ValueError(f"action_merge={rule!r}, expected one of {ACTION_MERGES}")


class TrajectoryDataset(Dataset):
    """Fixed-length windows over a local LeRobot v2.1 / v3.0 dataset (ours or third-party).

    Item: {"frames": (T,3,H,W) uint8, "actions": (T-1,A) float32, "states": (T,S) float32,
           "episode_index": int, "frame_index": int (first frame of the window)}.

    The camera is a video feature (decoded with decord, or PyAV for codecs decord lacks such as AV1;
    readers are opened once per process and kept in a small LRU cache, `max_open_videos`) or an
    image feature (PNG/JPEG bytes in the data parquet, as LeRobot writes `"dtype": "image"`). With `cache_frames=True` each episode is decoded whole on first use
    and kept in RAM (per DataLoader worker): decoding a whole short episode costs about as much as
    seeking to one window, and later windows then cost microseconds. `None` (default) caches when the
    split's decoded frames fit in `cache_budget_gb`.
    """

    def __init__(self, root: str | Path, num_frames: int = 8, frame_step: int = 1, split: str = "train",
                 val_fraction: float = 0.1, seed: int = 0, camera: str | None = None, action_merge: str = "sum",
                 action_key: str = "action", state_key: str = "observation.state", cache_frames: bool | None = None,
                 cache_budget_gb: float = 2.0, max_open_videos: int = 32):
        if num_frames < 2:
            raise ValueError(f"num_frames={num_frames}, need at least 2 frames to have an action between them")
        if frame_step < 1:
            raise ValueError(f"frame_step={frame_step}, expected >= 1")
        if action_merge not in ACTION_MERGES:
            raise ValueError(f"action_merge={action_merge!r}, expected one of {ACTION_MERGES}")
        self.root = Path(root)
        self.num_frames, self.frame_step, self.action_merge = num_frames, frame_step, action_merge
        self.max_open_videos = max_open_videos
        self.meta: DatasetMeta = read_meta(self.root)
        self.video_key = self.meta.camera_key(camera)
        for key in (action_key, state_key):
            if key not in self.meta.features:
                raise DatasetFormatError(f"{self.root / 'meta' / 'info.json'}: no feature {key!r} "
                                         f"(features: {sorted(self.meta.features)})")

        keep = set(split_episodes([e.episode_index for e in self.meta.episodes], split, val_fraction, seed))
        self.episodes: list[EpisodeFiles] = [e for e in self.meta.episodes if e.episode_index in keep]
        if not self.episodes:
            raise ValueError(f"{self.root}: split {split!r} has no episodes (val_fraction={val_fraction})")
        span = (num_frames - 1) * frame_step + 1  # frames covered by one window
        longest = max(e.length for e in self.episodes)
        if span > longest:
            raise ValueError(f"{self.root}: a window of num_frames={num_frames} with frame_step={frame_step} spans "
                             f"{span} frames, but the longest {split} episode has {longest}")

        # Low-dimensional data is small: load it once, concatenated, for vectorised slicing.
        columns = read_columns(_subset(self.meta, self.episodes), [action_key, state_key])
        self._actions = np.concatenate([columns[e.episode_index][action_key] for e in self.episodes]).astype(np.float32)
        self._states = np.concatenate([columns[e.episode_index][state_key] for e in self.episodes]).astype(np.float32)
        lengths = np.array([e.length for e in self.episodes])
        self._episode_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # row of frame 0 per episode
        windows = np.maximum(lengths - span + 1, 0)
        self._window_end = np.cumsum(windows)  # window ids [end[i-1], end[i]) belong to episode i
        self.action_dim, self.state_dim = self._actions.shape[1], self._states.shape[1]
        h, w = _frame_size(self.meta.features[self.video_key])
        decoded_gb = int(lengths.sum()) * h * w * 3 / 1e9
        self.cache_frames = decoded_gb <= cache_budget_gb if cache_frames is None else cache_frames
        self._readers: OrderedDict[Path, FrameReader] = OrderedDict()
        self._frame_cache: dict[int, np.ndarray] = {}
        log.info("%s: %d %s episodes, %d windows of %d frames (step %d), camera %s", self.root, len(self.episodes),
                 split, len(self), num_frames, frame_step, self.video_key)

    def __len__(self) -> int:
        return int(self._window_end[-1])

    def __getstate__(self) -> dict:
        # Open video readers cannot cross process boundaries; DataLoader workers reopen them lazily.
        state = self.__dict__.copy()
        state["_readers"], state["_frame_cache"] = OrderedDict(), {}
        return state

    def locate(self, index: int) -> tuple[int, int]:
        """Window id -> (position in self.episodes, first frame index)."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        ep = int(np.searchsorted(self._window_end, index, side="right"))
        first = index - (int(self._window_end[ep - 1]) if ep else 0)
        return ep, first

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        ep, first = self.locate(index)
        span = (self.num_frames - 1) * self.frame_step
        frame_ids = first + np.arange(0, span + 1, self.frame_step)  # (T,)
        row = int(self._episode_start[ep]) + first
        actions = merge_actions(self._actions[row: row + span], self.frame_step, self.action_merge)  # (T-1, A)
        states = self._states[row + frame_ids - first]  # (T, S)
        frames = self.read_frames(ep, frame_ids)  # (T, H, W, 3)
        # numpy does the channel transpose: torch's threaded uint8 permute-copy is ~300x slower here.
        frames = np.ascontiguousarray(frames.transpose(0, 3, 1, 2))  # (T, 3, H, W)
        return {
            "frames": torch.from_numpy(frames),
            "actions": torch.from_numpy(np.ascontiguousarray(actions)),
            "states": torch.from_numpy(np.ascontiguousarray(states)),
            "episode_index": self.episodes[ep].episode_index,
            "frame_index": first,
        }

    def episode_arrays(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """(actions (L,A), states (L,S)) of the whole episode at `position` in this split (views)."""
        lo = int(self._episode_start[position])
        hi = lo + self.episodes[position].length
        return self._actions[lo:hi], self._states[lo:hi]

    def read_frames(self, position: int, frame_ids: np.ndarray) -> np.ndarray:
        """Decode frames `frame_ids` (episode-relative) of the episode at `position` -> (T, H, W, 3) uint8."""
        episode = self.episodes[position]
        if self.cache_frames:
            if position not in self._frame_cache:
                self._frame_cache[position] = self._decode(episode, np.arange(episode.length))
            return self._frame_cache[position][frame_ids]
        return self._decode(episode, frame_ids)

    def _decode(self, episode: EpisodeFiles, frame_ids: np.ndarray) -> np.ndarray:
        if self.video_key in self.meta.image_keys:
            return read_image_frames(self.meta, episode, self.video_key, frame_ids)
        path, from_timestamp = episode.videos[self.video_key]
        reader = self._reader(path, episode)
        first = int(round(from_timestamp * self.meta.fps))
        video_ids = first + frame_ids
        if video_ids[-1] >= len(reader):
            raise DatasetFormatError(f"video {path} (episode {episode.episode_index}) has {len(reader)} frames, "
                                     f"needs frame {video_ids[-1]}: the file is truncated or does not match the metadata")
        try:
            return reader.read(video_ids.tolist())
        except READ_ERRORS as e:
            raise DatasetFormatError(f"cannot decode video {path} (episode {episode.episode_index}): {e}") from e

    def _reader(self, path: Path, episode: EpisodeFiles) -> FrameReader:
        if path in self._readers:
            self._readers.move_to_end(path)
            return self._readers[path]
        if not path.is_file():
            raise DatasetFormatError(f"video {path} (episode {episode.episode_index}) is missing")
        try:
            reader = open_frame_reader(path)
        except VideoOpenError as e:
            raise DatasetFormatError(f"cannot open video {path} (episode {episode.episode_index}): {e}") from e
        self._readers[path] = reader
        if len(self._readers) > self.max_open_videos:
            self._readers.popitem(last=False)
        return reader


def _frame_size(feature: dict) -> tuple[int, int]:
    """(H, W) of a video or image feature; LeRobot writes its shape as (H, W, C) or, in some datasets, (C, H, W)."""
    info = feature.get("info") or {}
    if "video.height" in info and "video.width" in info:
        return int(info["video.height"]), int(info["video.width"])
    shape = feature["shape"]
    return (shape[1], shape[2]) if shape[0] in (1, 3) and shape[-1] not in (1, 3) else (shape[0], shape[1])


def _subset(meta: DatasetMeta, episodes: list[EpisodeFiles]) -> DatasetMeta:
    return DatasetMeta(meta.root, meta.version, meta.fps, meta.features, episodes, meta.info)
