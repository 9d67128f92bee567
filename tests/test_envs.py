"""Acceptance tests for envs/: gymnasium compliance, determinism, experts, goal images, bad input."""

from __future__ import annotations

import importlib.util

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs

HAS_METAWORLD = importlib.util.find_spec("metaworld") is not None
OWN_ENVS = ("reach", "push", "reacher")


def env_names() -> list:
    skip_metaworld = pytest.mark.skip("metaworld extra not installed")
    return [pytest.param(name, marks=() if name != "metaworld-reach" or HAS_METAWORLD else skip_metaworld)
            for name in envs.ENV_NAMES]


def run_episodes(name: str, episodes: int, policy: str, stop_at_success: bool = False) -> float:
    """Fraction of seeded episodes (seeds 0..episodes-1) that end in success; with stop_at_success,
    that reach success at any step."""
    env = envs.make(name, terminate_on_success=stop_at_success)
    rng = np.random.default_rng(123)
    successes = 0
    for seed in range(episodes):
        env.reset(seed=seed)
        truncated = terminated = False
        while not (terminated or truncated):
            if policy == "expert":
                action = env.unwrapped.expert_action()
            else:
                action = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
            _, _, terminated, truncated, info = env.step(action)
        successes += bool(info["is_success"])
    env.close()
    return successes / episodes


@pytest.mark.parametrize("name", env_names())
def test_check_env_passes(name):
    env = envs.make(name)
    check_env(env.unwrapped, skip_render_check=False)
    env.close()


@pytest.mark.parametrize("name", env_names())
def test_gym_id_builds_with_time_limit(name):
    spec = envs.ENV_SPECS[name]
    env = gym.make(spec.gym_id)
    assert env.spec.max_episode_steps == spec.max_episode_steps
    assert envs.make(spec.gym_id).unwrapped.env_name == env.unwrapped.env_name
    env.close()


def test_unknown_env_lists_available_names():
    with pytest.raises(ValueError) as err:
        envs.make("rech")
    for name in envs.ENV_NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", OWN_ENVS)
def test_same_seed_same_observations(name):
    first, second = envs.make(name), envs.make(name)
    actions = np.random.default_rng(0).uniform(first.action_space.low, first.action_space.high, (5, first.action_space.shape[0]))
    streams = []
    for env in (first, second):
        obs, _ = env.reset(seed=11)
        stream = [obs]
        for action in actions:
            stream.append(env.step(action.astype(np.float32))[0])
        streams.append(stream)
    for a, b in zip(*streams):
        np.testing.assert_array_equal(a["pixels"], b["pixels"])
        np.testing.assert_array_equal(a["state"], b["state"])
    np.testing.assert_array_equal(first.unwrapped.goal_image(), second.unwrapped.goal_image())
    other, _ = first.reset(seed=12)
    assert not np.array_equal(other["pixels"], streams[0][0]["pixels"])
    # Actions move the robot: the observed state changes within the episode.
    assert np.abs(streams[0][-1]["state"] - streams[0][0]["state"]).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name,rate", [("reach", 0.95), ("push", 0.8), ("reacher", 0.95)])
def test_expert_succeeds_on_50_seeded_episodes_and_random_rarely(name, rate):
    expert = run_episodes(name, 50, "expert")  # success judged at the last step of the full episode
    assert expert >= rate, f"{name} expert success {expert:.2f} < {rate}"
    random = run_episodes(name, 20, "random", stop_at_success=True)  # success at any step counts
    assert random <= 0.2, f"{name} random-action success {random:.2f} is not rare"


@pytest.mark.parametrize("name", OWN_ENVS)
def test_expert_solves_a_few_episodes(name):
    assert run_episodes(name, 4, "expert") == 1.0


@pytest.mark.parametrize("name", OWN_ENVS)
def test_out_of_bounds_action_is_clipped_and_reported(name):
    env, reference = envs.make(name), envs.make(name)
    env.reset(seed=3)
    reference.reset(seed=3)
    high = env.action_space.high
    obs, _, _, _, info = env.step(3.0 * high)
    ref_obs, _, _, _, ref_info = reference.step(high)
    assert info["action_clipped"] is True and not ref_info["action_clipped"]
    assert info["action_excess"] == pytest.approx(2.0 * float(high.max()), rel=1e-5)
    np.testing.assert_array_equal(obs["state"], ref_obs["state"])
    np.testing.assert_array_equal(obs["pixels"], ref_obs["pixels"])


@pytest.mark.parametrize("bad", [np.zeros(7), np.array([np.nan, 0.0, 0.0])])
def test_malformed_action_raises(bad):
    env = envs.make("reach", disable_env_checker=True)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must"):
        env.step(bad)


def place_at_goal(env) -> None:
    """Set the simulator to the goal scene (at rest) without using the env's own goal renderer."""
    u = env.unwrapped
    goal = u.goal_state()
    if u.env_name == "reach":
        u.data.qpos[u.kin.qpos_ids] = goal["qpos"]
    elif u.env_name == "push":
        u.data.qpos[u.kin.qpos_ids] = goal["arm_qpos"]
        u.data.qpos[u._block_qpos] = goal["block_xy"]
    else:
        u.data.qpos[u._arm_qpos] = goal["qpos"]
    u.data.qvel[:] = 0.0
    mujoco.mj_forward(u.model, u.data)


