"""Zero-shot evaluation: success rate of latent MPC over seeded episodes.

    python scripts/evaluate.py env=reach episodes=50 seed=1000 [model=DIR num_envs=8 planner=mppi ...]
    python scripts/evaluate.py env=reach episodes=50 seed=1000 policy=random    # or policy=expert

Episode i resets the env (start and goal) and the planner with seed + i; num_envs episodes are
planned together in one batch. ``protocols`` lists the goal protocols: ``anywhere`` (the env's own
goals over the workspace, at least 15 cm from the start in reach) and ``near`` (the anchors': the
scene after ``near_steps`` of the collection's exploration policy from the episode's start). Writes output_dir/eval_info.json in LeRobot's shape, up to
max_videos mp4s and evaluation.png (distance to goal per step and final distances, against the
success radius). Planning sees only observations and goal images; simulator success is read
once, at each episode's last step.
"""
import logging
import os
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from jepa_world import evaluation as ev  # noqa: E402

log = logging.getLogger("evaluate")


def evaluate(cfg: dict) -> dict:
    """Every protocol in ``cfg["protocols"]``: each writes <output_dir>/<protocol>/; the first one's
    report is also <output_dir>/eval_info.json, with every protocol's aggregates under "protocols", and
    <output_dir>/evaluation.png plots every protocol, one row each."""
    if cfg.get("goal_kind", "image") == "text":  # held-out language goals vs image goals (docs/language.md)
        from jepa_world.language.objective import evaluate_language_goals

        return evaluate_language_goals(cfg)
    if cfg.get("goal_kind", "image") != "image":
        raise ValueError(f"goal_kind must be image or text, got {cfg['goal_kind']!r}")
    protocols = list(cfg.get("protocols") or ["anywhere"])
    unknown = sorted(set(protocols) - set(ev.GOAL_PROTOCOLS))
    if unknown or len(set(protocols)) != len(protocols):
        raise ValueError(f"protocols={protocols}: expected distinct names from {list(ev.GOAL_PROTOCOLS)}")
    ev.set_threads(cfg.get("threads"))
    seeds = ev.episode_seeds(int(cfg["seed"]), int(cfg["episodes"]))
    if int(cfg["max_steps"]) < 1:
        raise ValueError(f"max_steps (the per-episode step budget) must be >= 1, got {cfg['max_steps']}")
    if int(cfg["num_envs"]) < 1:
        raise ValueError(f"num_envs must be >= 1, got {cfg['num_envs']}")
    num_envs = min(int(cfg["num_envs"]), len(seeds))
    policy = cfg.get("policy", "planner")
    if policy == "planner":
        world_model = ev.load_world_model(str(cfg["model_dir"]), cfg["env"]["name"], cfg["device"])
        envs = [ev.make_env(cfg["env"], ev.model_image_size(world_model)) for _ in range(num_envs)]
        agent = ev.build_agent(cfg, world_model, envs[0])
    else:  # a reference policy under the same protocol
        envs = [ev.make_env(cfg["env"]) for _ in range(num_envs)]
        agent = ev.BaselinePolicy(policy, envs)
    out = os.path.abspath(cfg["output_dir"])
    reports, results = {}, {}
    try:
        for protocol in protocols:
            reports[protocol], results[protocol] = evaluate_protocol(cfg, protocol, envs, agent, seeds,
                                                                     os.path.join(out, protocol))
    finally:
        for env in envs:
            env.close()
    info = {**reports[protocols[0]], "protocols": {name: report["aggregated"] for name, report in reports.items()}}
    ev.write_json(os.path.join(out, "eval_info.json"), info)
    ev.plot_evaluation(os.path.join(out, "evaluation.png"), results, cfg["env"].get("success_threshold"))
    return info


def evaluate_protocol(cfg: dict, protocol: str, envs: list, agent, seeds: list[int],
                      out: str) -> tuple[dict, list[ev.EpisodeResult]]:
    """One protocol's episodes: <out>/eval_info.json, <out>/evaluation.png and up to max_videos mp4s."""
    num_envs = len(envs)
    results, video_paths = [], []
    start = time.perf_counter()
    with tqdm(total=len(seeds), desc=f"evaluate {cfg['env']['name']} ({protocol})", unit="ep") as bar:
        for first in range(0, len(seeds), num_envs):
            batch = seeds[first:first + num_envs]
            ids = list(range(first, first + len(batch)))
            record = [ix < int(cfg["max_videos"]) for ix in ids]
            options = ev.protocol_options(envs[:len(batch)], batch, protocol, int(cfg.get("near_steps", 25)))
            batch_results, frames = ev.run_episodes(envs[:len(batch)], agent, batch, int(cfg["max_steps"]),
                                                    episode_ids=ids, reset_options=options, record_video=record)
            for result, episode_frames in zip(batch_results, frames):
                if episode_frames:
                    path = ev.write_video(os.path.join(out, "videos", f"eval_episode_{result.episode_ix}.mp4"),
                                          episode_frames, fps=int(cfg["fps"]))
                    result.video_path = str(path)
                    video_paths.append(str(path))
            results.extend(batch_results)
            judged = [r.success for r in results if r.success is not None]
            bar.update(len(batch))
            bar.set_postfix(success=f"{sum(judged)}/{len(judged)}" if judged else "n/a")
    info = ev.eval_info(results, time.perf_counter() - start, video_paths, {**ev.run_settings(cfg, agent),
                                                                            "protocol": protocol})
    ev.write_json(os.path.join(out, "eval_info.json"), info)
    ev.plot_evaluation(os.path.join(out, "evaluation.png"), {protocol: results}, cfg["env"].get("success_threshold"))
    return info, results


@hydra.main(config_path="../conf", config_name="evaluate", version_base=None)
def main(cfg: DictConfig) -> None:
    info = evaluate(OmegaConf.to_container(cfg, resolve=True))
    for protocol, agg in info.get("protocols", {"": info["aggregated"]}).items():
        success = "unknown" if agg["pc_success"] is None else \
            "{:.1f}% (95% CI {:.0f}-{:.0f}%)".format(agg["pc_success"], *agg["pc_success_ci95"])
        print(f"{cfg.env.name} {protocol}: success {success} over {agg['n_episodes']} episodes, mean final distance "
              f"{agg['avg_final_distance']:.3f}, plan_ms_median {agg['plan_ms_median']:.1f}, {agg['eval_s']:.1f}s "
              f"-> {cfg.output_dir}/{protocol}/eval_info.json")


if __name__ == "__main__":
    sys.argv = ev.route_model_override(sys.argv)
    main()
