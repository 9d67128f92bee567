"""`push`: the reach arm pushes a block (a yellow puck, radius 0.04 m) to a goal position on the table.

The block slides on the table plane (x/y slide joints with friction loss and damping, no rotation),
so the goal is a 2-D block position. Goal image: the block at the goal and the arm in the fixed
retracted HOME pose, folded back over its base, so the image says where the block must go and
nothing about how the arm gets there. Goal state: {"env": "push", "block_xy": [x, y] (m),
"arm_qpos": HOME (rad)}. Success: block centre within SUCCESS_THRESHOLD (0.05 m) of the goal.
Initial state: block and goal uniform in BLOCK_LOW/HIGH at least MIN_PUSH_DISTANCE apart, arm at a
random pose with the fingertip at least 0.12 m above the table (clear of the block).
State is the arm's proprioception only (envs/arm.py); the block is seen in the pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.arm import MAX_STEP, WORKSPACE_LOW, ArmEnv
from envs.base import goal_vector

HOME_QPOS = np.deg2rad([0.0, -25.0, 150.0])  # retracted over the base, out of the block's region
BLOCK_LOW = np.array([0.22, -0.2])
BLOCK_HIGH = np.array([0.42, 0.2])  # behind-the-block points stay reachable at table height
TABLE_LOW = np.array([-0.25, -0.5])  # table top extent (envs/assets/arm_scene.xml)
TABLE_HIGH = np.array([0.85, 0.5])
MIN_PUSH_DISTANCE = 0.12
ARM_START_LOW_DEG = (-70.0, 0.0, 20.0)
ARM_START_HIGH_DEG = (70.0, 70.0, 110.0)

BLOCK_RADIUS = 0.04
TIP_RADIUS = 0.032
CONTACT = BLOCK_RADIUS + TIP_RADIUS  # centre distance when the fingertip touches the block
PUSH_Z = WORKSPACE_LOW[2]  # fingertip height while pushing: mid-height of the block
SAFE_Z = 0.13  # fingertip height while moving around the block


class PushEnv(ArmEnv):
    env_name = "push"
    success_threshold = 0.05

    def __init__(self, image_size: int = 64, render_mode: str | None = None, **kwargs) -> None:
        super().__init__("push.xml", image_size=image_size, render_mode=render_mode, **kwargs)
        self._block_qpos = np.array([self.model.joint(n).qposadr[0] for n in ("block_x", "block_y")])
        self._block_dof = np.array([self.model.joint(n).dofadr[0] for n in ("block_x", "block_y")])

    def block_position(self) -> np.ndarray:
        """Block centre (x, y) in metres."""
        return self.data.qpos[self._block_qpos].copy()

    def _sample_goal(self, rng: np.random.Generator) -> dict[str, Any]:
        xy = rng.uniform(BLOCK_LOW, BLOCK_HIGH)
        return {"env": self.env_name, "block_xy": xy.tolist(), "arm_qpos": HOME_QPOS.tolist()}

    def _validate_goal_state(self, state: dict[str, Any]) -> dict[str, Any]:
        xy = goal_vector(state, "block_xy", 2, self.env_name)
        arm = goal_vector(state, "arm_qpos", 3, self.env_name) if "arm_qpos" in state else HOME_QPOS
        if np.any(xy < TABLE_LOW) or np.any(xy > TABLE_HIGH):
            raise ValueError(
                f"push goal block_xy {xy.tolist()} is off the table (x in [{TABLE_LOW[0]}, {TABLE_HIGH[0]}], "
                f"y in [{TABLE_LOW[1]}, {TABLE_HIGH[1]}])"
            )
        return {"env": self.env_name, "block_xy": xy.tolist(), "arm_qpos": arm.tolist()}

    def goal_state_from_current(self) -> dict[str, Any]:
        return self._validate_goal_state({"env": self.env_name, "block_xy": self.block_position()[:2].tolist()})

    def _render_goal(self, goal: dict[str, Any]) -> np.ndarray:
        qpos = np.zeros(self.model.nq)
        qpos[self.kin.qpos_ids] = goal["arm_qpos"]
        qpos[self._block_qpos] = goal["block_xy"]
        return self._render_scene(qpos)

    def _goal_proprio(self, goal: dict[str, Any]) -> np.ndarray:
        return self._arm_proprio(goal["arm_qpos"])

    def _sample_initial_state(self, rng: np.random.Generator) -> None:
        goal_xy = np.asarray(self._goal["block_xy"]) if self._goal is not None else None
        while True:
            block = rng.uniform(BLOCK_LOW, BLOCK_HIGH)
            if goal_xy is None or np.linalg.norm(block - goal_xy) >= MIN_PUSH_DISTANCE:
                break
        q, _ = self._sample_arm(rng, ARM_START_LOW_DEG, ARM_START_HIGH_DEG, min_height=0.12, min_radius=0.15)
        self._set_arm(q)
        self.data.qpos[self._block_qpos] = block
        self.data.qvel[self._block_dof] = 0.0

    def _distance(self, goal: dict[str, Any]) -> float:
        return float(np.linalg.norm(self.block_position() - np.asarray(goal["block_xy"])))

    def expert_action(self) -> np.ndarray:
        """Scripted expert: lift, move above the point behind the block (seen from the goal), descend
        to block height, then push through the block's centre towards the goal, correcting sideways."""
        if self._goal is None:
            raise RuntimeError("expert_action needs a goal state; this env has only a goal image")
        ee = self.ee_position()
        block = self.block_position()
        to_goal = np.asarray(self._goal["block_xy"]) - block
        remaining = np.linalg.norm(to_goal)
        if remaining < 0.25 * self.success_threshold:
            return np.zeros(3, np.float32)
        u = to_goal / remaining
        side = np.array([-u[1], u[0]])
        rel = ee[:2] - block
        along, lateral = rel @ u, rel @ side
        low = ee[2] < PUSH_Z + 0.02
        in_push_pose = low and -(CONTACT + 0.05) < along < -(CONTACT - 0.02) and abs(lateral) < 0.02
        if in_push_pose:
            # Aim at the contact point behind the block's centre, advanced towards the goal: this also
            # pulls the fingertip back onto the block-goal line when the block drifts sideways.
            target_xy = block + u * (min(MAX_STEP, remaining) - CONTACT)
            target = np.array([*target_xy, PUSH_Z])
        else:
            behind = block - u * (CONTACT + 0.02)
            if np.linalg.norm(behind - ee[:2]) < 0.015:
                target = np.array([*behind, PUSH_Z])
            elif ee[2] < SAFE_Z - 0.02 and np.linalg.norm(rel) < CONTACT + 0.06:
                target = np.array([*ee[:2], SAFE_Z])
            else:
                target = np.array([*behind, SAFE_Z])
        delta = target - ee
        scale = max(1.0, np.abs(delta).max() / MAX_STEP)
        return (delta / scale).astype(np.float32)
