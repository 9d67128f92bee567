"""Receding-horizon MPC agent around a latent world model.

    agent = MPCAgent(world_model, planner, horizon=5, replan_every=1, time_budget_s=2.0,
                     action_low=env.action_space.low, action_high=env.action_space.high)
    agent.reset(goal_image)           # (H, W, 3) uint8, or (E, H, W, 3) for E envs
    action = agent.act(obs)           # obs {"pixels": (H, W, 3) uint8, "state": (Ds,)}
    actions = agent.act_batch(obs_list)  # E observations -> (E, A)

Each replanning call encodes the observation, plans from a warm start (the previous plan
shifted by the number of steps executed since, padded with the box centre) and returns
the next action(s) of the best plan. With ``context_frames=k`` the predictor is fed the
last k observed frames and the actions executed between them (as in training windows);
the world model runs that shared context once per planning call through its KV cache. Only observations enter planning, never simulator
state. The agent exposes ``last_plan``, ``last_energies`` (per-iteration best energy) and
``plan_ms`` for logging.

``prediction_feedback=L`` (in (0, 1]; 0 = off) makes the MPC offset-free: after each planning call the
agent predicts the latent its executed actions lead to, compares it with the latent it then observes,
and keeps a running estimate of the predictor's persistent error, d <- d + L * (observed - predicted - d),
which every later prediction is shifted by. A biased predictor otherwise stops the arm where it
*predicts* the goal to be. Only observed latents enter; no state labels.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from planners.base import CostFn, Planner, PlanResult
from planners.objectives import (ObjectiveConfig, build_cost_fn, context_rollout, model_state_dim,
                                 rollout_context, uses_states)

log = logging.getLogger(__name__)


@dataclass
class AgentStats:
    plan_ms: list[float] = field(default_factory=list)  # wall time of each planning call
    iterations: list[int] = field(default_factory=list)
    energies: list[np.ndarray] = field(default_factory=list)  # (E,) best energy after each planning call

    def __str__(self) -> str:
        """One line for logs: the full lists stay available as attributes."""
        if not self.plan_ms:
            return "AgentStats(no planning calls yet)"
        return (f"AgentStats({len(self.plan_ms)} planning calls, median {np.median(self.plan_ms):.1f} ms, "
                f"{np.mean(self.iterations):.1f} planner iterations on average, "
                f"last best energy {np.array2string(self.energies[-1], precision=4)})")


def check_pixels(pixels: np.ndarray | Tensor, what: str) -> np.ndarray:
    """(H, W, 3) or (E, H, W, 3) uint8 image(s), as cameras and envs give them -> (E, H, W, 3).

    Any other dtype raises: float pixels are ambiguous ([0, 1], [0, 255] or already normalised)
    and a wrong guess changes the plan without a warning. Blank frames raise too.
    """
    pixels = pixels.detach().cpu().numpy() if isinstance(pixels, Tensor) else np.asarray(pixels)
    if pixels.ndim not in (3, 4) or pixels.shape[-1] != 3:
        raise ValueError(f"{what} must be (H, W, 3) or (E, H, W, 3) RGB, got shape {pixels.shape}")
    if pixels.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 RGB in [0, 255], got dtype {pixels.dtype}; convert float images in "
                         "[0, 1] with (x * 255).round().astype(np.uint8)")
    if pixels.ndim == 3:  # reshape, not [None]: the strides of a stacked batch, so a compiled encoder compiles once
        pixels = np.ascontiguousarray(pixels).reshape(1, *pixels.shape)
    flat = pixels.reshape(pixels.shape[0], -1)
    blank = flat.min(axis=1) == flat.max(axis=1)
    if blank.any():
        idx = int(np.flatnonzero(blank)[0])
        raise ValueError(f"{what} {idx} is blank (every pixel equals {flat[idx, 0]}); the camera is not rendering "
                         "(check MUJOCO_GL=egl) or the frame is corrupt")
    return pixels


class MPCAgent:
    def __init__(
        self,
        world_model,
        planner: Planner,
        horizon: int = 5,
        replan_every: int = 1,
        time_budget_s: float | None = None,
        action_low: np.ndarray | Tensor | None = None,
        action_high: np.ndarray | Tensor | None = None,
        objective: ObjectiveConfig | None = None,
        warm_start: bool = True,
        seed: int = 0,
        context_frames: int = 1,
        prediction_feedback: float = 0.0,
    ):
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if not 1 <= replan_every <= horizon:
            raise ValueError(f"replan_every must be in [1, horizon={horizon}], got {replan_every}")
        if time_budget_s is not None and time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be positive or None, got {time_budget_s}")
        if context_frames < 1:
            raise ValueError(f"context_frames must be >= 1, got {context_frames}")
        if not (isinstance(prediction_feedback, (int, float)) and 0.0 <= prediction_feedback <= 1.0):
            raise ValueError(f"prediction_feedback must be a gain in [0, 1] (0: off), got {prediction_feedback!r}")
        if action_low is None or action_high is None:
            raise ValueError("MPCAgent needs action_low and action_high (e.g. env.action_space.low/high) "
                             "so every action it returns is inside the env's bounds")
        self.world_model = world_model
        self.planner = planner
        self.horizon, self.replan_every, self.time_budget_s = horizon, replan_every, time_budget_s
        self.objective = (objective or ObjectiveConfig()).resolve(world_model)
        self.objective.validate()
        self.warm_start = warm_start
        self.seed = seed
        self.context_frames = context_frames
        self.prediction_feedback = float(prediction_feedback)
        params = next(iter(world_model.parameters()), None) if hasattr(world_model, "parameters") else None
        self.device = params.device if params is not None else torch.device("cpu")
        self.uses_states = uses_states(world_model) or self.objective.needs_proprio
        self.state_dim = model_state_dim(world_model) or None  # None: length unknown or no states (proprio cost only)
        self.action_low = torch.as_tensor(np.asarray(action_low, dtype=np.float32), device=self.device)
        self.action_high = torch.as_tensor(np.asarray(action_high, dtype=np.float32), device=self.device)
        self.generators: list[torch.Generator] = []
        self._goal_z: Tensor | None = None
        self._goal_state: Tensor | None = None
        self._goal_readout: Tensor | None = None
        self.last_plan: Tensor | None = None  # (E, H, A)
        self.last_result: PlanResult | None = None
        self._steps_since_plan = 0
        self.stats = AgentStats()
        # Observed history: latents (E,N,D) and states (E,Ds) per frame, actions (E,A) between frames.
        self._latents: list[Tensor] = []
        self._states: list[Tensor | None] = []
        self._actions: list[Tensor] = []
        # prediction_feedback: the latent predicted for the next planning call's observation, and the
        # running estimate of the predictor's error (E, N, D), added to every prediction.
        self._predicted_next: Tensor | None = None
        self.latent_offset: Tensor | None = None

    # -- public API ---------------------------------------------------------------------
    @property
    def num_envs(self) -> int:
        if self._goal_z is None:
            raise RuntimeError("call reset(goal_image) before act()")
        return self._goal_z.shape[0]

    @property
    def last_energies(self) -> Tensor | None:
        """(E, iters) best predicted energy per planner iteration of the last planning call."""
        return None if self.last_result is None else self.last_result.costs

    @property
    def plan_ms(self) -> list[float]:
        return self.stats.plan_ms

    def reset(self, goal_image: np.ndarray | Tensor, goal_state: np.ndarray | Tensor | None = None,
              seeds: list[int] | None = None) -> None:
        """Set the goal for E = goal_image.shape[0] envs (or 1) and forget the previous plan.

        Env e plans with its own generator seeded ``seeds[e]`` (default ``seed + e``), so an
        episode's actions do not depend on how many envs are batched with it.
        """
        pixels = check_pixels(goal_image, "goal image")
        with self.planning_mode():  # as the observations' latents: a compiled encoder sees one kind of tensor
            self._goal_z = self.encode(pixels)
        self._goal_readout = None
        if self.objective.readout_weight > 0:
            self._goal_readout = self.world_model.decode_state(torch.as_tensor(pixels, device=self.device))  # (E, K)
        self._goal_state = None if goal_state is None else torch.as_tensor(
            np.asarray(goal_state, dtype=np.float32), device=self.device).reshape(pixels.shape[0], -1)
        self.last_plan, self.last_result = None, None
        self._steps_since_plan = 0
        self.stats = AgentStats()
        self._latents, self._states, self._actions = [], [], []
        self._predicted_next, self.latent_offset = None, None
        seeds = [self.seed + e for e in range(pixels.shape[0])] if seeds is None else list(seeds)
        if len(seeds) != pixels.shape[0]:
            raise ValueError(f"got {len(seeds)} seeds for {pixels.shape[0]} goal images")
        self.generators = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]

    def act(self, obs: dict) -> np.ndarray:
        """One observation {"pixels": (H,W,3), "state": (Ds,)} -> one action (A,) inside the bounds."""
        if self.num_envs != 1:
            raise ValueError(f"the agent was reset with {self.num_envs} goals; use act_batch for several envs")
        return self.act_batch([obs])[0]

    def act_batch(self, observations: list[dict]) -> np.ndarray:
        """E observations -> (E, A) actions, planning for all envs in one batched call."""
        if len(observations) != self.num_envs:
            raise ValueError(f"got {len(observations)} observations for an agent reset with {self.num_envs} goals")
        with self.planning_mode():
            return self._act(observations)

    def planning_mode(self) -> torch.inference_mode:
        """Inference mode unless the planner differentiates the cost (the gradient planner).

        With autograd's per-op bookkeeping off (no graph was kept anyway) an action of the shipped model is
        1.06-1.07x faster. The agent's tensors (``last_plan``, ``last_result``) are then inference tensors,
        read-only outside this mode."""
        return torch.inference_mode(not self.planner.needs_grad)

    def _act(self, observations: list[dict]) -> np.ndarray:
        start = time.perf_counter()
        replan = self.last_plan is None or self._steps_since_plan >= self.replan_every
        if replan or self.context_frames > 1:  # a multi-frame context needs every frame's latent
            self.observe(observations)
        if replan:
            self.update_latent_offset()
            self.replan(start)
        actions = self.last_plan[:, self._steps_since_plan]
        self._steps_since_plan += 1
        actions = torch.maximum(torch.minimum(actions, self.action_high), self.action_low)
        if self.context_frames > 1:
            self._actions = (self._actions + [actions])[-(self.context_frames - 1):]
        actions = actions.cpu().numpy()
        if not np.isfinite(actions).all():
            raise RuntimeError("planner produced a non-finite action; the world model or objective returned NaN")
        return actions

    # -- internals ----------------------------------------------------------------------
    def encode(self, pixels: np.ndarray) -> Tensor:
        frames = torch.as_tensor(pixels, device=self.device).permute(0, 3, 1, 2)  # (E, 3, H, W)
        return self.world_model.encode(frames)  # (E, N, D)

    def states_from(self, observations: list[dict]) -> Tensor | None:
        if not self.uses_states:
            return None
        states = []
        for i, obs in enumerate(observations):
            if "state" not in obs:
                raise ValueError(f"observation {i} has no 'state' key (got keys {sorted(obs)})")
            states.append(np.asarray(obs["state"], dtype=np.float32))
        lengths = sorted({len(s) if s.ndim == 1 else -1 for s in states})
        if self.state_dim is not None and lengths != [self.state_dim]:
            raise ValueError(f"observation 'state' must be a vector of length {self.state_dim} (the world model's "
                             f"state_dim), got lengths {lengths} (-1: not a vector)")
        states = np.stack(states)
        if not np.isfinite(states).all():
            raise ValueError("observation state contains NaN or inf; refusing to plan")
        return torch.as_tensor(states, device=self.device)

    def warm_start_mean(self) -> Tensor | None:
        if not self.warm_start or self.last_plan is None:
            return None
        shift = self._steps_since_plan
        pad = ((self.action_low + self.action_high) / 2).expand(self.last_plan.shape[0], shift, -1)
        return torch.cat([self.last_plan[:, shift:], pad], dim=1)

    def observe(self, observations: list[dict]) -> None:
        """Check and encode the current observations and append them to the context history."""
        pixels = check_pixels(np.stack([np.asarray(o["pixels"]) for o in observations]), "observation")
        states = self.states_from(observations)
        with torch.no_grad():
            latents = self.encode(pixels)
        k = self.context_frames
        self._latents, self._states = (self._latents + [latents])[-k:], (self._states + [states])[-k:]

    def context(self) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(E, T0, N, D) latents, (E, T0, Ds) states and (E, T0-1, A) actions of the last T0 <= k frames."""
        frames = len(self._latents)
        # Actions recorded before the history filled up may outnumber the kept frames - 1.
        actions = self._actions[len(self._actions) - (frames - 1):] if frames > 1 else []
        latents = torch.stack(self._latents, dim=1)
        states = None if self._states[-1] is None else torch.stack(self._states, dim=1)
        return latents, states, torch.stack(actions, dim=1) if actions else None

    def build_cost(self, z0: Tensor, state0: Tensor | None, context_actions: Tensor | None) -> CostFn:
        """The cost the planner minimises this call; goal kinds other than images (language goals,
        jepa_world.language.objective) override this."""
        return build_cost_fn(self.world_model, z0, state0, self._goal_z, self.objective, self._goal_state,
                             context_actions, self._goal_readout, self.latent_offset)

    def update_latent_offset(self) -> None:
        """prediction_feedback: move the error estimate toward what the last prediction missed by."""
        if self._predicted_next is None:
            return
        missed = self._latents[-1] - self._predicted_next  # (E, N, D): observed - predicted (without offset)
        offset = torch.zeros_like(missed) if self.latent_offset is None else self.latent_offset
        self.latent_offset = offset + self.prediction_feedback * (missed - offset)

    def predict_next(self, z0: Tensor, state0: Tensor | None, context_actions: Tensor | None) -> Tensor:
        """(E, N, D) latent the world model predicts after the plan's next replan_every actions."""
        context = rollout_context(self.world_model, z0, state0, context_actions)
        with torch.no_grad():
            executed = torch.maximum(torch.minimum(self.last_plan[:, : self.replan_every], self.action_high), self.action_low)
            return context_rollout(self.world_model, context, executed)[:, -1]

    def replan(self, start: float) -> PlanResult:
        z0, state0, context_actions = self.context()
        cost_fn = self.build_cost(z0, state0, context_actions)
        budget = None
        if self.time_budget_s is not None:  # encoding counts against the budget too
            budget = max(self.time_budget_s - (time.perf_counter() - start), 1e-3)
        result = self.planner.plan(cost_fn, self.num_envs, self.horizon, self.action_low, self.action_high,
                                   init_mean=self.warm_start_mean(), generator=self.generators,
                                   time_budget_s=budget, device=self.device)
        self.last_plan, self.last_result = result.actions.detach(), result
        self._steps_since_plan = 0
        if self.prediction_feedback > 0:
            self._predicted_next = self.predict_next(z0, state0, context_actions)
        self.stats.plan_ms.append((time.perf_counter() - start) * 1e3)
        self.stats.iterations.append(result.iterations)
        self.stats.energies.append(result.best_cost.detach().cpu().numpy())
        log.debug("planned %d iterations in %.1f ms, energy %s", result.iterations, self.stats.plan_ms[-1],
                  self.stats.energies[-1])
        return result
