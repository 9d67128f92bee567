"""Shared machinery for goal-image MuJoCo environments.

Every jepa-world env renders `{"pixels": (H,W,3) uint8, "state": (S,) float32}` observations from one
fixed camera, holds a goal that exists only as an image (no marker in the scene), and exposes the
planner-facing extras of docs/ARCHITECTURE.md on `env.unwrapped`:
`goal_image()`, `set_goal(seed=None, state=None)`, `set_goal_image(image)`, `goal_state()`,
`goal_proprio()`,
`expert_action()`, `distance_to_goal()` and `success_threshold`.

Subclasses implement the task: `_sample_goal`, `_validate_goal_state`, `_render_goal`, `_goal_proprio`,
`_sample_initial_state`, `_apply_action`, `_state`, `_distance`, `expert_action`.
"""

from __future__ import annotations

import abc
import copy
import logging
import math
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

log = logging.getLogger(__name__)

IMAGE_SIZES = (64, 96, 128, 224, 256)  # sizes the offscreen buffers are declared for


def check_image_size(image_size: int) -> int:
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or not 16 <= image_size <= 512:
        raise ValueError(f"image_size must be an int in [16, 512] (e.g. one of {IMAGE_SIZES}), got {image_size!r}")
    return int(image_size)


class GoalImageEnv(gym.Env, abc.ABC):
    """Base for goal-image envs: owns the MuJoCo model, one reusable renderer, and the goal."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12}
    success_threshold: float  # metres, set by each subclass
    env_name: str  # short registry name written into goal states
    # Robot facts that collect.py writes into a dataset's meta/info.json (the one place they live):
    state_names: tuple[str, ...] = ()  # one per observation["state"] dim; () -> s0, s1, ...
    action_names: tuple[str, ...] = ()  # one per action dim; () -> a0, a1, ...
    # action_state_map[i]: the state dim that action dim i displaces (state += action, metres) for
    # displacement-controlled end effectors; () when actions are not displacements (torques).
    action_state_map: tuple[int, ...] = ()

    def __init__(
        self,
        model: mujoco.MjModel,
        *,
        state_dim: int,
        action_low: np.ndarray,
        action_high: np.ndarray,
        image_size: int = 64,
        camera: str | mujoco.MjvCamera = "front",
        render_mode: str | None = None,
        terminate_on_success: bool = False,
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.image_size = check_image_size(image_size)
        if isinstance(camera, str) and mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            names = [model.camera(i).name for i in range(model.ncam)]
            raise ValueError(f"camera {camera!r} not in the model; available cameras: {names}")
        self.model = model
        self.data = mujoco.MjData(model)
        self._scratch = mujoco.MjData(model)  # for goal renders and kinematics, never stepped
        self.camera = camera
        self.render_mode = render_mode
        self.terminate_on_success = bool(terminate_on_success)
        # Offscreen buffers must be at least as large as the render.
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.image_size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.image_size)
        self._renderer: mujoco.Renderer | None = mujoco.Renderer(model, self.image_size, self.image_size)

        s = self.image_size
        self.observation_space = gym.spaces.Dict(
            {
                "pixels": gym.spaces.Box(0, 255, (s, s, 3), np.uint8),
                "state": gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(
            np.asarray(action_low, np.float32), np.asarray(action_high, np.float32), dtype=np.float32
        )
        self._goal: dict[str, Any] | None = None  # None: goal given only as an image, success unknown
        self._goal_image: np.ndarray | None = None

    # ------------------------------------------------------------------ rendering
    def _render_data(self, data: mujoco.MjData) -> np.ndarray:
        if self._renderer is None:
            raise RuntimeError(f"{type(self).__name__} is closed; create a new env to render")
        self._renderer.update_scene(data, camera=self.camera)
        return self._renderer.render()  # (H, W, 3) uint8, a fresh array

    def render(self) -> np.ndarray:
        return self._render_data(self.data)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------ goals
    def goal_image(self) -> np.ndarray:
        """(H, W, 3) uint8 render of the goal (a copy; the env keeps its own)."""
        if self._goal_image is None:
            if self._goal is None:
                raise RuntimeError("no goal yet: call reset() or set_goal() first")
            self._goal_image = self._render_goal(self._goal)
        return self._goal_image.copy()

    def goal_state(self) -> dict[str, Any] | None:
        """JSON-serialisable dict that fully determines the goal, or None for an image-only goal."""
        return copy.deepcopy(self._goal)

    def set_goal(self, seed: int | None = None, state: dict[str, Any] | None = None) -> dict[str, Any]:
        """Sample this env's own goal from `seed`, or restore a saved `state`; returns the goal state.

        With neither, the goal is sampled from the env's seeded generator (as reset() does).
        """
        if seed is not None and state is not None:
            raise ValueError("set_goal takes seed or state, not both")
        if state is not None:
            goal = self._validate_goal_state(state)
        else:
            rng = self.np_random if seed is None else np.random.default_rng(_check_seed(seed))
            goal = self._sample_goal(rng)
        self._goal = goal
        self._goal_image = None
        return self.goal_state()

    def goal_proprio(self) -> np.ndarray | None:
        """(S,) float32 state the env would observe at rest in the goal scene (zero velocities), for
        planners' proprio terms; None for an image-only goal."""
        if self._goal is None:
            return None
        return self._goal_proprio(self._goal).astype(np.float32)

    def set_goal_image(self, image: np.ndarray) -> None:
        """Use an external goal image; the goal state is then unknown and success is reported as None."""
        s = self.image_size
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (s, s, 3)):
            got = (getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__))
            raise ValueError(f"goal image must be a ({s}, {s}, 3) uint8 array, got shape/dtype {got}")
        self._goal = None
        self._goal_image = image.copy()

    def distance_to_goal(self) -> float:
        """Task distance in metres (end effector or block to goal); nan when the goal is image-only."""
        if self._goal is None:
            return math.nan
        return float(self._distance(self._goal))

    def is_success(self) -> bool | None:
        """Judged on simulator state; None when the goal is image-only (success unknown, never guessed)."""
        if self._goal is None:
            return None
        return bool(self._distance(self._goal) < self.success_threshold)

    def sim_state(self) -> dict[str, list[float]]:
        """The simulator state (positions, velocities, controls) as JSON-serialisable lists."""
        return {"qpos": self.data.qpos.tolist(), "qvel": self.data.qvel.tolist(), "ctrl": self.data.ctrl.tolist()}

    def set_sim_state(self, state: dict[str, Any]) -> None:
        """Restore a ``sim_state()`` dict; a wrong key or length is an error naming it."""
        for key, size in (("qpos", self.model.nq), ("qvel", self.model.nv), ("ctrl", self.model.nu)):
            value = np.asarray(state.get(key, ()), dtype=np.float64)
            if value.shape != (size,) or not np.isfinite(value).all():
                raise ValueError(f"{self.env_name} start_state[{key!r}] must be {size} finite numbers, "
                                 f"got {state.get(key)!r}")
            getattr(self.data, key)[:] = value
        mujoco.mj_forward(self.model, self.data)

    def goal_state_from_current(self) -> dict[str, Any]:
        """A goal state showing the scene as it is now (the anchors' "near" goals: where a policy got to)."""
        raise ValueError(f"env {self.env_name!r} cannot turn its current state into a goal; "
                         "goal_protocol=near supports reach and push")

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Sample a new initial state and goal from `seed`.

        options: {"goal_state": dict} restores a saved goal, {"goal_seed": int} samples the goal from
        its own seed, {"keep_goal": True} keeps the current goal (or goal image); {"start_state": dict}
        (from ``sim_state()``) starts from a saved simulator state instead of a sampled one.
        """
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"goal_state", "goal_seed", "keep_goal", "start_state"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; expected goal_state, goal_seed, keep_goal "
                             "or start_state")
        if options.get("keep_goal"):
            if self._goal is None and self._goal_image is None:
                raise RuntimeError("reset(options={'keep_goal': True}) but no goal has been set yet")
        elif "goal_state" in options:
            self.set_goal(state=options["goal_state"])
        elif "goal_seed" in options:
            self.set_goal(seed=options["goal_seed"])
        else:
            self.set_goal()
        mujoco.mj_resetData(self.model, self.data)
        if "start_state" in options:
            self.set_sim_state(options["start_state"])
        else:
            self._sample_initial_state(self.np_random)
        mujoco.mj_forward(self.model, self.data)
        return self._observation(), self._info(action_excess=0.0)

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action must be finite, got {action}")
        clipped = np.clip(action, self.action_space.low, self.action_space.high)
        excess = float(np.max(np.abs(action - clipped)))
        self._apply_action(clipped)
        obs = self._observation()
        info = self._info(action_excess=excess)
        distance = info["distance"]
        reward = 0.0 if math.isnan(distance) else -distance
        terminated = bool(self.terminate_on_success and info["is_success"])
        return obs, reward, terminated, False, info

    def _observation(self) -> dict[str, np.ndarray]:
        return {"pixels": self._render_data(self.data), "state": self._state().astype(np.float32)}

    def _info(self, action_excess: float) -> dict[str, Any]:
        return {
            "is_success": self.is_success(),
            "distance": self.distance_to_goal(),
            "action_clipped": action_excess > 0.0,
            "action_excess": action_excess,  # largest per-dimension amount removed by clipping
        }

    # ------------------------------------------------------------------ task hooks
    @abc.abstractmethod
    def _sample_goal(self, rng: np.random.Generator) -> dict[str, Any]:
        """Task hook; every concrete env implements it."""

    @abc.abstractmethod
    def _validate_goal_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Task hook; every concrete env implements it."""

    @abc.abstractmethod
    def _render_goal(self, goal: dict[str, Any]) -> np.ndarray:
        """Task hook; every concrete env implements it."""

    @abc.abstractmethod
    def _goal_proprio(self, goal: dict[str, Any]) -> np.ndarray:
        """Task hook; every concrete env implements it."""

    @abc.abstractmethod
    def _sample_initial_state(self, rng: np.random.Generator) -> None:
        """Task hook; every concrete env implements it."""

    @abc.abstractmethod
    def _apply_action(self, action: np.ndarray) -> None:
        """Task hook; every concrete env implements it."""

    @abc.abstractmethod
    def _state(self) -> np.ndarray:
        """Task hook; every concrete env implements it."""

    @abc.abstractmethod
    def _distance(self, goal: dict[str, Any]) -> float:
        """Task hook; every concrete env implements it."""

    @abc.abstractmethod
    def expert_action(self) -> np.ndarray:
        """Task hook; every concrete env implements it."""


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"goal seed must be a non-negative int, got {seed!r}")
    return int(seed)


def goal_vector(state: dict[str, Any], key: str, size: int, env_name: str) -> np.ndarray:
    """Read `state[key]` as a finite float vector of `size`, with an error naming the key."""
    if not isinstance(state, dict):
        raise ValueError(f"{env_name} goal state must be a dict, got {type(state).__name__}")
    if state.get("env", env_name) != env_name:
        raise ValueError(f"goal state is for env {state.get('env')!r}, not {env_name!r}")
    if key not in state:
        raise ValueError(f"{env_name} goal state is missing key {key!r}; got keys {sorted(state)}")
    try:
        value = np.asarray(state[key], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{env_name} goal state key {key!r} must be {size} numbers, got {state[key]!r}") from err
    if value.shape != (size,) or not np.all(np.isfinite(value)):
        raise ValueError(f"{env_name} goal state key {key!r} must be {size} finite numbers, got {state[key]!r}")
    return value
