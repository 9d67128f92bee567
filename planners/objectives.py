"""Planning objectives: turn a world model, the current observation and a goal into a cost_fn.

The energy of an action sequence is the distance between the latents the world model
predicts for it and the goal image's latent, both layer-normed over the feature dim
(as V-JEPA 2-AC does):

* ``metric``: ``l1`` (mean |p - g|, V-JEPA 2-AC), ``l2`` (mean squared error, DINO-WM)
  or ``cosine`` (mean over tokens of 1 - cos).
* ``frames``: ``last`` scores only the final predicted frame; ``all`` averages every
  predicted frame with weights ``discount ** (H - 1 - h)`` (1 for the last frame), which
  rewards plans that get close early.
* ``proprio_weight`` adds the squared L2 distance between the final predicted proprio
  state and the goal's (observed, not simulator-truth) proprio state. The state is
  advanced with the world model's own rule (``WorldModel.next_states``), which is linear
  in the actions, so the final state is one call on the summed actions.
* ``readout_weight`` adds the Euclidean distance between where the plan leaves the end
  effector (observed proprio plus the summed displacement actions) and where the world
  model's state readout decodes it in the goal *image* (``WorldModel.decode_state``), so it
  needs no goal state. Unlike a latent distance to a thin arm's goal pose, which is flat
  once arm and goal pose stop overlapping, it slopes toward the goal from everywhere.
  ``None`` (the default) means ``DEFAULT_READOUT_WEIGHT`` for world models that have a
  readout and 0 for those that do not (``ObjectiveConfig.resolve``).
* ``critic_weight`` adds the world model's temporal-distance critic (``WorldModel.critic``,
  learned from time offsets inside trajectories, no state labels): the predicted number of steps
  from the last predicted latent to the goal image's latent. It slopes toward the goal from
  anywhere in the workspace, where a latent distance is flat. ``None`` (the default) means
  ``DEFAULT_CRITIC_WEIGHT`` for world models that have a critic and 0 for those that do not.
* ``latent_weight`` scales the latent distance; 0 skips the latent term (the rollout still runs
  when the critic needs the predicted latents).
* ``layer_norm`` layer-norms both latents before the distance (the default): idempotent on
  layer-normed token latents; on the shipped model's global embeddings it is what every reported
  success rate used (99% / 95% on 100 seeds of both goal protocols, 98% / 95% without it,
  docs/planning.md).

``latent_offset`` (E, N, D), when given, is added to every predicted latent before the distances:
the MPC agent's estimate of the predictor's persistent error (``MPCAgent(prediction_feedback=...)``,
offset-free MPC), from observed latents only.

The context (current latent and state) is repeated for S candidates once per planning
call (not at all for one env: the world model broadcasts a batch-1 context) and the goal
latent is normalised once, so each iteration is one ``world_model.rollout`` call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from planners.base import CostFn

METRICS = ("l1", "l2", "cosine")
DEFAULT_READOUT_WEIGHT = 1.0  # chosen by the sweep in docs/frozen_readout_baseline.md
DEFAULT_CRITIC_WEIGHT = 0.5  # x the critic's steps beside the latent L1: the sweeps in docs/world_model.md (0.2 until 2026-12-03)
FRAME_MODES = ("last", "all")


@dataclass
class ObjectiveConfig:
    metric: str = "l1"
    frames: str = "last"
    discount: float = 1.0
    layer_norm: bool = True
    proprio_weight: float = 0.0
    readout_weight: float | None = None
    latent_weight: float = 1.0
    critic_weight: float | None = None

    def resolve(self, world_model) -> ObjectiveConfig:
        """A copy with ``readout_weight`` and ``critic_weight`` made concrete for this world model (see the
        module doc)."""
        readout_weight = head_weight(self.readout_weight, getattr(world_model, "state_readout", None) is not None,
                                     DEFAULT_READOUT_WEIGHT, "readout_weight",
                                     "a state readout (post-train with state_readout.state_dims=[...])")
        critic_weight = head_weight(self.critic_weight, getattr(world_model, "critic", None) is not None,
                                    DEFAULT_CRITIC_WEIGHT, "critic_weight",
                                    "a temporal-distance critic (post-train with critic={})")
        return replace(self, readout_weight=readout_weight, critic_weight=critic_weight)

    def validate(self) -> None:
        if not isinstance(self.layer_norm, bool):
            raise ValueError(f"objective layer_norm must be true or false, got {self.layer_norm!r}")
        if self.metric not in METRICS:
            raise ValueError(f"unknown objective metric {self.metric!r}; choose one of {list(METRICS)}")
        if self.frames not in FRAME_MODES:
            raise ValueError(f"unknown objective frames {self.frames!r}; choose one of {list(FRAME_MODES)}")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"objective discount must be in (0, 1], got {self.discount}")
        for name in ("proprio_weight", "readout_weight", "latent_weight", "critic_weight"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"objective {name} must be a finite number >= 0, got {value!r}")
        if self.latent_weight == 0 and self.proprio_weight == 0 and not self.readout_weight and not self.critic_weight:
            raise ValueError("objective latent_weight, critic_weight, proprio_weight and readout_weight are all 0: "
                             "nothing to minimise")

    @property
    def needs_proprio(self) -> bool:
        """Whether the cost uses the observed proprio state, whatever the predictor takes."""
        return self.proprio_weight > 0 or bool(self.readout_weight)


def head_weight(weight: float | None, has_head: bool, default: float, name: str, head: str) -> float:
    """An objective term's weight for a world-model head: None -> ``default`` if the model has the head,
    else 0; a positive weight for a head the model lacks is an error naming the key."""
    if weight is None:
        return default if has_head else 0.0
    if weight > 0 and not has_head:
        raise ValueError(f"objective {name}={weight} needs a world model with {head}; this one has none")
    return float(weight)


def model_state_dim(world_model) -> int | None:
    """The predictor's proprio state_dim (0: it takes none); None for duck-typed models without a
    predictor config, which are assumed to take states."""
    return getattr(getattr(getattr(world_model, "predictor", None), "config", None), "state_dim", None)


def uses_states(world_model) -> bool:
    """Whether the world model's predictor takes proprio states (models without a predictor config: yes)."""
    state_dim = model_state_dim(world_model)
    return state_dim is None or state_dim > 0


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


