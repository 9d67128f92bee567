"""LeRobot v3.0 writer and v2.1/v3.0 reader: layout, exact round trip, crash safety, bad files, codecs,
image stats and image-dtype cameras."""

import io
import json
import re
from pathlib import Path

import av
import decord
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from jepa_world.data.collection import config_from_hydra
from jepa_world.data.lerobot import (
    QUANTILES,
    DatasetFormatError,
    EpisodeRecord,
    LeRobotWriter,
    image_stats,
    read_columns,
    read_meta,
    upgrade_episode_stats,
    write_video,
)
from jepa_world.data.trajectory import TrajectoryDataset
from jepa_world.data.trajectory_clips import TrajectoryClipDataset
from jepa_world.data.video import PyAVFrameReader, VideoFolderDataset, open_frame_reader
from jepa_world.training.posttrain import dataset_dims


def moving_square_frames(length: int, offset: int, size: int = 64) -> np.ndarray:
    """Smooth background plus a moving square: content a video codec handles like a render."""
    yy, xx = np.mgrid[:size, :size]
    frames = np.empty((length, size, size, 3), np.uint8)
    frames[..., 0] = (xx * 3)[None]
    frames[..., 1] = (yy * 3)[None]
    frames[..., 2] = 60
    for t in range(length):
        cx, cy = 8 + 2 * t % (size - 16), 12 + offset % (size - 24)
        frames[t, cy: cy + 10, cx: cx + 10] = (230, 230, 20)
    return frames


def make_record(rng: np.random.Generator, length: int, offset: int, cameras=("main",)) -> EpisodeRecord:
    return EpisodeRecord(
        actions=rng.uniform(-1, 1, (length, 3)).astype(np.float32),
        states=rng.normal(size=(length, 5)).astype(np.float32),
        frames={cam: moving_square_frames(length, offset + 7 * i) for i, cam in enumerate(cameras)},
        successes=np.arange(length) >= length - 3,
        extra={"seed": offset, "policy": "expert", "success": True, "goal_state": [0.1, 0.2, 0.3]},
    )


def make_writer(root, cameras=("main",), extra_info=None, **kwargs) -> LeRobotWriter:
    return LeRobotWriter(root, fps=10, action_names=["dx", "dy", "dz"], state_names=[f"q{i}" for i in range(5)],
                         cameras={cam: (64, 64) for cam in cameras}, task="reach the goal",
                         extra_info=extra_info or {"env": "test"}, **kwargs)


