"""Roll out exploration and scripted-expert episodes in parallel and write a LeRobot v3.0 dataset.

Each episode i draws everything from `SeedSequence([seed, i])`: which policy runs it (expert with
probability `expert_ratio`, else smooth random exploration), the env reset seed and the policy's
noise. Episode i is therefore the same whatever the worker count or the order workers finish in,
and a rerun into the same output directory resumes at the first uncommitted episode.

Workers (spawned processes, one env each) roll out an episode and encode its mp4; the parent
commits episodes in index order (data parquet, then the episode table and info.json, atomically).
A crash loses only episodes not yet committed: those in flight, plus any finished out of order
while an earlier one was still running.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from jepa_world.data.lerobot import EpisodeRecord, LeRobotWriter, check_video_settings, write_episode_videos

log = logging.getLogger(__name__)

POLICIES = ("expert", "random")
CAMERA = "main"
# conf/env/<name>.yaml keys that describe an env rather than configure it.
ENV_DESCRIPTION_KEYS = ("name", "max_episode_steps", "action_dim", "state_dim", "success_threshold", "goal_readout_dims")


@dataclass
class ExplorationConfig:
    """Ornstein-Uhlenbeck noise in the action box normalised to [-1, 1]: x <- x - theta*x + sigma*N(0,1)."""

    theta: float = 0.15  # pull back to the box centre per step; smaller = longer, smoother sweeps
    sigma: float = 0.4   # per-step innovation, in half-box units

    def validate(self) -> None:
        if not 0.0 < self.theta <= 1.0:
            raise ValueError(f"exploration.theta={self.theta}, expected 0 < theta <= 1")
        if self.sigma <= 0.0:
            raise ValueError(f"exploration.sigma={self.sigma}, expected > 0")


# Video options added after datasets were first written, at the value those datasets used: identity()
# leaves them out there, so that a collection started before the options existed still resumes.
UNRECORDED_VIDEO_DEFAULTS: dict[str, str | None] = {"pix_fmt": None, "vcodec": "libx264"}


@dataclass
class CollectConfig:
    env: str = "reach"
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to envs.make (e.g. image_size)
    episodes: int = 200
    output_dir: str = "data/reach"
    seed: int = 0
    expert_ratio: float = 0.5     # fraction of episodes driven by the scripted expert
    expert_noise: float = 0.1     # Gaussian noise on expert actions, in half-box units
    episode_length: int = 50      # frames (= actions) recorded per episode
    workers: int = 2              # rollout processes; <= 1 runs in this process
    fps: int | None = None        # video/timestamp rate; None: the env's metadata["render_fps"]
    crf: int = 0                  # encoder quality (lower = better); libx264 crf 0 is lossless (yuv444p by default)
    gop: int = 10                 # keyframe interval; short GOPs keep windowed decoding cheap
    pix_fmt: str | None = None    # None: yuv444p at crf 0, else yuv420p; "yuv420p" (crf >= 1) plays in browsers
    vcodec: str = "libx264"       # or "libsvtav1" (AV1, LeRobot's default; yuv420p, lossy)
    task: str | None = None       # task string stored in meta/tasks.parquet
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)

    def __post_init__(self) -> None:
        if isinstance(self.exploration, dict):
            self.exploration = ExplorationConfig(**self.exploration)

    def validate(self) -> None:
        checks = [
            (isinstance(self.episodes, int) and self.episodes >= 1, f"episodes={self.episodes!r}, expected an int >= 1"),
            (isinstance(self.seed, int) and self.seed >= 0, f"seed={self.seed!r}, expected an int >= 0"),
            (0.0 <= self.expert_ratio <= 1.0, f"expert_ratio={self.expert_ratio}, expected 0 <= ratio <= 1"),
            (self.expert_noise >= 0.0, f"expert_noise={self.expert_noise}, expected >= 0"),
            (isinstance(self.episode_length, int) and self.episode_length >= 2,
             f"episode_length={self.episode_length!r}, expected an int >= 2"),
            (isinstance(self.workers, int) and self.workers >= 0, f"workers={self.workers!r}, expected an int >= 0"),
            (self.fps is None or (isinstance(self.fps, int) and self.fps > 0), f"fps={self.fps!r}, expected a positive int or null"),
            (0 <= self.crf <= 51, f"crf={self.crf}, expected 0..51 (libx264)"),
            (self.gop >= 1, f"gop={self.gop}, expected >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_video_settings(self.vcodec, self.crf, self.pix_fmt)
        self.exploration.validate()

    def identity(self) -> dict[str, Any]:
        """Everything that decides episode contents; a resumed run must match it exactly."""
        ident = dataclasses.asdict(self)
        for key in ("episodes", "output_dir", "workers"):
            ident.pop(key)
        for key, earlier in UNRECORDED_VIDEO_DEFAULTS.items():
            if ident[key] == earlier:
                ident.pop(key)
        return json.loads(json.dumps(ident))  # normalise tuples etc. to what info.json round-trips


# ----------------------------------------------------------------------------- policies

@dataclass(frozen=True)
class EpisodePlan:
    episode_index: int
    policy: str
    env_seed: int
    policy_seed: int


def plan_episode(seed: int, episode_index: int, expert_ratio: float) -> EpisodePlan:
    """Per-episode policy choice and seeds, derived only from (run seed, episode index)."""
    sequence = np.random.SeedSequence([seed, episode_index])
    choice, env_seed, policy_seed = sequence.generate_state(3, dtype=np.uint32)
    policy = "expert" if choice / 2.0**32 < expert_ratio else "random"
    return EpisodePlan(episode_index, policy, int(env_seed), int(policy_seed))


class OrnsteinUhlenbeckPolicy:
    """Temporally correlated random actions inside [low, high]: smooth sweeps, not white jitter."""

    def __init__(self, low: np.ndarray, high: np.ndarray, cfg: ExplorationConfig, rng: np.random.Generator):
        self.mid, self.half = (high + low) / 2, (high - low) / 2
        self.theta, self.sigma, self.rng = cfg.theta, cfg.sigma, rng
        stationary_std = cfg.sigma / np.sqrt(cfg.theta * (2 - cfg.theta))
        self.x = rng.normal(0.0, stationary_std, size=low.shape)

    def __call__(self, env) -> np.ndarray:
        self.x = (1 - self.theta) * self.x + self.sigma * self.rng.normal(size=self.x.shape)
        return self.mid + self.half * np.clip(self.x, -1.0, 1.0)


class NoisyExpertPolicy:
    """The env's scripted expert plus Gaussian noise (in half-box units) for state coverage."""

    def __init__(self, low: np.ndarray, high: np.ndarray, noise: float, rng: np.random.Generator):
        self.half, self.noise, self.rng = (high - low) / 2, noise, rng

    def __call__(self, env) -> np.ndarray:
        action = np.asarray(env.unwrapped.expert_action(), np.float64)
        return action + self.noise * self.half * self.rng.normal(size=action.shape)


