"""Gradient-based planner: projected Adam on the action sequence.

It optimises S parallel restarts per env (restart 0 starts at the mean, the others at
Gaussian perturbations of it) in box-normalised coordinates ``u = (a - centre) /
half_range`` so one learning rate suits any action scale. After every Adam step the
actions are projected back into the bounds. The cost must be differentiable w.r.t. the
actions (objectives built by objectives.py are).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from planners.base import ActionBounds, CostFn, Planner, PlanResult, check_costs, standard_noise


@dataclass
class GradientConfig:
    samples: int = 8  # parallel restarts per env
    iterations: int = 30
    lr: float = 0.1  # in units of the box half-range
    final_lr_fraction: float = 0.1  # lr decays linearly to lr * this, damping Adam's end-game oscillation
    betas: tuple[float, float] = (0.9, 0.999)
    init_std: float = 0.5  # spread of restarts 1..S-1, fraction of the half-range
    max_norm: float | None = None

    def validate(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 < self.final_lr_fraction <= 1.0:
            raise ValueError(f"final_lr_fraction must be in (0, 1], got {self.final_lr_fraction}")
        if self.init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std}")
        self.betas = tuple(self.betas)


class GradientPlanner(Planner):
    name = "adam"
    needs_grad = True

    def __init__(self, config: GradientConfig | None = None):
        super().__init__(config or GradientConfig())

    def _run(self, cost_fn: CostFn, mean: Tensor, std: Tensor, bounds: ActionBounds,
             generators: list[torch.Generator], deadline: float | None) -> PlanResult:
        cfg = self.config
        E, H, A = mean.shape
        center, scale = bounds.center, bounds.half_range.clamp_min(1e-8)
        noise = standard_noise((E, cfg.samples, H, A), generators, mean.device)
        noise[:, 0] = 0.0
        start = bounds.project(mean[:, None] + std[:, None] * noise)  # (E, S, H, A)
        u = ((start - center) / scale).requires_grad_(True)
        optimizer = torch.optim.Adam([u], lr=cfg.lr, betas=cfg.betas)

        best_actions, best_cost = mean.clone(), torch.full((E,), float("inf"), device=mean.device)
        iter_costs, mean_costs = [], []
        iterations = 0
        with torch.enable_grad():
            for it in range(cfg.iterations):
                iter_start = time.perf_counter()
                progress = it / max(cfg.iterations - 1, 1)
                optimizer.param_groups[0]["lr"] = cfg.lr * (1 - (1 - cfg.final_lr_fraction) * progress)
                actions = center + scale * u  # (E, S, H, A), already inside the bounds
                costs = cost_fn(actions)  # (E, S)
                scored = check_costs(costs, E, cfg.samples)
                # Restarts are independent, so the gradient of the sum is each restart's own gradient;
                # autograd.grad (not backward) leaves the world model's parameter .grad untouched.
                (u.grad,) = torch.autograd.grad(costs.sum(), [u])
                with torch.no_grad():
                    best_actions, best_cost, iter_cost = self.update_best(best_actions, best_cost, actions.detach(), scored.detach())
                    iter_costs.append(iter_cost)
                    mean_costs.append(scored.detach()[:, 0])
                    optimizer.step()
                    u.copy_((bounds.project(center + scale * u) - center) / scale)
                iterations += 1
                if self.out_of_time(deadline, iter_start, mean.device):
                    break
        final = (center + scale * u).detach()[:, 0]
        return PlanResult(best_actions, best_cost, torch.stack(iter_costs, 1), torch.stack(mean_costs, 1),
                          final, torch.zeros_like(final), iterations, 0.0)
