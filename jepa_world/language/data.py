"""Captioned episodes for the language head: MuJoCo rollouts, image-aligned positions, latents.

``rollout_episodes`` drives a real ``envs`` task with its scripted expert toward a fresh
random goal every ``goal_every`` steps, so the arm sweeps across the table and also
rests (a "still" motion). Positions are projected through the env's own camera
(``CameraProjection``) and mapped to table uv (``TablePositions``), so a caption's
"upper left" is the upper left of the arm's workspace as the frame shows it.

``encode_episodes`` runs the frozen world-model encoder over every frame once; training
and evaluation then only index the cached latents. ``sample_index`` lists the
(episode, end step, label) samples of one fact kind and one position split.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import mujoco
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from jepa_world.language.captions import is_held_out_position, motion_index, region_index

log = logging.getLogger(__name__)

PositionSplit = Literal["train", "heldout", "all"]
POSITION_SPLITS: tuple[str, ...] = ("train", "heldout", "all")
EE_STATE_SLICE = slice(0, 3)  # arm envs: state[:3] is the end-effector xyz (envs/arm.py)


class CameraProjection:
    """Pinhole projection of world points into a fixed MuJoCo camera's image, as uv in [0, 1]."""

    def __init__(self, position: np.ndarray, rotation: np.ndarray, fovy_deg: float, aspect: float = 1.0):
        self.position = torch.as_tensor(position, dtype=torch.float64)  # (3,)
        self.rotation = torch.as_tensor(rotation, dtype=torch.float64).reshape(3, 3)  # columns: camera axes in world
        self.focal = 0.5 / math.tan(math.radians(fovy_deg) / 2)  # in units of image height
        self.aspect = aspect

    @classmethod
    def from_env(cls, env) -> CameraProjection:
        base = env.unwrapped
        model, camera = base.model, base.camera
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)  # camera poses are set in mj_camlight, not mj_kinematics
        cam = model.camera(camera).id
        if model.cam_bodyid[cam] != 0:
            raise ValueError(f"camera {camera!r} is attached to a moving body; only fixed cameras are supported")
        return cls(data.cam_xpos[cam].copy(), data.cam_xmat[cam].copy(), float(model.cam_fovy[cam]))

    def __call__(self, points: Tensor | np.ndarray) -> Tensor:
        """(..., 3) world xyz -> (..., 2) uv: u left -> right, v top -> bottom of the image."""
        p = torch.as_tensor(points, dtype=torch.float64)
        cam = (p - self.position) @ self.rotation  # (..., 3) in the camera frame (x right, y up, -z forward)
        depth = -cam[..., 2]
        if (depth <= 0).any():
            raise ValueError("some points are behind the camera; cannot project them")
        u = 0.5 + self.focal * cam[..., 0] / depth / self.aspect
        v = 0.5 - self.focal * cam[..., 1] / depth
        return torch.stack([u, v], dim=-1).float()