def make_policy(plan: EpisodePlan, env, cfg: CollectConfig) -> Callable:
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    rng = np.random.default_rng(plan.policy_seed)
    if plan.policy == "expert":
        return NoisyExpertPolicy(low, high, cfg.expert_noise, rng)
    return OrnsteinUhlenbeckPolicy(low, high, cfg.exploration, rng)


# ----------------------------------------------------------------------------- rollout

def make_env(cfg: CollectConfig):
    import envs  # imported late: worker processes set MUJOCO_GL first

    try:
        return envs.make(cfg.env, max_episode_steps=cfg.episode_length, **cfg.env_kwargs)
    except TypeError as e:
        raise ValueError(f"env {cfg.env!r} rejected env_kwargs {sorted(cfg.env_kwargs)}: {e}") from e


def rollout_episode(env, plan: EpisodePlan, cfg: CollectConfig) -> EpisodeRecord:
    """Run one episode: frame t holds the observation at t and the (clipped) action taken from it."""
    obs, info = env.reset(seed=plan.env_seed)
    policy = make_policy(plan, env, cfg)
    low, high = env.action_space.low, env.action_space.high
    n = cfg.episode_length
    frames = np.empty((n, *obs["pixels"].shape), np.uint8)  # (L, H, W, 3)
    states = np.empty((n, *obs["state"].shape), np.float32)  # (L, S)
    actions = np.empty((n, *low.shape), np.float32)  # (L, A)
    rewards = np.empty(n, np.float32)
    successes = np.empty(n, bool)
    goal_state = env.unwrapped.goal_state()
    for t in range(n):
        frames[t], states[t] = obs["pixels"], obs["state"]
        actions[t] = np.clip(policy(env), low, high)
        obs, reward, terminated, truncated, info = env.step(actions[t])
        rewards[t], successes[t] = reward, bool(info.get("is_success"))
        if (terminated or truncated) and t < n - 1:
            raise RuntimeError(f"env {cfg.env!r} ended episode {plan.episode_index} at step {t + 1} of "
                               f"episode_length={n}; collect with terminate_on_success off and a long enough time limit")
    extra = {
        "seed": plan.env_seed, "policy": plan.policy, "success": bool(info.get("is_success")),
        "final_distance": float(info.get("distance", float("nan"))),
        "goal_state": json.dumps(goal_state) if goal_state is not None else None,
    }
    return EpisodeRecord(actions, states, {CAMERA: frames}, rewards, successes, extra)


# Worker-process globals: one env per process, built once by the pool initializer.
_worker: dict[str, Any] = {}


def _init_worker(cfg: CollectConfig, root: str, fps: int) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    _worker.update(cfg=cfg, root=Path(root), fps=fps, env=make_env(cfg))


def _run_episode(episode_index: int) -> EpisodeRecord:
    cfg: CollectConfig = _worker["cfg"]
    plan = plan_episode(cfg.seed, episode_index, cfg.expert_ratio)
    record = rollout_episode(_worker["env"], plan, cfg)
    record.image_stats = write_episode_videos(_worker["root"], episode_index, record.frames, _worker["fps"], cfg.crf,
                                              cfg.gop, cfg.pix_fmt, cfg.vcodec)
    record.frames = {}  # already on disk; don't pickle pixels back to the parent
    return record


