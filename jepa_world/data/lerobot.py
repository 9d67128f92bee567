"""LeRobotDataset files: a crash-safe v3.0 writer and a v2.1/v3.0 reader.

Layout written (LeRobotDataset v3.0, one episode per data/video file so that every
finished episode is durable on its own; v3 allows any number of episodes per file):

    meta/info.json                                   schema, fps, path templates, totals
    meta/tasks.parquet                               task string -> task_index
    meta/stats.json                                  min/max/mean/std/count and q01..q99 per feature
                                                     (images: per channel, shape (3, 1, 1), in [0, 1])
    meta/episodes/chunk-000/file-000.parquet         one row per committed episode (1000 per file): every
                                                     column LeRobot writes, then our extras (seed, policy, ...)
    data/chunk-XXX/file-XXX.parquet                  per-frame rows
    videos/observation.images.<cam>/chunk-XXX/file-XXX.mp4   libx264 (default) or libsvtav1

The episodes table is the source of truth: an episode exists once its row is in it.
Data and video files are written under a temporary name and renamed, then the episodes
table and info.json are rewritten atomically, so a crash at any point leaves either the
old or the new committed set, never a half-written episode.

LeRobot appends an episode as a new episode-table file holding only its own columns, and
reopens the table with the first file's schema, which accepts later files whose columns are a
subset. Our rows therefore carry per-episode stats of every feature, exactly as LeRobot names
them: older datasets that have stats of action and observation.state only are still read, and
`upgrade_episode_stats` completes them so that LeRobot (and this writer) can append.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jepa_world.jsonl import read_jsonl

log = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
CAMERA_DTYPES = ("video", "image")
# Encoder -> (codec name in info.json, pixel formats it may write). libsvtav1 is LeRobot's default encoder.
VIDEO_CODECS: dict[str, tuple[str, tuple[str, ...]]] = {
    "libx264": ("h264", ("yuv420p", "yuv444p")),
    "libsvtav1": ("av1", ("yuv420p",)),
}


class DatasetFormatError(ValueError):
    """A dataset directory or one of its files is missing, malformed or inconsistent."""


# ----------------------------------------------------------------------------- small io helpers

def _atomic_write_bytes(path: Path, data: bytes, sync: bool = True) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if sync:
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_json(path: Path, obj: Any, sync: bool = True) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode(), sync)


def _atomic_write_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fixed_list(values: np.ndarray, dtype: pa.DataType) -> pa.FixedSizeListArray:
    """(N, D) array -> parquet column of fixed-size lists, the layout HF `datasets` uses for vectors."""
    values = np.ascontiguousarray(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=dtype), values.shape[1])


def list_column_to_numpy(column: pa.ChunkedArray | pa.Array, name: str, file: Path) -> np.ndarray:
    """A list / fixed-size-list parquet column -> (N, D) array; rejects ragged rows."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(array)
    if pa.types.is_fixed_size_list(array.type):
        flat = array.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(n, array.type.list_size)
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        offsets = array.offsets.to_numpy()
        widths = np.diff(offsets)
        if n and (widths != widths[0]).any():
            raise DatasetFormatError(f"{file}: column {name!r} has rows of different lengths {sorted(set(widths.tolist()))}")
        flat = array.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(n, int(widths[0]) if n else 0)
    if pa.types.is_floating(array.type) or pa.types.is_integer(array.type) or pa.types.is_boolean(array.type):
        return array.to_numpy(zero_copy_only=False).reshape(n, 1)
    raise DatasetFormatError(f"{file}: column {name!r} has type {array.type}, expected a list of numbers")


# ----------------------------------------------------------------------------- video

def video_pix_fmt(crf: int, pix_fmt: str | None = None) -> str:
    """`pix_fmt`, or when None the default: yuv444p for lossless crf 0, else yuv420p."""
    if pix_fmt is not None:
        return pix_fmt
    return "yuv444p" if crf == 0 else "yuv420p"


