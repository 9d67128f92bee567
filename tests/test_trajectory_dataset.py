"""TrajectoryDataset windows: exact actions/states, frame-step merging, episode splits, errors."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from jepa_world.data.lerobot import DatasetFormatError, write_video
from jepa_world.data.trajectory import TrajectoryDataset, merge_actions, split_episodes
from tests.test_lerobot_format import make_record, make_writer, moving_square_frames

LENGTHS = [12, 9, 15, 11, 10, 13]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("traj")
    rng = np.random.default_rng(0)
    writer = make_writer(root)
    records = [make_record(rng, n, i) for i, n in enumerate(LENGTHS)]
    for r in records:
        writer.add_episode(r)
    return root, records


def test_windows_give_back_exact_actions_states_and_frames(dataset_dir):
    root, records = dataset_dir
    ds = TrajectoryDataset(root, num_frames=4, frame_step=1, split="all")
    assert len(ds) == sum(n - 3 for n in LENGTHS)
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        ep, t0 = item["episode_index"], item["frame_index"]
        r = records[ep]
        seen.add((ep, t0))
        assert item["frames"].shape == (4, 3, 64, 64) and item["frames"].dtype == torch.uint8
        assert item["actions"].dtype == torch.float32 and item["states"].dtype == torch.float32
        np.testing.assert_array_equal(item["actions"].numpy(), r.actions[t0: t0 + 3])
        np.testing.assert_array_equal(item["states"].numpy(), r.states[t0: t0 + 4])
        frames = item["frames"].permute(0, 2, 3, 1).numpy().astype(int)
        assert np.abs(frames - r.frames["main"][t0: t0 + 4]).mean() < 3.0
    assert seen == {(e, t) for e, n in enumerate(LENGTHS) for t in range(n - 3)}  # every window exactly once
    for position, episode in enumerate(ds.episodes):
        actions, states = ds.episode_arrays(position)
        np.testing.assert_array_equal(actions, records[episode.episode_index].actions)
        np.testing.assert_array_equal(states, records[episode.episode_index].states)
        whole = ds.read_frames(position, np.arange(episode.length)).astype(int)
        assert np.abs(whole - records[episode.episode_index].frames["main"]).mean() < 3.0


def test_frame_step_merges_actions(dataset_dir):
    root, records = dataset_dir
    for rule in ("sum", "first", "mean"):
        ds = TrajectoryDataset(root, num_frames=3, frame_step=3, split="all", action_merge=rule)
        assert len(ds) == sum(n - 6 for n in LENGTHS)
        item = ds[5]
        ep, t0 = item["episode_index"], item["frame_index"]
        a = records[ep].actions
        chunks = [a[t0: t0 + 3], a[t0 + 3: t0 + 6]]
        expected = {"sum": [c.sum(0) for c in chunks], "first": [c[0] for c in chunks],
                    "mean": [c.mean(0) for c in chunks]}[rule]
        np.testing.assert_allclose(item["actions"].numpy(), np.stack(expected), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(item["states"].numpy(), records[ep].states[[t0, t0 + 3, t0 + 6]])
    # the summed displacement equals the direct sum over the whole window
    np.testing.assert_allclose(merge_actions(np.ones((6, 2)), 3, "sum"), np.full((2, 2), 3.0))


def test_split_by_episode_is_disjoint_deterministic_and_complete(dataset_dir):
    root, _ = dataset_dir
    train = TrajectoryDataset(root, num_frames=2, split="train", val_fraction=0.34, seed=3)
    val = TrajectoryDataset(root, num_frames=2, split="val", val_fraction=0.34, seed=3)
    train_eps = {e.episode_index for e in train.episodes}
    val_eps = {e.episode_index for e in val.episodes}
    assert train_eps.isdisjoint(val_eps) and train_eps | val_eps == set(range(len(LENGTHS)))
    assert len(val_eps) == 3  # ceil(0.34 * 6)
    assert {val[i]["episode_index"] for i in range(len(val))} == val_eps
    again = TrajectoryDataset(root, num_frames=2, split="val", val_fraction=0.34, seed=3)
    assert {e.episode_index for e in again.episodes} == val_eps
    other = {tuple(split_episodes(list(range(100)), "val", 0.1, s)) for s in range(5)}
    assert len(other) > 1  # the seed changes the split
    with pytest.raises(ValueError, match="val_fraction"):
        split_episodes([0, 1], "train", 1.0, 0)


def test_cached_frames_and_dataloader_workers_match_direct_reads(dataset_dir):
    root, _ = dataset_dir
    direct = TrajectoryDataset(root, num_frames=3, frame_step=2, split="all", cache_frames=False)
    cached = TrajectoryDataset(root, num_frames=3, frame_step=2, split="all", cache_frames=True)
    assert TrajectoryDataset(root, num_frames=3, split="all").cache_frames  # auto: a few MB fit the budget
    assert not TrajectoryDataset(root, num_frames=3, split="all", cache_budget_gb=1e-4).cache_frames
    for i in (0, 7, len(direct) - 1):
        assert torch.equal(direct[i]["frames"], cached[i]["frames"])
    loader = DataLoader(direct, batch_size=8, num_workers=2, shuffle=False, multiprocessing_context="spawn")
    batch = next(iter(loader))
    assert batch["frames"].shape == (8, 3, 3, 64, 64)
    assert torch.equal(batch["frames"][3], direct[3]["frames"])
    assert torch.equal(batch["actions"][3], direct[3]["actions"])


def test_window_longer_than_every_episode(dataset_dir):
    root, _ = dataset_dir
    with pytest.raises(ValueError, match=r"spans 16 frames.*longest .* has 15"):
        TrajectoryDataset(root, num_frames=6, frame_step=3, split="all")


def test_bad_arguments_and_missing_dataset(dataset_dir, tmp_path):
    root, _ = dataset_dir
    with pytest.raises(DatasetFormatError, match="does not exist"):
        TrajectoryDataset(tmp_path / "missing")
    with pytest.raises(DatasetFormatError, match="meta/info.json"):
        TrajectoryDataset(tmp_path)
    with pytest.raises(ValueError, match="action_merge='max'"):
        TrajectoryDataset(root, action_merge="max")
    with pytest.raises(ValueError, match="camera 'wrist' not found"):
        TrajectoryDataset(root, num_frames=2, camera="wrist")
    with pytest.raises(ValueError, match="split='test'"):
        TrajectoryDataset(root, num_frames=2, split="test")


def test_camera_choice_with_several_cameras(tmp_path):
    writer = make_writer(tmp_path, cameras=("front", "wrist"))
    record = make_record(np.random.default_rng(1), 6, 0, cameras=("front", "wrist"))
    writer.add_episode(record)
    with pytest.raises(ValueError, match="several cameras"):
        TrajectoryDataset(tmp_path, num_frames=2, split="all")
    ds = TrajectoryDataset(tmp_path, num_frames=2, split="all", camera="wrist")
    frames = ds[0]["frames"].permute(0, 2, 3, 1).numpy().astype(int)
    assert np.abs(frames - record.frames["wrist"][:2]).mean() < 3.0
    assert np.abs(frames - record.frames["front"][:2]).mean() > 3.0  # it really read the other camera


def test_corrupt_and_truncated_video_errors_name_file_and_episode(tmp_path):
    rng = np.random.default_rng(2)
    writer = make_writer(tmp_path)
    for i in range(3):
        writer.add_episode(make_record(rng, 10, i))
    cut = tmp_path / "videos/observation.images.main/chunk-000/file-001.mp4"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # a crash mid-copy
    short = tmp_path / "videos/observation.images.main/chunk-000/file-002.mp4"
    write_video(short, moving_square_frames(4, 0), fps=10)  # a valid video, shorter than the episode
    ds = TrajectoryDataset(tmp_path, num_frames=2, split="all")
    ds[0]  # episode 0 is fine
    with pytest.raises(DatasetFormatError, match=r"file-001\.mp4 \(episode 1\)"):
        ds[9]
    with pytest.raises(DatasetFormatError, match=r"file-002\.mp4 \(episode 2\) has 4 frames"):
        ds[len(ds) - 1]


def test_truncated_parquet_error_at_construction(tmp_path):
    rng = np.random.default_rng(3)
    writer = make_writer(tmp_path)
    for i in range(2):
        writer.add_episode(make_record(rng, 10, i))
    bad = tmp_path / "data/chunk-000/file-000.parquet"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DatasetFormatError, match=r"file-000\.parquet \(episode 0\)"):
        TrajectoryDataset(tmp_path, num_frames=2, split="all")


def test_reads_a_v3_file_holding_several_episodes(tmp_path):
    """Third-party v3 datasets pack episodes into shared files; video offsets come from from_timestamp."""
    rng = np.random.default_rng(4)
    writer = make_writer(tmp_path)
    a = make_record(rng, 8, 0)
    b = make_record(rng, 6, 3)
    writer.add_episode(a)
    writer.add_episode(b)
    # Merge both episodes into file-000 (data and video), as LeRobot's own writer does.
    data = [pq.read_table(tmp_path / f"data/chunk-000/file-00{i}.parquet") for i in range(2)]
    pq.write_table(pa.concat_tables(data), tmp_path / "data/chunk-000/file-000.parquet")
    write_video(tmp_path / "videos/observation.images.main/chunk-000/file-000.mp4",
                np.concatenate([a.frames["main"], b.frames["main"]]), fps=10)
    (tmp_path / "data/chunk-000/file-001.parquet").unlink()
    (tmp_path / "videos/observation.images.main/chunk-000/file-001.mp4").unlink()
    episodes_path = tmp_path / "meta/episodes/chunk-000/file-000.parquet"
    rows = pq.read_table(episodes_path).to_pylist()
    rows[1].update({"data/file_index": 0, "videos/observation.images.main/file_index": 0,
                    "videos/observation.images.main/from_timestamp": 0.8,
                    "videos/observation.images.main/to_timestamp": 1.4})
    pq.write_table(pa.Table.from_pylist(rows), episodes_path)
    info = json.loads((tmp_path / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"

    ds = TrajectoryDataset(tmp_path, num_frames=3, split="all")
    item = ds[len(ds) - 1]  # last window of episode 1: frames 3..5
    assert item["episode_index"] == 1 and item["frame_index"] == 3
    np.testing.assert_array_equal(item["actions"].numpy(), b.actions[3:5])
    frames = item["frames"].permute(0, 2, 3, 1).numpy().astype(int)
    assert np.abs(frames - b.frames["main"][3:6]).mean() < 3.0
