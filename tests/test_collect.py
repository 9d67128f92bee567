"""Trajectory collection: reproducible episodes, faithful storage, parallel == serial, crash/resume, CLI."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import envs
from jepa_world.data import collection
from jepa_world.data.collection import (
    CollectConfig,
    ExplorationConfig,
    OrnsteinUhlenbeckPolicy,
    collect,
    config_from_hydra,
    plan_episode,
)
from jepa_world.data.lerobot import DatasetFormatError, read_meta
from jepa_world.data.trajectory import TrajectoryDataset

REPO = Path(__file__).resolve().parents[1]


def small_config(root: Path, **overrides) -> CollectConfig:
    base = dict(env="reach", episodes=4, output_dir=str(root), seed=0, expert_ratio=0.5, episode_length=12, workers=1)
    return CollectConfig(**{**base, **overrides})


def dataset_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def test_stored_episodes_replay_exactly_in_a_fresh_env(tmp_path):
    summary = collect(small_config(tmp_path, episodes=3, expert_ratio=0.5))
    assert summary.episodes == 3 and summary.frames == 36
    ds = TrajectoryDataset(tmp_path, num_frames=12, frame_step=1, split="all")
    assert len(ds) == 3  # one full-episode window each
    env = envs.make("reach", max_episode_steps=12)
    rows = pq.read_table(tmp_path / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    for i, row in enumerate(rows):
        item = ds[i]
        actions = item["actions"].numpy()
        obs, _ = env.reset(seed=row["seed"])
        assert json.loads(row["goal_state"]) == env.unwrapped.goal_state()
        frames, states = [obs["pixels"]], [obs["state"]]
        for a in actions:
            obs, _, _, _, info = env.step(a)
            frames.append(obs["pixels"])
            states.append(obs["state"])
        np.testing.assert_array_equal(item["states"].numpy(), np.stack(states))  # physics replays bit-exactly
        rendered = np.stack(frames).astype(int)
        decoded = item["frames"].permute(0, 2, 3, 1).numpy().astype(int)
        # H.264 yuv420p at 64 px: ~2 levels mean error, mostly chroma subsampling at edges (PSNR ~33 dB)
        error = np.abs(decoded - rendered).mean()
        psnr = 10 * np.log10(255**2 / ((decoded - rendered) ** 2).mean())
        assert error < 3.0 and psnr > 30.0, f"episode {i}: mean abs error {error:.2f}, PSNR {psnr:.1f} dB"
        # another episode's frames are much further away, so the bound above is meaningful
        other = ds[(i + 1) % 3]["frames"].permute(0, 2, 3, 1).numpy().astype(int)
        assert np.abs(other - rendered).mean() > 1.5 * error
    env.close()


def test_episode_plans_are_seeded_and_follow_the_ratio():
    plans = [plan_episode(7, i, 0.3) for i in range(2000)]
    assert plans == [plan_episode(7, i, 0.3) for i in range(2000)]
    assert abs(np.mean([p.policy == "expert" for p in plans]) - 0.3) < 0.04
    assert len({p.env_seed for p in plans}) == 2000
    assert plan_episode(8, 0, 0.3).env_seed != plans[0].env_seed
    assert all(plan_episode(0, i, 0.0).policy == "random" for i in range(50))
    assert all(plan_episode(0, i, 1.0).policy == "expert" for i in range(50))


def test_exploration_is_smooth_bounded_and_covers_the_box():
    low, high = -0.05 * np.ones(3), 0.05 * np.ones(3)
    policy = OrnsteinUhlenbeckPolicy(low, high, ExplorationConfig(theta=0.15, sigma=0.4), np.random.default_rng(0))
    actions = np.stack([policy(None) for _ in range(4000)])  # (N, 3)
    assert (actions >= low).all() and (actions <= high).all()
    centred = actions - actions.mean(0)
    lag1 = (centred[1:] * centred[:-1]).mean(0) / centred.var(0)
    assert (lag1 > 0.7).all()  # temporally correlated, unlike i.i.d. uniform noise (lag1 ~ 0)
    assert (actions.std(0) > 0.3 * 0.05).all()  # and it uses a good part of the range
    assert ((np.abs(actions) > 0.9 * 0.05).mean(0) < 0.5).all()  # without sticking to the bounds


def test_expert_succeeds_and_exploration_rarely_does(tmp_path):
    summary = collect(small_config(tmp_path, episodes=12, episode_length=50, expert_ratio=0.5))
    rows = pq.read_table(tmp_path / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    policies = [r["policy"] for r in rows]
    assert 0 < policies.count("expert") < 12
    assert summary.success_rate["expert"] >= 0.95 and summary.success_rate["random"] <= 0.2
    ds = TrajectoryDataset(tmp_path, num_frames=2, split="all")
    assert [e.extra["policy"] for e in ds.episodes] == policies
    for r in rows:
        if r["success"]:
            assert r["final_distance"] < envs.make("reach").unwrapped.success_threshold
    successes = pq.read_table(tmp_path / "data/chunk-000/file-000.parquet")["next.success"].to_pylist()
    assert successes[-1] == rows[0]["success"]


def test_parallel_workers_write_the_same_dataset_as_one_process(tmp_path):
    collect(small_config(tmp_path / "serial", episodes=5, workers=1))
    collect(small_config(tmp_path / "parallel", episodes=5, workers=2))
    assert dataset_digest(tmp_path / "serial") == dataset_digest(tmp_path / "parallel")


def test_crash_mid_run_resumes_to_the_uninterrupted_dataset(tmp_path, monkeypatch):
    collect(small_config(tmp_path / "reference", episodes=5))
    run_episode = collection._run_episode

    def crash_on_third(episode_index):
        if episode_index == 3:
            raise KeyboardInterrupt("simulated crash during episode 3")
        return run_episode(episode_index)

    monkeypatch.setattr(collection, "_run_episode", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        collect(small_config(tmp_path / "crashed", episodes=5))
    monkeypatch.undo()
    assert json.loads((tmp_path / "crashed/meta/info.json").read_text())["total_episodes"] == 3
    summary = collect(small_config(tmp_path / "crashed", episodes=5))
    assert summary.new_episodes == 2
    assert dataset_digest(tmp_path / "crashed") == dataset_digest(tmp_path / "reference")
    # Asking for more episodes later extends the same sequence of episodes.
    assert collect(small_config(tmp_path / "crashed", episodes=6)).new_episodes == 1


def test_rerun_with_different_settings_is_refused(tmp_path):
    collect(small_config(tmp_path, episodes=2))
    with pytest.raises(DatasetFormatError, match=r"'seed': 1"):
        collect(small_config(tmp_path, episodes=3, seed=1))
    assert collect(small_config(tmp_path, episodes=2)).new_episodes == 0  # same settings: nothing to do
    with pytest.raises(DatasetFormatError, match=r"'video.codec': 'h264'.*this run wants .*'video.codec': 'av1'"):
        collect(small_config(tmp_path, episodes=3, vcodec="libsvtav1"))
    # the video options are recorded only away from the values datasets used before they existed
    assert {"pix_fmt", "vcodec"}.isdisjoint(small_config(tmp_path).identity())


@pytest.mark.parametrize("override, message", [
    (dict(expert_ratio=1.5), "expert_ratio=1.5"),
    (dict(episodes=0), "episodes=0"),
    (dict(episode_length=1), "episode_length=1"),
    (dict(exploration=dict(theta=0.0, sigma=0.4)), "theta=0.0"),
    (dict(env="pong"), "available envs: reach"),
    (dict(env_kwargs={"colour": "red"}), "rejected env_kwargs"),
])
def test_bad_configs_are_rejected_with_the_value(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        collect(small_config(tmp_path, **override))


def test_hydra_config_mapping():
    cfg = config_from_hydra({"env": {"name": "reach", "image_size": 96, "max_episode_steps": 50, "action_dim": 3},
                             "episodes": 3, "output_dir": "x", "env_kwargs": {}})
    assert cfg.env == "reach" and cfg.env_kwargs == {"image_size": 96} and cfg.episodes == 3
    with pytest.raises(ValueError, match="unknown collect options"):
        config_from_hydra({"env": {"name": "reach"}, "episodez": 3})


def _run_cli(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.Popen([sys.executable, "scripts/collect.py", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.slow
def test_cli_end_to_end_killed_and_resumed(tmp_path):
    """scripts/collect.py with 2 spawned workers, SIGKILLed mid-run, then rerun: the same bytes as a clean serial run."""
    common = ["env=reach", "episode_length=20", "workers=2", "seed=3", "hydra.run.dir=" + str(tmp_path / "hydra")]
    collect(CollectConfig(env="reach", env_kwargs={"image_size": 64}, episodes=30, output_dir=str(tmp_path / "ref"),
                          seed=3, episode_length=20, workers=1))

    killed = _run_cli("episodes=30", f"output_dir={tmp_path / 'run'}", *common, start_new_session=True)
    info = tmp_path / "run/meta/info.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if info.exists() and json.loads(info.read_text())["total_episodes"] >= 5:
            break
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)  # the parent and its spawned workers, mid-episode
    killed.communicate()
    # The episode table is the commit point; info.json is derived and may lag it by the episode whose
    # commit the kill interrupted, so the committed count comes from the table.
    done = len(read_meta(tmp_path / "run").episodes)
    assert 5 <= done < 30, f"the kill came too late to test resuming ({done} episodes done)"

    resumed = _run_cli("episodes=30", f"output_dir={tmp_path / 'run'}", *common)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"30 episodes ({30 - done} new" in out and "episodes/s" in out
    assert dataset_digest(tmp_path / "run") == dataset_digest(tmp_path / "ref")
    ds = TrajectoryDataset(tmp_path / "run", num_frames=4, frame_step=2, split="train", val_fraction=0.2)
    assert len(ds.episodes) == 24 and ds[0]["frames"].shape == (4, 3, 64, 64)

    refused = _run_cli("episodes=30", f"output_dir={tmp_path / 'run'}", "expert_ratio=0.9", *common[:-1],
                       "hydra.run.dir=" + str(tmp_path / "hydra2"))
    out, _ = refused.communicate(timeout=300)
    assert refused.returncode != 0 and "expert_ratio" in out
