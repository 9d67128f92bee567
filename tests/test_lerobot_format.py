"""LeRobot v3.0 writer and v2.1/v3.0 reader: layout, exact round trip, crash safety, bad files."""

import json

import decord
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jepa_world.data.lerobot import (
    DatasetFormatError,
    EpisodeRecord,
    LeRobotWriter,
    read_columns,
    read_meta,
    write_video,
)


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
