"""`reacher`: gymnasium's Reacher-v5 with pixel observations and a goal image.

The dynamics, actions (joint torques in [-1, 1]^2) and initial-state distribution are Reacher-v5's
own: the adapter drives a real `gymnasium.envs.mujoco.reacher_v5.ReacherEnv`. What it changes:
- Observations are `{"pixels", "state"}`, rendered top-down by one reusable renderer.
- Reacher's red target sphere is made fully transparent (alpha 0) in every render, so the goal
  exists only as the goal image; its simulator body still sits at the goal, so Reacher's own
  reward (in `info["reacher_reward"]`) stays meaningful.
- The two links and the fingertip are drawn 2x thicker so the pose is visible at 64 px (visual
  only: geom sizes do not change masses, which MuJoCo computed when compiling the model).
Goal: joint angles sampled uniformly (shoulder any angle, elbow in [-2.5, 2.5] rad); the goal image
is a render of the arm at that pose. Goal state: {"env": "reacher", "qpos": [q0, q1] (rad),
"fingertip": [x, y] (m)}. Success: fingertip within 0.02 m (10% of the arm's 0.21 m reach) of the
goal fingertip. Note Reacher has two arm poses (elbow left/right) per fingertip position; success
only asks for the fingertip position.
State layout (float32, 7): fingertip xyz (m), joint angles (rad), joint velocities (rad/s).
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv

from envs.base import GoalImageEnv, goal_vector

ELBOW_LIMIT = 2.5  # rad, goal elbow angles stay inside Reacher's +-3.0 joint range
EXPERT_KP = 4.0
EXPERT_KD = 0.6


def top_down_camera() -> mujoco.MjvCamera:
    camera = mujoco.MjvCamera()
    camera.type = mujoco.mjtCamera.mjCAMERA_FREE
    camera.lookat[:] = (0.0, 0.0, 0.0)
    camera.distance = 0.6  # +-0.25 m visible: the whole 0.21 m reach with a margin
    camera.elevation = -90.0
    camera.azimuth = 90.0
    return camera


class ReacherPixelsEnv(GoalImageEnv):
    env_name = "reacher"
    success_threshold = 0.02
    state_names = ("fingertip_x", "fingertip_y", "fingertip_z", "q0", "q1", "qd0", "qd1")
    action_names = ("torque0", "torque1")  # torques: no state dim is displaced by an action
    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, image_size: int = 64, render_mode: str | None = None, **kwargs) -> None:
        self._reacher = ReacherEnv()  # the real Reacher-v5 dynamics and reward
        model = self._reacher.model
        target = model.geom("target").id
        model.geom_rgba[target, 3] = 0.0
        for name in ("link0", "link1", "fingertip"):
            model.geom_size[model.geom(name).id, 0] *= 2.0
        super().__init__(
            model,
            state_dim=7,
            action_low=self._reacher.action_space.low,
            action_high=self._reacher.action_space.high,
            image_size=image_size,
            camera=top_down_camera(),
            render_mode=render_mode,
            **kwargs,
        )
        self.data = self._reacher.data
        self._arm_qpos = np.array([model.joint(n).qposadr[0] for n in ("joint0", "joint1")])
        self._target_qpos = np.array([model.joint(n).qposadr[0] for n in ("target_x", "target_y")])
        self._fingertip = model.body("fingertip").id
        self._reacher_reward = 0.0

    def fingertip_position(self) -> np.ndarray:
        return self.data.xpos[self._fingertip].copy()

    def _fingertip_at(self, q: np.ndarray) -> np.ndarray:
        self._scratch.qpos[self._arm_qpos] = q
        mujoco.mj_kinematics(self.model, self._scratch)
        return self._scratch.xpos[self._fingertip, :2].copy()

    def _sample_goal(self, rng: np.random.Generator) -> dict[str, Any]:
        q = rng.uniform([-np.pi, -ELBOW_LIMIT], [np.pi, ELBOW_LIMIT])
        return {"env": self.env_name, "qpos": q.tolist(), "fingertip": self._fingertip_at(q).tolist()}

    def _validate_goal_state(self, state: dict[str, Any]) -> dict[str, Any]:
        q = goal_vector(state, "qpos", 2, self.env_name)
        if abs(q[1]) > 3.0:
            raise ValueError(f"reacher goal elbow angle {q[1]} is outside Reacher's joint range [-3, 3] rad")
        tip = self._fingertip_at(q)
        if "fingertip" in state and np.linalg.norm(goal_vector(state, "fingertip", 2, self.env_name) - tip) > 1e-4:
            raise ValueError(f"reacher goal 'fingertip' {state['fingertip']} does not match 'qpos' (expected {tip.tolist()})")
        return {"env": self.env_name, "qpos": q.tolist(), "fingertip": tip.tolist()}

    def _render_goal(self, goal: dict[str, Any]) -> np.ndarray:
        self._scratch.qpos[:] = 0.0
        self._scratch.qpos[self._arm_qpos] = goal["qpos"]
        self._scratch.qpos[self._target_qpos] = goal["fingertip"]
        mujoco.mj_forward(self.model, self._scratch)
        return self._render_data(self._scratch)

    def _goal_proprio(self, goal: dict[str, Any]) -> np.ndarray:
        self._scratch.qpos[self._arm_qpos] = goal["qpos"]
        mujoco.mj_kinematics(self.model, self._scratch)
        return np.concatenate([self._scratch.xpos[self._fingertip], goal["qpos"], np.zeros(2)])

    def _sample_initial_state(self, rng: np.random.Generator) -> None:
        # Reacher-v5's own reset distribution, drawn from this env's seeded generator.
        r = self._reacher
        qpos = r.init_qpos + rng.uniform(-0.1, 0.1, size=self.model.nq)
        qvel = r.init_qvel + rng.uniform(-0.005, 0.005, size=self.model.nv)
        qvel[-2:] = 0.0
        # Reacher's target body marks the goal for its reward; it is invisible in renders.
        qpos[self._target_qpos] = self._goal["fingertip"] if self._goal is not None else 0.0
        r.set_state(qpos, qvel)

    def _apply_action(self, action: np.ndarray) -> None:
        _, self._reacher_reward, _, _, _ = self._reacher.step(action.astype(np.float32))

    def _info(self, action_excess: float) -> dict[str, Any]:
        return {**super()._info(action_excess), "reacher_reward": float(self._reacher_reward)}

    def _state(self) -> np.ndarray:
        return np.concatenate([self.fingertip_position(), self.data.qpos[self._arm_qpos], self.data.qvel[:2]])

    def _distance(self, goal: dict[str, Any]) -> float:
        return float(np.linalg.norm(self.fingertip_position()[:2] - np.asarray(goal["fingertip"])))

    def expert_action(self) -> np.ndarray:
        """Scripted expert: joint-space PD control towards the goal pose (shoulder error wrapped)."""
        if self._goal is None:
            raise RuntimeError("expert_action needs a goal state; this env has only a goal image")
        q = self.data.qpos[self._arm_qpos]
        error = np.asarray(self._goal["qpos"]) - q
        error[0] = (error[0] + np.pi) % (2 * np.pi) - np.pi
        torque = EXPERT_KP * error - EXPERT_KD * self.data.qvel[:2]
        return np.clip(torque, -1.0, 1.0).astype(np.float32)

    def close(self) -> None:
        super().close()
        self._reacher.close()