def frame_weights(horizon: int, discount: float, device: torch.device) -> Tensor:
    """(H,) weights ``discount ** (H - 1 - h)`` over the predicted frames (frames="all"), summing to 1."""
    weights = discount ** torch.arange(horizon - 1, -1, -1, device=device, dtype=torch.float32)
    return weights / weights.sum()


def reached_position_distance(start: Tensor, actions: Tensor, goal: Tensor) -> Tensor:
    """Distance from where displacement actions leave a position to a goal position.

    start (E, K) observed now, actions (E, S, H, A) whose first K dims displace it, goal (E, K)
    -> (E, S). Used by the image-goal readout term and the language goal-memory term alike.
    """
    reached = start[:, None] + actions.sum(dim=2)[..., : start.shape[-1]]  # (E, S, K)
    return (reached - goal[:, None]).norm(dim=-1)


def rollout_context(world_model, z0: Tensor, state0: Tensor | None,
                    context_actions: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(latents, states, actions) to start ``world_model.rollout`` from, for z0 (E, T0, N, D), state0
    (E, T0, Ds) or None and context_actions (E, T0-1, A) or None: one frame in the plain (E, N, D) /
    (E, Ds) form every world model accepts, states only if the predictor was trained with them."""
    rollout_state0 = state0 if uses_states(world_model) else None
    if z0.shape[1] == 1:
        return z0[:, 0], None if rollout_state0 is None else rollout_state0[:, 0], None
    return z0, rollout_state0, context_actions


def context_rollout(world_model, context: tuple[Tensor, Tensor | None, Tensor | None], actions: Tensor,
                    **kwargs) -> Tensor:
    """``world_model.rollout`` from a ``rollout_context`` over actions (B, H, A) -> (B, H, N, D)."""
    z_ctx, s_ctx, a_ctx = context
    if a_ctx is not None:
        kwargs["context_actions"] = a_ctx
    return world_model.rollout(z_ctx, s_ctx, actions, **kwargs)


def build_cost_fn(
    world_model,
    z0: Tensor,
    state0: Tensor | None,
    z_goal: Tensor,
    config: ObjectiveConfig | None = None,
    goal_state: Tensor | None = None,
    context_actions: Tensor | None = None,
    goal_readout: Tensor | None = None,
    latent_offset: Tensor | None = None,
) -> CostFn:
    """Make ``cost_fn(actions (E,S,H,A)) -> (E,S)`` from per-env context and goal.

    z0: (E, N, D) current-frame latents, or (E, T0, N, D) the last T0 frames with
    ``context_actions`` (E, T0-1, A) the actions executed between them; state0: (E, Ds) or
    (E, T0, Ds), or None for a stateless world model; z_goal: (E, N, D); goal_state: (E, Ds),
    needed only when ``proprio_weight > 0``; goal_readout: (E, K) ``world_model.decode_state`` of the goal
    frames, needed only when ``readout_weight > 0``; latent_offset: (E, N, D) added to every predicted
    latent (module doc), or None.
    """
    config = (config or ObjectiveConfig()).resolve(world_model)
    config.validate()
    if z0.ndim == 3:
        z0 = z0[:, None]
    if z0.ndim != 4:
        raise ValueError(f"z0 must be (E, N, D) or (E, T0, N, D), got {tuple(z0.shape)}")
    E, T0 = z0.shape[:2]
    if z_goal.ndim != 3 or z_goal.shape[0] != E or z_goal.shape[-2:] != z0.shape[-2:]:
        raise ValueError(f"z_goal must be (E, N, D) = ({E}, {z0.shape[-2]}, {z0.shape[-1]}), got {tuple(z_goal.shape)}")
    if state0 is not None:
        if state0.ndim == 2:
            state0 = state0[:, None]
        if state0.ndim != 3 or state0.shape[:2] != (E, T0):
            raise ValueError(f"state0 must be (E, Ds) or (E, T0, Ds) with E={E}, T0={T0}, got {tuple(state0.shape)}")
    if T0 > 1 and (context_actions is None or context_actions.shape[:2] != (E, T0 - 1)):
        got = None if context_actions is None else tuple(context_actions.shape)
        raise ValueError(f"a {T0}-frame context needs context_actions of shape (E={E}, {T0 - 1}, A), got {got}")
    if config.proprio_weight > 0:
        if state0 is None or goal_state is None or goal_state.shape != state0[:, -1].shape:
            expected = None if state0 is None else tuple(state0[:, -1].shape)
            got = None if goal_state is None else tuple(goal_state.shape)
            raise ValueError(f"proprio_weight > 0 needs state0 and a goal_state of the same shape, got {expected} and {got}")
    if config.readout_weight > 0:
        readout_dims = list(world_model.state_readout.config.state_dims)
        if state0 is None:
            raise ValueError("readout_weight > 0 needs the observed proprio state (state0) of each env")
        if goal_readout is None or goal_readout.shape != (E, len(readout_dims)):
            got = None if goal_readout is None else tuple(goal_readout.shape)
            raise ValueError(f"readout_weight > 0 needs goal_readout = world_model.decode_state(goal frames) of shape "
                             f"({E}, {len(readout_dims)}), got {got}")
        start_readout = state0[:, -1][:, readout_dims]  # (E, K) observed now
    if latent_offset is not None and latent_offset.shape != (E, *z0.shape[-2:]):
        raise ValueError(f"latent_offset must be (E, N, D) = ({E}, {z0.shape[-2]}, {z0.shape[-1]}), "
                         f"got {tuple(latent_offset.shape)}")
    # The predictor gets states only if it was trained with them; the proprio terms use them anyway.
    context = rollout_context(world_model, z0, state0, context_actions)
    goal = normalize_latents(z_goal, config.layer_norm)[:, None, None]  # (E, 1, 1, N, D)
    expanded: dict[int, tuple[Tensor | None, ...]] = {}

    def context_for(samples: int) -> tuple[Tensor | None, ...]:
        if E == 1:  # batch-1 context: the world model runs the context prefix once and shares it
            return context
        if samples not in expanded:  # repeat the context once per planning call, not per iteration
            expanded.clear()
            expanded[samples] = tuple(None if x is None else x.repeat_interleave(samples, dim=0) for x in context)
        return expanded[samples]

    goal_critic = None
    if config.critic_weight > 0:
        with torch.no_grad():
            goal_critic = world_model.critic.embed(z_goal)[:, None]  # (E, 1, C): embedded once per call

    def predicted_latents(actions: Tensor) -> Tensor:
        """(E, S, H, A) -> (E*S, H, N, D) predicted latents of frames 1..H."""
        _, S, H, A = actions.shape
        kwargs = {}
        if actions.requires_grad and torch.is_grad_enabled():
            # Dynamics.rollout refuses to differentiate the KV-cached path (its cache is written in
            # place): the gradient planner takes the full re-run path.
            kwargs["use_kv_cache"] = False
        pred = context_rollout(world_model, context_for(S), actions.reshape(E * S, H, A), **kwargs)  # (E*S, H, N, D)
        if latent_offset is None:
            return pred
        return (pred.unflatten(0, (E, S)) + latent_offset[:, None, None]).flatten(0, 1)

    def latent_cost(pred: Tensor) -> Tensor:
        """(E*S, H, N, D) predictions -> (E, S) frame-weighted distance to the goal latent."""
        S = pred.shape[0] // E
        if config.frames == "last":
            pred = pred[:, -1:]
        pred = normalize_latents(pred, config.layer_norm).reshape(E, S, pred.shape[1], *pred.shape[-2:])
        per_frame = latent_distance(pred, goal, config.metric)  # (E, S, H') with H' = 1 or H
        if config.frames == "last":
            return per_frame[..., 0]
        weights = frame_weights(per_frame.shape[-1], config.discount, pred.device)
        return per_frame @ weights

    def critic_cost(pred: Tensor) -> Tensor:
        """(E*S, H, N, D) predictions -> (E, S) predicted steps from the last one to the goal."""
        embedded = world_model.critic.embed(pred[:, -1]).reshape(E, -1, goal_critic.shape[-1])  # (E, S, C)
        return world_model.critic.embed_distance(embedded, goal_critic)

    def cost_fn(actions: Tensor) -> Tensor:
        E_, S, H, A = actions.shape
        if E_ != E:
            raise ValueError(f"cost_fn got actions for {E_} envs, expected {E}")
        cost = actions.new_zeros(E, S)
        if config.latent_weight > 0 or config.critic_weight > 0:
            pred = predicted_latents(actions)
            if config.latent_weight > 0:
                cost = cost + config.latent_weight * latent_cost(pred)
            if config.critic_weight > 0:
                cost = cost + config.critic_weight * critic_cost(pred)
        if config.readout_weight > 0:
            cost = cost + config.readout_weight * reached_position_distance(start_readout, actions, goal_readout)
        if config.proprio_weight > 0:
            final_state = world_model.next_states(state0[:, -1:].expand(-1, S, -1), actions.sum(dim=2))  # (E, S, Ds)
            cost = cost + config.proprio_weight * (final_state - goal_state[:, None]).pow(2).sum(-1)
        return cost

    return cost_fn