def test_v3_layout_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    writer = make_writer(tmp_path)
    lengths = [12, 15, 9]
    for i, n in enumerate(lengths):
        assert writer.add_episode(make_record(rng, n, i)) == i

    info = json.loads((tmp_path / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["total_episodes"] == 3 and info["total_frames"] == sum(lengths)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["features"]["observation.images.main"]["dtype"] == "video"
    assert info["features"]["action"]["shape"] == [3] and info["splits"] == {"train": "0:3"}

    episodes = pq.read_table(tmp_path / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in episodes] == lengths
    assert [e["dataset_from_index"] for e in episodes] == [0, 12, 27]
    assert [e["dataset_to_index"] for e in episodes] == [12, 27, 36]
    assert episodes[1]["videos/observation.images.main/to_timestamp"] == pytest.approx(1.5)
    assert episodes[2]["goal_state"] == pytest.approx([0.1, 0.2, 0.3]) and episodes[2]["policy"] == "expert"
    # LeRobot's columns: stats of every feature (it appends rows with them; see test_lerobot_interop.py).
    assert {k.split("/")[1] for k in episodes[0] if k.startswith("stats/")} == set(info["features"])
    assert read_meta(tmp_path).episodes[2].extra["seed"] == 2

    tasks = pq.read_table(tmp_path / "meta/tasks.parquet")
    assert tasks["task"].to_pylist() == ["reach the goal"] and tasks["task_index"].to_pylist() == [0]

    data = pq.read_table(tmp_path / "data/chunk-000/file-001.parquet")
    assert data["index"].to_pylist() == list(range(12, 27))
    assert data["frame_index"].to_pylist() == list(range(15))
    assert data["timestamp"].to_numpy() == pytest.approx(np.arange(15) / 10)
    assert data["next.done"].to_pylist() == [False] * 14 + [True]

    stats = json.loads((tmp_path / "meta/stats.json").read_text())
    all_actions = np.concatenate([pq.read_table(tmp_path / f"data/chunk-000/file-00{i}.parquet")["action"]
                                  .combine_chunks().flatten().to_numpy().reshape(-1, 3) for i in range(3)])
    assert stats["action"]["mean"] == pytest.approx(all_actions.mean(0).tolist(), abs=1e-6)
    assert stats["action"]["std"] == pytest.approx(all_actions.std(0).tolist(), abs=1e-6)
    assert stats["action"]["count"] == [36]
    # Quantiles for LeRobot's quantile normalisation: per-episode quantiles, count-weighted as LeRobot merges them.
    q = np.array([stats["action"][k] for k in ("q01", "q10", "q50", "q90", "q99")])
    assert (np.diff(q, axis=0) >= 0).all() and (q[0] >= all_actions.min(0)).all() and (q[-1] <= all_actions.max(0)).all()
    assert q[2] == pytest.approx(np.median(all_actions, 0), abs=float(0.25 * all_actions.std(0).max()))


def test_round_trip_is_exact_for_numbers_and_close_for_frames(tmp_path):
    rng = np.random.default_rng(1)
    writer = make_writer(tmp_path)
    records = [make_record(rng, 10 + i, i) for i in range(2)]
    for r in records:
        writer.add_episode(r)
    meta = read_meta(tmp_path)
    columns = read_columns(meta, ["action", "observation.state"])
    for ep, r in zip(meta.episodes, records):
        np.testing.assert_array_equal(columns[ep.episode_index]["action"], r.actions)
        np.testing.assert_array_equal(columns[ep.episode_index]["observation.state"], r.states)
        video = decord.VideoReader(str(ep.videos["observation.images.main"][0]))
        decoded = video.get_batch(list(range(len(video)))).asnumpy()
        assert decoded.shape == r.frames["main"].shape
        assert np.abs(decoded.astype(int) - r.frames["main"]).mean() < 3.0  # libx264 crf 18 error


def test_reopen_appends_and_refuses_different_settings(tmp_path):
    rng = np.random.default_rng(2)
    writer = make_writer(tmp_path, extra_info={"env": "reach", "seed": 0})
    writer.add_episode(make_record(rng, 8, 0))
    reopened = make_writer(tmp_path, extra_info={"env": "reach", "seed": 0})
    assert reopened.num_episodes == 1 and reopened.num_frames == 8
    reopened.add_episode(make_record(rng, 6, 1))
    assert read_meta(tmp_path).episodes[1].length == 6
    assert json.loads((tmp_path / "meta/stats.json").read_text())["action"]["count"] == [14]
    with pytest.raises(DatasetFormatError, match="seed"):
        make_writer(tmp_path, extra_info={"env": "reach", "seed": 1})


def test_episode_table_is_split_across_files(tmp_path):
    rng = np.random.default_rng(8)
    writer = make_writer(tmp_path, episodes_per_meta_file=2)
    for i in range(3):
        writer.add_episode(make_record(rng, 4 + i, i))
    make_writer(tmp_path, episodes_per_meta_file=2).add_episode(make_record(rng, 9, 3))  # reopen, then append
    make_writer(tmp_path, episodes_per_meta_file=2).add_episode(make_record(rng, 5, 4))
    files = sorted((tmp_path / "meta/episodes/chunk-000").glob("*.parquet"))
    assert [f.name for f in files] == ["file-000.parquet", "file-001.parquet", "file-002.parquet"]
    assert [pq.read_table(f).num_rows for f in files] == [2, 2, 1]
    assert pq.read_table(files[1])["meta/episodes/file_index"].to_pylist() == [1, 1]
    meta = read_meta(tmp_path)
    assert [e.length for e in meta.episodes] == [4, 5, 6, 9, 5]
    assert json.loads((tmp_path / "meta/stats.json").read_text())["action"]["count"] == [29]


def test_crash_during_commit_keeps_previous_episodes(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    writer = make_writer(tmp_path)
    writer.add_episode(make_record(rng, 8, 0))

    import jepa_world.data.lerobot as lerobot

    write_parquet = lerobot._atomic_write_parquet

    def crash_at_commit_point(path, table):
        if "meta/episodes" in str(path):  # the data file of episode 1 is already written by now
            raise KeyboardInterrupt("simulated crash while writing the episodes table")
        write_parquet(path, table)

    monkeypatch.setattr(lerobot, "_atomic_write_parquet", crash_at_commit_point)
    with pytest.raises(KeyboardInterrupt):
        writer.add_episode(make_record(rng, 8, 1))
    monkeypatch.undo()
    assert (tmp_path / "data/chunk-000/file-001.parquet").exists()  # orphan data, not yet committed
    assert writer.num_episodes == 1
    meta = read_meta(tmp_path)
    assert [e.episode_index for e in meta.episodes] == [0]
    resumed = make_writer(tmp_path)
    assert resumed.add_episode(make_record(rng, 5, 1)) == 1
    assert [e.length for e in read_meta(tmp_path).episodes] == [8, 5]
    assert not list(tmp_path.rglob(".*tmp*"))  # no temporary files left behind by completed writes


def test_reads_a_v21_dataset(tmp_path):
    """The one-file-per-episode v2.1 layout with meta/episodes.jsonl."""
    rng = np.random.default_rng(4)
    key = "observation.images.top"
    info = {
        "codebase_version": "v2.1", "fps": 10, "chunks_size": 1000,
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": {key: {"dtype": "video", "shape": [64, 64, 3]},
                     "observation.state": {"dtype": "float32", "shape": [2]},
                     "action": {"dtype": "float32", "shape": [2]}},
    }
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta/info.json").write_text(json.dumps(info))
    lengths = [7, 9]
    (tmp_path / "meta/episodes.jsonl").write_text(
        "\n".join(json.dumps({"episode_index": i, "tasks": ["t"], "length": n}) for i, n in enumerate(lengths)))
    expected = {}
    for ep, n in enumerate(lengths):
        actions, states = rng.normal(size=(n, 2)).astype(np.float32), rng.normal(size=(n, 2)).astype(np.float32)
        expected[ep] = (actions, states)
        data = tmp_path / f"data/chunk-000/episode_{ep:06d}.parquet"
        data.parent.mkdir(parents=True, exist_ok=True)
        # v2.1 files written by HF datasets use variable-length lists.
        pq.write_table(pa.table({
            "action": pa.array(actions.tolist(), pa.list_(pa.float32())),
            "observation.state": pa.array(states.tolist(), pa.list_(pa.float32())),
            "episode_index": pa.array([ep] * n, pa.int64()), "frame_index": pa.array(range(n), pa.int64()),
        }), data)
        write_video(tmp_path / f"videos/chunk-000/{key}/episode_{ep:06d}.mp4", moving_square_frames(n, ep), fps=10)
    meta = read_meta(tmp_path)
    assert meta.version == "v2.1" and meta.video_keys == [key]
    columns = read_columns(meta, ["action", "observation.state"])
    for ep, (actions, states) in expected.items():
        np.testing.assert_array_equal(columns[ep]["action"], actions)
        np.testing.assert_array_equal(columns[ep]["observation.state"], states)


def test_missing_and_malformed_metadata_errors(tmp_path):
    with pytest.raises(DatasetFormatError, match="does not exist"):
        read_meta(tmp_path / "nope")
    with pytest.raises(DatasetFormatError, match="meta/info.json"):
        read_meta(tmp_path)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta/info.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        read_meta(tmp_path)
    (tmp_path / "meta/info.json").write_text(json.dumps({"codebase_version": "v1.6", "fps": 10, "features": {},
                                                          "data_path": "x"}))
    with pytest.raises(DatasetFormatError, match="v1.6"):
        read_meta(tmp_path)
    (tmp_path / "meta/info.json").write_text(json.dumps({"codebase_version": "v3.0", "fps": 10, "features": {}}))
    with pytest.raises(DatasetFormatError, match="data_path"):
        read_meta(tmp_path)


def test_truncated_parquet_error_names_file_and_episode(tmp_path):
    rng = np.random.default_rng(5)
    writer = make_writer(tmp_path)
    for i in range(2):
        writer.add_episode(make_record(rng, 10, i))
    bad = tmp_path / "data/chunk-000/file-001.parquet"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(DatasetFormatError, match=r"file-001\.parquet \(episode 1\)"):
        read_columns(read_meta(tmp_path), ["action"])


def test_rows_missing_from_parquet_are_detected(tmp_path):
    rng = np.random.default_rng(6)
    writer = make_writer(tmp_path)
    writer.add_episode(make_record(rng, 10, 0))
    path = tmp_path / "data/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).slice(0, 7), path)  # a valid file with too few rows
    with pytest.raises(DatasetFormatError, match=r"episode 0 has 7 rows.*length 10"):
        read_columns(read_meta(tmp_path), ["action"])


def test_writer_rejects_mismatched_episode(tmp_path):
    writer = make_writer(tmp_path)
    record = make_record(np.random.default_rng(7), 6, 0)
    record.actions = record.actions[:, :2]
    with pytest.raises(ValueError, match=r"actions \(6, 2\)"):
        writer.add_episode(record)
    record = make_record(np.random.default_rng(7), 6, 0)
    record.states[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"states contain NaN/Inf at frames \[4\]"):
        writer.add_episode(record)
    assert writer.num_episodes == 0 and not (tmp_path / "data").exists()
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 63, 64, 3), np.uint8), fps=10)


