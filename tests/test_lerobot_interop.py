"""LeRobot's own code on a dataset that collect.py wrote: read, normalise with our stats, append, reopen.

Checked against lerobot 0.4.4 (`pip install --no-deps lerobot==0.4.4` plus the pure-python packages
it imports, see docs/datasets.md). LeRobot runs in a subprocess (this file run as a script) because
its video decoder, torchcodec, links against a system FFmpeg; where there is none, the subprocess
borrows the FFmpeg that PyAV's wheel ships, which has to be on LD_LIBRARY_PATH before it starts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jepa_world.data.collection import UNRECORDED_VIDEO_DEFAULTS

LEROBOT_MISSING = importlib.util.find_spec("lerobot") is None
FFMPEG_LIBRARIES = ("avutil", "avcodec", "avformat", "avdevice", "avfilter", "swscale", "swresample")
APPENDED_LENGTH = 5


def pyav_ffmpeg_library_path(link_dir: Path) -> str:
    """LD_LIBRARY_PATH exposing PyAV's bundled FFmpeg under the sonames torchcodec links against.

    auditwheel renamed them (libavcodec-<hash>.so.62); links named libavcodec.so.62 point at them."""
    import av

    bundled = Path(av.__file__).resolve().parent.parent / "av.libs"
    link_dir.mkdir(exist_ok=True)
    for library in bundled.glob("lib*.so*"):
        match = re.fullmatch(r"lib(\w+?)-[0-9a-f]{8}\.so\.(\d+).*", library.name)
        if match and match.group(1) in FFMPEG_LIBRARIES:
            link = link_dir / f"lib{match.group(1)}.so.{match.group(2)}"
            if not link.exists():
                link.symlink_to(library)
    return os.pathsep.join(filter(None, [str(link_dir), str(bundled), os.environ.get("LD_LIBRARY_PATH")]))


def run_lerobot_checks(root: Path) -> dict:
    """Everything LeRobot does, in this process; returns what the test asserts on."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401  LeRobot's default video backend
    except (ImportError, OSError, RuntimeError) as e:  # torchcodec raises RuntimeError when no FFmpeg loads
        return {"skip": f"LeRobot has no working video backend here (torchcodec: {str(e).splitlines()[0][:200]})"}
    import torch
    from lerobot.configs.types import FeatureType, NormalizationMode
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.datasets.utils import dataset_to_policy_features
    from lerobot.processor.converters import batch_to_transition
    from lerobot.processor.core import TransitionKey
    from lerobot.processor.normalize_processor import NormalizerProcessorStep

    dataset = LeRobotDataset("local/collected", root=root)
    num_frames = len(dataset)
    items = {i: dataset[i] for i in (0, 5, len(dataset) - 1)}
    read = {str(i): {"frame": (item["observation.images.main"].numpy() * 255).round().astype(int).tolist(),
                     "state": item["observation.state"].tolist(), "action": item["action"].tolist(),
                     "episode_index": int(item["episode_index"]), "frame_index": int(item["frame_index"])}
            for i, item in items.items()}

    # Normalisation as lerobot-train builds it: ACT's default mapping (ACTConfig.normalization_mapping in
    # 0.4.4; importing lerobot.policies needs diffusers), and quantiles for state and action (pi0.5-style).
    features = dataset_to_policy_features(dataset.meta.features)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    normalised = {}
    for name, norm_map in {
        "act_default": {FeatureType.VISUAL: NormalizationMode.MEAN_STD, FeatureType.STATE: NormalizationMode.MEAN_STD,
                        FeatureType.ACTION: NormalizationMode.MEAN_STD},
        "quantiles": {FeatureType.VISUAL: NormalizationMode.MEAN_STD, FeatureType.STATE: NormalizationMode.QUANTILES,
                      FeatureType.ACTION: NormalizationMode.QUANTILES},
    }.items():
        step = NormalizerProcessorStep.from_lerobot_dataset(dataset, features, norm_map)
        out = step(batch_to_transition(batch))
        image = out[TransitionKey.OBSERVATION]["observation.images.main"]
        normalised[name] = {"image_changed": not torch.equal(image, batch["observation.images.main"]),
                            "finite": bool(torch.isfinite(image).all() and torch.isfinite(out[TransitionKey.ACTION]).all())}

    # LeRobot appends an episode, then reopens the dataset.
    for t in range(APPENDED_LENGTH):
        dataset.add_frame({
            "observation.images.main": np.full((64, 64, 3), 40 * t, np.uint8),
            "observation.state": np.full(dataset.features["observation.state"]["shape"], t, np.float32),
            "action": np.full(dataset.features["action"]["shape"], -t, np.float32),
            "next.reward": np.zeros(1, np.float32), "next.success": np.zeros(1, bool), "next.done": np.zeros(1, bool),
            "task": "appended by LeRobot",
        })
    # LeRobot 0.4.4 stacks shape-(1,) features to (N, 1), and HF datasets' float() of a 1-element array
    # fails with NumPy >= 2.4 (it would on LeRobot's own datasets too), so give the rewards as 0-d.
    dataset.episode_buffer["next.reward"] = [np.asarray(r).reshape(()) for r in dataset.episode_buffer["next.reward"]]
    dataset.save_episode()
    dataset.finalize()
    reopened = LeRobotDataset("local/collected", root=root)
    last = reopened[len(reopened) - 1]
    return {
        "num_frames": num_frames, "read": read, "normalised": normalised,
        "stats_shapes": {k: list(np.shape(v["mean"])) for k, v in dataset.meta.stats.items()},
        "reopened": {"episodes": reopened.meta.total_episodes, "frames": len(reopened),
                     "last_state": last["observation.state"].tolist(), "last_episode": int(last["episode_index"]),
                     "extras_of_appended": reopened.meta.episodes[reopened.meta.total_episodes - 1]["seed"]},
    }


