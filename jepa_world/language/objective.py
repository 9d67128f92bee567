"""Language goals for latent MPC: plan toward a sentence instead of a goal image.

The energy of an action sequence is ``1 - cos(head(z_H), text(goal))``: the language head
embeds the world model's predicted last-frame latents into the shared space, where the
frozen text encoder embeds the goal sentence (VL-JEPA's shared space). When the head has a
goal memory (``goal_memory.py``) and ``language_position_weight > 0``, the sentence also
retrieves the experienced frames that match it best, and the energy adds the distance from
where the plan leaves the end effector to their mean position. Everything else
(planners, warm start, KV-cached rollouts, context frames) is the image-goal MPC path:
``LanguageGoalAgent`` only replaces ``MPCAgent.build_cost``.

Entry points used by the scripts (``goal="text:..."`` in plan.py, ``goal_kind=text`` in
evaluate.py) are ``plan_language_episode`` and ``evaluate_language_goals``. A language goal
names a region, so success is judged as "the end effector ends in the named region"
(``region_success``); evaluate also runs the image-goal agent on the same seeds and reports
both success measures for both, so the gap is measured on equal terms.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from jepa_world.language import captions as C
from jepa_world.language.data import EE_STATE_SLICE, TablePositions
from jepa_world.language.goal_memory import GoalMemory
from jepa_world.language.head import LanguageHead
from jepa_world.language.text_encoder import TextEncoder, load_text_encoder
from jepa_world.language.train import HEAD_DIR, HeadMeta, load_language_head
from planners.agent import MPCAgent
from planners.base import CostFn
from planners.objectives import ObjectiveConfig, reached_position_distance, uses_states

log = logging.getLogger(__name__)

TEXT_GOAL_PREFIX = "text:"
DEFAULT_POSITION_WEIGHT = 1.0  # as the image-goal readout term (planners.objectives.DEFAULT_READOUT_WEIGHT)
DEFAULT_TOP_K = 16
GoalTexts = Callable[[int], list[str]]  # number of envs -> one goal sentence per env


def build_language_cost_fn(
    world_model,
    head: LanguageHead,
    grid_hw: tuple[int, int],
    z0: Tensor,
    state0: Tensor | None,
    goal_embeddings: Tensor,
    query: Tensor | None = None,
    context_actions: Tensor | None = None,
) -> CostFn:
    """``cost_fn(actions (E,S,H,A)) -> (E,S)``: 1 - cos between the head's embedding of the last
    predicted frame and each env's goal-text embedding (E, Et). z0/state0/context_actions as in
    ``planners.objectives.build_cost_fn``."""
    if z0.ndim == 3:
        z0 = z0[:, None]  # (E, 1, N, D)
    E, T0 = z0.shape[:2]
    if goal_embeddings.shape != (E, head.config.embed_dim):
        raise ValueError(f"goal embeddings must be (E={E}, {head.config.embed_dim}), got {tuple(goal_embeddings.shape)}")
    if state0 is not None and state0.ndim == 2:
        state0 = state0[:, None]
    if T0 > 1 and (context_actions is None or context_actions.shape[:2] != (E, T0 - 1)):
        raise ValueError(f"a {T0}-frame context needs context_actions of shape (E={E}, {T0 - 1}, A)")
    goal = F.normalize(goal_embeddings, dim=-1)  # (E, Et)

    def context_for(samples: int) -> tuple[Tensor | None, ...]:
        if T0 == 1:
            ctx = (z0[:, 0], None if state0 is None else state0[:, 0], None)
        else:
            ctx = (z0, state0, context_actions)
        if E == 1:  # batch-1 context: the world model shares it across samples
            return ctx
        return tuple(None if x is None else x.repeat_interleave(samples, dim=0) for x in ctx)

    def cost_fn(actions: Tensor) -> Tensor:
        E_, S, H, A = actions.shape
        if E_ != E:
            raise ValueError(f"cost_fn got actions for {E_} envs, expected {E}")
        z_ctx, s_ctx, a_ctx = context_for(S)
        kwargs = {} if a_ctx is None else {"context_actions": a_ctx}
        if actions.requires_grad and torch.is_grad_enabled():
            kwargs["use_kv_cache"] = False  # the in-place KV cache is not differentiable
        pred = world_model.rollout(z_ctx, s_ctx, actions.reshape(E * S, H, A), **kwargs)  # (E*S, H, N, D)
        embedding = head(pred[:, -1], grid_hw, query).view(E, S, -1)  # (E, S, Et) unit norm
        return 1.0 - (embedding * goal[:, None]).sum(-1)  # (E, S)

    return cost_fn


class LanguageGoalAgent(MPCAgent):
    """``MPCAgent`` whose goal is a sentence per env; ``goal_texts(E)`` is asked at every reset.

    ``reset`` still takes the goal images ``run_episodes`` passes (they only size the batch and
    appear in videos); the cost never sees them.

    ``memory``/``position_weight``/``top_k``: the goal-memory term (module doc); the plan's end
    effector is the observed one plus the summed displacement actions, as for image goals.
    """

    def __init__(self, world_model, planner, head: LanguageHead, meta: HeadMeta, text: TextEncoder,
                 goal_texts: GoalTexts, memory: GoalMemory | None = None, position_weight: float = 0.0,
                 top_k: int = DEFAULT_TOP_K, **agent_kwargs: Any):
        # The goal is the sentence: the state readout must never decode the goal image passed to reset.
        agent_kwargs["objective"] = replace(agent_kwargs.get("objective") or ObjectiveConfig(), readout_weight=0.0)
        super().__init__(world_model, planner, **agent_kwargs)
        if self.prediction_feedback > 0:  # the shared-space cost reads no predicted-latent offset
            raise ValueError(f"prediction_feedback={self.prediction_feedback} is for image goals; set it to 0 for text goals")
        check_head_matches(head, meta, world_model)
        if position_weight < 0:
            raise ValueError(f"language_position_weight must be >= 0, got {position_weight}")
        if position_weight > 0 and memory is None:
            raise ValueError(f"language_position_weight={position_weight} needs the head's goal memory "
                             "(goal_memory.safetensors, written by scripts/train_language.py); retrain the head or set it to 0")
        self.head = head.to(self.device).eval().requires_grad_(False)
        self.meta, self.text, self.goal_texts = meta, text, goal_texts
        self.query = text.encode([C.query("arm")]).to(self.device) if meta.use_query else None
        self.memory = memory if position_weight > 0 else None
        self.position_weight, self.top_k = float(position_weight), int(top_k)
        if self.memory is not None:
            self.memory.check_top_k(self.top_k)
            self.uses_states = True  # the term starts from the observed end effector
        self.current_texts: list[str] = []
        self._text_goal: Tensor | None = None
        self.goal_positions: Tensor | None = None  # (E, 3) where the memory grounds each sentence

    def reset(self, goal_image, goal_state=None, seeds=None) -> None:
        super().reset(goal_image, goal_state=goal_state, seeds=seeds)
        texts = list(self.goal_texts(self.num_envs))
        if len(texts) != self.num_envs:
            raise ValueError(f"goal_texts gave {len(texts)} sentences for {self.num_envs} envs")
        self.current_texts = texts
        self._text_goal = self.text.encode(texts).to(self.device)  # (E, Et); empty text raises here
        if self.memory is not None:
            self.goal_positions = self.memory.locate(self._text_goal, self.top_k).to(self.device)

    def build_cost(self, z0: Tensor, state0: Tensor | None, context_actions: Tensor | None) -> CostFn:
        rollout_state0 = state0 if uses_states(self.world_model) else None
        shared_space = build_language_cost_fn(self.world_model, self.head, self.meta.grid_hw, z0, rollout_state0,
                                              self._text_goal, self.query, context_actions)
        if self.memory is None:
            return shared_space
        start = (state0[:, -1] if state0.ndim == 3 else state0)[:, EE_STATE_SLICE]  # (E, 3) observed now
        goal, weight = self.goal_positions, self.position_weight  # (E, 3)

        def cost_fn(actions: Tensor) -> Tensor:
            return shared_space(actions) + weight * reached_position_distance(start, actions, goal)

        return cost_fn


def check_head_matches(head: LanguageHead, meta: HeadMeta, world_model) -> None:
    """A head is only meaningful on the latent space it was trained on."""
    grid = tuple(world_model.predictor.config.grid_hw)
    dim = world_model.latent_dim
    if tuple(meta.grid_hw) != grid or head.config.latent_dim != dim:
        raise ValueError(
            f"the language head was trained on latents with grid {tuple(meta.grid_hw)} and dim {head.config.latent_dim} "
            f"(world_model={meta.world_model}) but this world model gives grid {grid} and dim {dim}; "
            "train a head on this world model: python scripts/train_language.py world_model=<its dir>"
        )


class GoalRegions:
    """Region captions for an env's goals and the region judge for language-goal success."""

    def __init__(self, env):
        self.table = TablePositions.from_env(env)

    def region_of(self, xyz: np.ndarray) -> int:
        return int(C.region_index(self.table(np.asarray(xyz, np.float64)[None]))[0])

    def goal_text(self, env, template: int, split: str = "heldout") -> str:
        """The env's current goal, stated as its end-effector region in a paraphrase of ``split``."""
        return C.caption("arm", self.region_of(env.unwrapped.goal_state()["ee"]), split, template)

    def region_success(self, env, region: int) -> bool:
        """Whether the end effector is now in ``region`` (read after the episode, for judging only)."""
        base = env.unwrapped
        if not hasattr(base, "ee_position"):
            raise ValueError(f"{type(base).__name__} has no end effector (ee_position); language goals need an arm env")
        return self.region_of(base.ee_position()) == region


