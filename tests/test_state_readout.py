"""State readout: trained in post-training, saved with the world model, and used by the planner to
decode the goal image's end-effector position (objective.readout_weight)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from jepa_world.data.collection import CollectConfig, collect
from jepa_world.data.feature_cache import load_or_build_feature_cache
from jepa_world.models.state_readout import StateReadout, StateReadoutConfig
from jepa_world.models.vit import build_encoder
from jepa_world.training.posttrain import PosttrainConfig, run_posttrain
from jepa_world.training.run import read_metrics
from jepa_world.latent_encoder import LatentConfig
from jepa_world.world_model import WorldModel
from planners import make_planner
from planners.agent import MPCAgent
from planners.objectives import DEFAULT_READOUT_WEIGHT, ObjectiveConfig, build_cost_fn


pytestmark = pytest.mark.usefixtures("one_thread")


def world_model(readout: bool = True, state_dim: int = 0, seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    encoder = build_encoder("micro", img_size=32, patch_size=8, depth=1)
    return WorldModel.create(encoder, 3, state_dim, LatentConfig(latent_pool=2), img_size=32, size="micro",
                             state_readout={"state_dims": [0, 1, 2]} if readout else None).eval()


def frames(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_config_and_shape_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"state_dims must be distinct non-negative ints, got \(0, 0\)"):
        StateReadoutConfig(frame_tokens=4, dim=8, state_dims=(0, 0))
    with pytest.raises(ValueError, match=r"mean/std need 2 values"):
        StateReadoutConfig(frame_tokens=4, dim=8, state_dims=(0, 1), mean=(0.0,), std=(1.0,))
    readout = StateReadout(StateReadoutConfig(frame_tokens=4, dim=8, state_dims=(0, 1)))
    with pytest.raises(ValueError, match=r"expects latents \(\.\.\., 4, 8\), got \(2, 5, 8\)"):
        readout(torch.zeros(2, 5, 8))
    with pytest.raises(ValueError, match="no state readout; post-train with state_readout.state_dims"):
        world_model(readout=False).decode_state(frames(1))
    with pytest.raises(ValueError, match=r"state readout reads \(4, 96\) latents but the encoder's 4x4 grid pooled by 1"):
        plain = world_model(readout=False)
        WorldModel(plain.latent_encoder, plain.dynamics, StateReadout(StateReadoutConfig(frame_tokens=4, dim=96, state_dims=(0,))))


def test_readout_round_trips_with_the_world_model(tmp_path):
    wm = world_model()
    wm.state_readout.set_statistics(torch.tensor([0.3, 0.0, 0.2]), torch.tensor([0.1, 0.2, 0.1]))
    wm.save_pretrained(tmp_path / "wm")
    loaded = WorldModel.from_pretrained(tmp_path / "wm")
    torch.testing.assert_close(loaded.decode_state(frames(3)), wm.decode_state(frames(3)), rtol=0, atol=0)
    assert loaded.state_readout.config.mean == pytest.approx((0.3, 0.0, 0.2))
    # a world model without a readout still saves and loads without one
    world_model(readout=False).save_pretrained(tmp_path / "plain")
    assert WorldModel.from_pretrained(tmp_path / "plain").state_readout is None


def test_objective_weight_resolves_per_model():
    assert ObjectiveConfig().resolve(world_model()).readout_weight == DEFAULT_READOUT_WEIGHT
    assert ObjectiveConfig().resolve(world_model(readout=False)).readout_weight == 0.0
    assert ObjectiveConfig(readout_weight=0.0).resolve(world_model()).readout_weight == 0.0
    with pytest.raises(ValueError, match="readout_weight=2.0 needs a world model with a state readout"):
        ObjectiveConfig(readout_weight=2.0).resolve(world_model(readout=False))
    with pytest.raises(ValueError, match="are all 0: nothing to minimise"):
        ObjectiveConfig(latent_weight=0.0, readout_weight=0.0).validate()


def test_readout_cost_is_the_distance_from_the_reached_to_the_decoded_goal_position():
    wm = world_model()
    z = wm.encode(frames(2))
    goal_ee = wm.decode_state(frames(2)[1:])  # (1, 3)
    state0 = torch.zeros(1, 9)
    state0[0, :3] = goal_ee[0] - torch.tensor([0.1, -0.05, 0.02])
    objective = ObjectiveConfig(latent_weight=0.0, readout_weight=1.0)
    with pytest.raises(ValueError, match=r"needs goal_readout = world_model.decode_state\(goal frames\) of shape \(1, 3\)"):
        build_cost_fn(wm, z[:1], state0, z[1:], objective)
    cost_fn = build_cost_fn(wm, z[:1], state0, z[1:], objective, goal_readout=goal_ee)
    actions = torch.zeros(1, 3, 2, 3)
    actions[0, 1, 0] = torch.tensor([0.05, -0.025, 0.01])  # half-way, in the first step
    actions[0, 2] = torch.tensor([0.05, -0.025, 0.01])  # all the way, over both steps
    cost = cost_fn(actions)[0]
    expected = torch.tensor([0.1, -0.05, 0.02]).norm()
    torch.testing.assert_close(cost, torch.stack([expected, expected / 2, torch.tensor(0.0)]), atol=1e-5, rtol=0)


def test_agent_with_readout_walks_to_the_decoded_goal_and_needs_proprio():
    """A stateless predictor plus a readout: the agent must read proprio from the observation and its
    plans must close the gap to the decoded goal position step after step."""
    wm = world_model(state_dim=0)
    planner = make_planner("cem", samples=128, elites=12, iterations=6)
    agent = MPCAgent(wm, planner, horizon=2, action_low=-0.05 * np.ones(3), action_high=0.05 * np.ones(3),
                     objective=ObjectiveConfig(latent_weight=0.0))
    goal_pixels = frames(1, seed=1)[0].permute(1, 2, 0).numpy()
    agent.reset(goal_pixels)
    goal_ee = wm.decode_state(frames(1, seed=1))[0].numpy()
    ee = goal_ee + np.array([0.2, -0.15, 0.1])
    pixels = frames(1, seed=2)[0].permute(1, 2, 0).numpy()
    with pytest.raises(ValueError, match="observation 0 has no 'state' key"):
        agent.act({"pixels": pixels})
    start = np.linalg.norm(ee - goal_ee)
    for _ in range(8):
        state = np.concatenate([ee, np.zeros(6)]).astype(np.float32)
        ee = ee + agent.act({"pixels": pixels, "state": state})
    assert np.linalg.norm(ee - goal_ee) < 0.1 * start


@pytest.fixture(scope="module")
def reach_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reach_readout") / "data"
    collect(CollectConfig(env="reach", episodes=40, episode_length=16, output_dir=str(out), workers=0,
                          env_kwargs={"image_size": 32}))
    return out


def test_posttrain_learns_a_readout_better_than_the_mean_and_resumes_exactly(reach_data, tmp_path):
    def config(out: Path, **overrides) -> PosttrainConfig:
        values = dict(data=str(reach_data), encoder="random:micro", output_dir=str(out), max_steps=200, batch_size=16,
                      num_frames=3, rollout_steps=2, random_encoder={"patch_size": 8, "depth": 1},
                      predictor={"size": "micro"}, state_tokens=False, world_model={"latent_pool": 1},
                      state_readout={"state_dims": [0, 1, 2]}, log_every=50, save_every=100, eval_every=200,
                      eval_windows=64, eval_horizons=(1, 2), val_fraction=0.25, device="cpu",
                      optim={"lr": 2e-3, "warmup_steps": 10}, feature_cache_root=str(tmp_path / "features"))
        return PosttrainConfig(**{**values, **overrides})

    run_posttrain(config(tmp_path / "run"))
    final = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    readout_losses = [r["loss_readout"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert readout_losses[-1] < 0.5 * readout_losses[0], readout_losses
    # Held-out frames: the readout must beat always answering the training mean by a wide margin.
    wm = WorldModel.from_pretrained(tmp_path / "run" / "checkpoints" / "last")
    mean_ee = torch.tensor(wm.state_readout.config.mean)
    cache = load_or_build_feature_cache(wm.readout_encoder(), reach_data, cache_root=tmp_path / "features")
    mean_error = (cache.states[:, :3] - mean_ee).norm(dim=-1).median().item()
    assert final["readout_err_median"] < 0.6 * mean_error, (final["readout_err_median"], mean_error)

    # Resuming with the readout restores it and its optimizer state exactly.
    run_posttrain(config(tmp_path / "split", max_steps=20, save_every=10, stop_after=10))
    run_posttrain(config(tmp_path / "split", max_steps=20, save_every=10, resume=True))
    run_posttrain(config(tmp_path / "straight", max_steps=20, save_every=10))
    a = WorldModel.from_pretrained(tmp_path / "split" / "checkpoints" / "last").state_readout.state_dict()
    b = WorldModel.from_pretrained(tmp_path / "straight" / "checkpoints" / "last").state_readout.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_readout_dims_beyond_the_dataset_state_are_an_error(reach_data, tmp_path):
    cfg = PosttrainConfig(data=str(reach_data), encoder="random:micro", output_dir=str(tmp_path / "bad"), max_steps=2,
                          batch_size=2, num_frames=3, random_encoder={"patch_size": 8, "depth": 1},
                          predictor={"size": "micro"}, state_tokens=False, world_model={"latent_pool": 2},
                          state_readout={"state_dims": [0, 12]}, device="cpu",
                          feature_cache_root=str(tmp_path / "features"))
    with pytest.raises(ValueError, match=r"state_readout.state_dims=\[0, 12\] but the dataset's states have 9 dims"):
        run_posttrain(cfg)