class TablePositions:
    """World xyz -> table uv: camera projection, then a per-axis piecewise-linear map through the
    2/33/67/98 % quantiles of the env's goal positions onto 0, 1/3, 2/3, 1.

    So the 3x3 caption regions split the reachable workspace *as the camera sees it* into
    rows and columns that each hold a third of the env's goals (balanced classes).
    """

    QUANTILES = (0.02, 1 / 3, 2 / 3, 0.98)

    def __init__(self, projection: CameraProjection, knots: Tensor):
        if knots.shape != (len(self.QUANTILES), 2) or not (knots.diff(dim=0) > 0).all():
            raise ValueError(f"knots must be ({len(self.QUANTILES)}, 2) and increasing per axis, got {knots.tolist()}")
        self.projection = projection
        self.knots = knots.float()  # (4, 2) image uv of each quantile
        self.targets = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])

    @classmethod
    def from_env(cls, env, num_goals: int = 4096) -> TablePositions:
        """Fit the map on ``num_goals`` goals drawn with seeds 0..num_goals-1 (deterministic)."""
        projection = CameraProjection.from_env(env)
        base = env.unwrapped
        goals = []
        for seed in range(num_goals):
            base.set_goal(seed=seed)
            goals.append(np.asarray(base.goal_state()["ee"], np.float64))
        image_uv = projection(np.stack(goals))  # (G, 2)
        return cls(projection, torch.quantile(image_uv, torch.tensor(cls.QUANTILES), dim=0))

    def __call__(self, points: Tensor | np.ndarray) -> Tensor:
        """(..., 3) world xyz -> (..., 2) table uv (0..1 inside the fitted range, extrapolated outside)."""
        image_uv = self.projection(points)
        axes = []
        for axis in range(2):
            x, xp = image_uv[..., axis].contiguous(), self.knots[:, axis].contiguous()
            seg = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)  # right knot of each point's segment
            x0, x1 = xp[seg - 1], xp[seg]
            y0, y1 = self.targets[seg - 1], self.targets[seg]
            axes.append(y0 + (x - x0) * (y1 - y0) / (x1 - x0))
        return torch.stack(axes, dim=-1)


@dataclass
class CaptionedEpisodes:
    frames: Tensor  # (E, T, H, W, 3) uint8
    states: Tensor  # (E, T, S) float32
    arm_uv: Tensor  # (E, T, 2) end effector in table uv (TablePositions)
    env_name: str

    def __post_init__(self) -> None:
        e, t = self.frames.shape[:2]
        if self.states.shape[:2] != (e, t) or self.arm_uv.shape != (e, t, 2):
            raise ValueError(
                f"episode tensors disagree: frames {tuple(self.frames.shape)}, states {tuple(self.states.shape)}, "
                f"arm_uv {tuple(self.arm_uv.shape)}"
            )


def rollout_episodes(
    env_name: str = "reach",
    num_episodes: int = 16,
    steps: int = 48,
    image_size: int = 64,
    seed: int = 0,
    goal_every: int = 12,
) -> CaptionedEpisodes:
    """Expert rollouts that re-target a random goal every ``goal_every`` steps (real physics + renders)."""
    import torch._dynamo  # noqa: F401  (triton's LLVM must load before MuJoCo's EGL/Mesa one, else SIGSEGV)

    import envs

    if num_episodes < 1 or steps < 2 or goal_every < 1:
        raise ValueError(f"need num_episodes >= 1, steps >= 2, goal_every >= 1; got {num_episodes}, {steps}, {goal_every}")
    env = envs.make(env_name, image_size=image_size, max_episode_steps=steps + 1)
    env.reset(seed=seed)
    to_table = TablePositions.from_env(env)
    frames = np.empty((num_episodes, steps, image_size, image_size, 3), np.uint8)
    states = np.empty((num_episodes, steps, env.observation_space["state"].shape[0]), np.float32)
    rng = np.random.default_rng(seed)
    for episode in tqdm(range(num_episodes), desc=f"{env_name} rollouts", leave=False):
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        for step in range(steps):
            frames[episode, step], states[episode, step] = obs["pixels"], obs["state"]
            if step % goal_every == goal_every - 1:
                env.unwrapped.set_goal(seed=int(rng.integers(2**31)))
            obs, *_ = env.step(env.unwrapped.expert_action())
    env.close()
    states_t = torch.from_numpy(states)
    return CaptionedEpisodes(torch.from_numpy(frames), states_t, to_table(states_t[..., EE_STATE_SLICE]), env_name)


