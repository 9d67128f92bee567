"""jepa-world environments: MuJoCo tasks whose goals are images.

    import envs
    env = envs.make("reach", image_size=64)          # gymnasium.make("JepaWorld/Reach-v0", ...)
    obs, info = env.reset(seed=0)                      # obs: {"pixels": (H,W,3) uint8, "state": (S,) float32}
    goal = env.unwrapped.goal_image()                  # render of the goal, no marker in the scene
    obs, reward, terminated, truncated, info = env.step(env.unwrapped.expert_action())
    info["is_success"], info["distance"], info["action_clipped"]

See docs/envs.md for state/action layouts, thresholds and measured expert success rates.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

# torch loads triton (with its own LLVM) lazily, e.g. on the first torch.optim step. If a MuJoCo
# EGL/OSMesa context has already loaded Mesa's LLVM by then, the process segfaults (reproduced:
# envs.make(...).reset() then torch.optim.AdamW(...) -> SIGSEGV). Loading triton first avoids the
# clash for every user of these envs, including planners imported into a robot control loop.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401


@dataclass(frozen=True)
class EnvSpec:
    gym_id: str
    entry_point: str
    max_episode_steps: int


ENV_SPECS: dict[str, EnvSpec] = {
    "reach": EnvSpec("JepaWorld/Reach-v0", "envs.reach:ReachEnv", 50),
    "push": EnvSpec("JepaWorld/Push-v0", "envs.push:PushEnv", 80),
    "reacher": EnvSpec("JepaWorld/ReacherPixels-v0", "envs.reacher:ReacherPixelsEnv", 50),
    "metaworld-reach": EnvSpec("JepaWorld/MetaworldReach-v0", "envs.metaworld_adapter:MetaworldReachEnv", 100),
}
ENV_NAMES: tuple[str, ...] = tuple(ENV_SPECS)

for _spec in ENV_SPECS.values():
    if _spec.gym_id not in gym.registry:
        gym.register(id=_spec.gym_id, entry_point=_spec.entry_point, max_episode_steps=_spec.max_episode_steps)


def make(name: str, **kwargs: Any) -> gym.Env:
    """Build env `name` (a short name from ENV_NAMES or its gymnasium id) with gymnasium.make.

    kwargs go to gymnasium.make: the env's own (image_size, render_mode, terminate_on_success) and
    gymnasium's (max_episode_steps, disable_env_checker).
    """
    by_id = {spec.gym_id: short for short, spec in ENV_SPECS.items()}
    short = by_id.get(name, name)
    if short not in ENV_SPECS:
        raise ValueError(f"unknown env {name!r}; available envs: {', '.join(ENV_NAMES)}")
    return gym.make(ENV_SPECS[short].gym_id, **kwargs)


__all__ = ["ENV_NAMES", "ENV_SPECS", "EnvSpec", "make"]
