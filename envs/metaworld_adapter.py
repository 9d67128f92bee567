"""`metaworld-reach`: Metaworld `reach-v3` (Sawyer arm) with pixels and an expert-made goal image.

Optional: needs the `[metaworld]` extra (`pip install "jepa-world[metaworld]"`). Metaworld 3.1 pins
mujoco 3.3.0, so installing the extra downgrades MuJoCo from 4.x; see docs/envs.md.

Protocol (JEPA-WMs): the goal image is the final frame of Metaworld's scripted expert
(`SawyerReachV3Policy`) run for EXPERT_STEPS from the same initial state as the episode. The scene's
goal marker (site "goal") is made transparent, so the goal exists only as that image. Success is
Metaworld's own: the gripper centre within 0.05 m of the task's target position.
Goal state: {"env": "metaworld-reach", "target": [x, y, z], "qpos": [...], "qvel": [...],
"mocap_pos": [x, y, z], "mocap_quat": [w, x, y, z]} (the final expert state, which renders the goal image).
Actions (4): Metaworld's hand displacement xyz and gripper effort, each in [-1, 1].
State layout (float32, 4): gripper centre xyz (m), gripper opening in [0, 1].
"""

from __future__ import annotations

import logging
from typing import Any

import mujoco
import numpy as np

from envs.base import GoalImageEnv, goal_vector

log = logging.getLogger(__name__)

EXPERT_STEPS = 100
MISSING_EXTRA = (
    "env 'metaworld-reach' needs the optional Metaworld package: pip install 'jepa-world[metaworld]' "
    "(metaworld>=3.0; note that metaworld 3.1 pins mujoco==3.3.0)"
)


def _build_sawyer_reach(render_mode: None = None):
    try:
        from metaworld.envs.sawyer_reach_v3 import SawyerReachEnvV3
        from metaworld.policies import SawyerReachV3Policy
    except ImportError as err:
        raise ImportError(MISSING_EXTRA) from err

    class SawyerReach(SawyerReachEnvV3):
        def reset_mocap_welds(self) -> None:
            # Metaworld writes 11 weld parameters; MuJoCo >= 3.4 stores 12 per equality (one more
            # after torquescale). Write Metaworld's 11 and keep MuJoCo's compiled value for the rest.
            if self.model.nmocap == 0:
                return
            for i in range(self.model.neq):
                if self.model.eq_type[i] == mujoco.mjtEq.mjEQ_WELD:
                    self.model.eq_data[i, :11] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 5.0)

    sawyer = SawyerReach(render_mode=render_mode)
    # The "goal observable" setup of Metaworld's own benchmark envs: seeded goals, goal in the obs
    # (the scripted expert reads it there), no set_task needed.
    sawyer._partially_observable = False
    sawyer._freeze_rand_vec = False
    sawyer.seeded_rand_vec = True
    sawyer._set_task_called = True
    sawyer.__dict__.pop("sawyer_observation_space", None)  # cached property depends on observability
    return sawyer, SawyerReachV3Policy()