def check_video_settings(vcodec: str, crf: int, pix_fmt: str | None) -> None:
    """Refuse encoder settings that would fail, or that would silently not give what was asked."""
    if vcodec not in VIDEO_CODECS:
        raise ValueError(f"vcodec={vcodec!r}, expected one of {sorted(VIDEO_CODECS)}")
    allowed = VIDEO_CODECS[vcodec][1]
    chosen = video_pix_fmt(crf, pix_fmt) if vcodec == "libx264" else (pix_fmt or "yuv420p")
    if chosen not in allowed:
        raise ValueError(f"pix_fmt={pix_fmt!r}: {vcodec} writes {allowed}")
    if vcodec == "libx264" and pix_fmt == "yuv420p" and crf == 0:
        # Lossless x264 is the High 4:4:4 Predictive profile even in 4:2:0, which browsers cannot play.
        raise ValueError("pix_fmt='yuv420p' with crf=0: lossless libx264 uses the High 4:4:4 Predictive profile, "
                         "which browsers and LeRobot's viewer cannot play; use crf >= 1 (e.g. 18) with yuv420p")


def write_video(path: Path, frames: np.ndarray, fps: int, crf: int = 18, gop: int = 10,
                pix_fmt: str | None = None, vcodec: str = "libx264") -> None:
    """Encode (T, H, W, 3) uint8 frames to an mp4 (atomic: temp name, then rename).

    A short GOP keeps random access cheap for windowed reads. With libx264, crf 0 is lossless and
    by default stored as yuv444p (only the RGB<->YUV rounding remains, <= 2 levels); other crf values
    default to the widely readable yuv420p, whose colour subsampling blurs small objects at 64 px.
    libsvtav1 (AV1, LeRobot's default) writes yuv420p only.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    check_video_settings(vcodec, crf, pix_fmt)
    pix_fmt = video_pix_fmt(crf, pix_fmt) if vcodec == "libx264" else "yuv420p"
    if h % 2 or w % 2:
        raise ValueError(f"{path}: {vcodec} with {pix_fmt} needs even frame sizes, got {h}x{w}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.mp4")
    options = {"crf": str(crf), "g": str(gop)}
    if vcodec == "libx264":
        options.update(preset="veryfast", tune="zerolatency")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream(vcodec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.options = options
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def episode_video_path(root: Path, episode_index: int, video_key: str) -> Path:
    """Where our writer puts an episode's video: one file per episode, `chunks_size` files per chunk."""
    return Path(root) / VIDEO_PATH.format(video_key=video_key, chunk_index=episode_index // CHUNKS_SIZE,
                                          file_index=episode_index % CHUNKS_SIZE)


def write_episode_videos(root: Path, episode_index: int, frames: dict[str, np.ndarray], fps: int,
                         crf: int = 18, gop: int = 10, pix_fmt: str | None = None,
                         vcodec: str = "libx264") -> dict[str, dict[str, list]]:
    """Encode one episode's camera streams; safe to call from worker processes before `add_episode`.

    Returns each video key's image stats (pass them to `add_episode` as `EpisodeRecord.image_stats`).
    """
    stats = {}
    for cam, cam_frames in frames.items():
        key = f"observation.images.{cam}"
        write_video(episode_video_path(root, episode_index, key), cam_frames, fps, crf, gop, pix_fmt, vcodec)
        stats[key] = image_stats(cam_frames)
    return stats


# ----------------------------------------------------------------------------- writer

@dataclass
class EpisodeRecord:
    """One finished episode: L frames, each the observation and the action taken from it."""

    actions: np.ndarray                      # (L, A) float32, as applied (already clipped)
    states: np.ndarray                       # (L, S) float32
    frames: dict[str, np.ndarray]            # camera name -> (L, H, W, 3) uint8
    rewards: np.ndarray | None = None        # (L,) reward after each action
    successes: np.ndarray | None = None      # (L,) bool success after each action
    extra: dict[str, Any] = field(default_factory=dict)  # per-episode columns (seed, policy, success, ...)
    # video key -> stats of its frames; needed when the videos were written beforehand (see write_episode_videos).
    image_stats: dict[str, dict[str, list]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.actions)


QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}  # LeRobot's quantile normalisation
STAT_KEYS = ("min", "max", "mean", "std", "count", *QUANTILES)


def _stats(values: np.ndarray) -> dict[str, list]:
    v = values.astype(np.float64)
    stats = {"min": v.min(0).tolist(), "max": v.max(0).tolist(), "mean": v.mean(0).tolist(),
             "std": v.std(0).tolist(), "count": [len(v)]}
    stats.update({name: np.quantile(v, q, axis=0).tolist() for name, q in QUANTILES.items()})
    return stats