@pytest.mark.parametrize("name", OWN_ENVS)
def test_rendering_at_goal_state_reproduces_goal_image(name):
    env = envs.make(name)
    obs, _ = env.reset(seed=5)
    goal_image = env.unwrapped.goal_image()
    assert np.abs(goal_image.astype(int) - obs["pixels"]).sum() > 0  # the task is not solved at the start
    place_at_goal(env)
    np.testing.assert_array_equal(env.unwrapped.render(), goal_image)
    assert env.unwrapped.is_success() is True and env.unwrapped.distance_to_goal() < 1e-6
    np.testing.assert_allclose(env.unwrapped._state(), env.unwrapped.goal_proprio(), atol=1e-6)


def test_goal_image_has_no_marker_and_shows_the_arm_pose():
    env = envs.make("reach")
    env.reset(seed=0)
    u = env.unwrapped
    base = u.set_goal(seed=1)
    image = u.goal_image()
    # A different goal pose changes the image (the arm, not a marker, carries the goal) ...
    u.set_goal(seed=2)
    assert np.abs(u.goal_image().astype(int) - image).max() > 50
    # ... and a pose whose fingertip is one success radius away is visible at 64 px.
    q = np.array(base["qpos"])
    direction = np.array([0.0, 0.0, 1.0])
    target = np.array(base["ee"]) + u.success_threshold * direction
    q_near = u.kin.inverse(target, q, iters=200)
    assert np.linalg.norm(u.kin.forward(q_near) - target) < 1e-3
    u.set_goal(state={"qpos": q_near.tolist()})
    changed = (np.abs(u.goal_image().astype(int) - image).max(-1) > 30).sum()
    assert changed >= 10, f"a {u.success_threshold} m move changes only {changed} pixels at 64 px"


def test_reach_goal_pose_is_unique():
    """IK from many starting poses that reaches a goal position always lands on the goal's joint angles."""
    env = envs.make("reach")
    u = env.unwrapped
    rng = np.random.default_rng(0)
    for seed in range(5):
        goal = u.set_goal(seed=seed)
        converged = 0
        for _ in range(20):
            q0 = rng.uniform(u.kin.low, u.kin.high)
            q = u.kin.inverse(np.array(goal["ee"]), q0, iters=300)
            if np.linalg.norm(u.kin.forward(q) - goal["ee"]) < 1e-5:
                converged += 1
                np.testing.assert_allclose(q, goal["qpos"], atol=1e-3)
        assert converged >= 5


def test_reset_options_and_goal_round_trip():
    env = envs.make("push")
    u = env.unwrapped
    state = u.set_goal(seed=9)
    image = u.goal_image()
    env.reset(seed=0, options={"goal_seed": 9})
    assert u.goal_state() == state
    np.testing.assert_array_equal(u.goal_image(), image)
    env.reset(seed=1)
    assert u.goal_state() != state
    env.reset(seed=2, options={"goal_state": state})
    np.testing.assert_array_equal(u.goal_image(), image)
    env.reset(seed=3, options={"keep_goal": True})
    assert u.goal_state() == state
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(seed=0, options={"goal": 1})


@pytest.mark.parametrize(
    "state,match",
    [({"env": "reach", "qpos": [0, 0, 0]}, "not 'push'"), ({"arm_qpos": [0, 0, 0]}, "missing key 'block_xy'"),
     ({"block_xy": [0.3]}, "block_xy"), ({"block_xy": [3.0, 0.0]}, "off the table")],
)
def test_bad_goal_state_raises(state, match):
    env = envs.make("push")
    with pytest.raises(ValueError, match=match):
        env.unwrapped.set_goal(state=state)


def test_reach_goal_outside_joint_limits_raises():
    env = envs.make("reach")
    with pytest.raises(ValueError, match="joint limits"):
        env.unwrapped.set_goal(state={"qpos": [0.0, 0.5, -1.0]})


def test_image_size_and_close():
    env = envs.make("reach", image_size=224)
    obs, _ = env.reset(seed=0)
    assert obs["pixels"].shape == (224, 224, 3) and env.unwrapped.goal_image().shape == (224, 224, 3)
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.unwrapped.render()
    with pytest.raises(ValueError, match="image_size"):
        envs.make("reach", image_size=8)


def test_image_only_goal_reports_unknown_success():
    env = envs.make("reach")
    env.reset(seed=0)
    u = env.unwrapped
    u.set_goal_image(u.goal_image())
    _, reward, _, _, info = env.step(np.zeros(3, np.float32))
    assert info["is_success"] is None and np.isnan(info["distance"]) and reward == 0.0
    with pytest.raises(RuntimeError, match="goal state"):
        u.expert_action()
    with pytest.raises(ValueError, match="uint8"):
        u.set_goal_image(np.zeros((32, 32, 3), np.uint8))


@pytest.mark.skipif(HAS_METAWORLD, reason="metaworld is installed")
def test_metaworld_missing_names_the_extra():
    with pytest.raises(ImportError, match=r"\[metaworld\]"):
        envs.make("metaworld-reach")
