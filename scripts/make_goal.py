"""Write an env's goal image and its goal-state sidecar.

    python scripts/make_goal.py env=reach seed=3 out=goal.png        # goal.png + goal.json
    python scripts/make_goal.py env=push seed=3 out=g.png env.image_size=224
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

import envs
from envs.goals import save_goal

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="make_goal")
def main(cfg: DictConfig) -> None:
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {cfg.seed!r}")
    env = envs.make(cfg.env.name, image_size=cfg.env.image_size)
    try:
        state = env.unwrapped.set_goal(seed=cfg.seed)
        out = cfg.out
        sidecar = save_goal(out, env.unwrapped.goal_image(), state,
                            env=cfg.env.name, image_size=cfg.env.image_size, seed=cfg.seed)
    finally:
        env.close()
    print(f"wrote {out} and {sidecar} (env={cfg.env.name}, seed={cfg.seed}, {cfg.env.image_size}px)")


if __name__ == "__main__":
    main()
