"""Cross-entropy method with momentum on mean and std (V-JEPA 2-AC style).

Each iteration samples S candidates around the mean (candidate 0 *is* the mean),
keeps the K lowest-cost elites and moves the sampling distribution toward their
mean/std: ``mean <- m * mean + (1 - m) * elite_mean`` (same for std). Momentum 0.15
matches V-JEPA 2-AC; 0 gives the textbook CEM used by DINO-WM.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from planners.base import SamplingPlanner, validate_sampling_config


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
        validate_sampling_config(self)


class CEMPlanner(SamplingPlanner):
    name = "cem"

    def __init__(self, config: CEMConfig | None = None):
        super().__init__(config or CEMConfig())

    def refit(self, mean: Tensor, std: Tensor, candidates: Tensor, costs: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.config
        elites, _ = self.elites(candidates, costs)  # (E, K, H, A)
        elite_std = elites.std(dim=1, unbiased=False) if cfg.elites > 1 else torch.zeros_like(mean)
        mean = cfg.momentum_mean * mean + (1 - cfg.momentum_mean) * elites.mean(dim=1)
        std = (cfg.momentum_std * std + (1 - cfg.momentum_std) * elite_std).clamp_min(cfg.min_std)
        return mean, std
