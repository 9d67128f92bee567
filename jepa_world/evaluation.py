"""Episode runner, videos, plots and JSON reports shared by scripts/plan.py and scripts/evaluate.py.

``run_episodes`` drives E envs in lockstep with one batched ``MPCAgent``: each env is reset
from its own seed, its goal image is read once, and from then on the agent sees only
observations. Simulator ground truth (``info["is_success"]``, ``info["distance"]``) is
recorded for the report, never fed back: planning cannot stop early on it. Every episode
ends after at most ``max_steps`` steps, or earlier when the env terminates/truncates. With a
proprio term the goal's at-rest proprio (``goal_proprio()``) is read once with the goal image.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from jepa_world.atomic_files import atomic_path, save_figure
from planners import make_planner
from planners.agent import AgentStats, MPCAgent
from planners.objectives import ObjectiveConfig

log = logging.getLogger(__name__)

VIDEO_SCALE = 4  # 64 px renders are upscaled so the video is readable
STRIP_HEIGHT = 56  # px of energy text + sparkline under the two images


@dataclass
class EpisodeResult:
    episode_ix: int
    seed: int
    success: bool | None  # judged on simulator state at the last step; None when the goal is image-only
    final_distance: float | None
    steps: int
    plan_ms: list[float] = field(default_factory=list)  # wall time of each agent.act call (the batched call)
    energies: list[float] = field(default_factory=list)  # predicted energy of the plan in use, per step
    distances: list[float] = field(default_factory=list)  # simulator distance per step, for plots only
    initial_distance: float | None = None
    video_path: str | None = None

    @property
    def plan_ms_median(self) -> float:
        return float(np.median(self.plan_ms)) if self.plan_ms else math.nan

    def summary(self) -> dict[str, Any]:
        """The per-episode record of eval_info.json (LeRobot's keys plus planning ones)."""
        return {
            "episode_ix": self.episode_ix,
            "seed": self.seed,
            "success": self.success,
            "final_distance": self.final_distance,
            "initial_distance": self.initial_distance,
            "steps": self.steps,
            "plan_ms_median": _finite_or_none(self.plan_ms_median),
            "final_energy": self.energies[-1] if self.energies else None,
        }


def _finite_or_none(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def run_episodes(
    envs: Sequence[gym.Env],
    agent: MPCAgent,
    seeds: Sequence[int],
    max_steps: int,
    episode_ids: Sequence[int] | None = None,
    reset_options: Sequence[dict | None] | None = None,
    record_video: Sequence[bool] | bool = False,
    progress: bool = False,
) -> tuple[list[EpisodeResult], list[list[np.ndarray]]]:
    """Run one episode per env in lockstep with batched planning.

    Returns the results and, per env, the composed video frames (empty lists where
    ``record_video`` is False). ``progress`` shows a tqdm bar over steps.
    """
    E = len(envs)
    if E == 0 or len(seeds) != E:
        raise ValueError(f"need one seed per env, got {len(seeds)} seeds for {E} envs")
    if max_steps < 1:
        raise ValueError(f"max_steps (the per-episode step budget) must be >= 1, got {max_steps}")
    episode_ids = list(range(E)) if episode_ids is None else list(episode_ids)
    reset_options = [None] * E if reset_options is None else list(reset_options)
    record = [record_video] * E if isinstance(record_video, bool) else list(record_video)

    observations, goals, infos = [], [], []
    for env, seed, options in zip(envs, seeds, reset_options):
        obs, info = env.reset(seed=int(seed), options=options)
        observations.append(obs)
        infos.append(info)
        goals.append(env.unwrapped.goal_image())
    goal_states = None
    if agent.objective.proprio_weight > 0:  # the goal scene's at-rest proprio, part of the goal spec like its image
        goal_states = [env.unwrapped.goal_proprio() for env in envs]
        if any(g is None for g in goal_states):
            raise ValueError("objective.proprio_weight > 0 needs a goal with a known state (goal=seed:N or a goal .json); "
                             "an image-only goal carries no proprio")
        goal_states = np.stack(goal_states)
    agent.reset(np.stack(goals), goal_state=goal_states, seeds=[int(s) for s in seeds])
    goal_texts = list(getattr(agent, "current_texts", None) or [None] * E)  # language-goal agents state their goals
    results = [EpisodeResult(int(ix), int(seed), None, None, 0, initial_distance=_finite_or_none(info.get("distance")))
               for ix, seed, info in zip(episode_ids, seeds, infos)]
    frames: list[list[np.ndarray]] = [[] for _ in range(E)]
    active = np.ones(E, dtype=bool)

    bar = tqdm(total=max_steps, desc="plan", unit="step", disable=not progress)
    for _ in range(max_steps):
        start = time.perf_counter()
        actions = agent.act_batch(observations)
        act_ms = (time.perf_counter() - start) * 1e3
        energies = agent.stats.energies[-1]  # predicted energy of the plan being executed
        for e in np.flatnonzero(active):
            if record[e]:
                frames[e].append(compose_frame(observations[e]["pixels"], goals[e], results[e].energies + [float(energies[e])],
                                               results[e].steps, goal_text=goal_texts[e]))
            obs, _, terminated, truncated, info = envs[e].step(actions[e])
            observations[e], infos[e] = obs, info
            res = results[e]
            res.steps += 1
            res.plan_ms.append(act_ms)
            res.energies.append(float(energies[e]))
            res.distances.append(float(info.get("distance", math.nan)))
            if terminated or truncated:
                active[e] = False
        bar.update(1)
        bar.set_postfix(energy=f"{float(np.mean(energies)):.4f}", plan_ms=f"{act_ms:.0f}")
        if not active.any():
            break
    bar.close()

    for e, res in enumerate(results):  # the only place simulator success is read
        res.success = None if infos[e].get("is_success") is None else bool(infos[e]["is_success"])
        res.final_distance = _finite_or_none(infos[e].get("distance"))
        if record[e]:
            frames[e].append(compose_frame(observations[e]["pixels"], goals[e], res.energies, res.steps))
    return results, frames


GOAL_PROTOCOLS = ("anywhere", "near")


def near_goal_options(env: gym.Env, seed: int, steps: int) -> dict[str, Any]:
    """Reset options of the anchors' "near" protocol (LeWM, DINO-WM): the goal is where ``steps`` of
    the data collection's exploration policy (Ornstein-Uhlenbeck, seeded by ``seed``) take the scene
    from the episode's start state; the episode then starts from that same start state."""
    from jepa_world.data.collection import ExplorationConfig, OrnsteinUhlenbeckPolicy

    if steps < 1:
        raise ValueError(f"near_steps must be >= 1, got {steps}")
    env.reset(seed=int(seed))
    unwrapped = env.unwrapped
    start = unwrapped.sim_state()
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    policy = OrnsteinUhlenbeckPolicy(low, high, ExplorationConfig(), np.random.default_rng([int(seed), 25]))
    for _ in range(steps):
        env.step(policy(env))
    return {"goal_state": unwrapped.goal_state_from_current(), "start_state": start}


def protocol_options(envs: Sequence[gym.Env], seeds: Sequence[int], protocol: str,
                     near_steps: int) -> list[dict | None]:
    """Per-episode reset options for a goal protocol: ``anywhere`` (the env's own goal sampling, at
    least its minimum start distance away) or ``near``."""
    if protocol not in GOAL_PROTOCOLS:
        raise ValueError(f"goal protocol {protocol!r}; expected one of {list(GOAL_PROTOCOLS)}")
    if protocol == "anywhere":
        return [None] * len(seeds)
    return [near_goal_options(env, seed, near_steps) for env, seed in zip(envs, seeds)]


BASELINE_POLICIES = ("expert", "random")


class BaselinePolicy:
    """The reference policies, run through ``run_episodes`` exactly like a planner (same seeds, budget,
    success judgement): ``expert`` is the env's scripted expert (it reads simulator state, so it is an
    upper reference, not a competitor); ``random`` draws actions uniformly in the action box from a
    generator seeded per episode."""

    def __init__(self, kind: str, envs: Sequence[gym.Env]):
        if kind not in BASELINE_POLICIES:
            raise ValueError(f"baseline policy {kind!r}: expected one of {BASELINE_POLICIES}")
        self.kind, self.envs = kind, list(envs)
        self.objective = ObjectiveConfig(readout_weight=0.0)  # no proprio goal terms: run_episodes asks
        self.stats = AgentStats()
        self.generators: list[np.random.Generator] = []

    def reset(self, goal_image: np.ndarray, goal_state=None, seeds: Sequence[int] | None = None) -> None:
        count = len(goal_image)
        seeds = list(range(count)) if seeds is None else list(seeds)
        self.generators = [np.random.default_rng(int(s)) for s in seeds]
        self.stats = AgentStats()

    def act_batch(self, observations: list[dict]) -> np.ndarray:
        count = len(observations)
        if self.kind == "expert":
            actions = np.stack([env.unwrapped.expert_action() for env in self.envs[:count]])
        else:
            space = self.envs[0].action_space
            actions = np.stack([g.uniform(space.low, space.high) for g in self.generators[:count]])
        self.stats.plan_ms.append(0.0)
        self.stats.energies.append(np.zeros(count))  # no energy: the policy does not plan
        return actions.astype(np.float32)


# ---------------------------------------------------------------------------- setup from configs
REPO_ROOT = Path(__file__).resolve().parent.parent


def route_model_override(argv: list[str]) -> list[str]:
    """Let users write ``model=DIR`` on the command line: conf/model/ is the encoder-size config
    group, so Hydra would read a bare ``model=`` as a group choice. It becomes ``model_dir=DIR``."""
    return [f"model_dir={arg[len('model='):]}" if arg.startswith("model=") else arg for arg in argv]


def train_hint(env_name: str) -> str:
    return (f"train one with `python scripts/collect.py env={env_name} episodes=200 output_dir=data/{env_name}` then "
            f"`python scripts/posttrain.py data=data/{env_name} encoder=<pretrain checkpoint dir or random:tiny> "
            f"output_dir=outputs/posttrain-{env_name}`, and pass model=outputs/posttrain-{env_name}/checkpoints/last")


def resolve_model_dir(model: str, env_name: str) -> Path:
    """A world-model directory, relative to the cwd or the repo root; clear error when missing."""
    path = Path(model).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, REPO_ROOT / path]
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"no world model at model={model} (looked for config.json in {tried}); "
                            f"{train_hint(env_name)}")