AV1_DECODERS = {"libdav1d", "libaom-av1"} & av.codecs_available


@pytest.mark.skipif("libsvtav1" not in av.codecs_available or not AV1_DECODERS,
                    reason=f"PyAV here lacks an AV1 encoder (libsvtav1) or decoder (libdav1d/libaom-av1): {sorted(av.codecs_available & {'libsvtav1', 'libdav1d', 'libaom-av1'})}")
def test_av1_dataset_packing_several_episodes_per_file_is_read_through_pyav(tmp_path):
    """LeRobot's default codec: decord cannot open AV1, so the reader falls back to PyAV and seeks by timestamp."""
    rng = np.random.default_rng(9)
    writer = make_writer(tmp_path, vcodec="libsvtav1", crf=20)
    a, b = make_record(rng, 8, 0), make_record(rng, 6, 20)  # squares 20 px apart
    writer.add_episode(a)
    writer.add_episode(b)
    video = tmp_path / "videos/observation.images.main/chunk-000/file-000.mp4"
    info = json.loads((tmp_path / "meta/info.json").read_text())
    assert info["features"]["observation.images.main"]["info"]["video.codec"] == "av1"
    with av.open(str(video)) as container:
        assert container.streams.video[0].codec_context.name in AV1_DECODERS | {"av1"}
    with pytest.raises(decord.DECORDError):
        decord.VideoReader(str(video))
    assert isinstance(open_frame_reader(video), PyAVFrameReader)

    # Pack both episodes into file-000, as LeRobot does: episode 1's frames start at 0.8 s in the video.
    data = [pq.read_table(tmp_path / f"data/chunk-000/file-00{i}.parquet") for i in range(2)]
    pq.write_table(pa.concat_tables(data), tmp_path / "data/chunk-000/file-000.parquet")
    write_video(video, np.concatenate([a.frames["main"], b.frames["main"]]), fps=10, vcodec="libsvtav1", crf=20, gop=4)
    episodes_path = tmp_path / "meta/episodes/chunk-000/file-000.parquet"
    rows = pq.read_table(episodes_path).to_pylist()
    rows[1].update({"data/file_index": 0, "videos/observation.images.main/file_index": 0,
                    "videos/observation.images.main/from_timestamp": 0.8})
    pq.write_table(pa.Table.from_pylist(rows), episodes_path)
    ds = TrajectoryDataset(tmp_path, num_frames=3, split="all", cache_frames=False)
    errors = {}
    for index, record, first in ((0, a, 0), (len(ds) - 1, b, 3)):
        frames = ds[index]["frames"].permute(0, 2, 3, 1).numpy().astype(int)
        errors[index] = np.abs(frames - record.frames["main"][first: first + 3]).mean()
        assert errors[index] < 4.0  # AV1 at crf 20
    ignoring_offset = a.frames["main"][3:6]  # what a reader that ignored from_timestamp would return
    wrong = np.abs(ds[len(ds) - 1]["frames"].permute(0, 2, 3, 1).numpy().astype(int) - ignoring_offset).mean()
    assert wrong > 2 * errors[len(ds) - 1]
    # Pretraining on a folder of such videos goes through the same fallback.
    clips = VideoFolderDataset(video.parent, frames_per_clip=4, frame_step=2, resolution=32, crop_scale=None, hflip=False)
    assert clips[0].shape == (3, 4, 32, 32)


