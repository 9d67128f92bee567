"""Planning objectives: turn a world model, the current observation and a goal into a cost_fn.

The energy of an action sequence is the distance between the latents the world model
predicts for it and the goal image's latent, both layer-normed over the feature dim
(as V-JEPA 2-AC does):

* ``metric``: ``l1`` (mean |p - g|, V-JEPA 2-AC), ``l2`` (mean squared error, DINO-WM)
  or ``cosine`` (mean over tokens of 1 - cos).
* ``frames``: ``last`` scores only the final predicted frame; ``all`` averages every
  predicted frame with weights ``discount ** (H - 1 - h)`` (1 for the last frame), which
  rewards plans that get close early.
* ``proprio_weight`` adds the L2 distance between the predicted and goal proprio state.
  The predicted state is integrated from the actions (``state_h = state_0 + sum of
  actions``, V-JEPA 2-AC's convention that an action is the change of the first A state
  dims), so it needs the goal's proprio state, which is observed, not simulator truth.

The context (current latent and state) is repeated for S candidates once per planning
call and the goal latent is normalised once, so each iteration is one rollout call.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from planners.base import CostFn

METRICS = ("l1", "l2", "cosine")
FRAME_MODES = ("last", "all")


@dataclass
class ObjectiveConfig:
    metric: str = "l1"
    frames: str = "last"
    discount: float = 1.0
    layer_norm: bool = True
    proprio_weight: float = 0.0
    chunk_size: int | None = None  # candidates per rollout call; None = all E*S in one call

    def validate(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown objective metric {self.metric!r}; choose one of {list(METRICS)}")
        if self.frames not in FRAME_MODES:
            raise ValueError(f"unknown objective frames {self.frames!r}; choose one of {list(FRAME_MODES)}")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"objective discount must be in (0, 1], got {self.discount}")
        if self.proprio_weight < 0:
            raise ValueError(f"objective proprio_weight must be >= 0, got {self.proprio_weight}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"objective chunk_size must be >= 1 or None, got {self.chunk_size}")


def normalize_latents(z: Tensor, layer_norm: bool = True) -> Tensor:
    return F.layer_norm(z, (z.shape[-1],)) if layer_norm else z


def latent_distance(pred: Tensor, goal: Tensor, metric: str) -> Tensor:
    """Distance between (..., N, D) token sets (already normalised) -> (...)."""
    if metric == "l1":
        return (pred - goal).abs().mean(dim=(-2, -1))
    if metric == "l2":
        return (pred - goal).pow(2).mean(dim=(-2, -1))
    if metric == "cosine":
        return (1 - F.cosine_similarity(pred, goal, dim=-1)).mean(dim=-1)
    raise ValueError(f"unknown objective metric {metric!r}; choose one of {list(METRICS)}")


def frame_weights(horizon: int, frames: str, discount: float, device: torch.device) -> Tensor:
    """(H,) weights summing to 1 over the predicted frames."""
    if frames == "last":
        weights = torch.zeros(horizon, device=device)
        weights[-1] = 1.0
        return weights
    weights = discount ** torch.arange(horizon - 1, -1, -1, device=device, dtype=torch.float32)
    return weights / weights.sum()


def build_cost_fn(
    world_model,
    z0: Tensor,
    state0: Tensor,
    z_goal: Tensor,
    config: ObjectiveConfig | None = None,
    goal_state: Tensor | None = None,
) -> CostFn:
    """Make ``cost_fn(actions (E,S,H,A)) -> (E,S)`` from per-env context and goal.

    z0: (E, N, D) or (E, T0, N, D) current latents; state0: (E, Ds); z_goal: (E, N, D);
    goal_state: (E, Ds) needed only when ``proprio_weight > 0``.
    """
    config = config or ObjectiveConfig()
    config.validate()
    E = z0.shape[0]
    if z_goal.ndim != 3 or z_goal.shape[0] != E or z_goal.shape[-2:] != z0.shape[-2:]:
        raise ValueError(f"z_goal must be (E, N, D) = ({E}, {z0.shape[-2]}, {z0.shape[-1]}), got {tuple(z_goal.shape)}")
    if state0.ndim != 2 or state0.shape[0] != E:
        raise ValueError(f"state0 must be (E, Ds) with E={E}, got {tuple(state0.shape)}")
    if config.proprio_weight > 0:
        if goal_state is None or goal_state.shape != state0.shape:
            raise ValueError(f"proprio_weight > 0 needs goal_state of shape {tuple(state0.shape)}, got "
                             f"{None if goal_state is None else tuple(goal_state.shape)}")
    goal = normalize_latents(z_goal, config.layer_norm)[:, None, None]  # (E, 1, 1, N, D)
    expanded: dict[int, tuple[Tensor, Tensor]] = {}

    def context_for(samples: int) -> tuple[Tensor, Tensor]:
        if samples not in expanded:  # repeat the context once per planning call, not per iteration
            expanded.clear()
            expanded[samples] = (z0.repeat_interleave(samples, dim=0), state0.repeat_interleave(samples, dim=0))
        return expanded[samples]

    def cost_fn(actions: Tensor) -> Tensor:
        E_, S, H, A = actions.shape
        if E_ != E:
            raise ValueError(f"cost_fn got actions for {E_} envs, expected {E}")
        z_ctx, s_ctx = context_for(S)
        flat = actions.reshape(E * S, H, A)
        chunk = config.chunk_size or E * S
        preds = [world_model.rollout(z_ctx[i:i + chunk], s_ctx[i:i + chunk], flat[i:i + chunk])
                 for i in range(0, E * S, chunk)]
        pred = torch.cat(preds) if len(preds) > 1 else preds[0]  # (E*S, H, N, D)
        if config.frames == "last":
            pred = pred[:, -1:]
        pred = normalize_latents(pred, config.layer_norm).reshape(E, S, pred.shape[1], *pred.shape[-2:])
        per_frame = latent_distance(pred, goal, config.metric)  # (E, S, H') with H' = 1 or H
        weights = frame_weights(per_frame.shape[-1], "all" if config.frames == "all" else "last", config.discount, actions.device)
        cost = per_frame @ weights
        if config.proprio_weight > 0:
            final_state = state0[:, None, :A] + actions.sum(dim=2)  # (E, S, A)
            cost = cost + config.proprio_weight * (final_state - goal_state[:, None, :A]).pow(2).sum(-1)
        return cost

    return cost_fn