@pytest.mark.skipif(LEROBOT_MISSING, reason="lerobot is not installed (pip install --no-deps lerobot==0.4.4, "
                                            "see docs/datasets.md); LeRobot's own reader cannot be run")
def test_lerobot_reads_normalises_appends_and_reopens_a_collected_dataset(tmp_path):
    from jepa_world.data.collection import CollectConfig, collect
    from jepa_world.data.lerobot import DatasetFormatError, LeRobotWriter, read_columns, read_meta
    from jepa_world.data.trajectory import TrajectoryDataset

    root = tmp_path / "reach"
    collect(CollectConfig(env="reach", episodes=2, output_dir=str(root), episode_length=12, workers=1))
    ours = TrajectoryDataset(root, num_frames=2, split="all", cache_frames=True)
    env = {**os.environ, "LD_LIBRARY_PATH": pyav_ffmpeg_library_path(tmp_path / "ffmpeg")}
    done = subprocess.run([sys.executable, __file__, str(root)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])

    # LeRobot reads the same numbers exactly and the same pixels up to decoder rounding.
    assert result["num_frames"] == 24
    for index, item in result["read"].items():
        position, frame_id = divmod(int(index), 12)  # split="all": position == episode index
        assert (item["episode_index"], item["frame_index"]) == (position, frame_id)
        actions, states = ours.episode_arrays(position)
        np.testing.assert_array_equal(np.float32(item["state"]), states[frame_id])
        np.testing.assert_array_equal(np.float32(item["action"]), actions[frame_id])
        frame = ours.read_frames(position, np.array([frame_id]))[0].transpose(2, 0, 1).astype(int)
        assert np.abs(np.array(item["frame"]) - frame).mean() < 1.0

    # Our stats.json has what LeRobot's normalisation needs: per-channel image stats, (3, 1, 1).
    assert result["stats_shapes"]["observation.images.main"] == [3, 1, 1]
    assert result["stats_shapes"]["action"] == [3]
    for name, outcome in result["normalised"].items():
        assert outcome == {"image_changed": True, "finite": True}, name

    # After LeRobot's append it reopens the dataset; our extras are null for the episode it added.
    assert result["reopened"] == {"episodes": 3, "frames": 24 + APPENDED_LENGTH, "last_episode": 2,
                                  "last_state": [float(APPENDED_LENGTH - 1)] * 9, "extras_of_appended": None}
    # And we read LeRobot's episode (its video is AV1, which decord cannot open: the PyAV fallback).
    meta = read_meta(root)
    assert [e.length for e in meta.episodes] == [12, 12, APPENDED_LENGTH]
    assert read_columns(meta, ["observation.state"])[2]["observation.state"][:, 0].tolist() == [0, 1, 2, 3, 4]
    appended = TrajectoryDataset(root, num_frames=APPENDED_LENGTH, split="all")
    frames = appended[len(appended) - 1]["frames"].numpy().astype(int)  # (5, 3, 64, 64), grey 0, 40, ..., 160
    assert np.abs(frames.mean(axis=(1, 2, 3)) - 40 * np.arange(APPENDED_LENGTH)).max() < 3
    # Our writer does not append behind LeRobot's back: its episode-table files are laid out differently.
    with pytest.raises(DatasetFormatError, match="another tool"):
        LeRobotWriter(root, **_writer_settings(meta))


def _writer_settings(meta) -> dict:
    """The settings collect.py used for `meta`, so that the reopen check gets past info.json."""
    features = meta.features
    video = features["observation.images.main"]
    collection = meta.info["jepa_world"]["collection"]
    return dict(fps=int(meta.fps), action_names=features["action"]["names"],
                state_names=features["observation.state"]["names"], cameras={"main": tuple(video["shape"][:2])},
                task="reach: match the goal image", extra_info=meta.info["jepa_world"], crf=collection["crf"],
                gop=collection["gop"],  # pix_fmt/vcodec are recorded only away from their earlier defaults
                **{key: collection.get(key, earlier) for key, earlier in UNRECORDED_VIDEO_DEFAULTS.items()})


if __name__ == "__main__":
    print(json.dumps(run_lerobot_checks(Path(sys.argv[1]))))