def test_image_stats_are_lerobots_per_channel_stats_of_every_frame(tmp_path):
    rng = np.random.default_rng(10)
    frames = rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    frames[..., 2] //= 4  # channels with different ranges
    stats = image_stats(frames)
    values = frames.reshape(-1, 3) / 255.0
    assert stats["count"] == [7]
    for key, expected in [("min", values.min(0)), ("max", values.max(0)), ("mean", values.mean(0)),
                          ("std", values.std(0)), *[(k, np.quantile(values, q, axis=0)) for k, q in QUANTILES.items()]]:
        assert np.shape(stats[key]) == (3, 1, 1), key
        np.testing.assert_allclose(np.ravel(stats[key]), expected, rtol=0, atol=1e-12, err_msg=key)

    writer = make_writer(tmp_path)
    records = [make_record(rng, n, i) for i, n in enumerate((6, 9))]
    for record in records:
        writer.add_episode(record)
    saved = json.loads((tmp_path / "meta/stats.json").read_text())
    info = json.loads((tmp_path / "meta/info.json").read_text())
    assert set(saved) == set(info["features"])  # every feature, as LeRobot's compute_stats gives
    all_frames = np.concatenate([r.frames["main"] for r in records]).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(np.ravel(saved["observation.images.main"]["mean"]), all_frames.mean(0), atol=1e-12)
    np.testing.assert_allclose(np.ravel(saved["observation.images.main"]["std"]), all_frames.std(0), atol=1e-12)
    assert saved["observation.images.main"]["count"] == [15] and saved["next.success"]["max"] == [1.0]


