"""The shipped-model recipe end to end, at toy sizes: every stage's real CLI runs and chains.

This checks plumbing (stage outputs feed the next stage, recipe.json records commands and
metrics, finished stages are skipped on a rerun, shipping writes weights + config only); the
full-size recipe's quality is measured by tests/test_shipped_model.py.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def hydra_list(key: str, overrides: list[str]) -> str:
    return f"{key}=[" + ",".join(f"'{o}'" for o in overrides) + "]"


TOY = [
    "collect.episodes=6",
    "joint_critic_episodes=8",
    "refine_episodes=10",
    hydra_list("pretrain", ["model=micro", "max_steps=4", "batch_size=4", "data.frame_step=2", "log_every=2",
                            "checkpoint_every=4"]),
    hydra_list("posttrain", ["mode=end_to_end", "loss=mse", "world_model.latent=global",
                             "world_model.normalize_latents=false", "state_tokens=false", "max_steps=6",
                             "predictor.size=micro", "num_frames=4", "batch_size=4", "eval_every=6", "eval_windows=16",
                             "log_every=2", "save_every=6"]),
    hydra_list("joint_critic", ["max_steps=4", "critic={}", "critic_offsets=log", "critic_joint_weight=1.0e-3",
                                "critic_joint_pairs=8", "critic_steps=2", "critic_pairs=32", "eval_every=4",
                                "save_every=4"]),
    hydra_list("refine", ["mode=frozen", "loss=mse", "world_model.latent=global", "world_model.normalize_latents=false",
                          "state_tokens=false", "max_steps=6", "predictor.size=micro", "num_frames=4", "batch_size=4",
                          "eval_every=6", "eval_windows=16", "log_every=2", "save_every=6", "critic={}",
                          "critic_steps=4", "critic_pairs=32"]),
    hydra_list("evaluate", ["episodes=2", "seed=1000", "num_envs=2", "max_steps=3", "planner.samples=8",
                            "planner.elites=2", "planner.iterations=2", "max_videos=1"]),
]


STAGES = ("collect", "pretrain", "posttrain", "collect_8", "joint_critic", "collect_10", "refine", "evaluate")


def run_recipe(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run([sys.executable, "scripts/train_default.py", "env=reach", f"output_dir={out}", "threads=1",
                           *TOY, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_recipe_chains_all_stages_and_ships(tmp_path):
    out, ship_dir = tmp_path / "recipe", tmp_path / "shipped"
    result = run_recipe(out, "ship=true", f"ship_dir={ship_dir}")
    assert result.returncode == 0, result.stderr[-3000:]

    record = json.loads((out / "recipe.json").read_text())
    for stage in STAGES:
        assert record[stage]["wall_s"] > 0, stage
        assert "scripts/" in record[stage]["command"]
    assert record["pretrain"]["final"]["step"] == 4
    assert record["posttrain"]["final"]["step"] == 6
    assert record["joint_critic"]["final"]["step"] == 6  # 4 joint prediction + critic steps, then 2 critic steps
    assert record["refine"]["final"]["step"] == 10  # 6 prediction steps + 4 critic steps
    assert "encoder=" + str(out / "posttrain" / "checkpoints" / "last") in record["joint_critic"]["command"]
    assert "encoder=" + str(out / "joint_critic" / "checkpoints" / "last") in record["refine"]["command"]
    # each later stage reads its own, larger collection
    assert f"data={out / 'data_8'} " in record["joint_critic"]["command"]
    assert f"data={out / 'data_10'} " in record["refine"]["command"]
    for episodes in (8, 10):
        assert json.loads((out / f"data_{episodes}" / "meta" / "info.json").read_text())["total_episodes"] == episodes
    assert record["evaluate"]["aggregated"]["n_episodes"] == 2

    assert sorted(p.name for p in ship_dir.iterdir()) == ["config.json", "model.safetensors", "recipe.json"]
    from jepa_world.world_model import WorldModel
    model = WorldModel.from_pretrained(ship_dir)
    assert model.predictor.config.frame_tokens == 1  # one global embedding per frame
    assert model.state_readout is None and model.critic is not None  # the world model plans by itself
    end_to_end = WorldModel.from_pretrained(out / "posttrain" / "checkpoints" / "last")
    joint = WorldModel.from_pretrained(out / "joint_critic" / "checkpoints" / "last")
    for name in ("encoder", "projector"):  # the frozen stage kept the joint stage's latent encoder, which trained on
        ours, joints, theirs = (getattr(m, name).state_dict() for m in (model, joint, end_to_end))
        assert all(ours[k].equal(joints[k]) for k in ours), name
        assert not all(ours[k].equal(theirs[k]) for k in ours), name
    assert set(record["evaluate"]["protocols"]) == {"anywhere", "near"}
    assert record["evaluate"]["aggregated"]["n_episodes"] == 2

    # A rerun into the same output_dir skips every finished stage instead of redoing it.
    rerun = run_recipe(out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    first, record = record, json.loads((out / "recipe.json").read_text())
    assert all(record[s].get("skipped") for s in STAGES)
    # ... and keeps the stage times measured when they ran, so the recipe's total stays its real cost.
    assert [record[s]["wall_s"] for s in STAGES] == [first[s]["wall_s"] for s in STAGES]
    assert record["total_wall_s"] == first["total_wall_s"] == round(sum(first[s]["wall_s"] for s in STAGES), 1)
