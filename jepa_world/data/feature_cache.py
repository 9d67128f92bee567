"""Frozen-encoder features of a trajectory dataset, computed once and cached on disk.

Post-training never updates the encoder, so every frame of every episode is encoded once
(through ``WorldModel.encode``: pixel normalisation, tubelet repeat, ``latent_pool``, layer
norm) and stored with the episode's actions and states in one safetensors file::

    <cache dir>/features.safetensors   latents (F, N, D) float32, actions (F, A), states (F, S),
                                       episode_index / episode_start / episode_length (E,)
    <cache dir>/cache.json             key and what it hashes

The key hashes (1) the encoder's weights and config, (2) the dataset's identity (meta/info.json,
every episode's index and length, its actions/states, and the bytes of every video file) and
(3) the preprocessing (camera, frame size, world-model latent settings). With an automatic
location (``cache_root/<key>``) a changed encoder simply maps to a new directory and is encoded
afresh (logged); an explicit ``cache_dir`` whose key differs is an error naming what changed.

``WindowSampler`` then draws (latents, actions, states) windows from memory, vectorised, so an
epoch costs no video decoding and no encoder forward.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from jepa_world.data.trajectory import ACTION_MERGES, TrajectoryDataset
from jepa_world.latent_encoder import LatentEncoder
from jepa_world.model_format import write_directory

log = logging.getLogger(__name__)

FEATURES_FILE = "features.safetensors"
CACHE_META_FILE = "cache.json"


class FeatureCacheMismatchError(ValueError):
    """An explicit feature cache was computed with another encoder, dataset or preprocessing."""


def hash_dataset(dataset: TrajectoryDataset) -> str:
    """sha256 of a dataset's metadata, per-episode actions/states and video bytes."""
    digest = hashlib.sha256()
    digest.update(json.dumps(dataset.meta.info, sort_keys=True).encode())
    for position, episode in enumerate(dataset.episodes):
        actions, states = dataset.episode_arrays(position)
        digest.update(f"episode {episode.episode_index} length {episode.length}|".encode())
        digest.update(np.ascontiguousarray(actions).tobytes())
        digest.update(np.ascontiguousarray(states).tobytes())
    video_files = sorted({path for e in dataset.episodes for path, _ in e.videos.values()})
    for path in video_files:
        digest.update(path.relative_to(dataset.root).as_posix().encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_finite(dataset: TrajectoryDataset) -> None:
    """Raise naming the first episode whose actions or states hold NaN/Inf."""
    for position, episode in enumerate(dataset.episodes):
        actions, states = dataset.episode_arrays(position)
        for name, values in (("actions", actions), ("states", states)):
            bad = ~np.isfinite(values)
            if bad.any():
                frame = int(np.argwhere(bad)[0, 0])
                raise ValueError(
                    f"{dataset.root}: episode {episode.episode_index} has non-finite {name} "
                    f"(first at frame {frame}); clean or drop this episode"
                )


@dataclass
class FeatureCache:
    path: Path
    key: str
    latents: Tensor  # (F, N, D) every frame of every episode, concatenated
    actions: Tensor  # (F, A); row i is the action taken at frame i
    states: Tensor  # (F, S)
    episode_index: Tensor  # (E,)
    episode_start: Tensor  # (E,) first row of each episode
    episode_length: Tensor  # (E,)

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]

    @property
    def state_dim(self) -> int:
        return self.states.shape[1]

    @property
    def tokens(self) -> tuple[int, int]:
        """(N, D) per frame."""
        return self.latents.shape[1], self.latents.shape[2]

    def tensors(self) -> dict[str, Tensor]:
        names = ("latents", "actions", "states", "episode_index", "episode_start", "episode_length")
        return {name: getattr(self, name).contiguous() for name in names}


def cache_components(latent_encoder: LatentEncoder, dataset: TrajectoryDataset, frame_hw: tuple[int, int]) -> dict[str, Any]:
    """Everything the cached features depend on; the key is a hash of this."""
    return {**latent_encoder.cache_components(), "dataset": hash_dataset(dataset), "camera": dataset.video_key,
            "frame_hw": list(frame_hw)}