class MetaworldReachEnv(GoalImageEnv):
    env_name = "metaworld-reach"
    success_threshold = 0.05  # Metaworld's reach TARGET_RADIUS
    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(self, image_size: int = 64, render_mode: str | None = None, camera: str = "corner2", **kwargs) -> None:
        self._sawyer, self._policy = _build_sawyer_reach()
        model = self._sawyer.model
        model.site_rgba[model.site("goal").id, 3] = 0.0  # the goal lives only in the goal image
        super().__init__(
            model,
            state_dim=4,
            action_low=self._sawyer.action_space.low,
            action_high=self._sawyer.action_space.high,
            image_size=image_size,
            camera=camera,
            render_mode=render_mode,
            **kwargs,
        )
        self.data = self._sawyer.data
        self._mocap = model.body_mocapid[model.body("mocap").id]
        self._sawyer_obs: np.ndarray | None = None
        self._episode_seed: int | None = None

    def _render_data(self, data: mujoco.MjData) -> np.ndarray:
        # Metaworld's corner cameras are rolled 180 degrees (its XML euler angles); turn the image upright.
        return np.ascontiguousarray(super()._render_data(data)[::-1, ::-1])

    # Metaworld draws the initial state and the target together from one seed.
    def _reset_sawyer(self, seed: int) -> np.ndarray:
        self._sawyer.seed(seed)
        obs, _ = self._sawyer.reset()
        return obs

    def _expert_final_state(self, seed: int) -> dict[str, Any]:
        """Run the scripted expert from the initial state of `seed`; return the final state."""
        obs = self._reset_sawyer(seed)
        for _ in range(EXPERT_STEPS):
            obs, *_ = self._sawyer.step(self._policy.get_action(obs))
        return {
            "env": self.env_name,
            "target": np.asarray(self._sawyer._target_pos, float).tolist(),
            "qpos": self.data.qpos.tolist(),
            "qvel": self.data.qvel.tolist(),
            "mocap_pos": self.data.mocap_pos[self._mocap].tolist(),
            "mocap_quat": self.data.mocap_quat[self._mocap].tolist(),
        }

    def _sample_goal(self, rng: np.random.Generator) -> dict[str, Any]:
        self._episode_seed = int(rng.integers(2**31))
        return self._expert_final_state(self._episode_seed)

    def set_goal(self, seed: int | None = None, state: dict[str, Any] | None = None) -> dict[str, Any]:
        """Goal of `seed`'s episode (its expert's final frame), or a saved goal `state`. The current
        episode keeps its state and is judged against the new target."""
        if state is not None:
            self._episode_seed = None  # a restored goal does not fix the next episode's start
        saved = mujoco.MjData(self.model)
        mujoco.mj_copyData(saved, self.model, self.data)
        goal = super().set_goal(seed=seed, state=state)
        mujoco.mj_copyData(self.data, self.model, saved)
        self._set_target(np.asarray(goal["target"]))
        return goal

    def _set_target(self, target: np.ndarray) -> None:
        self._sawyer._target_pos = target.copy()
        self.model.site("goal").pos = target
        mujoco.mj_forward(self.model, self.data)
        self._sawyer_obs = self._sawyer._get_obs() if self._sawyer_obs is not None else None

    def _validate_goal_state(self, state: dict[str, Any]) -> dict[str, Any]:
        goal = {"env": self.env_name}
        for key, size in (("target", 3), ("qpos", self.model.nq), ("qvel", self.model.nv), ("mocap_pos", 3), ("mocap_quat", 4)):
            goal[key] = goal_vector(state, key, size, self.env_name).tolist()
        return goal

    def _render_goal(self, goal: dict[str, Any]) -> np.ndarray:
        self._scratch.qpos[:] = goal["qpos"]
        self._scratch.qvel[:] = goal["qvel"]
        self._scratch.mocap_pos[self._mocap] = goal["mocap_pos"]
        self._scratch.mocap_quat[self._mocap] = goal["mocap_quat"]
        mujoco.mj_forward(self.model, self._scratch)
        return self._render_data(self._scratch)

    def _goal_proprio(self, goal: dict[str, Any]) -> np.ndarray:
        self._scratch.qpos[:] = goal["qpos"]
        mujoco.mj_kinematics(self.model, self._scratch)
        return self._proprio(self._scratch)

    def _sample_initial_state(self, rng: np.random.Generator) -> None:
        # The goal was sampled first (base reset); a goal restored from a state or an image gets a
        # fresh episode seed here.
        if self._episode_seed is None:
            self._episode_seed = int(rng.integers(2**31))
        self._sawyer_obs = self._reset_sawyer(self._episode_seed)
        self._episode_seed = None
        if self._goal is not None:
            self._set_target(np.asarray(self._goal["target"]))

    def _apply_action(self, action: np.ndarray) -> None:
        self._sawyer_obs, *_ = self._sawyer.step(action.astype(np.float32))

    def _proprio(self, data: mujoco.MjData) -> np.ndarray:
        right, left = data.site("rightEndEffector").xpos, data.site("leftEndEffector").xpos
        opening = np.clip(np.linalg.norm(data.body("rightclaw").xpos - data.body("leftclaw").xpos) / 0.1, 0.0, 1.0)
        return np.concatenate([(right + left) / 2.0, [opening]])

    def _state(self) -> np.ndarray:
        return self._proprio(self.data)

    def _distance(self, goal: dict[str, Any]) -> float:
        return float(np.linalg.norm(self._sawyer.tcp_center - np.asarray(goal["target"])))

    def expert_action(self) -> np.ndarray:
        """Metaworld's scripted SawyerReachV3Policy on the current observation."""
        if self._goal is None:
            raise RuntimeError("expert_action needs a goal state; this env has only a goal image")
        return np.clip(self._policy.get_action(self._sawyer_obs), -1.0, 1.0).astype(np.float32)

    def close(self) -> None:
        super().close()
        self._sawyer.close()