def region_tour(
    env_name: str, regions: list[int], steps_per_goal: int = 14, image_size: int = 64, seed: int = 0
) -> CaptionedEpisodes:
    """One scripted episode that visits ``regions`` (indices into captions.REGIONS) in order.

    Each goal is the env goal (searched over seeds from ``seed``) whose table uv lies closest to
    the region's centre; the expert moves there and rests until the next goal. The arm first
    settles at the first goal (unrecorded), so every recorded frame belongs to the tour.
    """
    import torch._dynamo  # noqa: F401  (see rollout_episodes)

    import envs

    env = envs.make(env_name, image_size=image_size, max_episode_steps=(len(regions) + 1) * steps_per_goal + 1)
    obs, _ = env.reset(seed=seed)
    base = env.unwrapped
    to_table = TablePositions.from_env(env)
    candidates = [base.set_goal(seed=seed + i) for i in range(2048)]
    goal_uv = to_table(np.stack([np.asarray(g["ee"], np.float64) for g in candidates]))  # (G, 2)
    centres = torch.tensor([[(r % 3 + 0.5) / 3, (r // 3 + 0.5) / 3] for r in regions])  # (R, 2)
    chosen = torch.cdist(centres, goal_uv).argmin(dim=1).tolist()
    base.set_goal(state=candidates[chosen[0]])
    for _ in range(steps_per_goal):
        obs, *_ = env.step(base.expert_action())
    frames, states = [], []
    for goal_index in chosen:
        base.set_goal(state=candidates[goal_index])
        for _ in range(steps_per_goal):
            frames.append(obs["pixels"])
            states.append(obs["state"])
            obs, *_ = env.step(base.expert_action())
    env.close()
    states_t = torch.from_numpy(np.stack(states))[None]  # (1, T, S)
    return CaptionedEpisodes(torch.from_numpy(np.stack(frames))[None], states_t, to_table(states_t[..., EE_STATE_SLICE]), env_name)


@torch.no_grad()
def encode_episodes(latent_encoder, frames: Tensor, batch_size: int = 64) -> Tensor:
    """(E, T, H, W, 3) uint8 -> (E, T, N, D) frozen latents (``latent_encoder.encode``), encoded once in batches."""
    flat = frames.flatten(0, 1)  # (E*T, H, W, 3)
    chunks = [
        latent_encoder.encode(flat[i : i + batch_size])
        for i in tqdm(range(0, len(flat), batch_size), desc="encoding frames", leave=False)
    ]
    return torch.cat(chunks).unflatten(0, frames.shape[:2]).cpu()  # (E, T, N, D)


def sample_index(arm_uv: Tensor, kind: str, clip_frames: int, split: PositionSplit) -> tuple[Tensor, Tensor, Tensor]:
    """Samples of one fact kind: (episode (M,), end step (M,), label (M,)).

    ``arm`` samples are single frames labelled by region; ``motion`` samples are clips of
    ``clip_frames`` ending at the step, labelled by direction. The position split is
    decided by where the arm is at the end step.
    """
    if split not in POSITION_SPLITS:
        raise ValueError(f"unknown position split {split!r}; expected one of {POSITION_SPLITS}")
    num_episodes, steps, _ = arm_uv.shape
    first = 0 if kind == "arm" else clip_frames - 1
    episode, step = torch.meshgrid(torch.arange(num_episodes), torch.arange(first, steps), indexing="ij")
    episode, step = episode.flatten(), step.flatten()
    end_uv = arm_uv[episode, step]  # (M, 2)
    if kind == "arm":
        labels = region_index(end_uv)
    elif kind == "motion":
        labels = motion_index(arm_uv[episode, step - clip_frames + 1], end_uv)
    else:
        raise ValueError(f"fact kind {kind!r} has no samples in arm episodes; expected 'arm' or 'motion'")
    if split != "all":
        held = is_held_out_position(end_uv)
        keep = held if split == "heldout" else ~held
        episode, step, labels = episode[keep], step[keep], labels[keep]
    return episode, step, labels


def gather_latents(latents: Tensor, episode: Tensor, step: Tensor, frames: int) -> Tensor:
    """(E, T, N, D) latents -> (M, frames, N, D) clips ending at ``step``."""
    offsets = torch.arange(1 - frames, 1)  # (frames,)
    return latents[episode[:, None], step[:, None] + offsets]