def key_of(components: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(components, sort_keys=True).encode()).hexdigest()[:24]


def _read_cache_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / CACHE_META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FeatureCacheMismatchError(f"feature cache {path} is unreadable ({err}); delete it to rebuild") from err


def _read_cache_tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path / FEATURES_FILE))
    except (OSError, SafetensorError) as err:
        raise FeatureCacheMismatchError(f"feature cache {path} is unreadable ({err}); delete it to rebuild") from err


def _describe_difference(stored: dict[str, Any], current: dict[str, Any]) -> str:
    changed = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    parts = []
    for name in changed:
        old, new = stored.get(name), current.get(name)
        if isinstance(old, str) and isinstance(new, str):
            parts.append(f"{name}: cached {old[:16]} vs now {new[:16]}")
        else:
            parts.append(f"{name}: cached {old!r} vs now {new!r}")
    return "; ".join(parts)


def _write_cache(path: Path, key: str, components: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    def write(temp: Path) -> None:
        save_file(tensors, str(temp / FEATURES_FILE))
        (temp / CACHE_META_FILE).write_text(json.dumps({"key": key, "components": components}, indent=2) + "\n")

    write_directory(path, write)


@torch.no_grad()
def encode_dataset(latent_encoder: LatentEncoder, dataset: TrajectoryDataset, batch_size: int = 64) -> dict[str, Tensor]:
    """Encode every frame of every episode -> the tensors stored in ``features.safetensors``."""
    return read_dataset(dataset, lambda frames: latent_encoder.encode(frames).cpu(), batch_size, "encoding frames")


def load_frames(data_root: str | os.PathLike, camera: str | None = None) -> FeatureCache:
    """Every frame of a dataset decoded once into memory, as a FeatureCache whose ``latents`` are the
    (F, 3, H, W) uint8 frames: end-to-end post-training draws windows of pixels with ``WindowSampler``."""
    dataset = TrajectoryDataset(data_root, num_frames=2, split="all", camera=camera)
    check_finite(dataset)
    return FeatureCache(path=Path(data_root), key="frames", **read_dataset(dataset, lambda frames: frames, 256, "decoding frames"))


def read_dataset(dataset: TrajectoryDataset, transform, batch_size: int, desc: str) -> dict[str, Tensor]:
    """``transform`` ((b, 3, H, W) uint8 frames -> (b, ...)) over every frame, with the episodes' actions,
    states and layout: the tensors of a ``FeatureCache``."""
    latents, actions, states, lengths = [], [], [], []
    frames_total = sum(e.length for e in dataset.episodes)
    with tqdm(total=frames_total, desc=desc, unit="frame", disable=None) as bar:
        for position, episode in enumerate(dataset.episodes):
            frames = torch.from_numpy(dataset.read_frames(position, np.arange(episode.length)))  # (L, H, W, 3)
            for chunk in frames.split(batch_size):
                latents.append(transform(chunk.permute(0, 3, 1, 2).contiguous()))  # (b, ...)
                bar.update(len(chunk))
            episode_actions, episode_states = dataset.episode_arrays(position)
            actions.append(torch.from_numpy(np.ascontiguousarray(episode_actions, dtype=np.float32)))
            states.append(torch.from_numpy(np.ascontiguousarray(episode_states, dtype=np.float32)))
            lengths.append(episode.length)
    length = torch.tensor(lengths, dtype=torch.int64)
    return {
        "latents": torch.cat(latents),
        "actions": torch.cat(actions),
        "states": torch.cat(states),
        "episode_index": torch.tensor([e.episode_index for e in dataset.episodes], dtype=torch.int64),
        "episode_start": torch.cumsum(length, 0) - length,
        "episode_length": length,
    }


def load_or_build_feature_cache(
    latent_encoder: LatentEncoder,
    data_root: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    cache_root: str | os.PathLike | None = None,
    camera: str | None = None,
    batch_size: int = 64,
) -> FeatureCache:
    """Features of every episode in ``data_root`` under the frozen ``latent_encoder``.

    ``cache_dir`` pins the cache location: an existing cache there must match (else
    ``FeatureCacheMismatchError``). Otherwise the cache lives at ``cache_root/<key>``
    (default ``<data_root>/.feature_cache``) and is built when absent.
    """
    dataset = TrajectoryDataset(data_root, num_frames=2, split="all", camera=camera)
    check_finite(dataset)
    probe = dataset.read_frames(0, np.arange(1))  # (1, H, W, 3)
    components = cache_components(latent_encoder, dataset, probe.shape[1:3])
    key = key_of(components)
    if cache_dir is not None:
        path = Path(cache_dir)
        if path.exists():
            meta = _read_cache_meta(path)
            if meta.get("key") != key:
                raise FeatureCacheMismatchError(
                    f"feature cache {path} does not match the current encoder/dataset/preprocessing "
                    f"({_describe_difference(meta.get('components', {}), components)}); "
                    "point feature_cache elsewhere or delete it to re-encode"
                )
    else:
        path = Path(cache_root) if cache_root is not None else Path(data_root) / ".feature_cache"
        path = path / key
    if not path.exists():
        log.info("no cached features for key %s: encoding %d episodes of %s into %s", key, len(dataset.episodes), data_root, path)
        _write_cache(path, key, components, encode_dataset(latent_encoder, dataset, batch_size))
    else:
        log.info("using cached features %s (key %s)", path, key)
    return FeatureCache(path=path, key=key, **_read_cache_tensors(path))


class WindowSampler:
    """Windows of ``num_frames`` cached latents spaced ``frame_step`` apart, inside one episode.

    Actions between kept frames are merged like ``TrajectoryDataset`` (``sum``: total
    displacement; ``first``; ``mean``), via a prefix sum so batches gather without Python loops.
    """

    def __init__(self, cache: FeatureCache, episodes: list[int], num_frames: int, frame_step: int = 1,
                 action_merge: str = "sum"):
        if num_frames < 2 or frame_step < 1:
            raise ValueError(f"need num_frames >= 2 and frame_step >= 1, got {num_frames}, {frame_step}")
        if action_merge not in ACTION_MERGES:
            raise ValueError(f"action_merge={action_merge!r}, expected one of {ACTION_MERGES}")
        self.cache, self.num_frames, self.frame_step, self.action_merge = cache, num_frames, frame_step, action_merge
        known = {int(e): i for i, e in enumerate(cache.episode_index.tolist())}
        unknown = sorted(set(episodes) - set(known))
        if unknown:
            raise ValueError(f"episodes {unknown[:5]} are not in the feature cache {cache.path}")
        span = (num_frames - 1) * frame_step
        starts = []
        for episode in sorted(episodes):
            position = known[episode]
            first, length = int(cache.episode_start[position]), int(cache.episode_length[position])
            starts.append(torch.arange(first, first + max(length - span, 0)))
        self.starts = torch.cat(starts) if starts else torch.empty(0, dtype=torch.int64)  # (W,) global rows
        if len(self.starts) == 0:
            raise ValueError(f"no window of {num_frames} frames (step {frame_step}) fits in episodes {sorted(episodes)[:5]}")
        zero = cache.actions.new_zeros(1, cache.action_dim)
        # float64 prefix sums keep long datasets' per-interval sums exact to float32 precision
        self._action_prefix = torch.cat([zero.double(), cache.actions.double().cumsum(0)])  # (F+1, A)
        self._offsets = torch.arange(num_frames) * frame_step  # (T,)

    def __len__(self) -> int:
        return len(self.starts)

    def gather(self, window_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B,) window ids -> latents (B,T,N,D), actions (B,T-1,A), states (B,T,S)."""
        rows = self.starts[window_ids][:, None] + self._offsets  # (B, T)
        latents = self.cache.latents[rows]
        states = self.cache.states[rows]
        if self.action_merge == "first":
            actions = self.cache.actions[rows[:, :-1]]
        else:
            summed = self._action_prefix[rows[:, 1:]] - self._action_prefix[rows[:, :-1]]  # (B, T-1, A)
            actions = summed.to(self.cache.actions.dtype)
            if self.action_merge == "mean":
                actions = actions / self.frame_step
        return latents, actions, states

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        return self.gather(torch.randint(len(self), (batch_size,), generator=generator))