def _load_head(cfg: dict[str, Any], world_model) -> tuple[LanguageHead, HeadMeta, TextEncoder, GoalMemory | None]:
    head_dir = cfg.get("language_head") or _bundled_head(cfg)
    if not head_dir:
        raise ValueError("a language goal needs language_head=<dir> (the language_head/ folder written by "
                         "scripts/train_language.py), or a world-model directory that carries one in language_head/")
    head, meta = load_language_head(head_dir)
    check_head_matches(head, meta, world_model)
    return head, meta, load_text_encoder(meta.text_encoder), GoalMemory.load(head_dir)


def resolve_position_weight(weight: float | None, memory: GoalMemory | None) -> float:
    """None: the goal-memory term is on (``DEFAULT_POSITION_WEIGHT``) when the head has a memory."""
    if weight is None:
        return DEFAULT_POSITION_WEIGHT if memory is not None else 0.0
    return float(weight)


def _bundled_head(cfg: dict[str, Any]) -> str | None:
    """``<model_dir>/language_head`` when the world model ships with a head trained on its latents."""
    from jepa_world import evaluation as ev

    bundled = ev.resolve_model_dir(str(cfg["model_dir"]), cfg["env"]["name"]) / HEAD_DIR
    if (bundled / "config.json").is_file():
        log.info("language head: %s (bundled with the world model)", bundled)
        return str(bundled)
    return None


