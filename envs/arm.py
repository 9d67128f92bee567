"""The jepa-world arm: a 3-joint MJCF arm (base yaw, shoulder pitch, elbow pitch) driven by
end-effector displacement actions through damped-least-squares IK and joint position servos.

Geometry (envs/assets/arm_scene.xml): shoulder 0.18 m above the table, upper arm 0.30 m, forearm
plus fingertip 0.30 m, so the reach is about 0.6 m. Joint limits make the arm configuration for a
given end-effector position unique: yaw spans less than 180 degrees (so a point is reached from one
side only) and the elbow bends one way only (no elbow-up/elbow-down pair).

State layout (float32, 9): end-effector xyz (m), joint angles yaw/shoulder/elbow (rad), joint
velocities (rad/s).
Action layout (float32, 3): end-effector displacement dx, dy, dz in metres per step, each in
[-MAX_STEP, MAX_STEP]. The commanded point is kept inside WORKSPACE_LOW/HIGH (above the table).
"""

from __future__ import annotations

from pathlib import Path

import mujoco
import numpy as np

from envs.base import GoalImageEnv

ASSETS = Path(__file__).parent / "assets"
ARM_JOINTS = ("yaw", "shoulder", "elbow")
MAX_STEP = 0.05  # metres per step per axis, the V-JEPA 2-AC action box
WORKSPACE_LOW = np.array([-0.2, -0.6, 0.035])  # z: fingertip radius above the table top
WORKSPACE_HIGH = np.array([0.7, 0.6, 0.65])
SUBSTEPS = 40  # physics steps of 2 ms per env step: 12.5 Hz control
ARM_STATE_DIM = 9


def load_model(xml_name: str) -> mujoco.MjModel:
    path = ASSETS / xml_name
    if not path.is_file():
        raise FileNotFoundError(f"MJCF asset {path} is missing; reinstall jepa-world")
    return mujoco.MjModel.from_xml_path(str(path))


class ArmKinematics:
    """Forward kinematics and damped-least-squares IK on a private MjData (never stepped)."""

    def __init__(self, model: mujoco.MjModel, site: str = "ee") -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        self.site_id = model.site(site).id
        joint_ids = [model.joint(name).id for name in ARM_JOINTS]
        self.qpos_ids = np.array([model.jnt_qposadr[j] for j in joint_ids])
        self.dof_ids = np.array([model.jnt_dofadr[j] for j in joint_ids])
        self.low = model.jnt_range[joint_ids, 0].copy()
        self.high = model.jnt_range[joint_ids, 1].copy()
        self._jacp = np.zeros((3, model.nv))

    def forward(self, q: np.ndarray) -> np.ndarray:
        """Joint angles (3,) -> end-effector position (3,)."""
        self.data.qpos[self.qpos_ids] = q
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self.site_id].copy()

    def inverse(self, target: np.ndarray, q_init: np.ndarray, iters: int = 30, damping: float = 0.02) -> np.ndarray:
        """Joint angles within limits whose end effector is closest to `target` (m), from `q_init`."""
        q = np.clip(q_init, self.low, self.high)
        eye = np.eye(3)
        for _ in range(iters):
            err = target - self.forward(q)  # (3,)
            if np.dot(err, err) < 1e-10:
                break
            mujoco.mj_comPos(self.model, self.data)
            mujoco.mj_jacSite(self.model, self.data, self._jacp, None, self.site_id)
            jac = self._jacp[:, self.dof_ids]  # (3, 3)
            dq = jac.T @ np.linalg.solve(jac @ jac.T + damping**2 * eye, err)
            q = np.clip(q + dq, self.low, self.high)
        return q


class ArmEnv(GoalImageEnv):
    """Common dynamics, observation and control of `reach` and `push`."""

    state_names = ("ee_x", "ee_y", "ee_z", "q0", "q1", "q2", "qd0", "qd1", "qd2")
    action_names = ("ee_dx", "ee_dy", "ee_dz")
    action_state_map = (0, 1, 2)  # each action moves the end-effector target by that many metres

    def __init__(self, xml_name: str, image_size: int = 64, render_mode: str | None = None, **kwargs) -> None:
        model = load_model(xml_name)
        super().__init__(
            model,
            state_dim=ARM_STATE_DIM,
            action_low=-MAX_STEP * np.ones(3),
            action_high=MAX_STEP * np.ones(3),
            image_size=image_size,
            render_mode=render_mode,
            **kwargs,
        )
        self.kin = ArmKinematics(model)
        self._site = model.site("ee").id
        self._goal_data = mujoco.MjData(model)  # goal renders use their own data

    def ee_position(self) -> np.ndarray:
        return self.data.site_xpos[self._site].copy()

    def arm_qpos(self) -> np.ndarray:
        return self.data.qpos[self.kin.qpos_ids].copy()

    def _state(self) -> np.ndarray:
        return np.concatenate([self.ee_position(), self.arm_qpos(), self.data.qvel[self.kin.dof_ids]])

    def _set_arm(self, q: np.ndarray) -> None:
        """Place the arm at rest at `q` with the servos holding it there."""
        self.data.qpos[self.kin.qpos_ids] = q
        self.data.qvel[self.kin.dof_ids] = 0.0
        self.data.ctrl[:] = q

    def _apply_action(self, action: np.ndarray) -> None:
        target = np.clip(self.ee_position() + action, WORKSPACE_LOW, WORKSPACE_HIGH)
        self.data.ctrl[:] = self.kin.inverse(target, self.arm_qpos())
        mujoco.mj_step(self.model, self.data, nstep=SUBSTEPS)
        # Keep kinematic quantities (site positions) in sync with the final qpos for the observation.
        mujoco.mj_kinematics(self.model, self.data)

    def _arm_proprio(self, q) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64)
        return np.concatenate([self.kin.forward(q), q, np.zeros(3)])

    def _render_scene(self, qpos: np.ndarray) -> np.ndarray:
        self._goal_data.qpos[:] = qpos
        mujoco.mj_forward(self.model, self._goal_data)
        return self._render_data(self._goal_data)

    def _sample_arm(self, rng: np.random.Generator, low_deg, high_deg, min_height: float, min_radius: float):
        """Joint angles uniform in [low, high] degrees whose end effector is above `min_height` and at
        least `min_radius` from the base axis (near the axis the yaw angle is ill defined)."""
        low, high = np.deg2rad(low_deg), np.deg2rad(high_deg)
        while True:
            q = rng.uniform(low, high)
            ee = self.kin.forward(q)
            if ee[2] >= min_height and np.hypot(ee[0], ee[1]) >= min_radius:
                return q, ee
