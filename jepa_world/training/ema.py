"""Exponential-moving-average target encoder.

target <- m * target + (1 - m) * online, applied with fused ``torch._foreach`` kernels
over cached tensor lists (no per-parameter Python arithmetic).

Momentum schedules:
  * ``constant``: m = start (V-JEPA 2 uses 0.99925)
  * ``linear``:   m ramps from ``start`` to ``end`` over ``total_steps`` (I-JEPA: 0.996 -> 1.0)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

MomentumKind = Literal["constant", "linear"]
MOMENTUM_KINDS: tuple[str, ...] = ("constant", "linear")


@dataclass(frozen=True)
class MomentumSchedule:
    kind: MomentumKind = "constant"
    start: float = 0.99925
    end: float = 1.0
    total_steps: int = 1

    def __post_init__(self) -> None:
        if self.kind not in MOMENTUM_KINDS:
            raise ValueError(f"unknown EMA momentum schedule {self.kind!r}; expected one of {MOMENTUM_KINDS}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"EMA momentum {name}={value} must lie in [0, 1]")
        if self.total_steps < 1:
            raise ValueError(f"EMA total_steps={self.total_steps} must be >= 1")

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return self.start
        progress = min(max(step, 0), self.total_steps) / self.total_steps
        return self.start + (self.end - self.start) * progress


def make_target(online: nn.Module) -> nn.Module:
    """A frozen deep copy of ``online`` to serve as the EMA target."""
    target = copy.deepcopy(online)
    target.requires_grad_(False)
    return target


class EMA:
    """Moves ``target``'s floating-point parameters and buffers toward ``online``'s."""

    def __init__(self, online: nn.Module, target: nn.Module, schedule: MomentumSchedule):
        online_state, target_state = online.state_dict(keep_vars=True), target.state_dict(keep_vars=True)
        if online_state.keys() != target_state.keys():
            diff = sorted(set(online_state) ^ set(target_state))[:5]
            raise ValueError(f"EMA online and target modules differ in keys, e.g. {diff}")
        keys = [k for k, v in online_state.items() if v.is_floating_point()]
        self.online_tensors = [online_state[k].data for k in keys]
        self.target_tensors = [target_state[k].data for k in keys]
        self.schedule = schedule

    @torch.no_grad()
    def update(self, step: int) -> float:
        """Apply one EMA step with the momentum for ``step``; returns the momentum used."""
        momentum = self.schedule(step)
        torch._foreach_mul_(self.target_tensors, momentum)
        torch._foreach_add_(self.target_tensors, self.online_tensors, alpha=1.0 - momentum)
        return momentum