@dataclass
class CollectSummary:
    output_dir: str
    episodes: int          # committed in total
    new_episodes: int      # committed by this run
    frames: int
    seconds: float
    success_rate: dict[str, float]  # per policy, over all committed episodes

    @property
    def episodes_per_second(self) -> float:
        return self.new_episodes / self.seconds if self.seconds > 0 else float("nan")


def collect(cfg: CollectConfig) -> CollectSummary:
    """Collect episodes [already committed, cfg.episodes) into cfg.output_dir (resuming if it exists)."""
    cfg.validate()
    os.environ.setdefault("MUJOCO_GL", "egl")  # inherited by spawned workers
    probe = make_env(cfg)
    try:
        obs_space, act_space = probe.observation_space, probe.action_space
        fps = cfg.fps or int(round(probe.metadata.get("render_fps") or 10))
        unwrapped = probe.unwrapped
        h, w = obs_space["pixels"].shape[:2]
        action_dim, state_dim = act_space.shape[0], obs_space["state"].shape[0]
        action_names = list(getattr(unwrapped, "action_names", ()) or [f"a{i}" for i in range(action_dim)])
        state_names = list(getattr(unwrapped, "state_names", ()) or [f"s{i}" for i in range(state_dim)])
        action_state_map = [int(d) for d in getattr(unwrapped, "action_state_map", ())]
    finally:
        probe.close()
    if len(action_names) != action_dim or len(state_names) != state_dim:
        raise ValueError(f"env {cfg.env!r} names {len(action_names)} action / {len(state_names)} state dims but has "
                         f"{action_dim} / {state_dim}")
    if action_state_map and (len(action_state_map) > action_dim or not all(0 <= d < state_dim for d in action_state_map)):
        raise ValueError(f"env {cfg.env!r}: action_state_map {action_state_map} must map action dims to state dims "
                         f"in [0, {state_dim})")
    writer = LeRobotWriter(cfg.output_dir, fps=fps, action_names=action_names, state_names=state_names,
                           cameras={CAMERA: (h, w)}, task=cfg.task or f"{cfg.env}: match the goal image",
                           extra_info={"collection": cfg.identity(), "action_state_map": action_state_map},
                           robot_type=f"jepa_world/{cfg.env}", crf=cfg.crf, gop=cfg.gop, pix_fmt=cfg.pix_fmt,
                           vcodec=cfg.vcodec)
    start = writer.num_episodes
    pending = list(range(start, cfg.episodes))
    if start:
        log.info("%s already holds %d episodes; collecting %d more", cfg.output_dir, start, len(pending))
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.episodes, initial=min(start, cfg.episodes), unit="ep", desc=f"collect {cfg.env}", smoothing=0.1)

    def commit(record: EpisodeRecord) -> None:
        writer.add_episode(record, videos_written=True)
        bar.update(1)

    try:
        if cfg.workers <= 1 or len(pending) <= 1:
            _init_worker(cfg, cfg.output_dir, fps)
            try:
                for ep in pending:
                    commit(_run_episode(ep))
            finally:
                _worker.pop("env").close()
        elif pending:
            context = mp.get_context("spawn")
            with context.Pool(min(cfg.workers, len(pending)), initializer=_init_worker,
                              initargs=(cfg, cfg.output_dir, fps)) as pool:
                for record in pool.imap(_run_episode, pending):
                    commit(record)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0

    by_policy: dict[str, list[bool]] = {}
    for row in writer.episodes:
        by_policy.setdefault(row["policy"], []).append(bool(row["success"]))
    summary = CollectSummary(str(cfg.output_dir), writer.num_episodes, len(pending), writer.num_frames, seconds,
                             {p: float(np.mean(v)) for p, v in sorted(by_policy.items())})
    log.info("collected %d episodes (%d new) in %.1fs: %.2f episodes/s; success %s", summary.episodes,
             summary.new_episodes, seconds, summary.episodes_per_second, summary.success_rate)
    return summary


def config_from_hydra(cfg: dict[str, Any]) -> CollectConfig:
    """Map conf/collect.yaml (with its `env` group node) to a CollectConfig."""
    cfg = dict(cfg)
    env_node = dict(cfg.pop("env"))
    if "name" not in env_node:
        raise ValueError(f"env config {env_node} has no 'name'; conf/env/<name>.yaml must set name: <env>")
    env_kwargs = {k: v for k, v in env_node.items() if k not in ENV_DESCRIPTION_KEYS}
    env_kwargs.update(cfg.pop("env_kwargs", None) or {})
    known = {f.name for f in dataclasses.fields(CollectConfig)}
    unknown = set(cfg) - known
    if unknown:
        raise ValueError(f"unknown collect options {sorted(unknown)}; known: {sorted(known - {'env', 'env_kwargs'})}")
    return CollectConfig(env=env_node["name"], env_kwargs=env_kwargs, **cfg)
