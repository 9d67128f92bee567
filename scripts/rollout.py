"""Show what the world model predicts along a recorded episode (open loop, no pixel decoder needed).

    python scripts/rollout.py env=reach                       # the shipped model, expert actions
    python scripts/rollout.py env=reach model=DIR policy=random steps=20 seed=7

Writes output_dir/rollout.png and rollout.json (per step: world-model energy to the observed frame,
the same for copying frame 0, and the index of the observed frame nearest each prediction).
"""
import logging
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

import hydra  # noqa: E402
import numpy as np  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from jepa_world import evaluation as ev  # noqa: E402
from jepa_world.rollout_view import plot_rollout, view_rollout  # noqa: E402

log = logging.getLogger("rollout")
POLICIES = ("expert", "random")


def record_episode(env, seed: int, steps: int, policy: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps+1) frames and states and the steps actions between them."""
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    frames, states, actions = [obs["pixels"]], [obs["state"]], []
    for _ in range(steps):
        action = env.unwrapped.expert_action() if policy == "expert" else env.action_space.sample()
        obs, _, terminated, truncated, _ = env.step(action)
        frames.append(obs["pixels"])
        states.append(obs["state"])
        actions.append(action)
        if terminated or truncated:
            log.warning("the episode ended after %d of %d steps; rolling out over those", len(actions), steps)
            break
    return np.stack(frames), np.stack(states).astype(np.float32), np.stack(actions).astype(np.float32)


def rollout_report(cfg: dict) -> dict:
    if cfg["policy"] not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {cfg['policy']!r}")
    if int(cfg["steps"]) < 1:
        raise ValueError(f"steps (the open-loop horizon) must be >= 1, got {cfg['steps']}")
    ev.set_threads(cfg.get("threads"))
    world_model = ev.load_world_model(str(cfg["model_dir"]), cfg["env"]["name"], cfg["device"])
    env = ev.make_env(cfg["env"], ev.model_image_size(world_model))
    try:
        frames, states, actions = record_episode(env, int(cfg["seed"]), int(cfg["steps"]), cfg["policy"])
    finally:
        env.close()
    view = view_rollout(world_model, frames, states, actions)
    out = os.path.abspath(cfg["output_dir"])
    title = f"{cfg['env']['name']} seed {cfg['seed']}, {cfg['policy']} actions: open-loop rollout from frame 0"
    plot_rollout(view, os.path.join(out, "rollout.png"), title=title)
    report = {
        "env": cfg["env"]["name"], "model_dir": str(cfg["model_dir"]), "seed": int(cfg["seed"]), "policy": cfg["policy"],
        "steps": len(actions),
        "predicted_energy": view.predicted_error.tolist(),
        "copy_frame0_energy": view.copy_last_error.tolist(),
        "nearest_observed_frame": view.nearest_frame.tolist(),
        "steps_tracked": int((view.nearest_frame == np.arange(1, len(actions) + 1)).sum()),
    }
    ev.write_json(os.path.join(out, "rollout.json"), report)
    return report


@hydra.main(config_path="../conf", config_name="rollout", version_base=None)
def main(cfg: DictConfig) -> None:
    report = rollout_report(OmegaConf.to_container(cfg, resolve=True))
    ratio = np.mean(report["predicted_energy"]) / max(np.mean(report["copy_frame0_energy"]), 1e-12)
    print(f"{report['env']} seed={report['seed']} {report['policy']}: {report['steps']} steps open loop, "
          f"energy {ratio:.2f}x copying frame 0, nearest frame = true step at {report['steps_tracked']} of "
          f"{report['steps']} -> {cfg.output_dir}")


if __name__ == "__main__":
    sys.argv = ev.route_model_override(sys.argv)
    main()