def image_stats(frames: np.ndarray) -> dict[str, list]:
    """Per-channel stats of (L, H, W, 3) uint8 frames as LeRobot stores them: values in [0, 1], shape (3, 1, 1).

    Computed exactly from each channel's 256-bin histogram (no pixel sort); quantiles interpolate
    linearly between order statistics as np.quantile does. count is the number of frames, as in LeRobot.
    """
    levels = np.arange(256, dtype=np.float64)
    per_channel: dict[str, list[float]] = {key: [] for key in ("min", "max", "mean", "std", *QUANTILES)}
    for channel in range(frames.shape[-1]):
        histogram = np.bincount(frames[..., channel].reshape(-1), minlength=256).astype(np.float64)
        n = histogram.sum()
        mean = (levels * histogram).sum() / n
        present = np.flatnonzero(histogram)
        cumulative = np.cumsum(histogram)
        per_channel["min"].append(float(present[0]))
        per_channel["max"].append(float(present[-1]))
        per_channel["mean"].append(mean)
        per_channel["std"].append(float(np.sqrt(max((levels**2 * histogram).sum() / n - mean**2, 0.0))))
        for name, q in QUANTILES.items():
            position = q * (n - 1)  # of the sorted pixel values
            below, above = np.searchsorted(cumulative, [np.floor(position) + 1, np.ceil(position) + 1])
            per_channel[name].append(float(below + (above - below) * (position - np.floor(position))))
    stats: dict[str, list] = {key: [[[v / 255.0]] for v in values] for key, values in per_channel.items()}
    stats["count"] = [int(frames.shape[0])]
    return stats


def _merge_stats(parts: list[dict[str, list]]) -> dict[str, list]:
    means = np.array([p["mean"] for p in parts])
    # (P, 1, ...) so that counts broadcast over vector (P, D) and image (P, 3, 1, 1) stats alike.
    counts = np.array([p["count"][0] for p in parts], dtype=np.float64).reshape(-1, *[1] * (means.ndim - 1))
    stds = np.array([p["std"] for p in parts])
    total = counts.sum()
    mean = (counts * means).sum(0) / total
    var = (counts * (stds**2 + (means - mean) ** 2)).sum(0) / total  # parallel-variance formula
    merged = {"min": np.min([p["min"] for p in parts], 0).tolist(), "max": np.max([p["max"] for p in parts], 0).tolist(),
              "mean": mean.tolist(), "std": np.sqrt(var).tolist(), "count": [int(total)]}
    for name in QUANTILES:  # count-weighted mean of per-episode quantiles, as LeRobot aggregates them
        if all(name in p for p in parts):
            merged[name] = ((counts * np.array([p[name] for p in parts])).sum(0) / total).tolist()
    return merged


def _tasks_table(tasks: list[str]) -> pa.Table:
    """meta/tasks.parquet: pandas readers (LeRobot) get the task string as the index, as LeRobot writes it."""
    pandas_meta = {
        "index_columns": ["task"], "column_indexes": [],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.0",
    }
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


