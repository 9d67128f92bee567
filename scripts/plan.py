"""Plan one episode toward a goal image with a trained world model.

    python scripts/plan.py env=reach goal=img.png [model=DIR planner=mppi planner.samples=256 horizon=3 ...]
    python scripts/plan.py env=reach goal=seed:7
    python scripts/plan.py env=reach goal=goal.json   # a goal state saved by scripts/make_goal.py
    python scripts/plan.py env=reach goal="text:move the arm to the upper left" language_head=DIR

An image goal is all the planner sees. Success and distance are judged when a sidecar goal state
(scripts/make_goal.py) beside the image renders to that same image; otherwise they are null.

Writes output_dir/result.json (success or null, final_distance, steps, plan_ms per step, energies),
episode.mp4 (observation | goal with the energy underneath), strip.png (six of its frames) and
energy.png; prints one summary line.
"""
import logging
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from envs.goals import load_goal  # noqa: E402
from jepa_world import evaluation as ev  # noqa: E402

log = logging.getLogger("plan")


def plan_episode(cfg: dict) -> dict:
    if str(cfg["goal"]).startswith("text:"):  # a language goal (docs/language.md)
        from jepa_world.language.objective import plan_language_episode

        return plan_language_episode(cfg)
    ev.set_threads(cfg.get("threads"))
    if int(cfg["max_steps"]) < 1:
        raise ValueError(f"max_steps (the episode's step budget) must be >= 1, got {cfg['max_steps']}")
    world_model = ev.load_world_model(str(cfg["model_dir"]), cfg["env"]["name"], cfg["device"])
    env = ev.make_env(cfg["env"], ev.model_image_size(world_model))
    try:
        load_goal(str(cfg["goal"]), env)  # installs the goal in the env; reset keeps it
        agent = ev.build_agent(cfg, world_model, env)
        (result,), (frames,) = ev.run_episodes([env], agent, [int(cfg["seed"])], int(cfg["max_steps"]),
                                               reset_options=[{"keep_goal": True}], record_video=bool(cfg["video"]),
                                               progress=True)
    finally:
        env.close()
    out = os.path.abspath(cfg["output_dir"])
    video = str(ev.write_video(os.path.join(out, "episode.mp4"), frames, fps=int(cfg["fps"]))) if frames else None
    if frames:
        ev.write_strip(os.path.join(out, "strip.png"), frames)
    last_costs = agent.last_energies[0].cpu().numpy() if agent.last_energies is not None else None
    ev.plot_energy(os.path.join(out, "energy.png"), result, last_costs)
    payload = ev.plan_result(result, video, ev.run_settings(cfg, agent))
    ev.write_json(os.path.join(out, "result.json"), payload)
    return payload


@hydra.main(config_path="../conf", config_name="plan", version_base=None)
def main(cfg: DictConfig) -> None:
    payload = plan_episode(OmegaConf.to_container(cfg, resolve=True))
    distance = "unknown" if payload["final_distance"] is None else f"{payload['final_distance']:.3f}"
    print(f"{cfg.env.name} goal={cfg.goal}: success={payload['success']} final_distance={distance} "
          f"steps={payload['steps']} plan_ms_median={payload['plan_ms_median']:.1f} -> {cfg.output_dir}")


if __name__ == "__main__":
    sys.argv = ev.route_model_override(sys.argv)
    main()
