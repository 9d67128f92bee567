"""`reach`: move the arm's fingertip to a goal position shown only as a goal image.

Goal: joint angles sampled within GOAL_LOW/HIGH_DEG (so the goal is reachable and, by the arm's
joint limits, maps to exactly one pose), end effector at least 0.08 m above the table and 0.2 m from
the base axis. The goal image is a render of the arm at that pose; the scene has no goal marker.
Goal state: {"env": "reach", "qpos": [yaw, shoulder, elbow] (rad), "ee": [x, y, z] (m)}.
Success: fingertip within SUCCESS_THRESHOLD (0.05 m, about 8% of the arm's reach) of the goal.
Initial pose: sampled the same way, at least MIN_START_DISTANCE from the goal.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.arm import MAX_STEP, ArmEnv
from envs.base import goal_vector

GOAL_LOW_DEG = (-70.0, 5.0, 20.0)
GOAL_HIGH_DEG = (70.0, 80.0, 120.0)
MIN_START_DISTANCE = 0.15
EXPERT_JOINT_SPACE_ABOVE = 0.1  # beyond this distance the expert follows the joint-space path


class ReachEnv(ArmEnv):
    env_name = "reach"
    success_threshold = 0.05

    def __init__(self, image_size: int = 64, render_mode: str | None = None, **kwargs) -> None:
        super().__init__("reach.xml", image_size=image_size, render_mode=render_mode, **kwargs)

    def _sample_goal(self, rng: np.random.Generator) -> dict[str, Any]:
        q, ee = self._sample_arm(rng, GOAL_LOW_DEG, GOAL_HIGH_DEG, min_height=0.08, min_radius=0.2)
        return {"env": self.env_name, "qpos": q.tolist(), "ee": ee.tolist()}

    def _validate_goal_state(self, state: dict[str, Any]) -> dict[str, Any]:
        q = goal_vector(state, "qpos", 3, self.env_name)
        if np.any(q < self.kin.low - 1e-9) or np.any(q > self.kin.high + 1e-9):
            raise ValueError(
                f"reach goal qpos {q.tolist()} is outside the joint limits "
                f"{self.kin.low.tolist()} .. {self.kin.high.tolist()} (rad)"
            )
        ee = self.kin.forward(q)
        if "ee" in state and np.linalg.norm(goal_vector(state, "ee", 3, self.env_name) - ee) > 1e-4:
            raise ValueError(f"reach goal 'ee' {state['ee']} does not match forward kinematics of 'qpos' {ee.tolist()}")
        return {"env": self.env_name, "qpos": q.tolist(), "ee": ee.tolist()}

    def goal_state_from_current(self) -> dict[str, Any]:
        # Servoed joints can overshoot a limit by a hair; the goal pose is the nearest pose within them.
        q = np.clip(self.arm_qpos(), self.kin.low, self.kin.high)
        return self._validate_goal_state({"env": self.env_name, "qpos": q.tolist()})

    def _render_goal(self, goal: dict[str, Any]) -> np.ndarray:
        qpos = np.zeros(self.model.nq)
        qpos[self.kin.qpos_ids] = goal["qpos"]
        return self._render_scene(qpos)

    def _goal_proprio(self, goal: dict[str, Any]) -> np.ndarray:
        return self._arm_proprio(goal["qpos"])

    def _sample_initial_state(self, rng: np.random.Generator) -> None:
        goal_ee = np.asarray(self._goal["ee"]) if self._goal is not None else None
        while True:
            q, ee = self._sample_arm(rng, GOAL_LOW_DEG, GOAL_HIGH_DEG, min_height=0.08, min_radius=0.2)
            if goal_ee is None or np.linalg.norm(ee - goal_ee) >= MIN_START_DISTANCE:
                break
        self._set_arm(q)

    def _distance(self, goal: dict[str, Any]) -> float:
        return float(np.linalg.norm(self.ee_position() - np.asarray(goal["ee"])))

    def expert_action(self) -> np.ndarray:
        """Scripted expert: far from the goal, step along the straight joint-space path to the goal
        pose (always reachable, unlike the Cartesian line); near it, step straight to the goal."""
        if self._goal is None:
            raise RuntimeError("expert_action needs a goal state; this env has only a goal image")
        ee = self.ee_position()
        delta = np.asarray(self._goal["ee"]) - ee
        if np.linalg.norm(delta) > EXPERT_JOINT_SPACE_ABOVE:
            q = self.arm_qpos()
            dq = np.asarray(self._goal["qpos"]) - q
            fraction = min(1.0, 0.25 / max(np.abs(dq).max(), 1e-9))  # <= 0.25 rad per joint
            delta = self.kin.forward(q + fraction * dq) - ee
        scale = max(1.0, np.abs(delta).max() / MAX_STEP)  # keep the direction when limiting the step
        return (delta / scale).astype(np.float32)
