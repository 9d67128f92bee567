"""Cross-entropy method with momentum on mean and std (V-JEPA 2-AC style).

Each iteration samples S candidates around the mean (candidate 0 *is* the mean),
keeps the K lowest-cost elites and moves the sampling distribution toward their
mean/std: ``mean <- m * mean + (1 - m) * elite_mean`` (same for std). Momentum 0.15
matches V-JEPA 2-AC; 0 gives the textbook CEM used by DINO-WM.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from planners.base import ActionBounds, CostFn, Planner, PlanResult, check_costs, sample_candidates


@dataclass
class CEMConfig:
    samples: int = 300
    elites: int = 30
    iterations: int = 10
    init_std: float = 1.0  # initial std as a fraction of the box half-range
    min_std: float = 1e-3  # floor so the search never collapses to a point
    momentum_mean: float = 0.15
    momentum_std: float = 0.15
    max_norm: float | None = None  # optional per-step L2 bound on actions

    def validate(self) -> None:
        if self.samples < 2:
            raise ValueError(f"samples must be >= 2 (candidate 0 is the mean), got {self.samples}")
        if not 1 <= self.elites <= self.samples:
            raise ValueError(f"elites must be in [1, samples={self.samples}], got {self.elites}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        for name in ("momentum_mean", "momentum_std"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.init_std <= 0 or self.min_std < 0:
            raise ValueError(f"init_std must be > 0 and min_std >= 0, got init_std={self.init_std} min_std={self.min_std}")


class CEMPlanner(Planner):
    name = "cem"

    def __init__(self, config: CEMConfig | None = None):
        super().__init__(config or CEMConfig())

    def _run(self, cost_fn: CostFn, mean: Tensor, std: Tensor, bounds: ActionBounds,
             generators: list[torch.Generator], deadline: float | None) -> PlanResult:
        cfg = self.config
        E = mean.shape[0]
        best_actions, best_cost = mean.clone(), torch.full((E,), float("inf"), device=mean.device)
        iter_costs, mean_costs = [], []
        iterations = 0
        with torch.no_grad():
            for _ in range(cfg.iterations):
                iter_start = time.perf_counter()
                candidates = sample_candidates(mean, std, cfg.samples, bounds, generators)  # (E, S, H, A)
                costs = cost_fn(candidates)  # (E, S)
                check_costs(costs, E, cfg.samples)
                best_actions, best_cost, iter_cost = self.update_best(best_actions, best_cost, candidates, costs)
                iter_costs.append(iter_cost)
                mean_costs.append(costs[:, 0])

                elite_idx = costs.topk(cfg.elites, dim=1, largest=False).indices  # (E, K)
                elites = candidates.gather(1, elite_idx[:, :, None, None].expand(-1, -1, *candidates.shape[2:]))
                elite_std = elites.std(dim=1, unbiased=False) if cfg.elites > 1 else torch.zeros_like(mean)
                mean = cfg.momentum_mean * mean + (1 - cfg.momentum_mean) * elites.mean(dim=1)
                std = (cfg.momentum_std * std + (1 - cfg.momentum_std) * elite_std).clamp_min(cfg.min_std)
                iterations += 1
                if self.out_of_time(deadline, iter_start, mean.device):
                    break
        return PlanResult(best_actions, best_cost, torch.stack(iter_costs, 1), torch.stack(mean_costs, 1),
                          mean, std, iterations, 0.0)
