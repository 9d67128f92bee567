"""Model-predictive path integral planner (TD-MPC2 style).

Like CEM it samples around a mean (candidate 0 is the mean) and keeps the K best, but
the update is a softmax-weighted average of the elites with weights
``exp(-(cost - min_cost) / temperature)``, so a low temperature approaches CEM's hard
elite mean and a high one averages the elites uniformly. ``temperature`` is in cost
units; ``normalize_costs`` divides elite costs by their spread first, which makes one
temperature work across objectives of different scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from planners.base import SamplingPlanner, validate_sampling_config


@dataclass
class MPPIConfig:
    samples: int = 512
    elites: int = 64
    iterations: int = 6
    temperature: float = 0.5
    normalize_costs: bool = True
    init_std: float = 1.0  # initial std as a fraction of the box half-range
    min_std: float = 1e-3
    momentum_mean: float = 0.1  # TD-MPC2 uses 0.1 on the mean
    max_norm: float | None = None

    def validate(self) -> None:
        validate_sampling_config(self)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class MPPIPlanner(SamplingPlanner):
    name = "mppi"

    def __init__(self, config: MPPIConfig | None = None):
        super().__init__(config or MPPIConfig())

    def refit(self, mean: Tensor, std: Tensor, candidates: Tensor, costs: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.config
        elites, elite_cost = self.elites(candidates, costs)  # (E, K, H, A), (E, K)
        shifted = elite_cost - elite_cost[:, :1]  # topk is sorted, so column 0 is the min
        if cfg.normalize_costs:
            shifted = shifted / (shifted[:, -1:] + 1e-8)
        weights = torch.softmax(-shifted / cfg.temperature, dim=1)[:, :, None, None]  # (E, K, 1, 1)
        new_mean = (weights * elites).sum(dim=1)
        new_std = ((weights * (elites - new_mean[:, None]) ** 2).sum(dim=1)).sqrt()
        mean = cfg.momentum_mean * mean + (1 - cfg.momentum_mean) * new_mean
        return mean, new_std.clamp_min(cfg.min_std)