def build_language_agent(cfg: dict[str, Any], world_model, env, goal_texts: GoalTexts) -> LanguageGoalAgent:
    from jepa_world import evaluation as ev

    head, meta, text, memory = _load_head(cfg, world_model)
    image_agent = ev.build_agent(cfg, world_model, env)  # the configured planner/horizon/objective settings
    return LanguageGoalAgent(
        world_model, image_agent.planner, head, meta, text, goal_texts, memory=memory,
        position_weight=resolve_position_weight(cfg.get("language_position_weight"), memory),
        top_k=int(cfg.get("language_top_k", DEFAULT_TOP_K)),
        horizon=image_agent.horizon,
        replan_every=image_agent.replan_every, time_budget_s=image_agent.time_budget_s,
        action_low=env.action_space.low, action_high=env.action_space.high, objective=image_agent.objective,
        warm_start=image_agent.warm_start, seed=image_agent.seed, context_frames=image_agent.context_frames,
        prediction_feedback=image_agent.prediction_feedback,
    )


def language_settings(agent: LanguageGoalAgent) -> dict[str, Any]:
    """The goal-memory settings as resolved (a null weight made concrete), for JSON reports."""
    return {"language_position_weight": agent.position_weight,
            "language_top_k": agent.top_k if agent.memory is not None else None}