class LeRobotWriter:
    """Writes episodes of a LeRobotDataset v3.0 one at a time; reopens an existing one to append.

    `extra_info` is stored in meta/info.json under "jepa_world" (e.g. the collection config);
    reopening with a different value raises, so a resumed run cannot silently mix settings.
    Per-episode `EpisodeRecord.extra` becomes extra episode-table columns, which LeRobot tolerates
    (module docstring) and leaves null for episodes it appends.
    """

    def __init__(self, root: str | Path, *, fps: int, action_names: list[str], state_names: list[str],
                 cameras: dict[str, tuple[int, int]], task: str, extra_info: dict[str, Any] | None = None,
                 robot_type: str | None = None, crf: int = 18, gop: int = 10, pix_fmt: str | None = None,
                 vcodec: str = "libx264", episodes_per_meta_file: int = 1000):
        check_video_settings(vcodec, crf, pix_fmt)
        self.root = Path(root)
        # Each commit rewrites only the newest episode-table file, so committing stays O(1) per episode.
        self.episodes_per_meta_file = int(episodes_per_meta_file)
        self.fps, self.crf, self.gop, self.task = int(fps), int(crf), int(gop), task
        self.pix_fmt, self.vcodec = pix_fmt, vcodec
        self.video_keys = [f"observation.images.{cam}" for cam in cameras]
        self.info = self._build_info(action_names, state_names, cameras, robot_type, extra_info or {})
        # LeRobot computes stats for every feature but strings; so do we, so that our rows have its columns.
        self.stats_features = [k for k, f in self.info["features"].items() if f["dtype"] != "string"]
        self.episodes: list[dict[str, Any]] = []  # episode-table rows (LeRobot's columns, then extras), in order
        self._stats: dict[str, dict[str, list]] = {}  # running totals over committed episodes
        if (self.root / "meta" / "info.json").exists():
            self._reopen()
        else:
            (self.root / "meta").mkdir(parents=True, exist_ok=True)
            _atomic_write_parquet(self.root / "meta" / "tasks.parquet", _tasks_table([task]))
            self._write_summary()

    def _build_info(self, action_names, state_names, cameras, robot_type, extra_info) -> dict[str, Any]:
        scalar = lambda dtype: {"dtype": dtype, "shape": [1], "names": None}  # noqa: E731
        pix_fmt = video_pix_fmt(self.crf, self.pix_fmt) if self.vcodec == "libx264" else "yuv420p"
        features: dict[str, Any] = {}
        for cam, (h, w) in cameras.items():
            features[f"observation.images.{cam}"] = {
                "dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                "info": {"video.height": h, "video.width": w, "video.codec": VIDEO_CODECS[self.vcodec][0],
                         "video.pix_fmt": pix_fmt, "video.is_depth_map": False, "video.fps": self.fps,
                         "video.channels": 3, "has_audio": False}}
        features["observation.state"] = {"dtype": "float32", "shape": [len(state_names)], "names": list(state_names)}
        features["action"] = {"dtype": "float32", "shape": [len(action_names)], "names": list(action_names)}
        features["next.reward"] = scalar("float32")
        features["next.success"] = scalar("bool")
        features["next.done"] = scalar("bool")
        for key in ("timestamp",):
            features[key] = scalar("float32")
        for key in ("frame_index", "episode_index", "index", "task_index"):
            features[key] = scalar("int64")
        return {
            "codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": 0, "total_frames": 0,
            "total_tasks": 1, "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": 100, "video_files_size_in_mb": 500,
            "fps": self.fps, "splits": {}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if cameras else None, "features": features, "jepa_world": extra_info,
        }

    def _reopen(self) -> None:
        info_path = self.root / "meta" / "info.json"
        old = json.loads(info_path.read_text())
        for key in ("codebase_version", "fps", "features", "jepa_world"):
            if old.get(key) != self.info.get(key):
                raise DatasetFormatError(
                    f"{info_path}: existing dataset has {key}={old.get(key)!r}, this run wants {self.info.get(key)!r}; "
                    "use a new output directory (or the original settings to resume)")
        episodes_dir = self.root / "meta" / "episodes"
        for file in sorted(episodes_dir.glob("chunk-*/file-*.parquet")):
            self.episodes += pq.read_table(file).to_pylist()
        lacking = _features_without_episode_stats(self.episodes, self.stats_features)
        if lacking:
            raise DatasetFormatError(
                f"{episodes_dir}: no per-episode stats of {lacking} (a dataset of an older jepa_world); appending "
                "would give rows whose columns differ, which LeRobot cannot reopen; complete it in place with "
                f"`python -c \"from jepa_world.data.lerobot import upgrade_episode_stats; upgrade_episode_stats('{self.root}')\"`")
        indices = [e["episode_index"] for e in self.episodes]
        if indices != list(range(len(indices))):
            raise DatasetFormatError(f"{episodes_dir}: episode indices {indices[:10]}... are not 0..N-1 in order")
        for row in self.episodes:
            meta_file = row["episode_index"] // self.episodes_per_meta_file
            where = (row["meta/episodes/chunk_index"], row["meta/episodes/file_index"])
            if where != (meta_file // CHUNKS_SIZE, meta_file % CHUNKS_SIZE):
                raise DatasetFormatError(
                    f"{episodes_dir}: episode {row['episode_index']} is listed in chunk/file {where}, not where this "
                    f"writer puts it ({meta_file // CHUNKS_SIZE}, {meta_file % CHUNKS_SIZE}): another tool (LeRobot?) "
                    "appended to this dataset; append with that tool, or collect into a new output directory")
        for row in self.episodes:  # fold in commit order, exactly as add_episode does, so resumed == uninterrupted
            for feat in self.stats_features:
                stats = {s: row[f"stats/{feat}/{s}"] for s in STAT_KEYS if f"stats/{feat}/{s}" in row}
                if stats:
                    self._stats[feat] = _merge_stats([self._stats[feat], stats]) if feat in self._stats else stats
        self._write_summary()  # a crash may have left info.json/stats.json one commit behind the episode table
        log.info("reopened %s with %d committed episodes", self.root, len(self.episodes))

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return self.episodes[-1]["dataset_to_index"] if self.episodes else 0

    def add_episode(self, record: EpisodeRecord, videos_written: bool = False) -> int:
        """Write and commit the next episode; returns its episode_index.

        `videos_written=True`: a worker already encoded the videos with `write_episode_videos`
        (record.frames may then be empty, record.image_stats must hold what it returned);
        the videos are checked to exist instead.
        """
        ep = self.num_episodes
        n = len(record)
        a_dim, s_dim = self.info["features"]["action"]["shape"][0], self.info["features"]["observation.state"]["shape"][0]
        if record.actions.shape != (n, a_dim) or record.states.shape != (n, s_dim):
            raise ValueError(f"episode {ep}: actions {record.actions.shape} / states {record.states.shape} do not match "
                             f"({n}, {a_dim}) / ({n}, {s_dim}) declared in info.json")
        for name, values in (("actions", record.actions), ("states", record.states)):
            if not np.isfinite(values).all():
                raise ValueError(f"episode {ep}: {name} contain NaN/Inf at frames "
                                 f"{np.unique(np.argwhere(~np.isfinite(values))[:, 0]).tolist()[:10]}")
        if videos_written:
            missing = [p for key in self.video_keys if not (p := episode_video_path(self.root, ep, key)).is_file()]
            if missing:
                raise FileNotFoundError(f"episode {ep}: videos_written=True but {missing} do not exist")
            no_stats = sorted(set(self.video_keys) - set(record.image_stats))
            if no_stats:
                raise ValueError(f"episode {ep}: videos_written=True but record.image_stats lacks {no_stats}; "
                                 "pass what write_episode_videos returned")
            camera_stats = record.image_stats
        else:
            if sorted(f"observation.images.{c}" for c in record.frames) != sorted(self.video_keys):
                raise ValueError(f"episode {ep}: cameras {sorted(record.frames)} differ from the dataset's {self.video_keys}")
            camera_stats = write_episode_videos(self.root, ep, record.frames, self.fps, self.crf, self.gop,
                                                self.pix_fmt, self.vcodec)
        start = self.num_frames
        chunk, file = ep // CHUNKS_SIZE, ep % CHUNKS_SIZE
        successes = np.zeros(n, bool) if record.successes is None else np.asarray(record.successes, bool)
        done = np.zeros(n, bool)
        done[-1] = True
        frame_columns: dict[str, np.ndarray] = {
            "observation.state": record.states.astype(np.float32),
            "action": record.actions.astype(np.float32),
            "next.reward": np.zeros(n, np.float32) if record.rewards is None else record.rewards.astype(np.float32),
            "next.success": successes,
            "next.done": done,
            "timestamp": np.arange(n, dtype=np.float32) / np.float32(self.fps),
            "frame_index": np.arange(n, dtype=np.int64),
            "episode_index": np.full(n, ep, np.int64),
            "index": np.arange(start, start + n, dtype=np.int64),
            "task_index": np.zeros(n, np.int64),
        }
        table = pa.table({name: _fixed_list(values, pa.float32()) if values.ndim == 2 else pa.array(values)
                          for name, values in frame_columns.items()})
        _atomic_write_parquet(self.root / DATA_PATH.format(chunk_index=chunk, file_index=file), table)

        row: dict[str, Any] = {"episode_index": ep, "tasks": [self.task], "length": n,
                               "data/chunk_index": chunk, "data/file_index": file,
                               "dataset_from_index": start, "dataset_to_index": start + n}
        for key in self.video_keys:
            row.update({f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                        f"videos/{key}/from_timestamp": 0.0, f"videos/{key}/to_timestamp": n / self.fps})
        previous_stats = dict(self._stats)
        for feat in self.stats_features:
            stats = camera_stats[feat] if feat in camera_stats else _stats(frame_columns[feat].reshape(n, -1))
            row.update({f"stats/{feat}/{k}": v for k, v in stats.items()})
            self._stats[feat] = _merge_stats([self._stats[feat], stats]) if feat in self._stats else stats
        meta_file = ep // self.episodes_per_meta_file
        row.update({"meta/episodes/chunk_index": meta_file // CHUNKS_SIZE, "meta/episodes/file_index": meta_file % CHUNKS_SIZE})
        row.update(record.extra)
        self.episodes.append(row)
        try:
            self._write_episode_table()
        except BaseException:
            self.episodes.pop()
            self._stats = previous_stats
            raise
        return ep

    def _write_episode_table(self) -> None:
        """The commit point: the newest episode-table file, fsynced, then the derived summaries."""
        last = self.episodes[-1]
        chunk, file = last["meta/episodes/chunk_index"], last["meta/episodes/file_index"]
        first = (chunk * CHUNKS_SIZE + file) * self.episodes_per_meta_file
        _atomic_write_parquet(self.root / EPISODES_PATH.format(chunk_index=chunk, file_index=file),
                              pa.Table.from_pylist(self.episodes[first:]))
        self._write_summary()

    def _write_summary(self) -> None:
        # Derived from the episode table (and rebuilt from it on reopen), so renamed atomically but not fsynced.
        if self._stats:
            _atomic_write_json(self.root / "meta" / "stats.json", self._stats, sync=False)
        self.info.update(total_episodes=self.num_episodes, total_frames=self.num_frames,
                         splits={"train": f"0:{self.num_episodes}"} if self.episodes else {})
        _atomic_write_json(self.root / "meta" / "info.json", self.info, sync=False)


_EPISODE_LAYOUT_KEYS = ("episode_index", "length", "tasks", "dataset_from_index", "dataset_to_index")


def _extra_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Episode-table columns that are not LeRobot's (theirs are the layout keys and "<group>/..." names)."""
    return sorted({k for row in rows for k in row if "/" not in k and k not in _EPISODE_LAYOUT_KEYS})


def _features_without_episode_stats(rows: list[dict[str, Any]], features: list[str]) -> list[str]:
    return [f for f in features if any(f"stats/{f}/mean" not in row for row in rows)]


def upgrade_episode_stats(root: str | Path) -> None:
    """Complete, in place, a dataset of an older jepa_world whose episode rows have stats of action and
    observation.state only: every feature gets its per-episode stats (videos are decoded for the image
    stats) and meta/stats.json is rebuilt. Extras and everything else are kept."""
    from jepa_world.data.video import open_frame_reader  # decord and torch: only this conversion needs them

    root = Path(root)
    meta = read_meta(root)
    by_index = {e.episode_index: e for e in meta.episodes}
    numeric = [k for k, f in meta.features.items() if f["dtype"] not in (*CAMERA_DTYPES, "string")]
    columns = read_columns(meta, numeric)
    totals: dict[str, dict[str, list]] = {}
    for file in sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
        rows = []
        for row in pq.read_table(file).to_pylist():
            episode = by_index[row["episode_index"]]
            stats = {feat: _stats(columns[episode.episode_index][feat]) for feat in numeric}
            for key, (path, from_timestamp) in episode.videos.items():
                first = int(round(from_timestamp * meta.fps))
                stats[key] = image_stats(open_frame_reader(path).read(range(first, first + episode.length)))
            for key in meta.image_keys:
                stats[key] = image_stats(read_image_frames(meta, episode, key, np.arange(episode.length)))
            for feat in meta.features:
                if feat in stats:
                    row.update({f"stats/{feat}/{k}": v for k, v in stats[feat].items()})
                    totals[feat] = _merge_stats([totals[feat], stats[feat]]) if feat in totals else stats[feat]
            rows.append(row)
        _atomic_write_parquet(file, pa.Table.from_pylist(rows))
    _atomic_write_json(root / "meta" / "stats.json", totals)


# ----------------------------------------------------------------------------- reader

@dataclass
class EpisodeFiles:
    """Where one episode lives: its data file and, per video key, (mp4 path, first timestamp in it).

    `extra` holds the episode table's columns that are not LeRobot's (ours: seed, policy, success,
    final_distance, goal_state; null for episodes that LeRobot appended)."""

    episode_index: int
    length: int
    data_file: Path
    videos: dict[str, tuple[Path, float]]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetMeta:
    root: Path
    version: str
    fps: float
    features: dict[str, Any]
    episodes: list[EpisodeFiles]
    info: dict[str, Any]

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") == "video"]

    @property
    def image_keys(self) -> list[str]:
        """Cameras stored as encoded images (PNG/JPEG bytes) in the data parquet, LeRobot's "image" dtype."""
        return [k for k, f in self.features.items() if f.get("dtype") == "image"]

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") in CAMERA_DTYPES]

    def camera_key(self, camera: str | None) -> str:
        """The feature key of ``camera`` (a full key or the name after ``observation.images.``); None picks
        the only camera, and is an error when there are several."""
        keys = self.camera_keys
        if not keys:
            raise DatasetFormatError(f"{self.root}: no video or image features in meta/info.json; a camera is needed")
        if camera is None:
            if len(keys) > 1:
                raise ValueError(f"{self.root}: several cameras {keys}; pass camera= one of them")
            return keys[0]
        for key in (camera, f"observation.images.{camera}"):
            if key in keys:
                return key
        raise ValueError(f"{self.root}: camera {camera!r} not found; available: {keys}")

    @property
    def action_state_map(self) -> tuple[int, ...] | None:
        """The state dim each action dim displaces, as collect.py recorded it from the env
        (info.json "jepa_world"/"action_state_map"); None when the dataset does not say."""
        mapping = (self.info.get("jepa_world") or {}).get("action_state_map")
        if mapping is None:
            return None
        if not isinstance(mapping, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in mapping):
            raise DatasetFormatError(f"{self.root / 'meta' / 'info.json'}: jepa_world.action_state_map must be a "
                                     f"list of state dims, got {mapping!r}")
        return tuple(mapping)


def _require(mapping: dict, key: str, where: Path) -> Any:
    if key not in mapping:
        raise DatasetFormatError(f"{where}: missing key {key!r} (have {sorted(mapping)})")
    return mapping[key]


def read_meta(root: str | Path) -> DatasetMeta:
    """Read meta/ of a local LeRobotDataset (v2.0, v2.1 or v3.0) into episode -> file locations."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"dataset directory {root} does not exist")
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise DatasetFormatError(f"{info_path} not found: {root} is not a LeRobot dataset (expected meta/info.json)")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{info_path}: not valid JSON ({e})") from e
    version = str(_require(info, "codebase_version", info_path))
    fps = float(_require(info, "fps", info_path))
    features = _require(info, "features", info_path)
    data_path = _require(info, "data_path", info_path)
    video_path = info.get("video_path")
    video_keys = [k for k, f in features.items() if f.get("dtype") == "video"]
    if video_keys and not video_path:
        raise DatasetFormatError(f"{info_path}: features {video_keys} are videos but 'video_path' is empty")

    episodes: list[EpisodeFiles] = []
    if version.startswith("v3"):
        files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetFormatError(f"{root / 'meta' / 'episodes'}: no episode metadata files (expected chunk-XXX/file-XXX.parquet)")
        for file in files:
            try:
                rows = pq.read_table(file).to_pylist()
            except (pa.ArrowException, OSError) as e:
                raise DatasetFormatError(f"{file}: cannot read episode metadata ({e})") from e
            for row in rows:
                ep = int(_require(row, "episode_index", file))
                data_file = root / data_path.format(chunk_index=int(_require(row, "data/chunk_index", file)),
                                                    file_index=int(_require(row, "data/file_index", file)))
                videos = {key: (root / video_path.format(video_key=key,
                                                         chunk_index=int(_require(row, f"videos/{key}/chunk_index", file)),
                                                         file_index=int(_require(row, f"videos/{key}/file_index", file))),
                                float(row.get(f"videos/{key}/from_timestamp") or 0.0)) for key in video_keys}
                extra = {k: row[k] for k in _extra_columns([row])}
                episodes.append(EpisodeFiles(ep, int(_require(row, "length", file)), data_file, videos, extra))
    elif version.startswith("v2"):
        chunks_size = int(info.get("chunks_size", CHUNKS_SIZE))
        jsonl = root / "meta" / "episodes.jsonl"
        if not jsonl.is_file():
            raise DatasetFormatError(f"{jsonl} not found (a {version} dataset lists its episodes there)")
        for _, row in read_jsonl(jsonl, DatasetFormatError):
            ep = int(_require(row, "episode_index", jsonl))
            chunk = ep // chunks_size
            data_file = root / data_path.format(episode_chunk=chunk, episode_index=ep)
            videos = {key: (root / video_path.format(episode_chunk=chunk, video_key=key, episode_index=ep), 0.0)
                      for key in video_keys}
            episodes.append(EpisodeFiles(ep, int(_require(row, "length", jsonl)), data_file, videos))
    else:
        raise DatasetFormatError(f"{info_path}: codebase_version {version!r} is not supported (expected v2.x or v3.x)")
    episodes.sort(key=lambda e: e.episode_index)
    return DatasetMeta(root, version, fps, features, episodes, info)


def read_columns(meta: DatasetMeta, columns: list[str]) -> dict[int, dict[str, np.ndarray]]:
    """Per episode, the named per-frame columns as (L, D) arrays in frame order; each data file is read once."""
    by_file: dict[Path, list[EpisodeFiles]] = {}
    for ep in meta.episodes:
        by_file.setdefault(ep.data_file, []).append(ep)
    out: dict[int, dict[str, np.ndarray]] = {}
    for file, eps in by_file.items():
        names = [e.episode_index for e in eps]
        where = f"data file {file} (episodes {names[0]}..{names[-1]})" if len(names) > 1 else f"data file {file} (episode {names[0]})"
        if not file.is_file():
            raise DatasetFormatError(f"{where} is missing")
        try:
            # dict.fromkeys: the index columns may themselves be asked for, and parquet refuses duplicates.
            table = pq.read_table(file, columns=list(dict.fromkeys(["episode_index", "frame_index", *columns])))
        except (pa.ArrowException, OSError) as e:
            raise DatasetFormatError(f"cannot read {where}: {e}") from e
        episode_ids = table["episode_index"].to_numpy()
        frame_ids = table["frame_index"].to_numpy()
        arrays = {c: list_column_to_numpy(table[c], c, file) for c in columns}
        order = np.lexsort((frame_ids, episode_ids))
        episode_ids, frame_ids = episode_ids[order], frame_ids[order]
        for ep in eps:
            lo, hi = np.searchsorted(episode_ids, [ep.episode_index, ep.episode_index + 1])
            if hi - lo != ep.length or not np.array_equal(frame_ids[lo:hi], np.arange(ep.length)):
                raise DatasetFormatError(f"{file}: episode {ep.episode_index} has {hi - lo} rows with frame_index "
                                         f"not 0..{ep.length - 1}; the metadata says length {ep.length} (truncated file?)")
            rows = order[lo:hi]
            out[ep.episode_index] = {c: arrays[c][rows] for c in columns}
    return out


def read_image_frames(meta: DatasetMeta, episode: EpisodeFiles, key: str, frame_ids: np.ndarray) -> np.ndarray:
    """Frames `frame_ids` of an "image"-dtype camera -> (T, H, W, 3) uint8.

    LeRobot stores such a camera as a struct column {bytes, path}: the encoded image (PNG) in
    `bytes`, or, when `bytes` is empty, a file `path` relative to the dataset root."""
    from PIL import Image  # only image-dtype datasets need it

    file = episode.data_file
    where = f"data file {file} (episode {episode.episode_index})"
    if not file.is_file():
        raise DatasetFormatError(f"{where} is missing")
    try:
        table = pq.read_table(file, columns=["episode_index", "frame_index", key],
                              filters=[("episode_index", "=", episode.episode_index)])
    except (pa.ArrowException, OSError) as e:
        raise DatasetFormatError(f"cannot read {where}: {e}") from e
    column = table[key].combine_chunks()
    if not pa.types.is_struct(column.type) or column.type.get_field_index("bytes") < 0:
        raise DatasetFormatError(f"{file}: image column {key!r} has type {column.type}, expected struct<bytes, path>")
    order = np.argsort(table["frame_index"].to_numpy(), kind="stable")
    if len(order) != episode.length:
        raise DatasetFormatError(f"{file}: episode {episode.episode_index} has {len(order)} rows, the metadata says "
                                 f"length {episode.length} (truncated file?)")
    images = column.field("bytes").to_pylist()
    paths = column.field("path").to_pylist() if column.type.get_field_index("path") >= 0 else [None] * len(images)
    frames = []
    for frame_id in np.asarray(frame_ids):
        row = int(order[frame_id])
        source = io.BytesIO(images[row]) if images[row] else (meta.root / paths[row] if paths[row] else None)
        if source is None:
            raise DatasetFormatError(f"{file}: image {key!r} of episode {episode.episode_index} frame {frame_id} "
                                     "has neither bytes nor a path")
        try:
            with Image.open(source) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except (OSError, ValueError) as e:  # PIL raises OSError (UnidentifiedImageError) for undecodable bytes
            raise DatasetFormatError(f"{file}: cannot decode image {key!r} of episode {episode.episode_index} "
                                     f"frame {frame_id}: {e}") from e
    return np.stack(frames)
