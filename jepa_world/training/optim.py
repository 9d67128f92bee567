"""AdamW with decoupled weight-decay groups, and step-indexed LR / WD schedules.

Schedules are pure functions of the step, so resuming only needs the step counter to
reproduce the learning rate exactly. Supported LR schedules:

  * ``cosine``:   linear warmup start_lr -> lr, cosine decay to final_lr at total_steps
  * ``wsd``:      warmup, stable at lr, then linear decay to final_lr over the last
                  ``decay_fraction`` of training (warmup-stable-decay, V-JEPA 2-AC)
  * ``constant``: warmup, then constant lr (V-JEPA 2 pretraining before its cooldown)

Weight decay follows a cosine from weight_decay to final_weight_decay (I-JEPA style;
equal values give a constant). Biases and every 1-D parameter (norms, mask tokens with
one non-singleton dim) get no weight decay.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

LRScheduleKind = Literal["cosine", "wsd", "constant"]
LR_SCHEDULES: tuple[str, ...] = ("cosine", "wsd", "constant")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 5.25e-4
    start_lr: float = 0.0
    final_lr: float = 0.0
    warmup_steps: int = 0
    schedule: LRScheduleKind = "constant"
    decay_fraction: float = 0.2  # wsd only: share of training spent in the final linear decay
    weight_decay: float = 0.04
    final_weight_decay: float = 0.04
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 0.0  # max global grad norm; <= 0 disables clipping

    def __post_init__(self) -> None:
        if self.schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown LR schedule {self.schedule!r}; expected one of {LR_SCHEDULES}")
        for name in ("lr", "start_lr", "final_lr", "weight_decay", "final_weight_decay", "eps"):
            value = getattr(self, name)
            if not (value >= 0.0 and math.isfinite(value)):
                raise ValueError(f"optim.{name}={value} must be a finite number >= 0")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"optim.decay_fraction={self.decay_fraction} must lie in [0, 1]")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas={self.betas} must be two numbers in [0, 1)")


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Learning rate used for the update at 0-based ``step`` of ``total_steps``."""
    if step < cfg.warmup_steps:
        return cfg.start_lr + (cfg.lr - cfg.start_lr) * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        span = max(total_steps - cfg.warmup_steps, 1)
        progress = min((step - cfg.warmup_steps) / span, 1.0)
        return cfg.final_lr + 0.5 * (cfg.lr - cfg.final_lr) * (1.0 + math.cos(math.pi * progress))
    decay_steps = round(cfg.decay_fraction * total_steps)
    decay_start = max(total_steps - decay_steps, cfg.warmup_steps)
    if step < decay_start or decay_steps == 0:
        return cfg.lr
    progress = min((step - decay_start + 1) / max(total_steps - decay_start, 1), 1.0)
    return cfg.lr + (cfg.final_lr - cfg.lr) * progress


def weight_decay_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    progress = min(max(step, 0) / max(total_steps, 1), 1.0)
    return cfg.final_weight_decay + 0.5 * (cfg.weight_decay - cfg.final_weight_decay) * (1.0 + math.cos(math.pi * progress))


def is_decayed(name: str, param: torch.Tensor) -> bool:
    """Weight decay only on matrices/kernels: never biases or 1-D parameters."""
    squeezed_dims = sum(size > 1 for size in param.shape)
    return not (name.endswith(".bias") or name == "bias" or param.ndim <= 1 or squeezed_dims <= 1)


def param_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                 lr_scales: dict[str, float] | None = None) -> list[dict]:
    """AdamW groups: decayed and not, per learning-rate scale. ``wd_scale`` marks which groups follow the
    weight-decay schedule; ``lr_scales`` maps a parameter-name prefix to a multiple of the scheduled LR
    (a head that needs a faster LR than the model it sits on)."""
    lr_scales = lr_scales or {}
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {(1.0, True): [], (1.0, False): []}
    for name, param in named_parameters:
        if param.requires_grad:
            scale = next((v for prefix, v in lr_scales.items() if name.startswith(prefix)), 1.0)
            groups.setdefault((scale, is_decayed(name, param)), []).append(param)
    return [
        {"params": params, "weight_decay": weight_decay if decayed else 0.0, "wd_scale": 1.0 if decayed else 0.0,
         "lr_scale": scale}
        for (scale, decayed), params in groups.items() if params or scale == 1.0
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr_scales: dict[str, float] | None = None) -> torch.optim.AdamW:
    params = list(model.named_parameters())
    on_cuda = any(p.is_cuda for _, p in params)
    return torch.optim.AdamW(
        param_groups(params, cfg.weight_decay, lr_scales),
        lr=lr_at(0, cfg, 1) if cfg.warmup_steps else cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        fused=True if on_cuda else None,
    )


def apply_schedule(optimizer: torch.optim.Optimizer, step: int, cfg: OptimConfig, total_steps: int) -> tuple[float, float]:
    """Set this step's LR and WD on every group; returns (lr, wd)."""
    lr, wd = lr_at(step, cfg, total_steps), weight_decay_at(step, cfg, total_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        group["weight_decay"] = wd * group.get("wd_scale", 1.0)
    return lr, wd


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor | None:
    """Clip the global grad norm in place (no host sync); returns the pre-clip norm tensor."""
    if max_norm <= 0:
        return None
    return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm, foreach=True)