def load_world_model(model: str, env_name: str, device: str = "cpu"):
    from jepa_world.world_model import WorldModel

    directory = resolve_model_dir(model, env_name)
    return WorldModel.from_pretrained(directory, map_location=device).eval().requires_grad_(False)


def model_image_size(world_model) -> int | None:
    encoder_cfg = getattr(getattr(world_model, "encoder", None), "cfg", None)
    return getattr(encoder_cfg, "img_size", None)


def make_env(env_cfg: dict[str, Any], image_size: int | None = None) -> gym.Env:
    """Build the env named in conf/env/<name>.yaml at the world model's image size."""
    import envs

    name = env_cfg["name"]
    size = image_size or env_cfg.get("image_size", 64)
    if image_size and env_cfg.get("image_size") not in (None, image_size):
        log.warning("env.image_size=%s but the world model was trained at %s px; rendering at %s px",
                    env_cfg.get("image_size"), image_size, image_size)
    return envs.make(name, image_size=size, **env_cfg.get("kwargs", {}))


ROLLOUT_PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def configure_speed(world_model, precision: str = "fp32", compile_planning: bool = False) -> None:
    """Opt-in speed paths of planning (docs/planning.md, Speed): ``precision="bf16"`` runs the rollout
    under bf16 autocast (not exact; faster only on CPUs with bf16 matmul units such as AMX), and
    ``compile_planning`` runs the observation encoder and the KV-cached rollout through torch.compile
    (``WorldModel.compile_for_planning``; exact to about 1e-6, the first plan pays the compile)."""
    if precision not in ROLLOUT_PRECISIONS:
        raise ValueError(f"rollout_precision={precision!r}; expected one of {list(ROLLOUT_PRECISIONS)}")
    if precision != "fp32":
        world_model.predictor.autocast_decoding(ROLLOUT_PRECISIONS[precision])
    if compile_planning:
        world_model.compile_for_planning()


