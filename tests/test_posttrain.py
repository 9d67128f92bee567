"""Post-training on real `reach` data: feature cache, objective, resume, DDP, bad input, acceptance."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from jepa_world.data.collection import CollectConfig, collect
from jepa_world.data.feature_cache import FeatureCacheMismatchError, WindowSampler, load_or_build_feature_cache
from jepa_world.data.trajectory import TrajectoryDataset
from jepa_world.models.ac_predictor import CONDITIONINGS
from jepa_world.models.vit import build_encoder
from jepa_world.model_format import module_tensors, read_tensors, save_checkpoint
from jepa_world.training.posttrain import PosttrainConfig, load_encoder, run_posttrain
from jepa_world.training.run import read_metrics
from jepa_world.dynamics import DynamicsConfig
from jepa_world.latent_encoder import LatentConfig
from jepa_world.world_model import WorldModel

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reach_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reach") / "data"
    collect(CollectConfig(env="reach", episodes=8, episode_length=16, output_dir=str(out), workers=0,
                          env_kwargs={"image_size": 32}))
    return out


def small_config(data: Path, out: Path, **overrides) -> PosttrainConfig:
    values = dict(
        data=str(data), encoder="random:micro", output_dir=str(out), max_steps=6, batch_size=4, num_frames=4,
        rollout_steps=2, random_encoder={"patch_size": 8, "depth": 1}, predictor={"size": "micro"},
        world_model={"latent_pool": 2, "integrated_state_dims": [0, 1, 2]}, log_every=2, save_every=3,
        eval_every=6, eval_windows=16, eval_horizons=(1, 2), val_fraction=0.25, device="cpu",
        feature_cache_root=str(out.parent / "features"),
    )
    values.update(overrides)
    return PosttrainConfig(**values)


def make_world_model(seed: int = 0, img_size: int = 32, depth: int = 1) -> WorldModel:
    torch.manual_seed(seed)
    encoder = build_encoder("micro", img_size=img_size, patch_size=8, depth=depth)
    return WorldModel.create(encoder, 3, 9, LatentConfig(latent_pool=2), DynamicsConfig(integrated_state_dims=(0, 1, 2)),
                             size="micro")


def test_feature_cache_matches_fresh_encoding_and_dataset_windows(reach_data, tmp_path):
    wm = make_world_model()
    cache = load_or_build_feature_cache(wm.latent_encoder, reach_data, cache_root=tmp_path)
    again = load_or_build_feature_cache(wm.latent_encoder, reach_data, cache_root=tmp_path)  # second call reads, never re-encodes
    assert again.path == cache.path and len(list(tmp_path.iterdir())) == 1
    torch.testing.assert_close(again.latents, cache.latents, rtol=0, atol=0)
    dataset = TrajectoryDataset(reach_data, num_frames=3, frame_step=2, split="all")
    sampler = WindowSampler(cache, [e.episode_index for e in dataset.episodes], num_frames=3, frame_step=2)
    assert len(sampler) == len(dataset)
    for index in (0, len(dataset) // 2, len(dataset) - 1):
        item = dataset[index]
        z, actions, states = sampler.gather(torch.tensor([index]))
        torch.testing.assert_close(z[0], wm.encode(item["frames"]), rtol=0, atol=1e-5)
        torch.testing.assert_close(actions[0], item["actions"], rtol=0, atol=1e-6)  # merged sums agree
        torch.testing.assert_close(states[0], item["states"], rtol=0, atol=0)


def test_explicit_cache_from_another_encoder_is_an_error(reach_data, tmp_path):
    load_or_build_feature_cache(make_world_model(seed=0).latent_encoder, reach_data, cache_dir=tmp_path / "pinned")
    with pytest.raises(FeatureCacheMismatchError, match="encoder_weights: cached [0-9a-f]+ vs now [0-9a-f]+"):
        load_or_build_feature_cache(make_world_model(seed=1).latent_encoder, reach_data, cache_dir=tmp_path / "pinned")
    # the automatic location simply keys a new cache for the new encoder
    first = load_or_build_feature_cache(make_world_model(seed=0).latent_encoder, reach_data, cache_root=tmp_path / "auto")
    second = load_or_build_feature_cache(make_world_model(seed=1).latent_encoder, reach_data, cache_root=tmp_path / "auto")
    assert first.path != second.path and first.key != second.key


def test_posttrain_resumes_exactly_and_writes_a_world_model(reach_data, tmp_path):
    straight = run_posttrain(small_config(reach_data, tmp_path / "straight"))
    assert straight.steps == 6
    interrupted = small_config(reach_data, tmp_path / "split", stop_after=3)
    assert run_posttrain(interrupted).steps == 3
    assert run_posttrain(small_config(reach_data, tmp_path / "split", resume=True)).steps == 6  # resumes at 3
    a = read_tensors(tmp_path / "straight" / "checkpoints" / "last")
    b = read_tensors(tmp_path / "split" / "checkpoints" / "last")
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs between the straight and the resumed run"
    records = read_metrics(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6]
    # per-step values (the "loss" column averages since the previous log line, which a resume splits)
    losses = lambda rs: [(r["step"], r["loss_teacher"], r["loss_rollout"], r["lr"]) for r in rs]  # noqa: E731
    assert losses(records) == losses(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    assert {"val_l1_h1", "copy_last_l1_h1", "val_l1_h2"} <= set(records[-1])
    wm = WorldModel.from_pretrained(tmp_path / "straight" / "checkpoints" / "last")
    assert wm.predictor.config.action_dim == 3 and wm.predictor.config.state_dim == 9
    assert len(wm.dynamics.config.action_std) == 3 and min(wm.dynamics.config.action_std) > 0  # standardisation stored
    frames = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    z0 = wm.encode(frames)
    with torch.no_grad():
        out = wm.rollout(z0, torch.zeros(1, 9), torch.zeros(4, 3, 3))
    assert out.shape == (4, 3, z0.shape[1], z0.shape[2]) and torch.isfinite(out).all()


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_posttrain_loss_decreases(reach_data, tmp_path, conditioning):
    # an absolute (non-residual) head starts far from the targets, so learning is plain to see
    cfg = small_config(reach_data, tmp_path / "run", max_steps=30, log_every=5, save_every=30, eval_every=30,
                       predictor={"size": "micro", "predict_residual": False, "conditioning": conditioning},
                       optim={"lr": 2e-3, "warmup_steps": 3})
    run_posttrain(cfg)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert losses[-1] < 0.5 * losses[0], losses
    assert (tmp_path / "run" / "curves.png").is_file()


def test_non_finite_loss_stops_before_a_checkpoint(reach_data, tmp_path, monkeypatch):
    from jepa_world.training import posttrain
    from jepa_world.model_format import read_train_state
    from jepa_world.training.run import NonFiniteLossError

    forward = posttrain.PosttrainObjective.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        losses = forward(self, *args, **kwargs)
        if calls["n"] == 3:
            losses["total"] = losses["total"] * float("nan")
        return losses

    monkeypatch.setattr(posttrain.PosttrainObjective, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match="step 2"):
        run_posttrain(small_config(reach_data, tmp_path / "run", save_every=2, log_every=1))
    assert read_train_state(tmp_path / "run" / "checkpoints" / "last")["step"] == 2  # the NaN step never saved


def test_pretrain_checkpoint_encoder_uses_target_encoder_weights(tmp_path):
    online, target = build_encoder("micro", img_size=32, patch_size=8, depth=1), build_encoder("micro", img_size=32, patch_size=8, depth=1)
    tensors = module_tensors({"encoder": online, "target_encoder": target})
    save_checkpoint(tmp_path / "ckpt", tensors, {"model": {"encoder": target.cfg.to_dict()}, "optim": {"lr": 1.0}})
    loaded = load_encoder(str(tmp_path / "ckpt"), {}, img_size=32, seed=0)
    for key, value in target.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    save_checkpoint(tmp_path / "bare", tensors, {"optim": {"lr": 1.0}})
    with pytest.raises(Exception, match="holds no encoder config"):
        load_encoder(str(tmp_path / "bare"), {}, img_size=32, seed=0)


def test_dataset_action_dim_mismatch_names_both(reach_data, tmp_path):
    with pytest.raises(ValueError, match=r"action dim 3 .*action_dim=7"):
        run_posttrain(small_config(reach_data, tmp_path / "run", action_dim=7))


def _copy_with_nan_action(src: Path, dst: Path, episode: int) -> None:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".feature_cache"))
    for file in (dst / "data").rglob("*.parquet"):
        table = pq.read_table(file)
        if episode not in table["episode_index"].to_pylist():
            continue
        actions = np.array(table["action"].to_pylist(), dtype=np.float32)
        rows = np.flatnonzero(np.array(table["episode_index"].to_pylist()) == episode)
        actions[rows[2], 1] = np.nan
        column = pa.array(actions.tolist(), type=table.schema.field("action").type)
        pq.write_table(table.set_column(table.schema.get_field_index("action"), "action", column), file)


def test_nan_action_names_the_episode(reach_data, tmp_path):
    _copy_with_nan_action(reach_data, tmp_path / "bad", episode=5)
    with pytest.raises(ValueError, match="episode 5 has non-finite actions"):
        run_posttrain(small_config(tmp_path / "bad", tmp_path / "run"))


def test_bad_config_values_are_reported():
    with pytest.raises(ValueError, match="rollout_steps=5 needs num_frames >= 6"):
        PosttrainConfig(data="x", encoder="random:micro", num_frames=4, rollout_steps=5)
    with pytest.raises(ValueError, match="encoder='/no/such/dir'"):
        PosttrainConfig(data="x", encoder="/no/such/dir")
    with pytest.raises(ValueError, match=r"unknown posttrain config key\(s\) \['lr'\]"):
        PosttrainConfig.from_dict({"data": "x", "encoder": "random:micro", "lr": 1.0})


@pytest.mark.slow
def test_script_under_torchrun_two_processes(reach_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "scripts/posttrain.py",
           f"data={reach_data}", "encoder=random:micro", "max_steps=4", f"output_dir={out}", "batch_size=4",
           "num_frames=4", "predictor.size=micro", "+random_encoder.depth=1", "log_every=2", "save_every=4",
           "eval_every=4", "eval_horizons=[1,2]", "val_fraction=0.25", "device=cpu",
           f"feature_cache_root={tmp_path / 'features'}"]
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [2, 4]  # rank 0 writes once
    assert "held-out latent L1" in result.stdout and "terminate called" not in result.stderr
    weights = load_file(out / "checkpoints" / "last" / "model.safetensors")
    assert any(k.startswith("predictor.") for k in weights) and any(k.startswith("encoder.") for k in weights)
    WorldModel.from_pretrained(out / "checkpoints" / "last")
    saved = json.loads((out / "checkpoints" / "last" / "config.json").read_text())
    assert saved["run"]["max_steps"] == 4


@pytest.mark.slow
def test_end_to_end_under_torchrun_two_processes(reach_data, tmp_path):
    """End-to-end mode (trainable encoder + projector, SIGReg, then the critic on rank 0) under DDP."""
    out = tmp_path / "ddp_e2e"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "scripts/posttrain.py",
           f"data={reach_data}", "encoder=random:micro", "mode=end_to_end", "loss=mse", "world_model.latent=global",
           "world_model.normalize_latents=false", "world_model.latent_dim=16", "state_tokens=false", "max_steps=4",
           f"output_dir={out}", "batch_size=4", "num_frames=4", "predictor.size=micro", "+random_encoder.depth=1",
           "log_every=2", "save_every=4", "eval_every=4", "eval_horizons=[1,2]", "val_fraction=0.25", "device=cpu",
           "critic={}", "critic_steps=2", "critic_pairs=16"]
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "terminate called" not in result.stderr
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert steps[:2] == [2, 4] and steps[-1] == 6  # rank 0 writes once; 4 prediction + 2 critic steps
    model = WorldModel.from_pretrained(out / "checkpoints" / "last")
    assert model.critic is not None and model.projector is not None


def test_action_to_state_map_comes_from_the_dataset(reach_data, tmp_path):
    """collect.py records the env's robot facts in meta/info.json; posttrain reads the map from
    there unless world_model.integrated_state_dims says otherwise."""
    from jepa_world.data.lerobot import read_meta
    from jepa_world.training.posttrain import _build_world_model

    meta = read_meta(reach_data)
    assert meta.action_state_map == (0, 1, 2)
    assert meta.features["action"]["names"] == ["ee_dx", "ee_dy", "ee_dz"]
    assert meta.features["observation.state"]["names"][:3] == ["ee_x", "ee_y", "ee_z"]
    base = dict(world_model={"latent_pool": 2})
    from_data, _, _ = _build_world_model(small_config(reach_data, tmp_path / "a", **base), seed=0)
    assert from_data.dynamics.action_state_map == (0, 1, 2)
    held, _, _ = _build_world_model(small_config(reach_data, tmp_path / "b", world_model={"latent_pool": 2,
                                                                                           "integrated_state_dims": []}), 0)
    assert held.dynamics.action_state_map == ()
    no_states, _, _ = _build_world_model(small_config(reach_data, tmp_path / "c", state_tokens=False, **base), 0)
    assert no_states.dynamics.action_state_map == ()