def png_bytes(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_dtype_dataset_is_read(tmp_path):
    """LeRobot's "image" dtype: PNG bytes in a struct<bytes, path> column of the data parquet, no videos."""
    rng = np.random.default_rng(11)
    key = "observation.images.top"
    lengths = [6, 5]
    frames = [moving_square_frames(n, 5 * ep, size=32) for ep, n in enumerate(lengths)]
    actions = [rng.normal(size=(n, 2)).astype(np.float32) for n in lengths]
    info = {"codebase_version": "v3.0", "fps": 10, "chunks_size": 1000, "video_path": None,
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "features": {key: {"dtype": "image", "shape": [32, 32, 3], "names": ["height", "width", "channels"]},
                         "observation.state": {"dtype": "float32", "shape": [2]},
                         "action": {"dtype": "float32", "shape": [2]}}}
    (tmp_path / "meta/episodes/chunk-000").mkdir(parents=True)
    (tmp_path / "meta/info.json").write_text(json.dumps(info))
    (tmp_path / "data/chunk-000").mkdir(parents=True)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = [{"bytes": png_bytes(f), "path": f"frame_{i:06d}.png"} for ep in frames for i, f in enumerate(ep)]
    pq.write_table(pa.table({  # both episodes in one file, as LeRobot packs them
        key: pa.array(images, image_type),
        "observation.state": pa.array(np.concatenate(actions).tolist(), pa.list_(pa.float32())),
        "action": pa.array(np.concatenate(actions).tolist(), pa.list_(pa.float32())),
        "episode_index": pa.array([ep for ep, n in enumerate(lengths) for _ in range(n)], pa.int64()),
        "frame_index": pa.array([i for n in lengths for i in range(n)], pa.int64()),
    }), tmp_path / "data/chunk-000/file-000.parquet")
    pq.write_table(pa.Table.from_pylist([
        {"episode_index": ep, "tasks": ["t"], "length": n, "data/chunk_index": 0, "data/file_index": 0,
         "dataset_from_index": sum(lengths[:ep]), "dataset_to_index": sum(lengths[: ep + 1])}
        for ep, n in enumerate(lengths)]), tmp_path / "meta/episodes/chunk-000/file-000.parquet")

    ds = TrajectoryDataset(tmp_path, num_frames=3, split="all")
    assert ds.video_key == key and len(ds) == 4 + 3
    item = ds[len(ds) - 1]  # episode 1, frames 2..4
    assert item["episode_index"] == 1 and item["frame_index"] == 2
    np.testing.assert_array_equal(item["frames"].permute(0, 2, 3, 1).numpy(), frames[1][2:5])  # PNG is lossless
    np.testing.assert_array_equal(item["actions"].numpy(), actions[1][2:4])
    clips = TrajectoryClipDataset(tmp_path, frames_per_clip=3, resolution=16, crop_scale=None, split="all")
    assert clips[0].shape == (3, 3, 16, 16)
    assert dataset_dims(tmp_path, None) == (2, 2, 32)  # post-training sizes its model from an image camera too

    table = pq.read_table(tmp_path / "data/chunk-000/file-000.parquet")
    broken = table[key].to_pylist()
    broken[8]["bytes"] = b"not a png"  # episode 1, frame 2
    table = table.set_column(table.schema.get_field_index(key), key, pa.array(broken, image_type))
    pq.write_table(table, tmp_path / "data/chunk-000/file-000.parquet")
    with pytest.raises(DatasetFormatError, match=r"file-000\.parquet: cannot decode image .* episode 1 frame 2"):
        TrajectoryDataset(tmp_path, num_frames=3, split="all")[len(ds) - 1]


def test_yuv420p_option_writes_browser_playable_h264(tmp_path):
    writer = make_writer(tmp_path, crf=18, pix_fmt="yuv420p")
    writer.add_episode(make_record(np.random.default_rng(12), 6, 0))
    info = json.loads((tmp_path / "meta/info.json").read_text())
    assert info["features"]["observation.images.main"]["info"]["video.pix_fmt"] == "yuv420p"
    with av.open(str(tmp_path / "videos/observation.images.main/chunk-000/file-000.mp4")) as container:
        codec = container.streams.video[0].codec_context
        assert (codec.name, codec.pix_fmt, codec.profile) == ("h264", "yuv420p", "High")  # what browsers decode
    with pytest.raises(ValueError, match=r"crf=0.*High 4:4:4 Predictive"):
        make_writer(tmp_path / "lossless", crf=0, pix_fmt="yuv420p")
    with pytest.raises(ValueError, match=r"pix_fmt='yuv444p': libsvtav1 writes \('yuv420p',\)"):
        make_writer(tmp_path / "av1", vcodec="libsvtav1", pix_fmt="yuv444p")

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base=None):
        cfg = compose("collect", overrides=["pix_fmt=yuv420p", "crf=18"])
    config = config_from_hydra(OmegaConf.to_container(cfg, resolve=True))
    assert (config.pix_fmt, config.crf, config.vcodec) == ("yuv420p", 18, "libx264")
    config.validate()
    config.crf = 0
    with pytest.raises(ValueError, match="use crf >= 1"):
        config.validate()