def build_agent(cfg: dict[str, Any], world_model, env: gym.Env) -> MPCAgent:
    """MPCAgent from a plan/evaluate config: planner group, horizon, budget, objective, rollout speed paths."""
    configure_speed(world_model, str(cfg.get("rollout_precision", "fp32")), bool(cfg.get("compile", False)))
    planner_cfg = dict(cfg["planner"])
    name = planner_cfg.pop("name", None)
    if name is None:
        raise ValueError("planner config has no 'name' (expected planner=cem|mppi|adam)")
    objective = ObjectiveConfig(**cfg.get("objective", {}))
    return MPCAgent(world_model, make_planner(name, **planner_cfg), horizon=int(cfg["horizon"]),
                    replan_every=int(cfg["replan_every"]), time_budget_s=cfg.get("time_budget_s"),
                    action_low=env.action_space.low, action_high=env.action_space.high, objective=objective,
                    warm_start=bool(cfg.get("warm_start", True)), seed=int(cfg.get("seed", 0)),
                    context_frames=int(cfg.get("context_frames", 1)),
                    prediction_feedback=float(cfg.get("prediction_feedback", 0.0)))


SETTING_KEYS = ("policy", "model_dir", "goal", "seed", "episodes", "num_envs", "max_steps", "horizon", "replan_every", "context_frames", "prediction_feedback",
                "time_budget_s", "warm_start", "planner", "objective", "rollout_precision", "compile")


