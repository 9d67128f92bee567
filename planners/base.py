"""Shared machinery for the sampling and gradient planners.

Every planner minimises a batched cost over action sequences:

    cost_fn(actions (E, S, H, A)) -> costs (E, S)

for E environments at once, S candidates each, horizon H, action dim A. A planner never
sees the world model; objectives.py turns a world model plus a goal into a cost_fn.

The iteration loop keeps everything on the device: the best plan found so far is
updated with ``torch.where`` and per-iteration statistics are stacked at the end, so
no ``.item()``/``.cpu()`` happens inside iterations. The only host-side check is the
wall clock when a time budget is set (on CUDA that check synchronises once per
iteration so the budget measures real work).
"""
from __future__ import annotations

import abc

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

CostFn = Callable[[Tensor], Tensor]
ArrayLike = Tensor | np.ndarray | float | list
Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class PlanResult:
    actions: Tensor  # (E, H, A) best plan found
    best_cost: Tensor  # (E,) cost of `actions`
    costs: Tensor  # (E, iters) lowest cost among the candidates of each iteration
    mean_costs: Tensor  # (E, iters) cost of candidate 0 (the current mean) at each iteration
    mean: Tensor  # (E, H, A) final sampling mean (or the optimised actions for Adam)
    std: Tensor  # (E, H, A) final sampling std (zeros for Adam)
    iterations: int
    elapsed_s: float


class ActionBounds:
    """A per-dimension box, optionally intersected with a per-step L2 norm ball.

    The ball is applied first, then the box; when the box contains the origin (the
    usual case) box clipping cannot increase the norm, so the result is in both sets.
    """

    def __init__(self, low: Tensor, high: Tensor, max_norm: float | None = None):
        if low.shape != high.shape or low.ndim != 1:
            raise ValueError(f"action bounds must be two 1-D tensors of equal shape, got {tuple(low.shape)} and {tuple(high.shape)}")
        if not bool(torch.all(low <= high)):
            raise ValueError(f"action_low must be <= action_high elementwise, got low={low.tolist()} high={high.tolist()}")
        if max_norm is not None and max_norm <= 0:
            raise ValueError(f"max_norm must be positive or None, got {max_norm}")
        self.low, self.high, self.max_norm = low, high, max_norm

    @property
    def center(self) -> Tensor:
        return (self.low + self.high) / 2

    @property
    def half_range(self) -> Tensor:
        return (self.high - self.low) / 2

    def project(self, actions: Tensor) -> Tensor:
        if self.max_norm is not None:
            norm = actions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            actions = actions * (self.max_norm / norm).clamp(max=1.0)
        return torch.maximum(torch.minimum(actions, self.high), self.low)


def as_bound(value: ArrayLike, action_dim: int | None, device: torch.device, name: str) -> Tensor:
    bound = torch.as_tensor(value, dtype=torch.float32, device=device)
    if bound.ndim == 0:
        if action_dim is None:
            raise ValueError(f"{name} is a scalar; pass a per-dimension array or an init_mean so the action dim is known")
        bound = bound.expand(action_dim).clone()
    if bound.ndim != 1:
        raise ValueError(f"{name} must be a scalar or a 1-D array of length A, got shape {tuple(bound.shape)}")
    if not bool(torch.isfinite(bound).all()):
        raise ValueError(f"{name} must be finite, got {bound.tolist()}")
    return bound


def check_costs(costs: Tensor, num_envs: int, samples: int) -> Tensor:
    """The (E, S) costs with NaN read as +inf, so a broken candidate is never chosen (on the device:
    no host sync); ``plan`` raises if an env ends with no finite cost at all."""
    if costs.shape != (num_envs, samples):
        raise ValueError(f"cost_fn must return shape (E, S) = ({num_envs}, {samples}), got {tuple(costs.shape)}")
    return torch.where(torch.isnan(costs), torch.inf, costs)