def _grounded(agent: LanguageGoalAgent, env_index: int) -> list[float] | None:
    """Where the goal memory grounded env ``env_index``'s sentence (None without the memory term)."""
    if agent.goal_positions is None:
        return None
    return [round(float(v), 4) for v in agent.goal_positions[env_index]]


def parse_text_goal(goal: str) -> str:
    text = goal[len(TEXT_GOAL_PREFIX):].strip()
    if not text:
        raise ValueError(f"goal={goal!r} has an empty sentence after {TEXT_GOAL_PREFIX!r}; e.g. "
                         "goal=\"text:move the arm to the upper left\"")
    return text


def plan_language_episode(cfg: dict[str, Any]) -> dict[str, Any]:
    """scripts/plan.py with ``goal="text:..."``: one episode toward a sentence; region success if it names one."""
    from jepa_world import evaluation as ev

    text = parse_text_goal(str(cfg["goal"]))
    ev.set_threads(cfg.get("threads"))
    world_model = ev.load_world_model(str(cfg["model_dir"]), cfg["env"]["name"], cfg["device"])
    env = ev.make_env(cfg["env"], ev.model_image_size(world_model))
    try:
        agent = build_language_agent(cfg, world_model, env, lambda n: [text] * n)
        regions = GoalRegions(env)
        (result,), (frames,) = ev.run_episodes([env], agent, [int(cfg["seed"])], int(cfg["max_steps"]),
                                               record_video=bool(cfg["video"]), progress=True)
        region = C.parse_region(text)
        success = None if region is None else regions.region_success(env, region)
    finally:
        env.close()
    out = os.path.abspath(cfg["output_dir"])
    video = str(ev.write_video(os.path.join(out, "episode.mp4"), frames, fps=int(cfg["fps"]))) if frames else None
    result.success, result.final_distance = success, None  # the env's own image goal is not this goal
    payload = ev.plan_result(result, video, {**ev.run_settings(cfg, agent), **language_settings(agent)})
    payload.update(goal_text=text, goal_region=None if region is None else C.REGIONS[region], success_measure="region",
                   goal_position=_grounded(agent, 0))
    ev.write_json(os.path.join(out, "result.json"), payload)
    return payload