def run_settings(cfg: dict[str, Any], agent: MPCAgent | None = None) -> dict[str, Any]:
    """The resolved settings that decide a run, recorded in its JSON report (with the agent's objective
    as resolved for its world model, e.g. the readout weight a ``null`` chose)."""
    settings = {key: cfg[key] for key in SETTING_KEYS if key in cfg}
    settings["env"] = cfg["env"]["name"]
    if isinstance(agent, MPCAgent):
        settings["objective"] = asdict(agent.objective)
    return settings


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1 or null, got {threads}")
        torch.set_num_threads(int(threads))


# ---------------------------------------------------------------------------- rendering
def compose_frame(obs: np.ndarray, goal: np.ndarray, energies: list[float], step: int,
                  scale: int = VIDEO_SCALE, goal_text: str | None = None) -> np.ndarray:
    """Observation | goal side by side with the step, energy and an energy sparkline underneath.

    ``goal_text``: the sentence a language-goal agent plans toward; it is written under the images,
    and the goal panel is marked as the env's own goal, which that agent never sees."""
    from PIL import Image, ImageDraw

    pair = np.concatenate([obs, goal], axis=1).repeat(scale, axis=0).repeat(scale, axis=1)  # (h, 2w, 3)
    height, width = pair.shape[:2]
    canvas = Image.new("RGB", (width, height + STRIP_HEIGHT), (20, 20, 20))
    canvas.paste(Image.fromarray(pair), (0, 0))
    draw = ImageDraw.Draw(canvas)
    energy = f"{energies[-1]:.4f}" if energies else "-"
    status = f"step {step}  energy {energy}" + (f"  goal: \"{goal_text}\"" if goal_text else "")
    draw.text((4, height + 2), status, fill=(255, 255, 255))
    draw.text((width // 2 + 4, 2), "env goal (unseen)" if goal_text else "goal", fill=(255, 255, 0))
    draw.text((4, 2), "observation", fill=(255, 255, 0))
    if len(energies) > 1:
        values = np.asarray(energies, dtype=np.float64)
        lo, hi = values.min(), values.max()
        span = hi - lo if hi > lo else 1.0
        top, bottom = height + 18, height + STRIP_HEIGHT - 4
        xs = np.linspace(4, width - 4, len(values))
        ys = bottom - (values - lo) / span * (bottom - top)
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=(80, 200, 255), width=2)
    return np.asarray(canvas)


def write_video(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: int = 10) -> Path:
    """H.264 mp4 (yuv420p, readable by decord) written atomically."""
    import av

    if not frames:
        raise ValueError(f"no frames to write to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    height, width = frames[0].shape[:2]
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = width - width % 2, height - height % 2
            stream.pix_fmt = "yuv420p"
            for frame in frames:
                image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[: stream.height, : stream.width]), format="rgb24")
                container.mux(stream.encode(image))
            container.mux(stream.encode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_strip(path: str | os.PathLike, frames: Sequence[np.ndarray], panels: int = 6) -> Path:
    """strip.png: ``panels`` evenly spaced video frames (first and last included) side by side, a
    glanceable summary of an episode."""
    from PIL import Image

    if not frames:
        raise ValueError(f"no frames to write to {path}")
    picks = np.unique(np.linspace(0, len(frames) - 1, num=min(panels, len(frames))).round().astype(int))
    gap = np.full((frames[0].shape[0], 4, 3), 255, dtype=np.uint8)
    row = np.concatenate([part for i in picks for part in (frames[i], gap)][:-1], axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    try:
        Image.fromarray(row).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    try:
        tmp.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def plot_energy(path: str | os.PathLike, result: EpisodeResult, iteration_costs: np.ndarray | None = None) -> Path:
    """energy.png: predicted energy per step (and the simulator distance when known), plus the
    per-iteration energies of the last planning call."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    path = Path(path)
    panels = 2 if iteration_costs is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.5), squeeze=False)
    ax = axes[0, 0]
    steps = np.arange(1, len(result.energies) + 1)
    ax.plot(steps, result.energies, color="tab:blue", label="predicted energy")
    ax.set_xlabel("step")
    ax.set_ylabel("energy", color="tab:blue")
    distances = np.asarray(result.distances, dtype=np.float64)
    if distances.size and np.isfinite(distances).any():
        twin = ax.twinx()
        twin.plot(steps, distances, color="tab:red", label="distance to goal (sim)")
        twin.set_ylabel("distance (m, simulator)", color="tab:red")
    ax.set_title(f"episode seed {result.seed}")
    if iteration_costs is not None:
        axes[0, 1].plot(np.arange(1, len(iteration_costs) + 1), iteration_costs, marker="o")
        axes[0, 1].set_xlabel("planner iteration (last call)")
        axes[0, 1].set_ylabel("best energy")
        axes[0, 1].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.tight_layout()
    return save_figure(fig, path)


def plot_evaluation(path: str | os.PathLike, rows: Mapping[str, Sequence[EpisodeResult]],
                    success_threshold: float | None = None) -> Path | None:
    """evaluation.png, one row per goal protocol in ``rows``: every episode's simulator distance to its
    goal per step (green: success, red: miss, grey: not judged) and the sorted final distances, both
    against the success radius. None when no episode has a judged distance (image-only goals)."""
    judged_rows = {name: [r for r in results if r.distances and np.isfinite(np.asarray(r.distances, dtype=np.float64)).any()]
                   for name, results in rows.items()}
    judged_rows = {name: judged for name, judged in judged_rows.items() if judged}
    if not judged_rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = {True: "tab:green", False: "tab:red", None: "tab:grey"}
    fig, axes = plt.subplots(len(judged_rows), 2, figsize=(10, 3.6 * len(judged_rows)), squeeze=False)
    for (name, judged), (curves, finals) in zip(judged_rows.items(), axes):
        for result in judged:
            curves.plot(np.arange(1, len(result.distances) + 1), result.distances, color=colour[result.success],
                        linewidth=0.8, alpha=0.6)
        curves.set_xlabel("step")
        curves.set_ylabel("distance to goal (m, simulator)")
        ordered = sorted(judged, key=lambda r: r.final_distance if r.final_distance is not None else math.inf)
        finals.bar(np.arange(len(ordered)), [r.final_distance or 0.0 for r in ordered],
                   color=[colour[r.success] for r in ordered])
        finals.set_xlabel("episode (sorted by final distance)")
        finals.set_ylabel("final distance (m)")
        successes = sum(r.success is True for r in judged)
        finals.set_title(f"{name}: {successes}/{len(judged)} within the success radius", fontsize=10)
        curves.set_title(f"{name}: {len(judged)} episodes", fontsize=10)
        if success_threshold is not None:
            for ax in (curves, finals):
                ax.axhline(success_threshold, color="black", linewidth=0.8, linestyle="--", label="success radius")
            curves.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


# ---------------------------------------------------------------------------- reports
def plan_result(result: EpisodeResult, video_path: str | None, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """result.json of scripts/plan.py."""
    return {
        "success": result.success,
        "final_distance": result.final_distance,
        "initial_distance": result.initial_distance,
        "steps": result.steps,
        "plan_ms": result.plan_ms,
        "plan_ms_median": _finite_or_none(result.plan_ms_median),
        "energies": result.energies,
        "distances": [_finite_or_none(d) for d in result.distances],
        "seed": result.seed,
        "video_path": video_path,
        "settings": settings or {},
    }


def success_interval(successes: int, episodes: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% for z = 1.96) of a success rate, in percent. Fifty episodes pin a
    rate only to about +-8 points: 46/50 gives 81-97%, so two runs differing by a few episodes agree."""
    if episodes < 1 or not 0 <= successes <= episodes:
        raise ValueError(f"success_interval needs 0 <= successes <= episodes >= 1, got {successes}/{episodes}")
    p = successes / episodes
    centre = (p + z * z / (2 * episodes)) / (1 + z * z / episodes)
    half = z * math.sqrt(p * (1 - p) / episodes + z * z / (4 * episodes**2)) / (1 + z * z / episodes)
    return 100.0 * max(centre - half, 0.0), 100.0 * min(centre + half, 1.0)


def eval_info(results: Sequence[EpisodeResult], eval_s: float, video_paths: Sequence[str],
              settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """eval_info.json in LeRobot's shape: per_episode, aggregated (plus ``pc_success_ci95``, the
    Wilson interval of ``pc_success``), video_paths."""
    judged = [r.success for r in results if r.success is not None]
    distances = [r.final_distance for r in results if r.final_distance is not None]
    plan_ms = [ms for r in results for ms in r.plan_ms]
    aggregated = {
        "pc_success": 100.0 * float(np.mean(judged)) if judged else None,
        "pc_success_ci95": list(success_interval(sum(judged), len(judged))) if judged else None,
        "n_episodes": len(results),
        "eval_s": eval_s,
        "eval_ep_s": eval_s / max(len(results), 1),
        "avg_final_distance": float(np.mean(distances)) if distances else None,
        "plan_ms_median": float(np.median(plan_ms)) if plan_ms else None,
        "avg_steps": float(np.mean([r.steps for r in results])) if results else None,
    }
    payload = {"per_episode": [r.summary() for r in results], "aggregated": aggregated, "video_paths": list(video_paths)}
    if settings is not None:
        payload["settings"] = settings
    return payload


def episode_seeds(start_seed: int, episodes: int) -> list[int]:
    """LeRobot's convention: episode i uses seed start_seed + i."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    return [start_seed + i for i in range(episodes)]


__all__ = ["EpisodeResult", "compose_frame", "episode_seeds", "eval_info", "plan_result", "plot_energy",
           "run_episodes", "success_interval", "write_json", "write_video"]