class Planner(abc.ABC):
    """Base class: argument handling, bounds, time budget and best-so-far bookkeeping."""

    name = "planner"
    needs_grad = False  # whether the search differentiates cost_fn (MPCAgent plans in inference mode otherwise)

    def __init__(self, config):
        config.validate()
        self.config = config

    # -- subclass hooks ---------------------------------------------------------------
    @abc.abstractmethod
    def _run(self, cost_fn: CostFn, mean: Tensor, std: Tensor, bounds: ActionBounds,
             generator: Generators, deadline: float | None) -> PlanResult:
        """Search from the initial (E, H, A) mean/std; stop early when past ``deadline``."""

    # -- public API ---------------------------------------------------------------------
    def plan(
        self,
        cost_fn: CostFn,
        num_envs: int,
        horizon: int,
        action_low: ArrayLike,
        action_high: ArrayLike,
        init_mean: Tensor | None = None,
        init_std: Tensor | None = None,
        generator: Generators = None,
        time_budget_s: float | None = None,
        device: torch.device | str | None = None,
    ) -> PlanResult:
        """Minimise ``cost_fn`` over (E, H, A) plans inside the action bounds.

        ``generator`` is one torch.Generator, or one per env so that each env's plan is
        independent of how many envs are batched together. ``init_mean`` (E, H, A) warm-starts the search (defaults to the box centre);
        ``init_std`` overrides the config's initial spread. With ``time_budget_s`` the
        planner stops before the iteration that would overrun the budget and returns the
        best plan found so far (at least one iteration always runs).
        """
        if num_envs < 1 or horizon < 1:
            raise ValueError(f"num_envs and horizon must be >= 1, got num_envs={num_envs} horizon={horizon}")
        if time_budget_s is not None and time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be positive or None, got {time_budget_s}")
        start = time.perf_counter()
        if device is None:
            device = init_mean.device if isinstance(init_mean, Tensor) else (
                action_low.device if isinstance(action_low, Tensor) else torch.device("cpu"))
        device = torch.device(device)
        action_dim = init_mean.shape[-1] if init_mean is not None else None
        low = as_bound(action_low, action_dim, device, "action_low")
        high = as_bound(action_high, low.shape[0], device, "action_high")
        bounds = ActionBounds(low, high, self.config.max_norm)
        shape = (num_envs, horizon, low.shape[0])

        if init_mean is None:
            mean = bounds.center.expand(shape).clone()
        else:
            mean = torch.as_tensor(init_mean, dtype=torch.float32, device=device)
            if mean.shape != shape:
                raise ValueError(f"init_mean must have shape (E, H, A) = {shape}, got {tuple(mean.shape)}")
            if not bool(torch.isfinite(mean).all()):
                raise ValueError("init_mean contains NaN or inf")
            mean = bounds.project(mean)
        if init_std is None:
            std = (self.config.init_std * bounds.half_range).expand(shape).clone()
        else:
            std = torch.as_tensor(init_std, dtype=torch.float32, device=device).expand(shape).clone()
        generators = [generator] if isinstance(generator, torch.Generator) else list(generator or [])
        if len(generators) not in (0, 1, num_envs):
            raise ValueError(f"pass one generator or one per env ({num_envs}), got {len(generators)}")
        for g in generators:
            if g.device.type != device.type:
                raise ValueError(f"generator is on {g.device} but planning runs on {device}")

        deadline = None if time_budget_s is None else start + time_budget_s
        result = self._run(cost_fn, mean, std, bounds, generators, deadline)
        result.elapsed_s = time.perf_counter() - start
        finite = torch.isfinite(result.best_cost)
        if not bool(finite.all()):  # one host sync per planning call, after the loop
            bad = torch.nonzero(~finite).flatten().tolist()
            raise RuntimeError(f"cost_fn gave no finite cost for env(s) {bad} in {result.iterations} iteration(s): "
                               "the world model or objective returns NaN/inf (check the model's weights and inputs)")
        return result

    # -- helpers for subclasses ---------------------------------------------------------
    @staticmethod
    def out_of_time(deadline: float | None, iter_start: float, device: torch.device) -> bool:
        """True when another iteration, as long as the last one, would pass the deadline."""
        if deadline is None:
            return False
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        return now + (now - iter_start) > deadline

    @staticmethod
    def update_best(best_actions: Tensor, best_cost: Tensor, actions: Tensor, costs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Fold one iteration's candidates (E, S, H, A) / (E, S) into the best-so-far; returns the iteration min too."""
        iter_cost, idx = costs.min(dim=1)  # (E,)
        iter_best = actions.gather(1, idx[:, None, None, None].expand(-1, 1, *actions.shape[2:])).squeeze(1)
        better = iter_cost < best_cost
        best_actions = torch.where(better[:, None, None], iter_best, best_actions)
        return best_actions, torch.where(better, iter_cost, best_cost), iter_cost


def validate_sampling_config(config) -> None:
    """Checks shared by the sampling planners' configs (samples, elites, iterations, momenta, spreads)."""
    if config.samples < 2:
        raise ValueError(f"samples must be >= 2 (candidate 0 is the mean), got {config.samples}")
    if not 1 <= config.elites <= config.samples:
        raise ValueError(f"elites must be in [1, samples={config.samples}], got {config.elites}")
    if config.iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {config.iterations}")
    for name in ("momentum_mean", "momentum_std"):  # MPPI smooths only the mean
        if hasattr(config, name) and not 0.0 <= getattr(config, name) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {getattr(config, name)}")
    if config.init_std <= 0 or config.min_std < 0:
        raise ValueError(f"init_std must be > 0 and min_std >= 0, got init_std={config.init_std} min_std={config.min_std}")


class SamplingPlanner(Planner):
    """Sample around a Gaussian (candidate 0 is its mean), score, refit; CEM and MPPI differ only in `refit`."""

    @abc.abstractmethod
    def refit(self, mean: Tensor, std: Tensor, candidates: Tensor, costs: Tensor) -> tuple[Tensor, Tensor]:
        """New (E, H, A) mean and std from this iteration's candidates (E, S, H, A) and costs (E, S)."""

    def _run(self, cost_fn: CostFn, mean: Tensor, std: Tensor, bounds: ActionBounds,
             generators: list[torch.Generator], deadline: float | None) -> PlanResult:
        cfg = self.config
        num_envs = mean.shape[0]
        best_actions, best_cost = mean.clone(), torch.full((num_envs,), float("inf"), device=mean.device)
        iter_costs, mean_costs = [], []
        iterations = 0
        with torch.no_grad():
            for _ in range(cfg.iterations):
                iter_start = time.perf_counter()
                # Phase 1: sample candidates around the current distribution (candidate 0 = mean).
                candidates = sample_candidates(mean, std, cfg.samples, bounds, generators)  # (E, S, H, A)
                # Phase 2: score all E*S candidates in one batched world-model call.
                costs = check_costs(cost_fn(candidates), num_envs, cfg.samples)  # (E, S)
                # Phase 3: keep the best plan so far on the device (no host sync).
                best_actions, best_cost, iter_cost = self.update_best(best_actions, best_cost, candidates, costs)
                iter_costs.append(iter_cost)
                mean_costs.append(costs[:, 0])
                # Phase 4: move the sampling distribution toward the low-cost candidates.
                mean, std = self.refit(mean, std, candidates, costs)
                iterations += 1
                if self.out_of_time(deadline, iter_start, mean.device):
                    break
        return PlanResult(best_actions, best_cost, torch.stack(iter_costs, 1), torch.stack(mean_costs, 1),
                          mean, std, iterations, 0.0)

    def elites(self, candidates: Tensor, costs: Tensor) -> tuple[Tensor, Tensor]:
        """The K lowest-cost candidates (E, K, H, A), sorted, with their costs (E, K)."""
        elite_cost, elite_idx = costs.topk(self.config.elites, dim=1, largest=False)
        elites = candidates.gather(1, elite_idx[:, :, None, None].expand(-1, -1, *candidates.shape[2:]))
        return elites, elite_cost


def standard_noise(shape: tuple[int, ...], generators: list[torch.Generator], device: torch.device) -> Tensor:
    """(E, ...) standard normal noise; with one generator per env, env e's noise comes from generator e."""
    if len(generators) > 1:
        return torch.stack([torch.randn(shape[1:], generator=g, device=device) for g in generators])
    return torch.randn(shape, generator=generators[0] if generators else None, device=device)


def sample_candidates(mean: Tensor, std: Tensor, samples: int, bounds: ActionBounds,
                      generators: list[torch.Generator]) -> Tensor:
    """(E, H, A) mean/std -> (E, S, H, A) projected Gaussian samples; candidate 0 is the mean."""
    E, H, A = mean.shape
    noise = standard_noise((E, samples, H, A), generators, mean.device)
    noise[:, 0] = 0.0
    return bounds.project(mean[:, None] + std[:, None] * noise)