def test_dataset_with_stats_of_action_and_state_only_is_read_and_upgraded(tmp_path):
    """Datasets of older jepa_world versions: readable as they are; the writer names the conversion."""
    rng = np.random.default_rng(13)
    writer = make_writer(tmp_path, crf=0)  # lossless: decoded frames are within 2 levels of the render
    for i in range(2):
        writer.add_episode(make_record(rng, 7 + i, i))
    episodes_path = tmp_path / "meta/episodes/chunk-000/file-000.parquet"
    complete = pq.read_table(episodes_path).to_pylist()
    complete_stats = json.loads((tmp_path / "meta/stats.json").read_text())
    old_stats = ("stats/action/", "stats/observation.state/")
    old_rows = [{k: v for k, v in row.items() if not k.startswith("stats/") or k.startswith(old_stats)} for row in complete]
    pq.write_table(pa.Table.from_pylist(old_rows), episodes_path)
    (tmp_path / "meta/stats.json").write_text(json.dumps({k: complete_stats[k] for k in ("action", "observation.state")}))

    assert [e.extra["policy"] for e in read_meta(tmp_path).episodes] == ["expert", "expert"]
    assert len(TrajectoryDataset(tmp_path, num_frames=2, split="all")) == 6 + 7
    with pytest.raises(DatasetFormatError, match=r"no per-episode stats of \['observation.images.main', "
                                                 r"'next.reward'.*upgrade_episode_stats\('" + re.escape(str(tmp_path))):
        make_writer(tmp_path, crf=0)

    upgrade_episode_stats(tmp_path)
    upgraded = pq.read_table(episodes_path).to_pylist()
    assert [set(row) for row in upgraded] == [set(row) for row in complete]
    for new, old in zip(upgraded, complete):
        for column, value in old.items():
            if column.startswith("stats/observation.images.main/") and not column.endswith("/count"):
                np.testing.assert_allclose(new[column], value, atol=2.01 / 255)  # from the decoded video
            else:
                assert new[column] == value, column
    assert json.loads((tmp_path / "meta/stats.json").read_text())["next.reward"] == complete_stats["next.reward"]
    assert make_writer(tmp_path, crf=0).add_episode(make_record(rng, 5, 2)) == 2