def _run_goal_mode(cfg, world_model, envs, seeds, language: bool) -> tuple[list[dict[str, Any]], MPCAgent]:
    """Episodes over ``seeds`` with text (held-out paraphrases) or image goals; per-episode records and the agent."""
    from jepa_world import evaluation as ev

    regions = GoalRegions(envs[0])
    n_templates = len(C.templates("arm", "heldout"))
    batch_ids: list[int] = []

    def goal_texts(num: int) -> list[str]:
        return [regions.goal_text(env, template=ix % n_templates) for env, ix in zip(envs[:num], batch_ids)]

    agent = build_language_agent(cfg, world_model, envs[0], goal_texts) if language else ev.build_agent(cfg, world_model, envs[0])
    records = []
    num_envs = len(envs)
    for first in range(0, len(seeds), num_envs):
        batch = seeds[first:first + num_envs]
        batch_ids[:] = list(range(first, first + len(batch)))
        record = [ix < int(cfg.get("max_videos", 0)) for ix in batch_ids]
        results, frames = ev.run_episodes(envs[:len(batch)], agent, batch, int(cfg["max_steps"]), episode_ids=batch_ids,
                                          record_video=record)
        for env, res, ix, episode_frames in zip(envs, results, batch_ids, frames):
            video = None
            if episode_frames:
                name = f"{'text' if language else 'image'}_goal_episode_{ix}.mp4"
                video = str(ev.write_video(os.path.join(os.path.abspath(cfg["output_dir"]), "videos", name), episode_frames,
                                           fps=int(cfg.get("fps", 10))))
            goal_region = regions.region_of(env.unwrapped.goal_state()["ee"])
            records.append({
                "episode_ix": ix, "seed": res.seed, "success": res.success,
                "region_success": regions.region_success(env, goal_region),
                "final_distance": res.final_distance, "goal_region": C.REGIONS[goal_region],
                "goal_text": agent.current_texts[ix - first] if language else None,
                "goal_position": _grounded(agent, ix - first) if language else None,
                "plan_ms_median": res.plan_ms_median, "video_path": video,
            })
    return records, agent


def _aggregate(records: list[dict[str, Any]], eval_s: float) -> dict[str, Any]:
    judged = [r["success"] for r in records if r["success"] is not None]
    distances = [r["final_distance"] for r in records if r["final_distance"] is not None]
    return {
        "n_episodes": len(records),
        "pc_success": 100.0 * float(np.mean(judged)) if judged else None,
        "pc_region_success": 100.0 * float(np.mean([r["region_success"] for r in records])),
        "avg_final_distance": float(np.mean(distances)) if distances else float("nan"),
        "plan_ms_median": float(np.median([r["plan_ms_median"] for r in records])),
        "eval_s": eval_s,
    }


def evaluate_language_goals(cfg: dict[str, Any]) -> dict[str, Any]:
    """scripts/evaluate.py with ``goal_kind=text``: held-out-paraphrase goals vs image goals, same seeds.

    Writes eval_info.json: per-episode records and aggregates of the language run (top level,
    the shape evaluate.py prints) and of the image run (``image_goal``), both judged by env
    success (within the env's threshold of the exact goal) and by region success.
    """
    from jepa_world import evaluation as ev

    ev.set_threads(cfg.get("threads"))
    seeds = ev.episode_seeds(int(cfg["seed"]), int(cfg["episodes"]))
    world_model = ev.load_world_model(str(cfg["model_dir"]), cfg["env"]["name"], cfg["device"])
    envs = [ev.make_env(cfg["env"], ev.model_image_size(world_model)) for _ in range(min(int(cfg["num_envs"]), len(seeds)))]
    info: dict[str, Any] = {}
    try:
        start = time.perf_counter()
        language, language_agent = _run_goal_mode(cfg, world_model, envs, seeds, language=True)
        info = {"per_episode": language, "aggregated": _aggregate(language, time.perf_counter() - start),
                "goal_kind": "text", "template_split": "heldout",
                "settings": {**ev.run_settings(cfg), **language_settings(language_agent)}}
        if cfg.get("compare_image_goals", True):
            start = time.perf_counter()
            image, _ = _run_goal_mode(cfg, world_model, envs, seeds, language=False)
            info["image_goal"] = {"per_episode": image, "aggregated": _aggregate(image, time.perf_counter() - start)}
    finally:
        for env in envs:
            env.close()
    ev.write_json(os.path.join(os.path.abspath(cfg["output_dir"]), "eval_info.json"), info)
    lang, image = info["aggregated"], info.get("image_goal", {}).get("aggregated")
    log.info("language goals: region success %.1f%%, env success %s", lang["pc_region_success"], lang["pc_success"])
    if image:
        log.info("image goals:    region success %.1f%%, env success %s", image["pc_region_success"], image["pc_success"])
    return info
